//! Wiring: [`build`] validates a config, loads credentials, builds the shared [`Context`],
//! binds every listener and starts the components that own them ([`crate::inbound`],
//! [`crate::outbound`], [`crate::admin`]), and returns a [`Bound`] with the real addresses and
//! a [`ProxyHandle`] to apply new configs and shut down. Tests run the whole proxy in-process
//! through this module.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use meshapi::diag::FieldError;
use meshapi::proxy::ProxyConfig;

use crate::admin::AdminPort;
use crate::context::Context;
pub use crate::context::LogControl;
use crate::drain::Drain;
use crate::listener::{BindError, bind};
use crate::metrics::Metrics;
use crate::outbound::VipListeners;
use crate::pool::Pool;
use crate::runtime::{Runtime, Snapshot};
use crate::tls::{Credentials, Identity, TlsError};

/// Why a proxy could not start or a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("invalid config: {}", .0.iter().map(|e| format!("{}: {}", e.path, e.message)).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    #[error("credentials: {0}")]
    Credentials(#[from] TlsError),
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{0}")]
    Bind(#[from] BindError),
    #[error("{0}")]
    Load(#[from] meshapi::proxy::ConfigError),
}

/// Options that do not belong in the config document.
#[derive(Default)]
pub struct Options {
    pub log_control: Option<LogControl>,
    /// Where access log lines go. Default: the proxy's stdout.
    pub access_log: Option<crate::telemetry::access_log::Sink>,
}

/// A handle on a running proxy: apply configs, read state, shut down. Cheap to clone.
#[derive(Clone)]
pub struct ProxyHandle {
    shared: Arc<Context>,
    vips: Arc<VipListeners>,
}

/// A started proxy with its real bound addresses.
pub struct Bound {
    pub inbound: SocketAddr,
    pub outbound_capture: Option<SocketAddr>,
    /// The edge listener (published ports from outside the mesh), when configured.
    pub edge: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub health: SocketAddr,
    pub stats: SocketAddr,
    pub handle: ProxyHandle,
}

impl Bound {
    /// The address actually bound for a configured outbound VIP (differs when port 0).
    pub fn outbound(&self, vip: SocketAddr) -> Option<SocketAddr> {
        self.handle.outbound_addr(vip)
    }

    /// Runs until SIGTERM or Ctrl-C, then drains with the configured deadline.
    pub async fn wait_termination(self) -> std::io::Result<()> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            r = tokio::signal::ctrl_c() => { r?; tracing::info!("interrupt: draining") }
        }
        self.handle.shutdown().await;
        Ok(())
    }
}

fn load_credentials(cfg: &ProxyConfig) -> Result<Option<Credentials>, TlsError> {
    let id = &cfg.identity;
    let (Some(cert), Some(key), Some(roots)) = (&id.cert_file, &id.key_file, &id.roots_file) else {
        return Ok(None);
    };
    Credentials::from_files(cert, key, roots, &id.spiffe_id).map(Some)
}

/// Starts a proxy from a config.
pub async fn build(cfg: ProxyConfig) -> Result<Bound, AppError> {
    build_with(cfg, Options::default()).await
}

/// Starts a proxy from a config with extra options.
pub async fn build_with(cfg: ProxyConfig, opts: Options) -> Result<Bound, AppError> {
    let errs = cfg.validate();
    if !errs.is_empty() {
        return Err(AppError::Invalid(errs));
    }
    let ctx = Arc::new(context(&cfg, opts)?);
    let (inbound, inbound_addr) = bind(cfg.listeners.inbound)?;
    let capture = cfg.listeners.outbound_capture.map(bind).transpose()?;
    let edge = cfg.listeners.edge.map(bind).transpose()?;
    let (admin, admin_addr) = bind(cfg.admin.admin)?;
    let (health, health_addr) = bind(cfg.admin.health)?;
    let (stats, stats_addr) = bind(cfg.admin.stats)?;
    let handle = ProxyHandle {
        shared: Arc::clone(&ctx),
        vips: Arc::default(),
    };
    let bound = Bound {
        inbound: inbound_addr,
        outbound_capture: capture.as_ref().map(|(_, a)| *a),
        edge: edge.as_ref().map(|(_, a)| *a),
        admin: admin_addr,
        health: health_addr,
        stats: stats_addr,
        handle: handle.clone(),
    };
    crate::inbound::spawn(Arc::clone(&ctx), inbound);
    if let Some((c, _)) = capture {
        crate::outbound::spawn_capture(Arc::clone(&ctx), c);
    }
    if let Some((e, _)) = edge {
        crate::inbound::spawn_edge(Arc::clone(&ctx), e);
    }
    crate::admin::spawn(Arc::clone(&ctx), admin, AdminPort::Admin);
    crate::admin::spawn(Arc::clone(&ctx), health, AdminPort::Health);
    crate::admin::spawn(Arc::clone(&ctx), stats, AdminPort::Stats);
    handle.sync_vips(&cfg)?;
    tracing::info!(
        inbound = %bound.inbound, admin = %bound.admin, revision = cfg.revision,
        identity = %cfg.identity.spiffe_id, "meshproxy started"
    );
    Ok(bound)
}

