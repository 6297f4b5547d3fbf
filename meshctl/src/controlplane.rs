//! The control plane's brain: load the mesh files, compile one config per proxy, push new
//! versions to subscribed proxies over the mTLS API and track their ACK/NACK, reload live when
//! a file changes, and feed meshdns its records file.
//!
//! - [`ControlPlane::start`] opens the CA, binds the API (CSR + config routes), runs the first
//!   load, starts the file watcher and writes `<project>/.mesh/controlplane.json` (the address
//!   the CLI talks to) and the CLI's admin credentials.
//! - `reload`: one task owns the reload context (VIPs, last model); watcher events and
//!   `meshctl apply` send it requests, so reloads never overlap and no lock spans an await.
//! - `push`: the per-proxy snapshot (one `watch` swap per revision) and per-proxy ACK state.
//! - `api`: the HTTP handlers (long-poll, ACK, status, reload).
//! - `watch`: notify on every loaded file's parent directory and every loaded directory.
//! - `diff`: the short `kubectl diff`-like summary printed on each reload.
//! - `admin`: the state file and the CLI's admin certificate; `client` is the CLI side;
//!   `commands`: `meshctl serve`, `status`, `apply`, `proxy-config`.
//!
//! docs/control-plane.md describes the protocol and the choices made.

pub mod admin;
pub mod api;
pub mod client;
pub mod commands;
pub mod diff;
pub mod news;
pub mod push;
pub mod reload;
pub mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use meshmodel::compile::ProxyKey;
use tokio::sync::{mpsc, oneshot};

use crate::api::{ApiConfig, ApiServer};
use crate::ca::{Ca, CaConfig};

pub use push::{AckReport, ProxyStatus, PushState};
pub use reload::ReloadReport;

/// Which files make the mesh (the CLI's `-f`, `-p`, `--project-directory`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProjectSpec {
    /// `-f` paths. Default none: compose's default names plus `mesh.yaml` and `mesh/`.
    pub files: Vec<PathBuf>,
    /// Where default files are looked up and `.mesh/` lives. Default `.`.
    pub working_dir: PathBuf,
    /// Project name override. Default none.
    pub project_name: Option<String>,
    /// `--profile`: active compose profiles. Default none (`COMPOSE_PROFILES` then applies).
    pub profiles: Vec<String>,
    /// Services the command names (`up SERVICE...`): their profiles are active too.
    /// Default none.
    pub targets: Vec<String>,
    /// `--env-file`: env files read instead of the project's `.env`. Default none.
    pub env_files: Vec<PathBuf>,
    /// Ports each service's image EXPOSEs, for services declaring none (read by `up`; see
    /// `meshmodel::load::LoadOptions::image_ports`). Default none.
    pub image_ports: std::collections::BTreeMap<String, Vec<u16>>,
}

impl ProjectSpec {
    /// How to load these files, with the process environment.
    pub fn load_options(&self) -> meshmodel::load::LoadOptions {
        let mut opts = meshmodel::load::LoadOptions::new(self.working_dir.clone());
        opts.files = self.files.clone();
        opts.project_name = self.project_name.clone();
        opts.profiles = self.profiles.clone();
        opts.targets = self.targets.clone();
        opts.env_files = self.env_files.clone();
        opts.image_ports = self.image_ports.clone();
        opts
    }
}

/// Where proxies listen (see `meshmodel::compile::Placement`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementSpec {
    /// Host mode: inbound `127.0.0.1:<base + k>` for proxy number `k`.
    Host {
        /// First port. Default 15100.
        base_port: u16,
    },
    /// A fixed map (tests, or a runner that knows every address).
    Fixed(meshmodel::compile::FixedPlacement),
    /// Container mode: a fixed map of pod addresses, each proxy in its own network namespace
    /// with its outbound VIP traffic redirected to a capture listener on `127.0.0.1:15001`
    /// (no per-VIP listeners, which would collide with app ports on `0.0.0.0`).
    Container(meshmodel::compile::FixedPlacement),
}

/// [`PlacementSpec::Container`] as a compile placement.
#[derive(Debug, Clone)]
pub struct ContainerPlacement(pub meshmodel::compile::FixedPlacement);

/// The outbound capture listener of a container-mode proxy (Istio's 15001).
pub const CONTAINER_CAPTURE_ADDR: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 15001);

/// The edge listener of a container-mode proxy: published ports reached from outside the
/// project network are redirected to it by the capture rules.
pub const CONTAINER_EDGE_ADDR: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 15007);

impl meshmodel::compile::Placement for ContainerPlacement {
    fn inbound(&self, workload: &str, instance: u32) -> Option<std::net::SocketAddr> {
        self.0.inbound(workload, instance)
    }

    fn outbound_capture(&self, _workload: &str, _instance: u32) -> Option<std::net::SocketAddr> {
        Some(CONTAINER_CAPTURE_ADDR)
    }

