//! Failures are charged to whoever caused them (issue 16): a client whose request body its
//! own proxy cannot read (a malformed chunk, a body cut short) gets `400` flagged `DPE`/`DC`
//! from that proxy, and the upstream endpoint is never charged for it (outlier detection
//! keeps it in, other clients see no failure). The same on the server side: a mesh peer that
//! sends a garbage body gets `400`, never a 5xx its proxy would count against the endpoint.
//! HTTP/1.1 without `Host`, or with two, is refused `400 DPE` and never reaches the app.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use meshproxy::Bound;
use meshtest::{EchoServer, assert_eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PORT: u16 = 8080;
const HOST: &str = "backend.default.svc.cluster.local";

const COMPOSE: &str = "\
services:
  frontend:
    image: f
    labels: {app: frontend, version: v1}
    x-mesh: {serviceAccount: frontend-sa, ports: [{port: 3000, protocol: http}]}
  backend-v1:
    image: b
    labels: {app: backend, version: v1}
    x-mesh: {service: backend, ports: [{port: 8080, protocol: http}]}
";

/// Outlier detection that ejects after two consecutive 5xx, for a long time.
const OUTLIER: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend}
spec:
  host: backend
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 2, interval: 30s, baseEjectionTime: 60s, maxEjectionPercent: 100}
";

/// A malformed chunked body: a good chunk, then a chunk size that is not hex.
const BAD_CHUNKED: &[u8] = b"POST /upload HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nmore\r\n0\r\n\r\n";

/// The frontend's route table compiled from `policies`, as the control plane does.
fn route_table(policies: &str) -> meshapi::traffic::RouteTable {
    compiled_route_table(COMPOSE, policies, "frontend")
}

/// A client proxy (frontend) in front of one backend instance (echo app + server proxy).
struct Fixture {
    mesh: Mesh,
    app: EchoServer,
    server: Bound,
    client: Bound,
    out: SocketAddr,
}

impl Fixture {
    async fn new(policies: &str) -> Fixture {
        let mesh = Mesh::new();
        let app = EchoServer::start("backend-v1").await;
        let server = meshproxy::build(server_config(&mesh, app.port(), 1))
            .await
            .unwrap();
        let mut y = base_yaml(&mesh.identity_yaml("frontend-sa"), 1);
        y.push_str(&format!(
            "outbound:\n  - {{ service: backend, vip: \"127.0.0.1:0\", protocol: http, targetPort: {PORT} }}\n\
             services:\n  backend:\n    host: {HOST}\n    endpoints:\n\
             \x20     - {{ address: \"{}\", identity: \"{}\", workload: backend-v1, labels: {{ app: backend, version: v1 }} }}\n",
            server.inbound,
            spiffe("backend"),
        ));
        let mut cfg = parse(&y);
        cfg.traffic = Some(route_table(policies));
        let client = meshproxy::build(cfg).await.unwrap();
        let out = client.outbound("127.0.0.1:0".parse().unwrap()).unwrap();
        Fixture {
            mesh,
            app,
            server,
            client,
            out,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.out)
    }
}

/// The backend's server proxy: inbound `PORT` to the app on `app_port`.
fn server_config(mesh: &Mesh, app_port: u16, revision: u64) -> meshapi::proxy::ProxyConfig {
    parse(&format!(
        "{}inbound:\n  - {{ port: {PORT}, targetPort: {app_port}, protocol: http, mode: STRICT }}\n",
        base_yaml(&mesh.identity_yaml("backend"), revision),
    ))
}

async fn stats(b: &Bound) -> String {
    get(
        &http1_client(),
        &format!("http://{}/stats/prometheus", b.stats),
    )
    .await
    .2
}

async fn config_dump(b: &Bound) -> String {
    get(&http1_client(), &format!("http://{}/config_dump", b.admin))
        .await
        .2
}

/// One counter of a Prometheus text exposition.
fn metric(stats: &str, series: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{stats}"))
}

fn downstream_errors(direction: &str, flag: &str) -> String {
    format!("meshproxy_downstream_errors_total{{direction=\"{direction}\",flag=\"{flag}\"}}")
}

const EJECTIONS: &str = "meshproxy_cluster_outlier_ejections_total{cluster=\"outbound|8080||backend.default.svc.cluster.local\"}";

