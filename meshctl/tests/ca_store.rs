//! The CA's files: created once with private permissions, reused, refused when unsafe or broken,
//! and the Istio plug-in layout turning meshctl into an intermediate.
#![allow(clippy::unwrap_used)]

mod ca_support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use ca_support::*;
use meshctl::ca::{Ca, CaConfig, CaError, CaMode};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn open_err(state: &Path, config: CaConfig) -> CaError {
    Ca::open(state, config).unwrap_err()
}

#[test]
fn first_start_creates_a_private_root_and_later_starts_reuse_it() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = open_ca(tmp.path(), CaConfig::default());
    assert_eq!(ca.mode(), CaMode::OwnRoot);
    let dir = tmp.path().join(".mesh/ca");
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("root-key.pem")), 0o600);
    let root = fs::read_to_string(dir.join("root-cert.pem")).unwrap();
    assert_eq!(ca.root_pem(), root);
    let root_der = certs(&root);
    let (_, x509) = x509_parser::parse_x509_certificate(&root_der[0]).unwrap();
    assert!(x509.is_ca());

    let again = open_ca(tmp.path(), CaConfig::default());
    assert_eq!(
        again.root_pem(),
        root,
        "the second start must reuse the root"
    );
    assert_eq!(fs::read_to_string(dir.join("root-cert.pem")).unwrap(), root);
}

#[test]
fn loose_permissions_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    drop(open_ca(tmp.path(), CaConfig::default()));
    let dir = tmp.path().join(".mesh/ca");
    let key = dir.join("root-key.pem");

    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let err = open_err(tmp.path(), CaConfig::default());
    assert!(
        matches!(err, CaError::Permissions { ref path, mode: 0o644 } if *path == key),
        "{err}"
    );
    assert!(err.to_string().contains("root-key.pem"), "{err}");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();

    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let err = open_err(tmp.path(), CaConfig::default());
    assert!(
        matches!(err, CaError::Permissions { ref path, .. } if *path == dir),
        "{err}"
    );
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    open_ca(tmp.path(), CaConfig::default());
}

#[test]
fn corrupted_or_truncated_files_are_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    drop(open_ca(tmp.path(), CaConfig::default()));
    let dir = tmp.path().join(".mesh/ca");
    let cert_path = dir.join("root-cert.pem");
    let key_path = dir.join("root-key.pem");
    let cert = fs::read(&cert_path).unwrap();
    let key = fs::read(&key_path).unwrap();

    let cases: Vec<(&Path, Vec<u8>, &str)> = vec![
        (&cert_path, cert[..cert.len() / 2].to_vec(), "root-cert.pem"),
        (&cert_path, Vec::new(), "root-cert.pem"),
        (
            &cert_path,
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec(),
            "root-cert.pem",
        ),
        (&key_path, key[..key.len() / 2].to_vec(), "root-key.pem"),
        (&key_path, b"garbage".to_vec(), "root-key.pem"),
    ];
    for (path, contents, name) in cases {
        let original = fs::read(path).unwrap();
        fs::write(path, &contents).unwrap();
        let err = open_err(tmp.path(), CaConfig::default());
        assert!(matches!(err, CaError::Corrupt { .. }), "{name}: {err:?}");
        assert!(
            err.to_string().contains(name),
            "error must name {name}: {err}"
        );
        fs::write(path, original).unwrap();
    }
    // A key that belongs to another certificate is refused too.
    fs::write(&key_path, KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let err = open_err(tmp.path(), CaConfig::default());
    assert!(err.to_string().contains("does not match"), "{err}");
    fs::write(&key_path, &key).unwrap();

    // A missing half is never silently replaced by a new root.
    fs::remove_file(&key_path).unwrap();
    let err = open_err(tmp.path(), CaConfig::default());
    assert!(
        matches!(err, CaError::Missing { .. }) && err.to_string().contains("root-key.pem"),
        "{err}"
    );
    assert_eq!(fs::read(&cert_path).unwrap(), cert);
}

/// The user's own CA in Istio's plug-in layout: root -> intermediate (ca-cert.pem).
fn write_plugin_ca(dir: &Path) -> String {
    let root_key = KeyPair::generate().unwrap();
    let mut root_params = CertificateParams::default();
    root_params
        .distinguished_name
        .push(DnType::CommonName, "Example Corp Root");
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = rcgen::Issuer::new(root_params, root_key);

    let int_key = KeyPair::generate().unwrap();
    let mut int_params = CertificateParams::default();
    int_params
        .distinguished_name
        .push(DnType::CommonName, "Example Corp mesh intermediate");
    int_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    int_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let int = int_params.signed_by(&int_key, &root_issuer).unwrap();

    fs::create_dir_all(dir).unwrap();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(dir.join("root-cert.pem"), root.pem()).unwrap();
    fs::write(dir.join("ca-cert.pem"), int.pem()).unwrap();
    fs::write(
        dir.join("cert-chain.pem"),
        format!("{}{}", int.pem(), root.pem()),
    )
    .unwrap();
    fs::write(dir.join("ca-key.pem"), int_key.serialize_pem()).unwrap();
    fs::set_permissions(dir.join("ca-key.pem"), fs::Permissions::from_mode(0o600)).unwrap();
    root.pem()
}

#[test]
fn plugin_ca_makes_meshctl_an_intermediate() {
    let tmp = tempfile::tempdir().unwrap();
    let user_dir = tmp.path().join("cacerts");
    let user_root = write_plugin_ca(&user_dir);
    let config = CaConfig {
        ca_dir: Some(user_dir.clone()),
        ..CaConfig::default()
    };
    let ca = open_ca(tmp.path(), config.clone());
    assert_eq!(ca.mode(), CaMode::Plugin);
    assert_eq!(ca.root_pem(), user_root);
    assert!(
        !tmp.path().join(".mesh/ca").exists(),
        "no own root is created"
    );

    let who = id("backend");
    let token = ca.issue_token(&who).unwrap();
    let (_, csr) = csr_for(&who);
    let answer = ca
        .handle_csr(&request(Some(token.as_str()), &who, &csr), None)
        .unwrap();
    let chain = certs(&answer.cert_chain_pem);
    assert_eq!(chain.len(), 3, "leaf, ca-cert, root (ca-cert not repeated)");
    assert_eq!(answer.root_pem, user_root);
    chain_verifies(&answer.cert_chain_pem, &user_root).unwrap();

    // The same layout placed in .mesh/ca is picked up without configuration.
    let other = tempfile::tempdir().unwrap();
    write_plugin_ca(&other.path().join(".mesh/ca"));
    assert_eq!(
        open_ca(other.path(), CaConfig::default()).mode(),
        CaMode::Plugin
    );

    // An incomplete layout names what is missing.
    fs::remove_file(user_dir.join("cert-chain.pem")).unwrap();
    let err = open_err(tmp.path(), config);
    assert!(err.to_string().contains("cert-chain.pem"), "{err}");
}
