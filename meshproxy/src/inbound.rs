//! The inbound listener (15006): PeerAuthentication (STRICT / PERMISSIVE / DISABLE) on the
//! first bytes, mTLS termination, the authorize step with the verified peer identity, then
//! forwarding to the application on 127.0.0.1:<port> as HTTP/1.1, HTTP/2 or TCP.
//!
//! Each connection walks the same small steps: [`sniff`] (only when some port accepts
//! plaintext), TLS accept, [`pick_port`], mode check, then [`serve_http`] or [`serve_tcp`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response, header};
use hyper::body::Incoming;
use meshapi::proxy::{PeerAuthMode, Protocol};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::context::Context;
use crate::http::{
    Body, XFCC, check_framing, find_io, io_reason, splice_upgrade, strip_hop_by_hop,
    strip_internal, strip_reserved,
};
use crate::metrics::Direction;
use crate::reply::ProxyError;
use crate::runtime::{HttpFacts, PeerInfo};
use crate::telemetry::{Downstream, UpstreamFacts};
use crate::tls;

/// What the first bytes of a connection said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// A TLS handshake record (0x16).
    Tls,
    /// Anything else, or silence until the timeout (server-first protocols).
    Plaintext,
    /// The peer closed before sending anything.
    Closed,
}

/// Tells TLS from plaintext from the first byte, waiting at most `timeout`.
pub async fn sniff(stream: &TcpStream, timeout: Duration) -> Sniffed {
    let mut b = [0u8; 1];
    match tokio::time::timeout(timeout, stream.peek(&mut b)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Sniffed::Closed,
        Ok(Ok(_)) => classify(b[0]),
        Err(_) => Sniffed::Plaintext,
    }
}

/// When every port is STRICT: the first byte must open a TLS handshake. Anything else is
/// plaintext, refused by the caller without a byte written, as Envoy closes a connection
/// no filter chain matches (handing it to the TLS acceptor would answer with a TLS alert,
/// which an HTTP client shows as a garbled HTTP/0.9 response). A peer silent for `timeout`
/// would fail the handshake anyway: it is closed.
pub async fn tls_first(stream: &TcpStream, timeout: Duration) -> Sniffed {
    let mut b = [0u8; 1];
    match tokio::time::timeout(timeout, stream.peek(&mut b)).await {
        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => Sniffed::Closed,
        Ok(Ok(_)) => classify(b[0]),
    }
}

/// The sniffer's decision for a first byte.
pub fn classify(first: u8) -> Sniffed {
    if first == 0x16 {
        Sniffed::Tls
    } else {
        Sniffed::Plaintext
    }
}

/// Per-connection facts every request on it shares.
struct ConnCtx {
    shared: Arc<Context>,
    peer: PeerInfo,
    /// Pre-computed `x-forwarded-client-cert` for an mTLS peer.
    xfcc: Option<HeaderValue>,
}

impl ConnCtx {
    /// The connection as access logs and spans tell it.
    fn downstream(&self) -> Downstream {
        Downstream {
            remote: self.peer.remote,
            local: Some(SocketAddr::new(self.peer.local_ip, self.peer.port)),
            peer: self.peer.identity.clone(),
            sni: self.peer.sni.clone(),
        }
    }
}

/// The application an inbound port forwards to, as access logs tell it.
fn app_facts(snap: &crate::runtime::Snapshot, port: u16) -> UpstreamFacts {
    let app_port = snap.inbound_port(port).map_or(port, |p| p.app_port());
    UpstreamFacts {
        host: Some(SocketAddr::from(([127, 0, 0, 1], app_port))),
        cluster: Some(format!("inbound|{port}||")),
        ..Default::default()
    }
}

/// The original destination port when the kernel redirected this connection.
fn original_port(stream: &TcpStream) -> Option<u16> {
    let dst = socket2::SockRef::from(stream)
        .original_dst_v4()
        .ok()?
        .as_socket()?;
    let local = stream.local_addr().ok()?;
    (dst != local).then_some(dst.port())
}

/// Runs the inbound listener: every accepted connection to [`serve`], until the drain.
pub fn spawn(ctx: Arc<Context>, listener: TcpListener) {
    crate::listener::spawn_accept(
        ctx,
        listener,
        "inbound".into(),
        crate::listener::Until::Draining,
        None,
        serve,
    );
}

/// Runs the edge listener: connections to published ports from outside the mesh, which the
/// capture rules redirect here ([`serve_edge`]), until the drain.
pub fn spawn_edge(ctx: Arc<Context>, listener: TcpListener) {
    crate::listener::spawn_accept(
        ctx,
        listener,
        "edge".into(),
        crate::listener::Until::Draining,
        None,
        serve_edge,
    );
}

