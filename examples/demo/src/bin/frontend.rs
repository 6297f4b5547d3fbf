//! The seed example's frontend: port 3000 (`PORT`), calls `BACKEND_URL` (default
//! `http://backend:8080`) and answers `Frontend says: <body>`; `frontend healthcheck [URL]`
//! probes a running one (see [`meshdemo::Mode`]).
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    meshdemo::run(3000, |addr| async move {
        let url = std::env::var("BACKEND_URL").unwrap_or_else(|_| "http://backend:8080".into());
        let frontend = meshdemo::Frontend::new(url);
        let listener = tokio::net::TcpListener::bind(addr).await?;
        println!(
            "frontend listening on {addr}, backend at {}",
            frontend.backend_url
        );
        meshdemo::serve(listener, move |req| frontend.clone().handle(req)).await;
        Ok(())
    })
}
