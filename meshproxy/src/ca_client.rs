//! The proxy side of the mesh CA: key generation, CSR, certificate checks, renewal.
//!
//! The private key is generated here, in-process, for every certificate and never leaves the
//! proxy; only a CSR naming the proxy's one SPIFFE ID is sent to the control plane's API
//! (`POST /v1/csr` on port 15012). The first request carries the single-use bootstrap token
//! meshctl handed to the workload; renewals present the current certificate instead.
//!
//! A certificate from the CA is used only if it is unexpired, names exactly the expected
//! identity, is for our key and chains to the configured trust roots; otherwise the old
//! credentials are kept and the request retried with exponential backoff and jitter.
//! [`renew_loop`] renews at about half of each certificate's lifetime and publishes new
//! credentials on a `tokio::sync::watch` channel, which the TLS layer reads per handshake.
//!
//! The trust roots follow the CA: each answer carries the CA's trust bundle (both roots
//! while a root rotation is in progress, the new one alone after it), the issued chain is
//! checked against it, and it becomes the roots of the new credentials and of the connection
//! to the control plane. [`RenewNow`] makes the renewal loop renew at once (a pushed config
//! with a new bundle does).
//!
//! ```ignore
//! let client = CaClient::new(addr, Some(token), identity, &roots_pem)?;
//! let first = fetch_with_backoff(&client, None, &RenewPolicy::default()).await?;
//! let (tx, rx) = tokio::sync::watch::channel(first);
//! tokio::spawn(renew_loop(client, tx, RenewPolicy::default()));
//! // On each change: handle.set_credentials(tls::Credentials::from_pem(chain, key, roots, &id)?)
//! ```

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::cp_tls::{ControlPlaneTls, CpConnectError};
use ::http::{Request, StatusCode, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use meshapi::ca_api::{ApiErrorBody, CSR_PATH, CsrRequest, CsrResponse, SpiffeId};
use rand::Rng;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use tokio::sync::watch;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Largest response body accepted from the CA.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// A workload's TLS credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The identity the certificate names.
    pub identity: SpiffeId,
    /// Leaf certificate then intermediates, PEM.
    pub cert_chain_pem: String,
    /// The leaf's private key (PKCS#8 PEM); generated here, never sent anywhere.
    pub key_pem: String,
    /// The trust roots peers' certificates are verified against, PEM.
    pub root_pem: String,
    /// Expiry of the leaf.
    pub not_after: SystemTime,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("identity", &self.identity.to_string())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Why obtaining a certificate failed.
#[derive(Debug, thiserror::Error)]
pub enum CaClientError {
    /// Bad client settings (endpoint, roots).
    #[error("CA client config: {0}")]
    Config(String),
    /// No token and no valid certificate to renew with.
    #[error("no bootstrap token and no valid certificate to renew with")]
    NoCredentials,
    /// Key or CSR generation failed.
    #[error("key/CSR generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// TCP or TLS to the CA failed.
    #[error("cannot reach the CA at {endpoint}: {source}")]
    Connect {
        /// The CA's address.
        endpoint: String,
        /// What failed.
        source: std::io::Error,
    },
    /// HTTP failed.
    #[error("HTTP to the CA failed: {0}")]
    Http(#[from] hyper::Error),
    /// The request did not complete in time.
    #[error("CA request timed out after {0:?}")]
    Timeout(Duration),
    /// The CA refused the CSR.
    #[error("CA refused the CSR ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The CA's `error` text.
        message: String,
    },
    /// The CA's answer is not a CSR response.
    #[error("malformed CA response: {0}")]
    BadResponse(String),
    /// The returned certificate is not acceptable; the old credentials stay in use.
    #[error("rejected certificate from the CA: {0}")]
    Rejected(String),
}

impl CaClientError {
    /// Whether retrying with the same inputs can help (network, 429, 5xx) or not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Refused { status, .. } => *status == 429 || *status >= 500,
            Self::Config(_) | Self::NoCredentials => false,
            _ => true,
        }
    }
}

/// Something that can produce fresh credentials: the real [`CaClient`], or a fake in tests.
pub trait CredentialSource: Send + Sync {
    /// Obtains new credentials; `current` are the ones in use (for renewal over mTLS).
    fn fetch(
        &self,
        current: Option<&Credentials>,
    ) -> impl Future<Output = Result<Credentials, CaClientError>> + Send;
}

/// Client of the control plane's CSR endpoint.
#[derive(Debug)]
pub struct CaClient {
    endpoint: String,
    identity: SpiffeId,
    token: Mutex<Option<String>>,
    tls: ControlPlaneTls,
    request_timeout: Duration,
}

impl CaClient {
    /// A client of the API at `endpoint` (`host:port`) for `expected_identity`, trusting
    /// `roots_pem` for both the API server and the issued certificates.
    pub fn new(
        endpoint: impl Into<String>,
        token: Option<String>,
        expected_identity: SpiffeId,
        roots_pem: &str,
    ) -> Result<Self, CaClientError> {
        let tls = ControlPlaneTls::new(roots_pem, expected_identity.trust_domain())
            .map_err(CaClientError::Config)?;
        Ok(Self {
            endpoint: endpoint.into(),
            identity: expected_identity,
            token: Mutex::new(token),
            tls,
            request_timeout: Duration::from_secs(10),
        })
    }

