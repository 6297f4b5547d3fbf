//! Connections to other proxies: [`Pool`] keeps one multiplexed HTTP/2 connection per
//! (endpoint, identity, application port, upstream TLS) for HTTP, reused by every request;
//! [`crate::upstream::connect`] opens each stream (TCP and upgrades get their own), and
//! destinations outside the mesh go through [`crate::upstream::OriginPool`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meshapi::proxy::SpiffeId;

use crate::app::Shared;
use crate::http::Body;
use crate::rescue::ProxyError;
use crate::state::Target;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    addr: SocketAddr,
    identity: Option<SpiffeId>,
    port: u16,
    tls: meshapi::proxy::UpstreamTls,
}

impl Key {
    fn of(target: &Target) -> Key {
        Key {
            addr: target.endpoint.address,
            identity: target.endpoint.identity.clone(),
            port: target.target_port,
            tls: crate::upstream::settings(target),
        }
    }
}

/// Pooled HTTP/2 connections to peer proxies.
#[derive(Debug, Default)]
pub struct Pool {
    conns: Mutex<HashMap<Key, SendRequest<Body>>>,
    /// HTTP to destinations outside the mesh (plaintext, SIMPLE, MUTUAL).
    pub origin: crate::upstream::OriginPool,
}

impl Pool {
    /// A sender on a live pooled connection to `target`, connecting if there is none.
    pub async fn h2(
        &self,
        shared: &Arc<Shared>,
        target: &Target,
    ) -> Result<SendRequest<Body>, ProxyError> {
        let key = Key::of(target);
        if let Some(s) = self.get(&key) {
            return Ok(s);
        }
        let stream =
            crate::upstream::connect(shared, target, &key.tls, crate::upstream::Wire::H2).await?;
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
        let key = Key::of(target);
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
    let tls = crate::upstream::settings(target);
    if !crate::upstream::mesh_h2(&tls) {
        return shared.pool.origin.send(shared, target, tls, req).await;
    }
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
