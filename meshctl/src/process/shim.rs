//! `meshctl __pod <spec file>`: the supervisor of one process pod, as a container runtime's
//! shim is for a container. Started detached (own process group) by `up`; stopped by SIGTERM
//! (`down`, `stop`, a recreate).
//!
//! 1. creates the pod's network namespace (`net::create_pod`);
//! 2. starts meshproxy in it and waits until `<ip>:15021/healthz/ready` answers 200; a proxy
//!    that exits is started again (backoff from 100 ms to 10 s), as Docker restarts a sidecar;
//! 3. listens on the published host ports and forwards each connection to the pod's address,
//!    where the capture rules send it to the proxy's edge listener;
//! 4. starts the app in the namespace, and again when it exits as the restart policy says;
//!    runs the healthcheck;
//! 5. on SIGTERM or SIGINT: the app gets its stop signal (SIGKILL after the grace period),
//!    then the proxy SIGTERM, then the namespace is deleted.
//!
//! Every change is written to `<name>.state.json`; the app's output goes to `<name>.log`,
//! the proxy's to `<name>-proxy.log`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use super::net;
use super::spec::{Health, PodSpec, PodState, Program};
use crate::docker::plan::HEALTH_PORT;
use meshmodel::compose::Restart;

/// How long the proxy may take to be ready before the pod counts as failed.
const PROXY_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The proxy's grace after SIGTERM.
const PROXY_GRACE: Duration = Duration::from_secs(5);

/// Runs the supervisor of the pod in `spec_path` until it is told to stop.
pub fn main(spec_path: &Path) -> anyhow::Result<ExitCode> {
    let spec = PodSpec::read(spec_path)?;
    let state_dir = spec_path
        .parent()
        .and_then(Path::parent)
        .context("the spec file is not under <state dir>/pods/")?
        .to_path_buf();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let mut shim = Shim {
            state: PodState {
                shim_pid: std::process::id(),
                status: "starting".into(),
                hash: spec.hash.clone(),
                ..PodState::default()
            },
            spec,
            state_dir,
        };
        let code = shim.run().await;
        Ok(code)
    })
}

struct Shim {
    spec: PodSpec,
    state_dir: PathBuf,
    state: PodState,
}

/// Backoff between restarts: 100 ms doubling to 10 s, back to 100 ms after 10 s of running.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            next: Duration::from_millis(100),
        }
    }

    fn after_run(&mut self, ran: Duration) -> Duration {
        if ran > Duration::from_secs(10) {
            self.next = Duration::from_millis(100);
        }
        let d = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(10));
        d
    }
}

impl Shim {
    fn save(&self) {
        if let Err(e) = self.state.write(&self.state_dir, &self.spec.name) {
            eprintln!("cannot write the pod state: {e}");
        }
    }

    fn fail(&mut self, message: String) -> ExitCode {
        eprintln!("{}: {message}", self.spec.name);
        self.state.status = "failed".into();
        self.state.error = Some(message);
        self.save();
        ExitCode::from(1)
    }

