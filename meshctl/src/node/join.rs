//! The joining side: `meshctl join TOKEN` on another machine.
//!
//! 1. Fetch the control plane's CA roots (public, over TLS that verifies nothing yet, sending
//!    nothing secret) and check that one of them hashes to the token's fingerprint; refuse
//!    otherwise, before the token leaves this machine.
//! 2. Over TLS verified against that root (and the address in the serving certificate), send
//!    a CSR for the node identity with the token: the node certificate. Its key is generated
//!    here and stays in `<project>/.mesh/node/` (0600), with the certificate and roots, so a
//!    node that restarts rejoins with it (renewed over mTLS, like a workload certificate),
//!    without a new token.
//! 3. Register (mTLS as the node): the control plane records the node's address (the one it
//!    sees, or `--address`) and answers the proxies placed on it, each with a pod token.
//! 4. Run one `meshproxy` per placed proxy in control-plane mode (restarted when it exits),
//!    renew the node certificate at half of its lifetime, until SIGINT/SIGTERM or removal.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use meshapi::ca_api::{
    CSR_PATH, CsrRequest, CsrResponse, ENV_BOOTSTRAP_TOKEN, ENV_CA_ADDR, ENV_CA_ROOT_PEM,
    ENV_IDENTITY, ENV_INSTANCE, ENV_WORKLOAD, SpiffeId,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde::{Deserialize, Serialize};

use super::api::{NodePlan, REGISTER_PATH, ROOTS_PATH, RegisterRequest, RootsResponse};
use super::token::{JoinToken, fingerprint};
use crate::controlplane::admin::StateFile;
use crate::controlplane::client::{AdminClient, ClientError};

/// The node's directory under the project's state directory.
pub const NODE_DIR: &str = "node";
/// The node's own record in it.
pub const NODE_FILE: &str = "node.json";

/// Why joining failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(
        "the control plane at {address} is not the one the token was made for: its CA root is sha256 {got}, the token names {expected}; the token was not sent"
    )]
    Fingerprint {
        address: String,
        expected: String,
        got: String,
    },
    #[error("control plane: {0}")]
    Client(#[from] ClientError),
    #[error("{0}")]
    Tls(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "no node credential in {0}: give the token printed by `meshctl token create --node NAME` on the control plane's machine"
    )]
    NotJoined(PathBuf),
    #[error("the node credential expired: create a new token (`meshctl token create --node {0}`)")]
    Expired(String),
}

/// `<project>/.mesh/node/node.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeState {
    /// The node's name.
    pub node: String,
    /// The control plane's API, `host:port`.
    pub control_plane: String,
    /// The mesh's trust domain (of the node identity).
    pub trust_domain: String,
    /// pid of the running `meshctl join` (for `meshctl leave`).
    pub pid: u32,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JoinError + '_ {
    move |source| JoinError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(e: impl std::fmt::Display) -> JoinError {
    JoinError::Tls(e.to_string())
}

/// Accepts any server certificate: only for fetching the public roots, which are then checked
/// against the token's fingerprint. Nothing secret is sent on such a connection.
#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn bare_state(address: &str) -> StateFile {
    StateFile {
        address: address.to_string(),
        epoch: 0,
        pid: std::process::id(),
        root_cert: PathBuf::new(),
        admin_cert: PathBuf::new(),
        admin_key: PathBuf::new(),
    }
}

