//! The project's edges on the real engine (issue 15), with the seed example:
//! - a published port enters through the service's proxy: `GET localhost:<published>`
//!   works, an AuthorizationPolicy denying `/admin` to callers without a principal answers
//!   403 there, and plaintext from a container on the project network without a sidecar to
//!   the same app port is refused (STRICT);
//! - the frontend publishes 8080 too, the port number of the backend it calls: that call
//!   still goes through its proxy (the backend allows only the frontend's mTLS identity);
//! - egress: under a Sidecar's `REGISTRY_ONLY` a call from the frontend's pod to an address
//!   outside the registry gets `502` with the flag `NR` naming it; after a live edit to
//!   `ALLOW_ANY` it passes through.
//!
//! Skips loudly only when no engine answers (or `nsenter`/`curl` are missing).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod docker_support;

use std::process::Command;
use std::time::{Duration, Instant};

use docker_support::*;

const EDGE_POLICIES: &str = r#"# Issue 15: the published port's AuthorizationPolicy and the frontend's egress.
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: frontend-admin-needs-identity
  namespace: default
spec:
  selector:
    matchLabels:
      app: frontend
  action: DENY
  rules:
    - from:
        - source:
            notPrincipals: ["*"]
      to:
        - operation:
            paths: ["/admin"]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: frontend
  namespace: default
spec:
  workloadSelector:
    labels:
      app: frontend
  outboundTrafficPolicy:
    mode: REGISTRY_ONLY
"#;

/// A container on the project network without a sidecar (labelled with the project, so
/// `down` removes it).
fn outsider(project: &str, name: &str, image: &str, env: &[&str]) -> String {
    let full = format!("{project}-{name}");
    let mut args = vec![
        "run".to_string(),
        "-d".into(),
        "--name".into(),
        full.clone(),
        "--network".into(),
        format!("{project}_mesh"),
        "--label".into(),
        format!("io.meshctl.project={project}"),
    ];
    for e in env {
        args.extend(["-e".to_string(), e.to_string()]);
    }
    args.push(image.into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    docker(&args);
    container_ip(&full)
}

/// `curl -D -` of `url` from inside the network namespace of container `name`:
/// (status, head and body).
fn curl_in(name: &str, url: &str) -> (String, String) {
    let pid = docker(&["inspect", "--format", "{{.State.Pid}}", name]);
    let out = Command::new("nsenter")
        .args(["-t", &pid, "-n", "curl", "-s", "-m", "5", "-D", "-"])
        .args(["-w", "\n%{http_code}", url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rest, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_string(), rest.to_string())
}

fn tools() -> bool {
    ["nsenter", "curl"].iter().all(|b| {
        Command::new("sh")
            .args(["-c", &format!("command -v {b}")])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_ports_enter_through_the_proxy_and_egress_follows_the_sidecar() {
    if !docker_available()
        || meshtest::skip_unless("root", tools(), "docker_edge needs nsenter and curl")
    {
        return;
    }
    let seed = Seed::new("edge");
    let p = seed.project.clone();
    let also = free_port();
    let compose = seed.dir.path().join("compose.yaml");
    let text = std::fs::read_to_string(&compose).unwrap();
    std::fs::write(
        &compose,
        text.replacen(
            "      - \"${FRONTEND_PORT:-3000}:3000\"\n",
            &format!("      - \"${{FRONTEND_PORT:-3000}}:3000\"\n      - \"{also}:8080\"\n"),
            1,
        ),
    )
    .unwrap();
    let policies = seed.dir.path().join("mesh/edge.yaml");
    std::fs::write(&policies, EDGE_POLICIES).unwrap();
    seed.ok(&["up", "-d", "--wait", "--build"]);

    // The published port answers, and the frontend's call to backend:8080 (a port number
    // the frontend publishes) went through its proxy: the backend admits only its identity.
    let (status, _, body) = first_get(seed.port).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "Frontend says: Hello from Backend!")
    );
    // The AuthorizationPolicy applies at the edge, where the caller has no principal.
    let (status, _, body) = get(seed.port, "/admin").await.unwrap();
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));

    // Inside the project network the same app port is mTLS-only: a plaintext caller without
    // a sidecar is refused (the outsider frontend reports its failed call as 500).
    let frontend_ip = container_ip(&format!("{p}-frontend-1-proxy"));
    let ip = outsider(
        &p,
        "outsider",
        "meshctl-demo/frontend:latest",
        &[&format!("BACKEND_URL=http://{frontend_ip}:3000/")],
    );
    let t0 = Instant::now();
    let (status, text) = loop {
        match get_at(&ip, 3000).await {
            Ok(r) => break r,
            Err(e) if t0.elapsed() > Duration::from_secs(10) => {
                panic!("the outsider never answered: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert_eq!(
        status, 500,
        "plaintext to {frontend_ip}:3000 got through: {text}"
    );
    assert!(!text.contains("Hello from Backend"), "{text}");

    // Egress under REGISTRY_ONLY: an address outside the registry gets the proxy's 502 NR.
    let outside = outsider(&p, "outside-backend", "meshctl-demo/backend:latest", &[]);
    let url = format!("http://{outside}:8080/");
    let sidecar = format!("{p}-frontend-1-proxy");
    let (code, text) = curl_in(&sidecar, &url);
    assert_eq!(code, "502", "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("x-meshctl-response-flags: nr"),
        "{text}"
    );
    assert!(text.contains(&format!("{outside}:8080")), "{text}");

    // A live edit to ALLOW_ANY: the same call passes through to the outside server.
    std::fs::write(
        &policies,
        EDGE_POLICIES.replace("mode: REGISTRY_ONLY", "mode: ALLOW_ANY"),
    )
    .unwrap();
    let t0 = Instant::now();
    loop {
        let (code, text) = curl_in(&sidecar, &url);
        if code == "200" {
            assert!(text.ends_with("Hello from Backend!"), "{text}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "ALLOW_ANY never applied: {code} {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The mesh path is unchanged.
    let (status, _, body) = get(seed.port, "/").await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "Frontend says: Hello from Backend!")
    );
}
