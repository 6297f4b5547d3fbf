//! What one process pod is (`PodSpec`, written by `up` to `.mesh/pods/<name>.json`, 0600: it
//! holds the pod token) and what its supervisor reports (`PodState`, `<name>.state.json`),
//! and the plan that maps the compose file's process services to pods.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshapi::ca_api::ENV_BOOTSTRAP_TOKEN;
use meshapi::proxy::SpiffeId;
use meshmodel::compose::{Command, ComposeFile, Restart, Service};
use serde::{Deserialize, Serialize};

use super::net::{Network, PodNet};
use super::{PODS_DIR, ProcessError};
use crate::docker::plan::{self as dplan, ProxyEnv};

/// A program with its arguments, directory and whole environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Program {
    /// A path, or a bare name looked up in `PATH`.
    pub program: String,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    /// The whole environment (nothing else is inherited).
    pub env: BTreeMap<String, String>,
}

/// A published port: the host's `host_ip:published` forwarded to the pod's `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Published {
    pub host_ip: Option<String>,
    pub published: u16,
    pub target: u16,
}

/// Compose's healthcheck, run in the pod's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Health {
    /// `["CMD", args...]` or `["CMD-SHELL", script]`.
    pub test: Vec<String>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub retries: u32,
    pub start_period_ms: u64,
    pub start_interval_ms: u64,
}

/// One pod: a process service's replica, or meshdns of a processes-only project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodSpec {
    pub project: String,
    /// `<project>-<service>-<n>` (as a container would be named), or `<project>-meshdns`.
    pub name: String,
    /// The compose service (`meshdns` for meshdns).
    pub service: String,
    pub instance: u32,
    pub mesh_service: String,
    /// The `version` label, for `ps`.
    #[serde(default)]
    pub version: String,
    /// SPIFFE ID; empty for meshdns.
    pub identity: String,
    /// The pod's namespace; none: runs on the host (meshdns).
    pub net: Option<PodNet>,
    /// meshproxy, in control-plane mode; none for meshdns.
    pub proxy: Option<Program>,
    pub app: Program,
    /// `x-mesh.endpoint`: the host service the pod's proxy reaches (the app is then
    /// `meshctl __forward`, a relay from the namespace's loopback to the supervisor's Unix
    /// socket, which connects here).
    #[serde(default)]
    pub endpoint: Option<std::net::SocketAddr>,
    pub published: Vec<Published>,
    pub healthcheck: Option<Health>,
    /// Compose's restart policy (`no`, `always`, `on-failure[:N]`, `unless-stopped`).
    pub restart: String,
    /// Signal that stops the app. Default SIGTERM.
    pub stop_signal: String,
    pub stop_grace_ms: u64,
    /// Hash of everything above but the token: a different hash means recreate.
    #[serde(default)]
    pub hash: String,
}

/// What a pod's supervisor reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodState {
    /// The supervisor (`meshctl __pod`).
    pub shim_pid: u32,
    /// `starting`, `running`, `restarting`, `exited`, `stopped` or `failed` (see `error`).
    pub status: String,
    pub app_pid: Option<u32>,
    pub proxy_pid: Option<u32>,
    /// The proxy answered `/healthz/ready`.
    pub proxy_ready: bool,
    pub exit_code: Option<i32>,
    /// Times the restart policy restarted the app.
    pub restarts: u32,
    /// `starting`, `healthy` or `unhealthy`; none without a healthcheck.
    pub health: Option<String>,
    /// Unix seconds of the app's last start.
    pub started_at: Option<u64>,
    /// Why the pod could not run.
    pub error: Option<String>,
    /// The spec hash it runs.
    pub hash: String,
}

/// The pods directory of a state directory.
pub fn pods_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(PODS_DIR)
}

impl PodSpec {
    /// The spec file.
    pub fn path(state_dir: &Path, name: &str) -> PathBuf {
        pods_dir(state_dir).join(format!("{name}.json"))
    }

    /// The state file.
    pub fn state_path(state_dir: &Path, name: &str) -> PathBuf {
        pods_dir(state_dir).join(format!("{name}.state.json"))
    }

    /// The app's log.
    pub fn log_path(state_dir: &Path, name: &str) -> PathBuf {
        pods_dir(state_dir).join(format!("{name}.log"))
    }

