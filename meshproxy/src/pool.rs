//! Pooled HTTP connections to upstream endpoints, per (endpoint, identity, application port,
//! upstream TLS); [`crate::upstream::connect`] opens each stream (TCP and upgrades get their
//! own, unpooled). Which kind of connection:
//!
//! - to another mesh proxy (ISTIO_MUTUAL): one multiplexed HTTP/2 connection, whatever the
//!   application speaks, as linkerd2-proxy does. Measured against an HTTP/1.1 keep-alive pool
//!   on this machine (`bench/run proxy`, variants `meshproxy` and `mesh-h1`; bench/README.md),
//!   HTTP/2 costs less CPU per request at 50 concurrent client connections: one TLS stream and
//!   batched writes instead of fifty. Istio's HTTP/1.1 semantics (`maxConnections`,
//!   `http1MaxPendingRequests`) are kept by the traffic layer's accounting, not the wire;
//! - to anything else (plaintext, TLS origination): HTTP/2 where the port says `http2`/`grpc`,
//!   `h2UpgradePolicy: UPGRADE` asks for it, the client spoke HTTP/2 or a TLS origin picked `h2`
//!   by ALPN; otherwise HTTP/1.1 keep-alive connections, one request at a time each.
//!
//! A connection is retired after `maxRequestsPerConnection` requests and closed after
//! `idleTimeout` without any (a sweeper looks once a second); an HTTP/1.1 connection goes
//! back to the pool only when its response body was read to the end.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http::{Request, Response, header};
use hyper::body::Body as _;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meshapi::proxy::{SpiffeId, UpstreamTls, UpstreamTlsMode};

use crate::body::Tracked;
use crate::context::Context;
use crate::http::{Body, RequestHead};
use crate::reply::ProxyError;
use crate::runtime::{Runtime, Target};
use crate::tls;
use crate::upstream::Wire;

/// `MESHPROXY_MESH_WIRE=http1`: HTTP/1.1 pools between mesh proxies too. A benchmark knob
/// (`bench/run proxy` measures both wires side by side), not a setting.
static MESH_HTTP1: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| std::env::var("MESHPROXY_MESH_WIRE").is_ok_and(|v| v == "http1"));

/// Istio's default `idleTimeout` for upstream connections.
const DEFAULT_IDLE: Duration = Duration::from_secs(3600);
/// How often idle connections are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Which pooled connections a request may ride: (endpoint address, identity, application
/// port, upstream TLS). Built once per cluster endpoint when a config is applied
/// ([`crate::traffic::ClusterState`]) and shared by `Arc`: a request neither copies the SPIFFE
/// ID nor hashes it (the hash covers address and port), and comparing a key with itself is a
/// pointer comparison.
#[derive(Debug)]
pub struct PoolKey {
    pub addr: SocketAddr,
    pub identity: Option<SpiffeId>,
    pub port: u16,
    /// How connections are made (the cluster's `tls`, else the endpoint's for the port).
    pub tls: UpstreamTls,
}

impl PartialEq for PoolKey {
    fn eq(&self, o: &Self) -> bool {
        std::ptr::eq(self, o)
            || (self.addr == o.addr
                && self.port == o.port
                && self.identity == o.identity
                && self.tls == o.tls)
    }
}

impl Eq for PoolKey {}

impl std::hash::Hash for PoolKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.addr.hash(state);
        self.port.hash(state);
    }
}

type Key = Arc<PoolKey>;

#[derive(Debug)]
struct H2Conn {
    sender: http2::SendRequest<Body>,
    /// The trust generation it was verified under ([`crate::tls::Trust`]).
    generation: u64,
    uses: u32,
    last_used: Instant,
    idle_timeout: Duration,
    in_flight: Arc<AtomicU32>,
}

#[derive(Debug)]
struct H1Conn {
    sender: http1::SendRequest<Body>,
    generation: u64,
    uses: u32,
    idle_since: Instant,
    idle_timeout: Duration,
}

#[derive(Debug, Default)]
struct Conns {
    h2: Mutex<HashMap<Key, H2Conn>>,
    h1: Mutex<HashMap<Key, Vec<H1Conn>>>,
}

impl Conns {
    fn checkin_h1(&self, key: Key, conn: H1Conn) {
        if conn.sender.is_closed() {
            return;
        }
        if let Ok(mut m) = self.h1.lock() {
            m.entry(key).or_default().push(conn);
        }
    }