fn client_config(
    roots: RootCertStore,
    auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<ClientConfig>, JoinError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_root_certificates(roots);
    let mut config = match auth {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(tls_err)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Step 1: the control plane's roots, and the one the token's fingerprint names. Sends
/// nothing but a GET of a public document.
pub async fn verified_root(
    token: &JoinToken,
) -> Result<(RootsResponse, CertificateDer<'static>), JoinError> {
    let mut insecure = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider())))
        .with_no_client_auth();
    insecure.alpn_protocols = vec![b"http/1.1".to_vec()];
    let client = AdminClient::with_tls(bare_state(&token.address), Arc::new(insecure));
    let roots: RootsResponse = client.get(ROOTS_PATH).await?;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(roots.roots_pem.as_bytes())
            .filter_map(Result::ok)
            .collect();
    match certs.iter().find(|c| fingerprint(c) == token.fingerprint) {
        Some(root) => {
            let root = root.clone();
            Ok((roots, root))
        }
        None => Err(JoinError::Fingerprint {
            address: token.address.clone(),
            expected: token.fingerprint.clone(),
            got: certs
                .iter()
                .map(|c| fingerprint(c))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

fn csr_for(id: &SpiffeId) -> Result<(KeyPair, String), JoinError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(tls_err)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let uri = id.to_string().try_into().map_err(tls_err)?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(tls_err)?;
    Ok((key, csr))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), JoinError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// The node's credential directory, `<state_dir>/node`.
pub fn node_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(NODE_DIR)
}

/// Writes the node's credentials and the client state file that points at the control plane.
fn store_credentials(
    dir: &Path,
    control_plane: &str,
    node: &str,
    trust_domain: &str,
    roots_pem: &str,
    issued: &CsrResponse,
    key: &KeyPair,
) -> Result<(), JoinError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    let state = StateFile {
        address: control_plane.to_string(),
        epoch: 0,
        pid: std::process::id(),
        root_cert: dir.join("root-cert.pem"),
        admin_cert: dir.join("cert-chain.pem"),
        admin_key: dir.join("key.pem"),
    };
    write_private(&state.root_cert, roots_pem.as_bytes())?;
    write_private(&state.admin_key, key.serialize_pem().as_bytes())?;
    write_private(&state.admin_cert, issued.cert_chain_pem.as_bytes())?;
    let json = |v: serde_json::Result<Vec<u8>>| v.map_err(|e| tls_err(e.to_string()));
    write_private(
        &dir.join(crate::controlplane::admin::STATE_FILE),
        &json(serde_json::to_vec_pretty(&state))?,
    )?;
    let me = NodeState {
        node: node.to_string(),
        control_plane: control_plane.to_string(),
        trust_domain: trust_domain.to_string(),
        pid: std::process::id(),
    };
    write_private(&dir.join(NODE_FILE), &json(serde_json::to_vec_pretty(&me))?)
}

/// Reads `<state_dir>/node/node.json`.
pub fn read_node(state_dir: &Path) -> Result<NodeState, JoinError> {
    let dir = node_dir(state_dir);
    let path = dir.join(NODE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|_| JoinError::NotJoined(dir.clone()))?;
    serde_json::from_str(&text).map_err(|e| JoinError::Io {
        path,
        source: std::io::Error::other(e),
    })
}

/// Step 2 with a token: the node certificate, stored under `state_dir`.
pub async fn obtain_credentials(
    state_dir: &Path,
    token: &JoinToken,
    root: CertificateDer<'static>,
    roots_pem: &str,
    trust_domain: &str,
) -> Result<CsrResponse, JoinError> {
    let id = super::node_id(trust_domain, &token.node).map_err(tls_err)?;
    let mut store = RootCertStore::empty();
    store.add(root).map_err(tls_err)?;
    let client = AdminClient::with_tls(bare_state(&token.address), client_config(store, None)?);
    let (key, csr_pem) = csr_for(&id)?;
    let issued: CsrResponse = client
        .post(
            CSR_PATH,
            &CsrRequest {
                token: Some(token.secret.clone()),
                identity: id.to_string(),
                csr_pem,
            },
        )
        .await?;
    store_credentials(
        &node_dir(state_dir),
        &token.address,
        &token.node,
        trust_domain,
        roots_pem,
        &issued,
        &key,
    )?;
    Ok(issued)
}

