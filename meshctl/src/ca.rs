//! The mesh certificate authority: root or plug-in CA, bootstrap tokens, CSR signing.
//!
//! [`Ca::open`] loads (or on first use creates) the CA under `<state>/.mesh/ca/` and the token
//! store `<state>/.mesh/tokens.json`. The control plane calls [`Ca::issue_token`] for each
//! workload or host it starts and hands the token over (see `meshapi::ca_api::ENV_*`); the API
//! server calls [`Ca::handle_csr`] with the identity of the TLS client certificate, if any.
//! Every refusal is logged with the identity and reason.
//!
//! - `store`: key material on disk (own root or Istio plug-in layout), permission checks.
//! - `sign`: CSR checks and workload certificate profile.
//! - `token`: single-use, expiring, hashed, persisted bootstrap tokens.
//! - `ratelimit`: per-identity token bucket.

pub mod ratelimit;
pub mod sign;
pub mod store;
pub mod token;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use meshapi::ca_api::{BootstrapToken, CsrRequest, CsrResponse, SpiffeId, SpiffeIdError};
use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub use ratelimit::RateLimitConfig;
pub use store::CaMode;

use store::CaMaterial;
use token::TokenStore;

/// CA settings. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaConfig {
    /// Trust domain of every identity this CA signs. Default `cluster.local` (Istio's).
    pub trust_domain: String,
    /// Directory of the CA files. Default `None`: `<state>/.mesh/ca/`. Point it at a directory
    /// in Istio's plug-in layout to make meshctl an intermediate of your own CA.
    pub ca_dir: Option<PathBuf>,
    /// Lifetime of workload certificates. Default 24 h (Istio's). At least 1 s (short values are
    /// for tests; proxies renew at about half of it).
    pub cert_lifetime: Duration,
    /// How far notBefore is backdated to tolerate clock skew between hosts. Default 60 s.
    pub clock_skew: Duration,
    /// Validity of bootstrap tokens. Default 10 min: long enough to pull an image and start.
    pub token_ttl: Duration,
    /// Per-identity rate limit of the CSR endpoint. Default 5 burst, one per 10 s.
    pub rate_limit: RateLimitConfig,
}

impl Default for CaConfig {
    fn default() -> Self {
        Self {
            trust_domain: meshapi::DEFAULT_TRUST_DOMAIN.into(),
            ca_dir: None,
            cert_lifetime: Duration::from_secs(24 * 3600),
            clock_skew: Duration::from_secs(60),
            token_ttl: Duration::from_secs(600),
            rate_limit: RateLimitConfig::default(),
        }
    }
}

impl CaConfig {
    /// Checks the settings before anything is created on disk.
    pub fn validate(&self) -> Result<(), CaError> {
        meshapi::ca_api::control_plane_id(&self.trust_domain).map_err(CaError::InvalidIdentity)?;
        if self.cert_lifetime < Duration::from_secs(1) {
            return Err(CaError::Config("cert_lifetime must be at least 1s".into()));
        }
        if self.token_ttl.is_zero() {
            return Err(CaError::Config("token_ttl must be positive".into()));
        }
        if self.rate_limit.burst == 0 || self.rate_limit.refill_every.is_zero() {
            return Err(CaError::Config(
                "rate_limit needs a positive burst and refill interval".into(),
            ));
        }
        Ok(())
    }
}