    /// Drops connections idle past their `idleTimeout` (an HTTP/2 connection only when no
    /// request is in flight on it); dropping the last sender closes the connection.
    fn sweep(&self) {
        let now = Instant::now();
        if let Ok(mut m) = self.h2.lock() {
            m.retain(|_, c| {
                !c.sender.is_closed()
                    && (c.in_flight.load(Ordering::Acquire) > 0
                        || now.duration_since(c.last_used) < c.idle_timeout)
            });
        }
        if let Ok(mut m) = self.h1.lock() {
            for v in m.values_mut() {
                v.retain(|c| {
                    !c.sender.is_closed() && now.duration_since(c.idle_since) < c.idle_timeout
                });
            }
            m.retain(|_, v| !v.is_empty());
        }
    }
}

/// Pooled HTTP connections to peer proxies.
#[derive(Debug, Default)]
pub struct Pool {
    conns: Arc<Conns>,
    sweeping: AtomicBool,
}

impl Pool {
    /// Starts the idle sweeper once (it needs a runtime, so not at construction).
    fn sweeper(&self) {
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let conns: Weak<Conns> = Arc::downgrade(&self.conns);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match conns.upgrade() {
                    Some(c) => c.sweep(),
                    None => return,
                }
            }
        });
    }

    /// The live HTTP/2 connection for `key` made under trust `generation` and its in-flight
    /// counter, counting one more request on it; one that has served
    /// `maxRequestsPerConnection` requests, or was made under other trust, is retired.
    fn h2_get(
        &self,
        key: &Key,
        generation: u64,
        max: u32,
    ) -> Option<(http2::SendRequest<Body>, Arc<AtomicU32>)> {
        let mut m = self.conns.h2.lock().ok()?;
        match m.get_mut(key) {
            Some(c)
                if !c.sender.is_closed()
                    && c.generation == generation
                    && (max == 0 || c.uses < max) =>
            {
                c.uses += 1;
                c.last_used = Instant::now();
                Some((c.sender.clone(), Arc::clone(&c.in_flight)))
            }
            Some(_) => {
                m.remove(key);
                None
            }
            None => None,
        }
    }

    fn h2_remove(&self, key: &Key) {
        if let Ok(mut m) = self.conns.h2.lock() {
            m.remove(key);
        }
    }

    /// An idle HTTP/1.1 connection for `key` made under trust `generation`, if the pool has a
    /// live one (others met on the way are dropped).
    fn checkout_h1(&self, key: &Key, generation: u64) -> Option<H1Conn> {
        let mut m = self.conns.h1.lock().ok()?;
        let idle = m.get_mut(key)?;
        let now = Instant::now();
        while let Some(c) = idle.pop() {
            if !c.sender.is_closed()
                && c.generation == generation
                && now.duration_since(c.idle_since) < c.idle_timeout
            {
                return Some(c);
            }
        }
        None
    }

    /// Opens a new connection for `key`: HTTP/2 when `h2` is wanted (or a TLS origin picked it
    /// by ALPN), else HTTP/1.1. An HTTP/2 connection is pooled at once.
    async fn open(
        &self,
        shared: &Arc<Context>,
        rt: &Runtime,
        target: &Target,
        key: &Key,
        h2: bool,
    ) -> Result<Fresh, ProxyError> {
        let wire = if key.tls.originates() {
            Wire::Http
        } else if h2 {
            Wire::H2
        } else {
            Wire::Http1
        };
        let stream = crate::upstream::connect(shared, rt, target, &key.tls, wire).await?;
        let generation = rt.trust.generation;
        let use_h2 = match stream.alpn() {
            Some(p) => p == tls::ALPN_H2,
            None => h2,
        };
        let fail = |what: &str, e: hyper::Error| ProxyError::UpstreamConnect {
            service: target.service.to_string(),
            reason: format!("{what} handshake: {e}"),
        };
        let addr = key.addr;
        let idle_timeout = target.connect.idle_timeout.unwrap_or(DEFAULT_IDLE);
        self.sweeper();
        if use_h2 {
            let mut b = http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .initial_stream_window_size(1 << 20)
                .initial_connection_window_size(4 << 20)
                .max_header_list_size(
                    u32::try_from(rt.cfg.limits.max_header_bytes).unwrap_or(u32::MAX),
                );
            let (sender, conn) = b
                .handshake(TokioIo::new(stream))
                .await
                .map_err(|e| fail("HTTP/2", e))?;
            spawn_conn(addr, conn);
            let in_flight = Arc::new(AtomicU32::new(0));
            if let Ok(mut m) = self.conns.h2.lock() {
                m.insert(
                    key.clone(),
                    H2Conn {
                        sender: sender.clone(),
                        generation,
                        uses: 1,
                        last_used: Instant::now(),
                        idle_timeout,
                        in_flight: Arc::clone(&in_flight),
                    },
                );
            }
            Ok(Fresh::H2(sender, in_flight))
        } else {
            let (sender, conn) = http1::Builder::new()
                .handshake(TokioIo::new(stream))
                .await
                .map_err(|e| fail("HTTP/1.1", e))?;
            spawn_conn(addr, conn);
            Ok(Fresh::H1(H1Conn {
                sender,
                generation,
                uses: 0,
                idle_since: Instant::now(),
                idle_timeout,
            }))
        }
    }

    /// Pooled connections now: HTTP/2 ones and idle HTTP/1.1 ones
    /// (`meshproxy_upstream_pooled_connections`).
    pub fn pooled(&self) -> [u64; 2] {
        let h2 = self.conns.h2.lock().map_or(0, |m| m.len());
        let h1 = self
            .conns
            .h1
            .lock()
            .map_or(0, |m| m.values().map(Vec::len).sum::<usize>());
        [h2 as u64, h1 as u64]
    }
}

