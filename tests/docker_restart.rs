//! Pods that Docker restarts, on the real engine (issue 7): a sidecar restarted with `docker
//! restart` gets its certificate again with its pod token, its app is restarted into the new
//! network namespace by the background control plane, and traffic through the mesh (STRICT
//! mTLS) works again within a deadline; `up` afterwards changes nothing and `down` revokes
//! every pod token. Skips loudly only when no engine answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod docker_support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use docker_support::*;

fn started_at(container: &str) -> String {
    docker(&["inspect", "--format", "{{.State.StartedAt}}", container])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_sidecars_get_certificates_again_and_their_apps_rejoin() {
    if !docker_available() {
        return;
    }
    let seed = Seed::new("r");
    seed.ok(&["up", "-d", "--wait", "--build"]);
    let (status, _, body) = first_get(seed.port).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "Frontend says: Hello from Backend!")
    );
    let ids_before = seed
        .ps()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect::<BTreeSet<_>>();

    // Every sidecar restarts: each needs a new certificate (the key lived in its memory) and
    // each app is left in the old network namespace until it is restarted.
    let p = &seed.project;
    let apps: Vec<String> = ["frontend", "backend-v1", "backend-v2"]
        .iter()
        .map(|s| format!("{p}-{s}-1"))
        .collect();
    let app_started: Vec<String> = apps.iter().map(|a| started_at(a)).collect();
    let sidecars: Vec<String> = apps.iter().map(|a| format!("{a}-proxy")).collect();
    let t0 = Instant::now();
    let mut args = vec!["restart", "-t", "2"];
    args.extend(sidecars.iter().map(String::as_str));
    docker(&args);

    // Within a deadline the frontend answers again, from both backend versions.
    let deadline = Duration::from_secs(30);
    let mut seen = BTreeSet::new();
    let mut last = String::new();
    while seen.len() < 2 {
        match get(seed.port, "/").await {
            Ok((200, Some(v), body)) if body == "Frontend says: Hello from Backend!" => {
                seen.insert(v);
            }
            other => last = format!("{other:?}"),
        }
        assert!(
            t0.elapsed() < deadline,
            "traffic did not come back within {deadline:?} after docker restart of the sidecars (saw {seen:?}); last: {last}\ncontrol plane log:\n{}",
            std::fs::read_to_string(seed.dir.path().join(".mesh/controlplane.log"))
                .unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "traffic back {:?} after docker restart of 3 sidecars",
        t0.elapsed()
    );
    for (app, before) in apps.iter().zip(&app_started) {
        assert_ne!(
            &started_at(app),
            before,
            "{app} was not restarted into its sidecar's new namespace"
        );
    }

    // Reconcile: nothing to change, the same containers.
    seed.ok(&["up", "-d", "--wait"]);
    let ids_after = seed
        .ps()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect::<BTreeSet<_>>();
    assert_eq!(ids_before, ids_after, "up recreated containers");
    let (status, _, _) = get(seed.port, "/").await.unwrap();
    assert_eq!(status, 200);

    // down revokes every pod token with its container.
    let tokens = seed.dir.path().join(".mesh/tokens.json");
    assert!(
        std::fs::read_to_string(&tokens).unwrap().contains("holder"),
        "up issued pod tokens"
    );
    seed.ok(&["down", "-v"]);
    let text = std::fs::read_to_string(&tokens).unwrap();
    assert!(
        !text.contains("holder"),
        "pod tokens left after down: {text}"
    );
}

