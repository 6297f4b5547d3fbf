//! Process services (`x-mesh.process`, issue 13) end to end, with real processes in real
//! network namespaces (root), driven through the CLI:
//! - `examples/seed-processes` (every service a process) with the Docker engine unreachable
//!   (`DOCKER_HOST` at a dead socket): `up -d --wait`, the frontend answers on its published
//!   port, the 90/10 split holds, a process with another identity gets 403 from the backend,
//!   plaintext to a backend's address from the host is refused (STRICT), `ps` and `logs` read
//!   the pods, `down` removes the namespaces and the bridge; an existing host service put in
//!   the mesh by address (`x-mesh.endpoint`) answers a process that calls it by name;
//! - a project of containers and processes: a container frontend calls a process backend over
//!   mTLS, a process calls a container by name, plaintext to the process from outside its
//!   proxy is refused, and a live AuthorizationPolicy edit denying the frontend gives 403.
//!
//! Host objects are named after the project, which starts with `h13a` (netns
//! `mesh-h13a...`, bridge `mh13a...`), and are removed by `down` (Drop guard). Skips loudly
//! without root, without the static binaries (`MESHCTL_RUNTIME_DIR`) or, for the mixed test,
//! without Docker; fails instead under `MESHCTL_REQUIRE`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod docker_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use docker_support::{Seed, docker_available, free_port, get, get_at};

/// A dead Docker socket: the processes-only project must not need the engine.
const DEAD_DOCKER: &str = "unix:///nonexistent/h13a-no-docker.sock";

/// A copy of `examples/<example>` as project `h13a<tag><pid>`, its commands run with the
/// static binaries in `DEMO_BIN` and, when given, `DOCKER_HOST` (`down -v` on drop).
fn project(example: &str, tag: &str, docker_host: Option<&str>, bin: &Path) -> Seed {
    let mut p = Seed::of(example, format!("h13a{tag}{}", std::process::id()));
    p.env.push(("DEMO_BIN".into(), bin.display().to_string()));
    if let Some(h) = docker_host {
        p.env.push(("DOCKER_HOST".into(), h.into()));
    }
    p
}

/// The address of a pod of the project, from `ps`.
fn ip_of(p: &Seed, name: &str) -> String {
    p.ps()
        .iter()
        .find(|r| r["name"] == name)
        .and_then(|r| r["ip"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no pod {name} in ps"))
}

/// The pods' state files left under `.mesh/pods/`.
fn pod_files(p: &Seed) -> Vec<String> {
    std::fs::read_dir(p.dir.path().join(".mesh/pods"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".state.json"))
                .collect()
        })
        .unwrap_or_default()
}

/// Network namespaces of the project left on the host.
fn namespaces(project: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("mesh-{project}-")))
                .collect()
        })
        .unwrap_or_default()
}

/// Root and the static binaries (meshproxy, meshdns, the demo apps), or a loud skip.
fn prerequisites() -> Option<PathBuf> {
    let root = meshctl::process::is_root();
    if meshtest::skip_unless(
        "root",
        root,
        "process pods need root (network namespaces, nftables); the process tests did not run",
    ) {
        return None;
    }
    let dir = std::env::var_os("MESHCTL_RUNTIME_DIR").map(PathBuf::from);
    let present = dir.as_ref().is_some_and(|d| {
        ["meshproxy", "meshdns", "frontend", "backend"]
            .iter()
            .all(|b| d.join(b).is_file())
    });
    if meshtest::skip_unless(
        "runtime",
        present,
        "set MESHCTL_RUNTIME_DIR to the static meshproxy, meshdns, frontend and backend",
    ) {
        return None;
    }
    dir
}

/// A host service outside the mesh (the backend binary on the host's loopback), killed on
/// drop.
struct HostService(std::process::Child);

