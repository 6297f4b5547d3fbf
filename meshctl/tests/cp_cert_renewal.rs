//! Nothing expires unattended: the CLI's admin certificate is re-issued at half of its
//! lifetime, so `meshctl status` keeps working across lifetimes; `x-mesh.certificateLifetime`
//! reaches the CA; `meshctl serve` removes its state file on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ca_support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use ca_support::{csr_for, id, request};
use meshctl::api::ApiConfig;
use meshctl::ca::{CaConfig, RateLimitConfig};
use meshctl::controlplane::{ControlPlane, ControlPlaneConfig, ProjectSpec};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

const COMPOSE: &str =
    "services:\n  web:\n    image: x\n    x-mesh:\n      ports: [{ port: 80, protocol: http }]\n";

fn config(dir: &Path, ca: CaConfig) -> ControlPlaneConfig {
    ControlPlaneConfig {
        project: ProjectSpec {
            working_dir: dir.to_path_buf(),
            ..ProjectSpec::default()
        },
        api: ApiConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            ..ApiConfig::default()
        },
        ca,
        watch: false,
        ..ControlPlaneConfig::default()
    }
}

/// (serial, notBefore, notAfter) of the admin certificate on disk.
fn admin_cert(dir: &Path) -> (Vec<u8>, i64, i64) {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let pem = std::fs::read(dir.join(".mesh/admin/cert-chain.pem")).unwrap();
    let der = CertificateDer::pem_slice_iter(&pem)
        .next()
        .unwrap()
        .unwrap();
    let (_, x) = X509Certificate::from_der(&der).unwrap();
    (
        x.raw_serial().to_vec(),
        x.validity().not_before.timestamp(),
        x.validity().not_after.timestamp(),
    )
}

fn meshctl(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .arg("--project-directory")
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

fn unix_now() -> i64 {
    meshctl::ca::unix_secs(SystemTime::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_keeps_working_across_three_admin_certificate_lifetimes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("compose.yaml"), COMPOSE).unwrap();
    // 3 s: renewal at 1.5 s leaves as much slack for a busy machine.
    let lifetime = Duration::from_secs(3);
    let ca = CaConfig {
        cert_lifetime: lifetime,
        rate_limit: RateLimitConfig {
            burst: 100,
            refill_every: Duration::from_millis(10),
        },
        ..CaConfig::default()
    };
    let cp = ControlPlane::start(config(dir.path(), ca)).await.unwrap();
    let first = admin_cert(dir.path());
    assert!(first.2 - unix_now() <= 3, "lifetime not applied: {first:?}");
    let mut serials = vec![first.0.clone()];
    let start = Instant::now();
    // 3.5 lifetimes; the first certificate is long expired at the end.
    while start.elapsed() < lifetime * 7 / 2 {
        let path = dir.path().to_path_buf();
        let out = tokio::task::spawn_blocking(move || meshctl(&path, &["status", "--json"]))
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "status failed after {:?}: {}",
            start.elapsed(),
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(report["revision"].as_u64().is_some(), "{report}");
        let now = admin_cert(dir.path());
        if serials.last() != Some(&now.0) {
            serials.push(now.0);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        first.2 < unix_now(),
        "the first admin certificate has expired"
    );
    assert!(
        serials.len() >= 4,
        "the admin certificate was renewed at least three times: {} serial(s)",
        serials.len()
    );
    cp.shutdown().await;
    assert!(!dir.path().join(".mesh/controlplane.json").exists());
}

#[tokio::test]
async fn x_mesh_certificate_lifetime_reaches_the_ca_and_follows_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let with = |lifetime: &str| format!("{COMPOSE}x-mesh:\n  certificateLifetime: {lifetime}\n");
    std::fs::write(dir.path().join("compose.yaml"), with("1m")).unwrap();
    let cp = ControlPlane::start(config(dir.path(), CaConfig::default()))
        .await
        .unwrap();
    assert_eq!(cp.ca().cert_lifetime(), Duration::from_secs(60));
    // The CLI's certificate has it (renewed at 30 s).
    let (_, _, not_after) = admin_cert(dir.path());
    let left = not_after - unix_now();
    assert!((55..=61).contains(&left), "admin certificate: {left}s left");
    // A workload's too.
    let web = id("web");
    let token = cp.ca().issue_token(&web).unwrap();
    let (_, csr) = csr_for(&web);
    let issued = cp
        .ca()
        .handle_csr(&request(Some(token.as_str()), &web, &csr), None)
        .unwrap();
    assert!((55..=61).contains(&(issued.not_after - unix_now())));
    // An edit applies at the next reload; an invalid value is refused and the last good stays.
    std::fs::write(dir.path().join("compose.yaml"), with("2h")).unwrap();
    assert!(cp.reload().await.unwrap().ok);
    assert_eq!(cp.ca().cert_lifetime(), Duration::from_secs(7200));
    std::fs::write(dir.path().join("compose.yaml"), with("10s")).unwrap();
    let report = cp.reload().await.unwrap();
    assert!(!report.ok);
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.contains("certificateLifetime")),
        "{:?}",
        report.errors
    );
    assert_eq!(cp.ca().cert_lifetime(), Duration::from_secs(7200));
    // Removing the setting goes back to the CA's own (24 h).
    std::fs::write(dir.path().join("compose.yaml"), COMPOSE).unwrap();
    assert!(cp.reload().await.unwrap().ok);
    assert_eq!(cp.ca().cert_lifetime(), Duration::from_secs(24 * 3600));
    cp.shutdown().await;
}

