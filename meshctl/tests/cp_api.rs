//! The config and admin routes refuse what they must: no client certificate (401), another
//! workload's identity or a workload asking for admin routes (403), unknown proxies (404),
//! malformed queries and bodies (400). Raw requests over real TLS on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ca_support;

use std::time::Duration;

use ca_support::{csr_for, id, request, send};
use meshapi::wire::{ACK_PATH, RELOAD_PATH, STATUS_PATH};
use meshctl::api::ApiConfig;
use meshctl::controlplane::{ControlPlane, ControlPlaneConfig, ProjectSpec};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const COMPOSE: &str = "services:\n  web:\n    image: x\n    x-mesh:\n      ports: [{ port: 80, protocol: http }]\n  api:\n    image: y\n    x-mesh:\n      ports: [{ port: 90, protocol: tcp }]\n";

type Client = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn client_cert(cp: &ControlPlane, sa: &str) -> Client {
    let who = id(sa);
    let token = cp.ca().issue_token(&who).unwrap();
    let (key, csr) = csr_for(&who);
    let issued = cp
        .ca()
        .handle_csr(&request(Some(token.as_str()), &who, &csr), None)
        .unwrap();
    let chain = CertificateDer::pem_slice_iter(issued.cert_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
    (chain, key)
}

fn dup(c: &Client) -> Client {
    (c.0.clone(), c.1.clone_key())
}

#[tokio::test]
async fn routes_refuse_strangers_other_identities_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("compose.yaml"), COMPOSE).unwrap();
    let cp = ControlPlane::start(ControlPlaneConfig {
        project: ProjectSpec {
            working_dir: dir.path().to_path_buf(),
            ..ProjectSpec::default()
        },
        api: ApiConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            ..ApiConfig::default()
        },
        watch: false,
        ..ControlPlaneConfig::default()
    })
    .await
    .unwrap();
    let addr = cp.local_addr();
    let root = cp.ca().root_pem().to_string();
    let web = client_cert(&cp, "web");
    let get = |path: &str, c: Option<Client>| {
        let (root, path) = (root.clone(), path.to_string());
        async move {
            send(addr, &root, c, "GET", &path, Vec::new())
                .await
                .unwrap()
        }
    };
    let post = |path: &str, c: Option<Client>, body: &str| {
        let (root, path, body) = (root.clone(), path.to_string(), body.as_bytes().to_vec());
        async move { send(addr, &root, c, "POST", &path, body).await.unwrap() }
    };
    let poll = "/v1/config?workload=web&instance=0&waitMs=0";
    let ack = r#"{"workload":"web","instance":0,"epoch":1,"version":1,"accepted":true}"#;

    // No client certificate: 401 everywhere.
    assert_eq!(get(poll, None).await.0, 401);
    assert_eq!(post(ACK_PATH, None, ack).await.0, 401);
    assert_eq!(get(STATUS_PATH, None).await.0, 401);
    assert_eq!(post(RELOAD_PATH, None, "{}").await.0, 401);

    // Its own config: 200, with the JSON envelope.
    let (status, body) = get(poll, Some(dup(&web))).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(
        v["config"]["identity"]["spiffeId"],
        "spiffe://cluster.local/ns/default/sa/web"
    );
    // Up to date: 204 when the wait ends.
    let epoch = v["epoch"].as_u64().unwrap();
    let current = format!("/v1/config?workload=web&instance=0&epoch={epoch}&version=1&waitMs=50");
    assert_eq!(get(&current, Some(dup(&web))).await.0, 204);

    // Another workload's config or ACK: 403. Unknown proxy: 404. Bad input: 400.
    let api_poll = "/v1/config?workload=api&instance=0&waitMs=0";
    assert_eq!(get(api_poll, Some(dup(&web))).await.0, 403);
    let api_ack = ack.replace("\"web\"", "\"api\"");
    assert_eq!(post(ACK_PATH, Some(dup(&web)), &api_ack).await.0, 403);
    let nobody = "/v1/config?workload=nobody&waitMs=0";
    assert_eq!(get(nobody, Some(dup(&web))).await.0, 404);
    assert_eq!(get("/v1/config?instance=x", Some(dup(&web))).await.0, 400);
    assert_eq!(post(ACK_PATH, Some(dup(&web)), "{not json").await.0, 400);
    assert_eq!(post(ACK_PATH, Some(dup(&web)), ack).await.0, 204);

    // A workload identity is not an admin.
    assert_eq!(get(STATUS_PATH, Some(dup(&web))).await.0, 403);
    assert_eq!(post(RELOAD_PATH, Some(web), "{}").await.0, 403);

    tokio::time::timeout(Duration::from_secs(10), cp.shutdown())
        .await
        .unwrap();
}
