//! Control-plane mode: the proxy gets its certificate from the control plane's CA (bootstrap
//! token first, then renewals over mTLS) and its config from the config push API, instead of
//! local files.
//!
//! [`run_with_control_plane`] obtains the first certificate, waits for the first accepted
//! config, starts the proxy with both, then keeps two loops running:
//! - renewals: each new certificate is installed with [`crate::tls::Identity::set`]; new
//!   handshakes use it, open connections keep going;
//! - config: each accepted config is applied with [`ProxyHandle::apply`]; once the
//!   application accepts connections on its inbound ports, the config client's polls report
//!   the proxy serving (its start epoch: its clients take it back from outlier ejection).
//!   A config whose `identity.trustBundle` differs from the roots in force (a root rotation
//!   started or ended) makes the proxy trust exactly that bundle at once (peers, both ways,
//!   and the control plane) and renew its certificate at once; the renewed certificate comes
//!   with the CA's bundle too.
//!
//! When the control plane is down both clients back off and retry; the proxy keeps serving on
//! the last certificate and config. The bootstrap token is never logged.

use std::sync::Arc;
use std::time::Duration;

use meshapi::ca_api::SpiffeId;
use meshapi::proxy::ProxyConfig;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::{Bound, Options, ProxyHandle};
use crate::ca_client::{self, CaClient, CaClientError, Credentials, RenewNow, RenewPolicy};
use crate::config_client::{ConfigClient, ConfigClientError, ConfigClientSettings};
use crate::cp_tls::ControlPlaneTls;

/// Everything control-plane mode needs.
#[derive(Clone)]
pub struct ControlPlaneSettings {
    /// The control plane's API address, `host:port` (CSR and config routes).
    pub endpoint: String,
    /// The one-time bootstrap token (from `MESH_BOOTSTRAP_TOKEN`). Never logged.
    pub token: String,
    /// The identity the token is bound to; the certificate must name it.
    pub identity: SpiffeId,
    /// PEM trust roots: verify the control plane and the issued certificates.
    pub roots_pem: String,
    /// Compose service name of this proxy.
    pub workload: String,
    /// Replica index.
    pub instance: u32,
    /// Renewal timing. Default: [`RenewPolicy::default`].
    pub renew: RenewPolicy,
    /// Config-client reconnect backoff, first and largest delay. Default 100 ms and 10 s.
    pub config_backoff: (Duration, Duration),
    /// Give up on the first certificate and config after this long. Default 5 min.
    pub startup_timeout: Duration,
    /// The proxy reports itself serving (its start epoch, which takes it back from ejection
    /// at its clients) once its application accepts connections on every inbound port, as a
    /// Kubernetes endpoint waits for its pod to be ready; after this long it reports anyway.
    /// Default 60 s.
    pub app_ready_timeout: Duration,
}

impl std::fmt::Debug for ControlPlaneSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlaneSettings")
            .field("endpoint", &self.endpoint)
            .field("token", &"<redacted>")
            .field("identity", &self.identity.to_string())
            .field("workload", &self.workload)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl ControlPlaneSettings {
    /// Settings with the defaults.
    pub fn new(
        endpoint: impl Into<String>,
        token: impl Into<String>,
        identity: SpiffeId,
        roots_pem: impl Into<String>,
        workload: impl Into<String>,
        instance: u32,
    ) -> Self {
        ControlPlaneSettings {
            endpoint: endpoint.into(),
            token: token.into(),
            identity,
            roots_pem: roots_pem.into(),
            workload: workload.into(),
            instance,
            renew: RenewPolicy::default(),
            config_backoff: (Duration::from_millis(100), Duration::from_secs(10)),
            startup_timeout: Duration::from_secs(300),
            app_ready_timeout: Duration::from_secs(60),
        }
    }
}

