//! The control plane of a Docker project: in-process for a foreground `up`, or a detached
//! `meshctl __control-plane` process for `up -d` (own process group, so the terminal's Ctrl-C
//! does not reach it; output in `.mesh/controlplane.log`). It listens on the project network's
//! gateway (`<gw>:15012`), where the sidecars reach it, and reads the pods' inbound addresses
//! from `.mesh/placement.json`, written by `up` before it starts.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meshmodel::compile::FixedPlacement;
use serde::{Deserialize, Serialize};

use super::DockerError;
use crate::api::ApiConfig;
use crate::controlplane::{ControlPlane, ControlPlaneConfig, PlacementSpec, ProjectSpec};

/// The placement file under `.mesh/`.
pub const PLACEMENT_FILE: &str = "placement.json";
/// The background control plane's log under `.mesh/`.
pub const LOG_FILE: &str = "controlplane.log";
/// The API port (Istio's).
pub const API_PORT: u16 = 15012;

/// One pod's inbound address, as stored in the placement file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacedProxy {
    pub workload: String,
    pub instance: u32,
    pub inbound: SocketAddr,
}

/// The placement file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementFile {
    /// Where the control plane listens (`<gateway>:15012`).
    pub listen: SocketAddr,
    pub proxies: Vec<PlacedProxy>,
    /// Ports the images EXPOSE of services that declare none (compose name -> ports).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub image_ports: BTreeMap<String, Vec<u16>>,
}

impl PlacementFile {
    /// From a fixed placement.
    pub fn new(listen: SocketAddr, p: &FixedPlacement) -> PlacementFile {
        PlacementFile {
            listen,
            proxies: p
                .0
                .iter()
                .map(|((w, i), a)| PlacedProxy {
                    workload: w.clone(),
                    instance: *i,
                    inbound: *a,
                })
                .collect(),
            image_ports: BTreeMap::new(),
        }
    }

    /// As a fixed placement.
    pub fn placement(&self) -> FixedPlacement {
        FixedPlacement(
            self.proxies
                .iter()
                .map(|p| ((p.workload.clone(), p.instance), p.inbound))
                .collect(),
        )
    }

