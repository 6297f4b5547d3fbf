//! The seed example's demo apps, as a library so tests run them in-process.
//!
//! - backend: answers `Hello from Backend!` with its version in `x-backend-version` (from
//!   `VERSION`); `POST /admin/fail` makes every other request answer 500 until
//!   `POST /admin/heal` (how the end-to-end tests break one version on purpose).
//! - frontend: answers `Frontend says: <backend body>` after calling `BACKEND_URL` (default
//!   `http://backend:8080`), or 500 with the reason when it cannot.
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

    pub async fn handle(self, _req: Request<Incoming>) -> Response<Body> {
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
