//! Lifecycle on the real engine (issue 16): apps restart per compose's `restart:` and stay in
//! the mesh; an app that keeps dying fails `up --wait` with its exit code and restart count
//! and is flagged by `ps`; the background control plane of `up -d`, killed with SIGKILL under
//! load, comes back by itself, the proxies resync (ACK in the new epoch, seen in `status`) and
//! no request fails. Skips loudly only when no engine answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod docker_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use docker_support::*;

/// Adds `line` (indented as a service key) under the service `service` of the seed copy.
fn add_to_service(seed: &Seed, service: &str, line: &str) {
    let path = seed.dir.path().join("compose.yaml");
    let head = format!("  {service}:\n");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(&head), "no service {service}");
    std::fs::write(
        &path,
        text.replacen(&head, &format!("{head}    {line}\n"), 1),
    )
    .unwrap();
}

fn row<'a>(rows: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    rows.iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no ps row {name}: {rows:?}"))
}

/// Steady load on the frontend: `loops` sequential clients, fresh connection per request.
struct Load {
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(port: u16, loops: usize) -> Load {
        let sent = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..loops)
            .map(|_| {
                let (sent, failed, stop) = (sent.clone(), failed.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut failures = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let r = get(port, "/").await;
                        sent.fetch_add(1, Ordering::Relaxed);
                        if !matches!(&r, Ok((200, _, body)) if body == "Frontend says: Hello from Backend!")
                        {
                            failed.fetch_add(1, Ordering::Relaxed);
                            failures.push(format!("{r:?}"));
                        }
                    }
                    failures
                })
            })
            .collect();
        Load {
            sent,
            failed,
            stop,
            tasks,
        }
    }

    /// Stops the clients; returns (sent, failed, the failures).
    async fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = Vec::new();
        for t in self.tasks {
            failures.extend(t.await.unwrap());
        }
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            failures,
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_app_is_restarted_by_its_policy_and_serves_through_the_mesh_again() {
    if !docker_available() {
        return;
    }
    let seed = Seed::new("lr");
    add_to_service(&seed, "backend-v1", "restart: always");
    seed.ok(&["up", "-d", "--wait", "--build"]);
    let (status, _, _) = first_get(seed.port).await;
    assert_eq!(status, 200);
    let app = format!("{}-backend-v1-1", seed.project);
    let pid = docker(&["inspect", "--format", "{{.State.Pid}}", &app]);

    // The app's process dies (not a `docker stop`, which a restart policy respects).
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid])
        .status()
        .unwrap();
    assert!(killed.success(), "kill -9 {pid}");

    // Docker restarts it into its sidecar's namespace: v1 answers through the mesh (STRICT
    // mTLS via both sidecars) again, so the restarted app is still behind its sidecar.
    let mut last: String;
    meshtest::assert_eventually!(
        {
            let r = get(seed.port, "/").await;
            let v1 = matches!(&r, Ok((200, Some(v), _)) if v == "v1");
            last = format!("{r:?}");
            v1 && docker(&["inspect", "--format", "{{.State.Pid}}", &app]) != pid
        },
        timeout = Duration::from_secs(60),
        "backend v1 did not serve again after its app was killed; last: {last}"
    );
    let rows = seed.ps();
    let r = row(&rows, &app);
    assert_eq!(r["restarts"], 1, "{r}");
    assert_eq!(r["state"], "running", "{r}");
    let out = seed.meshctl(&["ps"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "warning: {app} died and was restarted by its restart policy (1 restart)"
        )),
        "{err}"
    );
}

