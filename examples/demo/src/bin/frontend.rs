//! The seed example's frontend: port 3000 (`PORT`), calls `BACKEND_URL` (default
//! `http://backend:8080`) and answers `Frontend says: <body>`.
#![forbid(unsafe_code)]

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = meshdemo::listen_addr(3000);
    let url = std::env::var("BACKEND_URL").unwrap_or_else(|_| "http://backend:8080".into());
    let frontend = meshdemo::Frontend::new(url);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!(
        "frontend listening on {addr}, backend at {}",
        frontend.backend_url
    );
    meshdemo::serve(listener, move |req| frontend.clone().handle(req)).await;
    Ok(())
}
