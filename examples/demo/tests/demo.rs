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
