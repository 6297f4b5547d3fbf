//! End-to-end through two in-process proxies: client -> proxy A (outbound) -> mTLS ->
//! proxy B (inbound) -> echo app, for HTTP/1.1, gRPC-style HTTP/2 with trailers, TCP and
//! WebSocket-style upgrades and CONNECT; plus live reload, admin endpoints and drain.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use meshtest::{EchoServer, TcpEcho, assert_eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const VIP: &str = "127.0.0.1:0";

fn vip() -> SocketAddr {
    VIP.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_through_two_proxies_carries_peer_identity() {
    let mesh = Mesh::new();
    let echo = EchoServer::start("echo").await;
    let b = backend_proxy(&mesh, "backend", echo.port(), "http", "STRICT").await;
    let a_yaml = client_yaml(
        &mesh.identity_yaml("frontend"),
        1,
        VIP,
        "http",
        echo.port(),
        &[(b.inbound, "backend")],
    );
    let a = meshproxy::build(parse(&a_yaml)).await.unwrap();
    let out = a.outbound(vip()).unwrap();

    let client = http1_client();
    for i in 0..3 {
        let (status, headers, body) = get(&client, &format!("http://{out}/hello/{i}")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers["x-echo-server"], "echo");
        assert_eq!(headers["x-echo-path"], format!("/hello/{i}").as_str());
    }
    let seen = echo.last().unwrap();
    let xfcc = seen.headers["x-forwarded-client-cert"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        xfcc.contains(&format!("URI={}", spiffe("frontend"))),
        "{xfcc}"
    );
    assert!(
        xfcc.contains(&format!("By={}", spiffe("backend"))),
        "{xfcc}"
    );
    assert_eq!(seen.headers["host"], out.to_string().as_str());
    // Three requests, one pooled mTLS connection between the proxies.
    assert_eq!(
        b.handle
            .metrics()
            .render()
            .lines()
            .find(|l| l.starts_with("meshproxy_connections_total{direction=\"inbound\"}"))
            .unwrap(),
        "meshproxy_connections_total{direction=\"inbound\"} 1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_style_h2_keeps_trailers_and_bodies() {
    let mesh = Mesh::new();
    let echo = EchoServer::start("grpc").await;
    let b = backend_proxy(&mesh, "backend", echo.port(), "grpc", "STRICT").await;
    let a_yaml = client_yaml(
        &mesh.identity_yaml("frontend"),
        1,
        VIP,
        "grpc",
        echo.port(),
        &[(b.inbound, "backend")],
    );
    let a = meshproxy::build(parse(&a_yaml)).await.unwrap();
    let out = a.outbound(vip()).unwrap();

    let client = h2c_client();
    let req = http::Request::post(format!("http://{out}/pkg.Svc/Call"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-echo-trailers", "1")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x03abc")))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x03abc");
    assert_eq!(echo.last().unwrap().version, http::Version::HTTP_2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_upgrade_streams_pass_through() {
    let mesh = Mesh::new();
    // TCP
    let tcp_echo = TcpEcho::start().await;
    let port = tcp_echo.addr().port();
    let b = backend_proxy(&mesh, "backend", port, "tcp", "STRICT").await;
    let a_yaml = client_yaml(
        &mesh.identity_yaml("frontend"),
        1,
        VIP,
        "tcp",
        port,
        &[(b.inbound, "backend")],
    );
    let a = meshproxy::build(parse(&a_yaml)).await.unwrap();
    let mut s = TcpStream::connect(a.outbound(vip()).unwrap())
        .await
        .unwrap();
    for msg in [&b"hello"[..], b"world"] {
        s.write_all(msg).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, msg);
    }

    // Upgrade (WebSocket handshake shape) over HTTP/1.1.
    let echo = EchoServer::start("ws").await;
    let b = backend_proxy(&mesh, "backend", echo.port(), "http", "STRICT").await;
    let a_yaml = client_yaml(
        &mesh.identity_yaml("frontend"),
        1,
        VIP,
        "http",
        echo.port(),
        &[(b.inbound, "backend")],
    );
    let a = meshproxy::build(parse(&a_yaml)).await.unwrap();
    let mut s = TcpStream::connect(a.outbound(vip()).unwrap())
        .await
        .unwrap();
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: backend\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    s.write_all(b"ping-frame").await.unwrap();
    let mut buf = [0u8; 10];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping-frame");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_a_flagged_local_response() {
    let mesh = Mesh::new();
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let a_yaml = client_yaml(
        &mesh.identity_yaml("frontend"),
        1,
        VIP,
        "http",
        8080,
        &[(dead, "backend")],
    );
    let a = meshproxy::build(parse(&a_yaml)).await.unwrap();
    let (status, headers, body) = get(
        &http1_client(),
        &format!("http://{}/", a.outbound(vip()).unwrap()),
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(headers["x-meshctl-response-flags"], "UF");
    assert_eq!(
        body,
        "upstream connect error to backend: connection refused\n"
    );

    // No endpoints at all: UH.
    let a_yaml = client_yaml(&mesh.identity_yaml("frontend"), 1, VIP, "http", 8080, &[]);
    let a = meshproxy::build(parse(&a_yaml)).await.unwrap();
    let (status, headers, body) = get(
        &http1_client(),
        &format!("http://{}/", a.outbound(vip()).unwrap()),
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(headers["x-meshctl-response-flags"], "UH");
    // The default route table names the cluster (Envoy's `outbound|<port>|<subset>|<host>`).
    assert_eq!(body, "no healthy upstream for outbound|8080||backend\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_server_identity_is_refused() {
    let mesh = Mesh::new();
    let echo = EchoServer::start("echo").await;
    let b = backend_proxy(&mesh, "impostor", echo.port(), "http", "STRICT").await;
    let a_yaml = client_yaml(
        &mesh.identity_yaml("frontend"),
        1,
        VIP,
        "http",
        echo.port(),
        &[(b.inbound, "backend")],
    );
    let a = meshproxy::build(parse(&a_yaml)).await.unwrap();
    let (status, headers, body) = get(
        &http1_client(),
        &format!("http://{}/", a.outbound(vip()).unwrap()),
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(headers["x-meshctl-response-flags"], "UF");
    assert!(body.contains("impostor"), "{body}");
    assert_eq!(echo.completed(), 0);
    // The default route carries Istio's retry policy (2 retries on connect-failure): the
    // handshake is refused on every try.
    assert_eq!(
        a.handle
            .metrics()
            .tls_failures(meshproxy::metrics::Direction::Outbound),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_moves_new_requests_without_dropping_keepalive() {
    let mesh = Mesh::new();
    let echo1 = EchoServer::start("one").await;
    let echo2 = EchoServer::start("two").await;
    let b1 = backend_proxy(&mesh, "backend", echo1.port(), "http", "STRICT").await;
    let b2 = backend_proxy(&mesh, "backend", echo1.port(), "http", "STRICT").await;
    // b2 forwards the same app port number to a different app: reuse port by pointing b2's
    // inbound at echo2 instead.
    drop(b2);
    let b2 = backend_proxy(&mesh, "backend", echo2.port(), "http", "STRICT").await;
    let identity = mesh.identity_yaml("frontend");
    let cfg1 = client_yaml(
        &identity,
        1,
        VIP,
        "http",
        echo1.port(),
        &[(b1.inbound, "backend")],
    );
    let a = meshproxy::build(parse(&cfg1)).await.unwrap();
    let out = a.outbound(vip()).unwrap();

    // One keep-alive HTTP/1.1 connection for the whole test.
    let stream = TcpStream::connect(out).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let r = send(&mut sender).await;
    assert_eq!(r.headers()["x-echo-server"], "one");
    r.into_body().collect().await.unwrap();

    // An invalid config is refused; the old one keeps serving.
    let bad = cfg1.replace("apiVersion: meshproxy/v1", "apiVersion: meshproxy/v2");
    let bad =
        meshapi::proxy::ProxyConfig::from_str_checked(&bad.replace("v2", "v1")).map(|mut c| {
            c.api_version = "meshproxy/v2".into();
            c
        });
    assert!(a.handle.apply(bad.unwrap()).is_err());
    let r = send(&mut sender).await;
    assert_eq!(r.headers()["x-echo-server"], "one");
    r.into_body().collect().await.unwrap();

    let cfg2 = client_yaml(
        &identity,
        2,
        VIP,
        "http",
        echo2.port(),
        &[(b2.inbound, "backend")],
    );
    a.handle.apply(parse(&cfg2)).unwrap();
    let r = send(&mut sender).await;
    assert_eq!(r.headers()["x-echo-server"], "two");
    r.into_body().collect().await.unwrap();
    assert!(!sender.is_closed());
    assert_eq!(a.handle.config().revision, 2);
    let stats = a.handle.metrics().render();
    assert!(
        stats.contains("meshproxy_connections_total{direction=\"outbound\"} 1"),
        "{stats}"
    );
    assert!(
        stats.contains("meshproxy_config_reloads_total{result=\"rejected\"} 1"),
        "{stats}"
    );
    assert!(stats.contains("meshproxy_config_revision 2"), "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_changes_are_applied_and_bad_files_refused() {
    let mesh = Mesh::new();
    let echo = EchoServer::start("echo").await;
    let b = backend_proxy(&mesh, "backend", echo.port(), "http", "STRICT").await;
    let identity = mesh.identity_yaml("frontend");
    let cfg = |rev| {
        client_yaml(
            &identity,
            rev,
            VIP,
            "http",
            echo.port(),
            &[(b.inbound, "backend")],
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "proxy.yaml", &cfg(1));
    let a = meshproxy::build(meshapi::proxy::ProxyConfig::load_file(&path).unwrap())
        .await
        .unwrap();
    let _w = meshproxy::watch::spawn(path.clone(), a.handle.clone()).unwrap();

    // Replace by rename, as editors and config management do.
    let tmp = write_file(dir.path(), ".proxy.yaml.tmp", &cfg(2));
    std::fs::rename(&tmp, &path).unwrap();
    assert_eventually!(a.handle.config().revision == 2, "revision 2 never applied");

    std::fs::write(
        &path,
        "apiVersion: meshproxy/v1\nrevision: 3\nbogus: true\n",
    )
    .unwrap();
    assert_eventually!(
        a.handle
            .metrics()
            .render()
            .contains("meshproxy_config_reloads_total{result=\"rejected\"} 1"),
        "bad file not refused"
    );
    assert_eq!(a.handle.config().revision, 2);
    let (status, _, _) = get(
        &http1_client(),
        &format!("http://{}/", a.outbound(vip()).unwrap()),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_health_and_stats() {
    let mesh = Mesh::new();
    let echo = EchoServer::start("echo").await;
    let b = backend_proxy(&mesh, "backend", echo.port(), "http", "PERMISSIVE").await;
    let c = http1_client();
    let (s, _, body) = get(&c, &format!("http://{}/healthz/ready", b.health)).await;
    assert_eq!((s.as_u16(), body.as_str()), (200, "ready\n"));
    let (s, _, body) = get(&c, &format!("http://{}/config_dump", b.admin)).await;
    assert_eq!(s, 200);
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(dump["config"]["identity"]["keyFile"], "<redacted>");
    assert_eq!(dump["certificate"], spiffe("backend"));
    let (s, _, body) = get(&c, &format!("http://{}/stats/prometheus", b.stats)).await;
    assert_eq!(s, 200);
    assert!(
        body.contains("meshproxy_tls_handshake_failures_total{direction=\"inbound\"} 0"),
        "{body}"
    );
    assert!(body.contains("meshproxy_config_revision 1"), "{body}");
    let (s, _, _) = get(&c, &format!("http://{}/logging?level=debug", b.admin)).await;
    assert_eq!(s, 501, "in-process proxies have no log control");

    // Without credentials the proxy runs but is not ready.
    let yaml = format!(
        "{}inbound:\n  - {{ port: {}, protocol: http }}\n",
        base_yaml(&format!("identity:\n  spiffeId: {}\n", spiffe("nocert")), 1),
        echo.port()
    );
    let p = meshproxy::build(parse(&yaml)).await.unwrap();
    let (s, _, body) = get(&c, &format!("http://{}/healthz/ready", p.health)).await;
    assert_eq!(
        (s.as_u16(), body.as_str()),
        (503, "not ready: no workload certificate loaded\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_accepts_plaintext_and_strict_refuses_it() {
    let mesh = Mesh::new();
    let echo = EchoServer::start("echo").await;
    let p = backend_proxy(&mesh, "backend", echo.port(), "http", "PERMISSIVE").await;
    let started = std::time::Instant::now();
    let resp = raw(p.inbound, b"GET /plain HTTP/1.1\r\nHost: x\r\nx-forwarded-client-cert: By=forged\r\nConnection: close\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "sniffing stalled"
    );
    assert!(
        !echo
            .last()
            .unwrap()
            .headers
            .contains_key("x-forwarded-client-cert")
    );

    let s = backend_proxy(&mesh, "backend", echo.port(), "http", "STRICT").await;
    // Closed without a byte, as Envoy does (no TLS alert for curl to read as HTTP/0.9), and
    // counted as a PeerAuthentication refusal, not a failed handshake.
    let started = std::time::Instant::now();
    let resp = raw(s.inbound, b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(resp, "", "plaintext under STRICT got bytes back");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "plaintext under STRICT was not closed"
    );
    assert_eventually!(
        s.handle
            .metrics()
            .render()
            .contains("meshproxy_peer_auth_rejected_total 1"),
        "plaintext under STRICT not counted"
    );
    assert_eq!(
        s.handle
            .metrics()
            .tls_failures(meshproxy::metrics::Direction::Inbound),
        0
    );
    assert_eq!(echo.completed(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_and_stops_accepting() {
    let mesh = Mesh::new();
    let echo = EchoServer::start("echo").await;
    let b = backend_proxy(&mesh, "backend", echo.port(), "http", "STRICT").await;
    let a_yaml = client_yaml(
        &mesh.identity_yaml("frontend"),
        1,
        VIP,
        "http",
        echo.port(),
        &[(b.inbound, "backend")],
    );
    let a = meshproxy::build(parse(&a_yaml)).await.unwrap();
    let out = a.outbound(vip()).unwrap();
    // An idle keep-alive connection is closed by the drain, not waited on until the deadline.
    let stream = TcpStream::connect(out).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let r = sender
        .send_request(
            http::Request::get("/")
                .header("host", "b")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.into_body().collect().await.unwrap();
    let started = std::time::Instant::now();
    let forced = a.handle.shutdown().await;
    assert_eq!(forced, 0);
    assert!(started.elapsed() < Duration::from_secs(2));
    conn.await.unwrap().unwrap();
    assert_eventually!(
        TcpStream::connect(out).await.is_err(),
        "listener still accepting"
    );
}

async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
) -> http::Response<hyper::body::Incoming> {
    sender.ready().await.unwrap();
    let req = http::Request::get("/x")
        .header("host", "backend")
        .body(Full::new(Bytes::new()))
        .unwrap();
    sender.send_request(req).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_keeps_connections_and_new_roots_apply_to_new_handshakes() {
    let mesh = Mesh::new();
    let echo = EchoServer::start("echo").await;
    let b_yaml = format!(
        "{}inbound:\n  - {{ port: {}, protocol: http, mode: STRICT }}\n",
        base_yaml(&mesh.identity_yaml("backend"), 1),
        echo.port()
    );
    let b = meshproxy::build(parse(&b_yaml)).await.unwrap();
    let a_yaml = client_yaml(
        &mesh.identity_yaml("frontend"),
        1,
        VIP,
        "http",
        echo.port(),
        &[(b.inbound, "backend")],
    );
    let a = meshproxy::build(parse(&a_yaml)).await.unwrap();
    let url = format!("http://{}/", a.outbound(vip()).unwrap());
    let client = http1_client();
    assert_eq!(get(&client, &url).await.0, 200);

    // Rotation: same CA, new key and certificate for backend, applied live.
    mesh.ca
        .issue(&spiffe("backend"))
        .write(mesh.path(), "backend");
    b.handle
        .apply(parse(&b_yaml.replace("revision: 1", "revision: 2")))
        .unwrap();
    assert_eq!(get(&client, &url).await.0, 200);
    // A fresh client proxy handshakes against the rotated certificate.
    let a2 = meshproxy::build(parse(&a_yaml)).await.unwrap();
    let url2 = format!("http://{}/", a2.outbound(vip()).unwrap());
    assert_eq!(get(&client, &url2).await.0, 200);
    assert_eq!(
        b.handle
            .metrics()
            .tls_failures(meshproxy::metrics::Direction::Inbound),
        0
    );

    // New trust roots on backend (a new CA): the pooled connection that already exists keeps
    // serving, but no new handshake from the old CA's workloads succeeds.
    let new_ca = meshtest::TestCa::new("new-root");
    new_ca.write_roots(mesh.path(), "roots.pem");
    new_ca
        .issue(&spiffe("backend"))
        .write(mesh.path(), "backend");
    b.handle
        .apply(parse(&b_yaml.replace("revision: 1", "revision: 3")))
        .unwrap();
    assert_eq!(
        get(&client, &url).await.0,
        200,
        "open connection dropped by rotation"
    );
    // A workload that still trusts only the old root cannot reach the re-rooted backend.
    let old_roots_client = {
        let p = write_file(mesh.path(), "old-roots.pem", &mesh.ca.roots_pem());
        let (cert, key) = mesh
            .ca
            .issue(&spiffe("frontend"))
            .write(mesh.path(), "frontend-old");
        let y = format!(
            "apiVersion: meshproxy/v1\nidentity:\n  spiffeId: {}\n  certFile: {}\n  keyFile: {}\n  rootsFile: {}\n",
            spiffe("frontend"),
            cert.display(),
            key.display(),
            p.display()
        );
        let y = a_yaml.replace(&a_yaml[..a_yaml.find("listeners:").unwrap()], &y);
        meshproxy::build(parse(&y)).await.unwrap()
    };
    let url4 = format!("http://{}/", old_roots_client.outbound(vip()).unwrap());
    let (status, headers, _) = get(&client, &url4).await;
    assert_eq!(status, 503);
    assert_eq!(headers["x-meshctl-response-flags"], "UF");
    assert_eventually!(
        b.handle
            .metrics()
            .tls_failures(meshproxy::metrics::Direction::Inbound)
            >= 1,
        "handshake with the old CA was not refused by backend"
    );
}

/// New trust roots on the client retire what its pool holds: the next request must not ride a
/// connection verified under the old roots (it would succeed; a fresh handshake is refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_roots_on_the_client_retire_its_pooled_connections() {
    let mesh = Mesh::new();
    let echo = EchoServer::start("echo").await;
    let b = backend_proxy(&mesh, "backend", echo.port(), "http", "STRICT").await;
    let a_yaml = client_yaml(
        &mesh.identity_yaml("frontend"),
        1,
        VIP,
        "http",
        echo.port(),
        &[(b.inbound, "backend")],
    );
    let a = meshproxy::build(parse(&a_yaml)).await.unwrap();
    let url = format!("http://{}/", a.outbound(vip()).unwrap());
    let client = http1_client();
    assert_eq!(get(&client, &url).await.0, 200);
    let pooled = "meshproxy_upstream_pooled_connections{protocol=\"http2\"} 1";
    let (_, _, stats) = get(&client, &format!("http://{}/stats/prometheus", a.stats)).await;
    assert!(stats.contains(pooled), "{stats}");

    // The client moves to a new CA (its own certificate and roots); backend keeps the old one.
    let new_ca = meshtest::TestCa::new("client-new-root");
    let roots = new_ca.write_roots(mesh.path(), "client-new-roots.pem");
    let (cert, key) = new_ca
        .issue(&spiffe("frontend"))
        .write(mesh.path(), "frontend-new");
    let identity = format!(
        "identity:\n  spiffeId: {}\n  certFile: {}\n  keyFile: {}\n  rootsFile: {}\n",
        spiffe("frontend"),
        cert.display(),
        key.display(),
        roots.display()
    );
    let moved = client_yaml(
        &identity,
        2,
        VIP,
        "http",
        echo.port(),
        &[(b.inbound, "backend")],
    );
    a.handle.apply(parse(&moved)).unwrap();
    let (status, headers, body) = get(&client, &url).await;
    assert_eq!(
        status, 503,
        "a connection verified under the old roots was reused: {body}"
    );
    assert_eq!(headers["x-meshctl-response-flags"], "UF", "{body}");
    assert_eq!(echo.completed(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connection_recovers_when_the_peer_proxy_restarts() {
    let mesh = Mesh::new();
    let echo = EchoServer::start("echo").await;
    let b_yaml = format!(
        "{}inbound:\n  - {{ port: {}, protocol: http, mode: STRICT }}\n",
        base_yaml(&mesh.identity_yaml("backend"), 1),
        echo.port()
    );
    let b = meshproxy::build(parse(&b_yaml)).await.unwrap();
    let a_yaml = client_yaml(
        &mesh.identity_yaml("frontend"),
        1,
        VIP,
        "http",
        echo.port(),
        &[(b.inbound, "backend")],
    );
    let a = meshproxy::build(parse(&a_yaml)).await.unwrap();
    let url = format!("http://{}/", a.outbound(vip()).unwrap());
    let client = http1_client();
    assert_eq!(get(&client, &url).await.0, 200);

    b.handle.shutdown().await;
    let restarted = b_yaml.replace("inbound: 127.0.0.1:0", &format!("inbound: {}", b.inbound));
    let _b2 = meshproxy::build(parse(&restarted)).await.unwrap();
    for _ in 0..3 {
        let (status, _, body) = get(&client, &url).await;
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_passes_through_to_a_forward_proxy_in_the_mesh() {
    let mesh = Mesh::new();
    let (app, seen) = connect_app().await;
    let b = backend_proxy(&mesh, "backend", app.port(), "http", "STRICT").await;
    let a_yaml = client_yaml(
        &mesh.identity_yaml("frontend"),
        1,
        VIP,
        "http",
        app.port(),
        &[(b.inbound, "backend")],
    );
    let a = meshproxy::build(parse(&a_yaml)).await.unwrap();
    let mut s = TcpStream::connect(a.outbound(vip()).unwrap())
        .await
        .unwrap();
    s.write_all(b"CONNECT api.example.test:443 HTTP/1.1\r\nHost: api.example.test:443\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The forward proxy got the client's target, over mTLS between the proxies.
    let lines: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|h| h.lines().next().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        lines,
        vec!["CONNECT api.example.test:443 HTTP/1.1".to_string()]
    );
    for msg in [&b"\x16\x03\x01 tls-ish bytes"[..], b"more"] {
        s.write_all(msg).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, msg);
    }

    // A refused CONNECT (nothing listens on the app port) is a flagged local answer.
    let b2 = backend_proxy(&mesh, "backend", 1, "http", "STRICT").await;
    let a_yaml = client_yaml(
        &mesh.identity_yaml("frontend"),
        2,
        VIP,
        "http",
        1,
        &[(b2.inbound, "backend")],
    );
    let a = meshproxy::build(parse(&a_yaml)).await.unwrap();
    let out = raw(
        a.outbound(vip()).unwrap(),
        b"CONNECT api.example.test:443 HTTP/1.1\r\nHost: api.example.test:443\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("x-meshctl-response-flags: uf"),
        "{out}"
    );
}
