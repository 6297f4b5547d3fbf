//! CSR signing and bootstrap tokens, through `Ca::handle_csr` (the API adds only transport).
#![allow(clippy::unwrap_used)]

mod ca_support;

use std::time::{Duration, SystemTime};

use ca_support::*;
use meshctl::ca::{CaConfig, CaError};
use rcgen::SanType;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

fn config_with_lifetime(lifetime: Duration) -> CaConfig {
    CaConfig {
        cert_lifetime: lifetime,
        ..CaConfig::default()
    }
}

#[test]
fn issued_certificate_has_the_workload_profile() {
    let tmp = tempfile::tempdir().unwrap();
    let lifetime = Duration::from_secs(3600);
    let ca = open_ca(tmp.path(), config_with_lifetime(lifetime));
    let who = id("backend");
    let token = ca.issue_token(&who).unwrap();
    let (key, csr) = csr_for(&who);
    let before = SystemTime::now();
    let answer = ca
        .handle_csr(&request(Some(token.as_str()), &who, &csr), None)
        .unwrap();

    let chain = certs(&answer.cert_chain_pem);
    assert_eq!(chain.len(), 1, "own root: the chain is just the leaf");
    chain_verifies(&answer.cert_chain_pem, &answer.root_pem).unwrap();
    let (_, cert) = X509Certificate::from_der(&chain[0]).unwrap();

    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical, "empty subject requires a critical SAN");
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::URI(
            "spiffe://cluster.local/ns/default/sa/backend"
        )]
    );
    assert!(cert.subject().iter().next().is_none(), "empty subject");
    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(!bc.value.ca);
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment());
    assert!(!ku.key_cert_sign() && !ku.crl_sign());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth && !eku.any);
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );

    let not_after = cert.validity().not_after.timestamp();
    let not_before = cert.validity().not_before.timestamp();
    let now = before
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (not_after - (now + 3600)).abs() <= 2,
        "lifetime as configured"
    );
    assert_eq!(answer.not_after, not_after);
    assert!(
        not_before <= now - 59 && not_before >= now - 62,
        "backdated by the clock skew"
    );
    assert!(cert.raw_serial().len() >= 16, "random 128-bit serial");
    assert!(cert.extensions().iter().any(|e| matches!(
        e.parsed_extension(),
        ParsedExtension::AuthorityKeyIdentifier(_)
    )));

    let issued = ca.issued();
    assert_eq!(
        issued[&who].not_after,
        SystemTime::UNIX_EPOCH + Duration::from_secs(not_after as u64)
    );

    // `meshctl status` still knows every identity's expiry after a control-plane restart.
    drop(ca);
    let reopened = open_ca(tmp.path(), config_with_lifetime(lifetime));
    let again = reopened.issued();
    assert_eq!(again[&who].not_after, issued[&who].not_after);
    assert_eq!(again[&who].serial, issued[&who].serial);

    // A corrupt list is not fatal: status starts empty and the next issue rewrites it.
    std::fs::write(tmp.path().join(".mesh/issued.json"), "{ half a file").unwrap();
    let reopened = open_ca(tmp.path(), config_with_lifetime(lifetime));
    assert!(reopened.issued().is_empty());
}

#[test]
fn csrs_with_wrong_names_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // Refused CSRs count against the rate limit too; this test is not about it.
    let rate_limit = meshctl::ca::RateLimitConfig {
        burst: 100,
        ..Default::default()
    };
    let ca = open_ca(
        tmp.path(),
        CaConfig {
            rate_limit,
            ..CaConfig::default()
        },
    );
    let who = id("backend");
    let me = who.to_string();
    let cases: Vec<(&str, Vec<SanType>)> = vec![
        (
            "extra URI SAN",
            vec![uri(&me), uri("spiffe://cluster.local/ns/default/sa/admin")],
        ),
        (
            "extra DNS SAN",
            vec![uri(&me), SanType::DnsName("backend".try_into().unwrap())],
        ),
        (
            "DNS SAN only",
            vec![SanType::DnsName("backend".try_into().unwrap())],
        ),
        (
            "IP SAN",
            vec![SanType::IpAddress("10.0.0.1".parse().unwrap())],
        ),
        ("non-SPIFFE URI", vec![uri("https://backend.example/")]),
        ("no SAN", vec![]),
    ];
    for (what, sans) in cases {
        let token = ca.issue_token(&who).unwrap();
        let (_, csr) = csr_with(sans);
        let err = ca
            .handle_csr(&request(Some(token.as_str()), &who, &csr), None)
            .unwrap_err();
        assert!(matches!(err, CaError::BadCsr(_)), "{what}: {err:?}");
        // A refused CSR does not burn the token.
        let (_, good) = csr_for(&who);
        ca.handle_csr(&request(Some(token.as_str()), &who, &good), None)
            .unwrap();
    }

    let token = ca.issue_token(&who).unwrap();
    let (_, other) = csr_for(&id("admin"));
    let err = ca
        .handle_csr(&request(Some(token.as_str()), &who, &other), None)
        .unwrap_err();
    assert!(
        matches!(err, CaError::CsrIdentityMismatch { .. }),
        "{err:?}"
    );

    let mut tampered = csr_for(&who).1.into_bytes();
    let mid = tampered.len() / 2;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    let err = ca
        .handle_csr(
            &request(
                Some(token.as_str()),
                &who,
                &String::from_utf8(tampered).unwrap(),
            ),
            None,
        )
        .unwrap_err();
    assert!(matches!(err, CaError::BadCsr(_)), "tampered CSR: {err:?}");
    let err = ca
        .handle_csr(&request(Some(token.as_str()), &who, "not a csr"), None)
        .unwrap_err();
    assert!(matches!(err, CaError::BadCsr(_)), "{err:?}");
}

