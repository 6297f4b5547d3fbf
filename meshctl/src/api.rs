//! The control plane's mTLS API (port 15012): certificates (CSR) and, with the routes the
//! control plane adds, config push, ACKs, status and reload.
//!
//! [`ApiServer::bind`] listens, terminates TLS with a CA-issued serving certificate, verifies
//! optional client certificates against the mesh roots, and dispatches HTTP/1.1 or HTTP/2
//! requests through a [`Router`]. [`ca_router`] gives the router with the CSR endpoint; other
//! components add their routes to it before binding:
//!
//! ```ignore
//! let router = api::ca_router(ca.clone()).route(Method::GET, "/v1/config", config_handler);
//! let server = api::ApiServer::bind(ApiConfig::default(), ca, router).await?;
//! ```
//!
//! - `router`: routes, [`PeerInfo`], JSON helpers.
//! - `tls`: rustls server config, serving-certificate rotation, peer identity.
//! - `csr`: `POST /v1/csr` and the mapping of CA errors to statuses.

pub mod csr;
pub mod router;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use meshapi::ca_api::{CSR_PATH, DEFAULT_API_PORT};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

pub use router::{ApiBody, Handler, PeerInfo, Router, error_response, json_response, read_json};
pub use tls::spiffe_id_of;

use crate::ca::{Ca, CaError};

/// API server settings. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// Listen address. Default `0.0.0.0:15012` (Istio's port); tests use port 0.
    pub listen: SocketAddr,
    /// DNS names and IP addresses put in the serving certificate besides the control plane's
    /// SPIFFE ID (proxies verify the SPIFFE ID; names help curl and other tools).
    /// Default `localhost`, `127.0.0.1`, `::1`.
    pub server_names: Vec<String>,
    /// Lifetime of the serving certificate; it is re-issued at half of it. Default 24 h.
    pub serving_cert_lifetime: Duration,
    /// Time a client has to complete the TLS handshake. Default 10 s.
    pub handshake_timeout: Duration,
    /// On shutdown, how long in-flight requests may take before connections are dropped.
    /// Default 5 s.
    pub drain_timeout: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_API_PORT)),
            server_names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            serving_cert_lifetime: Duration::from_secs(24 * 3600),
            handshake_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// Why the API server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// TLS setup failed.
    #[error("TLS setup failed: {0}")]
    Tls(rustls::Error),
    /// The CA could not issue the serving certificate.
    #[error("serving certificate: {0}")]
    Ca(CaError),
}

/// The router with the CA's endpoints (`POST /v1/csr`).
pub fn ca_router(ca: Arc<Ca>) -> Router {
    Router::new().route(Method::POST, CSR_PATH, move |req, peer| {
        csr::handle(ca.clone(), req, peer)
    })
}

/// A running API server.
#[derive(Debug)]
pub struct ApiServer {
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ApiServer {
    /// Binds `config.listen` and serves `router` until [`ApiServer::shutdown`].
    pub async fn bind(config: ApiConfig, ca: Arc<Ca>, router: Router) -> Result<Self, ApiError> {
        let tls = tls::server_config(ca, &config)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| ApiError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| ApiError::Bind {
            addr: config.listen,
            source,
        })?;
        let (shutdown, rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(tls),
            Arc::new(router),
            config,
            rx,
        ));
        tracing::info!(addr = %local_addr, "mesh API listening");
        Ok(Self {
            local_addr,
            shutdown,
            task,
        })
    }

    /// The bound address (the real port when listening on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets in-flight requests finish (up to the drain timeout), returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "API server task failed");
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Arc<Router>,
    config: ApiConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A client that opens a connection and never sends a request header is dropped.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.handshake_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30));
    let builder = Arc::new(builder);
    loop {
        let (tcp, remote_addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning or exiting.
                    tracing::warn!(error = %e, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let handshake_timeout = config.handshake_timeout;
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::warn!(peer = %remote_addr, error = %e, "API TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::warn!(peer = %remote_addr, "API TLS handshake timed out");
                    return;
                }
            };
            let peer = PeerInfo {
                remote_addr,
                identity: tls::peer_identity(tls.get_ref().1.peer_certificates()),
                serial: tls::peer_serial(tls.get_ref().1.peer_certificates()),
            };
            let service = hyper::service::service_fn(move |req| {
                let router = router.clone();
                let peer = peer.clone();
                async move { Ok::<_, Infallible>(router.dispatch(req, peer).await) }
            });
            let conn = builder
                .serve_connection(TokioIo::new(tls), service)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(peer = %remote_addr, error = %e, "API connection ended with error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(config.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("API drain timed out; remaining connections dropped");
    }
}
