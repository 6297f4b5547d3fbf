//! Access logs on the real Docker engine (issue 14): the seed example (access logs on, as in
//! its `x-mesh`) is brought up with the CLI; `meshctl logs --proxy` shows the sidecars' access
//! log lines, and `meshctl top` follows them while traffic flows and reports the busiest
//! paths. `down` always runs (Drop guard). Skips loudly only when no engine answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod docker_support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use docker_support::*;
use meshapi::telemetry::access_log::AccessLogLine;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_proxy_shows_access_log_lines_and_top_counts_the_busiest_paths() {
    if !docker_available() {
        return;
    }
    let seed = Seed::new("top");
    seed.ok(&["up", "-d", "--wait", "--build"]);
    let (status, _, body) = first_get(seed.port).await;
    assert_eq!(status, 200, "{body}");

    // `logs --proxy`: the frontend sidecar's line for its call to the backend.
    let frontend_proxy = format!("{}-frontend-1-proxy", seed.project);
    let deadline = Instant::now() + Duration::from_secs(30);
    let line = loop {
        let out = seed.ok(&["logs", "--proxy", "frontend"]);
        let found = out.lines().find_map(|l| {
            let (name, rest) = l.split_once(" | ")?;
            let parsed = AccessLogLine::parse(rest)?;
            (name.trim() == frontend_proxy
                && parsed
                    .upstream_cluster
                    .as_deref()
                    .is_some_and(|c| c.starts_with("outbound|8080|")))
            .then_some(parsed)
        });
        if let Some(l) = found {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "no outbound access log line in:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(line.method.as_deref(), Some("GET"));
    assert_eq!(line.response_code, 200);
    assert_eq!(
        line.upstream_peer_uri_san.as_deref(),
        Some("spiffe://cluster.local/ns/default/sa/backend")
    );

    // `top` for 12 s while requests flow; it reads new lines only, so traffic runs until it
    // has exited.
    let mut top = seed
        .command(&["top", "--duration", "12", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut sent = 0;
    let started = Instant::now();
    let out = loop {
        if let Some(_status) = top.try_wait().unwrap() {
            break top.wait_with_output().unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "top did not stop"
        );
        if let Ok((200, _, _)) = get(seed.port, "/").await {
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        out.status.success(),
        "top failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let row = |src: &dyn Fn(&str) -> bool, dst: &str| {
        rows.iter()
            .find(|r| {
                src(r["source"].as_str().unwrap())
                    && r["destination"] == dst
                    && r["method"] == "GET"
                    && r["path"] == "/"
            })
            .unwrap_or_else(|| panic!("no {dst} row in {rows:#?}"))
            .clone()
    };
    // Requests from the test reach the frontend on its published port, which does not pass
    // its sidecar yet: the frontend's calls to the backend are what the sidecars see.
    let r = row(&|s| s == "frontend", "backend");
    let count = r["count"].as_u64().unwrap();
    assert!(count >= 1 && count <= sent, "{r} of {sent} sent");
    assert_eq!(r["successRate"], 1.0, "{r}");
    assert!(r["bestMs"].as_u64().unwrap() <= r["worstMs"].as_u64().unwrap());
}
