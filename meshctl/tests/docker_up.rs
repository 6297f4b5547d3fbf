//! `meshctl up` on the real Docker engine with the seed example (issue 7): the CLI binary is
//! driven as a user would, on a copy of examples/seed with a unique project name and a free
//! host port, and `down` always runs (Drop guard). Skips loudly only when no engine answers.
//!
//! The static binaries for the `FROM scratch` images come from `MESHCTL_RUNTIME_DIR` when set
//! (CI builds them once); otherwise meshctl builds them with cargo into a target directory of
//! this test's own (so the nested cargo never waits for the outer one's lock).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MESHCTL: &str = env!("CARGO_BIN_EXE_meshctl");

/// A copy of the seed example under a unique project name; `down -v` on drop.
struct Seed {
    dir: tempfile::TempDir,
    project: String,
    port: u16,
}

impl Seed {
    fn new(tag: &str) -> Seed {
        let dir = tempfile::tempdir().unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/seed");
        copy_dir(&src, dir.path());
        let project = format!("t{}{tag}", std::process::id());
        let port = free_port();
        Seed { dir, project, port }
    }

    fn meshctl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(MESHCTL);
        cmd.arg("--project-directory")
            .arg(self.dir.path())
            .args(["--project-name", &self.project])
            .args(args)
            .env("FRONTEND_PORT", self.port.to_string())
            .env("CI", "1");
        if std::env::var_os("MESHCTL_RUNTIME_DIR").is_none() {
            cmd.env(
                "CARGO_TARGET_DIR",
                Path::new(env!("CARGO_TARGET_TMPDIR")).join("static-runtime"),
            );
        }
        cmd.output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
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

    fn ps(&self) -> Vec<serde_json::Value> {
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

fn copy_dir(from: &Path, to: &Path) {
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// True when a Docker engine answers; otherwise says loudly why the test does nothing.
fn docker_available() -> bool {
    let ok = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "\n\n*** SKIPPED: no Docker engine reachable (`docker version` failed); the Docker e2e tests did not run ***\n\n"
        );
    }
    ok
}

/// `(status, x-backend-version, body)` of one GET on a fresh connection.
async fn get(port: u16, path: &str) -> Result<(u16, Option<String>, String), String> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
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

/// Objects on the engine that carry the project's label.
fn leftovers(project: &str) -> BTreeMap<&'static str, String> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_example_up_curl_ps_down() {
    if !docker_available() {
        return;
    }
    let seed = Seed::new("a");
    let t0 = Instant::now();
    seed.ok(&["up", "-d", "--wait", "--build"]);
    eprintln!("up -d --wait --build took {:?}", t0.elapsed());

    // The published frontend port answers through the mesh.
    let (status, version, body) = get(seed.port, "/").await.unwrap();
    assert_eq!(status, 200, "body: {body}");
    assert_eq!(body, "Frontend says: Hello from Backend!");
    assert!(
        matches!(version.as_deref(), Some("v1" | "v2")),
        "{version:?}"
    );

    // ps --json: every container, with identity and state.
    let rows = seed.ps();
    let by_name: BTreeMap<String, &serde_json::Value> = rows
        .iter()
        .map(|r| (r["name"].as_str().unwrap().to_string(), r))
        .collect();
    let p = &seed.project;
    for (svc, sa, mesh) in [
        ("frontend", "frontend-sa", "frontend"),
        ("backend-v1", "backend", "backend"),
        ("backend-v2", "backend", "backend"),
    ] {
        for (name, role) in [
            (format!("{p}-{svc}-1"), "app"),
            (format!("{p}-{svc}-1-proxy"), "sidecar"),
        ] {
            let r = by_name
                .get(&name)
                .unwrap_or_else(|| panic!("{name} not in ps: {rows:#?}"));
            assert_eq!(r["role"], role);
            assert_eq!(r["state"], "running", "{r:#}");
            assert_eq!(r["service"], svc);
            assert_eq!(r["meshService"], mesh);
            assert_eq!(
                r["identity"],
                format!("spiffe://cluster.local/ns/default/sa/{sa}")
            );
        }
    }
    assert!(by_name.contains_key(&format!("{p}-meshdns")));
    let front = by_name[&format!("{p}-frontend-1")];
    assert!(
        front["ports"].as_array().unwrap().iter().any(|x| x
            .as_str()
            .unwrap()
            .contains(&format!(":{}->3000/tcp", seed.port))),
        "{front:#}"
    );
    assert!(
        front["certExpires"].is_string(),
        "the control plane reports the frontend's certificate: {front:#}"
    );

    // Running up again changes nothing: same container IDs.
    let ids = |rows: &[serde_json::Value]| -> BTreeMap<String, String> {
        rows.iter()
            .map(|r| {
                (
                    r["name"].as_str().unwrap().to_string(),
                    r["id"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let before = ids(&rows);
    seed.ok(&["up", "-d", "--wait"]);
    assert_eq!(ids(&seed.ps()), before, "a second up recreated containers");
    let (status, _, body) = get(seed.port, "/").await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "Frontend says: Hello from Backend!")
    );

    // down leaves nothing with the project's label.
    seed.ok(&["down", "-v"]);
    let left = leftovers(&seed.project);
    assert!(left.values().all(String::is_empty), "left behind: {left:?}");
    assert!(
        !seed.dir.path().join(".mesh/controlplane.json").exists(),
        "the background control plane still runs"
    );
}
