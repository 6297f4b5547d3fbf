//! How the proxy reaches its control plane's API (port 15012), shared by the CA client and the
//! config client: the mesh trust roots, the verifier of the control plane's certificate (it
//! chains to those roots and names the control plane's SPIFFE ID; the host name used to connect
//! is not checked, so meshctl is reachable under any address), and one TLS connect.
//!
//! The roots follow the CA: [`ControlPlaneTls::set_roots`] replaces them (a root rotation's
//! bundle, from a CSR answer or a pushed config) for every clone of the value, so the CA
//! client and the config client verify the control plane with the same, current roots.

use std::sync::{Arc, RwLock};

use meshapi::ca_api::{SpiffeId, control_plane_id};
use rustls::ClientConfig;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, TrustAnchor, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::ca_client::Credentials;

/// Why a connection to the control plane could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CpConnectError {
    /// Bad settings or credentials: retrying does not help.
    #[error("{0}")]
    Config(String),
    /// TCP or TLS failed: the control plane may be down or unreachable.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The current roots: PEM as received, and as webpki anchors.
#[derive(Debug)]
struct Roots {
    pem: String,
    anchors: Arc<Vec<TrustAnchor<'static>>>,
}

type SharedRoots = Arc<RwLock<Arc<Roots>>>;

/// The trust in the control plane's API server. Clones share the roots.
#[derive(Debug, Clone)]
pub struct ControlPlaneTls {
    roots: SharedRoots,
    verifier: Arc<ControlPlaneVerifier>,
    provider: Arc<CryptoProvider>,
}

/// Parses PEM trust roots into webpki anchors; at least one.
pub fn parse_anchors(roots_pem: &str) -> Result<Vec<TrustAnchor<'static>>, String> {
    let roots = CertificateDer::pem_slice_iter(roots_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("trust roots: {e}"))?;
    if roots.is_empty() {
        return Err("no trust root certificate".into());
    }
    roots
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).map(|a| a.to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("trust root unusable: {e}"))
}

impl ControlPlaneTls {
    /// Trusts `roots_pem`; the server must present the control plane's identity in
    /// `trust_domain` (`spiffe://<td>/ns/mesh-system/sa/meshctl`).
    pub fn new(roots_pem: &str, trust_domain: &str) -> Result<Self, String> {
        let anchors = Arc::new(parse_anchors(roots_pem)?);
        let roots = Arc::new(RwLock::new(Arc::new(Roots {
            pem: roots_pem.to_owned(),
            anchors,
        })));
        let expected = control_plane_id(trust_domain).map_err(|e| e.to_string())?;
        Ok(ControlPlaneTls {
            verifier: Arc::new(ControlPlaneVerifier {
                roots: roots.clone(),
                expected,
            }),
            roots,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        })
    }

    fn current(&self) -> Arc<Roots> {
        self.roots.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The mesh trust roots (also what issued certificates must chain to).
    pub fn anchors(&self) -> Arc<Vec<TrustAnchor<'static>>> {
        self.current().anchors.clone()
    }

    /// The mesh trust roots, PEM.
    pub fn roots_pem(&self) -> String {
        self.current().pem.clone()
    }

    /// Trusts `roots_pem` from now on (every clone); `Ok(false)` when they are the current
    /// ones already.
    pub fn set_roots(&self, roots_pem: &str) -> Result<bool, String> {
        if self.current().pem == roots_pem {
            return Ok(false);
        }
        let anchors = Arc::new(parse_anchors(roots_pem)?);
        *self.roots.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Roots {
            pem: roots_pem.to_owned(),
            anchors,
        });
        Ok(true)
    }

    /// The client config: HTTP/1.1, the control plane verified, `creds` presented if given.
    fn client_config(&self, creds: Option<&Credentials>) -> Result<ClientConfig, String> {
        let builder = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(self.verifier.clone());
        let mut config = match creds {
            Some(c) => {
                let chain = CertificateDer::pem_slice_iter(c.cert_chain_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("certificate: {e}"))?;
                let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes())
                    .map_err(|e| format!("key: {e}"))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("credentials: {e}"))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// Opens TLS to `endpoint` (`host:port`), presenting `creds` if given.
    pub async fn connect(
        &self,
        endpoint: &str,
        creds: Option<&Credentials>,
    ) -> Result<TlsStream<TcpStream>, CpConnectError> {
        let connector = TlsConnector::from(Arc::new(
            self.client_config(creds).map_err(CpConnectError::Config)?,
        ));
        let name = server_name(endpoint).map_err(CpConnectError::Config)?;
        let tcp = connect_tcp(endpoint).await?;
        let _ = tcp.set_nodelay(true);
        Ok(connector.connect(name, tcp).await?)
    }
}

/// TCP to `host:port`, each resolved address in turn, through [`crate::capture::connect`]
/// (so a captured pod's proxy reaches the control plane directly).
async fn connect_tcp(endpoint: &str) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host(endpoint).await? {
        match crate::capture::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{endpoint}: no address"),
        )
    }))
}

fn server_name(endpoint: &str) -> Result<ServerName<'static>, String> {
    let host = endpoint
        .rsplit_once(':')
        .map_or(endpoint, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|e| format!("endpoint host {host:?}: {e}"))
}

/// Verifies the API server: chains to the mesh roots and names the control plane's SPIFFE ID.
/// The host name used to connect is not checked, so meshctl is reachable under any address.
#[derive(Debug)]
struct ControlPlaneVerifier {
    roots: SharedRoots,
    expected: SpiffeId,
}

impl ServerCertVerifier for ControlPlaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ee = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| rustls::Error::General(format!("server certificate: {e:?}")))?;
        let roots = self.roots.read().unwrap_or_else(|p| p.into_inner()).clone();
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &roots.anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| rustls::Error::General(format!("server certificate does not chain: {e:?}")))?;
        let (_, x509) = X509Certificate::from_der(end_entity)
            .map_err(|e| rustls::Error::General(format!("server certificate: {e}")))?;
        let expected = self.expected.to_string();
        let names_us = x509
            .subject_alternative_name()
            .ok()
            .flatten()
            .is_some_and(|san| {
                san.value
                    .general_names
                    .iter()
                    .any(|n| matches!(n, GeneralName::URI(u) if *u == expected))
            });
        if !names_us {
            return Err(rustls::Error::General(format!(
                "server certificate does not name {expected}"
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    crate::tls::signature_checks!();
}
