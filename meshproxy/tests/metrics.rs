//! Istio's standard metrics on `/stats/prometheus`, from configs the real compiler makes out of
//! a compose file and Telemetry resources: a client proxy (`frontend`) and a server proxy
//! (`backend-v1`) over mTLS, scraped over HTTP as Prometheus does, checked series by series
//! and by `promtool check metrics` (Debian's `prometheus` package) when present.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;

use common::{Mesh, http1_client};
use http_body_util::BodyExt;
use meshapi::proxy::ProxyConfig;
use meshmodel::compile::{CompileInput, FixedPlacement, ProxyKey, compile_proxy, vip_services};
use meshmodel::load::{LoadOptions, Loaded, load};
use meshmodel::model::Inventory;
use meshproxy::Bound;
use meshtest::EchoServer;

/// Every port is a test's own (the echo servers'), so tests in parallel bind different VIP
/// listeners.
fn compose(http_port: u16, tcp_port: u16) -> String {
    format!(
        r#"name: metrics
services:
  frontend:
    image: f
    labels: {{ app: frontend, version: v1 }}
    x-mesh: {{ ports: [ {{ port: {http_port}, protocol: http }} ] }}
  backend-v1:
    image: b
    labels: {{ app: backend, version: v1 }}
    x-mesh:
      service: backend
      ports: [ {{ port: {http_port}, protocol: http }}, {{ port: {tcp_port}, protocol: tcp }} ]
"#
    )
}

fn load_mesh(compose: &str, policies: &str) -> (tempfile::TempDir, Loaded) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("compose.yaml"), compose).unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), policies).unwrap();
    let mut opts = LoadOptions::new(dir.path());
    opts.env = Box::new(std::collections::BTreeMap::<String, String>::new());
    let loaded = load(&opts);
    assert!(!loaded.has_errors(), "{:#?}", loaded.diagnostics);
    (dir, loaded)
}

/// The compiled config of `workload` with `backend-v1` at `backend`, given file credentials
/// from the test CA and loopback port-0 listeners.
fn compiled(mesh: &Mesh, loaded: &Loaded, workload: &str, backend: SocketAddr) -> ProxyConfig {
    let m = &loaded.mesh;
    let inv = Inventory::from_compose(m.compose.as_ref());
    let mut vips = meshapi::dns::VipAllocator::new(meshapi::dns::VipRange::default());
    let wanted = vip_services(m, &inv);
    vips.sync(wanted.iter().map(|(ns, n)| (ns.as_str(), n.as_str())))
        .unwrap();
    let mut placement = FixedPlacement::default();
    placement.0.insert(("backend-v1".into(), 0), backend);
    placement
        .0
        .insert(("frontend".into(), 0), "127.0.0.1:9".parse().unwrap());
    let input = CompileInput::new(m, &inv, &vips, &placement, 1);
    let key = ProxyKey {
        workload: workload.into(),
        instance: 0,
    };
    let mut cfg = compile_proxy(&input, &key).unwrap();
    let id = cfg.identity.spiffe_id.to_string();
    let sa = cfg.identity.spiffe_id.service_account().to_string();
    let (cert, key) = mesh.ca.issue(&id).write(mesh.path(), &sa);
    cfg.identity.cert_file = Some(cert);
    cfg.identity.key_file = Some(key);
    cfg.identity.roots_file = Some(mesh.path().join("roots.pem"));
    cfg.listeners.inbound = "127.0.0.1:0".parse().unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    cfg.admin.admin = any;
    cfg.admin.health = any;
    cfg.admin.stats = any;
    cfg
}

struct Pair {
    _mesh: Mesh,
    _dir: tempfile::TempDir,
    client: Bound,
    server: Bound,
    /// The client's listeners for the backend's HTTP and TCP ports.
    http: SocketAddr,
    tcp: SocketAddr,
    _echo: EchoServer,
    _tcp_echo: meshtest::TcpEcho,
}

async fn pair(policies: &str) -> Pair {
    let mesh = Mesh::new();
    let echo = EchoServer::start("backend-v1").await;
    let tcp_echo = meshtest::TcpEcho::start().await;
    let (dir, loaded) = load_mesh(&compose(echo.port(), tcp_echo.addr().port()), policies);
    let placeholder = "127.0.0.1:9".parse().unwrap();
    let server = meshproxy::build(compiled(&mesh, &loaded, "backend-v1", placeholder))
        .await
        .unwrap();
    let client_cfg = compiled(&mesh, &loaded, "frontend", server.inbound);
    let vip_of = |port: u16| {
        client_cfg
            .outbound
            .iter()
            .find(|o| o.vip.port() == port)
            .unwrap()
            .vip
    };
    let (http_vip, tcp_vip) = (vip_of(echo.port()), vip_of(tcp_echo.addr().port()));
    let client = meshproxy::build(client_cfg).await.unwrap();
    Pair {
        http: client.outbound(http_vip).unwrap(),
        tcp: client.outbound(tcp_vip).unwrap(),
        client,
        server,
        _mesh: mesh,
        _dir: dir,
        _echo: echo,
        _tcp_echo: tcp_echo,
    }
}

