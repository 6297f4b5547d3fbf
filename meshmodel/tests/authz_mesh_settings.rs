//! The mesh-wide `x-mesh` settings of a compose file (Istio's MeshConfig names): the path
//! normalization option is read, merged across `-f` files, refused when misspelled, and carried
//! into the compiled authorization section of every proxy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshapi::authz::PathNormalization;
use meshmodel::compile::{CompileInput, DEFAULT_HOST_BASE_PORT, HostPlacement, ProxyKey};
use meshmodel::compose::{ComposeFile, from_value, merge};

fn parse(yaml: &str) -> Result<ComposeFile, String> {
    let value: meshapi::yaml::Value = meshapi::yaml::from_str(yaml).unwrap();
    from_value(value).map_err(|e| format!("{}: {}", e.path, e.message))
}

const SERVICES: &str = "services:\n  backend:\n    image: demo/backend\n    expose: [\"8080\"]\n";

#[test]
fn path_normalization_setting_reads_as_istio_names_it() {
    use PathNormalization::*;
    let cases: &[(&str, Result<PathNormalization, &str>)] = &[
        ("", Ok(Base)),
        ("x-mesh: {}\n", Ok(Base)),
        ("x-mesh: {pathNormalization: {}}\n", Ok(Base)),
        (
            "x-mesh: {pathNormalization: {normalization: NONE}}\n",
            Ok(None),
        ),
        (
            "x-mesh: {pathNormalization: {normalization: DEFAULT}}\n",
            Ok(Base),
        ),
        (
            "x-mesh: {pathNormalization: {normalization: BASE}}\n",
            Ok(Base),
        ),
        (
            "x-mesh: {pathNormalization: {normalization: MERGE_SLASHES}}\n",
            Ok(MergeSlashes),
        ),
        (
            "x-mesh: {pathNormalization: {normalization: DECODE_AND_MERGE_SLASHES}}\n",
            Ok(DecodeAndMergeSlashes),
        ),
        (
            "x-mesh: {pathNormalization: {normalization: merge_slashes}}\n",
            Err("unknown variant"),
        ),
        (
            "x-mesh: {pathNormalisation: {normalization: NONE}}\n",
            Err("unknown field `pathNormalisation`"),
        ),
        (
            "x-mesh: {pathNormalization: MERGE_SLASHES}\n",
            Err("x-mesh.pathNormalization"),
        ),
    ];
    for (top, want) in cases {
        let got = parse(&format!("{SERVICES}{top}")).map(|c| c.path_normalization());
        match (want, &got) {
            (Ok(w), Ok(g)) => assert_eq!(g, w, "{top}"),
            (Err(frag), Err(e)) => assert!(e.contains(frag), "{top}: {e}"),
            _ => panic!("{top}: want {want:?}, got {got:?}"),
        }
    }
    // Other top-level x-* keys stay free-form extensions, as compose has them.
    let c = parse(&format!("{SERVICES}x-anchors: {{a: 1}}\n")).unwrap();
    assert!(c.extensions.contains_key("x-anchors"));
}

#[test]
fn a_later_file_overrides_the_setting() {
    let base = parse(&format!(
        "{SERVICES}x-mesh: {{pathNormalization: {{normalization: MERGE_SLASHES}}}}\n"
    ))
    .unwrap();
    let unset = parse(SERVICES).unwrap();
    let over = parse("x-mesh: {pathNormalization: {normalization: NONE}}\n").unwrap();
    assert_eq!(
        merge(base.clone(), unset).path_normalization(),
        PathNormalization::MergeSlashes
    );
    assert_eq!(
        merge(base, over).path_normalization(),
        PathNormalization::None
    );
}