impl Drop for HostService {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The endpoint service `legacy` (the host service above, only its proxy run by meshctl) and
/// a process calling it by name.
const LEGACY: &str = r#"
  legacy:
    x-mesh:
      endpoint: 127.0.0.1:${LEGACY_PORT}
      ports: [{port: ${LEGACY_PORT}, protocol: http}]
  legacy-caller:
    ports:
      - "${CALLER_PORT}:3000"
    environment:
      BACKEND_URL: http://legacy:${LEGACY_PORT}
    x-mesh:
      serviceAccount: legacy-caller
      ports: [{port: 3000, protocol: http}]
      process:
        command: ["${DEMO_BIN}/frontend"]
"#;

const INTRUDER: &str = r#"
  intruder:
    ports:
      - "${INTRUDER_PORT}:3000"
    environment:
      BACKEND_URL: http://backend:8080
    x-mesh:
      serviceAccount: intruder
      ports: [{port: 3000, protocol: http}]
      process:
        command: ["${DEMO_BIN}/frontend"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_of_processes_runs_with_docker_unreachable() {
    let Some(bin) = prerequisites() else { return };
    let p = project("seed-processes", "p", Some(DEAD_DOCKER), &bin);
    // A fourth process with another identity: the backend allows only frontend-sa.
    let intruder_port = free_port();
    // An existing host service put in the mesh by address (x-mesh.endpoint).
    let (legacy_port, caller_port) = (free_port(), free_port());
    let _legacy = HostService(
        Command::new(bin.join("backend"))
            .env("PORT", legacy_port.to_string())
            .env("VERSION", "legacy")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let compose = p.dir.path().join("compose.yaml");
    let text = std::fs::read_to_string(&compose).unwrap();
    std::fs::write(
        &compose,
        text + &INTRUDER.replace("${INTRUDER_PORT}", &intruder_port.to_string())
            + &LEGACY
                .replace("${LEGACY_PORT}", &legacy_port.to_string())
                .replace("${CALLER_PORT}", &caller_port.to_string()),
    )
    .unwrap();

    let t0 = Instant::now();
    p.ok(&["up", "-d", "--wait"]);
    eprintln!("up -d --wait: {:.1} s", t0.elapsed().as_secs_f64());
    assert_eq!(
        namespaces(&p.project).len(),
        6,
        "{:?}",
        namespaces(&p.project)
    );

    // --wait returned once every healthcheck passed: the first request succeeds.
    let (status, _, body) = get(p.port, "/").await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "Frontend says: Hello from Backend!")
    );

    // The seed's VirtualService: 90/10 between the two process versions.
    let (mut v1, mut v2) = (0u32, 0u32);
    for _ in 0..300 {
        let (status, version, body) = get(p.port, "/").await.unwrap();
        assert_eq!(status, 200, "{body}");
        match version.as_deref() {
            Some("v1") => v1 += 1,
            Some("v2") => v2 += 1,
            other => panic!("unexpected version {other:?}"),
        }
    }
    let share = f64::from(v2) / 300.0;
    assert!(
        (0.02..=0.25).contains(&share),
        "v2 served {v2} of 300 (v1 {v1}): not the 90/10 split"
    );

    // Another identity gets 403 from the backend's AuthorizationPolicy.
    let (status, _, body) = get(intruder_port, "/").await.unwrap();
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("403"), "{body}");

    // A process calls the existing host service by name, through both proxies.
    let (status, version, body) = get(caller_port, "/").await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "Frontend says: Hello from Backend!")
    );
    assert_eq!(version.as_deref(), Some("legacy"));

    // Plaintext from the host to a backend's own address is refused (STRICT): no HTTP answer.
    let ip = ip_of(&p, &format!("{}-backend-v1-1", p.project));
    let plain = get_at(&ip, 8080).await;
    assert!(
        plain.is_err(),
        "plaintext to {ip}:8080 got through: {plain:?}"
    );

    // A second `up` changes nothing: every pod is kept as it runs.
    let again = p.meshctl(&["up", "-d"]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{err}");
    assert!(!err.contains("Starting"), "up restarted pods: {err}");
    assert!(
        err.contains(&format!("Process {}-frontend-1  Running", p.project)),
        "{err}"
    );

    // ps and logs read the pods without an engine.
    let ps = p.ps();
    let apps: Vec<_> = ps.iter().filter(|r| r["role"] == "app").collect();
    assert_eq!(apps.len(), 6, "{ps:?}");
    for r in &apps {
        assert_eq!(r["state"], "running", "{r}");
    }
    let frontend = apps
        .iter()
        .find(|r| r["service"] == "frontend")
        .expect("frontend in ps");
    assert_eq!(
        frontend["identity"],
        "spiffe://cluster.local/ns/default/sa/frontend-sa"
    );
    assert_eq!(frontend["health"], "healthy");
    assert!(ps.iter().any(|r| r["role"] == "sidecar"), "{ps:?}");
    let logs = p.ok(&["logs", "backend-v2"]);
    assert!(logs.contains("backend v2 listening"), "{logs}");

    p.ok(&["down"]);
    assert!(
        namespaces(&p.project).is_empty(),
        "{:?}",
        namespaces(&p.project)
    );
    assert!(pod_files(&p).is_empty(), "{:?}", pod_files(&p));
    let bridges = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("m{}", &p.project[..6])))
        .collect::<Vec<_>>();
    assert!(bridges.is_empty(), "bridges left: {bridges:?}");
}

