//! TLS of the API server: a serving certificate from the mesh CA, optional client certificates.
//!
//! The server presents `spiffe://<td>/ns/mesh-system/sa/meshctl` (plus the configured DNS/IP
//! names), issued by the CA itself and re-issued once half of its lifetime has passed. Client
//! certificates are optional (a bootstrapping proxy has none), but one that is presented must
//! chain to the mesh roots and be valid now, or the handshake fails.
//!
//! Both follow the CA's trust bundle: when a root rotation starts or ends
//! ([`Ca::trust_changes`]), client certificates are verified against the new bundle from the
//! next handshake on, and the serving certificate is re-issued by the new signer (with the
//! cross certificate during the overlap, so a proxy that still trusts only the old root
//! verifies it).

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use meshapi::ca_api::SpiffeId;
use rustls::RootCertStore;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::UnixTime;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
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
    let verifier = Arc::new(FollowingVerifier {
        ca: ca.clone(),
        provider: provider.clone(),
        current: Mutex::new((u64::MAX, webpki_verifier(&ca, &provider)?)),
    });
    let resolver = ServingCertResolver::new(ca, config, provider.clone())?;
    let mut tls = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ApiError::Tls)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(resolver));
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

fn webpki_verifier(
    ca: &Ca,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, ApiError> {
    let mut roots = RootCertStore::empty();
    for root in ca.roots() {
        roots.add(root).map_err(ApiError::Tls)?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| ApiError::Tls(rustls::Error::General(e.to_string())))
}

/// The client verifier of the CA's current trust bundle: rebuilt when the bundle changes.
#[derive(Debug)]
struct FollowingVerifier {
    ca: Arc<Ca>,
    provider: Arc<CryptoProvider>,
    /// The trust generation it was built for, and the verifier.
    current: Mutex<(u64, Arc<dyn ClientCertVerifier>)>,
}

impl FollowingVerifier {
    fn get(&self) -> Arc<dyn ClientCertVerifier> {
        let generation = self.ca.trust_generation();
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.0 != generation {
            match webpki_verifier(&self.ca, &self.provider) {
                Ok(v) => *current = (generation, v),
                Err(e) => tracing::error!(error = %e, "cannot follow the CA's new trust roots"),
            }
        }
        current.1.clone()
    }
}

impl ClientCertVerifier for FollowingVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.get()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.get().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.get().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.get().supported_verify_schemes()
    }
}

/// The SPIFFE ID of a (verified) client certificate: its single SPIFFE URI SAN.
pub(crate) fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<SpiffeId> {
    let leaf = certs?.first()?;
    spiffe_id_of(leaf)
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
    /// The certificate, when to re-issue it, and the trust generation it was issued in.
    current: Mutex<(Arc<CertifiedKey>, SystemTime, u64)>,
}

impl ServingCertResolver {
    fn new(
        ca: Arc<Ca>,
        config: &ApiConfig,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, ApiError> {
        let names = config.server_names.clone();
        let lifetime = config.serving_cert_lifetime;
        let generation = ca.trust_generation();
        let (key, renew_at) = issue(&ca, &names, lifetime, &provider)?;
        Ok(Self {
            ca,
            names,
            lifetime,
            provider,
            current: Mutex::new((key, renew_at, generation)),
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
        let generation = self.ca.trust_generation();
        if SystemTime::now() >= current.1 || current.2 != generation {
            match issue(&self.ca, &self.names, self.lifetime, &self.provider) {
                Ok((key, renew_at)) => *current = (key, renew_at, generation),
                Err(e) => tracing::error!(error = %e, "cannot renew the API serving certificate"),
            }
        }
        Some(current.0.clone())
    }
}