/// Everything the CA can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A key file or the CA directory is accessible by group or others.
    #[error(
        "{}: permissions {mode:04o} let group/others access CA secrets; run `chmod {} {}`",
        path.display(),
        if path.is_dir() { "700" } else { "600" },
        path.display()
    )]
    Permissions {
        /// The offending path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A CA or token file does not parse or does not fit with the others.
    #[error("{}: {reason}", path.display())]
    Corrupt {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file of the layout is missing.
    #[error("{}: missing; {why}", path.display())]
    Missing {
        /// The missing file.
        path: PathBuf,
        /// What to do about it.
        why: &'static str,
    },
    /// Key or certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(rcgen::Error),
    /// Invalid settings.
    #[error("invalid CA config: {0}")]
    Config(String),
    /// The requested identity is not a SPIFFE ID.
    #[error(transparent)]
    InvalidIdentity(SpiffeIdError),
    /// The identity belongs to another trust domain.
    #[error("identity {requested} is outside trust domain {ours}")]
    ForeignTrustDomain {
        /// Asked for.
        requested: String,
        /// This CA's.
        ours: String,
    },
    /// Neither a token nor a client certificate for the identity.
    #[error("no bootstrap token and no client certificate")]
    Unauthenticated,
    /// The client certificate names another identity and no token was given.
    #[error("client certificate is for {peer}, not {requested}")]
    PeerIdentityMismatch {
        /// From the client certificate.
        peer: String,
        /// Asked for.
        requested: String,
    },
    /// Not a bootstrap token.
    #[error("malformed bootstrap token")]
    TokenMalformed,
    /// Never issued (or forgotten long ago).
    #[error("unknown bootstrap token")]
    TokenUnknown,
    /// Already used once.
    #[error("bootstrap token for {bound_to} was already used")]
    TokenReused {
        /// The token's identity.
        bound_to: String,
    },
    /// Past its expiry.
    #[error("bootstrap token for {bound_to} has expired")]
    TokenExpired {
        /// The token's identity.
        bound_to: String,
    },
    /// Valid, but for another identity.
    #[error("bootstrap token is bound to {bound_to}, not {requested}")]
    TokenIdentityMismatch {
        /// The token's identity.
        bound_to: String,
        /// Asked for.
        requested: String,
    },
    /// The CSR is malformed or asks for something not allowed.
    #[error("bad CSR: {0}")]
    BadCsr(String),
    /// The CSR's SPIFFE ID differs from the requested identity.
    #[error("CSR asks for {in_csr}, but the request is for {requested}")]
    CsrIdentityMismatch {
        /// The request's identity.
        requested: String,
        /// The CSR's URI SAN.
        in_csr: String,
    },
    /// Too many requests for this identity.
    #[error("rate limited: too many CSRs for {identity}; retry in {}s", retry_after.as_secs().max(1))]
    RateLimited {
        /// The identity.
        identity: String,
        /// When a request will be allowed again.
        retry_after: Duration,
    },
}

/// One identity's most recent certificate, for `meshctl status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedInfo {
    /// Expiry of the latest certificate.
    pub not_after: SystemTime,
    /// Its serial, hex.
    pub serial: String,
    /// When it was issued.
    pub issued_at: SystemTime,
}

/// A serving certificate and key for the control plane's own listeners.
#[derive(Debug)]
pub struct ServingCert {
    /// Leaf first, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// Expiry of the leaf.
    pub not_after: SystemTime,
}

/// The mesh CA. Cheap to share behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct Ca {
    config: CaConfig,
    dir: PathBuf,
    /// Replaced as a whole by a root rotation and its end.
    material: RwLock<Arc<CaMaterial>>,
    /// Counts changes of the trust bundle (rotation start and end), for whoever must follow
    /// the roots (the API's client verifier and serving certificate, the CLI's files, the
    /// proxies' configs).
    trust: tokio::sync::watch::Sender<u64>,
    tokens: TokenStore,
    limiter: ratelimit::RateLimiter,
    issued: Mutex<BTreeMap<SpiffeId, IssuedInfo>>,
    /// The mesh files' `x-mesh.certificateLifetime`, when set (else `config.cert_lifetime`).
    lifetime_override: Mutex<Option<Duration>>,
    /// Where `issued` is kept across restarts (`.mesh/issued.json`), for `meshctl status`.
    issued_file: PathBuf,
}

/// `.mesh/issued.json`: one record per identity (the latest certificate).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct IssuedRecord {
    identity: String,
    serial: String,
    not_after_unix: i64,
    issued_at_unix: i64,
}

fn read_issued(path: &Path) -> BTreeMap<SpiffeId, IssuedInfo> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return BTreeMap::new(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the issued-certificate list; status starts empty");
            return BTreeMap::new();
        }
    };
    let records: Vec<IssuedRecord> = match serde_json::from_str(&text) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "issued-certificate list is corrupt; status starts empty (it is rewritten at the next issue)");
            return BTreeMap::new();
        }
    };
    let at = |s: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(s).unwrap_or(0));
    records
        .into_iter()
        .filter_map(|r| {
            let id = r.identity.parse::<SpiffeId>().ok()?;
            Some((
                id,
                IssuedInfo {
                    not_after: at(r.not_after_unix),
                    serial: r.serial,
                    issued_at: at(r.issued_at_unix),
                },
            ))
        })
        .collect()
}

