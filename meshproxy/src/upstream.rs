//! Upstream connections of the client side: [`connect`] opens the kind of stream a [`Target`]
//! needs, and [`OriginPool`] keeps HTTP connections to destinations that are not reached over
//! mesh mTLS.
//!
//! Which kind ([`settings`]): a traffic cluster's `policy.tls` (a DestinationRule's `tls`)
//! wins; otherwise the endpoint's `tls` entry for the application port (the compiler writes
//! Istio's auto-mTLS there); otherwise ISTIO_MUTUAL with a mesh identity, plaintext without.
//!
//! - ISTIO_MUTUAL: mutual TLS 1.3 with this proxy's certificate, the port named in SNI, the
//!   server's SPIFFE ID checked. HTTP rides the pooled HTTP/2 connection ([`crate::pool`]).
//! - DISABLE to a mesh proxy (it has an identity): plaintext to its inbound listener, which
//!   takes the port from the original destination (container mode: this proxy dials
//!   `<pod ip>:<port>`, redirected to 15006) or serves its first inbound port (host mode, one
//!   listener for all ports: no SNI can name the port). HTTP is h2c through [`OriginPool`];
//!   a server that requires mTLS closes such a connection, which fails the request with UF.
//! - DISABLE outside the mesh: plaintext TCP; HTTP/1.1 through [`OriginPool`].
//! - SIMPLE / MUTUAL: TLS origination ([`crate::tls::origination_config`]); HTTP offers ALPN
//!   `h2` and `http/1.1` and speaks what the server picks, through [`OriginPool`].
//!
//! Failures are `UpstreamConnect` (503, flag UF) naming the service and the TLS error, and
//! handshake failures count in `meshproxy_tls_failures_total{direction="outbound"}`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response, header};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meshapi::proxy::{UpstreamTls, UpstreamTlsMode};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::app::Shared;
use crate::http::{Body, io_reason};
use crate::metrics::Direction;
use crate::rescue::ProxyError;
use crate::state::Target;
use crate::tls;

/// What the caller will speak on the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// Multiplexed HTTP/2 (pooled).
    H2,
    /// HTTP/1.1 on a dedicated stream (upgrades, WebSocket).
    Http1,
    /// Opaque TCP.
    Tcp,
    /// Pooled HTTP to a destination outside the mesh: HTTP/2 or HTTP/1.1 by ALPN.
    Http,
}

impl Wire {
    fn mesh_alpn(self) -> &'static [u8] {
        match self {
            Wire::H2 | Wire::Http => tls::ALPN_H2,
            Wire::Http1 => tls::ALPN_HTTP1,
            Wire::Tcp => tls::ALPN_TCP,
        }
    }

    fn origin_alpn(self) -> &'static [&'static [u8]] {
        match self {
            Wire::H2 => &[tls::ALPN_H2],
            Wire::Http1 => &[tls::ALPN_HTTP1],
            Wire::Http => &[tls::ALPN_H2, tls::ALPN_HTTP1],
            Wire::Tcp => &[],
        }
    }
}

/// The TLS settings for connections to `target` (see the module documentation).
pub fn settings(target: &Target) -> UpstreamTls {
    target
        .cluster
        .as_ref()
        .and_then(|(c, _)| c.policy.tls.clone())
        .unwrap_or_else(|| target.endpoint.tls_for(target.target_port))
}

/// Whether HTTP to `target` rides the mesh's pooled HTTP/2 mTLS connection, rather than
/// [`OriginPool`].
pub fn mesh_h2(tls: &UpstreamTls) -> bool {
    tls.mode == UpstreamTlsMode::IstioMutual
}

/// A connected upstream stream, plaintext or TLS.
#[derive(Debug)]
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl UpstreamStream {
    /// The ALPN protocol the server chose, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            UpstreamStream::Plain(_) => None,
            UpstreamStream::Tls(t) => t.get_ref().1.alpn_protocol(),
        }
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Plain(s) => s.is_write_vectored(),
            UpstreamStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The address to dial: the endpoint's address, except plaintext to a mesh proxy in container
/// mode (`<pod ip>:<port>`, so the peer's capture keeps the port as original destination)
/// and an endpoint outside the mesh written with port 0 (its IP at the target port).
fn dial_addr(shared: &Shared, target: &Target, tls: &UpstreamTls) -> SocketAddr {
    let a = target.endpoint.address;
    let at_port = SocketAddr::new(a.ip(), target.target_port);
    if target.endpoint.identity.is_none() {
        return if a.port() == 0 { at_port } else { a };
    }
    let capture = shared
        .snapshot
        .load()
        .cfg
        .listeners
        .outbound_capture
        .is_some();
    if tls.mode == UpstreamTlsMode::Disable && capture {
        at_port
    } else {
        a
    }
}

