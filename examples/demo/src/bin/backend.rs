//! The seed example's backend: `Hello from Backend!` on port 8080 (`PORT`), version from
//! `VERSION`; `backend healthcheck [URL]` probes a running one (see [`meshdemo::Mode`]).
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    meshdemo::run(8080, |addr| async move {
        let backend =
            meshdemo::Backend::new(std::env::var("VERSION").unwrap_or_else(|_| "v1".into()));
        let listener = tokio::net::TcpListener::bind(addr).await?;
        println!("backend {} listening on {addr}", backend.version);
        meshdemo::serve(listener, move |req| backend.clone().handle(req)).await;
        Ok(())
    })
}