#[test]
fn compiled_proxies_carry_the_option() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("compose.yaml"),
        "services:\n  frontend:\n    image: demo/frontend\n    expose: [\"8080\"]\n  backend:\n    image: demo/backend\n    expose: [\"8080\"]\n\
         x-mesh:\n  pathNormalization:\n    normalization: DECODE_AND_MERGE_SLASHES\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("mesh.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-admin, namespace: default}\n\
         spec:\n  selector: {matchLabels: {app: backend}}\n  action: DENY\n  rules:\n    - to: [{operation: {paths: [\"/admin*\"]}}]\n",
    )
    .unwrap();
    let loaded =
        meshmodel::load::load(&meshmodel::load::LoadOptions::new(dir.path().to_path_buf()));
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    let mesh = loaded.mesh;
    let inv = meshmodel::model::Inventory::from_compose(mesh.compose.as_ref());
    let mut vips = meshapi::dns::VipAllocator::new(meshapi::dns::VipRange::default());
    vips.sync(
        inv.services
            .iter()
            .map(|s| (s.namespace.as_str(), s.name.as_str())),
    )
    .unwrap();
    let placement = HostPlacement::new(&inv, DEFAULT_HOST_BASE_PORT);
    let input = CompileInput::new(&mesh, &inv, &vips, &placement, 1);
    let backend = meshmodel::compile::compile_proxy(
        &input,
        &ProxyKey {
            workload: "backend".into(),
            instance: 0,
        },
    )
    .unwrap();
    let authz = backend.authorization.expect("backend has a policy");
    assert_eq!(
        authz.path_normalization,
        PathNormalization::DecodeAndMergeSlashes
    );
    assert_eq!(authz.deny[0].name, "deny-admin");
}

#[test]
fn the_option_reaches_workloads_no_policy_selects() {
    // Istio normalizes every request with the mesh's option; a workload without a policy
    // gets a section carrying the option alone. With the default (BASE) none is written: the
    // proxy's default is BASE.
    let compose = "services:\n  frontend:\n    image: demo/frontend\n    expose: [\"8080\"]\n";
    for (setting, want) in [
        ("MERGE_SLASHES", Some(PathNormalization::MergeSlashes)),
        ("NONE", Some(PathNormalization::None)),
        ("BASE", None),
    ] {
        let with =
            format!("{compose}x-mesh:\n  pathNormalization:\n    normalization: {setting}\n");
        let proxies = compile_project(&with, "", &["frontend"]);
        let section = proxies[0].authorization.as_ref();
        assert_eq!(section.map(|a| a.path_normalization), want, "{setting}");
        assert!(section.is_none_or(|a| a.is_empty()), "{setting}: no policy");
    }
    let proxies = compile_project(compose, "", &["frontend"]);
    assert!(proxies[0].authorization.is_none());
}

#[test]
fn a_bad_setting_is_reported_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("compose.yaml"),
        "services:\n  backend:\n    image: demo/backend\nx-mesh:\n  pathNormalization:\n    normalization: MERGE\n",
    )
    .unwrap();
    let loaded =
        meshmodel::load::load(&meshmodel::load::LoadOptions::new(dir.path().to_path_buf()));
    assert!(loaded.has_errors());
    let d = loaded
        .diagnostics
        .iter()
        .find(|d| d.path.contains("x-mesh"))
        .unwrap_or_else(|| panic!("{:?}", loaded.diagnostics));
    assert_eq!(d.path, "x-mesh.pathNormalization.normalization", "{d:?}");
    assert_eq!(d.location.line, 6, "{d:?}");
    assert!(d.message.contains("MERGE_SLASHES"), "{d:?}");
}

/// Loads a project directory holding `compose.yaml` and `mesh.yaml` and compiles the proxy of
/// each named workload, as the control plane does.
fn compile_project(
    compose: &str,
    policies: &str,
    workloads: &[&str],
) -> Vec<meshapi::proxy::ProxyConfig> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("compose.yaml"), compose).unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), policies).unwrap();
    let loaded =
        meshmodel::load::load(&meshmodel::load::LoadOptions::new(dir.path().to_path_buf()));
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    let mesh = loaded.mesh;
    let inv = meshmodel::model::Inventory::from_compose(mesh.compose.as_ref());
    let mut vips = meshapi::dns::VipAllocator::new(meshapi::dns::VipRange::default());
    vips.sync(
        inv.services
            .iter()
            .map(|s| (s.namespace.as_str(), s.name.as_str())),
    )
    .unwrap();
    let placement = HostPlacement::new(&inv, DEFAULT_HOST_BASE_PORT);
    let input = CompileInput::new(&mesh, &inv, &vips, &placement, 1);
    workloads
        .iter()
        .map(|w| {
            meshmodel::compile::compile_proxy(
                &input,
                &ProxyKey {
                    workload: (*w).into(),
                    instance: 0,
                },
            )
            .unwrap()
        })
        .collect()
}

