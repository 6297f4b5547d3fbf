//! Mesh identity and mutual TLS 1.3 (rustls, ring provider).
//!
//! [`Identity`] holds the current [`Trust`] (own certificate chain and key, trust roots, trust
//! domain aliases, a generation) behind an `ArcSwap`, so rotation is one atomic store: new
//! handshakes pick up the new certificate and roots, established connections are untouched.
//! An outbound connection is opened under one trust state ([`client_config_for`]) and pooled
//! under its generation. The verifiers validate the
//! chain with webpki against the *current* roots, then apply the SPIFFE X509-SVID rules
//! ([`check_svid`]) that webpki cannot: exactly one URI SAN, a strict
//! `spiffe://<td>/ns/<ns>/sa/<sa>` ID, leaf not a CA, keyUsage with digitalSignature and
//! without keyCertSign. Session resumption is disabled on both sides, so no session outlives a
//! change of roots.
//!
//! Client side towards destinations that are not mesh proxies (a DestinationRule `tls` of mode
//! `SIMPLE` or `MUTUAL`): [`origination_config`] verifies the server against the configured CA
//! bundle (or the system's), checks `subjectAltNames` (or the sent server name), and presents
//! the configured client certificate for `MUTUAL`. TLS 1.2 and 1.3.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use meshapi::proxy::{SYSTEM_CA_FILES, SpiffeId, UpstreamTls, UpstreamTlsMode};
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DistinguishedName, OtherError, ServerConfig, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// ALPN for HTTP/2 between proxies (pooled, multiplexed).
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN for a dedicated HTTP/1.1 stream between proxies (upgrades, WebSocket).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// ALPN for an opaque TCP stream between proxies.
pub const ALPN_TCP: &[u8] = b"meshproxy/tcp";

/// Why credentials could not be loaded or a certificate is not a valid SVID.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: no PEM {what} found")]
    Pem { path: String, what: &'static str },
    #[error("private key unusable: {0}")]
    Key(rustls::Error),
    #[error("trust root unusable: {0}")]
    Root(webpki::Error),
    #[error("own certificate is not a valid SVID: {0}")]
    OwnCert(SvidError),
    #[error("{0:?} is not a DNS name or IP address")]
    Name(String),
    #[error("no system trust roots (looked in {0}); set caCertificates")]
    NoSystemRoots(String),
    #[error("client TLS config: {0}")]
    Config(rustls::Error),
    #[error("own certificate is for {got}, config says {expected}")]
    OwnIdentity {
        expected: Box<SpiffeId>,
        got: Box<SpiffeId>,
    },
}

/// A certificate that breaks the SPIFFE X509-SVID rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    #[error("certificate does not parse: {0}")]
    Parse(String),
    #[error("leaf has {0} URI SANs; an SVID has exactly one")]
    UriSanCount(usize),
    #[error("URI SAN is not a mesh SPIFFE ID: {0}")]
    BadId(String),
    #[error("leaf is a CA certificate")]
    LeafIsCa,
    #[error("leaf has no keyUsage extension")]
    NoKeyUsage,
    #[error("leaf keyUsage lacks digitalSignature")]
    NoDigitalSignature,
    #[error("leaf keyUsage has keyCertSign or cRLSign")]
    CertSign,
    #[error("peer trust domain {got} is not {expected}")]
    TrustDomain { expected: String, got: String },
    #[error("peer is {got}, expected {expected}")]
    UnexpectedPeer {
        expected: Box<SpiffeId>,
        got: Box<SpiffeId>,
    },
}