/// Serves one connection to a published port from outside the mesh (the project's edge, as
/// an ingress gateway would be): plaintext whatever the port's PeerAuthentication mode, no
/// peer identity (a policy's `principals` never match; `ipBlocks`/`remoteIpBlocks` see the
/// client address the kernel gives), then the same authorize and forward steps as any
/// inbound connection. Only connections the capture rules redirected are served: one made
/// to the edge listener directly has no original destination port and is closed.
pub async fn serve_edge(shared: Arc<Context>, stream: TcpStream, remote: SocketAddr) {
    let _guard = shared.drain.guard();
    shared.metrics.connection(Direction::Inbound);
    shared
        .metrics
        .edge_connections
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let Some(port) = original_port(&stream) else {
        tracing::info!(%remote, "edge connection that was not redirected: closed");
        return;
    };
    let snap = shared.runtime.load_full();
    let Some(p) = snap.inbound_port(port) else {
        tracing::info!(%remote, port, "edge connection for an unknown port");
        return;
    };
    tracing::debug!(%remote, port, "edge connection (plaintext, no principal)");
    let ctx = ConnCtx {
        shared: shared.clone(),
        peer: PeerInfo {
            identity: None,
            remote,
            port,
            local_ip: crate::authz::local_ip(&stream),
            sni: None,
            authz_filter: Default::default(),
        },
        xfcc: None,
    };
    dispatch(Arc::new(ctx), stream, p.protocol).await;
}

/// Serves one accepted inbound connection.
pub async fn serve(shared: Arc<Context>, stream: TcpStream, remote: SocketAddr) {
    let _guard = shared.drain.guard();
    shared.metrics.connection(Direction::Inbound);
    let snap = shared.runtime.load_full();
    let sniffed = if snap.any_plaintext() {
        sniff(&stream, snap.cfg.limits.sniff_timeout.0).await
    } else {
        tls_first(&stream, snap.cfg.limits.connect_timeout.0).await
    };
    let orig_port = original_port(&stream);
    let local_ip = crate::authz::local_ip(&stream);
    match sniffed {
        Sniffed::Closed => {}
        Sniffed::Plaintext => {
            let Some(port) = orig_port.or(snap.default_inbound_port()) else {
                return;
            };
            let Some(p) = snap.inbound_port(port) else {
                tracing::debug!(%remote, port, "plaintext for an unknown port");
                return;
            };
            if p.mode == PeerAuthMode::Strict {
                shared
                    .metrics
                    .mode_rejected
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(%remote, port, "plaintext refused: port is STRICT");
                return;
            }
            let ctx = ConnCtx {
                shared: shared.clone(),
                peer: PeerInfo {
                    identity: None,
                    remote,
                    port,
                    local_ip,
                    sni: None,
                    authz_filter: Default::default(),
                },
                xfcc: None,
            };
            dispatch(Arc::new(ctx), stream, p.protocol).await;
        }
        Sniffed::Tls => serve_tls(shared, stream, remote, orig_port).await,
    }
}

async fn serve_tls(
    shared: Arc<Context>,
    stream: TcpStream,
    remote: SocketAddr,
    orig_port: Option<u16>,
) {
    let snap = shared.runtime.load_full();
    let local_ip = crate::authz::local_ip(&stream);
    let acceptor = TlsAcceptor::from(shared.server_tls.clone());
    let tls = match tokio::time::timeout(snap.cfg.limits.connect_timeout.0, acceptor.accept(stream))
        .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            shared.metrics.tls_failure(Direction::Inbound);
            tracing::info!(%remote, error = %e, "inbound TLS handshake failed");
            return;
        }
        Err(_) => {
            shared.metrics.tls_failure(Direction::Inbound);
            tracing::info!(%remote, "inbound TLS handshake timed out");
            return;
        }
    };
    let (_, conn) = tls.get_ref();
    let port = conn
        .server_name()
        .and_then(tls::port_from_sni)
        .or(orig_port)
        .or(snap.default_inbound_port());
    let Some(p) = port.and_then(|port| snap.inbound_port(port)) else {
        tracing::info!(%remote, ?port, "mTLS for an unknown port");
        return;
    };
    if p.mode == PeerAuthMode::Disable {
        shared
            .metrics
            .mode_rejected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(%remote, port = p.port, "TLS refused: port is DISABLE");
        return;
    }
    let cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec());
    let identity = cert.as_ref().and_then(|c| tls::check_svid(c).ok());
    let xfcc = match (&cert, &identity, shared.identity.current()) {
        (Some(c), Some(id), Some(own)) => {
            HeaderValue::from_str(&tls::xfcc_value(&own.id, c, id)).ok()
        }
        _ => None,
    };
    let alpn_tcp = conn.alpn_protocol() == Some(tls::ALPN_TCP);
    tracing::debug!(%remote, port = p.port, peer = ?identity.as_ref().map(|i| i.to_string()), "mTLS accepted");
    let protocol = if alpn_tcp { Protocol::Tcp } else { p.protocol };
    let ctx = ConnCtx {
        shared: shared.clone(),
        peer: PeerInfo {
            identity,
            remote,
            port: p.port,
            local_ip,
            sni: conn.server_name().map(Arc::from),
            authz_filter: Default::default(),
        },
        xfcc,
    };
    dispatch(Arc::new(ctx), tls, protocol).await;
}

