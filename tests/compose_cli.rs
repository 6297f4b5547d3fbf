//! docker compose's commands and flags, with compose's meanings, through the `meshctl` binary:
//! on a running seed project against the real engine (`ps` formats, `stop`/`start`/`restart`,
//! `logs` flags, broken files, `ls`, `down -p` from elsewhere), against Debian's
//! `docker-compose` (1.29) on the same file (`--profile`, `COMPOSE_PROFILES`, `--env-file`),
//! and the exit codes and closed pipes every command shares.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod docker_support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use docker_support::*;

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

fn lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(str::to_string).collect();
    v.sort();
    v
}

/// The project's running app container IDs, as the engine lists them.
fn running_apps(project: &str) -> Vec<String> {
    lines(&docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=io.meshctl.project={project}"),
        "--filter",
        "label=io.meshctl.role=app",
    ]))
}

#[tokio::test(flavor = "multi_thread")]
async fn compose_commands_on_a_running_project() {
    if !docker_available() {
        return;
    }
    let seed = Seed::new("h18cli");
    let p = seed.project.clone();
    seed.ok(&["up", "-d", "--wait", "--build"]);
    assert_eq!(first_get(seed.port).await.0, 200);

    // ps: running apps only, columns aligned on the header, certificate expiry relative.
    let table = seed.ok(&["ps"]);
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 4, "header + 3 apps:\n{table}");
    let state_col = rows[0].find("STATE").unwrap();
    let cert_col = rows[0].find("CERT").unwrap();
    for r in &rows[1..] {
        assert_eq!(r.get(state_col..state_col + 7), Some("running"), "{table}");
        assert!(
            r.get(cert_col..).is_some_and(|c| c.starts_with("in 23h")),
            "certificate expiry not relative at the CERT column:\n{table}"
        );
    }
    // -q: the engine's IDs; --services: compose names; --status filters.
    let ids: Vec<String> = lines(&seed.ok(&["ps", "-q"]));
    let engine_ids: Vec<String> = running_apps(&p);
    assert_eq!(ids, engine_ids);
    assert_eq!(
        lines(&seed.ok(&["ps", "--services"])),
        ["backend-v1", "backend-v2", "frontend"]
    );
    assert_eq!(seed.ok(&["ps", "-q", "--status", "exited"]), "");
    let json: Vec<serde_json::Value> =
        serde_json::from_str(&seed.ok(&["ps", "--format", "json"])).unwrap();
    assert_eq!(json.len(), 3, "--format json lists the apps: {json:?}");

    // stop one service: its app and sidecar stop, `ps` hides it, `ps -a` shows it exited.
    seed.ok(&["stop", "-t", "2", "backend-v2"]);
    assert_eq!(
        lines(&seed.ok(&["ps", "--services", "--status", "exited"])),
        ["backend-v2"]
    );
    assert_eq!(
        lines(&seed.ok(&["ps", "--services"])),
        ["backend-v1", "frontend"]
    );
    assert_eq!(lines(&seed.ok(&["ps", "-a", "-q"])).len(), 3);
    let sidecar = docker(&[
        "inspect",
        "--format",
        "{{.State.Status}}",
        &format!("{p}-backend-v2-1-proxy"),
    ]);
    assert_eq!(sidecar, "exited", "stop leaves no sidecar running");
    // start: sidecar ready first, then the app in its new namespace; v2 answers again.
    seed.ok(&["start"]);
    assert_eq!(running_apps(&p).len(), 3);
    let mut seen_v2 = false;
    meshtest::assert_eventually!(
        {
            if let Ok((200, Some(v), _)) = get(seed.port, "/").await {
                seen_v2 |= v == "v2";
            }
            seen_v2
        },
        timeout = Duration::from_secs(30),
        "backend-v2 never answered after start"
    );
    // restart the frontend: same container IDs, answering again.
    seed.ok(&["restart", "-t", "2", "frontend"]);
    assert_eq!(
        lines(&seed.ok(&["ps", "-q"])),
        ids,
        "restart recreated containers"
    );
    meshtest::assert_eventually!(
        matches!(get(seed.port, "/").await, Ok((200, _, _))),
        timeout = Duration::from_secs(30),
        "the frontend does not answer after restart"
    );

    // logs: -t, --no-log-prefix, --tail, --until, colours only when asked.
    let out = seed.ok(&["logs", "-t", "--no-log-prefix", "--tail", "1", "frontend"]);
    let line = out.lines().next().unwrap_or_default();
    assert!(
        line.starts_with("20") && line.contains("Z frontend listening"),
        "{out}"
    );
    assert_eq!(seed.ok(&["logs", "--until", "1700000000"]), "");
    assert!(
        seed.ok(&["logs", "--since", "1h", "--tail", "1"])
            .contains(" | ")
    );
    assert!(
        !seed.ok(&["logs"]).contains('\x1b'),
        "escape codes in a pipe"
    );
    assert!(seed.ok(&["--ansi", "always", "logs"]).contains("\x1b["));
    assert!(
        !seed
            .ok(&["--ansi", "always", "logs", "--no-color"])
            .contains('\x1b')
    );

    // ls: the project with its containers' states.
    let ls = seed.ok(&["ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with(&p) && l.contains("running(7)")),
        "{ls}"
    );

    // Broken files: ps and logs still work by the labels, with a warning; up refuses with
    // exit 1 naming the line; the background control plane's refusal is printed once by the
    // next command.
    let compose = seed.dir.path().join("compose.yaml");
    let mut text_now = std::fs::read_to_string(&compose).unwrap();
    text_now.push_str("  broken: [\n");
    std::fs::write(&compose, text_now).unwrap();
    let out = seed.meshctl(&["ps", "-q"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(lines(&text(&out.stdout)), ids);
    let mut told = text(&out.stderr);
    assert!(told.contains("the mesh files have 1 error(s)"), "{told}");
    let up = seed.meshctl(&["up", "-d"]);
    assert_eq!(up.status.code(), Some(1), "{}", text(&up.stderr));
    assert!(
        text(&up.stderr).contains("compose.yaml:"),
        "{}",
        text(&up.stderr)
    );
    meshtest::assert_eventually!(
        {
            if !told.contains("refused the last edit") {
                told.push_str(&text(&seed.meshctl(&["ps", "-q"]).stderr));
            }
            told.contains("refused the last edit")
        },
        timeout = Duration::from_secs(20),
        "the refused reload was never printed: {told}"
    );
    assert!(told.contains("compose.yaml:"), "{told}");
    let again = text(&seed.meshctl(&["ps", "-q"]).stderr);
    assert!(
        !again.contains("refused the last edit"),
        "printed twice: {again}"
    );

    // down by name alone, from a directory without files: everything goes, the background
    // control plane too.
    let elsewhere = tempfile::tempdir().unwrap();
    let down = Command::new(MESHCTL)
        .current_dir(elsewhere.path())
        .args(["-p", &p, "down", "-t", "1"])
        .env("CI", "1")
        .output()
        .unwrap();
    assert!(down.status.success(), "{}", text(&down.stderr));
    assert!(
        text(&down.stderr).contains("Control plane  Stopped"),
        "{}",
        text(&down.stderr)
    );
    for (kind, left) in leftovers(&p) {
        if kind != "volumes" {
            assert!(left.is_empty(), "{kind} left after down -p: {left}");
        }
    }
}

/// A compose file with profiles and an interpolated image, in a fresh directory.
fn profiles_project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("compose.yaml"),
        "services:\n  web:\n    image: nginx:${TAG:-1}\n  debug:\n    image: busybox\n    profiles: [debug]\n  tools:\n    image: alpine\n    profiles: [tools, debug]\n",
    )
    .unwrap();
    std::fs::write(dir.path().join(".env"), "TAG=from-dotenv\n").unwrap();
    std::fs::write(dir.path().join("other.env"), "TAG=from-other\n").unwrap();
    dir
}