    fn edge(&self, _workload: &str, _instance: u32) -> Option<std::net::SocketAddr> {
        Some(CONTAINER_EDGE_ADDR)
    }
}

impl Default for PlacementSpec {
    fn default() -> Self {
        PlacementSpec::Host {
            base_port: meshmodel::compile::DEFAULT_HOST_BASE_PORT,
        }
    }
}

/// Control-plane settings. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// The mesh files.
    pub project: ProjectSpec,
    /// The API listener. Default `0.0.0.0:15012`.
    pub api: ApiConfig,
    /// CA settings. Default: `CaConfig::default()`.
    pub ca: CaConfig,
    /// Where proxies listen. Default host mode from port 15100.
    pub placement: PlacementSpec,
    /// Watch the loaded files and reload on change. Default true.
    pub watch: bool,
    /// Quiet time after the last file event before reloading. Default 50 ms: an editor's
    /// write + rename lands in one reload, and a save still applies well under 100 ms.
    pub debounce: Duration,
    /// meshdns records file, written atomically when services change. Default
    /// `<project>/.mesh/dns-records.json`.
    pub records_file: Option<PathBuf>,
    /// How long a proxy may go without polling before it counts as disconnected. Default 45 s
    /// (a little more than the 30 s long-poll).
    pub stale_after: Duration,
    /// Print reload results (diff, errors, ACKs) on stdout. Default false (the CLI sets it).
    pub print: bool,
}

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        ControlPlaneConfig {
            project: ProjectSpec::default(),
            api: ApiConfig::default(),
            ca: CaConfig::default(),
            placement: PlacementSpec::default(),
            watch: true,
            debounce: Duration::from_millis(50),
            records_file: None,
            stale_after: Duration::from_secs(45),
            print: false,
        }
    }
}

