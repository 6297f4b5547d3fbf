//! The CA's key material on disk: created on first use, reused afterwards, checked every time.
//!
//! Two layouts are understood in the CA directory (`<state>/.mesh/ca/` by default):
//!
//! - **Own root** (`root-cert.pem`, `root-key.pem`): created on first start (ECDSA P-256, ten
//!   years), key mode 0600 in a 0700 directory. meshctl signs workload certificates with it.
//! - **Istio plug-in CA** (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`, `cert-chain.pem`): the
//!   user's own CA makes meshctl an intermediate; workload chains are `leaf, ca-cert, ...` up to
//!   the user's root, and the trust root handed to proxies is `root-cert.pem`.
//!
//! Nothing here ever overwrites an existing file: a half-present or unreadable layout is an error
//! that names the file, so a typo never silently rotates the mesh's trust root.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::CaError;

/// File name of the self-managed root certificate (also the plug-in layout's trust root).
pub const ROOT_CERT: &str = "root-cert.pem";
/// File name of the self-managed root key.
pub const ROOT_KEY: &str = "root-key.pem";
/// Plug-in layout: the intermediate certificate meshctl signs with.
pub const PLUGIN_CERT: &str = "ca-cert.pem";
/// Plug-in layout: the intermediate's key.
pub const PLUGIN_KEY: &str = "ca-key.pem";
/// Plug-in layout: the chain from `ca-cert.pem` up to the root.
pub const PLUGIN_CHAIN: &str = "cert-chain.pem";

/// Own-root rotation (`meshctl ca rotate`): the root being retired, still trusted until the
/// overlap ends.
pub const RETIRING_ROOT: &str = "retiring-root-cert.pem";
/// Own-root rotation: the new root cross-signed by the retiring one, sent after every leaf
/// during the overlap so a peer that still trusts only the old root verifies new leaves.
pub const CROSS_CERT: &str = "cross-cert.pem";
/// Own-root rotation in progress: `{"retireAtUnix", "startedAtUnix"}`. Written after the new
/// root's files (`next-root-*.pem`) and before they replace `root-*.pem`, so a crash at any
/// point leaves either no rotation or one that the next start completes.
pub const ROTATION: &str = "rotation.json";
const NEXT_ROOT_CERT: &str = "next-root-cert.pem";
const NEXT_ROOT_KEY: &str = "next-root-key.pem";

/// Validity of a root created by meshctl.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Which layout the CA directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaMode {
    /// meshctl's own self-signed root.
    OwnRoot,
    /// The user's CA in Istio's plug-in layout; meshctl is an intermediate.
    Plugin,
}

/// Loaded, checked CA material.
pub struct CaMaterial {
    /// Signs workload certificates.
    pub(crate) issuer: Issuer<'static, KeyPair>,
    /// Certificates appended after the leaf in an issued chain (empty for an own root).
    pub(crate) chain: Vec<CertificateDer<'static>>,
    /// The trust roots handed to proxies, PEM.
    pub(crate) roots_pem: String,
    /// The trust roots, DER.
    pub(crate) roots: Vec<CertificateDer<'static>>,
    /// Expiry of the signing certificate: no leaf outlives it.
    pub(crate) signer_not_after: SystemTime,
    /// The layout found.
    pub(crate) mode: CaMode,
    /// Whether this start created the root.
    pub(crate) created: bool,
    /// The old root and when it stops being trusted, while a rotation is in progress.
    pub(crate) retiring: Option<Retiring>,
}

/// The root a rotation replaces, trusted until `retire_at`.
#[derive(Debug, Clone)]
pub(crate) struct Retiring {
    /// The old root certificate.
    pub(crate) root: CertificateDer<'static>,
    /// End of the overlap.
    pub(crate) retire_at: SystemTime,
}

/// `rotation.json`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RotationRecord {
    retire_at_unix: i64,
    started_at_unix: i64,
}

impl std::fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaMaterial")
            .field("mode", &self.mode)
            .field("chain_len", &self.chain.len())
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

