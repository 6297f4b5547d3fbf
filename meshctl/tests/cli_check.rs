//! The `check` and `config` commands as a user runs them: exit codes, the text a person reads
//! and the JSON a machine reads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn meshctl(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .current_dir(dir)
        .env_remove("COMPOSE_PROJECT_NAME")
        .env("NO_COLOR", "1")
        .output()
        .expect("run meshctl")
}

fn seed() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/seed")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_seed_example_checks_clean() {
    let out = meshctl(&seed(), &["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ok: 5 file(s), 3 service(s), 4 resource(s): 0 error(s)"),
        "{stdout}"
    );
}

#[test]
fn a_broken_edit_exits_1_and_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mesh.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: web\nspec:\n  hosts: [web]\n  http:\n  - retires: {attempts: 2}\n    route:\n    - destination: {host: web}\n",
    )
    .unwrap();
    let out = meshctl(dir.path(), &["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("mesh.yaml:8:5: error[MESH0003]: VirtualService/web: spec.http[0].retires: unknown field `retires`"),
        "{stdout}"
    );
    assert!(stdout.contains("hint: did you mean `retries`?"), "{stdout}");

    let out = meshctl(dir.path(), &["check", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["errors"], 1);
    let d = &report["diagnostics"][0];
    assert_eq!(d["code"], "MESH0003");
    assert_eq!(d["location"]["line"], 8);
    assert_eq!(d["location"]["column"], 5);
    assert_eq!(d["path"], "spec.http[0].retires");
}

#[test]
fn usage_errors_exit_2() {
    let out = meshctl(&seed(), &["check", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn config_prints_the_normalized_model() {
    let out = meshctl(&seed(), &["config"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let yaml = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(yaml.contains("name: seed"), "{yaml}");
    assert!(yaml.contains("backend.default.svc.cluster.local"), "{yaml}");

    let out = meshctl(&seed(), &["config", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["name"], "seed");
    // The YAML output reads back as the same document as the JSON one.
    let read: serde_json::Value = meshapi::yaml::from_str(&yaml).expect("yaml reads back");
    assert_eq!(read, v, "{yaml}");
    let services = v["mesh"]["services"].as_array().unwrap();
    let backend = services.iter().find(|s| s["name"] == "backend").unwrap();
    assert_eq!(backend["workloads"].as_array().unwrap().len(), 2);
    assert_eq!(v["resources"].as_array().unwrap().len(), 4);
}

#[test]
fn config_refuses_a_broken_mesh() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("compose.yaml"),
        "services:\n  web:\n    image: [\n",
    )
    .unwrap();
    let out = meshctl(dir.path(), &["config"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("compose.yaml:"),
        "{}",
        text(&out)
    );
}

#[test]
fn up_refuses_a_node_placed_service_by_name_before_touching_docker() {
    // `x-mesh.node` is served by `serve --listen` + `join` only: `up` must say so rather than
    // start the service on this machine (and must not need an engine to say it).
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("compose.yaml"),
        "services:\n  web:\n    image: nginx\n    ports: [\"8080\"]\n  api:\n    image: nginx\n    x-mesh: {node: vm2}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .current_dir(dir.path())
        .args(["up", "-d"])
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .env("NO_COLOR", "1")
        .output()
        .expect("run meshctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("x-mesh.node is not served by `meshctl up` yet: api (x-mesh.node: vm2)"),
        "{stderr}"
    );
    assert!(stderr.contains("meshctl join"), "{stderr}");
}
