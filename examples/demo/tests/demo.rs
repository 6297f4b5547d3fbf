//! The demo apps answer what the seed example promises, talking over real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn get(addr: SocketAddr, method: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn frontend_relays_the_backend_and_reports_failures() {
    let backend = meshdemo::Backend::new("v2");
    let bl = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let baddr = bl.local_addr().unwrap();
    tokio::spawn(meshdemo::serve(bl, move |req| backend.clone().handle(req)));

    let frontend = meshdemo::Frontend::new(format!("http://{baddr}/"));
    let fl = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let faddr = fl.local_addr().unwrap();
    tokio::spawn(meshdemo::serve(fl, move |req| frontend.clone().handle(req)));

    let r = get(faddr, "GET", "/").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.ends_with("Frontend says: Hello from Backend!"), "{r}");
    assert!(r.contains("x-backend-version: v2"), "{r}");

    assert!(
        get(baddr, "POST", "/admin/fail")
            .await
            .starts_with("HTTP/1.1 200")
    );
    let r = get(faddr, "GET", "/").await;
    assert!(r.starts_with("HTTP/1.1 500"), "{r}");
    assert!(
        r.contains("500 Internal Server Error backend is failing on purpose"),
        "{r}"
    );

    assert!(
        get(baddr, "POST", "/admin/heal")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(get(faddr, "GET", "/").await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn frontend_answers_500_when_the_backend_is_unreachable() {
    let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = unused.local_addr().unwrap();
    drop(unused);
    let frontend = meshdemo::Frontend::new(format!("http://{dead}/"));
    let fl = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let faddr = fl.local_addr().unwrap();
    tokio::spawn(meshdemo::serve(fl, move |req| frontend.clone().handle(req)));
    let r = get(faddr, "GET", "/").await;
    assert!(r.starts_with("HTTP/1.1 500"), "{r}");
    assert!(r.contains("could not reach the backend"), "{r}");
}

#[tokio::test]
async fn healthcheck_mode_probes_a_running_app() {
    let backend = meshdemo::Backend::new("v1");
    let bl = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let baddr = bl.local_addr().unwrap();
    tokio::spawn(meshdemo::serve(bl, move |req| backend.clone().handle(req)));
    // The frontend's /healthz answers without its backend (which does not exist here).
    let frontend = meshdemo::Frontend::new("http://127.0.0.1:9/");
    let fl = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let faddr = fl.local_addr().unwrap();
    tokio::spawn(meshdemo::serve(fl, move |req| frontend.clone().handle(req)));
    let probe = |url: String| {
        tokio::task::spawn_blocking(move || {
            meshdemo::healthcheck(&url, std::time::Duration::from_secs(2))
        })
    };
    for addr in [baddr, faddr] {
        let r = probe(format!("http://{addr}/healthz")).await.unwrap();
        assert_eq!(r, Ok(()), "{addr}");
    }
    // A non-2xx answer and a closed port are unhealthy, with the reason.
    let r = probe(format!("http://{faddr}/")).await.unwrap();
    assert!(
        r.as_ref().is_err_and(|e| e.contains("answered 500")),
        "{r:?}"
    );
    let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = unused.local_addr().unwrap();
    drop(unused);
    let r = probe(format!("http://{dead}/healthz")).await.unwrap();
    assert!(r.as_ref().is_err_and(|e| e.contains("connect")), "{r:?}");
}

#[test]
fn the_command_line_picks_a_mode_or_refuses() {
    use meshdemo::Mode;
    let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(meshdemo::mode(&args(&[]), 8080), Ok(Mode::Serve));
    assert_eq!(
        meshdemo::mode(&args(&["healthcheck", "http://127.0.0.1:1/x"]), 8080),
        Ok(Mode::Healthcheck("http://127.0.0.1:1/x".into()))
    );
    let err = meshdemo::mode(&args(&["--no-such-mode"]), 8080).unwrap_err();
    assert!(err.contains("usage:"), "{err}");
}