/// `/stats/prometheus` of a proxy, over HTTP.
async fn scrape(b: &Bound) -> String {
    let url = format!("http://{}/stats/prometheus", b.stats);
    let (status, headers, body) = common::get(&http1_client(), &url).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/plain; version=0.0.4");
    body
}

/// The value of the one series of `name` whose labels include every `want` pair.
fn value(text: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let Some(labels) = rest.strip_prefix('{') else {
            continue;
        };
        let Some((labels, v)) = labels.rsplit_once("} ") else {
            continue;
        };
        if want
            .iter()
            .all(|(k, v)| labels.contains(&format!("{k}=\"{v}\"")))
        {
            assert!(
                found.is_none(),
                "two series of {name} match {want:?}:\n{text}"
            );
            found = Some(v.parse::<f64>().unwrap());
        }
    }
    found
}

/// `n` POSTs of an 11-byte body, which the echo server sends back.
async fn post_n(addr: SocketAddr, n: usize) {
    let client = http1_client();
    for _ in 0..n {
        let req = http::Request::post(format!("http://{addr}/hello"))
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"hello world",
            )))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello world");
    }
}

async fn promtool_accepts(text: &str) {
    let present = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok();
    if meshtest::skip_unless(
        "prometheus",
        present,
        "promtool (Debian's prometheus package) checks the exposition",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metrics.txt");
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("promtool check metrics < {}", file.display()))
        .output()
        .unwrap();
    // Exit 0: clean; 3: parsed, with lint findings (1: not parseable). Istio's own metric
    // names are fixed (dashboards use them), so the one finding allowed is promtool's unit
    // rule on `istio_request_duration_milliseconds`, which Envoy's output gets too.
    let findings = String::from_utf8_lossy(&out.stderr).to_string();
    let allowed = |l: &str| {
        l.trim().is_empty()
            || l.starts_with("istio_request_duration_milliseconds use base unit \"seconds\"")
    };
    assert!(
        out.status.code() == Some(0)
            || (out.status.code() == Some(3) && findings.lines().all(allowed)),
        "promtool check metrics ({:?}): {}{findings}\n{text}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_report_istios_request_and_tcp_metrics_with_istios_labels() {
    let p = pair("").await;
    post_n(p.http, 5).await;
    let source = [
        ("reporter", "source"),
        ("source_workload", "frontend"),
        ("source_workload_namespace", "default"),
        ("source_principal", "cluster.local/ns/default/sa/frontend"),
        ("source_app", "frontend"),
        ("source_version", "v1"),
        ("destination_workload", "backend-v1"),
        ("destination_workload_namespace", "default"),
        (
            "destination_principal",
            "cluster.local/ns/default/sa/backend",
        ),
        ("destination_app", "backend"),
        ("destination_version", "v1"),
        ("destination_service", "backend.default.svc.cluster.local"),
        ("destination_service_name", "backend"),
        ("destination_service_namespace", "default"),
        ("request_protocol", "http"),
        ("response_code", "200"),
        ("grpc_response_status", ""),
        ("response_flags", "-"),
        ("connection_security_policy", "unknown"),
    ];
    let mut dest = source;
    dest[0] = ("reporter", "destination");
    dest[18] = ("connection_security_policy", "mutual_tls");
    let client = scrape(&p.client).await;
    assert_eq!(
        value(&client, "istio_requests_total", &source),
        Some(5.0),
        "{client}"
    );
    meshtest::assert_eventually!(
        value(
            &p.server.handle.metrics().render(),
            "istio_requests_total",
            &dest
        ) == Some(5.0),
        "server side: {}",
        p.server.handle.metrics().render()
    );
    let server = scrape(&p.server).await;
    for (text, labels) in [(&client, &source), (&server, &dest)] {
        assert!(
            text.contains("# TYPE istio_requests_total counter"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE istio_request_duration_milliseconds histogram"),
            "{text}"
        );
        let count = value(text, "istio_request_duration_milliseconds_count", labels);
        assert_eq!(count, Some(5.0), "{text}");
        let mut inf = labels.to_vec();
        inf.push(("le", "+Inf"));
        assert_eq!(
            value(text, "istio_request_duration_milliseconds_bucket", &inf),
            Some(5.0)
        );
        let mut first = labels.to_vec();
        first.push(("le", "0.5"));
        assert!(value(text, "istio_request_duration_milliseconds_bucket", &first).is_some());
        // Five 11-byte bodies each way.
        assert_eq!(value(text, "istio_request_bytes_sum", labels), Some(55.0));
        assert_eq!(value(text, "istio_response_bytes_sum", labels), Some(55.0));
        let mut le = labels.to_vec();
        le.push(("le", "10.0"));
        assert_eq!(value(text, "istio_response_bytes_bucket", &le), Some(0.0));
        le.pop();
        le.push(("le", "100.0"));
        assert_eq!(value(text, "istio_response_bytes_bucket", &le), Some(5.0));
    }

    // A TCP connection through both proxies: opened, closed, bytes both ways.
    let mut s = tokio::net::TcpStream::connect(p.tcp).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"ping-12345").await.unwrap();
    let mut buf = [0u8; 10];
    s.read_exact(&mut buf).await.unwrap();
    drop(s);
    let tcp_src = [
        ("reporter", "source"),
        ("source_workload", "frontend"),
        ("destination_workload", "backend-v1"),
        ("request_protocol", "tcp"),
    ];
    let tcp_dst = [
        ("reporter", "destination"),
        ("source_principal", "cluster.local/ns/default/sa/frontend"),
        ("destination_workload", "backend-v1"),
        ("request_protocol", "tcp"),
        ("connection_security_policy", "mutual_tls"),
    ];
    for (b, labels) in [(&p.client, &tcp_src[..]), (&p.server, &tcp_dst[..])] {
        meshtest::assert_eventually!(
            value(
                &b.handle.metrics().render(),
                "istio_tcp_connections_closed_total",
                labels
            ) == Some(1.0),
            "{}",
            b.handle.metrics().render()
        );
        let text = scrape(b).await;
        assert_eq!(
            value(&text, "istio_tcp_connections_opened_total", labels),
            Some(1.0)
        );
        assert_eq!(
            value(&text, "istio_tcp_received_bytes_total", labels),
            Some(10.0)
        );
        assert_eq!(
            value(&text, "istio_tcp_sent_bytes_total", labels),
            Some(10.0)
        );
        assert!(!text.contains("response_code=\"0\""), "{text}");
        // The certificates' expiry, and the proxy-wide series, through prometheus-client.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let workload = value(
            &text,
            "meshproxy_cert_expiry_timestamp_seconds",
            &[("cert", "workload")],
        )
        .unwrap_or_else(|| panic!("no workload cert expiry:\n{text}"));
        let root = value(
            &text,
            "meshproxy_cert_expiry_timestamp_seconds",
            &[("cert", "root")],
        )
        .unwrap_or_else(|| panic!("no root cert expiry:\n{text}"));
        assert!(
            workload > now && root >= workload,
            "{workload} {root} {now}"
        );
        let left: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("istio_agent_cert_expiry_seconds ")?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no istio_agent_cert_expiry_seconds:\n{text}"));
        assert!(
            (left - (workload - now)).abs() < 120.0,
            "{left} vs {workload} - {now}"
        );
        for family in [
            "# TYPE meshproxy_upstream_pooled_connections gauge",
            "# TYPE meshproxy_authz_decisions_total counter",
            "# TYPE meshproxy_cluster_overflow_total counter",
            "# TYPE meshproxy_access_log_dropped_total counter",
        ] {
            assert_eq!(text.matches(family).count(), 1, "{family}:\n{text}");
        }
        promtool_accepts(&text).await;
    }
    // The client's cluster to the backend is listed with its overflow series.
    let text = scrape(&p.client).await;
    assert!(
        text.lines().any(
            |l| l.starts_with("meshproxy_cluster_overflow_total{cluster=\"outbound|")
                && l.contains("resource=\"connections\"")
        ),
        "{text}"
    );
}

