//! compose's `exec`, `events`, `top` (here `processes`), `build SERVICE`, `up` after `stop`
//! and a profile enabled by naming its service, through the `meshctl` binary on a running
//! seed project against the real engine.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod docker_support;

use std::io::BufRead;
use std::process::{Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use docker_support::*;

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

fn all_output(o: &Output) -> String {
    format!("{}{}", text(&o.stdout), text(&o.stderr))
}

/// Every container of the project (running or not), by ID, as the engine lists them.
fn container_ids(project: &str) -> Vec<String> {
    let mut v: Vec<String> = docker(&[
        "ps",
        "-a",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label=io.meshctl.project={project}"),
    ])
    .lines()
    .map(str::to_string)
    .collect();
    v.sort();
    v
}

/// A service gated by a profile: only `up debug` (or `--profile debug`) starts it. It runs
/// the backend image under its own identity, which the seed's AuthorizationPolicy does not
/// let call the backend.
const DEBUG_SERVICE: &str = r#"
  debug:
    image: meshctl-demo/backend:latest
    profiles: [debug]
    environment:
      VERSION: debug
    labels:
      app: debug
      version: v1
    x-mesh:
      ports:
        - port: 8080
          protocol: http
"#;

/// Waits (bounded) for an event line matching `want`, returning it.
fn wait_event(
    rx: &mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    what: &str,
    want: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for line in seen.iter() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
                && want(&v)
            {
                return v;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no {what} event; seen:\n{}",
            seen.join("\n")
        );
        if let Ok(line) = rx.recv_timeout(left.min(Duration::from_secs(1))) {
            seen.push(line);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_events_processes_build_and_up_after_stop() {
    if !docker_available() {
        return;
    }
    let seed = Seed::new("h18aexec");
    let compose = seed.dir.path().join("compose.yaml");
    let mut yaml = std::fs::read_to_string(&compose).unwrap();
    yaml.push_str(DEBUG_SERVICE);
    std::fs::write(&compose, yaml).unwrap();
    let p = seed.project.clone();
    seed.ok(&["up", "-d", "--wait", "--build"]);
    assert_eq!(first_get(seed.port).await.0, 200);
    let services = seed.ok(&["ps", "--services"]);
    assert!(
        !services.contains("debug"),
        "a profile-gated service started:\n{services}"
    );

    // processes (compose's top): each app container with the engine's process table.
    let procs = seed.ok(&["processes", "frontend"]);
    let lines: Vec<&str> = procs.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&format!("{p}-frontend-1").as_str()),
        "{procs}"
    );
    assert!(
        lines
            .get(1)
            .is_some_and(|h| h.contains("PID") && h.contains("CMD")),
        "{procs}"
    );
    assert!(lines.iter().any(|l| l.ends_with("/frontend")), "{procs}");
    assert!(
        !procs.contains("-proxy"),
        "sidecars only with --proxy:\n{procs}"
    );
    let with_proxy = seed.ok(&["processes", "--proxy", "frontend"]);
    assert!(
        with_proxy.contains(&format!("{p}-frontend-1-proxy")),
        "{with_proxy}"
    );
    assert!(with_proxy.contains("meshproxy"), "{with_proxy}");

    // exec runs in the pod: a call to the backend goes through the sidecar with the
    // frontend's identity (STRICT mTLS, the AuthorizationPolicy allows it).
    seed.ok(&["exec", "-T", "frontend", "/frontend", "healthcheck"]);
    seed.ok(&[
        "exec",
        "-T",
        "frontend",
        "/frontend",
        "healthcheck",
        "http://backend:8080/",
    ]);
    // -e reaches the command (PORT moves its default probe), its status and stderr come back.
    let o = seed.meshctl(&[
        "exec",
        "-T",
        "-e",
        "PORT=1",
        "frontend",
        "/frontend",
        "healthcheck",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", all_output(&o));
    assert!(text(&o.stderr).contains("unhealthy"), "{}", all_output(&o));
    let o = seed.meshctl(&["exec", "-T", "frontend", "/frontend", "--no-such-mode"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "the command's own exit status: {}",
        all_output(&o)
    );
    // -u and -w are the engine's: a numeric user works, a name the image lacks is refused.
    seed.ok(&[
        "exec",
        "-T",
        "-u",
        "65534",
        "-w",
        "/",
        "frontend",
        "/frontend",
        "healthcheck",
    ]);
    let o = seed.meshctl(&[
        "exec",
        "-T",
        "-u",
        "nosuchuser",
        "frontend",
        "/frontend",
        "healthcheck",
    ]);
    assert!(
        !o.status.success() && all_output(&o).contains("nosuchuser"),
        "{}",
        all_output(&o)
    );
    let o = seed.meshctl(&[
        "exec",
        "-T",
        "-w",
        "/nowhere",
        "frontend",
        "/frontend",
        "healthcheck",
    ]);
    assert!(
        !o.status.success() && all_output(&o).contains("nowhere"),
        "{}",
        all_output(&o)
    );
    // --index counts replicas from 1; unknown services and replicas are errors (exit 1).
    seed.ok(&[
        "exec",
        "-T",
        "--index",
        "1",
        "frontend",
        "/frontend",
        "healthcheck",
    ]);
    let o = seed.meshctl(&[
        "exec",
        "--index",
        "2",
        "frontend",
        "/frontend",
        "healthcheck",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("no container with index 2"),
        "{}",
        all_output(&o)
    );
    let o = seed.meshctl(&["exec", "nosuch", "/x"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("no such service: nosuch"),
        "{}",
        all_output(&o)
    );
    // -d returns at once with success.
    seed.ok(&["exec", "-d", "frontend", "/frontend", "healthcheck"]);

    // events: the engine's for the project's containers and the mesh's, as JSON lines.
    let mut child = seed
        .command(&["events", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    // Give the stream a moment to subscribe: the restart is retried until its events show.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        seed.ok(&["restart", "-t", "1", "backend-v2"]);
        let found = std::iter::from_fn(|| rx.recv_timeout(Duration::from_secs(5)).ok())
            .take(50)
            .inspect(|l| seen.push(l.clone()))
            .any(|l| {
                l.contains("\"action\":\"start\"") && l.contains("\"service\":\"backend-v2\"")
            });
        if found || Instant::now() > deadline {
            break;
        }
    }
    let start = wait_event(&rx, &mut seen, "container start", |v| {
        v["type"] == "container" && v["action"] == "start" && v["service"] == "backend-v2"
    });
    assert!(
        start["attributes"]["name"]
            .as_str()
            .unwrap()
            .starts_with(&p),
        "{start}"
    );
    // A policy edit: a reload, then the frontend's proxy ACKs the new version.
    let vs = seed.dir.path().join("mesh/virtual-service.yaml");
    let original = std::fs::read_to_string(&vs).unwrap();
    std::fs::write(
        &vs,
        original
            .replace("weight: 90", "weight: 80")
            .replace("weight: 10", "weight: 20"),
    )
    .unwrap();
    wait_event(&rx, &mut seen, "mesh reload", |v| {
        v["type"] == "mesh" && v["action"] == "reload"
    });
    wait_event(&rx, &mut seen, "frontend ACK", |v| {
        v["type"] == "mesh" && v["action"] == "ack" && v["service"] == "frontend"
    });
    // A broken edit: refused, with the file and line.
    std::fs::write(
        &vs,
        original.replace("weight: 90", "weight: 90\n          wieght: 1"),
    )
    .unwrap();
    let refused = wait_event(&rx, &mut seen, "refused reload", |v| {
        v["type"] == "mesh" && v["action"] == "reload-refused"
    });
    assert!(
        refused["attributes"]["error"]
            .as_str()
            .unwrap()
            .contains("virtual-service.yaml:"),
        "{refused}"
    );
    std::fs::write(&vs, &original).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();

    // up after stop starts the stopped pods again: same containers, answering again.
    let before = container_ids(&p);
    seed.ok(&["stop", "-t", "2"]);
    let up = seed.meshctl(&["up", "-d", "--wait"]);
    assert!(up.status.success(), "{}", all_output(&up));
    assert_eq!(
        container_ids(&p),
        before,
        "up after stop recreated containers:\n{}",
        all_output(&up)
    );
    assert_eq!(first_get(seed.port).await.0, 200);

    // A service named on the command line enables its profile (compose v2): `up debug`
    // starts it, in the mesh under its own identity, which the backend's policy refuses.
    let o = seed.meshctl(&["build", "nosuch"]);
    assert_eq!(o.status.code(), Some(1), "{}", all_output(&o));
    assert!(text(&o.stderr).contains("nosuch"), "{}", all_output(&o));
    seed.ok(&["build", "debug"]);
    seed.ok(&["up", "-d", "--wait", "debug"]);
    let services = seed.ok(&["ps", "--services"]);
    assert!(services.contains("debug"), "{services}");
    seed.ok(&["exec", "-T", "debug", "/backend", "healthcheck"]);
    let o = seed.meshctl(&[
        "exec",
        "-T",
        "debug",
        "/backend",
        "healthcheck",
        "http://backend:8080/",
    ]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "debug may not call the backend: {}",
        all_output(&o)
    );
    assert!(text(&o.stderr).contains("403"), "{}", all_output(&o));
}
