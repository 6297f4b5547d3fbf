//! Foreground `meshctl up` on the real engine (issue 7): it streams the apps' prefixed logs,
//! `meshctl logs -f` follows them (`-f` is follow after `logs`, as in compose), and Ctrl-C
//! stops every container of the project (apps, then sidecars and meshdns) and exits 0.
//! The stop time is printed, not asserted (timing goals live in benchmarks). Skips loudly only
//! when no engine answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod docker_support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use docker_support::*;

/// Lines of a child's stdout, read on a thread.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line containing `needle`; panics with what was seen after `timeout`.
fn wait_line(rx: &mpsc::Receiver<String>, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(needle) => return l,
            Ok(l) => seen.push(l),
            Err(_) => break,
        }
    }
    panic!(
        "no line with {needle:?} within {timeout:?}; saw:\n{}",
        seen.join("\n")
    );
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {}", child.id());
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("meshctl did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreground_up_streams_logs_follows_and_stops_on_ctrl_c() {
    if !docker_available() {
        return;
    }
    let seed = Seed::new("f");
    // Images first (a foreground up would stream cargo's build output too).
    seed.ok(&["up", "-d", "--wait", "--build"]);
    seed.ok(&["down"]);

    let mut up = seed
        .command(&["up", "--wait"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let up_lines = lines_of(&mut up);
    let p = seed.project.clone();
    let line = wait_line(
        &up_lines,
        "frontend listening on 0.0.0.0:3000",
        Duration::from_secs(120),
    );
    assert!(
        line.starts_with(&format!("{p}-frontend-1 ")),
        "prefixed: {line}"
    );
    let (status, _, body) = first_get(seed.port).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "Frontend says: Hello from Backend!")
    );

    // `logs -f SERVICE` follows (and does not take `-f` for a file).
    let mut logs = seed
        .command(&["logs", "-f", "backend-v2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let log_lines = lines_of(&mut logs);
    let line = wait_line(&log_lines, "backend v2 listening", Duration::from_secs(20));
    assert!(line.starts_with(&format!("{p}-backend-v2-1 ")), "{line}");
    // Still following a moment later: a process that printed and exited would have ended.
    assert!(logs.try_wait().unwrap().is_none(), "logs -f exited");
    logs.kill().unwrap();
    let _ = logs.wait();

    // Ctrl-C: every container stopped, exit 0.
    let t0 = Instant::now();
    signal(&up, "-INT");
    let status = wait_exit(&mut up, Duration::from_secs(90));
    eprintln!("foreground up stopped {:?} after Ctrl-C", t0.elapsed());
    let mut stderr = String::new();
    std::io::Read::read_to_string(up.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{status}: {stderr}");
    for c in [
        format!("{p}-frontend-1"),
        format!("{p}-backend-v1-1-proxy"),
        format!("{p}-meshdns"),
    ] {
        assert!(
            stderr
                .lines()
                .any(|l| l.trim() == format!("Container {c}  Stopped")),
            "no progress line for {c}: {stderr}"
        );
    }
    let running = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=io.meshctl.project={p}"),
    ]);
    assert!(running.is_empty(), "still running after Ctrl-C: {running}");
}

/// Ctrl-C while a foreground `up` is still starting: what was started is stopped and meshctl
/// exits 130 (it used to die at once and leave the containers running).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_start_up_stops_what_was_started() {
    if !docker_available() {
        return;
    }
    let seed = Seed::new("i");
    seed.ok(&["up", "-d", "--wait", "--build"]);
    seed.ok(&["down"]);
    let mut up = seed
        .command(&["up", "--wait"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = up.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The sidecars are starting: no app is healthy yet, so `--wait` is far from done.
    wait_line(&rx, "Waiting for the proxy", Duration::from_secs(120));
    signal(&up, "-INT");
    let status = wait_exit(&mut up, Duration::from_secs(90));
    let rest: Vec<String> = rx.try_iter().collect();
    assert_eq!(status.code(), Some(130), "{}", rest.join("\n"));
    assert!(
        rest.iter()
            .any(|l| l.contains("interrupted during start-up")),
        "{}",
        rest.join("\n")
    );
    let p = &seed.project;
    let running = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=io.meshctl.project={p}"),
    ]);
    assert!(running.is_empty(), "still running after Ctrl-C: {running}");
}
