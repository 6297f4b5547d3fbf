//! How the CLI finds and authenticates to the running control plane.
//!
//! At start the control plane issues the CLI a certificate through its own CA, for the admin
//! identity `spiffe://<td>/ns/mesh-system/sa/meshctl-admin` (key generated here, CSR signed
//! with a one-time token like any workload's), writes key and chain under
//! `<project>/.mesh/admin/` (mode 0600, directory 0700), and writes
//! `<project>/.mesh/controlplane.json` with its address, epoch and the paths of the root and
//! admin credentials. Whoever can read `.mesh/` can administer the mesh, as whoever can read
//! the CA key there could anyway. The status and reload routes accept only that identity.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use meshapi::ca_api::{CONTROL_PLANE_NAMESPACE, CsrRequest, SpiffeId, SpiffeIdError};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use serde::{Deserialize, Serialize};

use super::ControlPlaneError;
use crate::ca::Ca;

/// Service account of the CLI's admin identity.
pub const ADMIN_SERVICE_ACCOUNT: &str = "meshctl-admin";
/// Name of the state file under `.mesh/`.
pub const STATE_FILE: &str = "controlplane.json";

/// The admin identity in `trust_domain`.
pub fn admin_id(trust_domain: &str) -> Result<SpiffeId, SpiffeIdError> {
    SpiffeId::new(trust_domain, CONTROL_PLANE_NAMESPACE, ADMIN_SERVICE_ACCOUNT)
}

/// `<project>/.mesh/controlplane.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateFile {
    /// `host:port` of the API (an unspecified listen address is written as loopback).
    pub address: String,
    /// The control plane's epoch.
    pub epoch: u64,
    /// Its process id.
    pub pid: u32,
    /// PEM trust roots.
    pub root_cert: PathBuf,
    /// PEM admin certificate chain.
    pub admin_cert: PathBuf,
    /// PEM admin private key.
    pub admin_key: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ControlPlaneError + '_ {
    move |source| ControlPlaneError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` with mode 0600 via a temporary file and a rename.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ControlPlaneError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Issues the admin credentials and writes them and the state file; returns its path.
pub fn write_state(
    state_dir: &Path,
    addr: SocketAddr,
    ca: &Ca,
    epoch: u64,
) -> Result<PathBuf, ControlPlaneError> {
    let admin = |m: String| ControlPlaneError::Admin(m);
    let dir = state_dir.join("admin");
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io(&dir))?;
    let id = admin_id(&ca.config().trust_domain).map_err(|e| admin(e.to_string()))?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| admin(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let uri = id
        .to_string()
        .try_into()
        .map_err(|e: rcgen::Error| admin(e.to_string()))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| admin(e.to_string()))?;
    let token = ca.issue_token(&id).map_err(|e| admin(e.to_string()))?;
    let issued = ca
        .handle_csr(
            &CsrRequest {
                token: Some(token.as_str().to_string()),
                identity: id.to_string(),
                csr_pem,
            },
            None,
        )
        .map_err(|e| admin(e.to_string()))?;
    let state = StateFile {
        address: if addr.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], addr.port())).to_string()
        } else {
            addr.to_string()
        },
        epoch,
        pid: std::process::id(),
        root_cert: dir.join("root-cert.pem"),
        admin_cert: dir.join("cert-chain.pem"),
        admin_key: dir.join("key.pem"),
    };
    write_private(&state.root_cert, issued.root_pem.as_bytes())?;
    write_private(&state.admin_cert, issued.cert_chain_pem.as_bytes())?;
    write_private(&state.admin_key, key.serialize_pem().as_bytes())?;
    let path = state_dir.join(STATE_FILE);
    let json = serde_json::to_vec_pretty(&state).map_err(|e| admin(e.to_string()))?;
    write_private(&path, &json)?;
    Ok(path)
}

/// Reads `<state_dir>/controlplane.json`.
pub fn read_state(state_dir: &Path) -> Result<StateFile, String> {
    let path = state_dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "{}: {e} (is the control plane running? start it with `meshctl serve`)",
            path.display()
        )
    })?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}