fn write_issued(path: &Path, issued: &BTreeMap<SpiffeId, IssuedInfo>) {
    let records: Vec<IssuedRecord> = issued
        .iter()
        .map(|(id, i)| IssuedRecord {
            identity: id.to_string(),
            serial: i.serial.clone(),
            not_after_unix: unix_secs(i.not_after),
            issued_at_unix: unix_secs(i.issued_at),
        })
        .collect();
    let tmp = path.with_extension("json.tmp");
    let result = serde_json::to_vec_pretty(&records)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "could not save the issued-certificate list");
    }
}

impl Ca {
    /// Opens the CA of the project whose state lives in `<state_dir>/.mesh/`.
    pub fn open(state_dir: &Path, config: CaConfig) -> Result<Self, CaError> {
        config.validate()?;
        let mesh_dir = state_dir.join(".mesh");
        let dir = config.ca_dir.clone().unwrap_or_else(|| mesh_dir.join("ca"));
        let material = store::load_or_create(&dir, &config.trust_domain)?;
        let tokens = TokenStore::open(&mesh_dir.join("tokens.json"))?;
        let issued_file = mesh_dir.join("issued.json");
        let issued = read_issued(&issued_file);
        tracing::info!(
            dir = %dir.display(),
            mode = ?material.mode,
            created = material.created,
            trust_domain = %config.trust_domain,
            "CA ready"
        );
        Ok(Self {
            limiter: ratelimit::RateLimiter::new(config.rate_limit.clone()),
            config,
            dir,
            material: RwLock::new(Arc::new(material)),
            trust: tokio::sync::watch::Sender::new(0),
            tokens,
            issued: Mutex::new(issued),
            lifetime_override: Mutex::new(None),
            issued_file,
        })
    }

    /// The settings in force.
    pub fn config(&self) -> &CaConfig {
        &self.config
    }

    /// Lifetime of the certificates issued now: the mesh files' `x-mesh.certificateLifetime`
    /// when set, else [`CaConfig::cert_lifetime`].
    pub fn cert_lifetime(&self) -> Duration {
        self.lifetime_override
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or(self.config.cert_lifetime)
    }

    /// Sets (or with `None` clears) the lifetime the mesh files ask for; certificates issued
    /// from now on get it. Values under 1 s are raised to 1 s (the model refuses under 1 min).
    pub fn set_cert_lifetime(&self, lifetime: Option<Duration>) {
        let lifetime = lifetime.map(|d| d.max(Duration::from_secs(1)));
        let mut current = self
            .lifetime_override
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if *current != lifetime {
            tracing::info!(
                lifetime_s = lifetime.unwrap_or(self.config.cert_lifetime).as_secs(),
                "certificate lifetime set"
            );
            *current = lifetime;
        }
    }

    /// The directory the CA files were read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn material(&self) -> Arc<CaMaterial> {
        self.material
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Own root or plug-in intermediate.
    pub fn mode(&self) -> CaMode {
        self.material().mode
    }

    /// The trust roots proxies must use (the bundle: both roots during a rotation), PEM.
    pub fn root_pem(&self) -> String {
        self.material().roots_pem.clone()
    }