    /// The Unix socket between an endpoint pod's relay and its supervisor: short (a socket
    /// path has 108 bytes at most) and unique per state directory and pod.
    pub fn endpoint_socket(state_dir: &Path, name: &str) -> PathBuf {
        let key = format!("{}/{name}", state_dir.display());
        let mut h: u64 = 0xcbf29ce484222325;
        for b in key.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
        PathBuf::from(format!("/run/meshctl-pod-{h:016x}.sock"))
    }

    /// The proxy's log.
    pub fn proxy_log_path(state_dir: &Path, name: &str) -> PathBuf {
        pods_dir(state_dir).join(format!("{name}-proxy.log"))
    }

    /// Reads a spec file.
    pub fn read(path: &Path) -> Result<PodSpec, ProcessError> {
        let text = std::fs::read_to_string(path).map_err(ProcessError::io(path))?;
        serde_json::from_str(&text).map_err(|e| ProcessError::Pod {
            pod: path.display().to_string(),
            message: format!("unreadable spec: {e}"),
        })
    }

    /// Every spec under `state_dir`, by name.
    pub fn all(state_dir: &Path) -> BTreeMap<String, PodSpec> {
        let Ok(dir) = std::fs::read_dir(pods_dir(state_dir)) else {
            return BTreeMap::new();
        };
        dir.flatten()
            .filter(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.ends_with(".json") && !n.ends_with(".state.json")
            })
            .filter_map(|e| PodSpec::read(&e.path()).ok())
            .map(|s| (s.name.clone(), s))
            .collect()
    }

    /// Writes it (0600: the proxy's environment holds its pod token).
    pub fn write(&self, state_dir: &Path) -> Result<(), ProcessError> {
        let dir = pods_dir(state_dir);
        std::fs::create_dir_all(&dir).map_err(ProcessError::io(&dir))?;
        let path = PodSpec::path(state_dir, &self.name);
        let json = serde_json::to_vec_pretty(self).map_err(|e| ProcessError::Pod {
            pod: self.name.clone(),
            message: e.to_string(),
        })?;
        crate::controlplane::admin::write_private_file(&path, &json)
            .map_err(ProcessError::io(&path))
    }

    /// The same spec with its proxy's pod token.
    pub fn with_token(mut self, token: &str) -> PodSpec {
        if let Some(p) = &mut self.proxy {
            p.env
                .insert(ENV_BOOTSTRAP_TOKEN.to_string(), token.to_string());
        }
        self
    }

    /// The hash of the spec without its hash and token.
    fn compute_hash(&self) -> String {
        let mut s = self.clone();
        s.hash.clear();
        if let Some(p) = &mut s.proxy {
            p.env.remove(ENV_BOOTSTRAP_TOKEN);
        }
        let v = serde_json::to_value(&s).unwrap_or_default();
        dplan::hash(&[&v], &[])
    }

    /// Restart policy, parsed.
    pub fn restart_policy(&self) -> Restart {
        self.restart.parse().unwrap_or_default()
    }
}

