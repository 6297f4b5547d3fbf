//! Shared helpers of the Docker end-to-end tests (`docker_*.rs`): a copy of the seed example
//! under a unique project name and free port, driven through the CLI binary, with `down -v`
//! always run (Drop guard); plain HTTP over fresh connections; `docker` CLI helpers.
//!
//! The static binaries for the `FROM scratch` images come from `MESHCTL_RUNTIME_DIR` when set
//! (CI builds them once); otherwise meshctl builds them with cargo into a target directory of
//! the tests' own (so the nested cargo never waits for the outer one's lock).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const MESHCTL: &str = env!("CARGO_BIN_EXE_meshctl-e2e");

/// A copy of the seed example under a unique project name; `down -v` on drop.
pub struct Seed {
    pub dir: tempfile::TempDir,
    pub project: String,
    pub port: u16,
    /// More environment for every `meshctl` run. Default none.
    pub env: Vec<(String, String)>,
}

impl Seed {
    pub fn new(tag: &str) -> Seed {
        Seed::of("seed", format!("t{}{tag}", std::process::id()))
    }

    /// A copy of `examples/<example>` as project `project`.
    pub fn of(example: &str, project: String) -> Seed {
        let dir = tempfile::tempdir().unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(example);
        copy_dir(&src, dir.path());
        let port = free_port();
        Seed {
            dir,
            project,
            port,
            env: Vec::new(),
        }
    }

    pub fn meshctl(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// The `meshctl` command for `args` on this copy, not started.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(MESHCTL);
        cmd.arg("--project-directory")
            .arg(self.dir.path())
            .args(["--project-name", &self.project])
            .args(args)
            .env("FRONTEND_PORT", self.port.to_string())
            .env("CI", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if std::env::var_os("MESHCTL_RUNTIME_DIR").is_none() {
            cmd.env(
                "CARGO_TARGET_DIR",
                Path::new(env!("CARGO_TARGET_TMPDIR")).join("static-runtime"),
            );
        }
        cmd
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.meshctl(args);
        assert!(
            out.status.success(),
            "meshctl {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn ps(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["ps", "--json"])).unwrap()
    }
}

impl Drop for Seed {
    fn drop(&mut self) {
        let out = self.meshctl(&["down", "-v"]);
        if !out.status.success() {
            eprintln!(
                "cleanup: meshctl down failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name == ".mesh" {
            continue;
        }
        let path = e.path();
        if path.is_dir() {
            copy_dir(&path, &to.join(&name));
        } else {
            std::fs::copy(&path, to.join(&name)).unwrap();
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// True when a Docker engine answers; otherwise says loudly why the test does nothing.
pub fn docker_available() -> bool {
    let ok = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    !meshtest::skip_unless(
        "docker",
        ok,
        "no Docker engine reachable (`docker version` failed); the Docker e2e tests did not run",
    )
}

/// `(status, x-backend-version, body)` of one GET on a fresh connection.
pub async fn get(port: u16, path: &str) -> Result<(u16, Option<String>, String), String> {
    get_from("127.0.0.1", port, path).await
}

/// [`get`] of `host:port`.
pub async fn get_from(
    host: &str,
    port: u16,
    path: &str,
) -> Result<(u16, Option<String>, String), String> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| e.to_string())?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no header end")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("no status")?;
        let version = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-backend-version")
                .then(|| v.trim().to_string())
        });
        Ok((status, version, body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// The first GET after `up -d --wait`: every seed app has a healthcheck, so `--wait` returned
/// only once each answered its `/healthz`; the first request must succeed, without polling.
pub async fn first_get(port: u16) -> (u16, Option<String>, String) {
    get(port, "/")
        .await
        .unwrap_or_else(|e| panic!("the first GET after up -d --wait failed: {e}"))
}

/// Objects on the engine that carry the project's label.
pub fn leftovers(project: &str) -> BTreeMap<&'static str, String> {
    let filter = format!("label=io.meshctl.project={project}");
    let mut out = BTreeMap::new();
    for (kind, args) in [
        ("containers", vec!["ps", "-aq", "--filter", &filter]),
        ("networks", vec!["network", "ls", "-q", "--filter", &filter]),
        ("volumes", vec!["volume", "ls", "-q", "--filter", &filter]),
    ] {
        let o = Command::new("docker").args(&args).output().unwrap();
        out.insert(kind, String::from_utf8_lossy(&o.stdout).trim().to_string());
    }
    out
}

pub fn docker(args: &[&str]) -> String {
    let o = Command::new("docker").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

pub fn container_ip(name: &str) -> String {
    docker(&[
        "inspect",
        "--format",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        name,
    ])
}

/// `GET /` through an arbitrary host and port (a container address on the test's network).
pub async fn get_at(host: &str, port: u16) -> Result<(u16, String), String> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no HTTP answer: {text:?}"))?;
        Ok((status, text))
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// `POST /admin/<action>` to a backend app from inside its pod's network namespace (the app
/// port is not reachable from outside: capture sends it to the mTLS listener).
pub fn backend_admin(container: &str, action: &str) {
    let pid = docker(&["inspect", "--format", "{{.State.Pid}}", container]);
    let o = Command::new("nsenter")
        .args(["-t", &pid, "-n", "curl", "-sf", "-X", "POST"])
        .arg(format!("http://127.0.0.1:8080/admin/{action}"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "admin/{action} on {container}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}