async fn dispatch<S>(ctx: Arc<ConnCtx>, io: S, protocol: Protocol)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if protocol.is_http() {
        serve_http(ctx, io).await;
    } else {
        serve_tcp(ctx, io).await;
    }
}

async fn serve_tcp<S>(ctx: Arc<ConnCtx>, mut io: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let snap = ctx.shared.runtime.load_full();
    let mut record = crate::telemetry::ConnectionOutcome::start(
        Direction::Inbound,
        Arc::new(crate::telemetry::peer_party(
            ctx.peer.identity.as_ref(),
            None,
        )),
        snap.telemetry.local.party.clone(),
        snap.telemetry.local.service.clone(),
    );
    record.mtls = ctx.peer.identity.is_some();
    record.downstream = Some(Arc::new(ctx.downstream()));
    record.facts = app_facts(&snap, ctx.peer.port);
    if let Err(e) = snap.authorize(&ctx.peer, None, &ctx.shared.metrics.authz) {
        // Closed at once, before the application is dialed.
        tracing::info!(remote = %ctx.peer.remote, error = %e, "TCP connection denied");
        crate::telemetry::refused_connection(&ctx.shared, record, &e);
        return;
    }
    let mut upstream = match connect_app(&snap, ctx.peer.port).await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(error = %e, "application connect failed");
            crate::telemetry::refused_connection(&ctx.shared, record, &e);
            return;
        }
    };
    crate::telemetry::connection_opened(&ctx.shared, &record);
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut io, &mut upstream) => {
            tracing::debug!(result = ?r, "inbound TCP stream ended");
            record.bytes(r.ok());
        }
        _ = ctx.shared.drain.forced() => {}
    }
    crate::telemetry::record_connection(&ctx.shared, &record.finish());
}

async fn serve_http<S>(ctx: Arc<ConnCtx>, io: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = Arc::clone(&ctx.shared);
    let side = crate::telemetry::Side::Inbound {
        identity: ctx.peer.identity.clone(),
        mtls: ctx.peer.identity.is_some(),
        peers: Default::default(),
    };
    let downstream = ctx.downstream();
    crate::listener::serve_http(shared, io, side, downstream, move |req| {
        let ctx = Arc::clone(&ctx);
        async move { forward(&ctx, req).await }
    })
    .await;
}