/// Loads the CA from `dir`, creating an own root there if the directory holds no CA yet.
pub fn load_or_create(dir: &Path, trust_domain: &str) -> Result<CaMaterial, CaError> {
    if dir.exists() {
        check_private(dir)?;
    }
    let has = |name: &str| dir.join(name).exists();
    if has(NEXT_ROOT_KEY) || has(NEXT_ROOT_CERT) {
        finish_interrupted_rotation(dir)?;
    }
    if has(PLUGIN_KEY) || has(PLUGIN_CERT) || has(PLUGIN_CHAIN) {
        return load_plugin(dir);
    }
    match (has(ROOT_CERT), has(ROOT_KEY)) {
        (true, true) => load_own_root(dir),
        (false, false) => create_own_root(dir, trust_domain),
        (true, false) => Err(CaError::Missing {
            path: dir.join(ROOT_KEY),
            why: "root-cert.pem exists without its key; restore the key or remove both to create a new root",
        }),
        (false, true) => Err(CaError::Missing {
            path: dir.join(ROOT_CERT),
            why: "root-key.pem exists without its certificate; restore it or remove both to create a new root",
        }),
    }
}

fn load_own_root(dir: &Path) -> Result<CaMaterial, CaError> {
    let cert_path = dir.join(ROOT_CERT);
    let key = read_key(&dir.join(ROOT_KEY))?;
    let certs = read_certs(&cert_path)?;
    let [root] = certs.as_slice() else {
        return Err(corrupt(&cert_path, "expected exactly one certificate"));
    };
    let signer_not_after = check_signer(&cert_path, root, &key)?;
    let issuer = Issuer::from_ca_cert_der(root, key)
        .map_err(|e| corrupt(&cert_path, &format!("unusable as issuer: {e}")))?;
    let mut roots = certs;
    let mut chain = Vec::new();
    let retiring = read_rotation(dir)?;
    if let Some((retiring, cross)) = &retiring {
        roots.push(retiring.root.clone());
        chain.push(cross.clone());
    }
    Ok(CaMaterial {
        issuer,
        chain,
        roots_pem: pem_of(&roots),
        roots,
        signer_not_after,
        mode: CaMode::OwnRoot,
        created: false,
        retiring: retiring.map(|(r, _)| r),
    })
}

/// The rotation in progress in `dir`, if any: the retiring root and the cross certificate.
fn read_rotation(dir: &Path) -> Result<Option<(Retiring, CertificateDer<'static>)>, CaError> {
    let path = dir.join(ROTATION);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path, e)),
    };
    let record: RotationRecord =
        serde_json::from_str(&text).map_err(|e| corrupt(&path, &e.to_string()))?;
    let one = |name: &str| -> Result<CertificateDer<'static>, CaError> {
        let p = dir.join(name);
        if !p.exists() {
            return Err(CaError::Missing {
                path: p,
                why: "a root rotation is in progress (rotation.json); restore the file, or remove rotation.json to stop trusting the old root now",
            });
        }
        let mut certs = read_certs(&p)?;
        match certs.len() {
            1 => Ok(certs.remove(0)),
            _ => Err(corrupt(&p, "expected exactly one certificate")),
        }
    };
    let retiring = Retiring {
        root: one(RETIRING_ROOT)?,
        retire_at: SystemTime::UNIX_EPOCH
            + Duration::from_secs(u64::try_from(record.retire_at_unix).unwrap_or(0)),
    };
    Ok(Some((retiring, one(CROSS_CERT)?)))
}

/// A rotation stopped between writing the new root and installing it: with `rotation.json`
/// written it completes (the new root replaces the old), without it it is undone.
fn finish_interrupted_rotation(dir: &Path) -> Result<(), CaError> {
    let (next_key, next_cert) = (dir.join(NEXT_ROOT_KEY), dir.join(NEXT_ROOT_CERT));
    if dir.join(ROTATION).exists() {
        // Key first, as in a rotation: a crash between the two renames is finished here again.
        if next_key.exists() {
            fs::rename(&next_key, dir.join(ROOT_KEY)).map_err(|e| io(&next_key, e))?;
        }
        if next_cert.exists() {
            fs::rename(&next_cert, dir.join(ROOT_CERT)).map_err(|e| io(&next_cert, e))?;
        }
        tracing::warn!(dir = %dir.display(), "completed a root rotation that was interrupted");
    } else {
        for p in [next_key, next_cert] {
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&p, e)),
            }
        }
        tracing::warn!(dir = %dir.display(), "discarded a root rotation that was interrupted before it started");
    }
    Ok(())
}

/// A new self-signed root's parameters: `common_name` in `trust_domain`, ten years.
fn root_params(trust_domain: &str, common_name: &str, now: SystemTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now
        .checked_sub(Duration::from_secs(3600))
        .unwrap_or(now)
        .into();
    params.not_after = (now + ROOT_LIFETIME).into();
    params.serial_number = Some(super::sign::random_serial());
    params
}