/// Checks the SVID rules on a leaf certificate and returns its SPIFFE ID.
pub fn check_svid(der: &[u8]) -> Result<SpiffeId, SvidError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| SvidError::Parse(e.to_string()))?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| SvidError::Parse(e.to_string()))?;
    let uris: Vec<&str> = sans
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|g| {
                    if let GeneralName::URI(u) = g {
                        Some(*u)
                    } else {
                        None
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    if uris.len() != 1 {
        return Err(SvidError::UriSanCount(uris.len()));
    }
    let id: SpiffeId = uris[0]
        .parse()
        .map_err(|e: meshapi::proxy::SpiffeIdError| {
            SvidError::BadId(format!("{}: {e}", uris[0]))
        })?;
    let bc = cert
        .basic_constraints()
        .map_err(|e| SvidError::Parse(e.to_string()))?;
    if bc.is_some_and(|b| b.value.ca) {
        return Err(SvidError::LeafIsCa);
    }
    let ku = cert
        .key_usage()
        .map_err(|e| SvidError::Parse(e.to_string()))?;
    let ku = ku.ok_or(SvidError::NoKeyUsage)?.value;
    if !ku.digital_signature() {
        return Err(SvidError::NoDigitalSignature);
    }
    if ku.key_cert_sign() || ku.crl_sign() {
        return Err(SvidError::CertSign);
    }
    Ok(id)
}

/// One consistent set of credentials: own chain + key, and the roots to verify peers with.
#[derive(Debug)]
pub struct Credentials {
    /// The SPIFFE ID in our own certificate.
    pub id: SpiffeId,
    /// When our own certificate expires (Unix seconds).
    pub not_after: Option<i64>,
    /// When the first of the trusted roots expires (Unix seconds).
    pub roots_not_after: Option<i64>,
    key: Arc<CertifiedKey>,
    roots: Vec<rustls_pki_types::TrustAnchor<'static>>,
    /// The roots as certificates (the admin endpoint's `/certs`).
    root_certs: Vec<CertificateDer<'static>>,
}

impl Credentials {
    /// Builds credentials from PEM text, checking our own certificate is a valid SVID for
    /// `expected`.
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        roots_pem: &[u8],
        expected: &SpiffeId,
    ) -> Result<Credentials, TlsError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .filter_map(Result::ok)
            .collect();
        let leaf = chain.first().ok_or(TlsError::Pem {
            path: "certificate".into(),
            what: "CERTIFICATE",
        })?;
        let id = check_svid(leaf).map_err(TlsError::OwnCert)?;
        if &id != expected {
            return Err(TlsError::OwnIdentity {
                expected: Box::new(expected.clone()),
                got: Box::new(id),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| TlsError::Pem {
            path: "key".into(),
            what: "PRIVATE KEY",
        })?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(TlsError::Key)?;
        let mut roots = Vec::new();
        let mut root_certs = Vec::new();
        let mut roots_not_after: Option<i64> = None;
        for der in CertificateDer::pem_slice_iter(roots_pem).filter_map(Result::ok) {
            if let Some(t) = not_after(&der) {
                roots_not_after = Some(roots_not_after.map_or(t, |r| r.min(t)));
            }
            roots.push(
                webpki::anchor_from_trusted_cert(&der)
                    .map_err(TlsError::Root)?
                    .to_owned(),
            );
            root_certs.push(der);
        }
        if roots.is_empty() {
            return Err(TlsError::Pem {
                path: "roots".into(),
                what: "CERTIFICATE",
            });
        }
        Ok(Credentials {
            id,
            not_after: not_after(leaf),
            roots_not_after,
            key: Arc::new(CertifiedKey::new(chain, signer)),
            roots,
            root_certs,
        })
    }

    /// The trust roots peers are verified against.
    pub fn root_certs(&self) -> &[CertificateDer<'static>] {
        &self.root_certs
    }

    /// Our own chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.key.cert
    }

    /// Reads the three PEM files.
    pub fn from_files(
        cert: &Path,
        key: &Path,
        roots: &Path,
        expected: &SpiffeId,
    ) -> Result<Credentials, TlsError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| TlsError::Read {
                path: p.display().to_string(),
                source,
            })
        };
        Credentials::from_pem(&read(cert)?, &read(key)?, &read(roots)?, expected)
    }
}

/// A certificate's `notAfter` (Unix seconds).
fn not_after(der: &CertificateDer<'_>) -> Option<i64> {
    X509Certificate::from_der(der)
        .ok()
        .map(|(_, c)| c.validity().not_after.timestamp())
}

/// One consistent trust state: our credentials (chain, key, roots) and the other trust
/// domains whose peers we accept (the mesh's `trustDomainAliases`), with a generation that
/// changes whenever what peers are verified against changes (roots or aliases; not a leaf
/// rotation under the same roots). Immutable; a change is a new value.
#[derive(Debug, Default)]
pub struct Trust {
    pub creds: Option<Arc<Credentials>>,
    pub aliases: Vec<String>,
    pub generation: u64,
}

