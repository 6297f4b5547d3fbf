//! Wiring: sockets, the hickory server, the forwarder and the records watcher.

use std::net::SocketAddr;

use hickory_server::Server;
use meshapi::dns::Records;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::{Config, Upstreams};
use crate::forward::{ForwardError, Forwarder, StaleCache, system_upstreams};
use crate::handler::MeshHandler;
use crate::reload::{PublishError, RecordsHandle, WatchError, watch_file};

/// Why meshdns could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("records: {0}")]
    Records(#[from] PublishError),
    #[error(transparent)]
    Forward(#[from] ForwardError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error("DNS server failed: {0}")]
    Server(String),
}

/// Stops a running meshdns. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Sender<bool>);

impl Shutdown {
    /// Asks the server to stop: listeners close, in-flight requests finish.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

/// A running meshdns.
#[derive(Debug)]
pub struct Bound {
    /// The UDP address actually bound.
    pub udp_addr: SocketAddr,
    /// The TCP address actually bound (same port as UDP).
    pub tcp_addr: SocketAddr,
    /// Stops the server.
    pub shutdown: Shutdown,
    records: RecordsHandle,
    server: JoinHandle<Result<(), AppError>>,
    udp: JoinHandle<()>,
    watcher: Option<JoinHandle<()>>,
}

impl Bound {
    /// Publishes records to the running server (the control plane's entry point).
    pub fn records(&self) -> &RecordsHandle {
        &self.records
    }

    /// Waits until the server stops (after [`Shutdown::trigger`], or on a fatal error).
    pub async fn wait_termination(self) -> Result<(), AppError> {
        let result = match self.server.await {
            Ok(r) => r,
            Err(e) => Err(AppError::Server(e.to_string())),
        };
        let _ = self.udp.await;
        if let Some(w) = self.watcher {
            w.abort();
        }
        result
    }

    /// Triggers shutdown and waits for it.
    pub async fn stop(self) -> Result<(), AppError> {
        self.shutdown.trigger();
        self.wait_termination().await
    }
}

/// Binds UDP and TCP on the same address; with port 0, retries until one port is free for both.
async fn bind(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), AppError> {
    let mut last = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|source| AppError::Bind { addr, source })?;
        let udp_addr = udp
            .local_addr()
            .map_err(|source| AppError::Bind { addr, source })?;
        match TcpListener::bind(udp_addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(source) if addr.port() == 0 => last = Some(source),
            Err(source) => {
                return Err(AppError::Bind {
                    addr: udp_addr,
                    source,
                });
            }
        }
    }
    Err(AppError::Bind {
        addr,
        source: last.unwrap_or_else(|| std::io::Error::other("no free port")),
    })
}

/// Starts meshdns: loads the records file (refusing to start on a bad one), binds UDP and TCP,
/// starts the watcher, and serves until shut down.
pub async fn build(cfg: Config) -> Result<Bound, AppError> {
    let initial = match &cfg.records_file {
        Some(path) => Records::load(path).map_err(PublishError::from)?,
        None => Records::default(),
    };
    let records = RecordsHandle::new(initial)?;
    let (udp, tcp) = bind(cfg.listen).await?;
    let udp_addr = udp.local_addr().map_err(|source| AppError::Bind {
        addr: cfg.listen,
        source,
    })?;
    let tcp_addr = tcp.local_addr().map_err(|source| AppError::Bind {
        addr: cfg.listen,
        source,
    })?;

    let upstreams = match &cfg.upstreams {
        Upstreams::Static(list) => list.clone(),
        Upstreams::System => system_upstreams(udp_addr)?,
    };
    if upstreams.is_empty() {
        warn!("no upstream resolvers: non-mesh names will get SERVFAIL");
    }
    let forwarder = Forwarder::with_stale(
        &upstreams,
        cfg.upstream_timeout,
        StaleCache::new(cfg.serve_stale, cfg.stale_entries),
    )?;
    let handler = MeshHandler::new(records.zone(), forwarder, cfg.max_udp_payload);

    let (tx, rx) = watch::channel(false);
    let watcher = match &cfg.records_file {
        Some(path) => Some(watch_file(
            path.clone(),
            records.clone(),
            cfg.reload_debounce,
            rx.clone(),
        )?),
        None => None,
    };

    let udp = tokio::spawn(crate::udp::serve(udp, handler.clone(), rx.clone()));
    let mut server = Server::new(handler);
    server.register_listener(tcp, cfg.tcp_idle_timeout, 64);
    let token = server.shutdown_token().clone();
    let mut stop = rx;
    tokio::spawn(async move {
        // Either a trigger or every Shutdown dropped: stop serving.
        let _ = stop.wait_for(|s| *s).await;
        token.cancel();
    });
    let services = records.current().services.len();
    info!(%udp_addr, %tcp_addr, services, upstreams = ?upstreams, "meshdns serving");
    let server = tokio::spawn(async move {
        server
            .block_until_done()
            .await
            .map_err(|e| AppError::Server(e.to_string()))
    });
    Ok(Bound {
        udp_addr,
        tcp_addr,
        shutdown: Shutdown(tx),
        records,
        server,
        udp,
        watcher,
    })
}
