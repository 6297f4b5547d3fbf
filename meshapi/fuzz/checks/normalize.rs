//! Fuzz path normalization against authorization: for any request path and every
//! normalization option, "the normalized path is under the DENY prefix `/admin`" and "the
//! engine denied the request" must agree; normalizing twice must change nothing (the
//! application sees exactly what was authorized); and with DECODE_AND_MERGE_SLASHES no encoded
//! slash, backslash, repeated slash or dot segment may survive.
//!
//! Shared by the fuzz target `normalize` and the regression test replaying its seeds and
//! crash inputs on stable (`tests/fuzz_regressions.rs`, `meshtest::fuzz`).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

use meshapi::authz::{
    HttpAttributes, MeshSecurity, PathNormalization, RequestAttributes, WorkloadPolicy,
    normalize_path,
};
use meshmodel::compile::authz::compile_for_workload;
use meshmodel::istio::{
    Action, AuthorizationPolicy, AuthorizationPolicySpec, Ignored, ObjectMeta, Operation, Rule,
    RuleTo,
};
use meshmodel::model::Workload;

fn ap(name: &str, action: Action, paths: &[&str]) -> AuthorizationPolicy {
    let operation = Operation {
        paths: paths.iter().map(|p| p.to_string()).collect(),
        ..Operation::default()
    };
    AuthorizationPolicy {
        api_version: "security.istio.io/v1".into(),
        kind: "AuthorizationPolicy".into(),
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..ObjectMeta::default()
        },
        spec: AuthorizationPolicySpec {
            action: Some(action),
            rules: vec![Rule {
                to: vec![RuleTo {
                    operation: Some(operation),
                }],
                ..Rule::default()
            }],
            ..AuthorizationPolicySpec::default()
        },
        status: Ignored,
    }
}

/// DENY `/admin*`; ALLOW every path through templates, so both matchers run on every input.
fn policy() -> &'static WorkloadPolicy {
    static P: OnceLock<WorkloadPolicy> = OnceLock::new();
    P.get_or_init(|| {
        let ps = [
            ap("deny-admin", Action::Deny, &["/admin*"]),
            ap("allow-rest", Action::Allow, &["/{**}", "/", "/x/{*}/y"]),
        ];
        let refs: Vec<&AuthorizationPolicy> = ps.iter().collect();
        let w = Workload {
            compose_name: "app".into(),
            service: "app".into(),
            namespace: "default".into(),
            service_account: "app".into(),
            labels: Default::default(),
            replicas: 1,
            ports: vec![80],
        };
        compile_for_workload(&refs, &w, &MeshSecurity::default()).expect("compiles")
    })
}

fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|s| s == "." || s == "..")
}

/// One input: must not panic.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let raw = if text.starts_with('/') {
        text.to_string()
    } else {
        format!("/{text}")
    };
    let wp = policy();
    for mode in [
        PathNormalization::None,
        PathNormalization::Base,
        PathNormalization::MergeSlashes,
        PathNormalization::DecodeAndMergeSlashes,
    ] {
        let Ok(n) = normalize_path(&raw, mode) else {
            continue;
        };
        let attrs = RequestAttributes {
            peer_principal: Some("cluster.local/ns/default/sa/client"),
            source_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            remote_ip: None,
            destination_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            destination_port: 80,
            sni: None,
            http: Some(HttpAttributes {
                method: "GET",
                host: "app",
                path: n.as_str(),
                headers: &(),
                auth: None,
            }),
        };
        let d = wp.evaluate(&attrs);
        let under_deny = n.path().starts_with("/admin");
        assert_eq!(
            !d.allowed && d.policy.is_some_and(|p| p.name == "deny-admin"),
            under_deny,
            "{raw:?} -> {:?} ({mode:?})",
            n.as_str()
        );
        if mode != PathNormalization::None {
            let again = normalize_path(n.as_str(), mode).expect("a normalized path normalizes");
            assert_eq!(
                again.as_str(),
                n.as_str(),
                "not idempotent: {raw:?} ({mode:?})"
            );
            assert!(
                !has_dot_segment(n.path()) && !n.path().contains('\\'),
                "{raw:?} -> {:?}",
                n.as_str()
            );
        }
        if mode == PathNormalization::DecodeAndMergeSlashes {
            let p = n.path().to_ascii_uppercase();
            assert!(
                !p.contains("%2F") && !p.contains("%5C") && !p.contains("//"),
                "{raw:?} -> {:?}",
                n.as_str()
            );
        }
    }
}
