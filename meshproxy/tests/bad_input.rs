//! Bad input, each refused and counted while good traffic keeps flowing: request smuggling
//! shapes, oversized heads, slow heads, hop-by-hop and forged identity headers, and every
//! kind of bad peer certificate or plaintext under STRICT.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use meshproxy::metrics::Direction;
use meshtest::{EchoServer, LeafOptions, TestCa, Workload, assert_eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const VIP: &str = "127.0.0.1:0";

struct Pair {
    echo: EchoServer,
    a: meshproxy::Bound,
    b: meshproxy::Bound,
    out: SocketAddr,
    mesh: Mesh,
}

async fn pair(extra_a: &str) -> Pair {
    let mesh = Mesh::new();
    let echo = EchoServer::start("echo").await;
    let b = backend_proxy(&mesh, "backend", echo.port(), "http", "STRICT").await;
    let mut yaml = client_yaml(
        &mesh.identity_yaml("frontend"),
        1,
        VIP,
        "http",
        echo.port(),
        &[(b.inbound, "backend")],
    );
    yaml.push_str(extra_a);
    let a = meshproxy::build(parse(&yaml)).await.unwrap();
    let out = a.outbound(VIP.parse().unwrap()).unwrap();
    Pair {
        echo,
        a,
        b,
        out,
        mesh,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shapes_get_400_and_are_never_forwarded() {
    let p = pair("").await;
    let cases: [(&str, &str); 7] = [
        (
            "CL+TE",
            "POST / HTTP/1.1\r\nHost: b\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: b\r\n\r\n",
        ),
        (
            "TE+CL",
            "POST / HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\nContent-Length: 30\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: b\r\n\r\n",
        ),
        (
            "two equal CL",
            "POST / HTTP/1.1\r\nHost: b\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        ),
        (
            "two different CL",
            "POST / HTTP/1.1\r\nHost: b\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        ),
        (
            "obs-fold",
            "GET / HTTP/1.1\r\nHost: b\r\nX-Folded: a\r\n b\r\n\r\n",
        ),
        (
            "TE not chunked",
            "POST / HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        ),
        (
            "CL+TE after a good request",
            "GET /ok HTTP/1.1\r\nHost: b\r\n\r\nPOST / HTTP/1.1\r\nHost: b\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
    ];
    for (name, req) in cases {
        let resp = raw(p.out, req.as_bytes()).await;
        let last = resp.rfind("HTTP/1.1 ").map(|i| &resp[i..]).unwrap_or("");
        assert!(last.starts_with("HTTP/1.1 400"), "{name}: {resp}");
        assert!(!resp.contains("smuggled"));
    }
    assert_eq!(p.echo.completed(), 1, "{:?}", p.echo.seen());
    assert!(p.echo.seen().iter().all(|r| r.uri == "/ok"));
    let before = p.echo.completed();
    // A bad chunk size is found only while streaming the body: the request must never reach
    // the app complete, and the client never sees a success.
    let resp = raw(
        p.out,
        b"POST / HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert!(!resp.starts_with("HTTP/1.1 2"), "bad chunk: {resp}");
    assert_eq!(p.echo.completed(), before, "{:?}", p.echo.seen());
    // Good traffic still flows.
    let (s, _, _) = get(&http1_client(), &format!("http://{}/ok", p.out)).await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_slow_heads_are_cut() {
    let p = pair("limits:\n  headerReadTimeout: 300ms\n  maxHeaderBytes: 16384\n").await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: b\r\nX-Big: {}\r\n\r\n",
        "a".repeat(32 * 1024)
    );
    let resp = raw(p.out, big.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");

    let started = Instant::now();
    let mut s = TcpStream::connect(p.out).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: b\r\n").await.unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "slow head never cut");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(p.echo.completed(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_and_forged_identity_headers_are_stripped() {
    let p = pair("").await;
    let req = "GET /h HTTP/1.1\r\nHost: b\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n\
               Keep-Alive: timeout=5\r\nProxy-Authorization: Basic eA==\r\n\
               X-Forwarded-Client-Cert: By=spiffe://cluster.local/ns/default/sa/admin\r\n\
               X-Mesh-Peer: admin\r\nX-Keep: yes\r\n\r\n";
    let mut s = TcpStream::connect(p.out).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    assert_eventually!(p.echo.completed() == 1, "request not forwarded");
    let seen = p.echo.last().unwrap();
    for h in ["x-secret", "keep-alive", "proxy-authorization"] {
        assert!(
            !seen.headers.contains_key(h),
            "{h} forwarded: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.headers["x-keep"], "yes");
    // Only the exact reserved names are the proxy's; an application's x-mesh-* passes.
    assert_eq!(seen.headers["x-mesh-peer"], "admin");
    let xfcc = seen
        .headers
        .get_all("x-forwarded-client-cert")
        .iter()
        .collect::<Vec<_>>();
    assert_eq!(xfcc.len(), 1);
    let xfcc = xfcc[0].to_str().unwrap();
    assert!(
        xfcc.contains(&format!("URI={}", spiffe("frontend"))) && !xfcc.contains("sa/admin"),
        "{xfcc}"
    );
}

/// Connects to `addr` with an optional client certificate; returns what came back for one
/// HTTP request ("" when refused).
async fn tls_attempt(addr: SocketAddr, port: u16, cert: Option<&Workload>) -> String {
    let Some(mut tls) = mtls_connect(addr, port, cert, b"http/1.1").await else {
        return String::new();
    };
    if tls
        .write_all(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
        .await
        .is_err()
    {
        return String::new();
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_peers_are_refused_counted_and_others_keep_working() {
    let p = pair("").await;
    let port = p.echo.port();
    let ca = &p.mesh.ca;
    let other_ca = TestCa::new("other-root");
    let id = spiffe("frontend");
    let good = ca.issue(&id);
    // Sanity: a good certificate gets through directly.
    assert!(
        tls_attempt(p.b.inbound, port, Some(&good))
            .await
            .starts_with("HTTP/1.1 200")
    );

    let bad: Vec<(&str, Option<Workload>)> = vec![
        ("other CA", Some(other_ca.issue(&id))),
        (
            "expired",
            Some(ca.issue_with(LeafOptions {
                uris: vec![id.clone()],
                expired: true,
                ..Default::default()
            })),
        ),
        (
            "two SPIFFE IDs",
            Some(ca.issue_with(LeafOptions {
                uris: vec![id.clone(), spiffe("admin")],
                ..Default::default()
            })),
        ),
        ("no URI SAN", Some(ca.issue_with(LeafOptions::default()))),
        ("bad SPIFFE syntax", Some(ca.issue(&format!("{id}/extra")))),
        (
            "other trust domain",
            Some(ca.issue("spiffe://evil.example/ns/default/sa/frontend")),
        ),
        (
            "CA leaf",
            Some(ca.issue_with(LeafOptions {
                uris: vec![id.clone()],
                is_ca: true,
                ..Default::default()
            })),
        ),
        (
            "no digitalSignature",
            Some(ca.issue_with(LeafOptions {
                uris: vec![id.clone()],
                no_digital_signature: true,
                ..Default::default()
            })),
        ),
        ("no client certificate", None),
    ];
    let n = bad.len() as u64;
    for (name, cert) in &bad {
        let resp = tls_attempt(p.b.inbound, port, cert.as_ref()).await;
        assert!(resp.is_empty(), "{name} accepted: {resp}");
    }
    // TLS garbage and plaintext under STRICT.
    let resp = raw(p.b.inbound, b"\x16\x03\x01\x00\x05garbagegarbage").await;
    assert!(!resp.contains("HTTP"), "{resp}");
    let resp = raw(p.b.inbound, b"GET / HTTP/1.1\r\nHost: b\r\n\r\n").await;
    assert!(!resp.contains("HTTP"), "{resp}");
    // The garbage opens a handshake that fails; the plaintext opens none and is refused by
    // the STRICT mode, closed without a byte.
    assert_eventually!(
        p.b.handle.metrics().tls_failures(Direction::Inbound) == n + 1
            && p.b
                .handle
                .metrics()
                .mode_rejected
                .load(std::sync::atomic::Ordering::Relaxed)
                == 1,
        "failures counted: {}",
        p.b.handle.metrics().render()
    );
    assert_eq!(p.echo.completed(), 1);
    let (s, _, _) = get(&http1_client(), &format!("http://{}/still-ok", p.out)).await;
    assert_eq!(s, 200);
    assert_eq!(p.a.handle.metrics().tls_failures(Direction::Outbound), 0);
}