/// Why control-plane mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum CpModeError {
    #[error("certificate from the control plane: {0}")]
    Ca(#[from] CaClientError),
    #[error("config from the control plane: {0}")]
    Config(#[from] ConfigClientError),
    #[error("the issued certificate is unusable: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("starting the proxy: {0}")]
    App(#[from] crate::app::AppError),
    #[error("no {0} from the control plane within {1:?}")]
    Timeout(&'static str, Duration),
}

/// A proxy running in control-plane mode.
pub struct CpProxy {
    /// The started proxy.
    pub bound: Bound,
    /// The credentials in force (each renewal replaces them).
    pub credentials: watch::Receiver<Credentials>,
    /// The last config accepted from the control plane.
    pub config: watch::Receiver<Arc<ProxyConfig>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl CpProxy {
    /// The proxy's handle.
    pub fn handle(&self) -> &ProxyHandle {
        &self.bound.handle
    }

    fn stop_loops(stop: &watch::Sender<bool>, tasks: Vec<JoinHandle<()>>) {
        stop.send_replace(true);
        for t in tasks {
            t.abort();
        }
    }

    /// Stops following the control plane and drains the proxy; returns what
    /// [`ProxyHandle::shutdown`] returns.
    pub async fn shutdown(self) -> usize {
        Self::stop_loops(&self.stop, self.tasks);
        self.bound.handle.shutdown().await
    }

    /// Runs until SIGTERM or Ctrl-C, then drains.
    pub async fn wait_termination(self) -> std::io::Result<()> {
        let r = self.bound.wait_termination().await;
        Self::stop_loops(&self.stop, self.tasks);
        r
    }
}

fn install(handle: &ProxyHandle, c: &Credentials) -> Result<(), crate::tls::TlsError> {
    let tls = crate::tls::Credentials::from_pem(
        c.cert_chain_pem.as_bytes(),
        c.key_pem.as_bytes(),
        c.root_pem.as_bytes(),
        &c.identity,
    )?;
    handle.set_credentials(tls);
    Ok(())
}

/// Bootstraps credentials with the token, fetches the first config, starts the proxy and
/// keeps certificate and config up to date. See the module doc.
pub async fn run_with_control_plane(
    settings: ControlPlaneSettings,
    opts: Options,
) -> Result<CpProxy, CpModeError> {
    let ca = CaClient::new(
        settings.endpoint.clone(),
        Some(settings.token.clone()),
        settings.identity.clone(),
        &settings.roots_pem,
    )?;
    tracing::info!(
        endpoint = %settings.endpoint, identity = %settings.identity,
        workload = %settings.workload, instance = settings.instance,
        "control-plane mode: requesting the first certificate"
    );
    let first_creds = tokio::time::timeout(
        settings.startup_timeout,
        ca_client::fetch_with_backoff(&ca, None, &settings.renew),
    )
    .await
    .map_err(|_| CpModeError::Timeout("certificate", settings.startup_timeout))??;
    let (creds_tx, creds_rx) = watch::channel(first_creds);

    let mut cs = ConfigClientSettings::new(
        settings.endpoint.clone(),
        settings.workload.clone(),
        settings.instance,
    );
    cs.backoff_initial = settings.config_backoff.0;
    cs.backoff_max = settings.config_backoff.1;
    let cp_tls = ca.tls().clone();
    let client = ConfigClient::with_tls(cs, cp_tls.clone());
    let (first_cfg, client) =
        tokio::time::timeout(settings.startup_timeout, client.first(&creds_rx))
            .await
            .map_err(|_| CpModeError::Timeout("config", settings.startup_timeout))??;

    let bound = crate::app::build_with((*first_cfg).clone(), opts).await?;
    let handle = bound.handle.clone();
    if let Err(e) = install(&handle, &creds_rx.borrow()) {
        handle.shutdown().await;
        return Err(e.into());
    }

    let (stop, stop_rx) = watch::channel(false);
    let renew_now = RenewNow::default();
    adopt_trust_bundle(&first_cfg, &cp_tls, &handle, &creds_rx, &renew_now);
    let (cfg_tx, cfg_rx) = watch::channel(first_cfg);
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(ca_client::renew_loop_with(
        ca,
        creds_tx,
        settings.renew.clone(),
        renew_now.clone(),
    )));
    let mut rx = creds_rx.clone();
    let h = handle.clone();
    tasks.push(tokio::spawn(async move {
        rx.mark_unchanged();
        while rx.changed().await.is_ok() {
            let fresh = rx.borrow_and_update().clone();
            match install(&h, &fresh) {
                Ok(()) => tracing::info!(
                    identity = %fresh.identity, not_after = ?fresh.not_after,
                    "rotated workload certificate"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "renewed certificate unusable; keeping the old one")
                }
            }
        }
    }));
    let (serving_tx, serving_rx) = watch::channel(false);
    let app_ports: Vec<u16> = (cfg_rx.borrow().inbound.iter())
        .map(|p| p.app_port())
        .collect();
    let timeout = settings.app_ready_timeout;
    tasks.push(tokio::spawn(async move {
        wait_for_app(&app_ports, timeout).await;
        serving_tx.send_replace(true);
        // Held until the proxy stops, so the config client never sees the sender gone.
        std::future::pending::<()>().await;
    }));
    let client = client.report_ready_when(serving_rx);
    tasks.push(tokio::spawn(client.run(creds_rx.clone(), cfg_tx, stop_rx)));
    let mut rx = cfg_rx.clone();
    let h = handle.clone();
    let creds = creds_rx.clone();
    tasks.push(tokio::spawn(async move {
        rx.mark_unchanged();
        while rx.changed().await.is_ok() {
            let cfg = rx.borrow_and_update().clone();
            adopt_trust_bundle(&cfg, &cp_tls, &h, &creds, &renew_now);
            let revision = cfg.revision;
            if let Err(e) = h.apply((*cfg).clone()) {
                tracing::warn!(revision, error = %e, "pushed config not applied; keeping the old one");
            }
        }
    }));
    Ok(CpProxy {
        bound,
        credentials: creds_rx,
        config: cfg_rx,
        stop,
        tasks,
    })
}

/// A pushed trust bundle that differs from the roots in force: trusted from now on (peers and
/// the control plane), and the certificate renewed at once (the new one comes with the same
/// bundle from the CA). A bundle that does not parse is logged and ignored.
fn adopt_trust_bundle(
    cfg: &ProxyConfig,
    cp_tls: &ControlPlaneTls,
    handle: &ProxyHandle,
    creds: &watch::Receiver<Credentials>,
    renew_now: &RenewNow,
) {
    let Some(bundle) = cfg.identity.trust_bundle.as_deref() else {
        return;
    };
    if creds.borrow().root_pem == bundle && cp_tls.roots_pem() == bundle {
        return;
    }
    if let Err(e) = cp_tls.set_roots(bundle) {
        tracing::warn!(error = %e, "pushed trust bundle unusable; keeping the current roots");
        return;
    }
    let current = creds.borrow().clone();
    if current.root_pem != bundle {
        let with_bundle = Credentials {
            root_pem: bundle.to_owned(),
            ..current
        };
        if let Err(e) = install(handle, &with_bundle) {
            tracing::warn!(error = %e, "pushed trust bundle unusable for peers; keeping the current roots");
        }
    }
    tracing::info!(
        roots = crate::cp_tls::parse_anchors(bundle).map_or(0, |a| a.len()),
        "trust bundle changed: renewing the certificate now"
    );
    renew_now.renew();
}

/// Waits until the application accepts TCP connections on each of `ports` on 127.0.0.1 (where
/// the inbound path forwards), or `timeout`.
async fn wait_for_app(ports: &[u16], timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    for &port in ports {
        loop {
            let connect = tokio::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port));
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), connect).await {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    port,
                    waited_s = timeout.as_secs(),
                    "the application does not accept connections; reporting the proxy serving anyway"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tracing::info!(?ports, "application answers: reporting the proxy serving");
}