/// `readySinceMs` of `proxy` in `meshctl status --json`: when its current start epoch reached
/// the control plane (the proxy and its app serve).
fn ready_since_ms(seed: &Seed, proxy: &str) -> Option<u64> {
    let status: serde_json::Value = serde_json::from_str(&seed.ok(&["status", "--json"])).ok()?;
    status["proxies"]
        .as_array()?
        .iter()
        .find(|p| p["proxy"] == proxy)?["readySinceMs"]
        .as_u64()
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Issue 16: `docker restart` of backend v1's sidecar under steady load. v1 is ejected while
/// down (one failure ejects, here); its endpoint serves again within 2 s of the restarted proxy
/// reporting ready (not after the seed's 30 s ejection), and no request fails: those that
/// meet v1 down are retried on v2 by the default retry policy. (The seed's 90/10 VirtualService is removed
/// here: with one endpoint per subset no retry could go elsewhere.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_sidecar_serves_again_within_2s_of_ready_and_no_request_fails() {
    if !docker_available() {
        return;
    }
    let seed = Seed::new("e");
    std::fs::remove_file(seed.dir.path().join("mesh/virtual-service.yaml")).unwrap();
    // One failure ejects (for the seed's 30 s), so the restart surely ejects v1.
    let dr = seed.dir.path().join("mesh/destination-rule.yaml");
    let text = std::fs::read_to_string(&dr).unwrap();
    std::fs::write(
        &dr,
        text.replace("consecutive5xxErrors: 5", "consecutive5xxErrors: 1"),
    )
    .unwrap();
    seed.ok(&["up", "-d", "--wait", "--build"]);
    let v1 = "backend-v1/0";
    let ready_before = ready_since_ms(&seed, v1).expect("backend v1 reported ready after up");

    // Steady load: one request at a time, fresh connections, every outcome kept with its time.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, port) = (stop.clone(), seed.port);
        tokio::spawn(async move {
            let mut log: Vec<(u64, Result<String, String>)> = Vec::new();
            for _ in 0..100_000 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let r = match get(port, "/").await {
                    Ok((200, Some(v), _)) => Ok(v),
                    other => Err(format!("{other:?}")),
                };
                log.push((unix_ms(), r));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            log
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    let sidecar = format!("{}-backend-v1-1-proxy", seed.project);
    let restarted_at = unix_ms();
    docker(&["restart", "-t", "2", &sidecar]);
    // Bounded wait for the new epoch: proxy up, certificate, config, app rejoined and answering.
    let t0 = Instant::now();
    let mut ejected = false;
    let ready = loop {
        ejected |= ejected_now(&frontend_stats(&seed));
        if let Some(r) = ready_since_ms(&seed, v1).filter(|r| *r > ready_before.max(restarted_at)) {
            break r;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "backend v1 never reported ready again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Then load for a while more: v1 must be back long before its ejection would end.
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let log = load.await.unwrap();

    let failed: Vec<_> = log.iter().filter(|(_, r)| r.is_err()).collect();
    let back = log
        .iter()
        .find(|(t, r)| *t >= ready && r.as_deref() == Ok("v1"))
        .map(|(t, _)| t - ready);
    eprintln!(
        "{} requests, {} failed; ready {} ms after docker restart; v1 served {back:?} ms after ready",
        log.len(),
        failed.len(),
        ready - restarted_at
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        log.len()
    );
    let back = back.expect("v1 never served again after its restart");
    assert!(back < 2_000, "v1 served again {back} ms after ready");
    // v1 was ejected while down, so its return is the new epoch's doing (the ejection lasts
    // 30 s).
    assert!(
        ejected,
        "the frontend never ejected backend v1 while it was down"
    );
}

/// Whether the frontend's Prometheus text shows an ejected endpoint (or an ejection so far).
fn ejected_now(stats: &str) -> bool {
    stats
        .lines()
        .filter(|l| {
            l.starts_with("meshproxy_cluster_ejected_endpoints{")
                || l.starts_with("meshproxy_cluster_outlier_ejections_total{")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .any(|v| v > 0)
}

/// The frontend sidecar's Prometheus text, fetched inside its pod (15090 is not published).
fn frontend_stats(seed: &Seed) -> String {
    let sidecar = format!("{}-frontend-1-proxy", seed.project);
    let pid = docker(&["inspect", "--format", "{{.State.Pid}}", &sidecar]);
    let o = std::process::Command::new("nsenter")
        .args(["-t", &pid, "-n", "curl", "-sf"])
        .arg("http://127.0.0.1:15090/stats/prometheus")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}
