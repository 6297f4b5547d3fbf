//! Every class of load error a person can make, asserting the code, the position, the field
//! path and the advice they are shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;

use meshapi::diag::{Diagnostic, Severity};
use meshmodel::load::{LoadOptions, Loaded, load};

fn load_files(files: &[(&str, &str)]) -> (tempfile::TempDir, Loaded) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let mut opts = LoadOptions::new(dir.path());
    opts.env = Box::new(BTreeMap::from([("TAG".to_string(), "1.2".to_string())]));
    let loaded = load(&opts);
    (dir, loaded)
}

fn only_error(loaded: &Loaded) -> &Diagnostic {
    let errors: Vec<_> = loaded
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "want exactly one error, got {:#?}",
        loaded.diagnostics
    );
    errors[0]
}

const VS_HEAD: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: backend\nspec:\n  hosts: [backend]\n  http:\n  - route:\n    - destination:\n        host: backend\n";

struct Case {
    name: &'static str,
    text: String,
    code: &'static str,
    line: usize,
    column: usize,
    path: &'static str,
    message: &'static str,
    hint: Option<&'static str>,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "misspelt field gets did-you-mean",
            text: format!("{VS_HEAD}    retires:\n      attempts: 3\n"),
            code: "MESH0003",
            line: 11,
            column: 5,
            path: "spec.http[0].retires",
            message: "unknown field `retires`",
            hint: Some("did you mean `retries`?"),
        },
        Case {
            name: "timeout under retries belongs to the route",
            text: format!("{VS_HEAD}    retries:\n      attempts: 3\n      timeout: 1s\n"),
            code: "MESH0003",
            line: 13,
            column: 7,
            path: "spec.http[0].retries.timeout",
            message: "unknown field `timeout`",
            hint: Some("belongs to the route"),
        },
        Case {
            name: "loadBalancer in a VirtualService route belongs in a DestinationRule",
            text: format!("{VS_HEAD}    loadBalancer:\n      simple: RANDOM\n"),
            code: "MESH0003",
            line: 11,
            column: 5,
            path: "spec.http[0].loadBalancer",
            message: "unknown field `loadBalancer`",
            hint: Some("DestinationRule's `trafficPolicy`"),
        },
        Case {
            name: "bad duration",
            text: format!("{VS_HEAD}    timeout: 5 seconds\n"),
            code: "MESH0004",
            line: 11,
            column: 5,
            path: "spec.http[0].timeout",
            message: "duration",
            hint: None,
        },
        Case {
            name: "all weights zero",
            text: format!("{VS_HEAD}      weight: 0\n    - destination:\n        host: backend\n      weight: 0\n"),
            code: "MESH0004",
            line: 8,
            column: 5,
            path: "spec.http[0].route",
            message: "weight",
            hint: None,
        },
        Case {
            // At the unclosed `[` (the scanner notices it at the end of the file, a line
            // late), with how to close it.
            name: "yaml syntax error",
            text: format!("{VS_HEAD}    timeout: [1s\n"),
            code: "MESH0001",
            line: 11,
            column: 14,
            path: "",
            message: "YAML syntax error",
            hint: Some("add `]`"),
        },
        Case {
            name: "CUSTOM authorization is not supported",
            text: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: ext\nspec:\n  action: CUSTOM\n  rules:\n  - {}\n".into(),
            code: "MESH0005",
            line: 6,
            column: 3,
            path: "spec.action",
            message: "not supported by meshctl",
            hint: None,
        },
        Case {
            name: "document that is neither compose nor resource",
            text: "hello: world\n".into(),
            code: "MESH0007",
            line: 1,
            column: 1,
            path: "",
            message: "neither a compose file",
            hint: None,
        },
        Case {
            name: "unknown kind is reported, not crashed on",
            text: "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n".into(),
            code: "MESH0006",
            line: 2,
            column: 1,
            path: "",
            message: "Widget",
            hint: None,
        },
        Case {
            name: "missing name",
            text: "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {}\nspec:\n  host: backend\n".into(),
            code: "MESH0004",
            line: 3,
            column: 1,
            path: "metadata.name",
            message: "`metadata.name` is required",
            hint: None,
        },
        Case {
            name: "alias bomb refused",
            text: {
                let mut s = String::from("a: &a [x,x,x,x,x,x,x,x,x,x]\n");
                for i in 1..12u8 {
                    let (c, p) = ((b'a' + i) as char, (b'a' + i - 1) as char);
                    s.push_str(&format!("{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"));
                }
                s
            },
            code: "MESH0002",
            line: 0,
            column: 0,
            path: "",
            message: "alias bomb",
            hint: None,
        },
    ]
}

