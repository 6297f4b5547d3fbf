//! `meshctl check`'s mesh-wide analysis: one case per finding, each asserting the code, the
//! severity, the file position and the field path a user is pointed at.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use meshapi::diag::{Diagnostic, Severity};
use meshmodel::check::analyze;
use meshmodel::load::{LoadOptions, load};

const COMPOSE: &str = "\
services:
  frontend:
    image: f
    labels: {app: frontend}
    x-mesh: {serviceAccount: frontend-sa, ports: [{port: 3000, protocol: http}]}
  backend-v1:
    image: b
    labels: {app: backend, version: v1}
    x-mesh: {service: backend, ports: [{port: 8080, protocol: http}]}
  backend-v2:
    image: b
    labels: {app: backend, version: v2}
    x-mesh: {service: backend, ports: [{port: 8080, protocol: http}]}
";

const DR: &str = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend}
spec:
  host: backend
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
";

fn analyze_mesh(policies: &str) -> Vec<Diagnostic> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("compose.yaml"), COMPOSE).unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), policies).unwrap();
    let mut opts = LoadOptions::new(dir.path());
    opts.env = Box::new(BTreeMap::<String, String>::new());
    let loaded = load(&opts);
    assert!(
        !loaded.has_errors(),
        "load errors: {:#?}",
        loaded.diagnostics
    );
    analyze(&loaded.mesh)
}

fn vs(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: backend}}\nspec:\n  hosts: [backend]\n  http:\n{http}"
    )
}

struct Case {
    name: &'static str,
    policies: String,
    code: &'static str,
    severity: Severity,
    line: usize,
    path: &'static str,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "destination host that is no service",
            policies: vs("  - route:\n    - destination: {host: bakend}\n"),
            code: "MESH0101",
            severity: Severity::Error,
            line: 8,
            path: "spec.http[0].route[0].destination.host",
        },
        Case {
            name: "subset defined in no DestinationRule",
            policies: vs("  - route:\n    - destination: {host: backend, subset: v3}\n"),
            code: "MESH0102",
            // Istio accepts it (analyze flags it): applied, requests there get 503 NR.
            severity: Severity::Warning,
            line: 8,
            path: "spec.http[0].route[0].destination.subset",
        },
        Case {
            name: "subset whose labels select nothing",
            policies: format!(
                "{DR}  - name: v9\n    labels: {{version: v9}}\n---\n{}",
                vs("  - route:\n    - destination: {host: backend, subset: v9}\n")
            ),
            code: "MESH0103",
            severity: Severity::Warning,
            line: 12,
            path: "spec.subsets[2].labels",
        },
        Case {
            name: "match after a catch-all",
            policies: vs("  - route:\n    - destination: {host: backend}\n  - match:\n    - uri: {prefix: /api}\n    route:\n    - destination: {host: backend}\n"),
            code: "MESH0104",
            severity: Severity::Warning,
            line: 9,
            path: "spec.http[1]",
        },
        Case {
            name: "duplicate match",
            policies: vs("  - match:\n    - uri: {prefix: /api}\n    route:\n    - destination: {host: backend}\n  - match:\n    - uri: {prefix: /api}\n    route:\n    - destination: {host: frontend}\n"),
            code: "MESH0104",
            severity: Severity::Warning,
            line: 12,
            path: "spec.http[1].match[0]",
        },
        Case {
            name: "two VirtualServices for one host",
            policies: format!(
                "{}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: backend2}}\nspec:\n  hosts: [backend.default.svc.cluster.local]\n  http:\n  - route:\n    - destination: {{host: backend}}\n",
                vs("  - route:\n    - destination: {host: backend}\n")
            ),
            code: "MESH0105",
            severity: Severity::Warning,
            line: 14,
            path: "spec.hosts[0]",
        },
        Case {
            name: "two DestinationRules for one host",
            policies: format!("{DR}---\n{}", DR.replace("name: backend}", "name: backend-again}")),
            code: "MESH0106",
            severity: Severity::Warning,
            line: 16,
            path: "spec.host",
        },
        Case {
            name: "retries beyond the route timeout",
            policies: vs("  - route:\n    - destination: {host: backend}\n    timeout: 500ms\n    retries:\n      attempts: 5\n      perTryTimeout: 200ms\n"),
            code: "MESH0108",
            severity: Severity::Warning,
            line: 12,
            path: "spec.http[0].retries.perTryTimeout",
        },
        Case {
            name: "fault without percentage",
            policies: vs("  - route:\n    - destination: {host: backend}\n    fault:\n      abort:\n        httpStatus: 503\n"),
            code: "MESH0109",
            severity: Severity::Warning,
            line: 10,
            path: "spec.http[0].fault.abort",
        },
        Case {
            name: "principal naming no service account",
            policies: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec:\n  selector:\n    matchLabels: {app: backend}\n  rules:\n  - from:\n    - source:\n        principals: [cluster.local/ns/default/sa/fronend-sa]\n".into(),
            code: "MESH0201",
            severity: Severity::Warning,
            line: 10,
            path: "spec.rules[0].from[0].source.principals[0]",
        },
        Case {
            name: "namespace with no workloads",
            policies: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec:\n  rules:\n  - from:\n    - source:\n        namespaces: [prod]\n".into(),
            code: "MESH0202",
            severity: Severity::Warning,
            line: 8,
            path: "spec.rules[0].from[0].source.namespaces[0]",
        },
        Case {
            name: "selector that selects nothing",
            policies: "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec:\n  selector:\n    matchLabels: {app: backnd}\n  mtls: {mode: STRICT}\n".into(),
            code: "MESH0203",
            severity: Severity::Warning,
            line: 6,
            path: "spec.selector.matchLabels",
        },
        Case {
            name: "STRICT with callers told to send plaintext",
            policies: format!(
                "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default}}\nspec:\n  mtls: {{mode: STRICT}}\n---\n{}",
                DR.replace("  subsets:", "  trafficPolicy:\n    tls: {mode: DISABLE}\n  subsets:")
            ),
            code: "MESH0204",
            severity: Severity::Error,
            line: 5,
            path: "spec.mtls.mode",
        },
        Case {
            name: "DENY policy without rules",
            policies: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec:\n  selector:\n    matchLabels: {app: backend}\n  action: DENY\n".into(),
            code: "MESH0205",
            severity: Severity::Warning,
            line: 4,
            path: "spec.rules",
        },
    ]
}

