//! Every AuthorizationPolicy of Istio's own policy-builder inputs
//! (`$MESHCTL_CONFORMANCE_DIR/istio/authz-policies`) compiles for the `httpbin` v1 workload of
//! namespace `foo` (CUSTOM is refused), and a few requests against each file get the outcome
//! Istio's generated Envoy RBAC gives them.
#![allow(clippy::unwrap_used)] // test helpers unwrap fixed inputs

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use meshapi::authz::{HttpAttributes, MeshSecurity, RequestAttributes, WorkloadPolicy};
use meshmodel::compile::authz::compile_for_workload;
use meshmodel::istio::{Action, AuthorizationPolicy, IstioResource};
use meshmodel::model::Workload;

/// The policy files; each test first checks the corpus is there (`meshtest::conformance_dir`).
fn dir() -> PathBuf {
    meshtest::conformance_dir()
        .expect("checked by the test")
        .join("authz-policies")
}

fn read(file: &str) -> Vec<AuthorizationPolicy> {
    let text = std::fs::read_to_string(dir().join(file)).unwrap();
    let mut out = Vec::new();
    for v in meshapi::yaml::documents(&text).unwrap() {
        if v.is_null() {
            continue;
        }
        let api = v["apiVersion"].as_str().unwrap().to_string();
        let kind = v["kind"].as_str().unwrap().to_string();
        match IstioResource::from_value(&api, &kind, v) {
            Ok(IstioResource::AuthorizationPolicy(p)) => out.push(p),
            other => panic!("{file}: {other:?}"),
        }
    }
    out
}

fn httpbin() -> Workload {
    Workload {
        compose_name: "httpbin".into(),
        service: "httpbin".into(),
        namespace: "foo".into(),
        service_account: "httpbin".into(),
        labels: BTreeMap::from([
            ("app".into(), "httpbin".into()),
            ("version".into(), "v1".into()),
        ]),
        replicas: 1,
        ports: vec![80],
    }
}

