//! TLS of the API server: a serving certificate from the mesh CA, optional client certificates.
//!
//! The server presents `spiffe://<td>/ns/mesh-system/sa/meshctl` (plus the configured DNS/IP
//! names), issued by the CA itself and re-issued once half of its lifetime has passed. Client
//! certificates are optional (a bootstrapping proxy has none), but one that is presented must
//! chain to the mesh roots and be valid now, or the handshake fails.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use meshapi::ca_api::SpiffeId;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{ApiConfig, ApiError};
use crate::ca::Ca;

/// The crypto provider of every TLS config here (ring, as pinned by the workspace).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the server config: CA-issued serving cert, optional verified client certs, h2 + h1.
pub(crate) fn server_config(
    ca: Arc<Ca>,
    config: &ApiConfig,
) -> Result<Arc<ServerConfig>, ApiError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    for root in ca.roots() {
        roots.add(root.clone()).map_err(ApiError::Tls)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| ApiError::Tls(rustls::Error::General(e.to_string())))?;
    let resolver = ServingCertResolver::new(ca, config, provider.clone())?;
    let mut tls = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ApiError::Tls)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(resolver));
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// The SPIFFE ID of a (verified) client certificate: its single SPIFFE URI SAN.
pub(crate) fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<SpiffeId> {
    let leaf = certs?.first()?;
    spiffe_id_of(leaf)
}

/// The serial of a (verified) client certificate, lowercase hex.
pub(crate) fn peer_serial(certs: Option<&[CertificateDer<'_>]>) -> Option<String> {
    serial_of(certs?.first()?)
}

/// The serial of `cert`, lowercase hex of its bytes (leading zeros kept).
pub fn serial_of(cert: &[u8]) -> Option<String> {
    let (_, x509) = X509Certificate::from_der(cert).ok()?;
    Some(
        x509.raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// The one SPIFFE URI SAN of `cert`, if it has exactly one URI SAN and it parses.
pub fn spiffe_id_of(cert: &[u8]) -> Option<SpiffeId> {
    let (_, x509) = X509Certificate::from_der(cert).ok()?;
    let san = x509.subject_alternative_name().ok()??;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let uri = uris.next()?;
    if uris.next().is_some() {
        return None;
    }
    uri.parse().ok()
}

/// Hands out the serving certificate, re-issuing it at half of its lifetime.
#[derive(Debug)]
struct ServingCertResolver {
    ca: Arc<Ca>,
    names: Vec<String>,
    lifetime: std::time::Duration,
    provider: Arc<CryptoProvider>,
    current: Mutex<(Arc<CertifiedKey>, SystemTime)>,
}

impl ServingCertResolver {
    fn new(
        ca: Arc<Ca>,
        config: &ApiConfig,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, ApiError> {
        let names = config.server_names.clone();
        let lifetime = config.serving_cert_lifetime;
        let first = issue(&ca, &names, lifetime, &provider)?;
        Ok(Self {
            ca,
            names,
            lifetime,
            provider,
            current: Mutex::new(first),
        })
    }
}

fn issue(
    ca: &Ca,
    names: &[String],
    lifetime: std::time::Duration,
    provider: &CryptoProvider,
) -> Result<(Arc<CertifiedKey>, SystemTime), ApiError> {
    let now = SystemTime::now();
    let serving = ca
        .issue_serving_cert(names, lifetime)
        .map_err(ApiError::Ca)?;
    let key = provider
        .key_provider
        .load_private_key(serving.key)
        .map_err(ApiError::Tls)?;
    let renew_at = now + serving.not_after.duration_since(now).unwrap_or_default() / 2;
    Ok((Arc::new(CertifiedKey::new(serving.chain, key)), renew_at))
}

impl ResolvesServerCert for ServingCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if SystemTime::now() >= current.1 {
            match issue(&self.ca, &self.names, self.lifetime, &self.provider) {
                Ok(fresh) => *current = fresh,
                Err(e) => tracing::error!(error = %e, "cannot renew the API serving certificate"),
            }
        }
        Some(current.0.clone())
    }
}