#[test]
fn each_finding_has_code_severity_position_and_hint() {
    for case in cases() {
        let found = analyze_mesh(&case.policies);
        let d = found
            .iter()
            .find(|d| d.code == case.code)
            .unwrap_or_else(|| panic!("case {:?}: no {} in {found:#?}", case.name, case.code));
        let ctx = format!("case {:?}: {d}", case.name);
        assert_eq!(d.severity, case.severity, "{ctx}");
        assert_eq!(d.location.line, case.line, "{ctx}");
        assert_eq!(d.path, case.path, "{ctx}");
        assert!(d.hint.as_deref().is_some_and(|h| !h.is_empty()), "{ctx}");
        assert_eq!(
            found.len(),
            1,
            "case {:?}: want only {}, got {found:#?}",
            case.name,
            case.code
        );
    }
}

#[test]
fn a_sound_mesh_has_no_findings() {
    let policies = format!(
        "{DR}---\n{}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: a}}\nspec:\n  selector:\n    matchLabels: {{app: backend}}\n  rules:\n  - from:\n    - source:\n        principals: [cluster.local/ns/default/sa/frontend-sa]\n        namespaces: [default]\n",
        vs(
            "  - match:\n    - headers:\n        x-user: {exact: tester}\n    route:\n    - destination: {host: backend, subset: v2}\n  - route:\n    - destination: {host: backend, subset: v1}\n      weight: 90\n    - destination: {host: backend.default.svc.cluster.local, subset: v2}\n      weight: 10\n    retries: {attempts: 3, perTryTimeout: 100ms}\n    timeout: 500ms\n"
        )
    );
    let found = analyze_mesh(&policies);
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn the_seed_example_has_no_findings() {
    let seed = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/seed");
    let mut opts = LoadOptions::new(seed);
    opts.env = Box::new(BTreeMap::<String, String>::new());
    let loaded = load(&opts);
    assert!(loaded.diagnostics.is_empty(), "{:#?}", loaded.diagnostics);
    assert_eq!(loaded.mesh.project, "seed");
    assert_eq!(loaded.mesh.resources.len(), 4);
    let found = analyze(&loaded.mesh);
    assert!(found.is_empty(), "{found:#?}");
}
