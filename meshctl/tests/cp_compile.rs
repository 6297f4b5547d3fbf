//! `meshctl proxy-config` on the seed example (examples/seed): the compiled config of a proxy,
//! as the control plane would push it, through the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use meshapi::proxy::{PeerAuthMode, ProxyConfig};

fn seed_copy() -> tempfile::TempDir {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/seed");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("compose.yaml"), dir.path().join("compose.yaml")).unwrap();
    std::fs::create_dir(dir.path().join("mesh")).unwrap();
    for f in std::fs::read_dir(src.join("mesh")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dir.path().join("mesh").join(f.file_name())).unwrap();
    }
    dir
}

fn proxy_config(dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .arg("--project-directory")
        .arg(dir)
        .arg("proxy-config")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn seed_frontend_config_is_valid_deterministic_and_minimal() {
    let dir = seed_copy();
    let (code, yaml, err) = proxy_config(dir.path(), &["frontend"]);
    assert_eq!(code, 0, "{err}");
    let cfg = ProxyConfig::from_str_checked(&yaml).unwrap();
    assert_eq!(
        cfg.identity.spiffe_id.to_string(),
        "spiffe://cluster.local/ns/default/sa/frontend-sa"
    );
    assert_eq!(cfg.inbound.len(), 1);
    assert_eq!(cfg.inbound[0].port, 3000);
    assert_eq!(cfg.inbound[0].mode, PeerAuthMode::Strict);
    assert_eq!(cfg.outbound.len(), 1);
    assert_eq!(cfg.outbound[0].vip.port(), 8080);
    assert_eq!(cfg.services.len(), 1);
    assert_eq!(cfg.services["backend.default"].endpoints.len(), 2);
    // Same input, same bytes; JSON is the same document.
    let (_, again, _) = proxy_config(dir.path(), &["frontend"]);
    assert_eq!(yaml, again);
    let (_, json, _) = proxy_config(dir.path(), &["frontend", "--json"]);
    assert_eq!(ProxyConfig::from_str_checked(&json).unwrap(), cfg);
    let as_json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let yaml_read: serde_json::Value = meshapi::yaml::from_str(&yaml).unwrap();
    assert_eq!(yaml_read, as_json, "{yaml}");
    // A mesh service name picks its first workload.
    let (code, yaml, _) = proxy_config(dir.path(), &["backend"]);
    assert_eq!(code, 0);
    let backend = ProxyConfig::from_str_checked(&yaml).unwrap();
    assert_eq!(
        backend.identity.spiffe_id.to_string(),
        "spiffe://cluster.local/ns/default/sa/backend"
    );
    assert_eq!(backend.listeners.inbound.port(), 15100);
    // The seed's ALLOW policy selects the backend only; YAML output reads back (no tags).
    assert!(backend.authorization.is_some());
    assert!(cfg.authorization.is_none());
}

#[test]
fn unknown_service_and_invalid_files_fail() {
    let dir = seed_copy();
    // A name the files do not have is a failure (1), as compose's "no such service"; 2 is
    // for usage errors only.
    let (code, _, err) = proxy_config(dir.path(), &["nope"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("nope"), "{err}");
    let (code, _, err) = proxy_config(dir.path(), &["frontend", "--instance", "3"]);
    assert_eq!(code, 1, "{err}");
    std::fs::write(dir.path().join("mesh/broken.yaml"), "kind: [\n").unwrap();
    let (code, _, err) = proxy_config(dir.path(), &["frontend"]);
    assert_eq!(code, 1);
    assert!(err.contains("broken.yaml:"), "{err}");
}