/// Three workloads in three namespaces; `x-mesh` appended by each test.
const THREE: &str = concat!(
    "services:\n",
    "  frontend:\n    image: demo/frontend\n    expose: [\"8080\"]\n",
    "  backend:\n    image: demo/backend\n    expose: [\"8080\"]\n    x-mesh: {namespace: prod}\n",
    "  telemetry:\n    image: demo/telemetry\n    expose: [\"8080\"]\n",
    "    x-mesh: {namespace: istio-system}\n",
);

/// A DENY AuthorizationPolicy and a STRICT PeerAuthentication, both without a selector, in `ns`.
fn mesh_wide_policies(ns: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny-debug, namespace: {ns}}}\n\
         spec:\n  action: DENY\n  rules:\n    - to: [{{operation: {{paths: [\"/debug*\"]}}}}]\n---\n\
         apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: strict, namespace: {ns}}}\n\
         spec:\n  mtls: {{mode: STRICT}}\n"
    )
}

/// For each proxy: whether the DENY policy reached it, and its port 8080's mTLS mode.
fn scoped(configs: &[meshapi::proxy::ProxyConfig]) -> Vec<(bool, String)> {
    configs
        .iter()
        .map(|c| {
            let denied = c
                .authorization
                .as_ref()
                .is_some_and(|a| a.deny.iter().any(|p| p.name == "deny-debug"));
            let mode = c
                .inbound
                .iter()
                .find(|p| p.port == 8080)
                .map(|p| format!("{:?}", p.mode))
                .unwrap_or_default();
            (denied, mode)
        })
        .collect()
}

#[test]
fn a_custom_root_namespace_makes_its_policies_mesh_wide() {
    let all = ["frontend", "backend", "telemetry"];
    let custom = format!("{THREE}x-mesh: {{rootNamespace: mesh-config}}\n");
    // In the configured root namespace: every workload, whatever its namespace.
    let got = scoped(&compile_project(
        &custom,
        &mesh_wide_policies("mesh-config"),
        &all,
    ));
    let everywhere = vec![(true, "Strict".to_string()); 3];
    assert_eq!(got, everywhere);
    // The same files in istio-system: now an ordinary namespace, so only its own workload.
    let got = scoped(&compile_project(
        &custom,
        &mesh_wide_policies("istio-system"),
        &all,
    ));
    assert_eq!(
        got,
        vec![
            (false, "Permissive".to_string()),
            (false, "Permissive".to_string()),
            (true, "Strict".to_string()),
        ]
    );
    // Without the setting, istio-system is the root namespace, as in Istio.
    let got = scoped(&compile_project(
        THREE,
        &mesh_wide_policies("istio-system"),
        &all,
    ));
    assert_eq!(got, everywhere);
}

#[test]
fn root_namespace_and_trust_domain_settings_are_validated() {
    let cases: &[(&str, Option<&str>)] = &[
        ("x-mesh: {rootNamespace: mesh-config}\n", None),
        (
            "x-mesh: {rootNamespace: Mesh_Config}\n",
            Some("x-mesh.rootNamespace"),
        ),
        (
            "x-mesh: {trustDomain: cluster.local, trustDomainAliases: [old.example]}\n",
            None,
        ),
        // Not served yet (meshctl's CA issues in cluster.local): refused by name, not ignored.
        (
            "x-mesh: {trustDomain: example.org}\n",
            Some("x-mesh.trustDomain"),
        ),
        (
            "x-mesh: {trustDomain: \"Example Org\"}\n",
            Some("x-mesh.trustDomain"),
        ),
        (
            "x-mesh: {trustDomainAliases: [\"spiffe://old\"]}\n",
            Some("x-mesh.trustDomainAliases[0]"),
        ),
        (
            "x-mesh: {trustDomainAliases: [cluster.local]}\n",
            Some("x-mesh.trustDomainAliases[0]"),
        ),
        (
            "x-mesh: {trustDomainAliases: [a.b, a.b]}\n",
            Some("x-mesh.trustDomainAliases[1]"),
        ),
    ];
    for (top, want) in cases {
        let c = parse(&format!("{SERVICES}{top}")).unwrap();
        let errors = c.validate();
        match want {
            None => assert!(errors.is_empty(), "{top}: {errors:?}"),
            Some(path) => assert!(
                errors.iter().any(|e| e.path == *path),
                "{top}: want an error at {path}, got {errors:?}"
            ),
        }
    }
    let c = parse(&format!(
        "{SERVICES}x-mesh: {{rootNamespace: mesh-config, trustDomain: example.org, trustDomainAliases: [old.example]}}\n"
    ))
    .unwrap();
    assert_eq!(c.root_namespace(), "mesh-config");
    assert_eq!(c.trust_domain(), "example.org");
    assert_eq!(c.trust_domain_aliases(), ["old.example".to_string()]);
    let d = parse(SERVICES).unwrap();
    assert_eq!(d.root_namespace(), "istio-system");
    assert_eq!(d.trust_domain(), "cluster.local");
    // A later file overrides each setting it sets.
    let over = parse("x-mesh: {rootNamespace: other}\n").unwrap();
    let m = merge(c, over);
    assert_eq!(m.root_namespace(), "other");
    assert_eq!(m.trust_domain(), "example.org");
}

#[test]
fn a_misspelt_setting_is_refused_with_a_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("compose.yaml"),
        "services:\n  backend:\n    image: demo/backend\nx-mesh:\n  rootNamespce: mesh-config\n",
    )
    .unwrap();
    let loaded =
        meshmodel::load::load(&meshmodel::load::LoadOptions::new(dir.path().to_path_buf()));
    assert!(loaded.has_errors());
    let d = loaded
        .diagnostics
        .iter()
        .find(|d| d.message.contains("rootNamespce"))
        .unwrap_or_else(|| panic!("{:?}", loaded.diagnostics));
    assert_eq!(d.location.line, 5, "{d:?}");
    let text = format!("{} {}", d.message, d.hint.clone().unwrap_or_default());
    assert!(text.contains("rootNamespace"), "{d:?}");
}

#[test]
fn trust_domain_aliases_reach_the_compiled_principals() {
    let compose = format!("{THREE}x-mesh: {{trustDomainAliases: [old.example]}}\n");
    let policy = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: only-frontend, namespace: prod}\n\
         spec:\n  action: ALLOW\n  rules:\n    - from: [{source: {principals: [cluster.local/ns/default/sa/frontend]}}]\n";
    let backend = compile_project(&compose, policy, &["backend"]).remove(0);
    let wp = backend.authorization.expect("backend has a policy");
    let allows = |principal: &str| {
        let attrs = meshapi::authz::RequestAttributes {
            peer_principal: Some(principal),
            ..meshapi::authz::RequestAttributes::tcp("127.0.0.1".parse().unwrap(), 8080)
        };
        wp.evaluate(&attrs).allowed
    };
    assert!(allows("spiffe://cluster.local/ns/default/sa/frontend"));
    assert!(allows("spiffe://old.example/ns/default/sa/frontend"));
    assert!(!allows("spiffe://other.example/ns/default/sa/frontend"));
    assert!(!allows("spiffe://old.example/ns/default/sa/backend"));
}

/// `meshctl check`'s codes for a project.
fn check_codes(compose: &str, policies: &str) -> Vec<&'static str> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("compose.yaml"), compose).unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), policies).unwrap();
    let loaded =
        meshmodel::load::load(&meshmodel::load::LoadOptions::new(dir.path().to_path_buf()));
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    meshmodel::check::analyze(&loaded.mesh)
        .iter()
        .map(|d| d.code)
        .collect()
}

