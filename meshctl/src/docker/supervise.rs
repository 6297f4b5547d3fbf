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

/// Runs the supervisor until SIGTERM/SIGINT or a clean stop of its child. `child_args` are
/// the arguments that start the control plane itself.
pub fn run(state_dir: &Path, child_args: Vec<std::ffi::OsString>) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find meshctl's executable")?;
    let pid_file = state_dir.join(SUPERVISOR_FILE);
    std::fs::write(&pid_file, format!("{}\n", std::process::id()))
        .with_context(|| format!("writing {}", pid_file.display()))?;
    let _remove = RemoveOnDrop(pid_file);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(supervise(state_dir, exe, child_args))
}

async fn supervise(
    state_dir: &Path,
    exe: PathBuf,
    args: Vec<std::ffi::OsString>,
) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut attempt = 0u32;
    let mut first = true;
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
}