    async fn run(&mut self) -> ExitCode {
        self.save();
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => return self.fail(format!("installing the SIGTERM handler: {e}")),
            };
        let mut int = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        {
            Ok(s) => s,
            Err(e) => return self.fail(format!("installing the SIGINT handler: {e}")),
        };
        if let Some(n) = &self.spec.net
            && let Err(e) = net::create_pod(n)
        {
            return self.fail(format!("network namespace {}: {e}", n.netns));
        }
        let code = tokio::select! {
            code = self.serve() => code,
            _ = term.recv() => ExitCode::SUCCESS,
            _ = int.recv() => ExitCode::SUCCESS,
        };
        self.stop().await;
        code
    }

    /// Everything up to a stop signal.
    async fn serve(&mut self) -> ExitCode {
        let mut proxy = None;
        let mut proxy_backoff = Backoff::new();
        if self.spec.proxy.is_some() {
            let deadline = Instant::now() + PROXY_READY_TIMEOUT;
            loop {
                let mut child = match self.spawn_proxy() {
                    Ok(c) => c,
                    Err(e) => return self.fail(format!("starting meshproxy: {e}")),
                };
                self.state.proxy_pid = child.id();
                match self.wait_proxy_ready(&mut child, deadline).await {
                    Ok(()) => {
                        proxy = Some(child);
                        break;
                    }
                    Err(e) if Instant::now() >= deadline => {
                        let _ = child.kill().await;
                        return self.fail(format!(
                            "meshproxy not ready: {e}; see {}",
                            PodSpec::proxy_log_path(&self.state_dir, &self.spec.name).display()
                        ));
                    }
                    Err(_) => {
                        tokio::time::sleep(proxy_backoff.after_run(Duration::ZERO)).await;
                    }
                }
            }
            self.state.proxy_ready = true;
            self.save();
        }
        // Published ports: the host's listeners, forwarded to the pod's address.
        if let Some(n) = &self.spec.net {
            for p in &self.spec.published {
                let host: IpAddr = match p.host_ip.as_deref().map(str::parse) {
                    Some(Ok(ip)) => ip,
                    Some(Err(_)) => {
                        return self.fail(format!("host_ip {:?} is not an address", p.host_ip));
                    }
                    None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                };
                let listener = match tokio::net::TcpListener::bind((host, p.published)).await {
                    Ok(l) => l,
                    Err(e) => {
                        return self
                            .fail(format!("host port {} is already taken: {e}", p.published));
                    }
                };
                tokio::spawn(forward(listener, SocketAddr::from((n.ip, p.target))));
            }
        }
        // An existing host service: the relay in the namespace reaches it through this socket.
        if let Some(endpoint) = self.spec.endpoint {
            let sock = PodSpec::endpoint_socket(&self.state_dir, &self.spec.name);
            let _ = std::fs::remove_file(&sock);
            match tokio::net::UnixListener::bind(&sock) {
                Ok(l) => {
                    tokio::spawn(forward_unix(l, endpoint));
                }
                Err(e) => return self.fail(format!("{}: {e}", sock.display())),
            }
        }
        let mut app_backoff = Backoff::new();
        let mut health = HealthRun::new(self.spec.healthcheck.clone());
        let mut stopped_for_good = false;
        loop {
            let mut app = if stopped_for_good {
                None
            } else {
                match self.spawn_app() {
                    Ok(c) => {
                        self.state.app_pid = c.id();
                        self.state.status = "running".into();
                        self.state.exit_code = None;
                        self.state.started_at = Some(unix_now());
                        health.restart(&mut self.state);
                        self.save();
                        Some(c)
                    }
                    Err(e) => {
                        self.state.error = Some(format!("cannot start the app: {e}"));
                        self.state.status = "exited".into();
                        self.state.exit_code = Some(127);
                        self.save();
                        None
                    }
                }
            };
            let started = Instant::now();
            // Until the app exits (or forever when it is not running).
            let exit = loop {
                let tick = health.next_tick(started);
                tokio::select! {
                    status = wait_opt(&mut app) => break status,
                    status = wait_opt(&mut proxy) => {
                        eprintln!("meshproxy exited ({status:?}); starting it again");
                        self.state.proxy_ready = false;
                        self.save();
                        tokio::time::sleep(proxy_backoff.after_run(Duration::ZERO)).await;
                        match self.spawn_proxy() {
                            Ok(c) => {
                                self.state.proxy_pid = c.id();
                                proxy = Some(c);
                                self.state.proxy_ready = true;
                                self.save();
                            }
                            Err(e) => eprintln!("cannot start meshproxy again: {e}"),
                        }
                    }
                    _ = tokio::time::sleep(tick), if app.is_some() && health.enabled() => {
                        if health.check(&self.spec, &mut self.state).await {
                            self.save();
                        }
                    }
                }
            };
            let code = exit.and_then(|s| s.code()).unwrap_or(137);
            self.state.app_pid = None;
            self.state.exit_code = Some(code);
            let restart = match self.spec.restart_policy() {
                Restart::No => false,
                Restart::Always | Restart::UnlessStopped => true,
                Restart::OnFailure(max) => code != 0 && max.is_none_or(|m| self.state.restarts < m),
            };
            if !restart {
                self.state.status = "exited".into();
                self.state.health = None;
                self.save();
                stopped_for_good = true;
                continue;
            }
            self.state.status = "restarting".into();
            self.save();
            tokio::time::sleep(app_backoff.after_run(started.elapsed())).await;
            self.state.restarts += 1;
        }
    }

    fn command(&self, p: &Program, log: &Path) -> std::io::Result<Command> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let err = out.try_clone()?;
        let mut cmd = match &self.spec.net {
            Some(n) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &n.netns, &p.program]);
                c
            }
            None => Command::new(&p.program),
        };
        cmd.args(&p.args)
            .current_dir(&p.cwd)
            .env_clear()
            .envs(&p.env)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(false);
        Ok(cmd)
    }

    fn spawn_proxy(&self) -> std::io::Result<Child> {
        let Some(p) = &self.spec.proxy else {
            return Err(std::io::Error::other("no proxy"));
        };
        self.command(
            p,
            &PodSpec::proxy_log_path(&self.state_dir, &self.spec.name),
        )?
        .spawn()
    }

    fn spawn_app(&self) -> std::io::Result<Child> {
        self.command(
            &self.spec.app,
            &PodSpec::log_path(&self.state_dir, &self.spec.name),
        )?
        .spawn()
    }

    async fn wait_proxy_ready(&self, child: &mut Child, deadline: Instant) -> Result<(), String> {
        let Some(n) = &self.spec.net else {
            return Ok(());
        };
        let addr = SocketAddr::from((n.ip, HEALTH_PORT));
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("meshproxy exited ({status})"));
            }
            if http_status(addr, "/healthz/ready").await == Some(200) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("{addr}/healthz/ready did not answer 200"))
    }

    /// Stops the app, then the proxy, then removes the namespace.
    async fn stop(&mut self) {
        if let Some(pid) = self.state.app_pid {
            let sig = signal(&self.spec.stop_signal);
            stop_group(pid, sig, Duration::from_millis(self.spec.stop_grace_ms)).await;
        }
        if let Some(pid) = self.state.proxy_pid.take() {
            stop_group(pid, rustix::process::Signal::TERM, PROXY_GRACE).await;
        }
        if let Some(n) = &self.spec.net
            && let Err(e) = net::delete_pod(n)
        {
            eprintln!("removing the network namespace: {e}");
        }
        if self.spec.endpoint.is_some() {
            let _ =
                std::fs::remove_file(PodSpec::endpoint_socket(&self.state_dir, &self.spec.name));
        }
        self.state.status = "stopped".into();
        self.state.app_pid = None;
        self.state.proxy_ready = false;
        self.save();
    }
}