impl Trust {
    /// The next state with `creds` and `aliases`; a new generation when roots or aliases
    /// differ from this one's.
    pub fn next(&self, creds: Option<Arc<Credentials>>, aliases: &[String]) -> Trust {
        let roots = |c: &Option<Arc<Credentials>>| c.as_ref().map(|c| c.roots.clone());
        let same = roots(&self.creds) == roots(&creds) && self.aliases == aliases;
        Trust {
            creds,
            aliases: aliases.to_vec(),
            generation: self.generation + u64::from(!same),
        }
    }

    /// Whether a peer in trust domain `td` belongs to this mesh: ours or an alias.
    fn accepts_trust_domain(&self, own: &str, td: &str) -> bool {
        td == own || self.aliases.iter().any(|x| x == td)
    }
}

/// The live trust state of this proxy ([`Trust`]), swapped atomically as one value on rotation
/// or config change: new handshakes pick up the new certificate, roots and aliases together,
/// established connections are untouched.
#[derive(Debug, Default)]
pub struct Identity {
    trust: ArcSwap<Trust>,
}

impl Identity {
    /// The current trust state, read once per handshake.
    pub fn trust(&self) -> Arc<Trust> {
        self.trust.load_full()
    }

    /// Publishes `creds` (`None`: keep the current ones) and the trust domains accepted
    /// besides our own (Istio's `trustDomainAliases`) in one store; returns the new state.
    pub fn publish(&self, creds: Option<Credentials>, aliases: &[String]) -> Arc<Trust> {
        let creds = creds.map(Arc::new);
        if let Some(c) = &creds {
            tracing::info!(identity = %c.id, "credentials installed");
        }
        let mut out = None;
        self.trust.rcu(|cur| {
            let next = Arc::new(cur.next(creds.clone().or_else(|| cur.creds.clone()), aliases));
            out = Some(Arc::clone(&next));
            next
        });
        out.unwrap_or_default()
    }

    /// Sets the trust domains accepted besides our own; new handshakes use them.
    pub fn set_trust_domain_aliases(&self, aliases: &[String]) {
        self.publish(None, aliases);
    }

    /// Replaces the credentials; new handshakes use them, open connections keep going.
    pub fn set(&self, creds: Credentials) {
        let aliases = self.trust.load().aliases.clone();
        self.publish(Some(creds), &aliases);
    }

    /// The current credentials, if any were loaded.
    pub fn current(&self) -> Option<Arc<Credentials>> {
        self.trust.load().creds.clone()
    }

    /// True once credentials are loaded.
    pub fn is_ready(&self) -> bool {
        self.trust.load().creds.is_some()
    }
}

/// The handshake-signature half of a rustls certificate verifier (TLS 1.2 and 1.3 signatures,
/// supported schemes), the same for every verifier of the proxy: the ring provider's
/// algorithms. Expands to the three trait methods inside an `impl ServerCertVerifier` or
/// `impl ClientCertVerifier`.
macro_rules! signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls_pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &$crate::tls::algs())
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls_pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &$crate::tls::algs())
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            $crate::tls::algs().supported_schemes()
        }
    };
}
pub(crate) use signature_checks;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn algs() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