/// Renews the node certificate over mTLS with the current one; refused once the node is
/// removed.
pub async fn renew(state_dir: &Path, node: &str, trust_domain: &str) -> Result<i64, JoinError> {
    let dir = node_dir(state_dir);
    let client = AdminClient::from_state_dir(&dir)?;
    let id = super::node_id(trust_domain, node).map_err(tls_err)?;
    let (key, csr_pem) = csr_for(&id)?;
    let issued: CsrResponse = client
        .post(
            CSR_PATH,
            &CsrRequest {
                token: None,
                identity: id.to_string(),
                csr_pem,
            },
        )
        .await?;
    let roots = std::fs::read_to_string(dir.join("root-cert.pem")).map_err(io(&dir))?;
    store_credentials(
        &dir,
        client.address(),
        node,
        trust_domain,
        &roots,
        &issued,
        &key,
    )?;
    Ok(issued.not_after)
}

/// Step 3: registers (mTLS as the node) and returns what this node runs.
pub async fn register(state_dir: &Path, address: Option<IpAddr>) -> Result<NodePlan, JoinError> {
    let client = AdminClient::from_state_dir(&node_dir(state_dir))?;
    Ok(client
        .post(REGISTER_PATH, &RegisterRequest { address })
        .await?)
}

/// One running `meshproxy` of the node.
pub struct RunningProxy {
    pub name: String,
    child: tokio::process::Child,
    started: Instant,
}

/// Starts one proxy of `plan` in control-plane mode; its output goes to
/// `<node dir>/logs/<workload>-<instance>.log`.
pub fn spawn_proxy(
    proxy_bin: &Path,
    state_dir: &Path,
    plan: &NodePlan,
    control_plane: &str,
    index: usize,
) -> Result<RunningProxy, JoinError> {
    let Some(p) = plan.proxies.get(index) else {
        return Err(tls_err("no such proxy in the plan"));
    };
    let logs = node_dir(state_dir).join("logs");
    std::fs::create_dir_all(&logs).map_err(io(&logs))?;
    let name = format!("{}-{}", p.workload, p.instance);
    let log_path = logs.join(format!("{name}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io(&log_path))?;
    let err = log.try_clone().map_err(io(&log_path))?;
    let child = tokio::process::Command::new(proxy_bin)
        .env(ENV_CA_ADDR, control_plane)
        .env(ENV_BOOTSTRAP_TOKEN, &p.token)
        .env(ENV_IDENTITY, &p.identity)
        .env(ENV_CA_ROOT_PEM, &plan.roots_pem)
        .env(ENV_WORKLOAD, &p.workload)
        .env(ENV_INSTANCE, p.instance.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .map_err(io(proxy_bin))?;
    Ok(RunningProxy {
        name,
        child,
        started: Instant::now(),
    })
}

impl RunningProxy {
    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Exit status, if it ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// How long it has been running.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// SIGTERM (the proxy drains), then SIGKILL after `grace`.
    pub async fn stop(mut self, grace: Duration) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok())
            && let Some(pid) = rustix::process::Pid::from_raw(pid)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// When the node certificate in `state_dir` should be renewed: half of its lifetime.
pub fn renew_at(state_dir: &Path) -> Option<SystemTime> {
    let dir = node_dir(state_dir);
    let pem = std::fs::read(dir.join("cert-chain.pem")).ok()?;
    let leaf = CertificateDer::pem_slice_iter(&pem).next()?.ok()?;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, x509) = X509Certificate::from_der(&leaf).ok()?;
    let from = x509.validity().not_before.timestamp();
    let to = x509.validity().not_after.timestamp();
    let mid = u64::try_from(from + (to - from) / 2).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(mid))
}

/// Whether the node certificate in `state_dir` is still valid.
pub fn credential_valid(state_dir: &Path) -> bool {
    let path = node_dir(state_dir).join("cert-chain.pem");
    let Ok(pem) = std::fs::read(path) else {
        return false;
    };
    let Some(Ok(leaf)) = CertificateDer::pem_slice_iter(&pem).next() else {
        return false;
    };
    crate::controlplane::client::not_after_of(&leaf)
        .is_some_and(|t| t > crate::ca::unix_secs(SystemTime::now()))
}