/// Waits for the child, or forever when there is none.
async fn wait_opt(child: &mut Option<Child>) -> Option<std::process::ExitStatus> {
    match child {
        Some(c) => {
            let s = c.wait().await.ok();
            *child = None;
            s
        }
        None => std::future::pending().await,
    }
}

/// Sends `sig` to the process group `pid`, then SIGKILL after `grace`.
async fn stop_group(pid: u32, sig: rustix::process::Signal, grace: Duration) {
    let Some(p) = rustix::process::Pid::from_raw(pid as i32) else {
        return;
    };
    let _ = rustix::process::kill_process_group(p, sig);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !super::spec::pid_alive(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
}

/// A compose stop signal by name (`SIGTERM`, `TERM`, `SIGINT`, ...); SIGTERM when unknown.
fn signal(name: &str) -> rustix::process::Signal {
    use rustix::process::Signal;
    match name.trim().trim_start_matches("SIG") {
        "INT" => Signal::INT,
        "QUIT" => Signal::QUIT,
        "HUP" => Signal::HUP,
        "KILL" => Signal::KILL,
        "USR1" => Signal::USR1,
        "USR2" => Signal::USR2,
        _ => Signal::TERM,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The status code of `GET path` on `addr` (HTTP/1.0), or `None`.
async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.ok()?;
        let head = std::str::from_utf8(&buf[..n]).ok()?;
        head.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), io)
        .await
        .ok()
        .flatten()
}

