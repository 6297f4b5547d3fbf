//! The supervisor of `up -d`'s background control plane.
//!
//! `meshctl __control-plane` (what `up -d` spawns, detached) is a small supervisor: it runs
//! the control plane itself as its child (`meshctl __control-plane --serve`, the process whose
//! pid the state file names) and starts it again when it dies of anything but a clean stop
//! (a crash, `kill -9`, the OOM killer), after an exponential backoff with jitter (200 ms
//! doubling to 10 s; back to 200 ms once a child has served a minute), as Docker's `always`
//! restart policy or systemd's `Restart=on-failure` would. The restarted control plane reads
//! the same state (`.mesh/ca/`, `.mesh/tokens.json`, `.mesh/vips.json`, the placement file),
//! listens on the same address, and its new epoch makes every proxy resync. A first start
//! that fails before serving is not retried: the supervisor exits 1 and `up -d` reports the
//! log's last lines.
//!
//! SIGTERM or SIGINT to the supervisor is passed to the child; the supervisor exits once the
//! child has stopped. A child that exits 0 (stopped with SIGTERM by someone else) ends the
//! supervisor too. The supervisor's pid is in `.mesh/controlplane.supervisor` ([`pid`]).
//!
//! The supervisor is supervised in turn, by the control plane it runs
//! ([`watch_supervisor`]): when the supervisor dies (`kill -9`, the OOM killer), the control
//! plane notices within a second (its parent changed) and starts a fresh supervisor
//! (`meshctl __control-plane --adopt <its pid>`) that adopts it without restarting it: the
//! new supervisor writes its pid file, watches the adopted control plane (it is not its
//! child, so by its pid), passes SIGTERM to it as to a child, and once it dies of anything
//! but a clean stop, starts a new one as its own child and carries on as above. The control
//! plane then watches that supervisor, its own child, and starts another if it dies too.
//! Nothing is restarted and no proxy notices.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;

/// The supervisor's pid file under `.mesh/`.
pub const SUPERVISOR_FILE: &str = "controlplane.supervisor";

/// First restart delay.
const BACKOFF_INITIAL: Duration = Duration::from_millis(200);
/// Largest restart delay.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A child that served this long resets the backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// The `attempt`-th restart delay (0-based): exponential, capped, with jitter in [½, 1]×.
pub fn backoff(attempt: u32) -> Duration {
    let base = BACKOFF_INITIAL
        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(BACKOFF_MAX);
    base.mul_f64(rand::rng().random_range(0.5..=1.0))
}

/// The pid of this project's live supervisor, if any.
pub fn pid(state_dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(state_dir.join(SUPERVISOR_FILE)).ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    // The pid could have been reused by an unrelated process: it must be a meshctl.
    String::from_utf8_lossy(&cmdline)
        .contains("meshctl")
        .then_some(pid)
}

/// The arguments without `--adopt PID` (a supervisor's own arguments, to start another one
/// or a control plane from).
pub fn without_adopt(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut out = Vec::new();
    let mut skip = false;
    for a in args {
        if skip {
            skip = false;
            continue;
        }
        if a == "--adopt" {
            skip = true;
            continue;
        }
        if a.to_str().is_some_and(|s| s.starts_with("--adopt=")) {
            continue;
        }
        out.push(a);
    }
    out
}

/// How often the control plane looks whether its supervisor is still its parent.
const PARENT_CHECK: Duration = Duration::from_millis(500);

/// Run by the background control plane (`__control-plane --serve`): starts a new supervisor
/// that adopts this process whenever its supervisor dies (see the module doc); appends what
/// it does to `log`. Runs until aborted.
pub async fn watch_supervisor(log: PathBuf) {
    let parent = rustix::process::getppid();
    let mut own: Option<tokio::process::Child> = None;
    loop {
        match own.as_mut() {
            Some(child) => {
                let status = child.wait().await;
                println!(
                    "control plane: its supervisor died ({}); starting a new one",
                    status.map_or_else(|e| e.to_string(), |s| s.to_string())
                );
            }
            None => {
                while rustix::process::getppid() == parent {
                    tokio::time::sleep(PARENT_CHECK).await;
                }
                println!(
                    "control plane: its supervisor (pid {}) died; starting a new one",
                    rustix::process::Pid::as_raw(parent)
                );
            }
        }
        own = None;
        match spawn_adopter(&log) {
            Ok(child) => {
                println!(
                    "control plane: new supervisor pid {}",
                    child.id().unwrap_or(0)
                );
                own = Some(child);
            }
            Err(e) => {
                println!("control plane: cannot start a new supervisor: {e:#}; retrying in 5 s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
        // A supervisor that keeps dying at once must not make this a busy loop.
        tokio::time::sleep(BACKOFF_INITIAL).await;
    }
}

/// Starts `meshctl <same global args> __control-plane --adopt <own pid>`, detached in its own
/// process group, logging to `log`.
fn spawn_adopter(log: &Path) -> anyhow::Result<tokio::process::Child> {
    let exe = std::env::current_exe().context("cannot find meshctl's executable")?;
    let mut args: Vec<std::ffi::OsString> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "--serve")
        .collect();
    args.push("--adopt".into());
    args.push(std::process::id().to_string().into());
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone().context("duplicating the log handle")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    cmd.spawn().context("starting a supervisor")
}

/// Runs the supervisor until SIGTERM/SIGINT or a clean stop of its child. `child_args` are
/// the arguments that start the control plane itself; `adopt` a running control plane to
/// supervise first (its supervisor died).
pub fn run(
    state_dir: &Path,
    child_args: Vec<std::ffi::OsString>,
    adopt: Option<u32>,
) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find meshctl's executable")?;
    let pid_file = state_dir.join(SUPERVISOR_FILE);
    std::fs::write(&pid_file, format!("{}\n", std::process::id()))
        .with_context(|| format!("writing {}", pid_file.display()))?;
    let _remove = RemoveOnDrop(pid_file);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(supervise(state_dir, exe, child_args, adopt))
}

/// Whether `pid` is alive (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    let Some(p) = rustix::process::Pid::from_raw(pid as i32) else {
        return false;
    };
    rustix::process::test_kill_process(p).is_ok()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
            .unwrap_or(false)
}

