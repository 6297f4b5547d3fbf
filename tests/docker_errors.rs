//! The clear messages of `meshctl up` (issue 7), on the real engine where the engine is needed:
//! Docker unreachable, an image missing with no `build:`, a published port already taken, an
//! app that exits during start-up (with its last log lines). Each case leaves nothing behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod docker_support;

use docker_support::*;

fn stderr_of(seed: &Seed, args: &[&str]) -> String {
    let out = seed.meshctl(args);
    assert!(
        !out.status.success(),
        "meshctl {args:?} succeeded:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_unreachable_engine_is_named_with_what_to_check() {
    let seed = Seed::new("u");
    let out = std::process::Command::new(MESHCTL)
        .arg("--project-directory")
        .arg(seed.dir.path())
        .args(["--project-name", &seed.project, "up", "-d"])
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot reach the Docker engine at unix:///nonexistent/docker.sock")
            && err.contains("is Docker installed and running?"),
        "{err}"
    );
}

#[test]
fn a_missing_image_without_build_is_refused_by_service() {
    if !docker_available() {
        return;
    }
    let seed = Seed::new("m");
    let path = seed.dir.path().join("compose.yaml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "  backend-v2:\n    image: meshctl-demo/backend:latest",
        "  backend-v2:\n    image: meshctl-test/no-such-image:never",
    );
    std::fs::write(&path, text).unwrap();
    let err = stderr_of(&seed, &["up", "-d", "--wait"]);
    assert!(
        err.contains(
            "image meshctl-test/no-such-image:never of service backend-v2 is not on this engine and the service has no `build:`"
        ),
        "{err}"
    );
    let left = leftovers(&seed.project);
    assert!(left.values().all(String::is_empty), "{left:?}");
}

#[test]
fn a_taken_port_is_named_and_up_succeeds_once_it_is_free() {
    if !docker_available() {
        return;
    }
    let seed = Seed::new("t");
    // Someone else holds the frontend's published port on every address.
    let holder = std::net::TcpListener::bind(("0.0.0.0", seed.port)).unwrap();
    let err = stderr_of(&seed, &["up", "-d", "--wait", "--build"]);
    assert!(
        err.contains(&format!(
            "host port {} of service frontend is already taken",
            seed.port
        )),
        "{err}"
    );
    drop(holder);
    // Once the port is free, up succeeds.
    seed.ok(&["up", "-d", "--wait"]);
}

#[test]
fn an_app_exiting_during_start_up_shows_its_last_log_lines() {
    if !docker_available() {
        return;
    }
    let seed = Seed::new("x");
    let path = seed.dir.path().join("compose.yaml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "    environment:\n      VERSION: v2\n",
        "    environment:\n      VERSION: v2\n    command: [\"--no-such-mode\"]\n",
    );
    std::fs::write(&path, text).unwrap();
    let err = stderr_of(&seed, &["up", "-d", "--wait", "--build"]);
    let p = &seed.project;
    assert!(
        err.contains(&format!(
            "container {p}-backend-v2-1 exited during start-up (exit code 2)"
        )),
        "{err}"
    );
    assert!(
        err.contains("unknown arguments [\"--no-such-mode\"]") && err.contains("usage:"),
        "the app's own last lines are shown: {err}"
    );
}
