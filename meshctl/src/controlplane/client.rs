//! The CLI's client of the running control plane: reads `.mesh/controlplane.json`, connects
//! over mTLS with the admin credentials (server verified against the mesh root and the
//! address in the state file), and calls the status and reload endpoints.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use meshapi::ca_api::ApiErrorBody;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::admin::{StateFile, read_state};

/// Largest answer accepted.
const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// Why a CLI request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    State(String),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("cannot reach the control plane at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(String),
    #[error("control plane answered {status}: {message}")]
    Refused { status: u16, message: String },
    #[error("malformed answer: {0}")]
    BadResponse(String),
    #[error(
        "the CLI's admin certificate ({path}) expired {ago}s ago and the control plane did not renew it: is it still running? (restart it with `meshctl serve` or `meshctl up`)"
    )]
    AdminExpired { path: String, ago: i64 },
}

/// A connection factory to the control plane.
#[derive(Debug, Clone)]
pub struct AdminClient {
    state: StateFile,
    tls: Arc<ClientConfig>,
    admin_not_after: Option<i64>,
}

/// How often a credentials read caught mid-renewal is retried (25 ms apart).
const RETRIES: u32 = 40;

/// Longest a CLI command waits for a control plane that its supervisor is restarting.
pub const RECONNECT_BUDGET: Duration = Duration::from_secs(20);

/// Connects to the control plane of `state_dir` and runs `call`. When it cannot be reached
/// (no state file, connection refused or reset) while its supervisor is alive, that is, the
/// control plane is being restarted after a crash (`docker::supervise`), the state file is
/// read again (new address, epoch and admin credentials) and the call retried with
/// exponential backoff (100 ms doubling to 2 s, jitter ½–1×) for up to `budget`. Without a
/// supervisor (`meshctl serve`, a foreground `up`) the first error is returned.
pub async fn call_with_backoff<T, F, Fut>(
    state_dir: &Path,
    budget: Duration,
    call: F,
) -> Result<(AdminClient, T), ClientError>
where
    F: Fn(AdminClient) -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    use rand::Rng;
    let deadline = tokio::time::Instant::now() + budget;
    let mut attempt = 0u32;
    loop {
        let result = match AdminClient::from_state_dir(state_dir) {
            Ok(client) => call(client.clone()).await.map(|t| (client, t)),
            Err(e) => Err(e),
        };
        let retriable = matches!(
            result,
            Err(ClientError::State(_) | ClientError::Connect { .. } | ClientError::Http(_))
        );
        if !retriable
            || tokio::time::Instant::now() >= deadline
            || crate::docker::supervise::pid(state_dir).is_none()
        {
            return result;
        }
        let base = Duration::from_millis(100)
            .saturating_mul(2u32.saturating_pow(attempt.min(8)))
            .min(Duration::from_secs(2));
        attempt += 1;
        let delay = base.mul_f64(rand::rng().random_range(0.5..=1.0));
        tracing::debug!(
            attempt,
            ?delay,
            "control plane unreachable; its supervisor is restarting it"
        );
        tokio::time::sleep(delay).await;
    }
}

/// notAfter of a DER certificate, Unix seconds.
pub fn not_after_of(der: &[u8]) -> Option<i64> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, x509) = X509Certificate::from_der(der).ok()?;
    Some(x509.validity().not_after.timestamp())
}

impl AdminClient {
    /// Reads the state file under `state_dir` (`<project>/.mesh`) and the admin credentials.
    /// The control plane re-issues them at half of their lifetime; a read that catches the
    /// new certificate with the old key (or the reverse) is retried.
    pub fn from_state_dir(state_dir: &Path) -> Result<AdminClient, ClientError> {
        let mut attempt = 0;
        loop {
            match Self::read(state_dir) {
                Err(ClientError::Tls(_)) if attempt < RETRIES => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(25));
                }
                other => return other,
            }
        }
    }

    fn read(state_dir: &Path) -> Result<AdminClient, ClientError> {
        let state = read_state(state_dir).map_err(ClientError::State)?;
        let tls = |e: String| ClientError::Tls(e);
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| ClientError::State(format!("{}: {e}", p.display())))
        };
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&read(&state.root_cert)?) {
            roots
                .add(c.map_err(|e| tls(e.to_string()))?)
                .map_err(|e| tls(e.to_string()))?;
        }
        let chain = CertificateDer::pem_slice_iter(&read(&state.admin_cert)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(&read(&state.admin_key)?)
            .map_err(|e| tls(e.to_string()))?;
        let admin_not_after = chain.first().and_then(|c| not_after_of(c));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // Refuses a key that does not match the certificate (caught mid-renewal).
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| tls(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(AdminClient {
            state,
            tls: Arc::new(config),
            admin_not_after,
        })
    }

    /// A client of the control plane at `state.address` with `tls` (a node's credentials, or
    /// none while joining); `state`'s credential paths are not read.
    pub fn with_tls(state: StateFile, tls: Arc<ClientConfig>) -> AdminClient {
        AdminClient {
            state,
            tls,
            admin_not_after: None,
        }
    }

    /// Expiry of the admin certificate this client presents, Unix seconds.
    pub fn admin_not_after(&self) -> Option<i64> {
        self.admin_not_after
    }

    /// The control plane's address.
    pub fn address(&self) -> &str {
        &self.state.address
    }

    /// GET `path`, JSON answer.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.request(Method::GET, path, None::<&()>).await
    }

    /// POST `body` as JSON to `path`, JSON answer.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.request(Method::POST, path, Some(body)).await
    }

    async fn request<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let now = crate::ca::unix_secs(std::time::SystemTime::now());
        if let Some(not_after) = self.admin_not_after
            && not_after <= now
        {
            return Err(ClientError::AdminExpired {
                path: self.state.admin_cert.display().to_string(),
                ago: now - not_after,
            });
        }
        let addr = self.state.address.clone();
        let connect = |source| ClientError::Connect {
            addr: addr.clone(),
            source,
        };
        let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&addr))
            .await
            .map_err(|_| connect(std::io::ErrorKind::TimedOut.into()))?
            .map_err(connect)?;
        let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| ClientError::Tls(format!("{host}: {e}")))?;
        let tls = TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(connect)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let conn = tokio::spawn(conn);
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| ClientError::Http(e.to_string()))?,
            None => Vec::new(),
        };
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, addr.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?
            .to_bytes();
        conn.abort();
        if status != StatusCode::OK {
            let message = serde_json::from_slice::<ApiErrorBody>(&body)
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(200).collect());
            return Err(ClientError::Refused {
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::BadResponse(e.to_string()))
    }
}