fn spawn_conn<F>(addr: SocketAddr, conn: F)
where
    F: std::future::Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%addr, error = %e, "pooled connection closed");
        }
    });
}

/// A connection just opened.
enum Fresh {
    H2(http2::SendRequest<Body>, Arc<AtomicU32>),
    H1(H1Conn),
}

/// Why a try on a connection failed: the request came back unwritten (the connection was
/// already gone), or it failed after (part of) it was sent.
enum TryError {
    Unsent(Box<Request<Body>>, Option<hyper::Error>),
    Sent(hyper::Error),
}

impl From<hyper::client::conn::TrySendError<Request<Body>>> for TryError {
    fn from(mut e: hyper::client::conn::TrySendError<Request<Body>>) -> TryError {
        match e.take_message() {
            Some(req) => TryError::Unsent(Box::new(req), Some(e.into_error())),
            None => TryError::Sent(e.into_error()),
        }
    }
}

/// Sends `req` to `target` on a pooled connection (see the module documentation for which
/// kind). If a pooled connection turned out to be gone before the request was written (peer
/// restarted, drained, or closed it while idle), the untouched request goes on a fresh
/// connection; anything already sent is never replayed, except an idempotent body-less request
/// whose head the caller kept (`resend`). The response body holds the connection's place
/// until it ends.
pub async fn send_pooled(
    shared: &Arc<Context>,
    rt: &Runtime,
    target: &Target,
    req: Request<Body>,
    resend: Option<&RequestHead>,
) -> Result<Response<Body>, ProxyError> {
    let pool = &shared.pool;
    let key = &target.key;
    let max = target.connect.max_requests_per_connection;
    // Between mesh proxies HTTP always multiplexes on HTTP/2 (measured cheaper per request
    // than an HTTP/1.1 pool, see the module documentation).
    let want_h2 = (key.tls.mode == UpstreamTlsMode::IstioMutual && !*MESH_HTTP1)
        || target.connect.http2
        || req.version() == http::Version::HTTP_2;
    // A live HTTP/2 connection to the destination serves every request, whatever its version.
    // An idempotent request without a body whose head the caller kept goes again on a fresh
    // connection if the reused one dies before any response (peer restarted, GOAWAY), as
    // RFC 9110 section 9.2.2 allows.
    let mut again: Option<&RequestHead> = None;
    let reused = if let Some((sender, in_flight)) = pool.h2_get(key, rt.trust.generation, max) {
        if req.method().is_idempotent() && req.body().is_end_stream() {
            again = resend;
        }
        try_h2(key, sender, in_flight, req).await
    } else if !want_h2 && let Some(conn) = pool.checkout_h1(key, rt.trust.generation) {
        try_h1(pool, target, key, conn, req).await
    } else {
        Err(TryError::Unsent(Box::new(req), None))
    };
    let req = match reused {
        Ok(resp) => return Ok(resp),
        Err(TryError::Unsent(r, e)) => {
            if let Some(e) = e {
                tracing::debug!(service = %target.service, error = %e, "pooled connection gone; reconnecting");
                pool.h2_remove(key);
            }
            *r
        }
        Err(TryError::Sent(e)) => match again {
            Some(head) => {
                tracing::debug!(service = %target.service, error = %e, "pooled connection died before a response; sending again");
                pool.h2_remove(key);
                head.request(crate::http::full(bytes::Bytes::new()))
            }
            None => return Err(reset(target, &e)),
        },
    };
    let res = match pool.open(shared, rt, target, key, want_h2).await? {
        Fresh::H2(sender, in_flight) => try_h2(key, sender, in_flight, req).await,
        Fresh::H1(conn) => try_h1(pool, target, key, conn, req).await,
    };
    res.map_err(|e| match e {
        // A new connection that failed before answering carried the request nowhere: a
        // connect failure (a server requiring mTLS closes a plaintext connection like this).
        TryError::Unsent(_, e) => refused(target, key, e.as_ref()),
        TryError::Sent(e) if key.tls.mode != UpstreamTlsMode::IstioMutual => {
            refused(target, key, Some(&e))
        }
        TryError::Sent(e) => reset(target, &e),
    })
}

