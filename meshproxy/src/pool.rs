//! Connections to other proxies: [`connect_mtls`] opens one mTLS stream to an endpoint (TCP
//! and upgrades get their own), and [`Pool`] keeps one multiplexed HTTP/2 connection per
//! (endpoint, identity, application port) for HTTP, reused by every request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meshapi::proxy::SpiffeId;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::app::Shared;
use crate::http::{Body, io_reason};
use crate::metrics::Direction;
use crate::rescue::ProxyError;
use crate::state::Target;
use crate::tls;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    addr: SocketAddr,
    identity: Option<SpiffeId>,
    port: u16,
}

/// Pooled HTTP/2 connections to peer proxies.
#[derive(Debug, Default)]
pub struct Pool {
    conns: Mutex<HashMap<Key, SendRequest<Body>>>,
}

impl Pool {
    /// A sender on a live pooled connection to `target`, connecting if there is none.
    pub async fn h2(
        &self,
        shared: &Arc<Shared>,
        target: &Target,
    ) -> Result<SendRequest<Body>, ProxyError> {
        let key = Key {
            addr: target.endpoint.address,
            identity: target.endpoint.identity.clone(),
            port: target.target_port,
        };
        if let Some(s) = self.get(&key) {
            return Ok(s);
        }
        let stream = connect_mtls(shared, target, tls::ALPN_H2).await?;
        let mut b = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .max_header_list_size(
                u32::try_from(shared.limits().max_header_bytes).unwrap_or(u32::MAX),
            );
        let (sender, conn) =
            b.handshake(TokioIo::new(stream))
                .await
                .map_err(|e| ProxyError::UpstreamConnect {
                    service: target.service.clone(),
                    reason: format!("HTTP/2 handshake: {e}"),
                })?;
        let addr = key.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "pooled connection closed");
            }
        });
        if let Ok(mut m) = self.conns.lock() {
            m.insert(key, sender.clone());
        }
        Ok(sender)
    }

    fn get(&self, key: &Key) -> Option<SendRequest<Body>> {
        let mut m = self.conns.lock().ok()?;
        match m.get(key) {
            Some(s) if !s.is_closed() => Some(s.clone()),
            Some(_) => {
                m.remove(key);
                None
            }
            None => None,
        }
    }

    /// Drops the pooled connection to `target`, if any.
    pub fn evict(&self, target: &Target) {
        let key = Key {
            addr: target.endpoint.address,
            identity: target.endpoint.identity.clone(),
            port: target.target_port,
        };
        if let Ok(mut m) = self.conns.lock() {
            m.remove(&key);
        }
    }

    /// Drops every pooled connection (new requests reconnect), e.g. after new trust roots.
    pub fn clear(&self) {
        if let Ok(mut m) = self.conns.lock() {
            m.clear();
        }
    }
}

/// Opens a mutual-TLS stream to `target`'s proxy, offering `alpn` and naming the
/// application port in SNI; the server must present `target.endpoint.identity`.
pub async fn connect_mtls(
    shared: &Arc<Shared>,
    target: &Target,
    alpn: &[u8],
) -> Result<TlsStream<TcpStream>, ProxyError> {
    let fail = |reason: String| ProxyError::UpstreamConnect {
        service: target.service.clone(),
        reason,
    };
    let expected = target
        .endpoint
        .identity
        .clone()
        .ok_or_else(|| fail("ISTIO_MUTUAL to an endpoint without a mesh identity".into()))?;
    let config = tls::client_config(shared.identity.clone(), expected, alpn)
        .map_err(|e| fail(format!("TLS config: {e}")))?;
    let addr = target.endpoint.address;
    let connect = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| fail(io_reason(&e)))?;
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
        TlsConnector::from(config)
            .connect(tls::sni_for_port(target.target_port), tcp)
            .await
            .map_err(|e| {
                shared.metrics.tls_failure(Direction::Outbound);
                tracing::warn!(%addr, error = %e, "TLS handshake to endpoint failed");
                fail(format!("TLS error: {e}"))
            })
    };
    let timeout = target
        .connect
        .timeout
        .unwrap_or(shared.limits().connect_timeout.0);
    match tokio::time::timeout(timeout, connect).await {
        Ok(r) => r,
        Err(_) => Err(fail("connection timeout".into())),
    }
}

/// Sends on the pooled HTTP/2 connection. If that connection turned out to be gone before
/// the request was written (peer restarted or drained), the untouched request is retried once
/// on a fresh connection; anything already sent is never replayed.
pub async fn send_pooled(
    shared: &Arc<Shared>,
    target: &crate::state::Target,
    req: Request<Body>,
) -> Result<Response<Incoming>, ProxyError> {
    let reset = |e: hyper::Error| ProxyError::UpstreamReset {
        service: target.service.clone(),
        reason: e.to_string(),
    };
    let mut sender = shared.pool.h2(shared, target).await?;
    match sender.try_send_request(req).await {
        Ok(resp) => Ok(resp),
        Err(mut e) => match e.take_message() {
            Some(req) => {
                tracing::debug!(service = %target.service, "pooled connection gone; reconnecting");
                shared.pool.evict(target);
                let mut sender = shared.pool.h2(shared, target).await?;
                sender.send_request(req).await.map_err(reset)
            }
            None => Err(reset(e.into_error())),
        },
    }
}
