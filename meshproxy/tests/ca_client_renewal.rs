//! The proxy-side client's checks of issued certificates and its renewal schedule
//! (paused tokio time with a scripted credential source).
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use meshapi::proxy::SpiffeId;
use meshproxy::ca_client::{
    CaClientError, CredentialSource, Credentials, RenewPolicy, fetch_with_backoff, renew_loop,
    verify_issued,
};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor};
use tokio::time::Instant;

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "default", sa).unwrap()
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.to_string().try_into().unwrap())
}

/// Trust anchors of a PEM bundle.
fn anchors(pem: &str) -> Vec<TrustAnchor<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| {
            webpki::anchor_from_trusted_cert(&c.unwrap())
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// A tiny CA for crafting good and bad certificates.
struct MiniCa {
    issuer: rcgen::Issuer<'static, KeyPair>,
    pem: String,
}

impl MiniCa {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Self {
            issuer: rcgen::Issuer::new(params, key),
            pem: cert.pem(),
        }
    }

    fn leaf(&self, key: &KeyPair, sans: &[&str], not_after: SystemTime) -> String {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans.iter().map(|s| uri(s)).collect();
        params.not_before = (SystemTime::now() - Duration::from_secs(60)).into();
        params.not_after = not_after.into();
        params.signed_by(key, &self.issuer).unwrap().pem()
    }
}

#[test]
fn client_rejects_expired_foreign_misnamed_or_wrong_key_certificates() {
    let ca = MiniCa::new();
    let anchors = anchors(&ca.pem);
    let me = id("frontend");
    let me_s = me.to_string();
    let key = KeyPair::generate().unwrap();
    let now = SystemTime::now();
    let later = now + Duration::from_secs(3600);

    let good = ca.leaf(&key, &[&me_s], later);
    let not_after = verify_issued(&good, key.public_key_raw(), &me, &anchors, now).unwrap();
    assert!(not_after > now);

    let other_ca = MiniCa::new();
    let other_key = KeyPair::generate().unwrap();
    let cases = [
        (
            "expired",
            ca.leaf(&key, &[&me_s], now - Duration::from_secs(10)),
            "expired",
        ),
        (
            "other identity",
            ca.leaf(&key, &["spiffe://cluster.local/ns/default/sa/admin"], later),
            "names",
        ),
        (
            "two identities",
            ca.leaf(
                &key,
                &[&me_s, "spiffe://cluster.local/ns/default/sa/admin"],
                later,
            ),
            "names",
        ),
        ("other CA", other_ca.leaf(&key, &[&me_s], later), "chain"),
        ("other key", ca.leaf(&other_key, &[&me_s], later), "our key"),
        (
            "garbage",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
            "parse",
        ),
        ("empty", String::new(), "no certificate"),
    ];
    for (what, pem, needle) in cases {
        match verify_issued(&pem, key.public_key_raw(), &me, &anchors, now) {
            Err(CaClientError::Rejected(msg)) => assert!(msg.contains(needle), "{what}: {msg}"),
            other => panic!("{what}: expected a rejection, got {other:?}"),
        }
    }
}

fn creds(lifetime: Duration, serial: u32) -> Credentials {
    Credentials {
        identity: id("frontend"),
        cert_chain_pem: format!("cert {serial}"),
        key_pem: format!("key {serial}"),
        root_pem: String::new(),
        not_after: SystemTime::now() + lifetime,
    }
}

/// Answers from a script and records when (in tokio time) and with what it was called.
#[derive(Clone, Default)]
struct Scripted {
    answers: Arc<Mutex<VecDeque<Result<Credentials, CaClientError>>>>,
    calls: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl CredentialSource for Scripted {
    async fn fetch(&self, current: Option<&Credentials>) -> Result<Credentials, CaClientError> {
        let current = current
            .map(|c| c.cert_chain_pem.clone())
            .unwrap_or_default();
        self.calls.lock().unwrap().push((Instant::now(), current));
        self.answers
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Err(CaClientError::NoCredentials))
    }
}

const POLICY: RenewPolicy = RenewPolicy {
    renew_fraction: 0.5,
    jitter: 0.1,
    backoff_initial: Duration::from_secs(1),
    backoff_max: Duration::from_secs(8),
};

