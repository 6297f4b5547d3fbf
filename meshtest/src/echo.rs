//! In-process echo servers on 127.0.0.1 port 0: an HTTP one (HTTP/1.1 and h2c, upgrades,
//! trailers) that records what it received, and a TCP one.
//!
//! The HTTP echo answers every request with status 200, the request body, and headers
//! `x-echo-server` (its name), `x-echo-method`, `x-echo-path`, `x-echo-version`. A request with
//! `x-echo-trailers: 1` gets a `grpc-status: 0` trailer; one with `upgrade:` gets `101` and its
//! upgraded bytes echoed back.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// What the echo server saw of one complete request (head and whole body).
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub uri: String,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Default)]
struct State {
    name: String,
    completed: AtomicUsize,
    connections: AtomicUsize,
    seen: Mutex<Vec<Recorded>>,
}

/// A running HTTP echo server.
#[derive(Clone)]
pub struct EchoServer {
    addr: SocketAddr,
    state: Arc<State>,
}

impl EchoServer {
    /// Starts an echo server named `name` on 127.0.0.1:0.
    pub async fn start(name: &str) -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            name: name.to_string(),
            ..Default::default()
        });
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, st.clone()));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        EchoServer { addr, state }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Requests received completely (head and body).
    pub fn completed(&self) -> usize {
        self.state.completed.load(Ordering::SeqCst)
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Every complete request so far.
    pub fn seen(&self) -> Vec<Recorded> {
        self.state.seen.lock().unwrap().clone()
    }

    /// The last complete request.
    pub fn last(&self) -> Option<Recorded> {
        self.state.seen.lock().unwrap().last().cloned()
    }
}

type Body = BoxBody<Bytes, Infallible>;

async fn handle(mut req: Request<Incoming>, st: Arc<State>) -> Result<Response<Body>, Infallible> {
    let mut resp = Response::builder()
        .header("x-echo-server", st.name.as_str())
        .header("x-echo-method", req.method().as_str())
        .header(
            "x-echo-path",
            req.uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/"),
        )
        .header("x-echo-version", format!("{:?}", req.version()));
    if req.headers().contains_key(http::header::UPGRADE) {
        let up = req.headers()[http::header::UPGRADE].clone();
        let on = hyper::upgrade::on(&mut req);
        record(&st, &req, Bytes::new());
        tokio::spawn(async move {
            if let Ok(upgraded) = on.await {
                let mut io = TokioIo::new(upgraded);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        resp = resp
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(http::header::UPGRADE, up)
            .header(http::header::CONNECTION, "upgrade");
        return Ok(resp.body(Full::new(Bytes::new()).boxed()).unwrap());
    }
    let trailers = req.headers().contains_key("x-echo-trailers");
    let (parts, body) = req.into_parts();
    let Ok(collected) = body.collect().await else {
        // Broken body (bad framing): not a complete request.
        return Ok(Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body(Full::new(Bytes::new()).boxed())
            .unwrap());
    };
    let bytes = collected.to_bytes();
    record(&st, &Request::from_parts(parts, ()), bytes.clone());
    let body = Full::new(bytes);
    let body: Body = if trailers {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        body.with_trailers(async move { Some(Ok(t)) }).boxed()
    } else {
        body.boxed()
    };
    Ok(resp.body(body).unwrap())
}

fn record<B>(st: &State, req: &Request<B>, body: Bytes) {
    st.seen.lock().unwrap().push(Recorded {
        method: req.method().to_string(),
        uri: req.uri().to_string(),
        version: req.version(),
        headers: req.headers().clone(),
        body,
    });
    st.completed.fetch_add(1, Ordering::SeqCst);
}

/// A TCP server that echoes every byte back.
pub struct TcpEcho {
    addr: SocketAddr,
}

impl TcpEcho {
    pub async fn start() -> TcpEcho {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        TcpEcho { addr }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}
