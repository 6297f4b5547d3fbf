//! Benchmark: the per-request cost of the traffic engine.
//!
//! Run: `cargo run --release -p meshapi --example bench_routing`.
//! A VirtualService of 50 HTTP routes (header, regex path and query matches, the request under
//! test matching the last one) and a DestinationRule with least-request balancing and outlier
//! detection; each decision is `RouteTable::route` + cluster lookup + outlier-filtered endpoint
//! pick. The baseline, measured in the same run, is the same decision on a table with one
//! catch-all route (a service without a VirtualService). Prints ns per decision for both and
//! the ratio (medians of several runs).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use meshapi::traffic::{
    Balancer, EndpointState, OutlierDetector, RequestView, RouteDecision, RouteTable,
};
use meshmodel::compile::routes::compile_routes;
use meshmodel::load::{LoadOptions, load};
use meshmodel::model::Inventory;

const ROUTES: usize = 50;
const ITERS: u64 = 300_000;
const RUNS: usize = 7;
const ENDPOINTS: usize = 8;

const COMPOSE: &str = "name: bench
services:
  client:
    image: c
    labels: {app: client}
    x-mesh: {ports: [{port: 3000, protocol: http}]}
  api-v1:
    image: a
    labels: {app: api, version: v1}
    x-mesh: {service: api, ports: [{port: 8080, protocol: http}]}
  api-v2:
    image: a
    labels: {app: api, version: v2}
    x-mesh: {service: api, ports: [{port: 8080, protocol: http}]}
  plain:
    image: p
    labels: {app: plain}
    x-mesh: {ports: [{port: 8080, protocol: http}]}
";

fn policies() -> String {
    let mut vs = String::from(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: api}\nspec:\n  hosts: [api]\n  http:\n",
    );
    for i in 0..ROUTES {
        let _ = write!(
            vs,
            "  - name: r{i}\n    match:\n    - headers: {{x-tenant: {{exact: tenant-{i}}}, user-agent: {{regex: '.*Mobile.*'}}}}\n      uri: {{regex: '/api/v{i}/[a-z]+/[0-9]+'}}\n    - uri: {{prefix: /legacy/{i}/}}\n      queryParams: {{beta: {{exact: 'yes'}}}}\n    route:\n    - {{destination: {{host: api, subset: v1}}, weight: 90}}\n    - {{destination: {{host: api, subset: v2}}, weight: 10}}\n    retries: {{attempts: 3, perTryTimeout: 100ms}}\n    timeout: 500ms\n"
        );
    }
    vs.push_str(
        "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api}
spec:
  host: api
  trafficPolicy:
    loadBalancer: {simple: LEAST_REQUEST}
    outlierDetection: {consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 50}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
",
    );
    vs
}

fn compile(dir: &Path) -> RouteTable {
    std::fs::write(dir.join("compose.yaml"), COMPOSE).expect("write compose");
    std::fs::write(dir.join("mesh.yaml"), policies()).expect("write policies");
    let mut opts = LoadOptions::new(dir);
    opts.env = Box::new(BTreeMap::<String, String>::new());
    let loaded = load(&opts);
    assert!(!loaded.has_errors(), "{:#?}", loaded.diagnostics);
    let inv = Inventory::from_compose(loaded.mesh.compose.as_ref());
    let client = inv
        .workloads
        .iter()
        .find(|w| w.compose_name == "client")
        .expect("client");
    compile_routes(&loaded.mesh, &inv, client).expect("compile")
}

/// What the proxy does per request: route, find the cluster, pick an endpoint among those the
/// outlier detector has not ejected.
struct Picker {
    balancer: Balancer,
    detector: OutlierDetector,
}

fn decide(t: &RouteTable, p: &Picker, req: &RequestView<'_>, now: Duration) -> usize {
    let RouteDecision::Forward(f) = t.route(req) else {
        panic!("not forwarded")
    };
    let cluster = t
        .cluster(&f.destination.destination, req.port)
        .expect("cluster");
    let mut states = [EndpointState::default(); ENDPOINTS];
    p.detector.apply(now, &mut states);
    match p.balancer.pick(&states, None, &[], req.random) {
        meshapi::traffic::Pick::Endpoint(i) => i + cluster.port as usize,
        other => panic!("{other:?}"),
    }
}

fn measure(t: &RouteTable, p: &Picker, req: &RequestView<'_>) -> f64 {
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let start = Instant::now();
    let mut acc = 0usize;
    for i in 0..ITERS {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let r = RequestView {
            random: rng,
            ..*req
        };
        acc = acc.wrapping_add(decide(black_box(t), p, &r, Duration::from_millis(i)));
    }
    black_box(acc);
    start.elapsed().as_nanos() as f64 / ITERS as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let table = compile(dir.path());
    let api = table.service("api.default.svc.cluster.local").expect("api");
    assert_eq!(api.http.len(), ROUTES);
    let cluster = &table.clusters[0];
    let keys: Vec<String> = (0..ENDPOINTS).map(|i| format!("10.0.0.{i}:8080")).collect();
    let list: Vec<(&str, u32)> = keys.iter().map(|k| (k.as_str(), 1)).collect();
    let outlier = cluster
        .policy
        .outlier_detection
        .clone()
        .expect("outlier detection");
    let mut detector = OutlierDetector::new(outlier, ENDPOINTS);
    for _ in 0..5 {
        detector.record(3, meshapi::traffic::CallResult::Status(503), Duration::ZERO);
    }
    let picker = Picker {
        balancer: Balancer::new(&cluster.policy, &list),
        detector,
    };

    let last = ROUTES - 1;
    let tenant = format!("tenant-{last}");
    let path = format!("/api/v{last}/orders/12345");
    let headers = [
        ("x-tenant", tenant.as_str()),
        ("user-agent", "Mozilla/5.0 (iPhone) Mobile Safari"),
        ("accept", "application/json"),
    ];
    let req = RequestView {
        host: "api.default.svc.cluster.local",
        port: 8080,
        method: "GET",
        scheme: "http",
        authority: "api:8080",
        path: &path,
        query: "page=2",
        headers: &headers,
        random: 0,
    };
    let RouteDecision::Forward(f) = table.route(&req) else {
        panic!("bench request must be forwarded")
    };
    assert_eq!(
        f.rule.name.as_deref(),
        Some(tenant.replace("tenant-", "r").as_str())
    );
    let base_req = RequestView {
        host: "plain.default.svc.cluster.local",
        ..req
    };

    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        base.push(measure(&table, &picker, &base_req));
        ours.push(measure(&table, &picker, &req));
    }
    let (o, b) = (median(ours), median(base));
    println!(
        "routing decision, {ROUTES} routes (match on the last), LEAST_REQUEST + outlier detection:"
    );
    println!("  50-route VirtualService: {o:8.1} ns/decision");
    println!("  catch-all baseline:      {b:8.1} ns/decision");
    println!("  ratio:                   {:8.2}x", o / b);
}