/// Starts a root rotation of the own root in `dir` (`current` is what is loaded from it): a
/// new root signs from now on, cross-signed by the old one, and both are trusted until
/// `now + overlap`. Returns the material to use.
pub(crate) fn rotate(
    dir: &Path,
    current: &CaMaterial,
    trust_domain: &str,
    overlap: Duration,
) -> Result<CaMaterial, CaError> {
    if current.mode != CaMode::OwnRoot {
        return Err(CaError::Config(
            "the CA is a plug-in intermediate of your own CA: rotate it by replacing its files (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem) and restarting".into(),
        ));
    }
    if let Some(r) = &current.retiring {
        return Err(CaError::Config(format!(
            "a root rotation is already in progress; the old root retires at {} (Unix), rotate again after that",
            super::unix_secs(r.retire_at)
        )));
    }
    let now = SystemTime::now();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CaError::Generate)?;
    // A name of its own: a peer's path building tells the two roots apart by subject.
    let name = format!("meshctl root CA {}", super::unix_secs(now));
    let params = root_params(trust_domain, &name, now);
    let root = params.self_signed(&key).map_err(CaError::Generate)?;
    let mut cross_params = params.clone();
    cross_params.serial_number = Some(super::sign::random_serial());
    let old_not_after = current
        .roots
        .first()
        .and_then(|r| X509Certificate::from_der(r).ok())
        .map(|(_, x)| x.validity().not_after.timestamp())
        .and_then(|t| u64::try_from(t).ok())
        .map(|t| SystemTime::UNIX_EPOCH + Duration::from_secs(t))
        .unwrap_or(now + ROOT_LIFETIME);
    cross_params.not_after = (now + ROOT_LIFETIME).min(old_not_after).into();
    let cross = cross_params
        .signed_by(&key, &current.issuer)
        .map_err(CaError::Generate)?;
    let record = RotationRecord {
        retire_at_unix: super::unix_secs(now + overlap),
        started_at_unix: super::unix_secs(now),
    };
    let record = serde_json::to_vec_pretty(&record).map_err(|e| CaError::Config(e.to_string()))?;
    let old_root = pem_of(&current.roots[..1.min(current.roots.len())]);
    write_file(&dir.join(RETIRING_ROOT), old_root.as_bytes(), 0o644, true)?;
    write_file(&dir.join(CROSS_CERT), cross.pem().as_bytes(), 0o644, true)?;
    write_file(
        &dir.join(NEXT_ROOT_KEY),
        key.serialize_pem().as_bytes(),
        0o600,
        true,
    )?;
    write_file(
        &dir.join(NEXT_ROOT_CERT),
        root.pem().as_bytes(),
        0o644,
        true,
    )?;
    write_file(&dir.join(ROTATION), &record, 0o644, true)?;
    finish_interrupted_rotation(dir)?;
    tracing::info!(dir = %dir.display(), root = %name, overlap_s = overlap.as_secs(), "root rotation started");
    load_own_root(dir)
}

/// Ends the rotation in `dir`: the old root is no longer trusted and leaves carry no cross
/// certificate. Returns the material to use.
pub(crate) fn retire(dir: &Path) -> Result<CaMaterial, CaError> {
    // rotation.json first: without it the other two files are ignored.
    for name in [ROTATION, RETIRING_ROOT, CROSS_CERT] {
        let p = dir.join(name);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&p, e)),
        }
    }
    tracing::info!(dir = %dir.display(), "old root retired");
    load_own_root(dir)
}

fn load_plugin(dir: &Path) -> Result<CaMaterial, CaError> {
    for name in [PLUGIN_CERT, PLUGIN_KEY, ROOT_CERT, PLUGIN_CHAIN] {
        if !dir.join(name).exists() {
            return Err(CaError::Missing {
                path: dir.join(name),
                why: "the plug-in CA layout needs ca-cert.pem, ca-key.pem, root-cert.pem and cert-chain.pem",
            });
        }
    }
    let cert_path = dir.join(PLUGIN_CERT);
    let key = read_key(&dir.join(PLUGIN_KEY))?;
    let ca_certs = read_certs(&cert_path)?;
    let Some(ca_cert) = ca_certs.first().cloned() else {
        return Err(corrupt(&cert_path, "no certificate"));
    };
    let signer_not_after = check_signer(&cert_path, &ca_cert, &key)?;
    let roots = read_certs(&dir.join(ROOT_CERT))?;
    let tail = read_certs(&dir.join(PLUGIN_CHAIN))?;
    // Istio's cert-chain.pem usually starts with ca-cert.pem itself; never send it twice.
    let mut chain = vec![ca_cert.clone()];
    chain.extend(tail.into_iter().filter(|c| *c != ca_cert));
    let issuer = Issuer::from_ca_cert_der(&ca_cert, key)
        .map_err(|e| corrupt(&cert_path, &format!("unusable as issuer: {e}")))?;
    Ok(CaMaterial {
        issuer,
        chain,
        roots_pem: pem_of(&roots),
        roots,
        signer_not_after,
        mode: CaMode::Plugin,
        created: false,
        retiring: None,
    })
}

