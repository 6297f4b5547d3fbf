//! Access logs and tracing through two in-process proxies (client -> proxy A outbound ->
//! mTLS -> proxy B inbound -> echo app): access log lines read from a real pipe and parsed
//! (text and JSON), a pipe nobody reads (a stalled stdout) that costs lines, not requests,
//! and spans exported to a real OTLP/HTTP receiver decoding the OpenTelemetry protobuf.
#![allow(clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use meshproxy::Bound;
use meshproxy::app::Options;
use meshtest::{EchoServer, assert_eventually};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use prost::Message;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::unix::pipe;

const VIP: &str = "127.0.0.1:0";

/// A real pipe: the proxy writes its access log into the sender; lines read back are
/// collected.
struct LogPipe {
    lines: Arc<Mutex<Vec<String>>>,
}

impl LogPipe {
    fn start() -> (LogPipe, meshproxy::telemetry::access_log::Sink) {
        let (tx, rx) = pipe::pipe().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        tokio::spawn(async move {
            let mut r = BufReader::new(rx).lines();
            while let Ok(Some(l)) = r.next_line().await {
                sink.lock().unwrap().push(l);
            }
        });
        (LogPipe { lines }, Box::pin(tx))
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

/// An OTLP/HTTP receiver: decodes every `POST /v1/traces` body as the OpenTelemetry
/// `ExportTraceServiceRequest` and keeps its spans with their resource's `service.name`.
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

impl Collector {
    async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans: Arc<Mutex<Vec<(String, Span)>>> = Arc::default();
        let keep = Arc::clone(&spans);
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let keep = Arc::clone(&keep);
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let keep = Arc::clone(&keep);
                        async move {
                            assert_eq!(req.uri().path(), "/v1/traces");
                            assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let export = ExportTraceServiceRequest::decode(body).unwrap();
                            for rs in export.resource_spans {
                                let service = rs
                                    .resource
                                    .iter()
                                    .flat_map(|r| &r.attributes)
                                    .find(|a| a.key == "service.name")
                                    .and_then(|a| string_value(a.value.as_ref()))
                                    .unwrap_or_default();
                                for ss in rs.scope_spans {
                                    for sp in ss.spans {
                                        keep.lock().unwrap().push((service.clone(), sp));
                                    }
                                }
                            }
                            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new())))
                        }
                    });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        Collector { addr, spans }
    }

    fn url(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    fn spans(&self) -> Vec<(String, Span)> {
        self.spans.lock().unwrap().clone()
    }
}