fn compile_with(file: &str, mesh: &MeshSecurity) -> WorkloadPolicy {
    let ps = read(file);
    let refs: Vec<&AuthorizationPolicy> = ps.iter().collect();
    compile_for_workload(&refs, &httpbin(), mesh).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn compile(file: &str) -> WorkloadPolicy {
    compile_with(file, &MeshSecurity::default())
}

/// A request: peer (SPIFFE ID or None), source IP, port, and (method, host, path, headers) for
/// HTTP or None for TCP.
#[derive(Clone, Copy)]
struct Q {
    peer: Option<&'static str>,
    src: &'static str,
    port: u16,
    http: Option<(&'static str, &'static str, &'static str)>,
    headers: &'static [(&'static str, &'static str)],
}

fn http(peer: Option<&'static str>, method: &'static str, path: &'static str) -> Q {
    Q {
        peer,
        src: "10.0.0.9",
        port: 80,
        http: Some((method, "httpbin.foo", path)),
        headers: &[],
    }
}

fn tcp(peer: Option<&'static str>, port: u16) -> Q {
    Q {
        peer,
        src: "10.0.0.9",
        port,
        http: None,
        headers: &[],
    }
}

fn allowed(wp: &WorkloadPolicy, q: Q) -> bool {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let http = q.http.map(|(method, host, path)| HttpAttributes {
        method,
        host,
        path,
        headers: &q.headers,
        auth: None,
    });
    let attrs = RequestAttributes {
        peer_principal: q.peer,
        source_ip: ip(q.src),
        remote_ip: None,
        destination_ip: ip("10.0.0.2"),
        destination_port: q.port,
        sni: None,
        http,
    };
    wp.evaluate(&attrs).allowed
}

const FOO_X: Option<&str> = Some("spiffe://cluster.local/ns/foo/sa/x");

#[test]
fn every_policy_compiles_and_custom_is_refused() {
    if meshtest::conformance_dir().is_none() {
        return;
    }
    let mut files: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert!(files.len() >= 25, "{files:?}");
    let mut compiled = 0;
    for f in &files {
        for p in read(f) {
            let custom = p.spec.action() == Action::Custom;
            let r = compile_for_workload(&[&p], &httpbin(), &MeshSecurity::default());
            match (custom, r) {
                (true, Err(e)) => assert!(e.to_string().contains("CUSTOM"), "{f}: {e}"),
                (false, Ok(_)) => compiled += 1,
                (c, r) => panic!("{f}: custom={c} but {r:?}"),
            }
        }
    }
    assert!(compiled >= 25, "{compiled}");
}

#[test]
fn outcomes_per_file() {
    if meshtest::conformance_dir().is_none() {
        return;
    }
    // (file, request, allowed)
    let cases: Vec<(&str, Q, bool)> = vec![
        (
            "http-allow-empty-rule-in.yaml",
            http(None, "GET", "/"),
            true,
        ),
        ("http-allow-empty-rule-in.yaml", tcp(None, 80), true),
        // rule[0]: serviceAccounts (TCP-capable); rule[1] needs a JWT, never matches.
        (
            "http-allow-full-rule-in.yaml",
            http(Some("spiffe://cluster.local/ns/foo/sa/sa-only"), "GET", "/"),
            true,
        ),
        (
            "http-allow-full-rule-in.yaml",
            tcp(Some("spiffe://cluster.local/ns/my-ns/sa/my-sa"), 80),
            true,
        ),
        (
            "http-allow-full-rule-in.yaml",
            http(FOO_X, "GET", "/"),
            false,
        ),
        (
            "http-allow-full-rule-in.yaml",
            http(None, "GET", "/"),
            false,
        ),
        // hosts [.., "*"] with notHosts [.., "*"]: nothing can match.
        (
            "http-allow-host-before-111-in.yaml",
            http(FOO_X, "GET", "/"),
            false,
        ),
        (
            "http-allow-nil-rule-in.yaml",
            http(FOO_X, "GET", "/"),
            false,
        ),
        ("http-allow-nil-rule-in.yaml", tcp(FOO_X, 80), false),
        (
            "http-allow-path-in.yaml",
            http(FOO_X, "GET", "/exact"),
            false,
        ),
        ("http-audit-full-rule-in.yaml", http(None, "GET", "/"), true),
        (
            "http-deny-and-allow-in.yaml",
            http(Some("allow"), "GET", "/"),
            true,
        ),
        (
            "http-deny-and-allow-in.yaml",
            http(Some("deny"), "GET", "/"),
            false,
        ),
        (
            "http-deny-and-allow-in.yaml",
            http(FOO_X, "GET", "/"),
            false,
        ),
        (
            "http-deny-empty-rule-in.yaml",
            http(FOO_X, "GET", "/"),
            false,
        ),
        ("http-deny-empty-rule-in.yaml", tcp(None, 80), false),
        (
            "http-dry-run-allow-and-deny-in.yaml",
            http(FOO_X, "GET", "/deny"),
            true,
        ),
        (
            "http-dry-run-allow-and-deny-in.yaml",
            http(FOO_X, "GET", "/other"),
            true,
        ),
        (
            "http-dry-run-allow-in.yaml",
            http(FOO_X, "GET", "/other"),
            true,
        ),
        (
            "http-dry-run-mix-in.yaml",
            http(FOO_X, "GET", "/another"),
            true,
        ),
        (
            "http-dry-run-mix-in.yaml",
            http(FOO_X, "GET", "/allow"),
            false,
        ),
        (
            "http-multiple-policies-in.yaml",
            http(None, "GET", "/x"),
            true,
        ),
        (
            "http-multiple-policies-in.yaml",
            http(None, "PUT", "/v2"),
            true,
        ),
        (
            "http-multiple-policies-in.yaml",
            Q {
                port: 8080,
                ..http(Some("principals2"), "PUT", "/x")
            },
            true,
        ),
        (
            "http-multiple-policies-in.yaml",
            Q {
                port: 8080,
                ..http(FOO_X, "PUT", "/x")
            },
            false,
        ),
        (
            "http-multiple-policies-in.yaml",
            Q {
                port: 8080,
                headers: &[("x-abc", "abc2")],
                ..http(FOO_X, "PUT", "/x")
            },
            true,
        ),
        (
            "http-multiple-policies-in.yaml",
            Q {
                port: 8080,
                http: Some(("PUT", "httpbin.org", "/x")),
                ..http(FOO_X, "PUT", "/x")
            },
            true,
        ),
        ("http-multiple-policies-in.yaml", tcp(None, 90), true),
        (
            "http-multiple-policies-in.yaml",
            Q {
                src: "5.6.7.8",
                ..tcp(None, 8080)
            },
            true,
        ),
        (
            "http-multiple-policies-in.yaml",
            tcp(Some("spiffe://cluster.local/ns/namespaces1/sa/a"), 8080),
            true,
        ),
        ("http-multiple-policies-in.yaml", tcp(FOO_X, 8080), false),
        (
            "http-simple-policy-multiple-td-aliases-in.yaml",
            http(
                Some("spiffe://cluster.local/ns/rule[0]/sa/from[0]-principal[0]"),
                "GET",
                "/",
            ),
            true,
        ),
        (
            "http-simple-policy-multiple-td-aliases-in.yaml",
            http(FOO_X, "GET", "/"),
            false,
        ),
        (
            "http-simple-policy-principal-with-wildcard-in.yaml",
            http(FOO_X, "GET", "/"),
            true,
        ),
        (
            "http-simple-policy-principal-with-wildcard-in.yaml",
            http(None, "GET", "/"),
            false,
        ),
        (
            "http-simple-policy-td-aliases-in.yaml",
            http(
                Some("spiffe://cluster.local/ns/rule[1]/sa/from[0]-principal[0]"),
                "rule[1]-to[0]-method[0]",
                "/",
            ),
            true,
        ),
        (
            "http-simple-policy-td-aliases-in.yaml",
            http(
                Some("spiffe://cluster.local/ns/rule[1]/sa/from[0]-principal[0]"),
                "GET",
                "/",
            ),
            false,
        ),
        // Every source needs a JWT request principal: nothing matches.
        (
            "http-single-policy-in.yaml",
            Q {
                src: "10.0.0.1",
                ..http(
                    Some("rule[0]-from[0]-principal[1]"),
                    "rule[0]-to[0]-method[1]",
                    "rule[0]-to[0]-path[1]",
                )
            },
            false,
        ),
        (
            "http-td-aliases-source-principal-in.yaml",
            http(
                Some("spiffe://cluster.local/ns/istio-system/sa/x"),
                "GET",
                "/",
            ),
            true,
        ),
        (
            "http-td-aliases-source-principal-in.yaml",
            http(FOO_X, "GET", "/"),
            false,
        ),
        (
            "http-td-aliases-source-principal-in.yaml",
            http(None, "GET", "/"),
            false,
        ),
        ("http-trust-domains-in.yaml", http(FOO_X, "GET", "/"), true),
        (
            "http-trust-domains-in.yaml",
            http(Some("spiffe://another.local/ns/foo/sa/x"), "GET", "/"),
            true,
        ),
        (
            "http-trust-domains-in.yaml",
            http(Some("spiffe://bad.td/ns/foo/sa/x"), "GET", "/"),
            false,
        ),
        (
            "http-trust-domains-in.yaml",
            http(Some("spiffe://untrusted/ns/foo/sa/x"), "GET", "/"),
            false,
        ),
        (
            "http-trust-domains-in.yaml",
            http(Some("spiffe://other.td/ns/foo/sa/x"), "GET", "/"),
            true,
        ),
        // Plaintext has no trust domain, so it satisfies notTrustDomains.
        ("http-trust-domains-in.yaml", http(None, "GET", "/"), true),
        (
            "tcp-allow-both-http-tcp-in.yaml",
            tcp(Some("spiffe://cluster.local/ns/ns-1/sa/a"), 80),
            true,
        ),
        (
            "tcp-allow-both-http-tcp-in.yaml",
            tcp(Some("spiffe://cluster.local/ns/ns-1/sa/a"), 8080),
            false,
        ),
        (
            "tcp-allow-both-http-tcp-in.yaml",
            Q {
                port: 8080,
                ..http(Some("spiffe://cluster.local/ns/ns-1/sa/a"), "GET", "/")
            },
            true,
        ),
        (
            "tcp-allow-both-http-tcp-in.yaml",
            tcp(Some("spiffe://cluster.local/ns/ns-2/sa/a"), 9090),
            false,
        ),
        (
            "tcp-allow-only-http-in.yaml",
            tcp(Some("spiffe://cluster.local/ns/ns-1/sa/a"), 80),
            false,
        ),
        (
            "tcp-allow-only-http-in.yaml",
            Q {
                http: Some(("GET", "example.com", "/")),
                ..http(Some("spiffe://cluster.local/ns/ns-1/sa/a"), "GET", "/")
            },
            true,
        ),
        ("tcp-audit-both-http-tcp-in.yaml", tcp(None, 80), true),
        (
            "tcp-audit-both-http-tcp-in.yaml",
            http(None, "GET", "/"),
            true,
        ),
        // rule[1] (`to: methods`) loses its HTTP part on TCP and denies every connection.
        ("tcp-deny-both-http-tcp-in.yaml", tcp(FOO_X, 8080), false),
        ("tcp-deny-both-http-tcp-in.yaml", tcp(None, 9000), false),
        (
            "tcp-deny-both-http-tcp-in.yaml",
            Q {
                port: 8080,
                ..http(Some("spiffe://cluster.local/ns/ns-2/sa/a"), "POST", "/")
            },
            true,
        ),
        (
            "tcp-deny-both-http-tcp-in.yaml",
            Q {
                port: 8080,
                ..http(FOO_X, "GET", "/")
            },
            false,
        ),
        (
            "tcp-deny-both-http-tcp-in.yaml",
            http(FOO_X, "POST", "/"),
            false,
        ),
        ("tcp-dry-run-mix-in.yaml", tcp(FOO_X, 9000), true),
        ("tcp-dry-run-mix-in.yaml", tcp(FOO_X, 80), false),
    ];
    let mut failures = Vec::new();
    for (i, (file, q, want)) in cases.iter().enumerate() {
        let wp = compile(file);
        if allowed(&wp, *q) != *want {
            failures.push(format!("case {i} ({file}): want allowed={want}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn dry_run_files_report_without_enforcing() {
    if meshtest::conformance_dir().is_none() {
        return;
    }
    let wp = compile("http-dry-run-allow-and-deny-in.yaml");
    assert!(wp.allow.is_empty() && wp.deny.is_empty());
    assert_eq!((wp.dry_run_allow.len(), wp.dry_run_deny.len()), (1, 1));
    let q = http(FOO_X, "GET", "/deny");
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let attrs = RequestAttributes {
        peer_principal: q.peer,
        source_ip: ip(q.src),
        remote_ip: None,
        destination_ip: ip("10.0.0.2"),
        destination_port: 80,
        sni: None,
        http: Some(HttpAttributes {
            method: "GET",
            host: "httpbin",
            path: "/deny",
            headers: &(),
            auth: None,
        }),
    };
    let d = wp.evaluate(&attrs);
    assert!(d.allowed);
    assert!(!d.dry_run.deny.unwrap().allowed);
    assert!(!d.dry_run.allow.unwrap().allowed);
}

#[test]
fn trust_domain_aliases_file() {
    if meshtest::conformance_dir().is_none() {
        return;
    }
    let mesh = MeshSecurity {
        trust_domain: "new-td".into(),
        trust_domain_aliases: vec!["some-td".into()],
        ..MeshSecurity::default()
    };
    let wp = compile_with("http-simple-policy-multiple-td-aliases-in.yaml", &mesh);
    let p = "ns/rule[0]/sa/from[0]-principal[0]";
    for (td, want) in [
        ("new-td", true),
        ("some-td", true),
        ("cluster.local", false),
    ] {
        let id: &'static str = Box::leak(format!("spiffe://{td}/{p}").into_boxed_str());
        assert_eq!(allowed(&wp, http(Some(id), "GET", "/")), want, "{td}");
    }
}