    /// Sets the per-request timeout (connect + TLS + answer). Default 10 s.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The identity this client obtains certificates for.
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// The trust in the control plane (a clone shares its roots).
    pub fn tls(&self) -> &ControlPlaneTls {
        &self.tls
    }

    /// One attempt: new key, CSR, request, checks. The token is spent only on success.
    pub async fn fetch(&self, current: Option<&Credentials>) -> Result<Credentials, CaClientError> {
        let now = SystemTime::now();
        let renew_with = current.filter(|c| c.not_after > now && c.identity == self.identity);
        let token = self.token.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if renew_with.is_none() && token.is_none() {
            return Err(CaClientError::NoCredentials);
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(self.identity.to_string().try_into()?)];
        let csr_pem = params.serialize_request(&key)?.pem()?;
        let body = CsrRequest {
            // A renewal over mTLS needs no token; keep it for when the certificate has lapsed.
            token: if renew_with.is_some() { None } else { token },
            identity: self.identity.to_string(),
            csr_pem,
        };
        let answer = tokio::time::timeout(self.request_timeout, self.post(&body, renew_with))
            .await
            .map_err(|_| CaClientError::Timeout(self.request_timeout))??;
        // The CA's bundle, from the control plane we just verified; a CA that sends none
        // keeps the roots we have.
        let roots_pem = if answer.root_pem.trim().is_empty() {
            self.tls.roots_pem()
        } else {
            answer.root_pem
        };
        let anchors = crate::cp_tls::parse_anchors(&roots_pem)
            .map_err(|e| CaClientError::Rejected(format!("the CA's trust bundle: {e}")))?;
        let not_after = verify_issued(
            &answer.cert_chain_pem,
            key.public_key_raw(),
            &self.identity,
            &anchors,
            SystemTime::now(),
        )?;
        if body.token.is_some() {
            *self.token.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        if self
            .tls
            .set_roots(&roots_pem)
            .map_err(CaClientError::Rejected)?
        {
            tracing::info!(identity = %self.identity, roots = anchors.len(), "trust roots changed (CA's bundle)");
        }
        tracing::info!(identity = %self.identity, not_after = ?not_after, "workload certificate obtained");
        Ok(Credentials {
            identity: self.identity.clone(),
            cert_chain_pem: answer.cert_chain_pem,
            key_pem: key.serialize_pem(),
            root_pem: roots_pem,
            not_after,
        })
    }

    async fn post(
        &self,
        body: &CsrRequest,
        client_cert: Option<&Credentials>,
    ) -> Result<CsrResponse, CaClientError> {
        let connect_err = |source| CaClientError::Connect {
            endpoint: self.endpoint.clone(),
            source,
        };
        let tls = match self.tls.connect(&self.endpoint, client_cert).await {
            Ok(tls) => tls,
            Err(CpConnectError::Config(m)) => return Err(CaClientError::Config(m)),
            Err(CpConnectError::Io(e)) => return Err(connect_err(e)),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        let conn = tokio::spawn(conn);
        let json = serde_json::to_vec(body).map_err(|e| CaClientError::Config(e.to_string()))?;
        let request = Request::post(CSR_PATH)
            .header(header::HOST, self.endpoint.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(json)))
            .map_err(|e| CaClientError::Config(e.to_string()))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| CaClientError::BadResponse(format!("reading body: {e}")))?
            .to_bytes();
        conn.abort();
        if status != StatusCode::OK {
            let message = serde_json::from_slice::<ApiErrorBody>(&bytes)
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).chars().take(200).collect());
            return Err(CaClientError::Refused {
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| CaClientError::BadResponse(e.to_string()))
    }
}

impl CredentialSource for CaClient {
    fn fetch(
        &self,
        current: Option<&Credentials>,
    ) -> impl Future<Output = Result<Credentials, CaClientError>> + Send {
        CaClient::fetch(self, current)
    }
}

/// Checks a certificate chain returned by the CA: unexpired, exactly one URI SAN equal to
/// `expected`, for the key whose raw public key is `public_key`, chaining to `anchors` for both
/// client and server use. Returns the leaf's expiry.
pub fn verify_issued(
    chain_pem: &str,
    public_key: &[u8],
    expected: &SpiffeId,
    anchors: &[TrustAnchor<'_>],
    now: SystemTime,
) -> Result<SystemTime, CaClientError> {
    let reject = |m: String| CaClientError::Rejected(m);
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| reject(format!("chain is not PEM: {e}")))?;
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(reject("no certificate in the answer".into()));
    };
    let (_, x509) =
        X509Certificate::from_der(leaf).map_err(|e| reject(format!("leaf does not parse: {e}")))?;
    let not_after = x509.validity().not_after.timestamp();
    let not_after =
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(not_after).unwrap_or(0));
    if not_after <= now {
        return Err(reject("certificate is already expired".into()));
    }
    let uris: Vec<&str> = match x509.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let expected_str = expected.to_string();
    if uris != [expected_str.as_str()] {
        return Err(reject(format!(
            "certificate names {uris:?}, expected exactly {expected_str}"
        )));
    }
    if x509.public_key().subject_public_key.data.as_ref() != public_key {
        return Err(reject("certificate is not for our key".into()));
    }
    let ee = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| reject(format!("leaf unusable: {e:?}")))?;
    let time = UnixTime::since_unix_epoch(
        now.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    for usage in [
        webpki::KeyUsage::client_auth(),
        webpki::KeyUsage::server_auth(),
    ] {
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            anchors,
            intermediates,
            time,
            usage,
            None,
            None,
        )
        .map_err(|e| reject(format!("does not chain to the trust roots: {e:?}")))?;
    }
    Ok(not_after)
}

