//! Push-latency benchmark: N in-process meshproxy config clients subscribed to a real control
//! plane over real mTLS loopback connections; each iteration saves a policy file and measures
//! file save -> every proxy ACKed the new version. As a baseline in the same run it measures
//! the load + check step alone (what `meshctl check` does), which no push can beat.
//!
//! `cargo run --release -p mesh-e2e --example push_bench -- [PROXIES=100] [ITERATIONS=50]
//! [DEBOUNCE_MS=50]`; bench/push/run wraps it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use meshapi::proxy::SpiffeId;
use meshctl::api::ApiConfig;
use meshctl::controlplane::{ControlPlane, ControlPlaneConfig, ProjectSpec};
use meshproxy::ca_client::CaClient;
use meshproxy::config_client::{ConfigClient, ConfigClientSettings};
use tokio::sync::watch;

fn compose(replicas: usize) -> String {
    format!(
        r#"name: pushbench
services:
  frontend:
    image: demo/frontend
    labels: {{ app: frontend, version: v1 }}
    deploy: {{ replicas: {replicas} }}
    x-mesh:
      serviceAccount: frontend-sa
      ports: [{{ port: 3000, protocol: http }}]
  backend:
    image: demo/backend
    x-mesh:
      ports: [{{ port: 8080, protocol: http }}]
"#
    )
}

fn peer_auth(mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: default\nspec:\n  mtls:\n    mode: {mode}\n"
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn summary(name: &str, mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let (p50, p99) = (percentile(&v, 0.5), percentile(&v, 0.99));
    println!(
        "{name:<44} p50 {p50:>8.2} ms   p99 {p99:>8.2} ms   max {:>8.2} ms   (n={})",
        v.last().copied().unwrap_or(f64::NAN),
        v.len()
    );
    (p50, p99)
}

fn load_check(dir: &Path) -> f64 {
    let t = Instant::now();
    let loaded = meshmodel::load::load(&meshmodel::load::LoadOptions::new(dir));
    let diags = meshmodel::check::analyze(&loaded.mesh);
    assert!(!loaded.has_errors());
    std::hint::black_box(diags);
    t.elapsed().as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numeric arguments"))
        .collect();
    let proxies = args.first().copied().unwrap_or(100);
    let iterations = args.get(1).copied().unwrap_or(50);
    let debounce = Duration::from_millis(args.get(2).copied().unwrap_or(50) as u64);

    let dir = tempfile::tempdir().unwrap();
    let pa = dir.path().join("mesh/peer-authentication.yaml");
    std::fs::write(dir.path().join("compose.yaml"), compose(proxies)).unwrap();
    std::fs::create_dir(dir.path().join("mesh")).unwrap();
    std::fs::write(&pa, peer_auth("STRICT")).unwrap();

    let cp = ControlPlane::start(ControlPlaneConfig {
        project: ProjectSpec {
            working_dir: dir.path().to_path_buf(),
            ..ProjectSpec::default()
        },
        api: ApiConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            ..ApiConfig::default()
        },
        debounce,
        ..ControlPlaneConfig::default()
    })
    .await
    .unwrap();
    let addr = cp.local_addr().to_string();
    let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/frontend-sa"
        .parse()
        .unwrap();
    let token = cp.ca().issue_token(&id).unwrap();
    let creds = CaClient::new(&addr, Some(token.as_str().into()), id, &cp.ca().root_pem())
        .unwrap()
        .fetch(None)
        .await
        .unwrap();
    let (_creds_tx, creds_rx) = watch::channel(creds);
    let (_stop, stop_rx) = watch::channel(false);
    let mut receivers = Vec::new();
    for i in 0..proxies {
        let settings = ConfigClientSettings::new(&addr, "frontend", i as u32);
        let client = ConfigClient::new(settings, &cp.ca().root_pem(), "cluster.local").unwrap();
        let (first, client) = client.first(&creds_rx).await.unwrap();
        let (tx, rx) = watch::channel(first);
        receivers.push(rx);
        tokio::spawn(client.run(creds_rx.clone(), tx, stop_rx.clone()));
    }
    let push = cp.push_state().clone();
    let r = push.wait_acks(1, Duration::from_secs(30)).await;
    assert_eq!(r.acked.len(), proxies, "{r:?}");
    println!(
        "{proxies} proxies connected over mTLS to {addr}; debounce {} ms; {iterations} iterations",
        debounce.as_millis()
    );

    let mut push_ms = Vec::new();
    let mut publish_ms = Vec::new();
    let mut reload_ms = Vec::new();
    let mut baseline = Vec::new();
    let mut snapshots = push.subscribe();
    for i in 0..iterations {
        let expected = push.revision() + 1;
        let mode = if i % 2 == 0 { "PERMISSIVE" } else { "STRICT" };
        let t0 = Instant::now();
        std::fs::write(&pa, peer_auth(mode)).unwrap();
        while snapshots.borrow_and_update().revision < expected {
            tokio::time::timeout(Duration::from_secs(10), snapshots.changed())
                .await
                .expect("no new revision within 10 s")
                .unwrap();
        }
        let published = t0.elapsed().as_secs_f64() * 1000.0;
        let acks = push.wait_acks(expected, Duration::from_secs(10)).await;
        let total = t0.elapsed().as_secs_f64() * 1000.0;
        assert!(
            acks.all_acked() && acks.acked.len() == proxies,
            "iteration {i}: {acks:?}"
        );
        push_ms.push(total);
        reload_ms.push(cp.last_reload().duration_ms - debounce.as_secs_f64() * 1000.0);
        publish_ms.push(published);
        // Let the proxies' next polls settle, then measure the baseline on the same files.
        tokio::time::sleep(Duration::from_millis(20)).await;
        baseline.push(load_check(dir.path()));
    }
    let rx = &receivers[proxies - 1];
    assert_eq!(rx.borrow().revision, push.revision());
    println!();
    let (_, p99) = summary("file save -> all proxies ACKed", push_ms);
    summary(
        "  of which: file save -> new revision published",
        publish_ms,
    );
    summary("  of which: reload after the debounce", reload_ms);
    let (b50, _) = summary("baseline: load + check alone (same files)", baseline);
    println!();
    println!(
        "goal p99 < 100 ms: {}   (p99 / debounce = {:.2}; p99 / load+check p50 = {:.1})",
        if p99 < 100.0 { "met" } else { "NOT met" },
        p99 / (debounce.as_secs_f64() * 1000.0),
        p99 / b50
    );
    cp.shutdown().await;
}
