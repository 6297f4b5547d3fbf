//! Benchmark: load and check a generated mesh of 1,000 services and 3,000 resources (a
//! VirtualService, a DestinationRule and an AuthorizationPolicy per service).
//!
//! Run: `cargo run --release -p meshapi --example bench_load` (or `bench/run load`).
//! Prints the median time of `load` + `check::analyze` over several runs, the same files'
//! plain YAML parse into `meshapi::yaml::Value`s as a baseline measured in the same run, the
//! ratio, and the peak RSS of the process (VmHWM).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use meshmodel::load::{LoadOptions, load};

const SERVICES: usize = 1_000;
const RUNS: usize = 7;

fn generate(dir: &Path) {
    let mut compose = String::from("name: bench\nservices:\n");
    for i in 0..SERVICES {
        let _ = write!(
            compose,
            "  svc{i}:\n    image: bench/app:latest\n    labels:\n      app: svc{i}\n      version: v1\n    x-mesh:\n      serviceAccount: svc{i}-sa\n      ports:\n        - port: 8080\n          protocol: http\n"
        );
    }
    std::fs::write(dir.join("compose.yaml"), compose).expect("write compose");
    std::fs::create_dir_all(dir.join("mesh")).expect("mkdir");
    for chunk in 0..10 {
        let mut text = String::new();
        for i in (chunk * SERVICES / 10)..((chunk + 1) * SERVICES / 10) {
            let caller = (i + 1) % SERVICES;
            let _ = write!(
                text,
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: svc{i}\nspec:\n  hosts: [svc{i}]\n  http:\n  - match:\n    - headers:\n        x-user:\n          exact: tester\n    route:\n    - destination: {{host: svc{i}, subset: v1}}\n  - route:\n    - destination: {{host: svc{i}, subset: v1}}\n      weight: 100\n    retries: {{attempts: 3, perTryTimeout: 100ms}}\n    timeout: 500ms\n---\n\
                 apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: svc{i}\nspec:\n  host: svc{i}\n  trafficPolicy:\n    loadBalancer: {{simple: LEAST_REQUEST}}\n    outlierDetection: {{consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s}}\n  subsets:\n  - name: v1\n    labels: {{version: v1}}\n---\n\
                 apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: svc{i}\nspec:\n  selector:\n    matchLabels: {{app: svc{i}}}\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n        principals: [cluster.local/ns/default/sa/svc{caller}-sa]\n    to:\n    - operation:\n        methods: [GET]\n        paths: [/api/*]\n---\n"
            );
        }
        std::fs::write(dir.join(format!("mesh/chunk{chunk}.yaml")), text).expect("write chunk");
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    generate(dir.path());
    let files: Vec<_> = std::iter::once(dir.path().join("compose.yaml"))
        .chain((0..10).map(|c| dir.path().join(format!("mesh/chunk{c}.yaml"))))
        .collect();

    let mut baseline = Vec::new();
    let mut ours = Vec::new();
    let mut load_only = Vec::new();
    let mut findings = 0;
    let mut resources = 0;
    for _ in 0..RUNS {
        let start = Instant::now();
        for f in &files {
            let text = std::fs::read_to_string(f).expect("read");
            for v in meshapi::yaml::documents(&text).expect("yaml") {
                std::hint::black_box(v);
            }
        }
        baseline.push(start.elapsed());

        let start = Instant::now();
        let mut opts = LoadOptions::new(dir.path());
        opts.env = Box::new(BTreeMap::<String, String>::new());
        let loaded = load(&opts);
        let loaded_at = start.elapsed();
        let analysis = meshmodel::check::analyze(&loaded.mesh);
        ours.push(start.elapsed());
        load_only.push(loaded_at);
        findings = loaded.diagnostics.len() + analysis.len();
        resources = loaded.mesh.resources.len();
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics.first());
    }
    let (b, o, l) = (median(baseline), median(ours), median(load_only));
    println!("mesh: {SERVICES} services, {resources} resources, {findings} findings");
    println!(
        "plain YAML parse (baseline): {:>8.1} ms",
        b.as_secs_f64() * 1e3
    );
    println!(
        "load alone (meshctl):        {:>8.1} ms",
        l.as_secs_f64() * 1e3
    );
    println!(
        "load + check (meshctl):      {:>8.1} ms",
        o.as_secs_f64() * 1e3
    );
    println!("peak RSS: {:.1} MiB", peak_rss_mib());
    println!(
        "summary: load_check_ms={:.1} baseline_yaml_ms={:.1} ratio_vs_plain_yaml={:.2} peak_rss_mib={:.1}",
        o.as_secs_f64() * 1e3,
        b.as_secs_f64() * 1e3,
        o.as_secs_f64() / b.as_secs_f64(),
        peak_rss_mib()
    );
}
