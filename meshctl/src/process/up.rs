//! `up` for process pods: plan, reconcile with what runs (spec hashes), issue pod tokens,
//! (re)start the control plane when needed, start supervisors in `depends_on` order and wait.
//!
//! [`run`] does all of it for a project without containers (no Docker engine is touched);
//! the Docker runner calls [`plan_on`], [`reconcile`] and [`start_pods`] for the process
//! services of a mixed project, on its own network and control plane.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use meshmodel::compose::DependsCondition;

use super::net::{self, Attach, Network};
use super::spec::{self, PlanInput, PodSpec, PodState};
use super::{ProcessError, is_root};
use crate::ca::{Ca, CaConfig};
use crate::docker::cp::{self, PlacementFile};
use crate::docker::plan::INBOUND_PORT;
use crate::docker::progress::Progress;
use crate::docker::up::Project;

/// How to run.
pub struct RunOptions<'a> {
    /// Which compose services to start (`up SERVICE...`, or a joined node's share).
    pub select: &'a dyn Fn(&str) -> bool,
    /// Wait until every app runs and passes its healthcheck.
    pub wait: bool,
    pub wait_timeout: Duration,
    /// Recreate every selected pod.
    pub force_recreate: bool,
}

/// What [`run`] left running.
#[derive(Debug)]
pub struct RunOutcome {
    pub network: Network,
    /// Every selected pod (started or kept).
    pub pods: Vec<PodSpec>,
}

/// What to do with the pods.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Running with the planned spec.
    pub keep: Vec<PodSpec>,
    /// To start (new, changed, or not running); their old supervisors are stopped.
    pub create: Vec<PodSpec>,
    /// Running pods of services no longer planned (removed from the files).
    pub remove: Vec<PodSpec>,
}

/// The CA config `up` uses: the files' certificate lifetime.
fn ca_config(project: &Project) -> CaConfig {
    let lifetime = project
        .mesh
        .compose
        .as_ref()
        .and_then(|c| c.certificate_lifetime());
    CaConfig {
        cert_lifetime: lifetime.unwrap_or(CaConfig::default().cert_lifetime),
        ..CaConfig::default()
    }
}

/// Plans the selected process services on `network`.
pub fn plan_on(
    project: &Project,
    network: &Network,
    taken: &[Ipv4Addr],
    select: &dyn Fn(&str) -> bool,
) -> Result<Vec<PodSpec>, ProcessError> {
    let compose = project
        .mesh
        .compose
        .as_ref()
        .ok_or_else(|| ProcessError::Service {
            service: "(none)".into(),
            message: "no compose file found".into(),
        })?;
    if !is_root()
        && let Some(w) = compose
            .workloads()
            .into_iter()
            .find(|w| !w.service.is_container() && select(w.name))
    {
        return Err(ProcessError::NeedsRoot {
            service: w.name.to_string(),
        });
    }
    let bins = crate::docker::runtime::find(&["meshproxy"])?;
    let meshproxy = bins
        .get("meshproxy")
        .cloned()
        .unwrap_or_else(|| PathBuf::from("meshproxy"));
    let ca_config = ca_config(project);
    let ca_err = |e: String| ProcessError::Service {
        service: "(CA)".into(),
        message: e,
    };
    let ca = Ca::open(&project.spec.working_dir, ca_config.clone())
        .map_err(|e| ca_err(e.to_string()))?;
    let state_dir =
        std::path::absolute(&project.state_dir).map_err(ProcessError::io(&project.state_dir))?;
    // The proxies read the trust bundle from the host's `.mesh/trust/` (what a sidecar
    // container gets bind-mounted), kept current by the control plane.
    std::fs::create_dir_all(&state_dir).map_err(ProcessError::io(&state_dir))?;
    crate::controlplane::admin::write_trust_bundle(&state_dir, &ca)
        .map_err(|e| ca_err(e.to_string()))?;
    drop(ca);
    let roots_file = state_dir
        .join(crate::controlplane::admin::TRUST_DIR)
        .join(crate::controlplane::admin::TRUST_FILE)
        .display()
        .to_string();
    spec::plan(&PlanInput {
        project: project.name(),
        project_dir: &project.mesh.project_dir,
        state_dir: &state_dir,
        compose,
        network,
        roots_file: &roots_file,
        trust_domain: &ca_config.trust_domain,
        meshproxy: &meshproxy,
        taken,
        select,
    })
}