/// Supervises the running control plane `pid` (not our child) until it dies; `None` when it
/// stopped cleanly (its state file is gone or names another process) or we were told to stop
/// (SIGTERM passed on, waited for), `Some(())` when it died otherwise.
async fn watch_adopted(
    state_dir: &Path,
    pid: u32,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) -> Option<()> {
    println!("supervisor: adopted the running control plane (pid {pid})");
    let stop_it = || {
        if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
        }
    };
    loop {
        if !alive(pid) {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = term.recv() => { stop_it(); break_when_gone(pid).await; return None; }
            _ = int.recv() => { stop_it(); break_when_gone(pid).await; return None; }
        }
    }
    let crashed = crate::controlplane::admin::read_state(state_dir).is_ok_and(|s| s.pid == pid);
    if crashed {
        println!("supervisor: the adopted control plane (pid {pid}) died; starting a new one");
        Some(())
    } else {
        println!("supervisor: the adopted control plane stopped; exiting");
        None
    }
}

/// Waits (at most 15 s) until `pid` is gone.
async fn break_when_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("supervisor: stopped");
}

async fn supervise(
    state_dir: &Path,
    exe: PathBuf,
    args: Vec<std::ffi::OsString>,
    adopt: Option<u32>,
) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut attempt = 0u32;
    let mut first = true;
    if let Some(pid) = adopt {
        if watch_adopted(state_dir, pid, &mut term, &mut int)
            .await
            .is_none()
        {
            return Ok(ExitCode::SUCCESS);
        }
        first = false;
    }
    loop {
        let started = Instant::now();
        let mut child = tokio::process::Command::new(&exe)
            .args(&args)
            .spawn()
            .context("starting the control plane")?;
        let child_pid = child.id();
        println!("supervisor: control plane started (pid {child_pid:?})");
        let exited = tokio::select! {
            s = child.wait() => Some(s.context("waiting for the control plane")?),
            _ = term.recv() => None,
            _ = int.recv() => None,
        };
        let Some(status) = exited else {
            return stop(child).await;
        };
        if status.success() {
            println!("supervisor: the control plane stopped; exiting");
            return Ok(ExitCode::SUCCESS);
        }
        // A first start that never got ready (its state file names it once it serves) is a
        // configuration error, not a crash: restarting would only hide it from `up`, which
        // reports this log's last lines when the supervisor exits.
        let served = crate::controlplane::admin::read_state(state_dir)
            .is_ok_and(|s| Some(s.pid) == child_pid);
        if first && !served {
            println!("supervisor: the control plane failed to start ({status}); exiting");
            return Ok(ExitCode::FAILURE);
        }
        first = false;
        if started.elapsed() >= HEALTHY_RUN {
            attempt = 0;
        }
        let delay = backoff(attempt);
        attempt = attempt.saturating_add(1);
        println!(
            "supervisor: the control plane died ({status}) after {:.1} s; restarting it in {} ms (restart {attempt})",
            started.elapsed().as_secs_f64(),
            delay.as_millis()
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = term.recv() => return Ok(ExitCode::SUCCESS),
            _ = int.recv() => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// Passes SIGTERM to the child and waits for it (it removes its state file on the way out).
async fn stop(mut child: tokio::process::Child) -> anyhow::Result<ExitCode> {
    if let Some(p) = child
        .id()
        .and_then(|id| rustix::process::Pid::from_raw(id as i32))
    {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
    }
    let _ = child.wait().await;
    println!("supervisor: stopped");
    Ok(ExitCode::SUCCESS)
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        for attempt in 0..20 {
            let base = BACKOFF_INITIAL
                .saturating_mul(2u32.saturating_pow(attempt))
                .min(BACKOFF_MAX);
            let d = backoff(attempt);
            assert!(d >= base / 2 && d <= base, "attempt {attempt}: {d:?}");
        }
        assert!(backoff(30) <= BACKOFF_MAX);
    }

    #[test]
    fn an_adopting_supervisor_starts_control_planes_without_its_adopt_flag() {
        let args = ["-p", "x", "__control-plane", "--adopt", "42", "--adopt=7"]
            .map(std::ffi::OsString::from);
        assert_eq!(
            without_adopt(args.into_iter()),
            ["-p", "x", "__control-plane"].map(std::ffi::OsString::from)
        );
    }
}