impl PodState {
    /// Reads the state of `name`; `None` when it has none yet.
    pub fn read(state_dir: &Path, name: &str) -> Option<PodState> {
        let text = std::fs::read_to_string(PodSpec::state_path(state_dir, name)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes it atomically.
    pub fn write(&self, state_dir: &Path, name: &str) -> Result<(), ProcessError> {
        let path = PodSpec::state_path(state_dir, name);
        crate::controlplane::reload::write_atomic(&path, self).map_err(ProcessError::io(&path))
    }

    /// True when its supervisor is alive.
    pub fn alive(&self) -> bool {
        pid_alive(self.shim_pid)
    }
}

/// True when `pid` is a live process (not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// What the pods are planned from.
pub struct PlanInput<'a> {
    pub project: &'a str,
    pub project_dir: &'a Path,
    pub state_dir: &'a Path,
    pub compose: &'a ComposeFile,
    pub network: &'a Network,
    /// The trust bundle file (`.mesh/trust/roots.pem`, absolute).
    pub roots_file: &'a str,
    pub trust_domain: &'a str,
    /// meshproxy's path.
    pub meshproxy: &'a Path,
    /// Addresses taken by others (containers) on the network.
    pub taken: &'a [Ipv4Addr],
    /// Which compose services to plan (`x-mesh.process` ones only are ever planned).
    pub select: &'a dyn Fn(&str) -> bool,
}

/// Environment variables a process takes from meshctl's own environment (everything else comes
/// from the compose file, as a container gets only its image's and the file's).
const INHERITED_ENV: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ"];

/// One pod per replica of each selected process service, keeping the address a pod already
/// has (its spec file).
pub fn plan(input: &PlanInput<'_>) -> Result<Vec<PodSpec>, ProcessError> {
    let existing = PodSpec::all(input.state_dir);
    let mut used: Vec<Ipv4Addr> = input.taken.to_vec();
    used.extend(
        existing
            .values()
            .filter_map(|s| s.net.as_ref().map(|n| n.ip)),
    );
    let mut pods = Vec::new();
    for w in input.compose.workloads() {
        if w.service.is_container() || !(input.select)(w.name) {
            continue;
        }
        let svc_err = |message: String| ProcessError::Service {
            service: w.name.to_string(),
            message,
        };
        let identity = SpiffeId::new(input.trust_domain, w.namespace, w.service_account)
            .map_err(|e| svc_err(e.to_string()))?;
        let endpoint = w.service.endpoint_addr();
        let (program, args, working_dir, process_env) = match (w.service.process(), endpoint) {
            (Some(p), _) => {
                let (program, args) = split_command(&p.command).map_err(svc_err)?;
                (program, args, p.working_dir.clone(), p.env.clone())
            }
            (None, Some(addr)) => {
                let me = std::env::current_exe().map_err(ProcessError::io("/proc/self/exe"))?;
                let sock = PodSpec::endpoint_socket(
                    input.state_dir,
                    &dplan::app_name(input.project, w.name, 0),
                );
                (
                    me.display().to_string(),
                    vec![
                        "__forward".into(),
                        format!("127.0.0.1:{}", addr.port()),
                        sock.display().to_string(),
                    ],
                    None,
                    BTreeMap::new(),
                )
            }
            (None, None) => continue,
        };
        let cwd = match &working_dir {
            Some(d) => input.project_dir.join(d),
            None => input.project_dir.to_path_buf(),
        };
        let cwd = std::path::absolute(&cwd).map_err(ProcessError::io(&cwd))?;
        let program = if program.contains('/') && !program.starts_with('/') {
            cwd.join(&program).display().to_string()
        } else {
            program
        };
        let mut env: BTreeMap<String, String> = INHERITED_ENV
            .iter()
            .filter_map(|k| Some((k.to_string(), std::env::var(k).ok()?)))
            .collect();
        env.extend(dplan::service_env(input.project_dir, w.service).map_err(svc_err)?);
        dplan::add_env(&mut env, &process_env);
        let published: Vec<Published> = w
            .service
            .ports
            .iter()
            .filter_map(|p| {
                Some(Published {
                    host_ip: p.host_ip.clone().filter(|h| !h.is_empty()),
                    published: p.published.as_ref()?.parse().ok()?,
                    target: p.target,
                })
            })
            .collect();
        for instance in 0..w.replicas {
            let name = dplan::app_name(input.project, w.name, instance);
            let ip = match existing.get(&name).and_then(|s| s.net.as_ref()) {
                Some(n) if input.network.contains(n.ip) => n.ip,
                _ => {
                    let ip = (input.network.first_host..=254)
                        .map(|n| input.network.host(n))
                        .find(|ip| !used.contains(ip))
                        .ok_or_else(|| ProcessError::NoAddress(w.name.to_string()))?;
                    used.push(ip);
                    ip
                }
            };
            let proxy_env = dplan::proxy_env(&ProxyEnv {
                gateway: input.network.gateway,
                subnet: input.network.subnet,
                dns: input.network.dns,
                identity: &identity,
                workload: w.name,
                instance,
                roots_file: input.roots_file,
                edge_ports: &published.iter().map(|p| p.target).collect::<Vec<_>>(),
            });
            let proxy = Program {
                program: input.meshproxy.display().to_string(),
                args: Vec::new(),
                cwd: input.state_dir.to_path_buf(),
                env: proxy_env
                    .iter()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            };
            let mut spec = PodSpec {
                project: input.project.to_string(),
                name: name.clone(),
                service: w.name.to_string(),
                instance,
                mesh_service: w.mesh_service.to_string(),
                version: w.labels.get("version").cloned().unwrap_or_default(),
                identity: identity.to_string(),
                net: Some(input.network.pod(&name, w.namespace, ip)),
                proxy: Some(proxy),
                app: Program {
                    program: program.clone(),
                    args: args.clone(),
                    cwd: cwd.clone(),
                    env: env.clone(),
                },
                endpoint,
                published: published.clone(),
                healthcheck: health(w.service),
                restart: w.service.restart.unwrap_or_default().to_string(),
                stop_signal: w
                    .service
                    .stop_signal
                    .clone()
                    .unwrap_or_else(|| "SIGTERM".into()),
                stop_grace_ms: millis(
                    w.service.stop_grace_period.as_ref().map(|d| d.0),
                    Duration::from_secs(10),
                ),
                hash: String::new(),
            };
            spec.hash = spec.compute_hash();
            pods.push(spec);
        }
    }
    Ok(pods)
}

/// meshdns of a processes-only project, as a host process on the gateway's port 53 reading
/// the control plane's records file (upstream: the host's resolvers).
pub fn meshdns_pod(
    project: &str,
    state_dir: &Path,
    network: &Network,
    meshdns: &Path,
) -> Result<PodSpec, ProcessError> {
    let state_dir = std::path::absolute(state_dir).map_err(ProcessError::io(state_dir))?;
    let mut spec = PodSpec {
        project: project.to_string(),
        name: format!("{project}-meshdns"),
        service: "meshdns".into(),
        instance: 0,
        mesh_service: "meshdns".into(),
        version: String::new(),
        identity: String::new(),
        net: None,
        proxy: None,
        app: Program {
            program: meshdns.display().to_string(),
            args: vec![
                "--records".into(),
                state_dir.join("dns-records.json").display().to_string(),
                "--listen".into(),
                format!("{}:53", network.dns),
            ],
            cwd: state_dir.clone(),
            env: INHERITED_ENV
                .iter()
                .filter_map(|k| Some((k.to_string(), std::env::var(k).ok()?)))
                .chain([("NO_COLOR".to_string(), "1".to_string())])
                .collect(),
        },
        endpoint: None,
        published: Vec::new(),
        healthcheck: None,
        restart: "always".into(),
        // meshdns shuts down on SIGINT.
        stop_signal: "SIGINT".into(),
        stop_grace_ms: 5000,
        hash: String::new(),
    };
    spec.hash = spec.compute_hash();
    Ok(spec)
}

fn split_command(c: &Command) -> Result<(String, Vec<String>), String> {
    let mut words = match c {
        Command::Exec(v) => v.clone(),
        Command::Shell(s) => dplan::shell_split(s)?,
    };
    if words.is_empty() {
        return Err("x-mesh.process.command is empty".into());
    }
    let program = words.remove(0);
    Ok((program, words))
}

fn millis(d: Option<Duration>, default: Duration) -> u64 {
    u64::try_from(d.unwrap_or(default).as_millis()).unwrap_or(u64::MAX)
}

/// Compose's healthcheck with its defaults (30 s interval and timeout, 3 retries).
fn health(svc: &Service) -> Option<Health> {
    let h = svc.healthcheck.as_ref()?;
    if h.disable == Some(true) {
        return None;
    }
    let test = h.test.as_ref()?.0.clone();
    if test.first().map(String::as_str) == Some("NONE") || test.len() < 2 {
        return None;
    }
    let d = |v: &Option<meshmodel::compose::ComposeDuration>, def: u64| {
        millis(v.as_ref().map(|d| d.0), Duration::from_millis(def))
    };
    Some(Health {
        test,
        interval_ms: d(&h.interval, 30_000),
        timeout_ms: d(&h.timeout, 30_000),
        retries: h.retries.unwrap_or(3),
        start_period_ms: d(&h.start_period, 0),
        start_interval_ms: d(&h.start_interval, 5_000),
    })
}