/// Accepts on `listener` and forwards each connection to `to`.
async fn forward(listener: tokio::net::TcpListener, to: SocketAddr) {
    loop {
        let (mut inbound, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("published port {:?}: accept: {e}", listener.local_addr());
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// Compose healthcheck semantics: checks every `interval` (every `start_interval` during the
/// start period), unhealthy after `retries` consecutive failures (failures in the start period
/// do not count), healthy at the first success.
struct HealthRun {
    health: Option<Health>,
    failures: u32,
}

impl HealthRun {
    fn new(health: Option<Health>) -> HealthRun {
        HealthRun {
            health,
            failures: 0,
        }
    }

    fn enabled(&self) -> bool {
        self.health.is_some()
    }

    fn restart(&mut self, state: &mut PodState) {
        self.failures = 0;
        state.health = self.health.as_ref().map(|_| "starting".to_string());
    }

    fn next_tick(&self, started: Instant) -> Duration {
        match &self.health {
            Some(h) if started.elapsed() < Duration::from_millis(h.start_period_ms) => {
                Duration::from_millis(h.start_interval_ms.max(50))
            }
            Some(h) => Duration::from_millis(h.interval_ms.max(50)),
            None => Duration::from_secs(3600),
        }
    }

    /// Runs the check once; true when the state changed.
    async fn check(&mut self, spec: &PodSpec, state: &mut PodState) -> bool {
        let Some(h) = &self.health else {
            return false;
        };
        let ok = run_check(spec, h).await;
        let in_start = state
            .started_at
            .is_some_and(|s| unix_now().saturating_sub(s) * 1000 < h.start_period_ms);
        let before = state.health.clone();
        if ok {
            self.failures = 0;
            state.health = Some("healthy".into());
        } else if !in_start || state.health.as_deref() == Some("healthy") {
            self.failures += 1;
            if self.failures >= h.retries.max(1) {
                state.health = Some("unhealthy".into());
            }
        }
        before != state.health
    }
}

/// One run of the healthcheck's test in the pod's namespace, with its timeout.
async fn run_check(spec: &PodSpec, h: &Health) -> bool {
    let (kind, rest) = match h.test.split_first() {
        Some((k, rest)) => (k.as_str(), rest),
        None => return false,
    };
    let argv: Vec<String> = match kind {
        "CMD" => rest.to_vec(),
        "CMD-SHELL" => vec!["/bin/sh".into(), "-c".into(), rest.join(" ")],
        _ => return false,
    };
    let Some((program, args)) = argv.split_first() else {
        return false;
    };
    let mut cmd = match &spec.net {
        Some(n) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &n.netns, program]);
            c
        }
        None => Command::new(program),
    };
    cmd.args(args)
        .current_dir(&spec.app.cwd)
        .env_clear()
        .envs(&spec.app.env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let Ok(mut child) = cmd.spawn() else {
        return false;
    };
    match tokio::time::timeout(Duration::from_millis(h.timeout_ms.max(100)), child.wait()).await {
        Ok(Ok(status)) => status.success(),
        _ => false,
    }
}

/// Accepts on the Unix socket and connects each to the host service `to`.
async fn forward_unix(listener: tokio::net::UnixListener, to: SocketAddr) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// `meshctl __forward LISTEN SOCKET`: the relay of an endpoint pod, run in its namespace:
/// accepts on `listen` (the namespace's loopback, where its proxy forwards inbound traffic)
/// and connects each to the supervisor's Unix socket, which reaches the host service (a Unix
/// socket is a file: it crosses network namespaces).
pub fn relay_main(listen: SocketAddr, socket: &Path) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        println!(
            "relaying {listen} to the host service through {}",
            socket.display()
        );
        loop {
            let (mut inbound, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let socket = socket.to_path_buf();
            tokio::spawn(async move {
                match tokio::net::UnixStream::connect(&socket).await {
                    Ok(mut outbound) => {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                    Err(e) => eprintln!("{}: {e}", socket.display()),
                }
            });
        }
    })
}