/// Compares the planned pods with what runs. Pods of process services (`in_files`) that are
/// not selected are left alone; pods of any other service (removed from the files, or now a
/// container) are removed.
pub fn reconcile(
    state_dir: &Path,
    planned: Vec<PodSpec>,
    in_files: &BTreeSet<String>,
    force_recreate: bool,
) -> Reconciled {
    let existing = PodSpec::all(state_dir);
    let mut out = Reconciled::default();
    let planned_names: BTreeSet<String> = planned.iter().map(|p| p.name.clone()).collect();
    for p in planned {
        let running = PodState::read(state_dir, &p.name)
            .is_some_and(|s| s.alive() && s.hash == p.hash && s.status != "failed");
        if running && !force_recreate {
            out.keep.push(p);
        } else {
            out.create.push(p);
        }
    }
    for (name, old) in existing {
        if !planned_names.contains(&name)
            && old.service != "meshdns"
            && !in_files.contains(&old.service)
        {
            out.remove.push(old);
        }
    }
    out
}

/// Issues a pod token for each pod in `create` (revoking the token of the pod it replaces)
/// and revokes the tokens of `remove`. The control plane must be (re)started afterwards to
/// see them.
pub fn issue_tokens(project: &Project, r: &mut Reconciled) -> Result<(), ProcessError> {
    let ca = Ca::open(&project.spec.working_dir, ca_config(project)).map_err(|e| {
        ProcessError::Service {
            service: "(CA)".into(),
            message: e.to_string(),
        }
    })?;
    let gone: BTreeSet<String> = r
        .create
        .iter()
        .chain(&r.remove)
        .map(|p| p.name.clone())
        .collect();
    ca.revoke_pod_tokens(|holder| gone.contains(holder))
        .map_err(|e| ProcessError::Service {
            service: "(CA)".into(),
            message: format!("revoking pod tokens: {e}"),
        })?;
    for p in &mut r.create {
        if p.proxy.is_none() {
            continue;
        }
        let identity = p.identity.parse().map_err(|e| ProcessError::Pod {
            pod: p.name.clone(),
            message: format!("identity {}: {e}", p.identity),
        })?;
        let t = ca
            .issue_pod_token(&identity, &p.name)
            .map_err(|e| ProcessError::Pod {
                pod: p.name.clone(),
                message: format!("pod token: {e}"),
            })?;
        *p = p.clone().with_token(t.as_str());
    }
    Ok(())
}

/// The inbound address of every pod with a proxy.
pub fn placement_of<'a>(
    pods: impl IntoIterator<Item = &'a PodSpec>,
) -> BTreeMap<(String, u32), SocketAddr> {
    pods.into_iter()
        .filter(|p| p.proxy.is_some())
        .filter_map(|p| {
            let n = p.net.as_ref()?;
            Some((
                (p.service.clone(), p.instance),
                SocketAddr::from((n.ip, INBOUND_PORT)),
            ))
        })
        .collect()
}

/// Stops a pod's supervisor (which stops the app and proxy and removes the namespace) and
/// waits for it; the namespace is removed here too if the supervisor was gone.
pub fn stop_pod(state_dir: &Path, spec: &PodSpec) {
    if let Some(state) = PodState::read(state_dir, &spec.name)
        && state.alive()
        && let Some(pid) = rustix::process::Pid::from_raw(state.shim_pid as i32)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline =
            Instant::now() + Duration::from_millis(spec.stop_grace_ms) + Duration::from_secs(10);
        while Instant::now() < deadline && spec::pid_alive(state.shim_pid) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if spec::pid_alive(state.shim_pid) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
    if let Some(n) = &spec.net {
        let _ = net::delete_pod(n);
    }
}

