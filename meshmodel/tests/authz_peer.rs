//! PeerAuthentication resolution with Istio's precedence (workload > namespace > mesh, the oldest
//! wins a tie, UNSET inherits, PERMISSIVE when nothing is set, portLevelMtls only with a
//! selector) and the client side (auto-mTLS, DestinationRule `tls` overrides). Ends with the
//! user's example: STRICT in `default`, only frontend-sa may call backend.
#![allow(clippy::unwrap_used)] // test helpers unwrap fixed inputs

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use meshapi::authz::{ClientTls, HttpAttributes, MeshSecurity, RequestAttributes};
use meshapi::proxy::UpstreamTlsMode;
use meshmodel::compile::authz::compile_for_workload;
use meshmodel::compile::peer::{client_tls_for, client_tls_for_workload, mtls_mode_for};
use meshmodel::istio::{
    AuthorizationPolicy, ClientTlsSettings, IstioResource, MtlsMode, PeerAuthentication, TlsMode,
};
use meshmodel::model::Workload;

fn docs(yaml: &str) -> Vec<IstioResource> {
    meshapi::yaml::documents(yaml)
        .unwrap()
        .into_iter()
        .filter(|v| !v.is_null())
        .map(|v| {
            let api = v["apiVersion"].as_str().unwrap().to_string();
            let kind = v["kind"].as_str().unwrap().to_string();
            IstioResource::from_value(&api, &kind, v).unwrap()
        })
        .collect()
}

fn pas(yaml: &str) -> Vec<PeerAuthentication> {
    docs(yaml)
        .into_iter()
        .map(|r| match r {
            IstioResource::PeerAuthentication(p) => p,
            o => panic!("{o:?}"),
        })
        .collect()
}

fn workload(name: &str, ns: &str) -> Workload {
    Workload {
        compose_name: name.into(),
        service: name.into(),
        namespace: ns.into(),
        service_account: format!("{name}-sa"),
        labels: BTreeMap::from([("app".into(), name.into())]),
        replicas: 1,
        ports: vec![8080, 9090],
    }
}

fn pa(name: &str, ns: &str, created: Option<&str>, spec: &str) -> String {
    let ts = created
        .map(|t| format!(", creationTimestamp: \"{t}\""))
        .unwrap_or_default();
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}{ts}}}\nspec: {spec}\n---\n"
    )
}

fn mode(yaml: &str, w: &Workload, port: u16) -> MtlsMode {
    let ps = pas(yaml);
    let refs: Vec<&PeerAuthentication> = ps.iter().collect();
    mtls_mode_for(&refs, w, port, "istio-system")
}

