//! Upstream connections of the client side: [`connect`] opens the kind of stream a [`Target`]
//! needs; [`crate::pool`] keeps the HTTP ones.
//!
//! Which kind ([`settings`]): a traffic cluster's `policy.tls` (a DestinationRule's `tls`)
//! wins; otherwise the endpoint's `tls` entry for the application port (the compiler writes
//! Istio's auto-mTLS there); otherwise ISTIO_MUTUAL with a mesh identity, plaintext without.
//!
//! - ISTIO_MUTUAL: mutual TLS 1.3 with this proxy's certificate, the port named in SNI, the
//!   server's SPIFFE ID checked.
//! - DISABLE to a mesh proxy (it has an identity): plaintext to its inbound listener, which
//!   takes the port from the original destination (container mode: this proxy dials
//!   `<pod ip>:<port>`, redirected to 15006) or serves its first inbound port (host mode, one
//!   listener for all ports: no SNI can name the port). A server that requires mTLS closes
//!   such a connection, which fails the request with UF.
//! - DISABLE outside the mesh: plaintext TCP.
//! - SIMPLE / MUTUAL: TLS origination ([`crate::tls::origination_config`]); HTTP offers ALPN
//!   `h2` and `http/1.1` and the pool speaks what the server picks.
//!
//! Failures are `UpstreamConnect` (503, flag UF) naming the service and the TLS error, and
//! handshake failures count in `meshproxy_tls_failures_total{direction="outbound"}`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use meshapi::proxy::{UpstreamTls, UpstreamTlsMode};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::context::Context;
use crate::http::io_reason;
use crate::metrics::Direction;
use crate::reply::ProxyError;
use crate::runtime::{Runtime, Target};
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
pub fn settings(target: &Target) -> &UpstreamTls {
    &target.key.tls
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
        cx: &mut std::task::Context<'_>,
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
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
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

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The address to dial: the endpoint's address, except plaintext to a mesh proxy in container
/// mode (`<pod ip>:<port>`, so the peer's capture keeps the port as original destination)
/// and an endpoint outside the mesh written with port 0 (its IP at the target port).
fn dial_addr(rt: &Runtime, target: &Target, tls: &UpstreamTls) -> SocketAddr {
    let a = target.endpoint.address;
    let at_port = SocketAddr::new(a.ip(), target.target_port);
    if target.endpoint.identity.is_none() {
        return if a.port() == 0 { at_port } else { a };
    }
    let capture = rt.cfg.listeners.outbound_capture.is_some();
    if tls.mode == UpstreamTlsMode::Disable && capture {
        at_port
    } else {
        a
    }
}

async fn tcp_connect(addr: SocketAddr, target: &Target) -> std::io::Result<TcpStream> {
    let tcp = crate::capture::connect(addr).await?;
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
    shared: &Arc<Context>,
    rt: &Runtime,
    target: &Target,
    tls: &UpstreamTls,
    wire: Wire,
) -> Result<UpstreamStream, ProxyError> {
    let fail = |reason: String| ProxyError::UpstreamConnect {
        service: target.service.to_string(),
        reason,
    };
    let tls_fail = |reason: String| {
        shared.metrics.tls_failure(Direction::Outbound);
        fail(reason)
    };
    let addr = dial_addr(rt, target, tls);
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
                    tls::client_config_for(Arc::clone(&rt.trust), expected, wire.mesh_alpn())
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
        .unwrap_or(rt.cfg.limits.connect_timeout.0);
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