const MIXED: &str = r#"
name: mixed
services:
  frontend:
    image: meshctl-demo/frontend:latest
    ports:
      - "${FRONTEND_PORT}:3000"
    environment:
      BACKEND_URL: http://backend:8080
    x-mesh:
      serviceAccount: frontend-sa
      ports: [{port: 3000, protocol: http}]
    depends_on: [backend-v1]
  backend-v1:
    environment:
      VERSION: v1
    labels: {app: backend, version: v1}
    x-mesh:
      service: backend
      ports: [{port: 8080, protocol: http}]
      process:
        command: ["${DEMO_BIN}/backend"]
  caller:
    ports:
      - "${CALLER_PORT}:3000"
    environment:
      BACKEND_URL: http://store:8080
    x-mesh:
      serviceAccount: caller
      ports: [{port: 3000, protocol: http}]
      process:
        command: ["${DEMO_BIN}/frontend"]
  store:
    image: meshctl-demo/backend:latest
    environment:
      VERSION: store
    x-mesh:
      ports: [{port: 8080, protocol: http}]
"#;

const DENY_FRONTEND: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: backend-allow-frontend
  namespace: default
spec:
  selector:
    matchLabels:
      app: backend
  action: DENY
  rules:
    - from:
        - source:
            principals:
              - cluster.local/ns/default/sa/frontend-sa
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_and_containers_call_each_other_over_mtls() {
    let Some(bin) = prerequisites() else { return };
    if !docker_available() {
        return;
    }
    let p = project("seed", "m", None, &bin);
    let caller_port = free_port();
    std::fs::write(
        p.dir.path().join("compose.yaml"),
        MIXED.replace("${CALLER_PORT}", &caller_port.to_string()),
    )
    .unwrap();
    // The seed's STRICT PeerAuthentication and its AuthorizationPolicy (only frontend-sa may
    // call the backend); no VirtualService or DestinationRule (one backend version).
    std::fs::remove_file(p.dir.path().join("mesh/virtual-service.yaml")).unwrap();
    std::fs::remove_file(p.dir.path().join("mesh/destination-rule.yaml")).unwrap();
    p.ok(&["up", "-d", "--wait"]);

    // Container frontend -> process backend, over mTLS with the frontend's identity.
    let (status, version, body) = get(p.port, "/").await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "Frontend says: Hello from Backend!")
    );
    assert_eq!(version.as_deref(), Some("v1"));

    // Process -> container by name.
    let t0 = Instant::now();
    let (status, version, body) = loop {
        let r = get(caller_port, "/").await;
        match r {
            Ok(r) => break r,
            Err(e) if t0.elapsed() > Duration::from_secs(10) => panic!("caller: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert_eq!(
        (status, body.as_str()),
        (200, "Frontend says: Hello from Backend!")
    );
    assert_eq!(version.as_deref(), Some("store"));

    // Plaintext to the process's address from outside its proxy: refused under STRICT.
    let ip = ip_of(&p, &format!("{}-backend-v1-1", p.project));
    let plain = get_at(&ip, 8080).await;
    assert!(
        plain.is_err(),
        "plaintext to {ip}:8080 got through: {plain:?}"
    );

    // A live edit denying the frontend: 403 from the process's proxy.
    std::fs::write(
        p.dir.path().join("mesh/authorization-policy.yaml"),
        DENY_FRONTEND,
    )
    .unwrap();
    let t0 = Instant::now();
    loop {
        let (status, _, body) = get(p.port, "/").await.unwrap();
        if status == 500 && body.contains("403") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the DENY policy never applied: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    p.ok(&["down"]);
    assert!(
        namespaces(&p.project).is_empty(),
        "{:?}",
        namespaces(&p.project)
    );
}

const CRASHING: &str = r#"
name: crash
services:
  crash:
    restart: "on-failure:2"
    x-mesh:
      ports: [{port: 8080, protocol: http}]
      process:
        command: ["/bin/sh", "-c", "echo dying; exit 3"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dying_process_is_restarted_by_its_policy_then_left_exited() {
    let Some(bin) = prerequisites() else { return };
    let p = project("seed-processes", "c", Some(DEAD_DOCKER), &bin);
    std::fs::write(p.dir.path().join("compose.yaml"), CRASHING).unwrap();
    for f in ["virtual-service.yaml", "destination-rule.yaml"] {
        std::fs::remove_file(p.dir.path().join("mesh").join(f)).unwrap();
    }
    p.ok(&["up", "-d"]);
    let name = format!("{}-crash-1", p.project);
    // on-failure:2: two restarts, then it stays exited with its last code.
    let t0 = Instant::now();
    let row = loop {
        let ps: Vec<serde_json::Value> =
            serde_json::from_str(&p.ok(&["ps", "-a", "--format", "json"])).unwrap();
        let row = ps
            .into_iter()
            .find(|r| r["name"] == name.as_str())
            .expect("crash in ps -a");
        if row["state"] == "exited" && row["restarts"] == 2 {
            break row;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "never settled: {row}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(row["exitCode"], 3, "{row}");
    let logs = p.ok(&["logs", "--no-log-prefix", "crash"]);
    assert_eq!(logs.lines().filter(|l| *l == "dying").count(), 3, "{logs}");
    // Plain ps lists running apps only; the dying one is warned about.
    let out = p.meshctl(&["ps"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{name} keeps dying")), "{err}");
}
