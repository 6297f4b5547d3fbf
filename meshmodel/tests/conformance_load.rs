//! Istio's own sample, authorization-policy and analyzer-input files, loaded the way `meshctl
//! check -f DIR` loads them: the four served kinds load (or are refused by name where meshctl
//! does not serve a field yet), other kinds are reported as such, nothing panics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use meshapi::diag::Severity;
use meshmodel::istio::IstioResource;
use meshmodel::load::{LoadOptions, Loaded, load};

/// Loads each file of `dir` as a project of its own (Istio's samples reuse names across
/// files), and gathers the results. `None` (the test returns) when the corpus is not there.
fn load_dir(dir: &str) -> Option<Loaded> {
    let path = meshtest::conformance_dir()?.join(dir);
    assert!(
        path.is_dir(),
        "{} is missing from the conformance corpus",
        path.display()
    );
    let mut all = Loaded::default();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for file in files {
        let mut opts = LoadOptions::new(&path);
        opts.files = vec![file];
        opts.env = Box::new(BTreeMap::<String, String>::new());
        let loaded = load(&opts);
        all.diagnostics
            .extend(meshmodel::check::analyze(&loaded.mesh));
        all.diagnostics.extend(loaded.diagnostics);
        all.mesh.resources.extend(loaded.mesh.resources);
    }
    Some(all)
}

/// Every error is a refusal by name of something meshctl does not serve, or a duplicate name
/// across files that Istio's test inputs reuse; nothing else.
fn assert_only_known_refusals(loaded: &Loaded, allowed: &[&str]) {
    for d in loaded
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
    {
        let ok = (d.code == "MESH0005" && d.message.starts_with("not supported by meshctl"))
            || (d.code == "MESH0006" && d.message.contains("is not served by meshctl"))
            || d.code == "MESH0009"
            || allowed.iter().any(|a| d.to_string().contains(a));
        assert!(ok, "unexpected error: {d}");
    }
}

#[test]
fn samples_load() {
    let Some(loaded) = load_dir("samples") else {
        return;
    };
    assert_only_known_refusals(&loaded, &[]);
    let kinds = |f: fn(&IstioResource) -> bool| {
        loaded
            .mesh
            .resources
            .iter()
            .filter(|r| f(&r.resource))
            .count()
    };
    assert!(kinds(|r| matches!(r, IstioResource::VirtualService(_))) >= 10);
    assert!(kinds(|r| matches!(r, IstioResource::DestinationRule(_))) >= 5);
    // Gateways and Kubernetes objects are refused by name: errors, as a resource read and not
    // enforced would mislead its author.
    assert!(
        loaded
            .diagnostics
            .iter()
            .any(|d| d.code == "MESH0006" && d.severity == Severity::Error),
        "{:#?}",
        loaded.diagnostics
    );
}

#[test]
fn authorization_policies_load_and_custom_is_refused_by_name() {
    let Some(loaded) = load_dir("authz-policies") else {
        return;
    };
    assert_only_known_refusals(&loaded, &[]);
    let custom: Vec<_> = loaded
        .diagnostics
        .iter()
        .filter(|d| {
            d.location.file.to_string_lossy().contains("custom") && d.severity == Severity::Error
        })
        .collect();
    assert!(!custom.is_empty(), "CUSTOM policies must be refused");
    assert!(
        custom
            .iter()
            .all(|d| d.message.contains("CUSTOM") || d.message.contains("not supported")),
        "{custom:#?}"
    );
    let served = loaded
        .mesh
        .resources
        .iter()
        .filter(|r| matches!(r.resource, IstioResource::AuthorizationPolicy(_)))
        .count();
    assert!(
        served >= 15,
        "only {served} policies loaded: {:#?}",
        loaded.diagnostics
    );
}

#[test]
fn analyzer_inputs_load_without_panics() {
    let Some(loaded) = load_dir("analyzer-inputs") else {
        return;
    };
    // Istio's analyzer inputs are deliberately broken in places Istio's analyzers catch; for the
    // ones meshctl refuses at load time, the refusal must say what and where.
    for d in &loaded.diagnostics {
        assert!(d.location.line >= 1 && !d.message.is_empty(), "{d}");
    }
    assert!(
        loaded.mesh.resources.len() >= 20,
        "{:#?}",
        loaded.diagnostics
    );
}