#[test]
fn tokens_are_single_use_expiring_and_bound_to_one_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = open_ca(tmp.path(), CaConfig::default());
    let (a, b) = (id("frontend"), id("backend"));
    let (_, csr_a) = csr_for(&a);
    let (_, csr_b) = csr_for(&b);

    let token = ca.issue_token(&a).unwrap();
    let err = ca
        .handle_csr(&request(Some(token.as_str()), &b, &csr_b), None)
        .unwrap_err();
    assert!(
        matches!(err, CaError::TokenIdentityMismatch { .. }),
        "A's token for B: {err:?}"
    );
    ca.handle_csr(&request(Some(token.as_str()), &a, &csr_a), None)
        .unwrap();
    let err = ca
        .handle_csr(&request(Some(token.as_str()), &a, &csr_a), None)
        .unwrap_err();
    assert!(
        matches!(err, CaError::TokenReused { .. }),
        "replay: {err:?}"
    );

    let expired = ca.issue_token_with_ttl(&a, Duration::ZERO).unwrap();
    let err = ca
        .handle_csr(&request(Some(expired.as_str()), &a, &csr_a), None)
        .unwrap_err();
    assert!(matches!(err, CaError::TokenExpired { .. }), "{err:?}");

    let unknown = "mbt1_".to_string() + &"0".repeat(64);
    let err = ca
        .handle_csr(&request(Some(&unknown), &a, &csr_a), None)
        .unwrap_err();
    assert!(matches!(err, CaError::TokenUnknown), "{err:?}");
    let err = ca
        .handle_csr(&request(Some("hunter2"), &a, &csr_a), None)
        .unwrap_err();
    assert!(matches!(err, CaError::TokenMalformed), "{err:?}");
    let err = ca.handle_csr(&request(None, &a, &csr_a), None).unwrap_err();
    assert!(matches!(err, CaError::Unauthenticated), "{err:?}");

    // A peer certificate proves its own identity only.
    ca.handle_csr(&request(None, &a, &csr_a), Some(&a)).unwrap();
    let err = ca
        .handle_csr(&request(None, &b, &csr_b), Some(&a))
        .unwrap_err();
    assert!(
        matches!(err, CaError::PeerIdentityMismatch { .. }),
        "{err:?}"
    );

    let foreign = meshapi::ca_api::SpiffeId::new("evil.org", "default", "frontend").unwrap();
    let (_, csr_f) = csr_for(&foreign);
    let err = ca
        .handle_csr(&request(None, &foreign, &csr_f), Some(&foreign))
        .unwrap_err();
    assert!(matches!(err, CaError::ForeignTrustDomain { .. }), "{err:?}");
}

#[test]
fn outstanding_tokens_survive_a_restart_and_are_stored_hashed() {
    let tmp = tempfile::tempdir().unwrap();
    let who = id("backend");
    let (token, used) = {
        let ca = open_ca(tmp.path(), CaConfig::default());
        let used = ca.issue_token(&who).unwrap();
        let (_, csr) = csr_for(&who);
        ca.handle_csr(&request(Some(used.as_str()), &who, &csr), None)
            .unwrap();
        (ca.issue_token(&who).unwrap(), used)
    };
    let file = tmp.path().join(".mesh/tokens.json");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        !text.contains(token.as_str()) && !text.contains(used.as_str()),
        "tokens are hashed"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let ca = open_ca(tmp.path(), CaConfig::default());
    let (_, csr) = csr_for(&who);
    let err = ca
        .handle_csr(&request(Some(used.as_str()), &who, &csr), None)
        .unwrap_err();
    assert!(
        matches!(err, CaError::TokenReused { .. }),
        "a used token stays used: {err:?}"
    );
    ca.handle_csr(&request(Some(token.as_str()), &who, &csr), None)
        .unwrap();
}