/// One inbound request: framing check, authorize, sanitize, set xfcc, forward to the app.
async fn forward(ctx: &ConnCtx, req: Request<Incoming>) -> Result<Response<Body>, ProxyError> {
    check_framing(req.version(), req.headers())?;
    // Read per request: a policy change applies to the next request on an open connection.
    let snap = ctx.shared.runtime.load_full();
    let authn = match &snap.authn {
        Some(a) => crate::authn::authenticate(a, req.uri(), req.headers())?,
        None => None,
    };
    let authorized = snap.authorize(
        &ctx.peer,
        Some(HttpFacts {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            auth: authn.as_ref().map(|a| &*a.verified),
        }),
        &ctx.shared.metrics.authz,
    )?;
    let upgrade = crate::http::is_upgrade(&req);
    if req.method() == http::Method::CONNECT {
        return connect_tunnel(ctx, &snap, req, authn.as_ref()).await;
    }
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers, upgrade);
    strip_internal(&mut parts.headers);
    if let Some(a) = &snap.authn {
        crate::authn::rewrite_headers(a, authn.as_ref(), &mut parts.headers);
    }
    if let (true, Some(v)) = (snap.cfg.xfcc, &ctx.xfcc) {
        parts.headers.insert(XFCC, v.clone());
    }
    if !parts.headers.contains_key(header::HOST)
        && let Some(a) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        parts.headers.insert(header::HOST, a);
    }
    let port = ctx.peer.port;
    // The application gets the very path that was authorized.
    let pq = match &authorized.path_and_query {
        Some(normalized) => normalized.as_str(),
        None => parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/"),
    };
    let app_port = snap.inbound_port(port).map_or(port, |p| p.app_port());
    parts.uri = format!("http://127.0.0.1:{app_port}{pq}")
        .parse()
        .map_err(|_| ProxyError::BadRequest("unusable request target"))?;
    let h2 = snap
        .inbound_port(port)
        .is_some_and(|p| matches!(p.protocol, Protocol::Http2 | Protocol::Grpc));
    parts.version = if h2 {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    };
    if h2 {
        parts.headers.remove(header::HOST);
    }
    let fault = crate::body::BodyFault::for_request(&parts.extensions);
    let body = crate::body::Downstream::wrap(body, fault.clone());
    let mut req = Request::from_parts(parts, body);
    let down = upgrade.then(|| hyper::upgrade::on(&mut req));
    let client = if h2 {
        &ctx.shared.app_h2
    } else {
        &ctx.shared.app_h1
    };
    let service = || format!("inbound|{port}");
    let sent_at = std::time::Instant::now();
    let resp = client.request(req).await;
    let service_time = sent_at.elapsed();
    let mut resp = resp.map_err(|e| {
        if let Some(peer_fault) = fault.take() {
            // The peer's body failed, not the application: the peer is answered 400, never a
            // 5xx its proxy would count against this endpoint.
            peer_fault
        } else if e.is_connect() {
            let reason = find_io(&e).map(io_reason).unwrap_or_else(|| e.to_string());
            ProxyError::UpstreamConnect {
                service: service(),
                reason,
            }
        } else {
            ProxyError::UpstreamReset {
                service: service(),
                reason: e.to_string(),
            }
        }
    })?;
    let switching = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    if let (Some(down), true) = (down, switching) {
        let up = hyper::upgrade::on(&mut resp);
        tokio::spawn(splice_upgrade(down, up));
    }
    strip_hop_by_hop(resp.headers_mut(), switching);
    // The application cannot flag its response as the proxy's.
    strip_reserved(resp.headers_mut());
    resp.extensions_mut().insert(UpstreamFacts {
        service_time: Some(service_time),
        ..app_facts(&snap, port)
    });
    Ok(resp.map(crate::http::boxed))
}

/// `CONNECT` to the application (a forward proxy in the mesh): sent as received, target and
/// all, on a connection of its own (a pooled client would rewrite the target into the
/// application's address), and spliced to the peer once the application answers 2xx.
async fn connect_tunnel(
    ctx: &ConnCtx,
    snap: &crate::runtime::Snapshot,
    req: Request<Incoming>,
    authn: Option<&meshapi::authn::Authenticated<'_>>,
) -> Result<Response<Body>, ProxyError> {
    let service = format!("inbound|{}", ctx.peer.port);
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    strip_internal(&mut parts.headers);
    if let Some(a) = &snap.authn {
        crate::authn::rewrite_headers(a, authn, &mut parts.headers);
    }
    if let (true, Some(v)) = (snap.cfg.xfcc, &ctx.xfcc) {
        parts.headers.insert(XFCC, v.clone());
    }
    let mut req = Request::from_parts(parts, crate::http::boxed(body));
    let down = hyper::upgrade::on(&mut req);
    let stream = connect_app(snap, ctx.peer.port).await?;
    let mut resp = crate::http::send_tunnel(stream, req, &service).await?;
    if crate::http::tunnel_opened(&http::Method::CONNECT, resp.status()) {
        let up = hyper::upgrade::on(&mut resp);
        tokio::spawn(splice_upgrade(down, up));
    }
    strip_hop_by_hop(resp.headers_mut(), false);
    strip_reserved(resp.headers_mut());
    Ok(resp.map(crate::http::boxed))
}

/// A connection to the application behind inbound `port` (its `targetPort` on 127.0.0.1),
/// within the config's connect timeout.
async fn connect_app(snap: &crate::runtime::Snapshot, port: u16) -> Result<TcpStream, ProxyError> {
    let app_port = snap.inbound_port(port).map_or(port, |p| p.app_port());
    let app = SocketAddr::from(([127, 0, 0, 1], app_port));
    let fail = |reason: String| ProxyError::UpstreamConnect {
        service: format!("inbound|{port}"),
        reason,
    };
    match tokio::time::timeout(snap.cfg.limits.connect_timeout.0, TcpStream::connect(app)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(fail(io_reason(&e))),
        Err(_) => Err(fail("connection timeout".into())),
    }
}