fn string_value(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> Option<String> {
    match v?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn attr(s: &Span, key: &str) -> Option<String> {
    s.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| string_value(a.value.as_ref()))
}

fn telemetry_yaml(encoding: &str, sampling: f64, collector: Option<&str>) -> String {
    let mut y = format!(
        "telemetry:\n  accessLog: {{ enabled: true, encoding: {encoding} }}\n  tracing:\n    samplingPercent: {sampling}\n    customTags:\n      team: {{ literal: {{ value: payments }} }}\n      tenant: {{ header: {{ name: x-tenant, defaultValue: none }} }}\n"
    );
    if let Some(c) = collector {
        y.push_str(&format!("    collector: \"{c}\"\n"));
    }
    y
}

/// Proxy B (backend, STRICT, `b_encoding` access log) and proxy A (frontend, JSON access
/// log) with their log pipes; A's outbound address.
async fn pair(
    mesh: &Mesh,
    echo: &EchoServer,
    b_encoding: &str,
    sampling: f64,
    collector: Option<&str>,
) -> (Bound, Bound, LogPipe, LogPipe, SocketAddr) {
    let b_yaml = format!(
        "{}inbound:\n  - {{ port: {}, protocol: http, mode: STRICT }}\n{}",
        base_yaml(&mesh.identity_yaml("backend"), 1),
        echo.port(),
        telemetry_yaml(b_encoding, sampling, collector)
    );
    let (b_log, b_sink) = LogPipe::start();
    let b = meshproxy::build_with(parse(&b_yaml), options(b_sink))
        .await
        .unwrap();
    let a_yaml = format!(
        "{}{}",
        client_yaml(
            &mesh.identity_yaml("frontend"),
            1,
            VIP,
            "http",
            echo.port(),
            &[(b.inbound, "backend")],
        ),
        telemetry_yaml("JSON", sampling, collector)
    );
    let (a_log, a_sink) = LogPipe::start();
    let a = meshproxy::build_with(parse(&a_yaml), options(a_sink))
        .await
        .unwrap();
    let out = a.outbound(VIP.parse().unwrap()).unwrap();
    (a, b, a_log, b_log, out)
}

fn options(sink: meshproxy::telemetry::access_log::Sink) -> Options {
    Options {
        access_log: Some(sink),
        ..Options::default()
    }
}

/// GET, or POST when `body` is not empty; the status and response body.
async fn send(
    client: &Client,
    url: &str,
    headers: &[(&str, &str)],
    body: &'static str,
) -> (http::StatusCode, String) {
    let method = if body.is_empty() { "GET" } else { "POST" };
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(
            req.body(Full::new(Bytes::from_static(body.as_bytes())))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Splits an Istio default-format text line into its fields (quoted ones unquoted).
fn text_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        let (field, tail) = match rest.as_bytes()[0] {
            b'[' => {
                let end = rest.find(']').unwrap();
                (&rest[1..end], &rest[end + 1..])
            }
            b'"' => {
                let end = rest[1..].find('"').unwrap() + 1;
                (&rest[1..end], &rest[end + 1..])
            }
            _ => {
                let end = rest.find(' ').unwrap_or(rest.len());
                (&rest[..end], &rest[end..])
            }
        };
        out.push(field.to_string());
        rest = tail.trim_start();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_is_one_access_log_line_on_both_proxies_in_json_and_text() {
    let mesh = Mesh::new();
    let echo = EchoServer::start("echo").await;
    let (_a, b, a_log, b_log, out) = pair(&mesh, &echo, "TEXT", 0.0, None).await;
    let client = http1_client();
    let (status, _) = send(
        &client,
        &format!("http://{out}/orders/7?x=1"),
        &[
            ("user-agent", "telemetry-test/1"),
            ("x-forwarded-for", "10.1.2.3"),
        ],
        "order #7",
    )
    .await;
    assert_eq!(status, 200);
    let seen = echo.last().unwrap();
    let request_id = seen.headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(request_id.len(), 36, "a created x-request-id is a UUID");

    assert_eventually!(
        a_log.lines().len() == 1,
        "client proxy lines: {:?}",
        a_log.lines()
    );
    let a_line: serde_json::Value = serde_json::from_str(&a_log.lines()[0]).unwrap();
    assert_eq!(a_line["path"], "/orders/7?x=1");
    assert_eq!(a_line["protocol"], "HTTP/1.1");
    assert_eq!(a_line["response_code"], 200);
    assert_eq!(a_line["response_flags"], "-");
    assert_eq!(a_line["response_code_details"], "via_upstream");
    assert_eq!(a_line["user_agent"], "telemetry-test/1");
    assert_eq!(a_line["x_forwarded_for"], "10.1.2.3");
    assert_eq!(a_line["request_id"], request_id.as_str());
    assert_eq!(a_line["upstream_host"], b.inbound.to_string().as_str());
    assert!(
        a_line["upstream_cluster"]
            .as_str()
            .unwrap()
            .starts_with("outbound|"),
        "{a_line}"
    );
    assert_eq!(a_line["upstream_peer_uri_san"], spiffe("backend").as_str());
    assert_eq!(a_line["method"], "POST");
    assert_eq!(a_line["bytes_received"], 8, "{a_line}");
    assert_eq!(a_line["bytes_sent"], 8, "the echoed body: {a_line}");
    assert_eq!(a_line["downstream_local_address"], out.to_string().as_str());
    assert!(a_line["upstream_service_time"].is_u64(), "{a_line}");
    assert!(a_line["start_time"].as_str().unwrap().ends_with('Z'));

    assert_eventually!(
        b_log.lines().len() == 1,
        "server proxy lines: {:?}",
        b_log.lines()
    );
    let f = text_fields(&b_log.lines()[0]);
    assert_eq!(f.len(), 24, "{f:?}");
    assert_eq!(
        f[1], "POST /orders/7?x=1 HTTP/2",
        "proxies talk HTTP/2: {f:?}"
    );
    assert_eq!((f[7].as_str(), f[8].as_str()), ("8", "8"), "bytes: {f:?}");
    assert_eq!(f[2], "200");
    assert_eq!(f[3], "-");
    assert_eq!(f[4], "via_upstream");
    assert_eq!(f[13], request_id, "the same request id on both hops: {f:?}");
    assert_eq!(f[15], format!("127.0.0.1:{}", echo.port()));
    assert_eq!(f[16], format!("inbound|{}||", echo.port()));
    assert_eq!(f[22], spiffe("frontend"), "the verified peer: {f:?}");
    // What `meshctl top` reads back.
    let parsed = meshapi::telemetry::access_log::AccessLogLine::parse(&b_log.lines()[0]).unwrap();
    assert_eq!(parsed.response_code, 200);
    assert_eq!(parsed.downstream_peer_uri_san, Some(spiffe("frontend")));

    // A client's own request id is kept.
    let (status, _) = send(
        &client,
        &format!("http://{out}/x"),
        &[("x-request-id", "given-id")],
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eventually!(a_log.lines().len() == 2, "lines: {:?}", a_log.lines());
    let second: serde_json::Value = serde_json::from_str(&a_log.lines()[1]).unwrap();
    assert_eq!(
        second["request_id"], "given-id",
        "a client's x-request-id is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stdout_drops_and_counts_access_log_lines_and_requests_keep_flowing() {
    let mesh = Mesh::new();
    let echo = EchoServer::start("echo").await;
    let b_yaml = format!(
        "{}inbound:\n  - {{ port: {}, protocol: http, mode: PERMISSIVE }}\n{}",
        base_yaml(&mesh.identity_yaml("backend"), 1),
        echo.port(),
        telemetry_yaml("TEXT", 0.0, None)
    );
    // A pipe nobody reads, filled to the brim before the proxy gets it: every write blocks.
    let (tx, _never_read) = pipe::pipe().unwrap();
    let filler = vec![b'#'; 4096];
    loop {
        tx.writable().await.unwrap();
        if tx.try_write(&filler).is_err() {
            break;
        }
    }
    let b = meshproxy::build_with(parse(&b_yaml), options(Box::pin(tx)))
        .await
        .unwrap();
    let total = meshproxy::telemetry::access_log::QUEUE_LINES + 400;
    let url = format!("http://{}/stall", b.inbound);
    let mut tasks = Vec::new();
    for k in 0..4 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let client = http1_client();
            let mut ok = 0;
            for _ in (k..total).step_by(4) {
                let (status, _) = send(&client, &url, &[], "").await;
                ok += usize::from(status == 200);
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        // Bounded: a request waiting on the stalled pipe would never finish.
        ok += tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("requests stalled behind the access log")
            .unwrap();
    }
    assert_eq!(ok, total, "every request answered");
    let stats = b.stats;
    let (_, _, text) = get(&http1_client(), &format!("http://{stats}/stats/prometheus")).await;
    let dropped: u64 = metric(&text, "meshproxy_access_log_dropped_total");
    let written: u64 = metric(&text, "meshproxy_access_log_lines_total");
    assert_eq!(written, 0, "nothing gets through a stalled pipe");
    // The queue holds QUEUE_LINES, the writer one batch; the rest is dropped.
    assert!(
        (100..=total as u64).contains(&dropped),
        "{dropped} dropped of {total}"
    );
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_through_two_proxies_is_one_trace_of_a_client_and_a_server_span() {
    let mesh = Mesh::new();
    let echo = EchoServer::start("echo").await;
    let collector = Collector::start().await;
    // 0%: only the caller's sampled flag makes these spans.
    let (_a, b, _a_log, _b_log, out) =
        pair(&mesh, &echo, "JSON", 0.0, Some(&collector.url())).await;
    let client = http1_client();
    let caller_span = "b7ad6b7169203331";
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let (status, _) = send(
        &client,
        &format!("http://{out}/checkout"),
        &[
            ("traceparent", &format!("00-{trace}-{caller_span}-01")),
            ("tracestate", "vendor=1"),
            ("x-tenant", "acme"),
        ],
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eventually!(
        collector.spans().len() == 2,
        timeout = Duration::from_secs(20),
        "spans: {:?}",
        collector.spans()
    );
    let spans = collector.spans();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let (a_service, client_span) = spans
        .iter()
        .find(|(_, s)| s.kind == SpanKind::Client as i32)
        .unwrap()
        .clone();
    let (b_service, server_span) = spans
        .iter()
        .find(|(_, s)| s.kind == SpanKind::Server as i32)
        .unwrap()
        .clone();
    assert_eq!(a_service, "frontend.default");
    assert_eq!(b_service, "backend.default");
    for s in [&client_span, &server_span] {
        assert_eq!(hex(&s.trace_id), trace, "one trace");
        assert_eq!(attr(s, "component").as_deref(), Some("proxy"));
        assert_eq!(attr(s, "http.status_code").as_deref(), Some("200"));
        assert_eq!(attr(s, "response_flags").as_deref(), Some("-"));
        assert_eq!(attr(s, "team").as_deref(), Some("payments"), "literal tag");
        assert_eq!(attr(s, "tenant").as_deref(), Some("acme"), "header tag");
        assert!(attr(s, "node_id").is_some());
        assert!(s.end_time_unix_nano >= s.start_time_unix_nano);
    }
    assert_eq!(
        hex(&client_span.parent_span_id),
        caller_span,
        "the caller's span is the parent"
    );
    assert_eq!(
        server_span.parent_span_id, client_span.span_id,
        "the server span's parent is the client span"
    );
    assert!(
        attr(&client_span, "upstream_cluster")
            .unwrap()
            .starts_with("outbound|"),
        "{client_span:?}"
    );
    assert_eq!(
        attr(&client_span, "upstream_peer.principal"),
        Some(spiffe("backend"))
    );
    assert_eq!(
        attr(&server_span, "upstream_cluster"),
        Some(format!("inbound|{}||", echo.port()))
    );
    assert_eq!(
        attr(&server_span, "downstream_peer.principal"),
        Some(spiffe("frontend"))
    );
    assert_eq!(
        attr(&client_span, "guid:x-request-id"),
        attr(&server_span, "guid:x-request-id")
    );
    // The application sees the server span as its parent, the trace's state passed on.
    let seen = echo.last().unwrap();
    assert_eq!(
        seen.headers["traceparent"].to_str().unwrap(),
        format!("00-{trace}-{}-01", hex(&server_span.span_id))
    );
    assert_eq!(seen.headers["tracestate"], "vendor=1");
    let stats = b.stats;
    assert_eventually!(
        {
            let (_, _, text) =
                get(&http1_client(), &format!("http://{stats}/stats/prometheus")).await;
            metric(&text, "meshproxy_trace_spans_exported_total") == 1
        },
        "the server proxy counts its exported span"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_loses_spans_counted_never_requests() {
    let mesh = Mesh::new();
    let echo = EchoServer::start("echo").await;
    // A port that was just free: nothing listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{dead}/v1/traces");
    let (a, _b, _a_log, _b_log, out) = pair(&mesh, &echo, "TEXT", 100.0, Some(&url)).await;
    let client = http1_client();
    for i in 0..20 {
        let (status, _) = send(&client, &format!("http://{out}/r/{i}"), &[], "").await;
        assert_eq!(status, 200);
    }
    let stats = a.stats;
    assert_eventually!(
        {
            let (_, _, text) =
                get(&http1_client(), &format!("http://{stats}/stats/prometheus")).await;
            metric(&text, "meshproxy_trace_spans_dropped_total") == 20
        },
        timeout = Duration::from_secs(30),
        "the client proxy's 20 spans are counted as dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_connection_is_one_access_log_line_per_proxy_with_its_bytes() {
    let mesh = Mesh::new();
    let tcp_echo = meshtest::TcpEcho::start().await;
    let port = tcp_echo.addr().port();
    let b_yaml = format!(
        "{}inbound:\n  - {{ port: {port}, protocol: tcp, mode: STRICT }}\n{}",
        base_yaml(&mesh.identity_yaml("backend"), 1),
        telemetry_yaml("JSON", 0.0, None)
    );
    let (b_log, b_sink) = LogPipe::start();
    let b = meshproxy::build_with(parse(&b_yaml), options(b_sink))
        .await
        .unwrap();
    let a_yaml = format!(
        "{}{}",
        client_yaml(
            &mesh.identity_yaml("frontend"),
            1,
            VIP,
            "tcp",
            port,
            &[(b.inbound, "backend")],
        ),
        telemetry_yaml("JSON", 0.0, None)
    );
    let (a_log, a_sink) = LogPipe::start();
    let a = meshproxy::build_with(parse(&a_yaml), options(a_sink))
        .await
        .unwrap();
    let mut s = tokio::net::TcpStream::connect(a.outbound(VIP.parse().unwrap()).unwrap())
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"twelve bytes").await.unwrap();
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).await.unwrap();
    drop(s);
    for (log, peer_key, peer) in [
        (&a_log, "upstream_peer_uri_san", spiffe("backend")),
        (&b_log, "downstream_peer_uri_san", spiffe("frontend")),
    ] {
        assert_eventually!(log.lines().len() == 1, "lines: {:?}", log.lines());
        let line: serde_json::Value = serde_json::from_str(&log.lines()[0]).unwrap();
        assert_eq!(line["protocol"], "TCP", "{line}");
        assert_eq!(line["bytes_received"], 12, "{line}");
        assert_eq!(line["bytes_sent"], 12, "{line}");
        assert_eq!(line["response_flags"], "-", "{line}");
        assert!(line["method"].is_null(), "{line}");
        assert_eq!(line[peer_key], peer.as_str(), "{line}");
    }
}

/// The `_sum` of one `istio_request_bytes` series whose labels include `reporter`.
fn request_bytes_sum(text: &str, reporter: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with("istio_request_bytes_sum{"))
        .find(|l| l.contains(&format!("reporter=\"{reporter}\"")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_request_body_counts_its_bytes_in_the_access_log_and_metrics() {
    let mesh = Mesh::new();
    let echo = EchoServer::start("echo").await;
    let (a, b, a_log, b_log, out) = pair(&mesh, &echo, "JSON", 0.0, None).await;
    // As curl sends a body it reads from a pipe: chunked, no content-length.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(out).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nhost: backend\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let mut resp = String::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_string(&mut resp))
        .await
        .expect("response in time")
        .unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(echo.last().unwrap().body, &b"hello, world"[..]);
    for (log, side) in [(&a_log, "client"), (&b_log, "server")] {
        assert_eventually!(log.lines().len() == 1, "{side} lines: {:?}", log.lines());
        let line: serde_json::Value = serde_json::from_str(&log.lines()[0]).unwrap();
        assert_eq!(line["bytes_received"], 12, "{side}: {line}");
    }
    let client = http1_client();
    for (proxy, reporter) in [(&a, "source"), (&b, "destination")] {
        let (_, _, text) = get(&client, &format!("http://{}/stats/prometheus", proxy.stats)).await;
        assert_eq!(
            request_bytes_sum(&text, reporter),
            Some(12.0),
            "istio_request_bytes ({reporter}):\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_connection_that_never_reaches_its_upstream_is_logged_with_its_flag() {
    let mesh = Mesh::new();
    // Nothing listens on the application port behind B (a port taken and released).
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let b_yaml = format!(
        "{}inbound:\n  - {{ port: {port}, protocol: tcp, mode: STRICT }}\n{}",
        base_yaml(&mesh.identity_yaml("backend"), 1),
        telemetry_yaml("JSON", 0.0, None)
    );
    let (b_log, b_sink) = LogPipe::start();
    let b = meshproxy::build_with(parse(&b_yaml), options(b_sink))
        .await
        .unwrap();
    // A's endpoint for the service is B; a second client proxy's endpoint is a closed port.
    let a_yaml = format!(
        "{}{}",
        client_yaml(
            &mesh.identity_yaml("frontend"),
            1,
            VIP,
            "tcp",
            port,
            &[(b.inbound, "backend")],
        ),
        telemetry_yaml("TEXT", 0.0, None)
    );
    let (a_log, a_sink) = LogPipe::start();
    let a = meshproxy::build_with(parse(&a_yaml), options(a_sink))
        .await
        .unwrap();
    use tokio::io::AsyncReadExt;
    let mut s = tokio::net::TcpStream::connect(a.outbound(VIP.parse().unwrap()).unwrap())
        .await
        .unwrap();
    let mut buf = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf))
        .await
        .expect("the proxies neither answered nor closed");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    // B could not reach its application: one line, UF, no bytes.
    assert_eventually!(b_log.lines().len() == 1, "B lines: {:?}", b_log.lines());
    let line: serde_json::Value = serde_json::from_str(&b_log.lines()[0]).unwrap();
    assert_eq!(line["protocol"], "TCP", "{line}");
    assert_eq!(line["response_flags"], "UF", "{line}");
    assert_eq!(
        line["response_code_details"], "upstream_reset_before_response_started{connection_failure}",
        "{line}"
    );
    assert_eq!(line["bytes_received"], 0, "{line}");
    assert_eq!(line["downstream_peer_uri_san"], spiffe("frontend").as_str());
    assert_eq!(
        line["upstream_host"],
        format!("127.0.0.1:{port}").as_str(),
        "{line}"
    );
    // A reached B (its upstream), so its own line is a plain connection with no flag.
    assert_eventually!(a_log.lines().len() == 1, "A lines: {:?}", a_log.lines());
    let a_line = meshapi::telemetry::access_log::AccessLogLine::parse(&a_log.lines()[0]).unwrap();
    assert_eq!(a_line.response_flags, "-", "{a_line:?}");

    // A client proxy whose endpoint does not listen: UF on the client side, and Istio's TCP
    // metrics count it opened and closed.
    let c_yaml = format!(
        "{}{}",
        client_yaml(
            &mesh.identity_yaml("frontend"),
            1,
            VIP,
            "tcp",
            port,
            &[(SocketAddr::from(([127, 0, 0, 1], port)), "backend")],
        ),
        telemetry_yaml("TEXT", 0.0, None)
    );
    let (c_log, c_sink) = LogPipe::start();
    let c = meshproxy::build_with(parse(&c_yaml), options(c_sink))
        .await
        .unwrap();
    let mut s = tokio::net::TcpStream::connect(c.outbound(VIP.parse().unwrap()).unwrap())
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf))
        .await
        .expect("the proxy neither answered nor closed");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert_eventually!(c_log.lines().len() == 1, "C lines: {:?}", c_log.lines());
    let f = text_fields(&c_log.lines()[0]);
    assert_eq!(f.len(), 24, "{f:?}");
    assert_eq!((f[1].as_str(), f[3].as_str()), ("- - TCP", "UF"), "{f:?}");
    assert_eq!(
        f[23],
        spiffe("backend"),
        "the identity it had to present: {f:?}"
    );
    let (_, _, text) = get(
        &http1_client(),
        &format!("http://{}/stats/prometheus", c.stats),
    )
    .await;
    for name in [
        "istio_tcp_connections_opened_total",
        "istio_tcp_connections_closed_total",
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{")))
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"));
        assert!(line.contains("response_flags=\"UF\""), "{line}");
        assert!(line.ends_with(" 1"), "{line}");
    }
}