#[test]
fn check_scopes_by_the_configured_root_namespace_and_knows_aliased_principals() {
    // A mesh-wide STRICT policy while a DestinationRule tells callers of backend (in prod)
    // to send plaintext: an error only where the policy is mesh-wide.
    let strict_with_plaintext = |ns: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: strict, namespace: {ns}}}\n\
             spec:\n  mtls: {{mode: STRICT}}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: backend, namespace: prod}}\n\
             spec:\n  host: backend\n  trafficPolicy:\n    tls: {{mode: DISABLE}}\n"
        )
    };
    let custom = format!("{THREE}x-mesh: {{rootNamespace: mesh-config}}\n");
    assert!(check_codes(&custom, &strict_with_plaintext("mesh-config")).contains(&"MESH0204"));
    assert!(!check_codes(&custom, &strict_with_plaintext("istio-system")).contains(&"MESH0204"));
    assert!(check_codes(THREE, &strict_with_plaintext("istio-system")).contains(&"MESH0204"));

    // A principal in an alias trust domain names a known workload.
    let aliased = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: prod}\n\
         spec:\n  rules:\n    - from: [{source: {principals: [old.example/ns/default/sa/frontend]}}]\n";
    assert!(check_codes(THREE, aliased).contains(&"MESH0201"));
    let with_alias = format!("{THREE}x-mesh: {{trustDomainAliases: [old.example]}}\n");
    assert!(!check_codes(&with_alias, aliased).contains(&"MESH0201"));
}