fn reset(target: &Target, e: &hyper::Error) -> ProxyError {
    ProxyError::UpstreamReset {
        service: target.service.to_string(),
        reason: e.to_string(),
    }
}

fn refused(target: &Target, key: &Key, e: Option<&hyper::Error>) -> ProxyError {
    let hint = if key.tls.mode == UpstreamTlsMode::Disable && target.endpoint.identity.is_some() {
        " (does the server require mTLS? this client sends plaintext)"
    } else {
        ""
    };
    ProxyError::UpstreamConnect {
        service: target.service.to_string(),
        reason: match e {
            Some(e) => format!("connection closed before a response{hint}: {e}"),
            None => format!("connection closed before a response{hint}"),
        },
    }
}

/// One try on an HTTP/2 connection (the request put in HTTP/2 form: absolute URI, `https`
/// when this proxy originates TLS, no Host header).
async fn try_h2(
    key: &Key,
    mut sender: http2::SendRequest<Body>,
    in_flight: Arc<AtomicU32>,
    mut req: Request<Body>,
) -> Result<Response<Body>, TryError> {
    *req.version_mut() = http::Version::HTTP_2;
    req.headers_mut().remove(header::HOST);
    if key.tls.originates() {
        let mut parts = req.uri().clone().into_parts();
        if parts.authority.is_some() {
            parts.scheme = Some(http::uri::Scheme::HTTPS);
            if let Ok(u) = http::Uri::from_parts(parts) {
                *req.uri_mut() = u;
            }
        }
    }
    in_flight.fetch_add(1, Ordering::AcqRel);
    match sender.try_send_request(req).await {
        Ok(resp) => Ok(resp.map(|b| {
            Tracked::new(crate::http::boxed(b))
                .on_end(move |_| {
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                })
                .boxed()
        })),
        Err(e) => {
            in_flight.fetch_sub(1, Ordering::AcqRel);
            Err(e.into())
        }
    }
}

/// One try on an HTTP/1.1 connection (the request put in HTTP/1.1 form: Host from the
/// authority, origin-form target). The response body returns the connection to the pool when
/// read to the end, unless it has served `maxRequestsPerConnection` requests.
async fn try_h1(
    pool: &Pool,
    target: &Target,
    key: &Key,
    mut conn: H1Conn,
    mut req: Request<Body>,
) -> Result<Response<Body>, TryError> {
    *req.version_mut() = http::Version::HTTP_11;
    if !req.headers().contains_key(header::HOST)
        && let Some(a) = req.uri().authority()
        && let Ok(v) = http::HeaderValue::from_str(a.as_str())
    {
        req.headers_mut().insert(header::HOST, v);
    }
    if req.uri().authority().is_some() {
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *req.uri_mut() = http::Uri::from(pq);
    }
    if let Err(e) = conn.sender.ready().await {
        return Err(TryError::Unsent(Box::new(req), Some(e)));
    }
    let resp = conn.sender.try_send_request(req).await?;
    conn.uses += 1;
    let max = target.connect.max_requests_per_connection;
    let reusable = max == 0 || conn.uses < max;
    let conns = Arc::clone(&pool.conns);
    let key = key.clone();
    Ok(resp.map(|b| {
        Tracked::new(crate::http::boxed(b))
            .on_end(move |complete| {
                if complete && reusable {
                    conn.idle_since = Instant::now();
                    conns.checkin_h1(key, conn);
                }
            })
            .boxed()
    }))
}