    /// Reads it; `None` when missing or unreadable.
    pub fn read(state_dir: &Path) -> Option<PlacementFile> {
        let text = std::fs::read_to_string(state_dir.join(PLACEMENT_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes it atomically.
    pub fn write(&self, state_dir: &Path) -> Result<(), DockerError> {
        let path = state_dir.join(PLACEMENT_FILE);
        crate::controlplane::reload::write_atomic(&path, self)
            .map_err(|source| DockerError::Io { path, source })
    }
}

/// The address the control plane of a network with `gateway` listens on.
pub fn listen_addr(gateway: Ipv4Addr) -> SocketAddr {
    SocketAddr::from((gateway, API_PORT))
}

/// The control-plane config for a Docker project.
pub fn config(project: &ProjectSpec, placement: &PlacementFile, print: bool) -> ControlPlaneConfig {
    let mut api = ApiConfig {
        listen: placement.listen,
        ..ApiConfig::default()
    };
    api.server_names.push(placement.listen.ip().to_string());
    let mut project = project.clone();
    project.image_ports = placement.image_ports.clone();
    ControlPlaneConfig {
        project,
        api,
        placement: PlacementSpec::Container(placement.placement()),
        print,
        ..ControlPlaneConfig::default()
    }
}

/// Starts the control plane in this process.
pub async fn start_in_process(
    project: &ProjectSpec,
    placement: &PlacementFile,
) -> Result<ControlPlane, DockerError> {
    ControlPlane::start(config(project, placement, true))
        .await
        .map_err(|e| DockerError::ControlPlane(e.to_string()))
}

/// The pid of the background control plane's supervisor, or else of the process serving this
/// project's control plane, if one is alive. A supervisor whose control plane is being
/// restarted counts as running.
pub fn running(state_dir: &Path) -> Option<u32> {
    super::supervise::pid(state_dir).or_else(|| serving(state_dir))
}

/// The pid of the process serving this project's control plane (the state file's), if alive.
pub fn serving(state_dir: &Path) -> Option<u32> {
    let state = crate::controlplane::admin::read_state(state_dir).ok()?;
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", state.pid)).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    // The pid could have been reused by an unrelated process: it must be a meshctl.
    cmdline.contains("meshctl").then_some(state.pid)
}

/// Stops the project's control plane (SIGTERM to its supervisor, which stops the control plane
/// and exits, or to the control plane itself; SIGKILL after 10 s). Returns whether one was
/// running.
pub fn stop(state_dir: &Path) -> bool {
    let Some(pid) = running(state_dir) else {
        return false;
    };
    if pid == std::process::id() {
        return false;
    }
    let Some(p) = rustix::process::Pid::from_raw(pid as i32) else {
        return false;
    };
    let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if rustix::process::test_kill_process(p).is_err() || is_zombie(pid) {
            let _ = std::fs::remove_file(state_dir.join(crate::controlplane::admin::STATE_FILE));
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    let _ = std::fs::remove_file(state_dir.join(crate::controlplane::admin::STATE_FILE));
    true
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(true)
}

/// Spawns `meshctl __control-plane` detached and waits until it answers on its address.
pub fn spawn_background(
    project: &ProjectSpec,
    placement: &PlacementFile,
) -> Result<u32, DockerError> {
    let state_dir = project.working_dir.join(".mesh");
    std::fs::create_dir_all(&state_dir).map_err(|source| DockerError::Io {
        path: state_dir.clone(),
        source,
    })?;
    let log_path = state_dir.join(LOG_FILE);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|source| DockerError::Io {
            path: log_path.clone(),
            source,
        })?;
    let log2 = log.try_clone().map_err(|source| DockerError::Io {
        path: log_path.clone(),
        source,
    })?;
    let exe = std::env::current_exe()
        .map_err(|e| DockerError::ControlPlane(format!("cannot find meshctl's executable: {e}")))?;
    let workdir = std::path::absolute(&project.working_dir).map_err(|source| DockerError::Io {
        path: project.working_dir.clone(),
        source,
    })?;
    let mut cmd = Command::new(exe);
    cmd.arg("--project-directory").arg(&workdir);
    if let Some(name) = &project.project_name {
        cmd.args(["--project-name", name]);
    }
    for f in &project.files {
        cmd.arg("--file").arg(absolute(&workdir, f));
    }
    for p in &project.profiles {
        cmd.args(["--profile", p]);
    }
    for t in &project.targets {
        cmd.args(["--target-service", t]);
    }
    for f in &project.env_files {
        let f = std::path::absolute(f).map_err(|source| DockerError::Io {
            path: f.clone(),
            source,
        })?;
        cmd.arg("--env-file").arg(f);
    }
    cmd.arg("__control-plane")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let _ = std::fs::remove_file(state_dir.join(crate::controlplane::admin::STATE_FILE));
    placement.write(&state_dir)?;
    let mut child = cmd
        .spawn()
        .map_err(|e| DockerError::ControlPlane(format!("cannot start the control plane: {e}")))?;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect();
            return Err(DockerError::ControlPlane(format!(
                "the background control plane exited ({status}); {}:\n{}",
                log_path.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )));
        }
        // The state file is written by the supervisor's child, the control plane itself.
        if crate::controlplane::admin::read_state(&state_dir)
            .is_ok_and(|s| s.pid == pid || parent_of(s.pid) == Some(pid))
        {
            // Not waited for: it outlives us. Dropping `child` does not kill it.
            return Ok(pid);
        }
        if Instant::now() > deadline {
            return Err(DockerError::Timeout {
                what: format!("the control plane to start (see {})", log_path.display()),
                secs: 30,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The parent pid of `pid`, from `/proc`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn absolute(dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

/// `meshctl __control-plane`: the background control plane of `up -d`, run under its
/// supervisor (`supervise`), which starts `meshctl __control-plane --serve` and again after a
/// crash.
pub fn daemon(
    project: &ProjectSpec,
    serve: bool,
    adopt: Option<u32>,
) -> anyhow::Result<std::process::ExitCode> {
    let state_dir = project.working_dir.join(".mesh");
    if !serve {
        let mut args = super::supervise::without_adopt(std::env::args_os().skip(1));
        args.push("--serve".into());
        return super::supervise::run(&state_dir, args, adopt);
    }
    serve_daemon(project, &state_dir)
}

/// `meshctl __control-plane --serve`: reads the placement file, serves until SIGTERM or SIGINT.
fn serve_daemon(project: &ProjectSpec, state_dir: &Path) -> anyhow::Result<std::process::ExitCode> {
    use anyhow::Context;
    let placement = PlacementFile::read(state_dir)
        .with_context(|| format!("no readable {}", state_dir.join(PLACEMENT_FILE).display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let cp = ControlPlane::start(config(project, &placement, true))
            .await
            .context("starting the control plane")?;
        println!("control plane listening on {}", cp.local_addr());
        let log = state_dir.join(LOG_FILE);
        let supervisor = tokio::spawn(super::supervise::watch_supervisor(log));
        let heal = match super::up::Project::load(project) {
            Ok(p) if crate::process::commands::processes_only(&p) => None,
            Ok(p) => {
                tokio::spawn(super::heal::watch_deaths(p.name().to_string(), |line| {
                    println!("{line}")
                }));
                Some(tokio::spawn(super::heal::watch(p.name().to_string())))
            }
            Err(e) => {
                println!("not watching for restarted sidecars: {e}");
                None
            }
        };
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        println!("control plane stopping");
        supervisor.abort();
        if let Some(h) = heal {
            h.abort();
        }
        cp.shutdown().await;
        Ok(std::process::ExitCode::SUCCESS)
    })
}