#[test]
fn certificate_lifetime_is_read_merged_and_bounded() {
    use std::time::Duration;
    let cases: &[(&str, Result<Option<Duration>, &str>)] = &[
        ("", Ok(None)),
        (
            "x-mesh: {certificateLifetime: 24h}\n",
            Ok(Some(Duration::from_secs(86400))),
        ),
        (
            "x-mesh: {certificateLifetime: 1m}\n",
            Ok(Some(Duration::from_secs(60))),
        ),
        (
            "x-mesh: {certificateLifetime: 1h30m}\n",
            Ok(Some(Duration::from_secs(5400))),
        ),
        (
            "x-mesh: {certificateLifetime: 2160h}\n",
            Ok(Some(Duration::from_secs(90 * 86400))),
        ),
        // Parsed, then refused by validation.
        (
            "x-mesh: {certificateLifetime: 59s}\n",
            Err("shorter than the minimum"),
        ),
        (
            "x-mesh: {certificateLifetime: 2161h}\n",
            Err("longer than the maximum"),
        ),
        (
            "x-mesh: {certificateLifetime: 0}\n",
            Err("shorter than the minimum"),
        ),
    ];
    for (top, want) in cases {
        let c = parse(&format!("{SERVICES}{top}")).unwrap();
        let errors = c.validate();
        match want {
            Ok(d) => {
                assert!(errors.is_empty(), "{top}: {errors:?}");
                assert_eq!(c.certificate_lifetime(), *d, "{top}");
            }
            Err(frag) => assert!(
                errors
                    .iter()
                    .any(|e| e.path == "x-mesh.certificateLifetime" && e.message.contains(frag)),
                "{top}: want {frag:?}, got {errors:?}"
            ),
        }
    }
    // Not a duration at all: refused while typing, at the field.
    for bad in ["1 day", "24", "-1h", "[24h]"] {
        let e = parse(&format!(
            "{SERVICES}x-mesh: {{certificateLifetime: {bad}}}\n"
        ))
        .unwrap_err();
        assert!(e.contains("x-mesh.certificateLifetime"), "{bad}: {e}");
    }
    // A later file overrides it; one that does not set it keeps it.
    let base = parse(&format!("{SERVICES}x-mesh: {{certificateLifetime: 2h}}\n")).unwrap();
    let unset = parse("x-mesh: {rootNamespace: other}\n").unwrap();
    let over = parse("x-mesh: {certificateLifetime: 10m}\n").unwrap();
    let kept = merge(base.clone(), unset);
    assert_eq!(kept.certificate_lifetime(), Some(Duration::from_secs(7200)));
    assert_eq!(
        merge(kept, over).certificate_lifetime(),
        Some(Duration::from_secs(600))
    );
}

#[test]
fn a_bad_certificate_lifetime_is_reported_at_its_line_and_a_typo_gets_a_suggestion() {
    let load = |compose: &str| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("compose.yaml"), compose).unwrap();
        meshmodel::load::load(&meshmodel::load::LoadOptions::new(dir.path().to_path_buf()))
    };
    for (value, frag) in [("30s", "minimum"), ("soon", "invalid duration")] {
        let loaded = load(&format!(
            "services:\n  backend:\n    image: demo/backend\nx-mesh:\n  certificateLifetime: {value}\n"
        ));
        assert!(loaded.has_errors(), "{value}");
        let d = loaded
            .diagnostics
            .iter()
            .find(|d| d.path == "x-mesh.certificateLifetime")
            .unwrap_or_else(|| panic!("{value}: {:?}", loaded.diagnostics));
        assert_eq!(d.location.line, 5, "{d:?}");
        assert!(d.location.column >= 3, "{d:?}");
        assert!(d.message.contains(frag), "{d:?}");
    }
    let loaded =
        load("services:\n  backend:\n    image: demo/backend\nx-mesh:\n  certificateLifetme: 1h\n");
    assert!(loaded.has_errors());
    let d = loaded
        .diagnostics
        .iter()
        .find(|d| d.message.contains("certificateLifetme"))
        .unwrap_or_else(|| panic!("{:?}", loaded.diagnostics));
    assert_eq!(d.location.line, 5, "{d:?}");
    let text = format!("{} {}", d.message, d.hint.clone().unwrap_or_default());
    assert!(text.contains("certificateLifetime"), "{d:?}");
}