fn create_own_root(dir: &Path, trust_domain: &str) -> Result<CaMaterial, CaError> {
    fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| io(dir, e))?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CaError::Generate)?;
    let params = root_params(trust_domain, "meshctl root CA", SystemTime::now());
    let cert = params.self_signed(&key).map_err(CaError::Generate)?;
    // Key first: a crash between the two writes leaves "key without cert", which is refused
    // with a clear message instead of silently generating a second root.
    // No-clobber: if another meshctl created a root meanwhile, fail instead of mixing halves.
    write_file(
        &dir.join(ROOT_KEY),
        key.serialize_pem().as_bytes(),
        0o600,
        false,
    )?;
    write_file(&dir.join(ROOT_CERT), cert.pem().as_bytes(), 0o644, false)?;
    tracing::info!(dir = %dir.display(), "created a new mesh root CA");
    let mut material = load_own_root(dir)?;
    material.created = true;
    Ok(material)
}

/// Refuses a directory or key file that anyone but the owner can access.
pub(crate) fn check_private(path: &Path) -> Result<(), CaError> {
    let meta = fs::metadata(path).map_err(|e| io(path, e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CaError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

fn read_key(path: &Path) -> Result<KeyPair, CaError> {
    check_private(path)?;
    let pem = fs::read_to_string(path).map_err(|e| io(path, e))?;
    KeyPair::from_pem(&pem).map_err(|e| corrupt(path, &format!("not a usable private key: {e}")))
}

/// Reads every certificate of a PEM file; an empty, truncated or non-X.509 file is an error.
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let bytes = fs::read(path).map_err(|e| io(path, e))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| corrupt(path, &format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(corrupt(path, "no PEM certificate found"));
    }
    for cert in &certs {
        match X509Certificate::from_der(cert) {
            Ok(([], _)) => {}
            Ok(_) => return Err(corrupt(path, "trailing bytes after a certificate")),
            Err(e) => return Err(corrupt(path, &format!("not an X.509 certificate: {e}"))),
        }
    }
    Ok(certs)
}

/// Checks that `cert` is a CA whose public key is `key`'s, returns its expiry.
fn check_signer(
    path: &Path,
    cert: &CertificateDer<'_>,
    key: &KeyPair,
) -> Result<SystemTime, CaError> {
    let (_, x509) = X509Certificate::from_der(cert)
        .map_err(|e| corrupt(path, &format!("not an X.509 certificate: {e}")))?;
    if !x509.is_ca() {
        return Err(corrupt(
            path,
            "not a CA certificate (basicConstraints CA:false)",
        ));
    }
    if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(corrupt(
            path,
            "the certificate does not match its private key",
        ));
    }
    let not_after = x509.validity().not_after.timestamp();
    let not_after =
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(not_after).unwrap_or(0));
    if not_after <= SystemTime::now() {
        return Err(corrupt(path, "the CA certificate has expired"));
    }
    Ok(not_after)
}

/// Writes a file atomically (temporary file, then rename, or hard link when `replace` is false
/// so an existing file is never overwritten) with `mode`.
pub(crate) fn write_file(
    path: &Path,
    contents: &[u8],
    mode: u32,
    replace: bool,
) -> Result<(), CaError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()?;
        if replace {
            fs::rename(&tmp, path)
        } else {
            fs::hard_link(&tmp, path)
        }
    })();
    let _ = fs::remove_file(&tmp);
    result.map_err(|e| io(path, e))
}

pub(crate) fn pem_of(certs: &[CertificateDer<'_>]) -> String {
    certs
        .iter()
        .map(|c| pem_cert(c))
        .collect::<Vec<_>>()
        .concat()
}

/// One certificate as PEM (64-column base64, `\n` line endings).
pub(crate) fn pem_cert(der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn io(path: &Path, source: std::io::Error) -> CaError {
    CaError::Io {
        path: path.to_owned(),
        source,
    }
}

fn corrupt(path: &Path, reason: &str) -> CaError {
    CaError::Corrupt {
        path: PathBuf::from(path),
        reason: reason.to_owned(),
    }
}
