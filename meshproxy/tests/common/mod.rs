//! Helpers for running meshproxy pairs in-process with the meshtest CA.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use meshapi::proxy::ProxyConfig;
use meshproxy::Bound;
use meshtest::TestCa;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const TD: &str = "cluster.local";

pub fn spiffe(sa: &str) -> String {
    format!("spiffe://{TD}/ns/default/sa/{sa}")
}

/// A CA and a temp dir holding every proxy's files.
pub struct Mesh {
    pub ca: TestCa,
    pub dir: tempfile::TempDir,
}

impl Mesh {
    pub fn new() -> Mesh {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("mesh-root");
        ca.write_roots(dir.path(), "roots.pem");
        Mesh { ca, dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a certificate for service account `sa` and returns the identity YAML block.
    pub fn identity_yaml(&self, sa: &str) -> String {
        let (cert, key) = self.ca.issue(&spiffe(sa)).write(self.path(), sa);
        format!(
            "identity:\n  spiffeId: {}\n  certFile: {}\n  keyFile: {}\n  rootsFile: {}\n",
            spiffe(sa),
            cert.display(),
            key.display(),
            self.path().join("roots.pem").display()
        )
    }
}

/// The parts of a config every test proxy shares: loopback port-0 listeners.
pub fn base_yaml(identity: &str, revision: u64) -> String {
    format!(
        "apiVersion: meshproxy/v1\nrevision: {revision}\n{identity}listeners:\n  inbound: 127.0.0.1:0\n\
         admin:\n  admin: 127.0.0.1:0\n  health: 127.0.0.1:0\n  stats: 127.0.0.1:0\n\
         drainDeadline: 2s\n"
    )
}

pub fn parse(yaml: &str) -> ProxyConfig {
    ProxyConfig::from_str_checked(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

/// A server-side proxy for `sa` serving one app port with a mode.
pub async fn backend_proxy(mesh: &Mesh, sa: &str, port: u16, protocol: &str, mode: &str) -> Bound {
    let yaml = format!(
        "{}inbound:\n  - {{ port: {port}, protocol: {protocol}, mode: {mode} }}\n",
        base_yaml(&mesh.identity_yaml(sa), 1)
    );
    meshproxy::build(parse(&yaml)).await.unwrap()
}

/// YAML for a client-side proxy with one outbound service `backend` at `vip`.
pub fn client_yaml(
    mesh_identity: &str,
    revision: u64,
    vip: &str,
    protocol: &str,
    target_port: u16,
    endpoints: &[(SocketAddr, &str)],
) -> String {
    let mut y = base_yaml(mesh_identity, revision);
    y.push_str(&format!(
        "outbound:\n  - {{ service: backend, vip: \"{vip}\", protocol: {protocol}, targetPort: {target_port} }}\n\
         services:\n  backend:\n    endpoints:\n"
    ));
    for (addr, sa) in endpoints {
        y.push_str(&format!(
            "      - {{ address: \"{addr}\", identity: \"{}\" }}\n",
            spiffe(sa)
        ));
    }
    y
}

pub type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

pub fn http1_client() -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new())
}

pub fn h2c_client() -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build(hyper_util::client::legacy::connect::HttpConnector::new())
}

/// GET through a client, returning status, headers and body text.
pub async fn get(client: &Client, url: &str) -> (http::StatusCode, http::HeaderMap, String) {
    let resp = client.get(url.parse().unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Sends raw bytes on a fresh TCP connection and returns everything read until the peer
/// closes or 3 s pass.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A forward proxy as an application: answers `CONNECT` with 200, then echoes; records the
/// request head (request line and headers) it was sent.
pub async fn connect_app() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let seen = seen2.clone();
            tokio::spawn(async move {
                let head = read_head(&mut s).await;
                seen.lock().unwrap().push(head);
                s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .unwrap();
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, seen)
}

pub async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if s.read_exact(&mut b).await.is_err() {
            break;
        }
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Accepts any server certificate: these tests are about what the *server* refuses.
#[derive(Debug)]
pub struct AnyServer;

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS 1.3 connection to a proxy's inbound listener as a mesh peer would open it: SNI naming
/// `port`, ALPN `alpn`, the client certificate `cert` if any; the server is not verified.
/// `None` when the handshake fails.
pub async fn mtls_connect(
    addr: SocketAddr,
    port: u16,
    cert: Option<&meshtest::Workload>,
    alpn: &[u8],
) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(std::sync::Arc::new(AnyServer));
    let mut cfg = match cert {
        Some(w) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(w.cert_pem.as_bytes())
                    .map(|c| c.unwrap())
                    .collect(),
                PrivateKeyDer::from_pem_slice(w.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(format!("p{port}.inbound.mesh")).unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .ok()
}

/// Loads a compose file and Istio `policies` as the control plane does (no errors allowed).
fn load_project(compose: &str, policies: &str) -> meshmodel::load::Loaded {
    use meshmodel::load::{LoadOptions, load};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("compose.yaml"), compose).unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), policies).unwrap();
    let mut opts = LoadOptions::new(dir.path());
    opts.env = Box::new(std::collections::BTreeMap::<String, String>::new());
    let loaded = load(&opts);
    assert!(!loaded.has_errors(), "{:#?}", loaded.diagnostics);
    loaded
}

/// The route table of compose service `client`, compiled from a compose file and Istio
/// `policies` by the real compiler, as the control plane does.
pub fn compiled_route_table(
    compose: &str,
    policies: &str,
    client: &str,
) -> meshapi::traffic::RouteTable {
    let loaded = load_project(compose, policies);
    let inv = meshmodel::model::Inventory::from_compose(loaded.mesh.compose.as_ref());
    let me = inv
        .workloads
        .iter()
        .find(|w| w.compose_name == client)
        .unwrap();
    meshmodel::compile::routes::compile_routes(&loaded.mesh, &inv, me).unwrap()
}

/// The `authorization` section the compiler writes into compose service `workload`'s
/// config (`None` when it writes none).
pub fn compiled_authorization(
    compose: &str,
    policies: &str,
    workload: &str,
) -> Option<meshapi::authz::WorkloadPolicy> {
    use meshmodel::compile::{CompileInput, DEFAULT_HOST_BASE_PORT, HostPlacement, ProxyKey};
    let loaded = load_project(compose, policies);
    let mesh = loaded.mesh;
    let inv = meshmodel::model::Inventory::from_compose(mesh.compose.as_ref());
    let mut vips = meshapi::dns::VipAllocator::new(meshapi::dns::VipRange::default());
    vips.sync(
        inv.services
            .iter()
            .map(|s| (s.namespace.as_str(), s.name.as_str())),
    )
    .unwrap();
    let placement = HostPlacement::new(&inv, DEFAULT_HOST_BASE_PORT);
    let input = CompileInput::new(&mesh, &inv, &vips, &placement, 1);
    let key = ProxyKey {
        workload: workload.into(),
        instance: 0,
    };
    meshmodel::compile::compile_proxy(&input, &key)
        .unwrap()
        .authorization
}