#[test]
fn an_app_that_keeps_dying_fails_up_with_its_exit_code_and_restart_count() {
    if !docker_available() {
        return;
    }
    let seed = Seed::new("ld");
    add_to_service(&seed, "backend-v2", "restart: always");
    add_to_service(&seed, "backend-v2", "command: [\"--no-such-mode\"]");
    let out = seed.meshctl(&["up", "-d", "--wait", "--build", "--wait-timeout", "300"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "up succeeded: {err}");
    let app = format!("{}-backend-v2-1", seed.project);
    // Reported as dying, not as a time-out: the exit code, the restarts and the app's lines.
    assert!(
        err.contains(&format!(
            "container {app} keeps dying: exited with code 2, restarted"
        )) && err.contains("unknown arguments [\"--no-such-mode\"]"),
        "{err}"
    );
    let rows = seed.ps();
    let r = row(&rows, &app);
    // The exit code is not asserted here: Docker clears it each time it starts the app
    // again, so `ps` shows it only between two restarts (the `up` error above names it).
    assert!(r["restarts"].as_i64().is_some_and(|n| n >= 3), "{r}");
    let out = seed.meshctl(&["ps"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("warning: {app} keeps dying: restarted ")),
        "{err}"
    );
}

fn status_json(seed: &Seed) -> Option<serde_json::Value> {
    let out = seed.meshctl(&["status", "--json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// Every proxy connected and ACKed the version the control plane holds for it.
fn all_acked(status: &serde_json::Value) -> bool {
    let proxies = status["proxies"].as_array().unwrap();
    !proxies.is_empty()
        && proxies
            .iter()
            .all(|p| p["connected"] == true && p["acked"] == p["version"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_control_plane_comes_back_by_itself_and_no_request_fails() {
    if !docker_available() {
        return;
    }
    let seed = Seed::new("lk");
    seed.ok(&["up", "-d", "--wait", "--build"]);
    let state_file = seed.dir.path().join(".mesh/controlplane.json");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    let pid = state["pid"].as_u64().unwrap().to_string();
    let before = status_json(&seed).expect("status before the kill");
    assert!(all_acked(&before), "{before}");

    let load = Load::start(seed.port, 2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t0 = Instant::now();
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid])
        .status()
        .unwrap();
    assert!(killed.success(), "kill -9 {pid}");

    // No user command: the supervisor restarts it; `status` works again and shows every
    // proxy resynced (ACK of its version) in the new epoch.
    let mut last: serde_json::Value;
    meshtest::assert_eventually!(
        {
            let seed_ref = &seed;
            let s = tokio::task::block_in_place(|| status_json(seed_ref));
            let ok = s
                .as_ref()
                .is_some_and(|s| s["epoch"] != before["epoch"] && all_acked(s));
            last = s.unwrap_or_default();
            ok
        },
        timeout = Duration::from_secs(60),
        "the control plane did not come back with every proxy resynced; last status: {last}\nlog:\n{}",
        std::fs::read_to_string(seed.dir.path().join(".mesh/controlplane.log")).unwrap_or_default()
    );
    let back = t0.elapsed();
    let new_state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    assert_ne!(new_state["pid"], state["pid"]);
    // A little more traffic on the restarted control plane's configs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (sent, failed, failures) = load.finish().await;
    eprintln!(
        "control plane back with every proxy ACKed {back:?} after kill -9; {sent} requests, {failed} failed"
    );
    assert!(sent > 0);
    assert_eq!(failed, 0, "requests failed: {failures:?}");

    // `down` stops the supervisor with its control plane.
    let supervisor = std::fs::read_to_string(seed.dir.path().join(".mesh/controlplane.supervisor"))
        .unwrap()
        .trim()
        .to_string();
    seed.ok(&["down", "-v"]);
    // Gone, or a zombie its new parent has not reaped yet.
    let alive = std::fs::read_to_string(format!("/proc/{supervisor}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false);
    assert!(!alive, "the supervisor {supervisor} outlived down");
}

/// Whether `pid` runs (not gone, not a zombie waiting for its parent).
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

fn read_trimmed(path: &std::path::Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_supervisor_is_replaced_without_restarting_the_control_plane() {
    if !docker_available() {
        return;
    }
    let seed = Seed::new("ls");
    seed.ok(&["up", "-d", "--wait", "--build"]);
    let mesh = seed.dir.path().join(".mesh");
    let log = || std::fs::read_to_string(mesh.join("controlplane.log")).unwrap_or_default();
    let cp_pid = |m: &std::path::Path| -> String {
        std::fs::read_to_string(m.join("controlplane.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .map(|s| s["pid"].to_string())
            .unwrap_or_default()
    };
    let supervisor = read_trimmed(&mesh.join("controlplane.supervisor"));
    let control_plane = cp_pid(&mesh);
    let before = status_json(&seed).expect("status before the kill");
    assert!(alive(&supervisor) && alive(&control_plane));

    // kill -9 of the supervisor: the control plane notices, starts a new supervisor that
    // adopts it; the control plane itself is not restarted (same pid, same epoch).
    let killed = std::process::Command::new("kill")
        .args(["-9", &supervisor])
        .status()
        .unwrap();
    assert!(killed.success());
    let t0 = Instant::now();
    let mut adopter: String;
    meshtest::assert_eventually!(
        {
            adopter = read_trimmed(&mesh.join("controlplane.supervisor"));
            !adopter.is_empty() && adopter != supervisor && alive(&adopter)
        },
        timeout = Duration::from_secs(20),
        "no new supervisor after kill -9 of {supervisor}; log:\n{}",
        log()
    );
    let replaced = t0.elapsed();
    let cmdline = std::fs::read_to_string(format!("/proc/{adopter}/cmdline")).unwrap();
    assert!(
        cmdline.contains("__control-plane") && cmdline.contains("--adopt"),
        "{cmdline:?}"
    );
    assert_eq!(
        cp_pid(&mesh),
        control_plane,
        "the control plane was restarted"
    );
    assert!(alive(&control_plane));
    let now = status_json(&seed).expect("status after the supervisor's kill");
    assert_eq!(now["epoch"], before["epoch"]);
    assert!(all_acked(&now), "{now}");

    // The new supervisor does a supervisor's job: kill -9 of the control plane brings a new
    // one back, with every proxy resynced, under load, no request failing.
    let load = Load::start(seed.port, 2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed = std::process::Command::new("kill")
        .args(["-9", &control_plane])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut last: serde_json::Value;
    meshtest::assert_eventually!(
        {
            let seed_ref = &seed;
            let s = tokio::task::block_in_place(|| status_json(seed_ref));
            let ok = s
                .as_ref()
                .is_some_and(|s| s["epoch"] != before["epoch"] && all_acked(s));
            last = s.unwrap_or_default();
            ok
        },
        timeout = Duration::from_secs(60),
        "the adopting supervisor did not restart the control plane; last status: {last}\nlog:\n{}",
        log()
    );
    let restarted = cp_pid(&mesh);
    assert_ne!(restarted, control_plane);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (sent, failed, failures) = load.finish().await;
    assert!(sent > 0);
    assert_eq!(failed, 0, "requests failed: {failures:?}");
    eprintln!(
        "new supervisor {replaced:?} after kill -9 of the old one; control plane restarted by it; {sent} requests, 0 failed"
    );

    // `down` stops the adopting supervisor and the control plane it started.
    seed.ok(&["down", "-v"]);
    assert!(!alive(&adopter), "the supervisor {adopter} outlived down");
    assert!(
        !alive(&restarted),
        "the control plane {restarted} outlived down"
    );
}

/// The subjects and roles of the CA certificates `status --json` shows.
fn ca_roles(status: &serde_json::Value) -> Vec<(String, String)> {
    status["caCertificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["role"].as_str().unwrap().to_string(),
                c["subject"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Whether `chain` (PEM) verifies for client use against `roots` (PEM) now.
fn verifies(chain: &str, roots: &str) -> bool {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let chain: Vec<CertificateDer> = CertificateDer::pem_slice_iter(chain.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let anchors: Vec<_> = CertificateDer::pem_slice_iter(roots.as_bytes())
        .map(|c| {
            webpki::anchor_from_trusted_cert(&c.unwrap())
                .unwrap()
                .to_owned()
        })
        .collect();
    webpki::EndEntityCert::try_from(&chain[0])
        .unwrap()
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &chain[1..],
            rustls::pki_types::UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rotation_under_load_fails_no_request_and_retires_the_old_root_everywhere() {
    if !docker_available() {
        return;
    }
    let seed = Seed::new("lo");
    seed.ok(&["up", "-d", "--wait", "--build"]);
    let mesh = seed.dir.path().join(".mesh");
    let old_root = std::fs::read_to_string(mesh.join("trust/roots.pem")).unwrap();
    let before = status_json(&seed).unwrap();
    assert_eq!(ca_roles(&before).len(), 1, "{before}");
    let sidecars: Vec<String> = before["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["identity"].as_str().unwrap().to_string())
        .collect();

    let load = Load::start(seed.port, 2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let out = seed.ok(&["ca", "rotate", "--overlap", "10s"]);
    assert!(
        out.contains("new root: ") && out.contains("old root: "),
        "{out}"
    );
    assert!(
        out.contains("3 proxy(ies) took the new trust bundle"),
        "{out}"
    );

    // During the overlap `status` and `ps` show both roots, the old one with its retirement.
    let during = status_json(&seed).unwrap();
    let roles = ca_roles(&during);
    assert_eq!(
        roles.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(),
        ["root", "retiring-root"],
        "{during}"
    );
    assert_ne!(roles[0].1, roles[1].1, "the roots share a subject");
    let retires_at = during["caCertificates"][1]["retiresAt"].as_i64().unwrap();
    let ps = seed.meshctl(&["ps"]);
    let ps_err = String::from_utf8_lossy(&ps.stderr);
    assert!(
        ps_err.contains("root rotation in progress: the old root"),
        "{ps_err}"
    );
    let text = seed.ok(&["status"]);
    assert!(
        text.contains("CA retiring-root certificate") && text.contains("trusted for"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string(mesh.join("trust/roots.pem"))
            .unwrap()
            .matches("BEGIN CERTIFICATE")
            .count(),
        2,
        "the sidecars' mounted bundle has both roots"
    );

    // After the overlap: one root, every proxy renewed after the retirement (so its bundle,
    // which comes with each certificate, is the new root alone), the CLI and the sidecars'
    // mounted bundle too.
    let mut last: serde_json::Value;
    meshtest::assert_eventually!(
        {
            let seed_ref = &seed;
            let s = tokio::task::block_in_place(|| status_json(seed_ref)).unwrap_or_default();
            let retired = s["caCertificates"].as_array().is_some_and(|c| c.len() == 1);
            let renewed = sidecars.iter().all(|id| {
                s["identities"].as_array().is_some_and(|ids| {
                    ids.iter().any(|i| {
                        i["identity"] == id.as_str()
                            && i["issuedAt"].as_i64().is_some_and(|t| t >= retires_at)
                    })
                })
            });
            last = s;
            retired && renewed && all_acked(&last)
        },
        timeout = Duration::from_secs(60),
        "the old root was not retired everywhere; last status: {last}"
    );
    let new_root = std::fs::read_to_string(mesh.join("trust/roots.pem")).unwrap();
    assert_eq!(new_root.matches("BEGIN CERTIFICATE").count(), 1);
    assert!(!old_root.contains(new_root.trim()));
    // A leaf of the new root alone (the CLI's, re-issued at the retirement) verifies with the
    // new root and not with the old one.
    let admin = std::fs::read_to_string(mesh.join("admin/cert-chain.pem")).unwrap();
    assert_eq!(admin.matches("BEGIN CERTIFICATE").count(), 1, "{admin}");
    assert!(verifies(&admin, &new_root));
    assert!(!verifies(&admin, &old_root));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (sent, failed, failures) = load.finish().await;
    assert!(sent > 0);
    assert_eq!(
        failed, 0,
        "requests failed during the rotation: {failures:?}"
    );

    // A sidecar Docker restarts now starts from the mounted bundle, not from the root in its
    // environment at creation: it gets a certificate and the frontend serves through it again.
    let name = format!("{}-backend-v1-1-proxy", seed.project);
    docker(&["restart", "-t", "2", &name]);
    meshtest::assert_eventually!(
        matches!(get(seed.port, "/").await, Ok((200, _, ref b)) if b == "Frontend says: Hello from Backend!"),
        timeout = Duration::from_secs(60),
        "the frontend does not answer after the restart of {name}"
    );
    eprintln!("root rotation: {sent} requests, 0 failed; old root retired everywhere");
}