async fn tcp_connect(addr: SocketAddr, target: &Target) -> std::io::Result<TcpStream> {
    let tcp = TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    if let Some((time, interval, probes)) = target.connect.keepalive {
        let mut ka = socket2::TcpKeepalive::new();
        if let Some(t) = time {
            ka = ka.with_time(t);
        }
        if let Some(i) = interval {
            ka = ka.with_interval(i);
        }
        if let Some(p) = probes {
            ka = ka.with_retries(p);
        }
        if let Err(e) = socket2::SockRef::from(&tcp).set_tcp_keepalive(&ka) {
            tracing::debug!(%addr, error = %e, "could not set TCP keepalive");
        }
    }
    Ok(tcp)
}

/// Opens a stream to `target` of the kind `tls` says, for `wire`, within the connect timeout
/// (the DestinationRule's `connectTimeout`, else the config's).
pub async fn connect(
    shared: &Arc<Shared>,
    target: &Target,
    tls: &UpstreamTls,
    wire: Wire,
) -> Result<UpstreamStream, ProxyError> {
    let fail = |reason: String| ProxyError::UpstreamConnect {
        service: target.service.clone(),
        reason,
    };
    let tls_fail = |reason: String| {
        shared.metrics.tls_failure(Direction::Outbound);
        fail(reason)
    };
    let addr = dial_addr(shared, target, tls);
    let work = async {
        let (config, name) = match tls.mode {
            UpstreamTlsMode::Disable => {
                let tcp = tcp_connect(addr, target)
                    .await
                    .map_err(|e| fail(io_reason(&e)))?;
                return Ok(UpstreamStream::Plain(tcp));
            }
            UpstreamTlsMode::IstioMutual => {
                let expected = target.endpoint.identity.clone().ok_or_else(|| {
                    fail("ISTIO_MUTUAL to an endpoint without a mesh identity".into())
                })?;
                let config =
                    tls::client_config(shared.identity.clone(), expected, wire.mesh_alpn())
                        .map_err(|e| tls_fail(format!("TLS config: {e}")))?;
                (config, tls::sni_for_port(target.target_port))
            }
            UpstreamTlsMode::Simple | UpstreamTlsMode::Mutual => {
                tls::origination_config(tls, wire.origin_alpn(), addr.ip())
                    .map_err(|e| tls_fail(format!("TLS config: {e}")))?
            }
        };
        let tcp = tcp_connect(addr, target)
            .await
            .map_err(|e| fail(io_reason(&e)))?;
        handshake(config, name, tcp)
            .await
            .map(|s| UpstreamStream::Tls(Box::new(s)))
            .map_err(|e| {
                tracing::warn!(%addr, service = %target.service, mode = ?tls.mode, error = %e, "TLS handshake to endpoint failed");
                tls_fail(format!("TLS error: {e}"))
            })
    };
    let timeout = target
        .connect
        .timeout
        .unwrap_or(shared.limits().connect_timeout.0);
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(fail("connection timeout".into())),
    }
}

async fn handshake(
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    tcp: TcpStream,
) -> std::io::Result<TlsStream<TcpStream>> {
    TlsConnector::from(config).connect(name, tcp).await
}