fn other(e: SvidError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

fn webpki_err(e: webpki::Error) -> rustls::Error {
    use webpki::Error as W;
    let ce = match e {
        W::CertExpired { .. } => CertificateError::Expired,
        W::CertNotValidYet { .. } => CertificateError::NotValidYet,
        W::UnknownIssuer => CertificateError::UnknownIssuer,
        W::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        W::CaUsedAsEndEntity => return other(SvidError::LeafIsCa),
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(ce)
}

/// Chain to the current roots, then the SVID rules and the trust domain (ours or an alias).
fn verify_peer(
    trust: &Trust,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: KeyUsage,
) -> Result<SpiffeId, rustls::Error> {
    let creds = trust
        .creds
        .as_ref()
        .ok_or(rustls::Error::General("no credentials loaded".into()))?;
    let ee = EndEntityCert::try_from(end_entity).map_err(webpki_err)?;
    ee.verify_for_usage(
        algs().all,
        &creds.roots,
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map_err(webpki_err)?;
    let id = check_svid(end_entity).map_err(other)?;
    if !trust.accepts_trust_domain(creds.id.trust_domain(), id.trust_domain()) {
        return Err(other(SvidError::TrustDomain {
            expected: creds.id.trust_domain().to_string(),
            got: id.trust_domain().to_string(),
        }));
    }
    Ok(id)
}

/// Server side: requires a client certificate and verifies it as a mesh SVID.
#[derive(Debug)]
struct PeerClientVerifier {
    identity: Arc<Identity>,
}

impl ClientCertVerifier for PeerClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
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
        verify_peer(
            &self.identity.trust(),
            end_entity,
            intermediates,
            now,
            KeyUsage::client_auth(),
        )?;
        Ok(ClientCertVerified::assertion())
    }

    signature_checks!();
}

/// Client side: verifies the server as a mesh SVID with exactly the expected SPIFFE ID, under
/// the trust state the connection was opened with.
#[derive(Debug)]
struct PeerServerVerifier {
    trust: Arc<Trust>,
    expected: SpiffeId,
}

impl ServerCertVerifier for PeerServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = verify_peer(
            &self.trust,
            end_entity,
            intermediates,
            now,
            KeyUsage::server_auth(),
        )?;
        if id != self.expected {
            return Err(other(SvidError::UnexpectedPeer {
                expected: Box::new(self.expected.clone()),
                got: Box::new(id),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    signature_checks!();
}

/// Presents whatever certificate is current at handshake time (server side).
#[derive(Debug)]
struct CurrentCert {
    identity: Arc<Identity>,
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.identity.current().map(|c| c.key.clone())
    }
}

/// Presents the certificate of the trust state a connection was opened with (client side).
#[derive(Debug)]
struct PinnedCert {
    trust: Arc<Trust>,
}

impl ResolvesClientCert for PinnedCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.trust.creds.as_ref().map(|c| c.key.clone())
    }

    fn has_certs(&self) -> bool {
        self.trust.creds.is_some()
    }
}

/// The inbound server config: TLS 1.3 only, client certificate mandatory, no resumption.
pub fn server_config(identity: Arc<Identity>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(PeerClientVerifier {
            identity: identity.clone(),
        }))
        .with_cert_resolver(Arc::new(CurrentCert { identity }));
    cfg.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec(), ALPN_TCP.to_vec()];
    cfg.session_storage = Arc::new(NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// A client config that presents our current certificate and accepts only `expected`,
/// offering `alpn`.
pub fn client_config(
    identity: Arc<Identity>,
    expected: SpiffeId,
    alpn: &[u8],
) -> Result<Arc<ClientConfig>, rustls::Error> {
    client_config_for(identity.trust(), expected, alpn)
}

/// [`client_config`] under one trust state: its certificate, roots and aliases, whatever is
/// published meanwhile (a pooled connection is tagged with `trust.generation`).
pub fn client_config_for(
    trust: Arc<Trust>,
    expected: SpiffeId,
    alpn: &[u8],
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerServerVerifier {
            trust: Arc::clone(&trust),
            expected,
        }))
        .with_client_cert_resolver(Arc::new(PinnedCert { trust }));
    cfg.alpn_protocols = vec![alpn.to_vec()];
    cfg.resumption = Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// Client side of TLS origination: the chain to `roots` (unless `skip`), then one of `names`
/// (or the name sent in SNI when `names` is empty) must be in the certificate.
#[derive(Debug)]
struct OriginVerifier {
    roots: Vec<rustls_pki_types::TrustAnchor<'static>>,
    names: Vec<ServerName<'static>>,
    skip: bool,
}

impl ServerCertVerifier for OriginVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.skip {
            return Ok(ServerCertVerified::assertion());
        }
        let ee = EndEntityCert::try_from(end_entity).map_err(webpki_err)?;
        ee.verify_for_usage(
            algs().all,
            &self.roots,
            intermediates,
            now,
            KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(webpki_err)?;
        let ok = if self.names.is_empty() {
            ee.verify_is_valid_for_subject_name(server_name).is_ok()
        } else {
            self.names
                .iter()
                .any(|n| ee.verify_is_valid_for_subject_name(n).is_ok())
        };
        if ok {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ))
        }
    }

    signature_checks!();
}

fn read_file(p: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(p).map_err(|source| TlsError::Read {
        path: p.display().to_string(),
        source,
    })
}

fn server_name(s: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(s.to_string()).map_err(|_| TlsError::Name(s.to_string()))
}