/// Removes a stopped pod's files (spec, state; logs too when `logs`).
pub fn forget_pod(state_dir: &Path, name: &str, logs: bool) {
    let _ = std::fs::remove_file(PodSpec::path(state_dir, name));
    let _ = std::fs::remove_file(PodSpec::state_path(state_dir, name));
    if logs {
        let _ = std::fs::remove_file(PodSpec::log_path(state_dir, name));
        let _ = std::fs::remove_file(PodSpec::proxy_log_path(state_dir, name));
        let _ = std::fs::remove_file(shim_log_path(state_dir, name));
    }
}

fn shim_log_path(state_dir: &Path, name: &str) -> PathBuf {
    spec::pods_dir(state_dir).join(format!("{name}.shim.log"))
}

/// Writes the spec and starts its supervisor, detached; returns once it reported.
fn spawn_shim(state_dir: &Path, p: &PodSpec) -> Result<(), ProcessError> {
    p.write(state_dir)?;
    let _ = std::fs::remove_file(PodSpec::state_path(state_dir, &p.name));
    let log_path = shim_log_path(state_dir, &p.name);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(ProcessError::io(&log_path))?;
    let log2 = log.try_clone().map_err(ProcessError::io(&log_path))?;
    let exe = std::env::current_exe().map_err(ProcessError::io("/proc/self/exe"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("__pod")
        .arg(PodSpec::path(state_dir, &p.name))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let child = cmd.spawn().map_err(|e| ProcessError::Pod {
        pod: p.name.clone(),
        message: format!("cannot start its supervisor: {e}"),
    })?;
    // Not waited for: it outlives us (dropping `child` does not kill it). Reap it in a
    // thread, so a supervisor that dies while we run does not stay a zombie.
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    Ok(())
}

/// What a pod must reach before its dependents start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Started,
    Healthy,
    Completed,
}

/// Waits until the pod `name` reached `want`; a pod that failed or exited when it should run
/// is an error carrying its last log lines.
async fn wait_pod(
    state_dir: &Path,
    spec: &PodSpec,
    want: Want,
    timeout: Duration,
) -> Result<(), ProcessError> {
    let deadline = Instant::now() + timeout;
    loop {
        let state = PodState::read(state_dir, &spec.name);
        if let Some(s) = &state {
            let has_health = spec.healthcheck.is_some();
            let done = match want {
                Want::Started => s.status == "running" || s.status == "exited",
                Want::Healthy => {
                    s.status == "running" && (!has_health || s.health.as_deref() == Some("healthy"))
                }
                Want::Completed => s.status == "exited" && s.exit_code == Some(0),
            };
            if done {
                return Ok(());
            }
            let failed = s.status == "failed"
                || (s.status == "exited" && want != Want::Started && want != Want::Completed)
                || (s.status == "exited" && want == Want::Completed && s.exit_code != Some(0))
                || (want == Want::Healthy && s.health.as_deref() == Some("unhealthy"))
                || !s.alive();
            if failed {
                return Err(pod_failed(state_dir, spec, s));
            }
        }
        if Instant::now() > deadline {
            return Err(ProcessError::Timeout {
                what: format!(
                    "process {} to be {}",
                    spec.name,
                    match want {
                        Want::Started => "started",
                        Want::Healthy => "running and healthy",
                        Want::Completed => "completed",
                    }
                ),
                secs: timeout.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pod_failed(state_dir: &Path, spec: &PodSpec, s: &PodState) -> ProcessError {
    let why = match (&s.error, s.status.as_str(), s.exit_code) {
        (Some(e), _, _) => e.clone(),
        (None, "exited", Some(code)) => format!("exited with code {code}"),
        (None, _, _) if s.health.as_deref() == Some("unhealthy") => "is unhealthy".into(),
        _ => "its supervisor died".into(),
    };
    let tail = |path: PathBuf| {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(15).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    };
    ProcessError::Pod {
        pod: spec.name.clone(),
        message: format!(
            "{why}; its last log lines:\n{}\n(proxy: {}, supervisor: {})",
            tail(PodSpec::log_path(state_dir, &spec.name)),
            PodSpec::proxy_log_path(state_dir, &spec.name).display(),
            shim_log_path(state_dir, &spec.name).display()
        ),
    }
}

/// Waits until every pod of `service` among `r`'s kept and created pods reached `cond`
/// (nothing to wait for when it has none: a container service).
pub async fn wait_service(
    project: &Project,
    r: &Reconciled,
    service: &str,
    cond: DependsCondition,
    timeout: Duration,
) -> Result<(), ProcessError> {
    let state_dir =
        std::path::absolute(&project.state_dir).map_err(ProcessError::io(&project.state_dir))?;
    for p in r
        .keep
        .iter()
        .chain(&r.create)
        .filter(|p| p.service == service)
    {
        wait_pod(&state_dir, p, want(cond), timeout).await?;
    }
    Ok(())
}

fn want(cond: DependsCondition) -> Want {
    match cond {
        DependsCondition::ServiceStarted => Want::Started,
        DependsCondition::ServiceHealthy => Want::Healthy,
        DependsCondition::ServiceCompletedSuccessfully => Want::Completed,
    }
}

/// Starts `create` (stopping the supervisors they replace first) in `depends_on` order, each
/// service after its dependencies among `all` reached their condition, and stops `remove`.
/// With `wait`, returns once every pod of `all` runs and is healthy.
pub async fn start_pods(
    project: &Project,
    r: &Reconciled,
    wait: bool,
    wait_timeout: Duration,
    progress: &Progress,
) -> Result<(), ProcessError> {
    let state_dir =
        std::path::absolute(&project.state_dir).map_err(ProcessError::io(&project.state_dir))?;
    for p in r.remove.iter().chain(&r.create) {
        if PodState::read(&state_dir, &p.name).is_some_and(|s| s.alive()) {
            let label = format!("Process {}", p.name);
            progress.line(&label, "Stopping");
            let (dir, p2) = (state_dir.clone(), p.clone());
            let _ = tokio::task::spawn_blocking(move || stop_pod(&dir, &p2)).await;
            progress.line(&label, "Stopped");
        }
    }
    for p in &r.remove {
        forget_pod(&state_dir, &p.name, true);
    }
    let compose = project.mesh.compose.as_ref();
    let depends: BTreeMap<String, Vec<(String, DependsCondition)>> = compose
        .map(|c| {
            c.services
                .iter()
                .map(|(n, s)| {
                    (
                        n.clone(),
                        s.depends_on
                            .iter()
                            .map(|(d, c)| (d.clone(), c.condition))
                            .collect(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let all: Vec<&PodSpec> = r.keep.iter().chain(&r.create).collect();
    // meshdns first, then services in dependency order.
    let mut order: Vec<String> = vec!["meshdns".into()];
    order.extend(
        crate::docker::plan::topo_order(&depends).map_err(|e| ProcessError::Service {
            service: "(depends_on)".into(),
            message: e.to_string(),
        })?,
    );
    for service in &order {
        let creating: Vec<&PodSpec> = r.create.iter().filter(|p| &p.service == service).collect();
        if creating.is_empty() {
            continue;
        }
        for (dep, cond) in depends.get(service).cloned().unwrap_or_default() {
            for p in all.iter().filter(|p| p.service == dep) {
                wait_pod(&state_dir, p, want(cond), wait_timeout).await?;
            }
        }
        for p in &creating {
            progress.line(&format!("Process {}", p.name), "Starting");
            spawn_shim(&state_dir, p)?;
        }
        for p in &creating {
            wait_pod(&state_dir, p, Want::Started, wait_timeout).await?;
            progress.line(&format!("Process {}", p.name), "Started");
        }
    }
    for p in &r.keep {
        progress.line(&format!("Process {}", p.name), "Running");
    }
    if wait {
        for p in &all {
            wait_pod(&state_dir, p, Want::Healthy, wait_timeout).await?;
            progress.line(
                &format!("Process {}", p.name),
                if p.healthcheck.is_some() {
                    "Healthy"
                } else {
                    "Running"
                },
            );
        }
    }
    Ok(())
}

/// The network of a processes-only project: meshctl's bridge (kept across runs with its
/// subnet), meshdns and the control plane on its gateway.
pub fn own_network(project: &str) -> Result<Network, ProcessError> {
    let bridge = net::bridge_name(project);
    let gateway = match net::bridge_gateway(&bridge) {
        Some(gw) => gw,
        None => {
            net::remove_bridge(&bridge)?;
            let subnet = net::choose_subnet(project)?;
            let [a, b, c, _] = subnet.octets();
            Ipv4Addr::new(a, b, c, 1)
        }
    };
    net::ensure_bridge(&bridge, gateway)?;
    let [a, b, c, _] = gateway.octets();
    Ok(Network {
        subnet: Ipv4Addr::new(a, b, c, 0),
        gateway,
        dns: gateway,
        attach: Attach::Own(bridge),
        first_host: crate::docker::network::FIRST_POD_HOST,
    })
}

/// `up` for a project whose services are all processes: no Docker engine is used. Starts the
/// bridge, the control plane (background, as `up -d`'s), meshdns and the selected pods.
pub async fn run(
    project: &Project,
    opts: &RunOptions<'_>,
    progress: &Progress,
) -> Result<RunOutcome, ProcessError> {
    let name = project.name().to_string();
    let compose = project
        .mesh
        .compose
        .clone()
        .ok_or_else(|| ProcessError::Service {
            service: "(none)".into(),
            message: "no compose file found".into(),
        })?;
    if !is_root() {
        let service = compose.services.keys().next().cloned().unwrap_or_default();
        return Err(ProcessError::NeedsRoot { service });
    }
    std::fs::create_dir_all(&project.state_dir).map_err(ProcessError::io(&project.state_dir))?;
    let state_dir =
        std::path::absolute(&project.state_dir).map_err(ProcessError::io(&project.state_dir))?;
    let network = own_network(&name)?;
    if let Attach::Own(b) = &network.attach {
        progress.line(
            &format!("Network {b}"),
            &format!("Ready ({}/24)", network.subnet),
        );
    }
    let mut planned = plan_on(project, &network, &[], opts.select)?;
    let bins = crate::docker::runtime::find(&["meshdns"])?;
    let meshdns = bins
        .get("meshdns")
        .cloned()
        .unwrap_or_else(|| PathBuf::from("meshdns"));
    planned.push(spec::meshdns_pod(&name, &state_dir, &network, &meshdns)?);
    let in_files = super::commands::process_services(project);
    let mut r = reconcile(&state_dir, planned, &in_files, opts.force_recreate);

    // Control plane: every pod of the project, selected or not, is in its placement.
    let mut placement = crate::docker::cp::PlacementFile::new(
        cp::listen_addr(network.gateway),
        &meshmodel::compile::FixedPlacement(BTreeMap::new()),
    );
    let others: Vec<PodSpec> = PodSpec::all(&state_dir)
        .into_values()
        .filter(|p| {
            in_files.contains(&p.service)
                && !r.keep.iter().chain(&r.create).any(|q| q.name == p.name)
        })
        .collect();
    placement = PlacementFile::new(
        placement.listen,
        &meshmodel::compile::FixedPlacement(placement_of(
            r.keep.iter().chain(&r.create).chain(&others),
        )),
    );
    let running = cp::running(&state_dir);
    let same = PlacementFile::read(&state_dir).as_ref() == Some(&placement);
    let needs_tokens = r.create.iter().any(|p| p.proxy.is_some());
    if running.is_none() || !same || needs_tokens {
        if running.is_some() {
            progress.line("Control plane", "Restarting");
            let dir = state_dir.clone();
            let _ = tokio::task::spawn_blocking(move || cp::stop(&dir)).await;
        }
        issue_tokens(project, &mut r)?;
        placement.write(&state_dir).map_err(ProcessError::Docker)?;
        let spec = project.spec.clone();
        let pl = placement.clone();
        let pid = tokio::task::spawn_blocking(move || cp::spawn_background(&spec, &pl))
            .await
            .map_err(|e| ProcessError::Service {
                service: "(control plane)".into(),
                message: e.to_string(),
            })??;
        progress.line(
            "Control plane",
            &format!("Started (pid {pid}, {})", placement.listen),
        );
    } else {
        progress.line("Control plane", "Running");
    }
    start_pods(project, &r, opts.wait, opts.wait_timeout, progress).await?;
    let mut pods = r.keep;
    pods.extend(r.create);
    Ok(RunOutcome { network, pods })
}