    /// The trust roots, DER (the signing root first).
    pub fn roots(&self) -> Vec<CertificateDer<'static>> {
        self.material().roots.clone()
    }

    /// The CA's own certificates, for expiry reports: the trust roots (`root`, and during a
    /// rotation the old one as `retiring-root`) and, in plug-in mode, the signing and
    /// intermediate certificates (`intermediate`).
    pub fn ca_certificates(&self) -> Vec<(&'static str, CertificateDer<'static>)> {
        let m = self.material();
        let retiring = m.retiring.as_ref().map(|r| &r.root);
        let mut out: Vec<_> = m
            .roots
            .iter()
            .map(|c| {
                let role = if Some(c) == retiring {
                    "retiring-root"
                } else {
                    "root"
                };
                (role, c.clone())
            })
            .collect();
        out.extend(
            m.chain
                .iter()
                .filter(|c| !m.roots.contains(c) && m.retiring.is_none())
                .map(|c| ("intermediate", c.clone())),
        );
        out
    }

    /// When the old root stops being trusted, while a rotation is in progress.
    pub fn retire_at(&self) -> Option<SystemTime> {
        self.material().retiring.as_ref().map(|r| r.retire_at)
    }

    /// Counts changes of the trust bundle (0 at start).
    pub fn trust_generation(&self) -> u64 {
        *self.trust.borrow()
    }

    /// A receiver that changes whenever the trust bundle does (a rotation starts or ends).
    pub fn trust_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.trust.subscribe()
    }

    /// Starts a root rotation (own root only): a new root signs every certificate from now
    /// on, cross-signed by the old one (sent after each leaf), and both roots are in the
    /// bundle until `overlap` has passed; then [`Ca::retire`] drops the old one. Persistent:
    /// a restarted control plane continues the rotation.
    pub fn rotate(&self, overlap: Duration) -> Result<(), CaError> {
        let mut material = self.material.write().unwrap_or_else(|p| p.into_inner());
        let fresh = store::rotate(&self.dir, &material, &self.config.trust_domain, overlap)?;
        *material = Arc::new(fresh);
        drop(material);
        self.trust.send_modify(|g| *g += 1);
        Ok(())
    }

    /// Ends a rotation: the old root leaves the bundle. `false` when none was in progress.
    pub fn retire(&self) -> Result<bool, CaError> {
        let mut material = self.material.write().unwrap_or_else(|p| p.into_inner());
        if material.retiring.is_none() {
            return Ok(false);
        }
        *material = Arc::new(store::retire(&self.dir)?);
        drop(material);
        self.trust.send_modify(|g| *g += 1);
        Ok(true)
    }

    /// Issues a bootstrap token for `identity`, valid for the configured `token_ttl`.
    pub fn issue_token(&self, identity: &SpiffeId) -> Result<BootstrapToken, CaError> {
        self.issue_token_with_ttl(identity, self.config.token_ttl)
    }

    /// Issues a bootstrap token for `identity` valid for `ttl`.
    pub fn issue_token_with_ttl(
        &self,
        identity: &SpiffeId,
        ttl: Duration,
    ) -> Result<BootstrapToken, CaError> {
        self.check_domain(identity)?;
        let token = self.tokens.issue(identity, ttl, SystemTime::now())?;
        tracing::info!(identity = %identity, ttl_s = ttl.as_secs(), "bootstrap token issued");
        Ok(token)
    }

    /// Issues a pod token for `identity` held by container `holder`: reusable until revoked,
    /// so the container gets a certificate again after Docker restarts it (see `ca::token`).
    pub fn issue_pod_token(
        &self,
        identity: &SpiffeId,
        holder: &str,
    ) -> Result<BootstrapToken, CaError> {
        self.check_domain(identity)?;
        let token = self
            .tokens
            .issue_for_holder(identity, holder, SystemTime::now())?;
        tracing::info!(identity = %identity, holder, "pod token issued");
        Ok(token)
    }

    /// Revokes the pod tokens whose holder `revoke` selects (their containers are gone);
    /// returns how many.
    pub fn revoke_pod_tokens(&self, revoke: impl Fn(&str) -> bool) -> Result<usize, CaError> {
        self.tokens.revoke_holders(revoke, SystemTime::now())
    }

    /// Each identity's latest certificate expiry (for `meshctl status`).
    pub fn issued(&self) -> BTreeMap<SpiffeId, IssuedInfo> {
        self.issued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Handles one CSR. `peer` is the SPIFFE ID of the verified TLS client certificate, if any;
    /// the caller guarantees it chains to [`Ca::roots`] and is unexpired.
    pub fn handle_csr(
        &self,
        request: &CsrRequest,
        peer: Option<&SpiffeId>,
    ) -> Result<CsrResponse, CaError> {
        let result = self.try_handle_csr(request, peer);
        if let Err(e) = &result {
            tracing::warn!(
                identity = %request.identity,
                peer = ?peer.map(ToString::to_string),
                with_token = request.token.is_some(),
                reason = %e,
                "CSR refused"
            );
        }
        result
    }

    fn try_handle_csr(
        &self,
        request: &CsrRequest,
        peer: Option<&SpiffeId>,
    ) -> Result<CsrResponse, CaError> {
        let identity: SpiffeId = request.identity.parse().map_err(CaError::InvalidIdentity)?;
        self.check_domain(&identity)?;
        let now = SystemTime::now();
        // Authenticate first (cheap), so that strangers cannot drain an identity's bucket.
        let token = match (peer, request.token.as_deref()) {
            (Some(p), _) if *p == identity => None,
            (_, Some(token)) => {
                self.tokens.check(token, &identity, now)?;
                Some(token)
            }
            (Some(p), None) => {
                return Err(CaError::PeerIdentityMismatch {
                    peer: p.to_string(),
                    requested: identity.to_string(),
                });
            }
            (None, None) => return Err(CaError::Unauthenticated),
        };
        self.limiter
            .try_acquire(&identity, Instant::now())
            .map_err(|retry_after| CaError::RateLimited {
                identity: identity.to_string(),
                retry_after,
            })?;
        let material = self.material();
        let issued = sign::sign_csr(
            &material,
            &request.csr_pem,
            &identity,
            self.cert_lifetime(),
            self.config.clock_skew,
            now,
        )?;
        if let Some(token) = token {
            // Atomic: of two concurrent requests with one token, only one gets here.
            self.tokens.consume(token, &identity, now)?;
        }
        tracing::info!(
            identity = %identity,
            serial = %issued.serial,
            via = if token.is_some() { "token" } else { "renewal" },
            not_after = unix_secs(issued.not_after),
            "workload certificate issued"
        );
        {
            let mut all = self.issued.lock().unwrap_or_else(|p| p.into_inner());
            all.insert(
                identity,
                IssuedInfo {
                    not_after: issued.not_after,
                    serial: issued.serial,
                    issued_at: now,
                },
            );
            write_issued(&self.issued_file, &all);
        }
        let mut chain = issued.cert_pem;
        chain.push_str(&store::pem_of(&material.chain));
        Ok(CsrResponse {
            cert_chain_pem: chain,
            root_pem: material.roots_pem.clone(),
            not_after: unix_secs(issued.not_after),
        })
    }

    /// Issues a certificate for the control plane itself (`spiffe://<td>/ns/mesh-system/sa/meshctl`
    /// plus `names` as DNS or IP SANs), with a key generated here, valid for `lifetime`.
    pub fn issue_serving_cert(
        &self,
        names: &[String],
        lifetime: Duration,
    ) -> Result<ServingCert, CaError> {
        let id = meshapi::ca_api::control_plane_id(&self.config.trust_domain)
            .map_err(CaError::InvalidIdentity)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CaError::Generate)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let mut sans = vec![SanType::URI(
            id.to_string().try_into().map_err(CaError::Generate)?,
        )];
        for name in names {
            sans.push(match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.clone().try_into().map_err(CaError::Generate)?),
            });
        }
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(sign::random_serial());
        params.use_authority_key_identifier_extension = true;
        let material = self.material();
        let now = SystemTime::now();
        let not_after = (now + lifetime).min(material.signer_not_after);
        params.not_before = now
            .checked_sub(self.config.clock_skew)
            .unwrap_or(now)
            .into();
        params.not_after = not_after.into();
        let cert = params
            .signed_by(&key, &material.issuer)
            .map_err(CaError::Generate)?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(material.chain.iter().cloned());
        Ok(ServingCert {
            chain,
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_after,
        })
    }

    fn check_domain(&self, identity: &SpiffeId) -> Result<(), CaError> {
        if identity.trust_domain() != self.config.trust_domain {
            return Err(CaError::ForeignTrustDomain {
                requested: identity.to_string(),
                ours: self.config.trust_domain.clone(),
            });
        }
        Ok(())
    }
}

/// Seconds since the Unix epoch (0 before it).
pub fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
