//! Shared helpers of the `ca_*` and `cp_api` tests here and of `tests/ca_api_server.rs` (the
//! end-to-end package): identities, CSRs, the API on port 0, a raw API client.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use meshapi::ca_api::{CsrRequest, SpiffeId};
use meshctl::api::{ApiConfig, ApiServer};
use meshctl::ca::{Ca, CaConfig};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

pub fn id(sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "default", sa).unwrap()
}

pub fn open_ca(state: &Path, config: CaConfig) -> Ca {
    Ca::open(state, config).unwrap()
}

/// A CSR with exactly `sans`, and its key.
pub fn csr_with(sans: Vec<SanType>) -> (KeyPair, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans;
    let pem = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, pem)
}

pub fn uri(s: &str) -> SanType {
    SanType::URI(s.to_string().try_into().unwrap())
}

/// A proper CSR for `identity`.
pub fn csr_for(identity: &SpiffeId) -> (KeyPair, String) {
    csr_with(vec![uri(&identity.to_string())])
}

pub fn request(token: Option<&str>, identity: &SpiffeId, csr_pem: &str) -> CsrRequest {
    CsrRequest {
        token: token.map(str::to_owned),
        identity: identity.to_string(),
        csr_pem: csr_pem.to_owned(),
    }
}

/// Starts the API on 127.0.0.1:0 with the CA routes.
pub async fn start_api(ca: Arc<Ca>) -> ApiServer {
    start_api_with(ca, ApiConfig::default()).await
}

/// Starts the API on 127.0.0.1:0 with the CA routes and otherwise `config`.
pub async fn start_api_with(ca: Arc<Ca>, config: ApiConfig) -> ApiServer {
    start_api_router(ca.clone(), config, meshctl::api::ca_router(ca)).await
}

/// Starts the API on 127.0.0.1:0 with `router`.
pub async fn start_api_router(
    ca: Arc<Ca>,
    config: ApiConfig,
    router: meshctl::api::Router,
) -> ApiServer {
    let config = ApiConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..config
    };
    ApiServer::bind(config, ca, router).await.unwrap()
}

/// The certificate chain the API server presents, verified against `root_pem` as `localhost`.
pub async fn server_chain(addr: SocketAddr, root_pem: &str) -> Vec<CertificateDer<'static>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap().to_vec()
}

/// POSTs `body` to /v1/csr over TLS (see [`send`]).
pub async fn post_csr(
    addr: SocketAddr,
    root_pem: &str,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    body: &CsrRequest,
) -> Result<(u16, String), String> {
    let json = serde_json::to_vec(body).unwrap();
    send(addr, root_pem, client, "POST", "/v1/csr", json).await
}

/// Sends one request over TLS verified by `root_pem` with server name `localhost`,
/// optionally with a client certificate. Returns status and body, or the transport error.
pub async fn send(
    addr: SocketAddr,
    root_pem: &str,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<(u16, String), String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let work = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// Parses a PEM chain.
pub fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

pub fn key_der(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap()
}

/// Trust anchors of a PEM bundle.
pub fn anchors(pem: &str) -> Vec<rustls::pki_types::TrustAnchor<'static>> {
    certs(pem)
        .iter()
        .map(|c| webpki::anchor_from_trusted_cert(c).unwrap().to_owned())
        .collect()
}

/// Verifies a chain for client auth against `root_pem` at the current time.
pub fn chain_verifies(chain_pem: &str, root_pem: &str) -> Result<(), String> {
    let chain = certs(chain_pem);
    let anchors = anchors(root_pem);
    let ee = webpki::EndEntityCert::try_from(&chain[0]).map_err(|e| format!("{e:?}"))?;
    let now = rustls::pki_types::UnixTime::now();
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &chain[1..],
        now,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| format!("{e:?}"))
}
