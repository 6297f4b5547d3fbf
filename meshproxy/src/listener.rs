//! What every listener shares: binding ([`bind`]), the accept loop with graceful shutdown
//! ([`spawn_accept`]: select on accept vs drain or a stop signal, back off on accept errors),
//! and the HTTP server for one downstream connection that inbound and outbound both run
//! ([`serve_http`]: HTTP/1.1 and HTTP/2 with upgrades, head-size and head-time limits, every
//! proxy error answered as a local reply and counted, graceful then forced close on drain).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::context::Context;
use crate::http::Body;
use crate::metrics::Direction;
use crate::reply::ProxyError;
use crate::telemetry::{Downstream, Side};

/// A listener address that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Binds `addr`; returns the listener and the address actually bound (port 0 picks one).
pub fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), BindError> {
    let err = |source| BindError { addr, source };
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(err)?;
    // A restarted proxy binds its ports again at once, even while connections of its previous
    // run linger in TIME_WAIT (SO_REUSEADDR; two live listeners on one port still conflict).
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    let listener = socket.listen(1024).map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    Ok((listener, bound))
}

/// When an accept loop ends besides its own stop signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// At the start of a drain (data listeners: no new connections).
    Draining,
    /// Only when the drain forces the rest closed (admin: health answers "draining").
    Forced,
}

/// Runs `listener`'s accept loop until `until` (or `stop` turns true), serving each
/// connection on its own task with `serve`.
pub fn spawn_accept<F, Fut>(
    ctx: Arc<Context>,
    listener: TcpListener,
    name: String,
    until: Until,
    mut stop: Option<watch::Receiver<bool>>,
    serve: F,
) where
    F: Fn(Arc<Context>, TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                biased;
                _ = ctx.drain.draining(), if until == Until::Draining => break,
                _ = ctx.drain.forced() => break,
                _ = stopped(&mut stop) => break,
                r = listener.accept() => r,
            };
            match accepted {
                Ok((stream, remote)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve(Arc::clone(&ctx), stream, remote));
                }
                Err(e) => {
                    tracing::warn!(error = %e, listener = %name, "accept failed; backing off");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        tracing::debug!(listener = %name, "listener closed");
    });
}

/// Resolves when a listener's stop flag is set; never without one or if its sender is gone.
async fn stopped(rx: &mut Option<watch::Receiver<bool>>) {
    if let Some(rx) = rx
        && rx.wait_for(|s| *s).await.is_ok()
    {
        return;
    }
    std::future::pending::<()>().await
}

/// Counts a request head hyper's own parser refused (it answers `400`, or `431` for an
/// oversized head, itself, before any request reaches the proxy and without a flag header)
/// as a downstream protocol error (`DPE`).
fn count_refused_head(
    ctx: &Context,
    direction: Direction,
    err: Option<&(dyn std::error::Error + Send + Sync + 'static)>,
) {
    let Some(e) = err.and_then(|e| e.downcast_ref::<hyper::Error>()) else {
        return;
    };
    if e.is_parse() {
        tracing::debug!(error = %e, "request head refused by the HTTP/1 parser (400 DPE)");
        ctx.metrics.local_response(direction);
        ctx.metrics.downstream_error(direction, "DPE");
    }
}

/// Serves HTTP on one downstream connection: each request goes to `forward`; an error is
/// answered with its local reply and counted for the side's direction. Every request is
/// recorded once, when its response ends ([`crate::telemetry`]), with the parties `side`
/// says.
pub async fn serve_http<S, F, Fut>(
    ctx: Arc<Context>,
    io: S,
    side: Side,
    downstream: Downstream,
    forward: F,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Body>, ProxyError>> + Send + 'static,
{
    let limits = ctx.limits();
    let builder = crate::http::server_builder(&limits);
    let counters = Arc::clone(&ctx);
    let direction = side.direction();
    let forward = Arc::new(forward);
    let side = Arc::new(side);
    let downstream = Arc::new(downstream);
    let svc = service_fn(move |mut req: Request<Incoming>| {
        let ctx = Arc::clone(&counters);
        let forward = Arc::clone(&forward);
        let pending = side.start(&ctx, &downstream, &mut req);
        async move {
            ctx.metrics.request(direction);
            let (resp, local) = match forward(req).await {
                Ok(resp) => (resp, None),
                Err(e) => {
                    ctx.metrics.local_response(direction);
                    if e.is_downstream() {
                        ctx.metrics
                            .downstream_error(direction, e.status_and_flag().1);
                    }
                    let details = e.details();
                    (e.into_response(), Some(details))
                }
            };
            Ok::<_, Infallible>(pending.respond(resp, local))
        }
    });
    let io = crate::framing::FramingGuard::new(
        io,
        limits.max_header_bytes,
        limits.header_read_timeout.0,
    );
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => { count_refused_head(&ctx, direction, r.err().as_deref()); return; }
        _ = ctx.drain.draining() => conn.as_mut().graceful_shutdown(),
    }
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = ctx.drain.forced() => {}
    }
}
