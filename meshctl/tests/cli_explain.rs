//! `meshctl explain` as a user runs it on the seed example: the text a person reads, the
//! JSON a machine reads, and the exit codes of requests it cannot explain.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn meshctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .current_dir(seed())
        .env_remove("COMPOSE_PROJECT_NAME")
        .env("NO_COLOR", "1")
        .output()
        .expect("run meshctl")
}

fn seed() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/seed")
}

fn out(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn explains_the_seed_canary_in_text_and_json() {
    let o = meshctl(&[
        "explain",
        "--from",
        "frontend",
        "GET",
        "http://backend:8080/api",
    ]);
    let (stdout, stderr) = out(&o);
    assert_eq!(o.status.code(), Some(0), "{stdout}{stderr}");
    for line in [
        "route: forward (VirtualService default/backend, DestinationRule default/backend)",
        "  timeout: 500ms",
        "backend backend.default.svc.cluster.local subset v1 port 8080: weight 90 (90.0%), load balancer LEAST_REQUEST, outlier detection on",
        "  endpoint backend-v2: ISTIO_MUTUAL expecting spiffe://cluster.local/ns/default/sa/backend, server STRICT",
        "    authorization: ALLOW (allowed_by_policy by default/backend-allow-frontend rule 0) for principal spiffe://cluster.local/ns/default/sa/frontend-sa on path /api",
        "verdict: forwarded to backend/v1 90%, backend/v2 10%",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "no line {line:?} in:\n{stdout}"
        );
    }
    let o = meshctl(&[
        "explain",
        "--from",
        "frontend",
        "GET",
        "http://backend:8080/a",
        "--json",
    ]);
    let (stdout, stderr) = out(&o);
    assert_eq!(o.status.code(), Some(0), "{stdout}{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        v["destination"]["host"],
        "backend.default.svc.cluster.local"
    );
    assert_eq!(v["route"]["retries"]["attempts"], 3);
    let shares: Vec<_> = (v["backends"].as_array().unwrap().iter())
        .map(|b| {
            (
                b["subset"].as_str().unwrap(),
                b["percent"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(shares, [("v1", 90.0), ("v2", 10.0)]);
    let a = &v["backends"][1]["endpoints"][0]["authorization"];
    assert_eq!(a["policy"], "default/backend-allow-frontend", "{a}");
    assert_eq!(
        a["ruleId"],
        "ns[default]-policy[backend-allow-frontend]-rule[0]"
    );
    assert_eq!(v["verdict"]["status"], serde_json::Value::Null);
    // A backend proxy has no route to its own service: said, not guessed.
    let o = meshctl(&[
        "explain",
        "--from",
        "backend",
        "GET",
        "http://backend:8080/",
    ]);
    let (stdout, _) = out(&o);
    assert!(
        stdout.contains("verdict: backend:8080 is not a mesh service backend-v1 routes to"),
        "{stdout}"
    );
}

#[test]
fn requests_it_cannot_explain_exit_1_and_usage_errors_2() {
    let o = meshctl(&["explain", "--from", "nobody", "GET", "http://backend:8080/"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        out(&o)
            .1
            .contains("no compose service or mesh service named \"nobody\"")
    );
    let o = meshctl(&["explain", "--from", "frontend", "GET", "backend:8080/"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(out(&o).1.contains("is not an http:// URL"), "{}", out(&o).1);
    let o = meshctl(&[
        "explain",
        "--from",
        "frontend",
        "GET",
        "http://backend:8080/",
        "-H",
        "novalue",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        out(&o)
            .1
            .contains("header \"novalue\" is not `name: value`")
    );
    let o = meshctl(&["explain", "GET", "http://backend:8080/"]);
    assert_eq!(o.status.code(), Some(2), "--from is required");
}