const TELEMETRY: &str = r#"apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: { name: mesh-default, namespace: istio-system }
spec:
  metrics:
    - overrides:
        - tagOverrides:
            request_protocol: { operation: REMOVE }
            team: { value: "'payments'" }
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: { name: backend, namespace: default }
spec:
  selector: { matchLabels: { app: backend } }
  metrics:
    - overrides:
        - match: { metric: REQUEST_SIZE, mode: SERVER }
          disabled: true
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_resources_remove_and_add_labels_and_disable_a_metric() {
    let p = pair(TELEMETRY).await;
    post_n(p.http, 2).await;
    let client = scrape(&p.client).await;
    let src = [("reporter", "source"), ("team", "payments")];
    assert_eq!(
        value(&client, "istio_requests_total", &src),
        Some(2.0),
        "{client}"
    );
    assert!(!client.contains("request_protocol="), "{client}");
    assert!(value(&client, "istio_request_bytes_count", &src).is_some());
    let dst = [("reporter", "destination"), ("team", "payments")];
    meshtest::assert_eventually!(
        value(
            &p.server.handle.metrics().render(),
            "istio_requests_total",
            &dst
        ) == Some(2.0),
        "{}",
        p.server.handle.metrics().render()
    );
    let server = scrape(&p.server).await;
    // The backend's own Telemetry turns its request sizes off; the response sizes stay.
    assert!(!server.contains("istio_request_bytes_count{"), "{server}");
    assert_eq!(
        value(&server, "istio_response_bytes_count", &dst),
        Some(2.0)
    );
    promtool_accepts(&server).await;
}