#[test]
fn serve_removes_its_state_file_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("compose.yaml"), COMPOSE).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .arg("--project-directory")
        .arg(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let state = dir.path().join(".mesh/controlplane.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !state.exists() {
        assert!(Instant::now() < deadline, "serve did not start");
        assert!(child.try_wait().unwrap().is_none(), "serve exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = meshctl(dir.path(), &["status"]);
    assert!(status.status.success(), "{status:?}");
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
    assert!(!state.exists(), "state file left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_warns_about_certificates_near_or_past_expiry() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("compose.yaml"), COMPOSE).unwrap();
    // What the CA remembers of earlier certificates: web's 24 h certificate has 30 minutes
    // left (its renewal, due 11.5 h ago, never came); api's expired yesterday.
    let now = unix_now();
    std::fs::create_dir_all(dir.path().join(".mesh")).unwrap();
    let issued = serde_json::json!([
        {"identity": "spiffe://cluster.local/ns/default/sa/web", "serial": "0a",
         "notAfterUnix": now + 1800, "issuedAtUnix": now + 1800 - 86_400},
        {"identity": "spiffe://cluster.local/ns/default/sa/api", "serial": "0b",
         "notAfterUnix": now - 86_400, "issuedAtUnix": now - 2 * 86_400},
    ]);
    std::fs::write(
        dir.path().join(".mesh/issued.json"),
        serde_json::to_vec(&issued).unwrap(),
    )
    .unwrap();
    let cp = ControlPlane::start(config(dir.path(), CaConfig::default()))
        .await
        .unwrap();
    let path = dir.path().to_path_buf();
    let (json, text) = tokio::task::spawn_blocking(move || {
        (
            meshctl(&path, &["status", "--json"]),
            meshctl(&path, &["status"]),
        )
    })
    .await
    .unwrap();
    assert!(json.status.success() && text.status.success());
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let expiry_of = |sa: &str| {
        report["identities"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["identity"] == format!("spiffe://cluster.local/ns/{sa}"))
            .map(|i| (i["expiry"].clone(), i["notAfter"].as_i64().unwrap()))
            .unwrap_or_else(|| panic!("{sa}: {report}"))
    };
    assert_eq!(expiry_of("default/sa/web").0, "expiring");
    assert_eq!(expiry_of("default/sa/api").0, "expired");
    let (admin, admin_not_after) = expiry_of("mesh-system/sa/meshctl-admin");
    assert_eq!(admin, "ok");
    assert!(admin_not_after > now + 23 * 3600);
    // The root: 'ok', with its expiry.
    let root = &report["caCertificates"][0];
    assert_eq!(root["role"], "root", "{report}");
    assert_eq!(root["expiry"], "ok", "{report}");
    assert!(
        root["notAfter"].as_i64().unwrap() > now + 365 * 86_400,
        "{report}"
    );
    let warnings: Vec<&str> = report["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].contains("sa/web expires in 30m")
            || warnings[0].contains("sa/web expires in 29m"),
        "{warnings:?}"
    );
    assert!(warnings[1].contains("1 identity"), "{warnings:?}");
    // The same on stderr, in both forms, and the table says which.
    for out in [&json, &text] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(
                "warning: the certificate of spiffe://cluster.local/ns/default/sa/web expires in"
            ),
            "{stderr}"
        );
    }
    let table = String::from_utf8_lossy(&text.stdout);
    assert!(
        table.contains("EXPIRING") && table.contains("EXPIRED"),
        "{table}"
    );
    assert!(table.contains("CA root certificate"), "{table}");
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_certificate_nobody_renewed_is_named_as_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("compose.yaml"), COMPOSE).unwrap();
    let ca = CaConfig {
        cert_lifetime: Duration::from_secs(1),
        ..CaConfig::default()
    };
    let cp = ControlPlane::start(config(dir.path(), ca)).await.unwrap();
    let state = dir.path().join(".mesh/controlplane.json");
    let saved = std::fs::read(&state).unwrap();
    cp.shutdown().await;
    // As if the control plane had stopped renewing (killed -9, its state file left behind).
    std::fs::write(&state, saved).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let path = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || meshctl(&path, &["status"]))
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("admin certificate") && stderr.contains("expired"),
        "{stderr}"
    );
}
