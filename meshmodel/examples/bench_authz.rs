//! Benchmark: authorization decisions for one workload with 200 AuthorizationPolicies of mixed
//! shapes (principals, namespaces, service accounts, IP blocks, ports, methods + paths, path
//! templates, headers, DENY rules, AUDIT and dry-run), against a mix of HTTP requests and TCP
//! connections.
//!
//! Run: `cargo run --release -p meshapi --example bench_authz`.
//! Prints ns per decision with the 200 policies and, measured in the same run as a baseline,
//! with an empty policy set; plus the cost of path normalization (clean and dirty paths) and of
//! compiling the 200 policies.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use meshapi::authz::{
    HttpAttributes, MeshSecurity, PathNormalization, RequestAttributes, WorkloadPolicy,
    normalize_path,
};
use meshmodel::compile::authz::compile_for_workload;
use meshmodel::istio::{AuthorizationPolicy, IstioResource};
use meshmodel::model::Workload;

const POLICIES: usize = 200;
const ROUNDS: usize = 200_000;

fn policy_yaml(i: usize) -> String {
    let head = |action: &str, extra: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p{i}, namespace: default{extra}}}\nspec:\n  selector: {{matchLabels: {{app: backend}}}}\n  action: {action}\n  rules:\n"
        )
    };
    let mut s = String::new();
    match i % 10 {
        0 => {
            s += &head("ALLOW", "");
            let _ = writeln!(
                s,
                "  - from: [{{source: {{principals: [\"cluster.local/ns/ns{i}/sa/sa{i}\", \"cluster.local/ns/ns{i}/sa/other*\"]}}}}]"
            );
        }
        1 => {
            s += &head("ALLOW", "");
            let _ = writeln!(
                s,
                "  - from: [{{source: {{namespaces: [\"team{i}-*\"]}}}}]\n    to: [{{operation: {{methods: [\"GET\", \"HEAD\"]}}}}]"
            );
        }
        2 => {
            s += &head("ALLOW", "");
            let _ = writeln!(
                s,
                "  - from: [{{source: {{serviceAccounts: [\"ns{i}/sa{i}\"]}}}}]"
            );
        }
        3 => {
            s += &head("ALLOW", "");
            let _ = writeln!(
                s,
                "  - from: [{{source: {{ipBlocks: [\"10.{}.0.0/16\"]}}}}]\n    to: [{{operation: {{ports: [\"{}\"]}}}}]",
                i % 250,
                9000 + i
            );
        }
        4 => {
            s += &head("ALLOW", "");
            let _ = writeln!(
                s,
                "  - to: [{{operation: {{methods: [\"POST\"], paths: [\"/api/v{i}/*\", \"/api/v{i}\"]}}}}]"
            );
        }
        5 => {
            s += &head("ALLOW", "");
            let _ = writeln!(
                s,
                "  - to: [{{operation: {{paths: [\"/users/{{*}}/items{i}/{{**}}\"]}}}}]"
            );
        }
        6 => {
            s += &head("ALLOW", "");
            let _ = writeln!(
                s,
                "  - when: [{{key: \"request.headers[x-tenant]\", values: [\"tenant{i}\", \"t{i}-*\"]}}]"
            );
        }
        7 => {
            s += &head("DENY", "");
            let _ = writeln!(
                s,
                "  - to: [{{operation: {{paths: [\"/internal{i}*\"]}}}}]\n  - from: [{{source: {{notNamespaces: [\"default\", \"ns{i}\", \"team*\"]}}}}]\n    to: [{{operation: {{ports: [\"{}\"]}}}}]",
                7000 + i
            );
        }
        8 => {
            s += &head("AUDIT", "");
            let _ = writeln!(s, "  - to: [{{operation: {{paths: [\"/audit{i}/*\"]}}}}]");
        }
        _ => {
            s += &head("DENY", ", annotations: {istio.io/dry-run: \"true\"}");
            let _ = writeln!(
                s,
                "  - from: [{{source: {{principals: [\"cluster.local/ns/shadow{i}/sa/*\"]}}}}]"
            );
        }
    }
    s
}

/// The user's policy: only the frontend (the proxy benchmark's client identity) may call.
const ALLOW_FRONTEND: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-frontend, namespace: default}\nspec:\n  selector: {matchLabels: {app: backend}}\n  action: ALLOW\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/default/sa/frontend]}}]\n";

fn compile(n: usize) -> (WorkloadPolicy, Duration) {
    compile_docs((0..n).map(policy_yaml).collect())
}

