//! The mesh-wide `x-mesh` settings of a compose file (Istio's MeshConfig names): the path
//! normalization option is read, merged across `-f` files, refused when misspelled, and carried
//! into the compiled authorization section of every proxy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshapi::authz::PathNormalization;
use meshapi::compile::{CompileInput, DEFAULT_HOST_BASE_PORT, HostPlacement, ProxyKey};
use meshapi::compose::{ComposeFile, from_value, merge};

fn parse(yaml: &str) -> Result<ComposeFile, String> {
    let value: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
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
    let loaded = meshapi::load::load(&meshapi::load::LoadOptions::new(dir.path().to_path_buf()));
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    let mesh = loaded.mesh;
    let inv = meshapi::model::Inventory::from_compose(mesh.compose.as_ref());
    let mut vips = meshapi::dns::VipAllocator::new(meshapi::dns::VipRange::default());
    vips.sync(
        inv.services
            .iter()
            .map(|s| (s.namespace.as_str(), s.name.as_str())),
    )
    .unwrap();
    let placement = HostPlacement::new(&inv, DEFAULT_HOST_BASE_PORT);
    let input = CompileInput::new(&mesh, &inv, &vips, &placement, 1);
    let backend = meshapi::compile::compile_proxy(
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
fn a_bad_setting_is_reported_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("compose.yaml"),
        "services:\n  backend:\n    image: demo/backend\nx-mesh:\n  pathNormalization:\n    normalization: MERGE\n",
    )
    .unwrap();
    let loaded = meshapi::load::load(&meshapi::load::LoadOptions::new(dir.path().to_path_buf()));
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