#[test]
fn each_error_class_names_code_position_path_and_hint() {
    for case in cases() {
        let (_dir, loaded) = load_files(&[("mesh.yaml", &case.text)]);
        let d = only_error(&loaded);
        let ctx = format!("case {:?}: {d}", case.name);
        assert_eq!(d.code, case.code, "{ctx}");
        assert!(d.location.file.ends_with("mesh.yaml"), "{ctx}");
        if case.line > 0 {
            assert_eq!(
                (d.location.line, d.location.column),
                (case.line, case.column),
                "{ctx}"
            );
        }
        assert_eq!(d.path, case.path, "{ctx}");
        assert!(d.message.contains(case.message), "{ctx}");
        if let Some(h) = case.hint {
            assert!(
                d.hint.as_deref().is_some_and(|got| got.contains(h)),
                "{ctx}"
            );
        }
    }
}

#[test]
fn errors_in_several_documents_are_all_reported_and_good_ones_kept() {
    let text = format!(
        "{VS_HEAD}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: a\nspec:\n  host: a\n  trafficPolicy:\n    loadBalancer:\n      simpel: RANDOM\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: b\nspec:\n  hosts: b\n"
    );
    let (_dir, loaded) = load_files(&[("mesh.yaml", &text)]);
    let errors: Vec<_> = loaded
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    assert_eq!(errors.len(), 2, "{:#?}", loaded.diagnostics);
    assert_eq!(errors[0].location.line, 20, "{}", errors[0]);
    assert!(
        errors[0].hint.as_deref().unwrap_or("").contains("`simple`"),
        "{}",
        errors[0]
    );
    assert_eq!(errors[1].path, "spec.hosts", "{}", errors[1]);
    assert_eq!(
        loaded.mesh.resources.len(),
        1,
        "the good VirtualService is kept"
    );
}

#[test]
fn duplicate_resources_point_at_the_first() {
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: a\nspec:\n  host: a\n";
    let (_dir, loaded) = load_files(&[("mesh/one.yaml", dr), ("mesh/two.yaml", dr)]);
    let d = only_error(&loaded);
    assert_eq!(d.code, "MESH0009", "{d}");
    assert!(d.location.file.ends_with("two.yaml"), "{d}");
    assert!(d.message.contains("one.yaml:4:3"), "{d}");
}

#[test]
fn compose_errors_are_placed_and_interpolated_values_used() {
    let compose = "services:\n  web:\n    image: web:${TAG}\n    replicas: 2\n";
    let (_dir, loaded) = load_files(&[("compose.yaml", compose)]);
    let d = only_error(&loaded);
    assert_eq!(d.code, "MESH0003", "{d}");
    assert_eq!((d.location.line, d.location.column), (4, 5), "{d}");
    assert!(d.hint.as_deref().unwrap_or("").contains("deploy"), "{d}");

    let (_dir, loaded) =
        load_files(&[("compose.yaml", "services:\n  web:\n    image: web:${TAG}\n")]);
    assert!(!loaded.has_errors(), "{:#?}", loaded.diagnostics);
    let compose = loaded.mesh.compose.as_ref().unwrap();
    assert_eq!(compose.services["web"].image.as_deref(), Some("web:1.2"));
}

#[test]
fn required_variable_error_is_placed() {
    let (_dir, loaded) = load_files(&[(
        "compose.yaml",
        "services:\n  web:\n    image: ${IMAGE:?set IMAGE to the web image}\n",
    )]);
    let d = only_error(&loaded);
    assert_eq!(d.code, "MESH0011", "{d}");
    assert_eq!(d.location.line, 3, "{d}");
    assert!(d.message.contains("set IMAGE to the web image"), "{d}");
}

