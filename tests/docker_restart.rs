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