/// A pod token (a sidecar container Docker may restart) is reusable for its one identity,
/// across a control-plane restart, until its holder is revoked.
#[test]
fn pod_tokens_are_reusable_for_their_identity_until_revoked() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (id("frontend"), id("backend"));
    let (_, csr_a) = csr_for(&a);
    let (_, csr_b) = csr_for(&b);
    let (token, other) = {
        let ca = open_ca(tmp.path(), CaConfig::default());
        let token = ca.issue_pod_token(&a, "p-frontend-1-proxy").unwrap();
        let other = ca.issue_pod_token(&b, "p-backend-1-proxy").unwrap();
        // First start and a restart of the container: the same token twice.
        for _ in 0..2 {
            ca.handle_csr(&request(Some(token.as_str()), &a, &csr_a), None)
                .unwrap();
        }
        let err = ca
            .handle_csr(&request(Some(token.as_str()), &b, &csr_b), None)
            .unwrap_err();
        assert!(
            matches!(err, CaError::TokenIdentityMismatch { .. }),
            "{err:?}"
        );
        (token, other)
    };
    // The control plane restarted: still valid (persisted, hashed).
    let ca = open_ca(tmp.path(), CaConfig::default());
    let text = std::fs::read_to_string(tmp.path().join(".mesh/tokens.json")).unwrap();
    assert!(!text.contains(token.as_str()), "pod tokens are hashed too");
    ca.handle_csr(&request(Some(token.as_str()), &a, &csr_a), None)
        .unwrap();
    // The container is removed: its token is revoked, the other pod's is not.
    assert_eq!(
        ca.revoke_pod_tokens(|h| h == "p-frontend-1-proxy").unwrap(),
        1
    );
    let err = ca
        .handle_csr(&request(Some(token.as_str()), &a, &csr_a), None)
        .unwrap_err();
    assert!(matches!(err, CaError::TokenUnknown), "{err:?}");
    ca.handle_csr(&request(Some(other.as_str()), &b, &csr_b), None)
        .unwrap();
    // Re-issuing for a holder replaces its previous token.
    let first = ca.issue_pod_token(&b, "p-backend-1-proxy").unwrap();
    let second = ca.issue_pod_token(&b, "p-backend-1-proxy").unwrap();
    for (t, ok) in [(&other, false), (&first, false), (&second, true)] {
        let r = ca.handle_csr(&request(Some(t.as_str()), &b, &csr_b), None);
        assert_eq!(r.is_ok(), ok, "{r:?}");
    }
}

#[test]
fn invalid_config_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for config in [
        CaConfig {
            cert_lifetime: Duration::from_millis(10),
            ..CaConfig::default()
        },
        CaConfig {
            trust_domain: "Bad Domain".into(),
            ..CaConfig::default()
        },
        CaConfig {
            token_ttl: Duration::ZERO,
            ..CaConfig::default()
        },
    ] {
        assert!(meshctl::ca::Ca::open(tmp.path(), config).is_err());
    }
    assert!(
        !tmp.path().join(".mesh").exists(),
        "nothing created for an invalid config"
    );
}

#[test]
fn a_corrupt_or_exposed_token_file_is_refused_by_name() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let ca = open_ca(tmp.path(), CaConfig::default());
    ca.issue_token(&id("backend")).unwrap();
    drop(ca);
    let file = tmp.path().join(".mesh/tokens.json");
    let good = std::fs::read(&file).unwrap();

    std::fs::write(&file, &good[..good.len() / 2]).unwrap();
    let err = meshctl::ca::Ca::open(tmp.path(), CaConfig::default()).unwrap_err();
    assert!(
        matches!(err, CaError::Corrupt { .. }) && err.to_string().contains("tokens.json"),
        "{err}"
    );

    std::fs::write(&file, &good).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = meshctl::ca::Ca::open(tmp.path(), CaConfig::default()).unwrap_err();
    assert!(
        matches!(err, CaError::Permissions { .. }) && err.to_string().contains("tokens.json"),
        "{err}"
    );
}

#[test]
fn mutated_csrs_never_panic_and_never_widen_the_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let rate_limit = meshctl::ca::RateLimitConfig {
        burst: 100_000,
        ..Default::default()
    };
    let ca = open_ca(
        tmp.path(),
        CaConfig {
            rate_limit,
            ..CaConfig::default()
        },
    );
    let who = id("backend");
    let (key, csr) = csr_for(&who);
    let lines: Vec<&str> = csr.lines().collect();
    let body: String = lines[1..lines.len() - 1].concat();
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut issued = 0;
    for (i, c) in body.bytes().enumerate().filter(|(_, c)| *c != b'=') {
        for delta in [1, 17, 40] {
            let pos = B64.iter().position(|b| *b == c).unwrap();
            let mut mutated = body.clone().into_bytes();
            mutated[i] = B64[(pos + delta) % 64];
            let pem = format!(
                "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
                String::from_utf8(mutated).unwrap()
            );
            if let Ok(answer) = ca.handle_csr(&request(None, &who, &pem), Some(&who)) {
                issued += 1;
                let chain = certs(&answer.cert_chain_pem);
                let (_, cert) = X509Certificate::from_der(&chain[0]).unwrap();
                let san = cert.subject_alternative_name().unwrap().unwrap();
                assert_eq!(
                    san.value.general_names,
                    vec![GeneralName::URI(
                        "spiffe://cluster.local/ns/default/sa/backend"
                    )]
                );
                assert_eq!(
                    cert.public_key().subject_public_key.data.as_ref(),
                    key.public_key_raw()
                );
            }
        }
    }
    // Only the unsigned envelope is malleable (x509-parser is lenient with a few outer tags);
    // the signed request info, and so identity and key, never changes.
    assert!(issued < 20, "{issued} mutated CSRs were signed");
}