/// The trust anchors in a PEM file.
fn anchors(path: &Path) -> Result<Vec<rustls_pki_types::TrustAnchor<'static>>, TlsError> {
    let pem = read_file(path)?;
    let mut roots = Vec::new();
    for der in CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok) {
        roots.push(
            webpki::anchor_from_trusted_cert(&der)
                .map_err(TlsError::Root)?
                .to_owned(),
        );
    }
    if roots.is_empty() {
        return Err(TlsError::Pem {
            path: path.display().to_string(),
            what: "CERTIFICATE",
        });
    }
    Ok(roots)
}

/// A client config for TLS origination (`SIMPLE` or `MUTUAL`) offering `alpn`, and the
/// server name to send: `sni`, else the first `subjectAltNames` entry, else `fallback` (an IP
/// address, sent as no SNI). Files are read now, so a rotated file applies to the next
/// connection.
pub fn origination_config(
    s: &UpstreamTls,
    alpn: &[&[u8]],
    fallback: std::net::IpAddr,
) -> Result<(Arc<ClientConfig>, ServerName<'static>), TlsError> {
    let roots = if s.insecure_skip_verify {
        Vec::new()
    } else if let Some(ca) = &s.ca_certificates {
        anchors(ca)?
    } else {
        let found = SYSTEM_CA_FILES
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
            .ok_or_else(|| TlsError::NoSystemRoots(SYSTEM_CA_FILES.join(", ")))?;
        anchors(found)?
    };
    let names = s
        .subject_alt_names
        .iter()
        .map(|n| server_name(n))
        .collect::<Result<Vec<_>, _>>()?;
    let sni = match (&s.sni, s.subject_alt_names.first()) {
        (Some(n), _) | (None, Some(n)) => server_name(n)?,
        (None, None) => ServerName::IpAddress(fallback.into()),
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(OriginVerifier {
            roots,
            names,
            skip: s.insecure_skip_verify,
        }));
    let mut cfg = match (&s.mode, &s.client_certificate, &s.private_key) {
        (UpstreamTlsMode::Mutual, Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(&read_file(cert)?)
                    .filter_map(Result::ok)
                    .collect();
            if chain.is_empty() {
                return Err(TlsError::Pem {
                    path: cert.display().to_string(),
                    what: "CERTIFICATE",
                });
            }
            let key_der =
                PrivateKeyDer::from_pem_slice(&read_file(key)?).map_err(|_| TlsError::Pem {
                    path: key.display().to_string(),
                    what: "PRIVATE KEY",
                })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(TlsError::Key)?
        }
        _ => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok((Arc::new(cfg), sni))
}

/// The client config a proxy fetches `https://` JWKS and OpenID discovery documents with:
/// the public web roots (Mozilla's, compiled in: the sidecar image has no CA bundle), the
/// mesh's own roots (an issuer inside the mesh, a test CA) and the system's bundle when the
/// host has one (the first of [`SYSTEM_CA_FILES`], e.g. an enterprise CA in host mode). The
/// server's name is checked as any HTTPS client does; no client certificate.
pub fn jwks_client_config(identity: &Identity) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(creds) = identity.current() {
        roots.extend(creds.roots.iter().cloned());
    }
    if let Some(found) = SYSTEM_CA_FILES.iter().map(Path::new).find(|p| p.exists()) {
        let pem = read_file(found)?;
        roots
            .add_parsable_certificates(CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok));
    }
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The SNI a client sends to say which application port it wants: `p<port>.inbound.mesh`.
pub fn sni_for_port(port: u16) -> ServerName<'static> {
    ServerName::try_from(format!("p{port}.inbound.mesh"))
        .unwrap_or(ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()))
}

/// The application port named by an SNI from [`sni_for_port`].
pub fn port_from_sni(sni: &str) -> Option<u16> {
    sni.strip_prefix('p')?
        .strip_suffix(".inbound.mesh")?
        .parse()
        .ok()
}

/// Envoy-style `x-forwarded-client-cert` value for a verified peer.
pub fn xfcc_value(own: &SpiffeId, peer_cert: &[u8], peer: &SpiffeId) -> String {
    let hash = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .map(|s| s.common.hash_provider.hash(peer_cert))
        .map(|h| {
            h.as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        })
        .unwrap_or_default();
    format!("By={own};Hash={hash};Subject=\"\";URI={peer}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sni_round_trip() {
        let ServerName::DnsName(n) = sni_for_port(8080) else {
            panic!()
        };
        assert_eq!(port_from_sni(n.as_ref()), Some(8080));
        assert_eq!(port_from_sni("example.com"), None);
    }
}