#[test]
fn default_lookup_finds_compose_mesh_yaml_and_mesh_dir() {
    let dr = |n: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: {n}\nspec:\n  host: web\n"
        )
    };
    let (dir, loaded) = load_files(&[
        ("docker-compose.yml", "services:\n  web:\n    image: web\n"),
        ("mesh.yaml", &dr("a")),
        ("mesh/sub/b.yml", &dr("b")),
        ("mesh/notes.txt", "not yaml"),
    ]);
    assert!(!loaded.has_errors(), "{:#?}", loaded.diagnostics);
    assert_eq!(loaded.mesh.files.len(), 3);
    assert_eq!(loaded.mesh.resources.len(), 2);
    let expected = dir
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_lowercase();
    let expected: String = expected
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    assert_eq!(loaded.mesh.project, expected);
    assert!(
        loaded
            .mesh
            .dirs
            .iter()
            .any(|d| d.ends_with(Path::new("mesh/sub")))
    );
}

#[test]
fn no_files_is_an_error() {
    let (_dir, loaded) = load_files(&[]);
    let d = only_error(&loaded);
    assert_eq!(d.code, "MESH0010", "{d}");
    assert!(d.message.contains("compose.yaml"), "{d}");
}

#[test]
fn a_missing_file_a_dangling_link_and_a_link_loop_are_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let looped = dir.path().join("loop.yaml");
    std::os::unix::fs::symlink(&looped, &looped).unwrap();
    let dangling = dir.path().join("dangling.yaml");
    std::os::unix::fs::symlink(dir.path().join("gone.yaml"), &dangling).unwrap();
    let missing = dir.path().join("missing.yaml");
    for (path, want) in [
        (&looped, "symbolic links"),
        (&dangling, "a symbolic link to a file that does not exist"),
        (&missing, "no such file or directory"),
    ] {
        let mut opts = LoadOptions::new(dir.path());
        opts.files = vec![path.clone()];
        opts.env = Box::new(BTreeMap::<String, String>::new());
        let loaded = load(&opts);
        let d = only_error(&loaded);
        assert_eq!(d.code, "MESH0008", "{d}");
        assert!(d.message.contains(want), "{}: {d}", path.display());
    }
}

#[test]
fn check_text_places_compose_validation_errors() {
    let text = "services:\n  web:\n    image: web\n    depends_on: [db]\n";
    let found = meshmodel::check::check_text("compose.yaml", text);
    let d = found
        .iter()
        .find(|d| d.severity == Severity::Error)
        .expect("an error for the missing dependency");
    assert_eq!(d.location.line, 4, "{d}");
    assert!(d.message.contains("db"), "{d}");
    assert_eq!(d.resource.as_deref(), Some("service/web"), "{d}");
}

#[test]
fn unserved_kinds_are_errors_by_name() {
    // A resource that is read and not enforced would make its author believe it holds.
    let cases = [
        ("networking.istio.io/v1", "Gateway", Severity::Error),
        (
            "networking.istio.io/v1alpha3",
            "EnvoyFilter",
            Severity::Error,
        ),
        ("networking.istio.io/v1", "WorkloadEntry", Severity::Error),
        (
            "extensions.istio.io/v1alpha1",
            "WasmPlugin",
            Severity::Error,
        ),
        ("apps/v1", "Deployment", Severity::Error),
        ("v1", "Service", Severity::Error),
    ];
    for (api_version, kind, want) in cases {
        let text = format!("apiVersion: {api_version}\nkind: {kind}\nmetadata:\n  name: x\n");
        let loaded = meshmodel::load::load_single_text("mesh.yaml", &text);
        let d = loaded
            .diagnostics
            .iter()
            .find(|d| d.code == "MESH0006")
            .unwrap_or_else(|| panic!("{kind}: {:?}", loaded.diagnostics));
        assert_eq!(d.severity, want, "{kind}: {d}");
        assert!(d.message.contains(kind), "{kind}: {d}");
        assert!(loaded.mesh.resources.is_empty(), "{kind} must not load");
    }
}
