//! The seed example's demo apps, as a library so tests run them in-process.
//!
//! - backend: answers `Hello from Backend!` with its version in `x-backend-version` (from
//!   `VERSION`); `POST /admin/fail` makes every other request answer 500 until
//!   `POST /admin/heal` (how the end-to-end tests break one version on purpose).
//! - frontend: answers `Frontend says: <backend body>` after calling `BACKEND_URL` (default
//!   `http://backend:8080`), or 500 with the reason when it cannot.
//!
//! Both answer `GET /healthz` with 200 once they listen (the frontend without calling the
//! backend), and both binaries take one optional mode argument ([`Mode`]): `healthcheck [URL]`
//! probes a running instance and exits 0 or 1, for the compose `healthcheck:` of a `FROM
//! scratch` image that has no curl.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

type Body = Full<Bytes>;

/// The path both apps answer 200 on once they listen.
pub const HEALTHZ: &str = "/healthz";

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

/// Serves `handler` on `listener` until the process ends, one task per connection.
pub async fn serve<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The backend's state: its version and whether it is failing on purpose.
#[derive(Debug, Default)]
pub struct Backend {
    pub version: String,
    failing: AtomicBool,
}

impl Backend {
    pub fn new(version: impl Into<String>) -> Arc<Self> {
        Arc::new(Backend {
            version: version.into(),
            failing: AtomicBool::new(false),
        })
    }

    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, HEALTHZ) => text(StatusCode::OK, "ok\n"),
            (&Method::POST, "/admin/fail") => {
                self.failing.store(true, Ordering::SeqCst);
                text(StatusCode::OK, "failing\n")
            }
            (&Method::POST, "/admin/heal") => {
                self.failing.store(false, Ordering::SeqCst);
                text(StatusCode::OK, "healed\n")
            }
            _ if self.failing.load(Ordering::SeqCst) => {
                let mut r = text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "backend is failing on purpose\n",
                );
                self.stamp(&mut r);
                r
            }
            _ => {
                let mut r = text(StatusCode::OK, "Hello from Backend!");
                self.stamp(&mut r);
                r
            }
        }
    }

    fn stamp(&self, r: &mut Response<Body>) {
        if let Ok(v) = self.version.parse() {
            r.headers_mut().insert("x-backend-version", v);
        }
    }
}

/// The frontend: calls the backend for each request.
#[derive(Debug, Clone)]
pub struct Frontend {
    pub backend_url: String,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Body>,
}

impl Frontend {
    pub fn new(backend_url: impl Into<String>) -> Self {
        let client = Client::builder(TokioExecutor::new()).build_http();
        Frontend {
            backend_url: backend_url.into(),
            client,
        }
    }

    pub async fn handle(self, req: Request<Incoming>) -> Response<Body> {
        if req.method() == Method::GET && req.uri().path() == HEALTHZ {
            return text(StatusCode::OK, "ok\n");
        }
        match self.call_backend().await {
            Ok((status, body, version)) if status.is_success() => {
                let mut r = text(StatusCode::OK, format!("Frontend says: {body}"));
                if let Some(v) = version.and_then(|v| v.parse().ok()) {
                    r.headers_mut().insert("x-backend-version", v);
                }
                r
            }
            Ok((status, body, _)) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Frontend could not get an answer from the backend: {status} {body}\n"),
            ),
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Frontend could not reach the backend: {e}\n"),
            ),
        }
    }

    async fn call_backend(&self) -> Result<(StatusCode, String, Option<String>), String> {
        let uri: hyper::Uri = self
            .backend_url
            .parse()
            .map_err(|e| format!("bad BACKEND_URL: {e}"))?;
        let req = Request::get(uri)
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(Duration::from_secs(5), self.client.request(req))
            .await
            .map_err(|_| "timed out after 5s".to_string())?
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let version = resp
            .headers()
            .get("x-backend-version")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned(), version))
    }
}

/// The address to listen on: `0.0.0.0:<PORT>` with `PORT` from the environment or `default`.
pub fn listen_addr(default: u16) -> SocketAddr {
    let port = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(default);
    SocketAddr::from(([0, 0, 0, 0], port))
}

/// What a demo binary was asked to do on its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// No argument: serve.
    Serve,
    /// `healthcheck [URL]`: one GET of URL (default `http://127.0.0.1:<PORT>/healthz`); exit 0
    /// on a 2xx answer, 1 otherwise.
    Healthcheck(String),
}

/// The mode from the arguments after the program name; an unknown argument is an error with
/// the usage (the binary exits 2 with it, which is also how the end-to-end tests make an app
/// that exits during start-up: `command: ["--no-such-mode"]`).
pub fn mode(args: &[String], default_port: u16) -> Result<Mode, String> {
    let port = listen_addr(default_port).port();
    match args {
        [] => Ok(Mode::Serve),
        [m] if m == "healthcheck" => Ok(Mode::Healthcheck(format!(
            "http://127.0.0.1:{port}{HEALTHZ}"
        ))),
        [m, url] if m == "healthcheck" => Ok(Mode::Healthcheck(url.clone())),
        other => Err(format!(
            "unknown arguments {other:?}\nusage: (no arguments: serve on PORT, default {default_port}) | healthcheck [URL]"
        )),
    }
}

/// One `GET` of `url` (`http://host:port/path`, plain HTTP/1.1) within `timeout`: Ok on a 2xx
/// status, otherwise what went wrong. Blocking and dependency-free, for the healthcheck mode.
pub fn healthcheck(url: &str, timeout: Duration) -> Result<(), String> {
    use std::io::{Read, Write};
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&authority)
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)
        .map_err(|e| format!("read the status line: {e}"))?;
    let status = std::str::from_utf8(&head)
        .ok()
        .and_then(|h| h.strip_prefix("HTTP/1.1 ").or(h.strip_prefix("HTTP/1.0 ")))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP answer: {:?}", String::from_utf8_lossy(&head)))?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("{url} answered {status}"))
    }
}

/// The common `main` of the demo binaries: parse the mode, then serve with `serve` until
/// SIGTERM or SIGINT, or probe.
pub fn run<F, Fut>(default_port: u16, serve: F) -> std::process::ExitCode
where
    F: FnOnce(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>>,
{
    let args: Vec<String> = std::env::args().skip(1).collect();
    match mode(&args, default_port) {
        Ok(Mode::Serve) => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            // PID 1 in a container gets no default signal action: without this, `docker stop`
            // waits its whole grace period and then kills.
            let run = async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    r = serve(listen_addr(default_port)) => r,
                    _ = term.recv() => Ok(()),
                    _ = tokio::signal::ctrl_c() => Ok(()),
                }
            };
            match rt.block_on(run) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Ok(Mode::Healthcheck(url)) => match healthcheck(&url, Duration::from_secs(2)) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("unhealthy: {e}");
                std::process::ExitCode::FAILURE
            }
        },
        Err(usage) => {
            eprintln!("{usage}");
            std::process::ExitCode::from(2)
        }
    }
}