#[test]
fn precedence() {
    use MtlsMode::*;
    let backend = workload("backend", "default");
    let mesh_strict = pa("mesh", "istio-system", None, "{mtls: {mode: STRICT}}");
    let ns_disable = pa("ns", "default", None, "{mtls: {mode: DISABLE}}");
    let ns_unset = pa("ns", "default", None, "{mtls: {mode: UNSET}}");
    let wl_permissive = pa(
        "wl",
        "default",
        None,
        "{selector: {matchLabels: {app: backend}}, mtls: {mode: PERMISSIVE}}",
    );
    let wl_unset_ports = pa(
        "wl",
        "default",
        None,
        "{selector: {matchLabels: {app: backend}}, portLevelMtls: {9090: {mode: DISABLE}, 8080: {mode: UNSET}}}",
    );
    let wl_other = pa(
        "other",
        "default",
        None,
        "{selector: {matchLabels: {app: frontend}}, mtls: {mode: DISABLE}}",
    );
    let other_ns = pa("x", "prod", None, "{mtls: {mode: DISABLE}}");
    let root_selector = pa(
        "root-sel",
        "istio-system",
        None,
        "{selector: {matchLabels: {app: backend}}, mtls: {mode: DISABLE}}",
    );
    let cases: Vec<(String, String, u16, MtlsMode)> = vec![
        ("nothing set".into(), String::new(), 8080, Permissive),
        ("mesh".into(), mesh_strict.clone(), 8080, Strict),
        (
            "namespace over mesh".into(),
            format!("{mesh_strict}{ns_disable}"),
            8080,
            Disable,
        ),
        (
            "namespace UNSET inherits mesh".into(),
            format!("{mesh_strict}{ns_unset}"),
            8080,
            Strict,
        ),
        (
            "workload over namespace".into(),
            format!("{ns_disable}{wl_permissive}"),
            8080,
            Permissive,
        ),
        (
            "workload UNSET inherits; port-level".into(),
            format!("{mesh_strict}{wl_unset_ports}"),
            9090,
            Disable,
        ),
        (
            "port UNSET inherits workload".into(),
            format!("{mesh_strict}{wl_unset_ports}"),
            8080,
            Strict,
        ),
        (
            "other workload's selector".into(),
            format!("{mesh_strict}{wl_other}"),
            8080,
            Strict,
        ),
        (
            "other namespace".into(),
            format!("{mesh_strict}{other_ns}"),
            8080,
            Strict,
        ),
        (
            "selector in root namespace ignored".into(),
            format!("{mesh_strict}{root_selector}"),
            8080,
            Strict,
        ),
        (
            "oldest mesh policy wins".into(),
            format!(
                "{}{}",
                pa(
                    "new",
                    "istio-system",
                    Some("2024-05-01T00:00:00Z"),
                    "{mtls: {mode: DISABLE}}"
                ),
                pa(
                    "old",
                    "istio-system",
                    Some("2023-01-01T00:00:00Z"),
                    "{mtls: {mode: STRICT}}"
                )
            ),
            8080,
            Strict,
        ),
        (
            "timestamped is older than loaded-now".into(),
            format!(
                "{}{}",
                pa("a", "default", None, "{mtls: {mode: DISABLE}}"),
                pa(
                    "b",
                    "default",
                    Some("2024-05-01T00:00:00Z"),
                    "{mtls: {mode: STRICT}}"
                )
            ),
            8080,
            Strict,
        ),
        (
            "file order breaks a tie".into(),
            format!(
                "{}{}",
                pa("a", "default", None, "{mtls: {mode: STRICT}}"),
                pa("b", "default", None, "{mtls: {mode: DISABLE}}")
            ),
            8080,
            Strict,
        ),
        (
            "oldest workload policy wins".into(),
            format!(
                "{}{}",
                pa(
                    "w1",
                    "default",
                    Some("2024-02-01T00:00:00Z"),
                    "{selector: {matchLabels: {app: backend}}, mtls: {mode: DISABLE}}"
                ),
                pa(
                    "w2",
                    "default",
                    Some("2024-01-01T00:00:00Z"),
                    "{selector: {matchLabels: {app: backend}}, mtls: {mode: STRICT}}"
                )
            ),
            8080,
            Strict,
        ),
    ];
    for (name, yaml, port, want) in cases {
        assert_eq!(mode(&yaml, &backend, port), want, "{name}");
    }
}