impl ControlPlaneConfig {
    /// `<working_dir>/.mesh`, where the CA, VIPs, records and state file live.
    pub fn state_dir(&self) -> PathBuf {
        self.project.working_dir.join(".mesh")
    }
}

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("CA: {0}")]
    Ca(#[from] crate::ca::CaError),
    #[error("API: {0}")]
    Api(#[from] crate::api::ApiError),
    #[error("VIP table: {0}")]
    Vips(#[from] meshapi::dns::VipError),
    #[error("file watcher: {0}")]
    Watch(#[from] notify::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("admin credentials: {0}")]
    Admin(String),
    #[error("the reload task has stopped")]
    Stopped,
}

/// A request to the reload task.
#[derive(Debug)]
pub struct ReloadCmd {
    /// Where the report goes, if anyone waits for it.
    pub(crate) reply: Option<oneshot::Sender<ReloadReport>>,
    /// Instant of the file event that caused it (for latency logs).
    pub(crate) trigger: Option<std::time::Instant>,
    /// Why, when it is not a file change or a request (printed above the report).
    pub(crate) note: Option<String>,
}

/// Follows the CA's trust bundle: each change (a rotation starts or ends) recompiles, which
/// pushes the new bundle to every proxy; and at the end of a rotation's overlap, retires the
/// old root. The wall clock is read at least every 30 s (suspend, clock changes).
async fn follow_trust(ca: Arc<Ca>, reload: mpsc::Sender<ReloadCmd>) {
    let mut changes = ca.trust_changes();
    let mut retry = Duration::ZERO;
    loop {
        let check = ca.retire_at().map_or(Duration::from_secs(30), |t| {
            t.duration_since(std::time::SystemTime::now())
                .unwrap_or_default()
                .clamp(retry, Duration::from_secs(30))
        });
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                let cmd = ReloadCmd {
                    reply: None,
                    trigger: Some(std::time::Instant::now()),
                    note: Some("trust bundle changed: pushing it to every proxy".into()),
                };
                if reload.send(cmd).await.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep(check) => {
                if ca.retire_at().is_some_and(|t| t <= std::time::SystemTime::now()) {
                    let ca2 = ca.clone();
                    match tokio::task::spawn_blocking(move || ca2.retire()).await {
                        Ok(Ok(_)) => {
                            retry = Duration::ZERO;
                            tracing::info!("root rotation finished: the old root is no longer trusted");
                        }
                        Ok(Err(e)) => {
                            retry = Duration::from_secs(30);
                            tracing::error!(error = %e, "cannot retire the old root; retrying in 30 s");
                        }
                        Err(e) => {
                            retry = Duration::from_secs(30);
                            tracing::error!(error = %e, "retirement task failed");
                        }
                    }
                }
            }
        }
    }
}

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    push: Arc<PushState>,
    ca: Arc<Ca>,
    server: ApiServer,
    reload_tx: mpsc::Sender<ReloadCmd>,
    _watcher: Option<watch::FileWatcher>,
    state_file: PathBuf,
    reload_task: tokio::task::JoinHandle<()>,
    admin_renewal: tokio::task::JoinHandle<()>,
    trust_task: tokio::task::JoinHandle<()>,
}

impl ControlPlane {
    /// Opens the CA, loads and compiles the mesh, binds the API, starts watching.
    pub async fn start(config: ControlPlaneConfig) -> Result<ControlPlane, ControlPlaneError> {
        let state_dir = config.state_dir();
        std::fs::create_dir_all(&state_dir).map_err(|source| ControlPlaneError::Io {
            path: state_dir.clone(),
            source,
        })?;
        let ca = Arc::new(Ca::open(&config.project.working_dir, config.ca.clone())?);
        // A rotation whose overlap ended while no control plane ran ends now, before anyone
        // is handed the old root again.
        if ca
            .retire_at()
            .is_some_and(|t| t <= std::time::SystemTime::now())
        {
            ca.retire()?;
        }
        let push = Arc::new(PushState::new(config.stale_after, config.print));
        let mut ctx = reload::ReloadCtx::new(&config, push.clone(), ca.clone())?;
        // The first load happens before anyone can connect: proxies see a full snapshot.
        let first = ctx.reload(None);
        if config.print {
            reload::print_report(&first);
        }
        let (reload_tx, reload_rx) = mpsc::channel(64);
        let router = api::router(
            crate::api::ca_router(ca.clone()),
            push.clone(),
            ca.clone(),
            reload_tx.clone(),
        );
        let server = ApiServer::bind(config.api.clone(), ca.clone(), router).await?;
        let watcher = if config.watch {
            Some(watch::FileWatcher::start(
                &first.watched_files,
                &first.watched_dirs,
                config.debounce,
                reload_tx.clone(),
            )?)
        } else {
            None
        };
        let rewatch = watcher.as_ref().map(watch::FileWatcher::handle);
        let reload_task = tokio::spawn(reload::run(ctx, reload_rx, rewatch));
        let (state_file, admin_cert) =
            admin::write_state(&state_dir, server.local_addr(), &ca, push.epoch())?;
        let admin_renewal = tokio::spawn(admin::renew_admin(state_dir, ca.clone(), admin_cert));
        let trust_task = tokio::spawn(follow_trust(ca.clone(), reload_tx.clone()));
        tracing::info!(addr = %server.local_addr(), revision = first.revision, "control plane ready");
        Ok(ControlPlane {
            push,
            ca,
            server,
            reload_tx,
            _watcher: watcher,
            state_file,
            reload_task,
            admin_renewal,
            trust_task,
        })
    }

    /// Starts a root rotation (what `meshctl ca rotate` asks for): see [`Ca::rotate`]. The
    /// new trust bundle is pushed to every proxy, which renews at once; the old root retires
    /// after `overlap`. Returns the push's reload report.
    pub async fn rotate_root(&self, overlap: Duration) -> Result<ReloadReport, ControlPlaneError> {
        let ca = self.ca.clone();
        tokio::task::spawn_blocking(move || ca.rotate(overlap))
            .await
            .map_err(|e| ControlPlaneError::Admin(format!("rotation task: {e}")))??;
        self.reload().await
    }

    /// The API's bound address.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.server.local_addr()
    }

    /// The CA.
    pub fn ca(&self) -> &Arc<Ca> {
        &self.ca
    }

    /// Per-proxy push and ACK state.
    pub fn push_state(&self) -> &Arc<PushState> {
        &self.push
    }

    /// The current revision (counts up on every change that reached a proxy's config).
    pub fn revision(&self) -> u64 {
        self.push.revision()
    }

    /// Reloads the files now (as `meshctl apply` does) and returns the report.
    pub async fn reload(&self) -> Result<ReloadReport, ControlPlaneError> {
        let (tx, rx) = oneshot::channel();
        self.reload_tx
            .send(ReloadCmd {
                reply: Some(tx),
                trigger: None,
                note: None,
            })
            .await
            .map_err(|_| ControlPlaneError::Stopped)?;
        rx.await.map_err(|_| ControlPlaneError::Stopped)
    }

    /// The last reload's report.
    pub fn last_reload(&self) -> ReloadReport {
        self.push.last_reload()
    }

    /// Waits until every connected proxy whose config is at `revision` ACKed or NACKed it.
    pub async fn wait_acks(&self, revision: u64, timeout: Duration) -> AckReport {
        self.push.wait_acks(revision, timeout).await
    }

    /// Pushes a hand-made config to one proxy (tools and fault tests: a proxy must NACK a
    /// config it cannot use). It is replaced by the next reload that changes that proxy.
    pub fn push_override(&self, key: &ProxyKey, config: serde_json::Value) -> Option<u64> {
        self.push.push_override(key, config)
    }

    /// Stops watching and serving (in-flight long-polls are answered), removes the state file.
    pub async fn shutdown(self) {
        self.push.close();
        self.admin_renewal.abort();
        self.trust_task.abort();
        drop(self._watcher);
        drop(self.reload_tx);
        self.server.shutdown().await;
        let _ = self.reload_task.await;
        let _ = std::fs::remove_file(&self.state_file);
    }
}