/// The shared context for `cfg`: credentials (when configured), the first runtime, metrics,
/// drain, pool and the clients to local applications.
fn context(cfg: &ProxyConfig, opts: Options) -> Result<Context, AppError> {
    let identity = Arc::new(Identity::default());
    let creds = match load_credentials(cfg) {
        Ok(Some(creds)) => Some(creds),
        Ok(None) => {
            tracing::info!("no credential files configured; waiting for the CA client");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "credentials not loaded; not ready until they are");
            None
        }
    };
    let trust = identity.publish(creds, &cfg.identity.trust_domain_aliases);
    let mut app_h1 = Client::builder(TokioExecutor::new());
    app_h1
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60));
    let mut app_h2 = Client::builder(TokioExecutor::new());
    app_h2
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_only(true);
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(cfg.limits.connect_timeout.0));
    let metrics = Metrics::default();
    let jwks = crate::authn::JwksStore::new(identity.clone());
    let authn = jwks.authenticator(cfg);
    metrics
        .config_revision
        .store(cfg.revision, std::sync::atomic::Ordering::Relaxed);
    Ok(Context {
        server_tls: crate::tls::server_config(identity.clone())?,
        identity,
        metrics,
        telemetry: crate::telemetry::Telemetry::start(cfg, opts.access_log),
        drain: Drain::default(),
        pool: Pool::default(),
        app_h1: app_h1.build(connector.clone()),
        app_h2: app_h2.build(connector),
        log_control: opts.log_control,
        jwks,
        runtime: ArcSwap::from_pointee(Runtime {
            snapshot: Arc::new(Snapshot::new(Arc::new(cfg.clone())).with_authn(authn)),
            trust,
        }),
    })
}

impl ProxyHandle {
    /// Validates and applies a new config atomically: new connections and requests see it,
    /// requests in flight finish on the old one, unchanged listeners keep their connections.
    /// An invalid config (or unreadable credentials, or an unbindable VIP) is refused and the
    /// old config keeps serving.
    pub fn apply(&self, cfg: ProxyConfig) -> Result<(), AppError> {
        let result = self.try_apply(cfg);
        let m = &self.shared.metrics;
        match &result {
            Ok(()) => m
                .reloads_ok
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            Err(e) => {
                tracing::error!(error = %e, "config refused; keeping the previous one");
                m.reloads_rejected
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            }
        };
        result
    }

    fn try_apply(&self, cfg: ProxyConfig) -> Result<(), AppError> {
        let errs = cfg.validate();
        if !errs.is_empty() {
            return Err(AppError::Invalid(errs));
        }
        let creds = load_credentials(&cfg)?;
        let old = self.shared.runtime.load_full();
        if old.cfg.listeners.inbound != cfg.listeners.inbound || old.cfg.admin != cfg.admin {
            tracing::warn!("listener address changes take effect at the next restart");
        }
        self.sync_vips(&cfg)?;
        let revision = cfg.revision;
        let aliases = cfg.identity.trust_domain_aliases.clone();
        let authn = self.shared.jwks.authenticator(&cfg);
        let snapshot =
            Arc::new(Snapshot::build(Arc::new(cfg), Some(&old.snapshot)).with_authn(authn));
        // The trust state goes to the live identity (inbound handshakes) and, with the config,
        // into the one runtime value the data path reads. Pooled connections are tagged with
        // the trust generation, so none made under other roots is handed out.
        self.shared.identity.publish(creds, &aliases);
        self.publish(Some(snapshot));
        self.shared
            .metrics
            .config_revision
            .store(revision, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(revision, "config applied");
        Ok(())
    }

    /// Stores a new runtime: `snapshot` (or the current one) with the identity's current trust,
    /// in one store; a concurrent credential change is never lost.
    fn publish(&self, snapshot: Option<Arc<Snapshot>>) {
        self.shared.runtime.rcu(|cur| Runtime {
            snapshot: snapshot
                .clone()
                .unwrap_or_else(|| Arc::clone(&cur.snapshot)),
            trust: self.shared.identity.trust(),
        });
    }

    /// Installs new credentials (certificate rotation): new inbound handshakes and new
    /// outbound connections use them; connections pooled under other roots are not reused.
    pub fn set_credentials(&self, creds: Credentials) {
        self.shared.identity.set(creds);
        self.publish(None);
    }

    /// Brings the explicit VIP listeners in step with `cfg`.
    fn sync_vips(&self, cfg: &ProxyConfig) -> Result<(), AppError> {
        Ok(self.vips.sync(&self.shared, cfg)?)
    }

    /// Reads, validates and applies a config file.
    pub fn reload_file(&self, path: &std::path::Path) -> Result<(), AppError> {
        match ProxyConfig::load_file(path) {
            Ok(cfg) => self.apply(cfg),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "config refused; keeping the previous one");
                self.shared
                    .metrics
                    .reloads_rejected
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err(e.into())
            }
        }
    }

    /// The bound address of a configured outbound VIP.
    pub fn outbound_addr(&self, vip: SocketAddr) -> Option<SocketAddr> {
        self.vips.addr(vip)
    }

    /// The config being served.
    pub fn config(&self) -> Arc<ProxyConfig> {
        self.shared.runtime.load().cfg.clone()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    pub fn identity(&self) -> Arc<Identity> {
        self.shared.identity.clone()
    }

    /// Connections currently open through the proxy.
    pub fn active_connections(&self) -> usize {
        self.shared.drain.active()
    }

    /// Stops accepting, drains in-flight work up to the config's deadline, then closes the
    /// rest. Returns how many connections were forced closed.
    pub async fn shutdown(&self) -> usize {
        let deadline = self.shared.runtime.load().cfg.drain_deadline.0;
        self.shared.drain.drain(deadline).await
    }
}