fn run_in(dir: &Path, program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(program);
    cmd.current_dir(dir)
        .args(args)
        .env_remove("COMPOSE_PROFILES");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// `docker-compose -p NAME down` on drop, so a failed comparison leaves nothing behind.
struct ComposeProject<'a> {
    dir: &'a Path,
    name: String,
}

impl ComposeProject<'_> {
    /// The services docker-compose creates (`up --no-start`: containers, never started) with
    /// these flags and environment, from the engine's labels.
    fn created(&self, flags: &[&str], env: &[(&str, &str)]) -> Vec<String> {
        let mut args = vec!["-p", self.name.as_str()];
        args.extend(flags);
        args.extend(["up", "--no-start"]);
        let o = run_in(self.dir, "docker-compose", &args, env);
        assert!(
            o.status.success(),
            "docker-compose {args:?}: {}",
            text(&o.stderr)
        );
        let listed = lines(&docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.name),
            "--format",
            "{{.Label \"com.docker.compose.service\"}}",
        ]));
        self.down();
        listed
    }

    fn down(&self) {
        let _ = run_in(
            self.dir,
            "docker-compose",
            &["-p", &self.name, "--profile", "*", "down"],
            &[],
        );
    }
}

impl Drop for ComposeProject<'_> {
    fn drop(&mut self) {
        self.down();
    }
}