#[test]
fn client_side() {
    let dr = |m: TlsMode| ClientTlsSettings {
        mode: Some(m),
        sni: Some("x".into()),
        ..ClientTlsSettings::default()
    };
    assert_eq!(
        client_tls_for(Some(MtlsMode::Strict), None),
        ClientTls::istio_mutual()
    );
    assert_eq!(
        client_tls_for(Some(MtlsMode::Permissive), None),
        ClientTls::istio_mutual()
    );
    assert_eq!(
        client_tls_for(Some(MtlsMode::Disable), None),
        ClientTls::disable()
    );
    assert_eq!(client_tls_for(None, None), ClientTls::disable());
    assert_eq!(
        client_tls_for(Some(MtlsMode::Strict), Some(&dr(TlsMode::Disable))),
        ClientTls::disable()
    );
    assert_eq!(
        client_tls_for(Some(MtlsMode::Disable), Some(&dr(TlsMode::IstioMutual))),
        ClientTls::istio_mutual()
    );
    assert_eq!(
        client_tls_for(None, Some(&dr(TlsMode::Simple))),
        ClientTls {
            sni: Some("x".into()),
            ..ClientTls::of(UpstreamTlsMode::Simple)
        }
    );
    assert_eq!(
        client_tls_for(None, Some(&dr(TlsMode::Mutual))),
        ClientTls {
            sni: Some("x".into()),
            ..ClientTls::of(UpstreamTlsMode::Mutual)
        }
    );
    // A tls block without mode leaves auto-mTLS in charge.
    assert_eq!(
        client_tls_for(Some(MtlsMode::Strict), Some(&ClientTlsSettings::default())),
        ClientTls::istio_mutual()
    );
    let yaml = pa(
        "wl",
        "default",
        None,
        "{selector: {matchLabels: {app: legacy}}, portLevelMtls: {9090: {mode: DISABLE}}, mtls: {mode: STRICT}}",
    );
    let ps = pas(&yaml);
    let refs: Vec<&PeerAuthentication> = ps.iter().collect();
    let legacy = workload("legacy", "default");
    assert_eq!(
        client_tls_for_workload(&refs, &legacy, 9090, "istio-system", None),
        ClientTls::disable()
    );
    assert_eq!(
        client_tls_for_workload(&refs, &legacy, 8080, "istio-system", None),
        ClientTls::istio_mutual()
    );
}

/// The user's example: the whole namespace STRICT, only frontend-sa may call backend.
#[test]
fn users_example() {
    let yaml = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: backend-allow-frontend, namespace: default}
spec:
  selector: {matchLabels: {app: backend}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/frontend-sa"]}}]
"#;
    let all = docs(yaml);
    let aps: Vec<&AuthorizationPolicy> = all
        .iter()
        .filter_map(|r| match r {
            IstioResource::AuthorizationPolicy(p) => Some(p),
            _ => None,
        })
        .collect();
    let pas: Vec<&PeerAuthentication> = all
        .iter()
        .filter_map(|r| match r {
            IstioResource::PeerAuthentication(p) => Some(p),
            _ => None,
        })
        .collect();
    let backend = workload("backend", "default");
    assert_eq!(
        mtls_mode_for(&pas, &backend, 8080, "istio-system"),
        MtlsMode::Strict
    );
    let frontend = workload("frontend", "default");
    assert_eq!(
        client_tls_for_workload(&pas, &backend, 8080, "istio-system", None),
        ClientTls::istio_mutual()
    );
    let wp = compile_for_workload(&aps, &backend, &MeshSecurity::default()).unwrap();
    // The frontend's policy set is empty: the policy selects backend only.
    assert!(
        compile_for_workload(&aps, &frontend, &MeshSecurity::default())
            .unwrap()
            .is_empty()
    );
    let call = |peer: Option<&str>| {
        let attrs = RequestAttributes {
            peer_principal: peer,
            source_ip: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
            remote_ip: None,
            destination_ip: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
            destination_port: 8080,
            sni: None,
            http: Some(HttpAttributes {
                method: "GET",
                host: "backend:8080",
                path: "/",
                headers: &(),
                auth: None,
            }),
        };
        wp.evaluate(&attrs).allowed
    };
    assert!(call(Some(
        "spiffe://cluster.local/ns/default/sa/frontend-sa"
    )));
    for other in [
        "spiffe://cluster.local/ns/default/sa/backend-sa",
        "spiffe://cluster.local/ns/default/sa/frontend",
        "spiffe://cluster.local/ns/other/sa/frontend-sa",
        "spiffe://evil.local/ns/default/sa/frontend-sa",
    ] {
        assert!(!call(Some(other)), "{other}");
    }
    // Plaintext is refused twice over: STRICT refuses the connection, and the policy has no
    // identity to match.
    assert!(!call(None));
}
