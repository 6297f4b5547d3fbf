//! The seed example's backend: `Hello from Backend!` on port 8080 (`PORT`), version from `VERSION`.
#![forbid(unsafe_code)]

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = meshdemo::listen_addr(8080);
    let backend = meshdemo::Backend::new(std::env::var("VERSION").unwrap_or_else(|_| "v1".into()));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("backend {} listening on {addr}", backend.version);
    meshdemo::serve(listener, move |req| backend.clone().handle(req)).await;
    Ok(())
}
