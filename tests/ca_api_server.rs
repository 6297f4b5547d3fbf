//! The CSR API over real TLS on 127.0.0.1, with the real proxy-side client.
#![allow(clippy::unwrap_used)]

// meshctl's own CA tests' helpers (identities, CSRs, the API on port 0, a raw TLS client).
#[path = "../meshctl/tests/ca_support/mod.rs"]
mod ca_support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ca_support::*;
use meshapi::ca_api::{ApiErrorBody, CsrResponse};
use meshctl::api::ApiConfig;
use meshctl::ca::{CaConfig, RateLimitConfig};
use meshproxy::ca_client::{CaClient, CaClientError, RenewPolicy, renew_loop};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

fn error_of(body: &str) -> String {
    serde_json::from_str::<ApiErrorBody>(body).unwrap().error
}

#[tokio::test]
async fn proxy_bootstraps_with_a_token_then_renews_over_mtls() {
    let tmp = tempfile::tempdir().unwrap();
    let config = CaConfig {
        cert_lifetime: Duration::from_secs(3),
        ..CaConfig::default()
    };
    let ca = Arc::new(open_ca(tmp.path(), config));
    let server = start_api(ca.clone()).await;
    let addr = server.local_addr().to_string();
    let who = id("frontend");
    let token = ca.issue_token(&who).unwrap();

    let client = CaClient::new(
        &addr,
        Some(token.as_str().into()),
        who.clone(),
        &ca.root_pem(),
    )
    .unwrap();
    let first = client.fetch(None).await.unwrap();
    chain_verifies(&first.cert_chain_pem, &ca.root_pem()).unwrap();
    assert_eq!(first.identity, who);
    // The proxy's TLS layer accepts what the CA issued as its SVID.
    meshproxy::tls::Credentials::from_pem(
        first.cert_chain_pem.as_bytes(),
        first.key_pem.as_bytes(),
        first.root_pem.as_bytes(),
        &who,
    )
    .unwrap();
    assert!(first.not_after > SystemTime::now());
    assert!(first.not_after <= SystemTime::now() + Duration::from_secs(4));

    // The token is spent: another proxy holding it is refused.
    let thief = CaClient::new(
        &addr,
        Some(token.as_str().into()),
        who.clone(),
        &ca.root_pem(),
    )
    .unwrap();
    match thief.fetch(None).await.unwrap_err() {
        CaClientError::Refused {
            status: 401,
            message,
        } => assert!(message.contains("already used"), "{message}"),
        other => panic!("replayed token: {other:?}"),
    }

    // Renewal at about half the lifetime, over mTLS (no token left), twice.
    let (tx, mut rx) = tokio::sync::watch::channel(first.clone());
    let policy = RenewPolicy {
        backoff_initial: Duration::from_millis(100),
        ..RenewPolicy::default()
    };
    let task = tokio::spawn(renew_loop(client, tx, policy));
    let mut previous = first;
    for round in 0..2 {
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .unwrap_or_else(|_| panic!("no renewal in round {round}"))
            .unwrap();
        let renewed = rx.borrow_and_update().clone();
        assert_ne!(renewed.cert_chain_pem, previous.cert_chain_pem);
        assert_ne!(
            renewed.key_pem, previous.key_pem,
            "a fresh key per certificate"
        );
        assert!(renewed.not_after >= previous.not_after);
        chain_verifies(&renewed.cert_chain_pem, &ca.root_pem()).unwrap();
        previous = renewed;
    }
    assert!(ca.issued().contains_key(&who));
    drop(rx);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn refusals_are_json_with_the_right_status() {
    let tmp = tempfile::tempdir().unwrap();
    let rate_limit = RateLimitConfig {
        burst: 100,
        ..Default::default()
    };
    let ca = Arc::new(open_ca(
        tmp.path(),
        CaConfig {
            rate_limit,
            ..CaConfig::default()
        },
    ));
    let server = start_api(ca.clone()).await;
    let addr = server.local_addr();
    let root = ca.root_pem().to_owned();
    let (a, b) = (id("frontend"), id("backend"));
    let (key_a, csr_a) = csr_for(&a);
    let (_, csr_b) = csr_for(&b);

    let (status, body) = post_csr(addr, &root, None, &request(None, &a, &csr_a))
        .await
        .unwrap();
    assert_eq!(status, 401, "no token, no certificate: {body}");
    assert!(error_of(&body).contains("no bootstrap token"));

    let token_a = ca.issue_token(&a).unwrap();
    let (status, body) = post_csr(
        addr,
        &root,
        None,
        &request(Some(token_a.as_str()), &b, &csr_b),
    )
    .await
    .unwrap();
    assert_eq!(status, 403, "A's token for B: {body}");

    let extra = csr_with(vec![
        uri(&a.to_string()),
        uri("spiffe://cluster.local/ns/default/sa/admin"),
    ])
    .1;
    let (status, body) = post_csr(
        addr,
        &root,
        None,
        &request(Some(token_a.as_str()), &a, &extra),
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "extra SAN: {body}");
    assert!(error_of(&body).contains("exactly one SPIFFE URI"), "{body}");

    let (status, body) = post_csr(
        addr,
        &root,
        None,
        &request(Some(token_a.as_str()), &a, &csr_a),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let answer: CsrResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(answer.root_pem, root);

    // With A's certificate: renewing A works, asking for B is refused.
    let client_cert = || Some((certs(&answer.cert_chain_pem), key_der(&key_a)));
    let (status, body) = post_csr(addr, &root, client_cert(), &request(None, &a, &csr_a))
        .await
        .unwrap();
    assert_eq!(
        status, 200,
        "renewal with a valid client certificate: {body}"
    );
    let (status, body) = post_csr(addr, &root, client_cert(), &request(None, &b, &csr_b))
        .await
        .unwrap();
    assert_eq!(status, 403, "A's certificate for B: {body}");

    // A client certificate from another CA fails the handshake.
    let other_key = KeyPair::generate().unwrap();
    let mut other_params = CertificateParams::default();
    other_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let other_ca = other_params.self_signed(&other_key).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_der(other_ca.der(), other_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::default();
    leaf.subject_alt_names = vec![uri(&a.to_string())];
    let leaf = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let foreign = Some((
        vec![leaf.der().clone(), other_ca.der().clone()],
        key_der(&leaf_key),
    ));
    let result = post_csr(addr, &root, foreign, &request(None, &a, &csr_a)).await;
    assert!(
        result.is_err(),
        "a certificate from another CA must be refused: {result:?}"
    );

    // Routing and body errors.
    let mut bad = request(None, &a, &csr_a);
    bad.identity = "https://example.com/".into();
    let (status, body) = post_csr(addr, &root, None, &bad).await.unwrap();
    assert_eq!(status, 400, "{body}");

    server.shutdown().await;
}

#[tokio::test]
async fn csr_endpoint_is_rate_limited_per_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let rate_limit = RateLimitConfig {
        burst: 2,
        refill_every: Duration::from_secs(3600),
    };
    let ca = Arc::new(open_ca(
        tmp.path(),
        CaConfig {
            rate_limit,
            ..CaConfig::default()
        },
    ));
    let server = start_api(ca.clone()).await;
    let root = ca.root_pem().to_owned();
    let who = id("chatty");
    let mut statuses = Vec::new();
    let mut last = String::new();
    for _ in 0..3 {
        let token = ca.issue_token(&who).unwrap();
        let (_, csr) = csr_for(&who);
        let (status, body) = post_csr(
            server.local_addr(),
            &root,
            None,
            &request(Some(token.as_str()), &who, &csr),
        )
        .await
        .unwrap();
        statuses.push(status);
        last = body;
    }
    assert_eq!(statuses, [200, 200, 429]);
    assert!(error_of(&last).contains("rate limited"), "{last}");

    // Another identity has its own bucket.
    let other = id("quiet");
    let token = ca.issue_token(&other).unwrap();
    let (_, csr) = csr_for(&other);
    let (status, _) = post_csr(
        server.local_addr(),
        &root,
        None,
        &request(Some(token.as_str()), &other, &csr),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    server.shutdown().await;
}

#[tokio::test]
async fn serving_certificate_names_the_control_plane_and_is_rotated() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Arc::new(open_ca(tmp.path(), CaConfig::default()));
    let config = ApiConfig {
        serving_cert_lifetime: Duration::from_secs(2),
        ..ApiConfig::default()
    };
    let server = start_api_with(ca.clone(), config).await;
    let first = server_chain(server.local_addr(), &ca.root_pem()).await;
    assert_eq!(
        meshctl::api::spiffe_id_of(&first[0]).unwrap().to_string(),
        "spiffe://cluster.local/ns/mesh-system/sa/meshctl"
    );
    // Re-issued once half of its lifetime has passed (poll with a deadline).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = server_chain(server.local_addr(), &ca.root_pem()).await;
        if now[0] != first[0] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "serving certificate never rotated"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn other_components_add_routes_and_can_require_a_client_certificate() {
    use http::{Method, StatusCode};
    let tmp = tempfile::tempdir().unwrap();
    let ca = Arc::new(open_ca(tmp.path(), CaConfig::default()));
    let router = meshctl::api::ca_router(ca.clone()).route(
        Method::GET,
        "/v1/whoami",
        |_req, peer: meshctl::api::PeerInfo| async move {
            match peer.require_identity() {
                Ok(id) => meshctl::api::json_response(StatusCode::OK, &id.to_string()),
                Err(refusal) => refusal,
            }
        },
    );
    let server = start_api_router(ca.clone(), ApiConfig::default(), router).await;
    let (addr, root) = (server.local_addr(), ca.root_pem().to_owned());

    let (status, body) = send(addr, &root, None, "GET", "/v1/whoami", vec![])
        .await
        .unwrap();
    assert_eq!(status, 401, "no client certificate: {body}");
    assert!(error_of(&body).contains("client certificate"));

    let who = id("frontend");
    let token = ca.issue_token(&who).unwrap();
    let (key, csr) = csr_for(&who);
    let answer = ca
        .handle_csr(&request(Some(token.as_str()), &who, &csr), None)
        .unwrap();
    let cert = Some((certs(&answer.cert_chain_pem), key_der(&key)));
    let (status, body) = send(addr, &root, cert, "GET", "/v1/whoami", vec![])
        .await
        .unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "\"spiffe://cluster.local/ns/default/sa/frontend\"")
    );

    let (status, _) = send(addr, &root, None, "DELETE", "/v1/whoami", vec![])
        .await
        .unwrap();
    assert_eq!(status, 405);
    let (status, _) = send(addr, &root, None, "GET", "/v1/nope", vec![])
        .await
        .unwrap();
    assert_eq!(status, 404);
    let (status, body) = send(addr, &root, None, "POST", "/v1/csr", b"{not json".to_vec())
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    let huge = vec![b' '; 100 * 1024];
    let (status, body) = send(addr, &root, None, "POST", "/v1/csr", huge)
        .await
        .unwrap();
    assert_eq!(status, 400, "oversized body: {body}");
    server.shutdown().await;
}
