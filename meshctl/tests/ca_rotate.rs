//! Root rotation of the CA (`meshctl ca rotate`): a new root signs from the start, cross-signed
//! by the old one so a peer still trusting only the old root verifies new leaves; both roots
//! are in the bundle until the rotation is retired; the state survives a restart; after it,
//! only the new root is trusted and a new-root-only leaf verifies.
#![allow(clippy::unwrap_used)]

mod ca_support;

use std::time::{Duration, SystemTime};

use ca_support::*;
use meshctl::ca::{Ca, CaConfig, CaError};

/// A fresh leaf for `sa` (token first, like a bootstrapping proxy); its chain PEM.
fn leaf(ca: &Ca, sa: &str) -> String {
    let who = id(sa);
    let token = ca.issue_token(&who).unwrap();
    let (_, csr) = csr_for(&who);
    ca.handle_csr(&request(Some(token.as_str()), &who, &csr), None)
        .unwrap()
        .cert_chain_pem
}

#[test]
fn a_rotation_trusts_both_roots_then_only_the_new_one_and_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = open_ca(tmp.path(), CaConfig::default());
    let old_root = ca.root_pem();
    let before = leaf(&ca, "before");
    assert_eq!(certs(&before).len(), 1, "an own root's leaf comes alone");
    assert_eq!(ca.retire_at(), None);
    let generation = ca.trust_generation();

    ca.rotate(Duration::from_secs(3600)).unwrap();
    assert_eq!(ca.trust_generation(), generation + 1);
    let bundle = ca.root_pem();
    assert_eq!(certs(&bundle).len(), 2, "both roots during the overlap");
    assert!(
        bundle.contains(old_root.trim()),
        "the old root stays trusted"
    );
    // The signing (new) root comes first in the bundle.
    let end = "-----END CERTIFICATE-----\n";
    let new_root_pem = format!("{}{end}", bundle.split(end).next().unwrap());
    assert!(!old_root.contains(new_root_pem.trim()));
    let roles: Vec<&str> = ca.ca_certificates().iter().map(|(r, _)| *r).collect();
    assert_eq!(roles, ["root", "retiring-root"]);
    let retire_at = ca.retire_at().unwrap();
    assert!(retire_at > SystemTime::now() + Duration::from_secs(3500));

    // A leaf issued now is signed by the new root and carries the cross certificate: a peer
    // that still has only the old root verifies it, one with only the new root too.
    let during = leaf(&ca, "during");
    assert_eq!(certs(&during).len(), 2, "leaf + cross certificate");
    chain_verifies(&during, &old_root).unwrap();
    chain_verifies(&during, &new_root_pem).unwrap();
    chain_verifies(&during, &bundle).unwrap();
    // The old root's leaves verify against the bundle (peers that took it already).
    chain_verifies(&before, &bundle).unwrap();

    // A second rotation before the first one ends is refused, naming why.
    let again = ca.rotate(Duration::from_secs(60)).unwrap_err();
    assert!(
        matches!(&again, CaError::Config(m) if m.contains("already in progress")),
        "{again}"
    );

    // A restarted control plane continues the rotation where it was.
    drop(ca);
    let ca = open_ca(tmp.path(), CaConfig::default());
    assert_eq!(ca.root_pem(), bundle);
    let reopened = ca.retire_at().unwrap();
    let skew = reopened
        .duration_since(retire_at)
        .unwrap_or_else(|e| e.duration());
    assert!(skew < Duration::from_secs(1), "{skew:?}");
    assert_eq!(certs(&leaf(&ca, "after-restart")).len(), 2);

    // Retired: only the new root, leaves without the cross certificate, which peers holding
    // only the old root no longer verify.
    assert!(ca.retire().unwrap());
    assert!(!ca.retire().unwrap(), "nothing left to retire");
    assert_eq!(ca.root_pem(), new_root_pem);
    assert_eq!(ca.retire_at(), None);
    let after = leaf(&ca, "after");
    assert_eq!(certs(&after).len(), 1);
    chain_verifies(&after, &new_root_pem).unwrap();
    assert!(chain_verifies(&after, &old_root).is_err());
    assert!(chain_verifies(&before, &new_root_pem).is_err());
    let dir = tmp.path().join(".mesh/ca");
    for gone in ["rotation.json", "retiring-root-cert.pem", "cross-cert.pem"] {
        assert!(!dir.join(gone).exists(), "{gone} left behind");
    }
    drop(ca);
    let ca = open_ca(tmp.path(), CaConfig::default());
    assert_eq!(ca.root_pem(), new_root_pem, "the new root is the root now");
    assert_eq!(ca.retire_at(), None);
}

#[test]
fn a_rotation_interrupted_after_its_record_completes_at_the_next_start() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = open_ca(tmp.path(), CaConfig::default());
    ca.rotate(Duration::from_secs(3600)).unwrap();
    let bundle = ca.root_pem();
    drop(ca);
    // As if the process died between writing the new root and moving it in place.
    let dir = tmp.path().join(".mesh/ca");
    std::fs::rename(dir.join("root-cert.pem"), dir.join("next-root-cert.pem")).unwrap();
    std::fs::copy(
        dir.join("retiring-root-cert.pem"),
        dir.join("root-cert.pem"),
    )
    .unwrap();
    let ca = open_ca(tmp.path(), CaConfig::default());
    assert_eq!(ca.root_pem(), bundle);
    chain_verifies(&leaf(&ca, "w"), &bundle).unwrap();
}