/// A well-behaved client sending GETs until stopped; returns (ok, failed).
fn good_client(url: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    tokio::spawn(async move {
        let client = http1_client();
        let ok = AtomicU64::new(0);
        let mut failed = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let (s, h, body) = get(&client, &url).await;
            if s == 200 {
                ok.fetch_add(1, Ordering::Relaxed);
            } else {
                failed.push(format!(
                    "{s} {:?} {body}",
                    h.get("x-meshctl-response-flags")
                ));
            }
        }
        (ok.into_inner(), failed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunked_bodies_get_400_from_the_clients_proxy_and_never_eject_the_backend() {
    let f = Fixture::new(OUTLIER).await;
    let stop = Arc::new(AtomicBool::new(false));
    let good = good_client(f.url("/good"), stop.clone());
    assert_eventually!(f.app.completed() > 0, "the good client never got through");
    for i in 0..10 {
        let resp = raw(f.out, BAD_CHUNKED).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "request {i}: {resp}");
        assert!(
            resp.to_ascii_lowercase()
                .contains("x-meshctl-response-flags: dpe"),
            "request {i}: {resp}"
        );
    }
    // A good request after the bad ones still reaches the backend.
    let before = f.app.completed();
    assert_eventually!(
        f.app.completed() > before + 5,
        "the good client stalled after the bad requests"
    );
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = good.await.unwrap();
    assert!(failed.is_empty(), "{} ok, failures: {failed:?}", ok);
    // Each answer was given after the try ended (outlier detection records before the
    // answer), so these are final.
    let s = stats(&f.client).await;
    assert_eq!(metric(&s, EJECTIONS), 0, "{s}");
    assert_eq!(metric(&s, &downstream_errors("outbound", "DPE")), 10, "{s}");
    let dump = config_dump(&f.client).await;
    assert!(!dump.contains("\"ejected\": true"), "{dump}");
    assert!(dump.contains("\"timesEjected\": 0"), "{dump}");

    // Control: real upstream failures do eject it (the detector is live in this fixture).
    // The backend's proxy answers 503 UF once its app port is closed.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    f.server
        .handle
        .apply(server_config(&f.mesh, dead, 2))
        .unwrap();
    assert_eventually!(
        {
            let _ = get(&http1_client(), &f.url("/")).await;
            metric(&stats(&f.client).await, EJECTIONS) == 1
        },
        "upstream failures did not eject the endpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_is_dc_and_not_the_backends_fault() {
    let f = Fixture::new(OUTLIER).await;
    // Streamed (chunked) and buffered for retries (a small Content-Length), both cut short.
    let cut: [&[u8]; 3] = [
        b"POST / HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"POST / HTTP/1.1\r\nHost: backend\r\nContent-Length: 10\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: chunked\r\n\r\n",
    ];
    for (i, req) in cut.iter().enumerate() {
        let mut s = tokio::net::TcpStream::connect(f.out).await.unwrap();
        s.write_all(req).await.unwrap();
        s.shutdown().await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
        let out = String::from_utf8_lossy(&out).to_ascii_lowercase();
        // The client may be gone already; if it still listens, it gets 400 DC.
        assert!(
            out.is_empty() || (out.starts_with("http/1.1 400") && out.contains("flags: dc")),
            "request {i}: {out}"
        );
    }
    assert_eventually!(
        metric(
            &stats(&f.client).await,
            &downstream_errors("outbound", "DC")
        ) == 3,
        "cut-short bodies not counted as DC"
    );
    let s = stats(&f.client).await;
    assert_eq!(metric(&s, EJECTIONS), 0, "{s}");
    let (s, _, body) = get(&http1_client(), &f.url("/after")).await;
    assert_eq!(s, 200, "{body}");
}

/// Sends `req` to the server proxy's inbound as a mesh peer (mTLS, HTTP/1.1) and returns what
/// came back.
async fn as_peer(f: &Fixture, req: &[u8]) -> String {
    let cert = f.mesh.ca.issue(&spiffe("frontend-sa"));
    let mut tls = mtls_connect(f.server.inbound, PORT, Some(&cert), b"http/1.1")
        .await
        .expect("mTLS handshake");
    tls.write_all(req).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_a_garbage_body_gets_400_from_the_server_proxy() {
    let f = Fixture::new(OUTLIER).await;
    for i in 0..5 {
        let resp = as_peer(&f, BAD_CHUNKED).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "request {i}: {resp}");
        assert!(
            resp.to_ascii_lowercase()
                .contains("x-meshctl-response-flags: dpe"),
            "request {i}: {resp}"
        );
    }
    let s = stats(&f.server).await;
    assert_eq!(metric(&s, &downstream_errors("inbound", "DPE")), 5, "{s}");
    assert_eq!(f.app.completed(), 0, "a broken body is no complete request");
    // A good peer and the client proxy are unaffected.
    let ok = as_peer(
        &f,
        b"GET / HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let (st, _, body) = get(&http1_client(), &f.url("/")).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(metric(&stats(&f.client).await, EJECTIONS), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_without_host_or_with_two_hosts_is_400_dpe_and_never_reaches_the_app() {
    let f = Fixture::new(OUTLIER).await;
    let cases: [(&str, &[u8]); 3] = [
        ("no Host", b"GET / HTTP/1.1\r\n\r\n"),
        (
            "two Host",
            b"GET / HTTP/1.1\r\nHost: backend\r\nHost: evil\r\n\r\n",
        ),
        (
            "two Host, different case",
            b"GET / HTTP/1.1\r\nhost: backend\r\nHOST: backend\r\n\r\n",
        ),
    ];
    for (name, req) in cases {
        let resp = raw(f.out, req).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "outbound {name}: {resp}");
        assert!(
            resp.to_ascii_lowercase()
                .contains("x-meshctl-response-flags: dpe"),
            "outbound {name}: {resp}"
        );
        let resp = as_peer(&f, req).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "inbound {name}: {resp}");
        assert!(
            resp.to_ascii_lowercase()
                .contains("x-meshctl-response-flags: dpe"),
            "inbound {name}: {resp}"
        );
    }
    // Each refusal is answered before any forwarding would happen, so this is final.
    assert_eq!(f.app.completed(), 0);
    assert_eq!(
        metric(
            &stats(&f.client).await,
            &downstream_errors("outbound", "DPE")
        ),
        3
    );
    assert_eq!(
        metric(
            &stats(&f.server).await,
            &downstream_errors("inbound", "DPE")
        ),
        3
    );
    // A head hyper's own parser refuses (a header line without a colon) is counted too.
    let resp = raw(
        f.out,
        b"GET / HTTP/1.1\r\nHost: backend\r\nno colon here\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert_eventually!(
        metric(
            &stats(&f.client).await,
            &downstream_errors("outbound", "DPE")
        ) == 4,
        "parser refusal not counted"
    );
    // HTTP/1.0 may omit Host; one Host is fine.
    let resp = raw(f.out, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.0 200"), "{resp}");
    let resp = raw(
        f.out,
        b"GET / HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(f.app.completed(), 2);
}