/// Timing of renewals and retries. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct RenewPolicy {
    /// Renew when this fraction of the remaining lifetime has passed. Default 0.5.
    pub renew_fraction: f64,
    /// Uniform jitter added to `renew_fraction`, ±. Default 0.1 (renew at 40–60 %).
    pub jitter: f64,
    /// First retry delay after a failure. Default 1 s.
    pub backoff_initial: Duration,
    /// Largest retry delay. Default 60 s.
    pub backoff_max: Duration,
}

impl Default for RenewPolicy {
    fn default() -> Self {
        Self {
            renew_fraction: 0.5,
            jitter: 0.1,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

impl RenewPolicy {
    /// How long to wait before renewing a certificate expiring at `not_after`, seen at `now`.
    pub fn renew_delay(&self, not_after: SystemTime, now: SystemTime) -> Duration {
        let remaining = not_after.duration_since(now).unwrap_or_default();
        let jitter = if self.jitter > 0.0 {
            rand::rng().random_range(-self.jitter..=self.jitter)
        } else {
            0.0
        };
        let fraction = (self.renew_fraction + jitter).clamp(0.05, 0.95);
        remaining.mul_f64(fraction)
    }

    /// The `attempt`-th retry delay (0-based): exponential, capped, with jitter in [½, 1]×.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .backoff_initial
            .saturating_mul(2u32.saturating_pow(attempt.min(20)))
            .min(self.backoff_max);
        base.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

/// Fetches until it succeeds, backing off between retryable failures (network, 429, 5xx, a
/// rejected certificate); returns the first error that retrying cannot fix (a refused or spent
/// token, a bad config). For the first certificate of a proxy.
pub async fn fetch_with_backoff<S: CredentialSource>(
    source: &S,
    current: Option<&Credentials>,
    policy: &RenewPolicy,
) -> Result<Credentials, CaClientError> {
    let mut attempt = 0;
    loop {
        match source.fetch(current).await {
            Ok(creds) => return Ok(creds),
            Err(e) if !e.is_retryable() => return Err(e),
            Err(e) => {
                let delay = policy.backoff(attempt);
                tracing::warn!(error = %e, attempt, retry_in = ?delay, "certificate request failed");
                tokio::time::sleep(delay).await;
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

/// Renews the credentials in `tx` at about half of their lifetime, forever (until every
/// receiver is gone). A failed or rejected renewal keeps the old credentials and is retried
/// with backoff.
pub async fn renew_loop<S: CredentialSource>(
    source: S,
    tx: watch::Sender<Credentials>,
    policy: RenewPolicy,
) {
    renew_loop_with(source, tx, policy, RenewNow::default()).await;
}

/// Asks a running [`renew_loop_with`] to renew at once (a new trust bundle was pushed).
/// Clones share the signal.
#[derive(Debug, Clone, Default)]
pub struct RenewNow(std::sync::Arc<tokio::sync::Notify>);

impl RenewNow {
    /// Renew now (or right after the renewal in progress).
    pub fn renew(&self) {
        self.0.notify_one();
    }
}

/// [`renew_loop`], renewing also whenever `now` is signalled.
pub async fn renew_loop_with<S: CredentialSource>(
    source: S,
    tx: watch::Sender<Credentials>,
    policy: RenewPolicy,
    now: RenewNow,
) {
    loop {
        let not_after = tx.borrow().not_after;
        let delay = policy.renew_delay(not_after, SystemTime::now());
        tracing::debug!(renew_in = ?delay, "next certificate renewal scheduled");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = now.0.notified() => {
                tracing::info!("renewing the certificate now (new trust bundle)");
            }
            () = tx.closed() => return,
        }
        let mut attempt = 0;
        loop {
            let current = tx.borrow().clone();
            match source.fetch(Some(&current)).await {
                Ok(fresh) => {
                    tx.send_replace(fresh);
                    break;
                }
                Err(e) => {
                    let retry_in = policy.backoff(attempt);
                    tracing::warn!(
                        identity = %current.identity,
                        error = %e,
                        attempt,
                        retry_in = ?retry_in,
                        "certificate renewal failed; keeping the current certificate"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(retry_in) => {}
                        () = tx.closed() => return,
                    }
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }
}