/// `--profile` and `COMPOSE_PROFILES` select the services docker-compose 1.29 creates on the
/// same file (1.29's `config` ignores profiles, so the comparison is with what `up` makes;
/// compose v2's `config --services` agrees with meshctl's).
#[test]
fn profiles_select_what_docker_compose_creates() {
    let present = Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if meshtest::skip_unless(
        "docker-compose",
        present,
        "no docker-compose (Debian's package, compose 1.29); the comparison did not run",
    ) || !docker_available()
    {
        return;
    }
    let dir = profiles_project();
    // Images that are on the engine (the seed's demo image, built by the Docker tests or
    // by this test's meshctl), so docker-compose pulls nothing.
    let image = "meshctl-demo/backend:latest";
    if docker(&["images", "-q", image]).is_empty() {
        let seed = Seed::new("h18img");
        seed.ok(&["build"]);
    }
    std::fs::write(
        dir.path().join("compose.yaml"),
        format!(
            "services:\n  web:\n    image: {image}\n  debug:\n    image: {image}\n    profiles: [debug]\n  tools:\n    image: {image}\n    profiles: [tools, debug]\n"
        ),
    )
    .unwrap();
    let compose = ComposeProject {
        dir: dir.path(),
        name: format!("t{}h18cmp", std::process::id()),
    };
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);
    let cases: [Case; 4] = [
        (&[], &[]),
        (&["--profile", "debug"], &[]),
        (&["--profile", "tools"], &[("COMPOSE_PROFILES", "debug")]),
        (&[], &[("COMPOSE_PROFILES", "tools")]),
    ];
    for (flags, env) in cases {
        let mut args = flags.to_vec();
        args.extend(["config", "--services"]);
        let ours = run_in(dir.path(), MESHCTL, &args, env);
        assert!(ours.status.success(), "{args:?}: {}", text(&ours.stderr));
        assert_eq!(
            lines(&text(&ours.stdout)),
            compose.created(flags, env),
            "{flags:?} {env:?}"
        );
    }
}

#[test]
fn env_file_replaces_dot_env_as_in_docker_compose() {
    let present = Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if meshtest::skip_unless(
        "docker-compose",
        present,
        "no docker-compose (Debian's package, compose 1.29); the comparison did not run",
    ) {
        return;
    }
    let dir = profiles_project();
    for (flags, want) in [
        (&[][..], "nginx:from-dotenv"),
        (&["--env-file", "other.env"][..], "nginx:from-other"),
    ] {
        let mut args = flags.to_vec();
        args.push("config");
        let ours = text(&run_in(dir.path(), MESHCTL, &args, &[]).stdout);
        let theirs = text(&run_in(dir.path(), "docker-compose", &args, &[]).stdout);
        assert!(ours.contains(want), "meshctl {args:?}:\n{ours}");
        assert!(theirs.contains(want), "docker-compose {args:?}:\n{theirs}");
    }
}

#[test]
fn failures_exit_1_usage_exits_2_and_a_closed_pipe_is_quiet() {
    let empty = tempfile::tempdir().unwrap();
    let dir = profiles_project();
    // A runtime failure (no files to check) is 1; a usage error is 2.
    let no_files = run_in(empty.path(), MESHCTL, &["config"], &[]);
    assert_eq!(
        no_files.status.code(),
        Some(1),
        "{}",
        text(&no_files.stderr)
    );
    let up = run_in(
        empty.path(),
        MESHCTL,
        &["up", "-d"],
        &[("DOCKER_HOST", "unix:///nonexistent")],
    );
    assert_eq!(up.status.code(), Some(1), "{}", text(&up.stderr));
    let usage = run_in(dir.path(), MESHCTL, &["ps", "--bogus"], &[]);
    assert_eq!(usage.status.code(), Some(2), "{}", text(&usage.stderr));
    let usage = run_in(dir.path(), MESHCTL, &["--ansi", "sometimes", "ps"], &[]);
    assert_eq!(usage.status.code(), Some(2), "{}", text(&usage.stderr));

    // stdout is a pipe whose reader is already gone: every write fails with EPIPE.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(MESHCTL)
        .current_dir(dir.path())
        .args(["config"])
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(141));
    assert_eq!(
        text(&out.stderr),
        "",
        "a closed pipe is not an error to report"
    );
}

/// A `build:` whose base image cannot be pulled (a registry name that does not resolve): `up`
/// exits 1 naming the image and how to provide it without a registry.
#[test]
fn a_base_image_that_cannot_be_pulled_is_named_with_how_to_provide_it() {
    if !docker_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("compose.yaml"),
        "services:\n  app:\n    build: .\n",
    )
    .unwrap();
    let base = "h18-no-such-registry.invalid/base:1";
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!("FROM {base}\nCMD [\"true\"]\n"),
    )
    .unwrap();
    let project = format!("t{}h18pull", std::process::id());
    let up = run_in(
        dir.path(),
        MESHCTL,
        &["-p", &project, "up", "-d"],
        &[("CI", "1")],
    );
    let _ = run_in(dir.path(), MESHCTL, &["-p", &project, "down"], &[]);
    let err = text(&up.stderr);
    assert_eq!(up.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("the base image {base} could not be pulled")),
        "{err}"
    );
    assert!(
        err.contains("docker load") && err.contains("registry-mirrors"),
        "{err}"
    );
}