/// One pooled HTTP connection outside the mesh.
enum Conn {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

impl Conn {
    fn usable(&self) -> bool {
        match self {
            Conn::H1(s) => !s.is_closed() && s.is_ready(),
            Conn::H2(s) => !s.is_closed(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct OriginKey {
    addr: SocketAddr,
    port: u16,
    tls: UpstreamTls,
}

/// Most idle HTTP/1.1 connections kept per destination.
const MAX_IDLE_H1: usize = 64;

/// HTTP connections to destinations not reached over mesh mTLS (plaintext outside the mesh,
/// SIMPLE, MUTUAL): one shared HTTP/2 connection when the server picks `h2`, else idle
/// HTTP/1.1 connections reused one request at a time.
#[derive(Default)]
pub struct OriginPool {
    conns: Mutex<HashMap<OriginKey, Vec<Conn>>>,
}

impl std::fmt::Debug for OriginPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.conns.lock().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("OriginPool")
            .field("destinations", &n)
            .finish()
    }
}

impl OriginPool {
    fn take(&self, key: &OriginKey) -> Option<Conn> {
        let mut m = self.conns.lock().ok()?;
        let list = m.get_mut(key)?;
        list.retain(Conn::usable);
        let c = match list.last()? {
            Conn::H2(s) => Some(Conn::H2(s.clone())),
            Conn::H1(_) => list.pop(),
        };
        if list.is_empty() {
            m.remove(key);
        }
        c
    }

    fn put(&self, key: OriginKey, c: Conn) {
        if let Ok(mut m) = self.conns.lock() {
            let list = m.entry(key).or_default();
            if list.len() < MAX_IDLE_H1 {
                list.push(c);
            }
        }
    }

    /// Drops every connection (new requests reconnect).
    pub fn clear(&self) {
        if let Ok(mut m) = self.conns.lock() {
            m.clear();
        }
    }

    async fn open(
        &self,
        shared: &Arc<Shared>,
        target: &Target,
        key: &OriginKey,
    ) -> Result<Conn, ProxyError> {
        let stream = connect(shared, target, &key.tls, Wire::Http).await?;
        let fail = |what: &str, e: hyper::Error| ProxyError::UpstreamConnect {
            service: target.service.clone(),
            reason: format!("{what} handshake: {e}"),
        };
        let addr = key.addr;
        let h2c = !key.tls.originates() && target.endpoint.identity.is_some();
        if stream.alpn() == Some(tls::ALPN_H2) || h2c {
            let mut b = http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new());
            let (sender, conn) = b
                .handshake(TokioIo::new(stream))
                .await
                .map_err(|e| fail("HTTP/2", e))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%addr, error = %e, "origin connection closed");
                }
            });
            self.put(key.clone(), Conn::H2(sender.clone()));
            Ok(Conn::H2(sender))
        } else {
            let (sender, conn) = http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| fail("HTTP/1.1", e))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%addr, error = %e, "origin connection closed");
                }
            });
            Ok(Conn::H1(sender))
        }
    }

    /// Sends `req` (absolute URI, as the pooled HTTP/2 path prepares it) to `target` over a
    /// pooled or new connection. A reused connection found gone before the request was
    /// written is replaced once; anything already sent is never replayed.
    pub async fn send(
        &self,
        shared: &Arc<Shared>,
        target: &Target,
        tls: UpstreamTls,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let key = OriginKey {
            addr: target.endpoint.address,
            port: target.target_port,
            tls,
        };
        let reused = self.take(&key);
        let fresh = reused.is_none();
        let conn = match reused {
            Some(c) => c,
            None => self.open(shared, target, &key).await?,
        };
        let reset = |e: hyper::Error| ProxyError::UpstreamReset {
            service: target.service.clone(),
            reason: e.to_string(),
        };
        let originates = key.tls.originates();
        match self.try_send(shared, &key, conn, req, originates).await {
            Ok(resp) => Ok(resp),
            Err(mut e) => match e.take_message() {
                Some(req) if !fresh => {
                    tracing::debug!(service = %target.service, "origin connection gone; reconnecting");
                    let conn = self.open(shared, target, &key).await?;
                    self.try_send(shared, &key, conn, req, originates)
                        .await
                        .map_err(|e| reset(e.into_error()))
                }
                // A new connection closed before any answer never carried the request
                // anywhere: a connect failure (a mesh server refusing plaintext does this).
                _ if fresh => Err(ProxyError::UpstreamConnect {
                    service: target.service.clone(),
                    reason: match key.tls.mode {
                        UpstreamTlsMode::Disable if target.endpoint.identity.is_some() => format!(
                            "connection closed before a response (does the server require mTLS? this client sends plaintext): {}",
                            e.into_error()
                        ),
                        _ => format!("connection closed before a response: {}", e.into_error()),
                    },
                }),
                _ => Err(reset(e.into_error())),
            },
        }
    }

    async fn try_send(
        &self,
        shared: &Arc<Shared>,
        key: &OriginKey,
        conn: Conn,
        mut req: Request<Body>,
        originates: bool,
    ) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<Body>>> {
        match conn {
            Conn::H2(mut s) => {
                *req.version_mut() = http::Version::HTTP_2;
                if originates {
                    set_scheme(&mut req, http::uri::Scheme::HTTPS);
                }
                s.try_send_request(req).await
            }
            Conn::H1(mut s) => {
                to_http1(&mut req);
                let resp = s.try_send_request(req).await?;
                // Back to the pool once the response is read to its end.
                let shared = shared.clone();
                let key = key.clone();
                tokio::spawn(async move {
                    if s.ready().await.is_ok() {
                        shared.pool.origin.put(key, Conn::H1(s));
                    }
                });
                Ok(resp)
            }
        }
    }
}

fn set_scheme(req: &mut Request<Body>, scheme: http::uri::Scheme) {
    let mut parts = req.uri().clone().into_parts();
    if parts.authority.is_some() {
        parts.scheme = Some(scheme);
        if let Ok(u) = http::Uri::from_parts(parts) {
            *req.uri_mut() = u;
        }
    }
}

/// An HTTP/2-shaped request (absolute URI, no Host) as HTTP/1.1: Host from the authority,
/// origin-form target.
fn to_http1(req: &mut Request<Body>) {
    *req.version_mut() = http::Version::HTTP_11;
    if !req.headers().contains_key(header::HOST)
        && let Some(a) = req.uri().authority()
        && let Ok(h) = HeaderValue::from_str(a.as_str())
    {
        req.headers_mut().insert(header::HOST, h);
    }
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    if let Ok(u) = pq.parse() {
        *req.uri_mut() = u;
    }
}