fn compile_docs(yamls: Vec<String>) -> (WorkloadPolicy, Duration) {
    let docs: Vec<AuthorizationPolicy> = yamls
        .iter()
        .enumerate()
        .map(|(i, y)| {
            let v: meshapi::yaml::Value = meshapi::yaml::from_str(y).expect("yaml");
            match IstioResource::from_value("security.istio.io/v1", "AuthorizationPolicy", v) {
                Ok(IstioResource::AuthorizationPolicy(p)) => p,
                other => panic!("policy {i}: {other:?}"),
            }
        })
        .collect();
    let refs: Vec<&AuthorizationPolicy> = docs.iter().collect();
    let w = Workload {
        compose_name: "backend".into(),
        service: "backend".into(),
        namespace: "default".into(),
        service_account: "backend".into(),
        labels: BTreeMap::from([("app".into(), "backend".into())]),
        replicas: 1,
        ports: vec![8080],
    };
    let start = Instant::now();
    let wp = compile_for_workload(&refs, &w, &MeshSecurity::default()).expect("compiles");
    (wp, start.elapsed())
}

struct Req {
    peer: Option<&'static str>,
    src: IpAddr,
    port: u16,
    http: Option<(&'static str, &'static str)>,
    headers: &'static [(&'static str, &'static str)],
}

fn requests() -> Vec<Req> {
    let ip = |a, b| IpAddr::V4(Ipv4Addr::new(10, a, b, 7));
    vec![
        // Allowed by the last principal policy: scans most ALLOW policies.
        Req {
            peer: Some("spiffe://cluster.local/ns/ns190/sa/sa190"),
            src: ip(1, 1),
            port: 8080,
            http: Some(("GET", "/")),
            headers: &[],
        },
        // Matches nothing: denied after scanning everything.
        Req {
            peer: Some("spiffe://cluster.local/ns/default/sa/frontend"),
            src: ip(99, 1),
            port: 8080,
            http: Some(("PUT", "/nothing/here")),
            headers: &[],
        },
        // Header policy.
        Req {
            peer: Some("spiffe://cluster.local/ns/default/sa/frontend"),
            src: ip(99, 1),
            port: 8080,
            http: Some(("GET", "/x")),
            headers: &[("x-tenant", "t106-eu")],
        },
        // Path template.
        Req {
            peer: Some("spiffe://cluster.local/ns/default/sa/frontend"),
            src: ip(99, 1),
            port: 8080,
            http: Some(("GET", "/users/42/items55/a/b")),
            headers: &[],
        },
        // Denied by a DENY path early.
        Req {
            peer: Some("spiffe://cluster.local/ns/default/sa/frontend"),
            src: ip(99, 1),
            port: 8080,
            http: Some(("GET", "/internal7/x")),
            headers: &[],
        },
        // TCP connections.
        Req {
            peer: Some("spiffe://cluster.local/ns/team11-a/sa/x"),
            src: ip(13, 1),
            port: 9013,
            http: None,
            headers: &[],
        },
        Req {
            peer: None,
            src: ip(200, 1),
            port: 8080,
            http: None,
            headers: &[],
        },
    ]
}

fn run(wp: &WorkloadPolicy, reqs: &[Req]) -> (Duration, usize) {
    let mut allowed = 0;
    let start = Instant::now();
    for round in 0..ROUNDS {
        let r = &reqs[round % reqs.len()];
        let attrs = RequestAttributes {
            peer_principal: r.peer,
            source_ip: r.src,
            remote_ip: None,
            destination_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            destination_port: r.port,
            sni: None,
            http: r.http.map(|(method, path)| HttpAttributes {
                method,
                host: "backend:8080",
                path,
                headers: &r.headers,
                auth: None,
            }),
        };
        if black_box(wp.evaluate(black_box(&attrs))).allowed {
            allowed += 1;
        }
    }
    (start.elapsed(), allowed)
}

fn ns(d: Duration, n: usize) -> f64 {
    d.as_nanos() as f64 / n as f64
}

