//! How the CLI finds and authenticates to the running control plane.
//!
//! At start the control plane issues the CLI a certificate through its own CA, for the admin
//! identity `spiffe://<td>/ns/mesh-system/sa/meshctl-admin` (key generated here, CSR signed
//! with a one-time token like any workload's), writes key and chain under
//! `<project>/.mesh/admin/` (mode 0600, directory 0700), and writes
//! `<project>/.mesh/controlplane.json` with its address, epoch and the paths of the root and
//! admin credentials. Whoever can read `.mesh/` can administer the mesh, as whoever can read
//! the CA key there could anyway. The status and reload routes accept only that identity.
//! [`renew_admin`] re-issues key and certificate at half of their lifetime while the control
//! plane runs, so the CLI never finds them expired, and at once when the CA's trust bundle
//! changes (a root rotation starts or ends), with the new bundle.
//!
//! The bundle is also written to `<project>/.mesh/trust/roots.pem` (0644, directory 0755, no
//! secret in it): sidecars mount that directory read-only and read their trust roots from it
//! at each start, so a sidecar Docker restarts after a rotation trusts the current roots, not
//! the ones it was created with.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

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
    write_private_file(path, bytes).map_err(io(path))
}

/// Writes `bytes` to `path` with mode 0600 via a temporary file (`<path>.tmp`, synced) and a
/// rename, so readers never see half a file and no other user ever can read it.
pub(crate) fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The admin certificate in force: when it was issued and when it expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminCert {
    /// When it was issued.
    pub issued_at: SystemTime,
    /// Its notAfter.
    pub not_after: SystemTime,
}

impl AdminCert {
    /// When to re-issue it: at half of its lifetime, as proxies renew theirs.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.issued_at)
            .unwrap_or_default();
        self.issued_at + lifetime / 2
    }
}

/// The files of the admin credentials under `<state_dir>/admin/`.
fn admin_paths(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (
        dir.join("root-cert.pem"),
        dir.join("cert-chain.pem"),
        dir.join("key.pem"),
    )
}

/// Issues a fresh admin key and certificate and writes them (with the roots) under
/// `<state_dir>/admin/`. The first one is authorized by a one-time token; a renewal
/// (`renewal`) by the admin identity itself, as a proxy renews with its current certificate.
pub fn issue_admin(
    state_dir: &Path,
    ca: &Ca,
    renewal: bool,
) -> Result<AdminCert, ControlPlaneError> {
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
    let issued_at = SystemTime::now();
    let (token, peer) = if renewal {
        (None, Some(&id))
    } else {
        let token = ca.issue_token(&id).map_err(|e| admin(e.to_string()))?;
        (Some(token.as_str().to_string()), None)
    };
    let issued = ca
        .handle_csr(
            &CsrRequest {
                token,
                identity: id.to_string(),
                csr_pem,
            },
            peer,
        )
        .map_err(|e| admin(e.to_string()))?;
    let (root, cert, key_path) = admin_paths(&dir);
    write_private(&root, issued.root_pem.as_bytes())?;
    // The CLI checks that key and certificate match and reads again if it caught the two
    // files between these writes.
    write_private(&cert, issued.cert_chain_pem.as_bytes())?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    Ok(AdminCert {
        issued_at,
        not_after: SystemTime::UNIX_EPOCH
            + Duration::from_secs(u64::try_from(issued.not_after).unwrap_or(0)),
    })
}

/// The directory under `.mesh/` that holds the trust bundle for sidecars.
pub const TRUST_DIR: &str = "trust";
/// The bundle's file name in [`TRUST_DIR`].
pub const TRUST_FILE: &str = "roots.pem";

/// Writes the CA's current trust bundle to `<state_dir>/trust/roots.pem` (temporary file and
/// rename, so a sidecar starting meanwhile reads the old or the new bundle, never half).
pub fn write_trust_bundle(state_dir: &Path, ca: &Ca) -> Result<(), ControlPlaneError> {
    let dir = state_dir.join(TRUST_DIR);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).map_err(io(&dir))?;
    let path = dir.join(TRUST_FILE);
    if std::fs::read_to_string(&path).is_ok_and(|old| old == ca.root_pem()) {
        return Ok(());
    }
    write_private(&path, ca.root_pem().as_bytes())?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).map_err(io(&path))
}

/// Issues the admin credentials and writes them and the state file; returns its path and the
/// admin certificate (for [`renew_admin`]).
pub fn write_state(
    state_dir: &Path,
    addr: SocketAddr,
    ca: &Ca,
    epoch: u64,
) -> Result<(PathBuf, AdminCert), ControlPlaneError> {
    let admin = |m: String| ControlPlaneError::Admin(m);
    write_trust_bundle(state_dir, ca)?;
    let cert = issue_admin(state_dir, ca, false)?;
    let (root_cert, admin_cert, admin_key) = admin_paths(&state_dir.join("admin"));
    let state = StateFile {
        address: if addr.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], addr.port())).to_string()
        } else {
            addr.to_string()
        },
        epoch,
        pid: std::process::id(),
        root_cert,
        admin_cert,
        admin_key,
    };
    let path = state_dir.join(STATE_FILE);
    let json = serde_json::to_vec_pretty(&state).map_err(|e| admin(e.to_string()))?;
    write_private(&path, &json)?;
    Ok((path, cert))
}

/// Longest sleep between two looks at the clock: the monotonic clock stops while a machine
/// is suspended, so the wall clock is read again at least this often.
const RENEW_CHECK: Duration = Duration::from_secs(30);

/// Re-issues the admin credentials at half of their lifetime, for as long as the control
/// plane runs, so `meshctl status` and `apply` keep working across any number of lifetimes.
/// A failed renewal is retried after a tenth of the lifetime (1 s to 30 s).
pub async fn renew_admin(state_dir: PathBuf, ca: Arc<Ca>, first: AdminCert) {
    let mut renew_at = first.renew_at();
    let mut trust = ca.trust_changes();
    loop {
        let now = SystemTime::now();
        match renew_at.duration_since(now) {
            Ok(wait) if !wait.is_zero() => {
                tokio::select! {
                    () = tokio::time::sleep(wait.min(RENEW_CHECK)) => continue,
                    changed = trust.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        tracing::info!("trust bundle changed: re-issuing the admin certificate");
                    }
                }
            }
            _ => {}
        }
        let dir = state_dir.clone();
        let ca2 = ca.clone();
        let result = tokio::task::spawn_blocking(move || {
            write_trust_bundle(&dir, &ca2)?;
            issue_admin(&dir, &ca2, true)
        })
        .await;
        match result {
            Ok(Ok(cert)) => {
                tracing::info!(
                    not_after = crate::ca::unix_secs(cert.not_after),
                    "admin certificate renewed"
                );
                renew_at = cert.renew_at();
            }
            Ok(Err(e)) => {
                let retry = (ca.cert_lifetime() / 10).clamp(Duration::from_secs(1), RENEW_CHECK);
                tracing::error!(error = %e, retry_s = retry.as_secs(), "cannot renew the admin certificate");
                renew_at = SystemTime::now() + retry;
            }
            Err(e) => {
                tracing::error!(error = %e, "admin certificate renewal task failed");
                renew_at = SystemTime::now() + RENEW_CHECK;
            }
        }
    }
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