#[tokio::test(start_paused = true)]
async fn renews_at_about_half_of_the_lifetime() {
    let lifetime = Duration::from_secs(1000);
    let source = Scripted::default();
    source
        .answers
        .lock()
        .unwrap()
        .extend([Ok(creds(lifetime, 2)), Ok(creds(lifetime, 3))]);
    let (tx, mut rx) = tokio::sync::watch::channel(creds(lifetime, 1));
    let start = Instant::now();
    let task = tokio::spawn(renew_loop(source.clone(), tx, POLICY));

    rx.changed().await.unwrap();
    let first = start.elapsed();
    assert!(
        first >= Duration::from_secs(399) && first <= Duration::from_secs(601),
        "renewed after {first:?}"
    );
    assert_eq!(rx.borrow_and_update().cert_chain_pem, "cert 2");
    rx.changed().await.unwrap();
    let second = start.elapsed() - first;
    assert!(
        second >= Duration::from_secs(399) && second <= Duration::from_secs(601),
        "then after {second:?}"
    );

    let calls = source.calls.lock().unwrap().clone();
    assert_eq!(
        calls.iter().map(|c| c.1.as_str()).collect::<Vec<_>>(),
        ["cert 1", "cert 2"],
        "each renewal presents the credentials in use"
    );
    drop(rx);
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn failed_or_rejected_renewals_keep_the_old_credentials_and_back_off() {
    let lifetime = Duration::from_secs(100);
    let source = Scripted::default();
    source.answers.lock().unwrap().extend([
        Err(CaClientError::Rejected(
            "certificate is already expired".into(),
        )),
        Err(CaClientError::Refused {
            status: 503,
            message: "down".into(),
        }),
        Err(CaClientError::Timeout(Duration::from_secs(10))),
        Err(CaClientError::Rejected(
            "certificate names another identity".into(),
        )),
        Err(CaClientError::Rejected("does not chain".into())),
        Ok(creds(lifetime, 2)),
    ]);
    let (tx, mut rx) = tokio::sync::watch::channel(creds(lifetime, 1));
    let task = tokio::spawn(renew_loop(source.clone(), tx, POLICY));

    rx.changed().await.unwrap();
    assert_eq!(rx.borrow().cert_chain_pem, "cert 2");
    let calls = source.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 6);
    assert!(
        calls.iter().all(|c| c.1 == "cert 1"),
        "old credentials stay in use while failing"
    );
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1].0 - w[0].0).collect();
    // Exponential (1, 2, 4, 8, capped at 8 s) with jitter in [0.5, 1]x.
    for (i, (gap, base)) in gaps.iter().zip([1u64, 2, 4, 8, 8]).enumerate() {
        let base = Duration::from_secs(base);
        assert!(
            *gap >= base / 2 && *gap <= base,
            "retry {i} after {gap:?}, base {base:?}"
        );
    }
    drop(rx);
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn bootstrap_retries_transient_failures_and_gives_up_on_refusals() {
    let source = Scripted::default();
    source.answers.lock().unwrap().extend([
        Err(CaClientError::Refused {
            status: 429,
            message: "rate limited".into(),
        }),
        Err(CaClientError::Timeout(Duration::from_secs(10))),
        Ok(creds(Duration::from_secs(100), 1)),
    ]);
    let got = fetch_with_backoff(&source, None, &POLICY).await.unwrap();
    assert_eq!(got.cert_chain_pem, "cert 1");
    assert_eq!(source.calls.lock().unwrap().len(), 3);

    let source = Scripted::default();
    source
        .answers
        .lock()
        .unwrap()
        .extend([Err(CaClientError::Refused {
            status: 401,
            message: "bootstrap token was already used".into(),
        })]);
    let err = fetch_with_backoff(&source, None, &POLICY)
        .await
        .unwrap_err();
    assert!(
        matches!(err, CaClientError::Refused { status: 401, .. }),
        "{err:?}"
    );
    assert_eq!(
        source.calls.lock().unwrap().len(),
        1,
        "no retry of a spent token"
    );
}