fn main() {
    // `--proxy-config`: print the `authorization` section of a meshproxy config for the proxy
    // benchmark (`bench/run authz`): the first 199 mixed policies plus ALLOW_FRONTEND, last,
    // so the benchmark's allowed requests scan every ALLOW policy before the one that matches.
    // `--proxy-config N` prints N policies instead (N - 1 mixed ones, then ALLOW_FRONTEND).
    if std::env::args().nth(1).as_deref() == Some("--proxy-config") {
        let n: usize = std::env::args()
            .nth(2)
            .and_then(|n| n.parse().ok())
            .unwrap_or(POLICIES)
            .max(1);
        let mut yamls: Vec<String> = (0..n - 1).map(policy_yaml).collect();
        yamls.push(ALLOW_FRONTEND.to_string());
        let (wp, _) = compile_docs(yamls);
        let json = serde_json::to_string(&wp).expect("serializes");
        println!("authorization: {json}");
        return;
    }
    let (wp, compile_time) = compile(POLICIES);
    let empty = WorkloadPolicy::default();
    let reqs = requests();
    // Warm up, then take the best of 5 runs of each (interleaved, same process).
    run(&wp, &reqs);
    let mut best = (Duration::MAX, Duration::MAX);
    let mut allowed = 0;
    for _ in 0..5 {
        let (d, a) = run(&wp, &reqs);
        best.0 = best.0.min(d);
        allowed = a;
        best.1 = best.1.min(run(&empty, &reqs).0);
    }
    let with = ns(best.0, ROUNDS);
    let base = ns(best.1, ROUNDS);
    println!(
        "policies: {} (deny {}, allow {}, audit {}, dry-run deny {}), compiled in {:?}",
        POLICIES,
        wp.deny.len(),
        wp.allow.len(),
        wp.audit.len(),
        wp.dry_run_deny.len(),
        compile_time
    );
    println!(
        "requests: {} shapes, {ROUNDS} decisions per run, {allowed} allowed",
        reqs.len()
    );
    println!("evaluate, {POLICIES} policies: {with:.0} ns/decision");
    println!("evaluate, empty policy set (baseline): {base:.1} ns/decision");
    println!(
        "added per decision: {:.0} ns (ratio {:.1}x the empty set)",
        with - base,
        with / base
    );
    // Timings on a shared machine are only comparable within one run.
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!("load average during the run: {}", load.trim());
    }

    // The proxy's path (meshproxy/src/authz.rs): the connection-level conditions decided once
    // per connection (`connection_filter`), then each request on it with `evaluate_on`. The
    // policy set and request are `bench/run authz`'s: 199 mixed policies, then the "only
    // frontend" ALLOW policy, and `GET /` from the frontend with wrk's headers.
    let mut yamls: Vec<String> = (0..POLICIES - 1).map(policy_yaml).collect();
    yamls.push(ALLOW_FRONTEND.to_string());
    let (proxy_wp, _) = compile_docs(yamls);
    let headers: [(&str, &str); 1] = [("host", "127.0.0.1:19002")];
    let conn = RequestAttributes {
        peer_principal: Some("spiffe://cluster.local/ns/default/sa/frontend"),
        source_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        remote_ip: None,
        destination_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        destination_port: 19080,
        sni: Some("p19080.inbound.mesh"),
        http: None,
    };
    let per_request = |wp: &WorkloadPolicy| {
        // The filter's cost per connection: the best of 5 runs of 1,000 builds.
        let mut filter_time = Duration::MAX;
        for _ in 0..5 {
            let start = Instant::now();
            for _ in 0..1_000 {
                black_box(wp.connection_filter(black_box(&conn)));
            }
            filter_time = filter_time.min(start.elapsed() / 1_000);
        }
        let filter = wp.connection_filter(&conn);
        let mut best = Duration::MAX;
        for _ in 0..5 {
            let start = Instant::now();
            for _ in 0..ROUNDS {
                let req = RequestAttributes {
                    http: Some(HttpAttributes {
                        method: "GET",
                        host: "127.0.0.1:19002",
                        path: "/",
                        headers: &headers,
                        auth: None,
                    }),
                    ..conn
                };
                let d = wp.evaluate_on(black_box(&req), &filter);
                assert!(d.allowed);
            }
            best = best.min(start.elapsed());
        }
        (ns(best, ROUNDS), filter_time, filter.len())
    };
    let (with, filter_time, left) = per_request(&proxy_wp);
    let (base, _, _) = per_request(&empty);
    println!(
        "proxy path (bench/run authz's request, allowed by the last policy): {with:.0} ns/request \
         ({left} rules left after the connection filter, built in {filter_time:?}); \
         empty set {base:.1} ns"
    );

    let paths = ["/api/v1/users/42?x=1", "/a/./b/../c//d%2e%2e/e\\f%2F"];
    for p in paths {
        let start = Instant::now();
        for _ in 0..ROUNDS {
            black_box(normalize_path(black_box(p), PathNormalization::DecodeAndMergeSlashes).ok());
        }
        println!("normalize {p:?}: {:.0} ns", ns(start.elapsed(), ROUNDS));
    }
}
