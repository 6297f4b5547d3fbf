//! The proxy side of config push: subscribe to the control plane, apply what it sends, say
//! ACK or NACK (like xDS).
//!
//! The client long-polls `GET /v1/config` on the control plane's mTLS API (port 15012) with
//! the workload's certificate, for its `(workload, instance)`. A received config is accepted
//! only if it parses, passes [`ProxyConfig::validate`] and names this proxy's identity; then
//! it is published on a `tokio::sync::watch` channel (one swap) and ACKed. Otherwise it is
//! NACKed with the reason and the previous config stays. When the control plane is down the
//! last good config keeps serving and the client reconnects with exponential backoff and
//! jitter; after a control-plane restart (a new epoch) it receives the full config again and
//! only publishes it if the content differs. Once the proxy serves ([`ConfigClient::run`]),
//! every poll carries the proxy's own start epoch: its readiness report, which the control
//! plane passes to the proxy's clients so they take it back from outlier ejection.
//!
//! ```ignore
//! let client = ConfigClient::new(settings, &roots_pem)?;
//! let (first, mut client) = client.first(&creds_rx).await?;
//! let (tx, rx) = tokio::sync::watch::channel(first);
//! tokio::spawn(client.run(creds_rx, tx, shutdown_rx));
//! ```

use std::sync::Arc;
use std::time::Duration;

use ::http::{Method, Request, StatusCode, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use meshapi::ca_api::{ApiErrorBody, SpiffeId};
use meshapi::proxy::ProxyConfig;
use meshapi::wire::{ACK_PATH, AckRequest, CONFIG_PATH, ConfigResponse, PROXY_EPOCH_PARAM};
use rand::Rng;
use tokio::sync::watch;

use crate::ca_client::Credentials;
use crate::cp_tls::{ControlPlaneTls, CpConnectError};

/// Largest config answer accepted.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Client settings. `ConfigClientSettings::new` gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigClientSettings {
    /// Control plane API address, `host:port`. Required.
    pub endpoint: String,
    /// Compose service name of this proxy. Required.
    pub workload: String,
    /// Replica index. Default 0.
    pub instance: u32,
    /// How long the server may hold a poll. Default 30 s.
    pub poll_wait: Duration,
    /// Connect + TLS timeout. Default 5 s.
    pub connect_timeout: Duration,
    /// First reconnect delay. Default 100 ms.
    pub backoff_initial: Duration,
    /// Largest reconnect delay. Default 10 s.
    pub backoff_max: Duration,
    /// This proxy's start epoch, reported on every poll once it serves
    /// ([`meshapi::wire::PROXY_EPOCH_PARAM`]). Default: random, drawn by `new` (so at each
    /// proxy start).
    pub proxy_epoch: u64,
}

impl ConfigClientSettings {
    /// Settings with the defaults.
    pub fn new(endpoint: impl Into<String>, workload: impl Into<String>, instance: u32) -> Self {
        ConfigClientSettings {
            endpoint: endpoint.into(),
            workload: workload.into(),
            instance,
            poll_wait: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            proxy_epoch: rand::random::<u64>() >> 11,
        }
    }

    /// The delay before reconnect attempt `attempt` (0-based): exponential, capped, with
    /// jitter between 50 % and 100 % so proxies do not reconnect in lockstep.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .backoff_initial
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.backoff_max);
        base.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

/// Why a poll failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigClientError {
    #[error("config client setup: {0}")]
    Config(String),
    #[error("cannot reach the control plane at {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: std::io::Error,
    },
    #[error("HTTP to the control plane failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("control plane refused ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("malformed answer: {0}")]
    BadResponse(String),
    #[error("shutting down")]
    Shutdown,
}

/// A received answer and what the client did with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied (published and ACKed).
    Applied(u64),
    /// Same content as the config in force (after a resync): ACKed, not republished.
    Unchanged(u64),
    /// Refused (NACKed) with the reason.
    Refused(u64, String),
}

/// The config subscription of one proxy.
#[derive(Debug)]
pub struct ConfigClient {
    settings: ConfigClientSettings,
    tls: ControlPlaneTls,
    epoch: u64,
    version: u64,
    conn: Option<SendRequest<Full<Bytes>>>,
    conn_for: Option<String>,
    /// The last outcome (tests and logs).
    outcomes: watch::Sender<Option<Outcome>>,
    /// Whether the proxy serves (its application answers too); `None`: as soon as `run`
    /// polls. Polls carry the proxy's epoch only then.
    serving: Option<watch::Receiver<bool>>,
}

impl ConfigClient {
    /// A client trusting `roots_pem` for the control plane, which must present
    /// `spiffe://<td>/ns/mesh-system/sa/meshctl` (`td` from `trust_domain`).
    pub fn new(
        settings: ConfigClientSettings,
        roots_pem: &str,
        trust_domain: &str,
    ) -> Result<Self, ConfigClientError> {
        let tls =
            ControlPlaneTls::new(roots_pem, trust_domain).map_err(ConfigClientError::Config)?;
        Ok(Self::with_tls(settings, tls))
    }

    /// A client verifying the control plane with `tls` (shared with the CA client, so both
    /// follow the CA's trust bundle together).
    pub fn with_tls(settings: ConfigClientSettings, tls: ControlPlaneTls) -> Self {
        ConfigClient {
            settings,
            tls,
            epoch: 0,
            version: 0,
            conn: None,
            conn_for: None,
            outcomes: watch::Sender::new(None),
            serving: None,
        }
    }

    /// Reports the proxy's epoch (readiness) only once `serving` is true, instead of from
    /// the first poll of [`ConfigClient::run`]. A change cuts the poll in progress short so the
    /// report goes out at once.
    pub fn report_ready_when(mut self, serving: watch::Receiver<bool>) -> Self {
        self.serving = Some(serving);
        self
    }

    /// A receiver of each outcome (ACK, unchanged, NACK).
    pub fn outcomes(&self) -> watch::Receiver<Option<Outcome>> {
        self.outcomes.subscribe()
    }

    /// Retries until the first acceptable config arrives (NACKing bad ones); gives up on bad
    /// settings and on a 403 (this certificate's identity is not this proxy's).
    pub async fn first(
        mut self,
        creds: &watch::Receiver<Credentials>,
    ) -> Result<(Arc<ProxyConfig>, ConfigClient), ConfigClientError> {
        let mut attempt = 0;
        loop {
            match self.poll_once(creds, None, false).await {
                Ok(Some((Outcome::Applied(_), Some(cfg)))) => return Ok((cfg, self)),
                Ok(_) => attempt = 0,
                // Bad settings, or the control plane says this identity may not have this
                // proxy's config: retrying cannot help.
                Err(
                    e @ (ConfigClientError::Config(_)
                    | ConfigClientError::Refused { status: 403, .. }),
                ) => return Err(e),
                Err(e) => {
                    let delay = self.settings.backoff(attempt);
                    tracing::warn!(error = %e, retry_ms = delay.as_millis() as u64, "config subscription failed");
                    attempt = attempt.saturating_add(1);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Follows the control plane until `shutdown` turns true, publishing accepted configs on
    /// `tx`. `tx` holds the config in force (used to detect unchanged resyncs and NACK
    /// identity mismatches).
    pub async fn run(
        mut self,
        creds: watch::Receiver<Credentials>,
        tx: watch::Sender<Arc<ProxyConfig>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut attempt: u32 = 0;
        let mut serving = self.serving.clone();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let ready = serving.as_mut().is_none_or(|rx| *rx.borrow_and_update());
            let result = tokio::select! {
                r = self.poll_once(&creds, Some(&tx), ready) => r,
                _ = shutdown.changed() => return,
                _ = turned_ready(serving.as_mut()), if !ready => {
                    // The poll was cut mid-request: its connection is unusable.
                    self.conn = None;
                    continue;
                }
            };
            match result {
                Ok(_) => attempt = 0,
                Err(e) => {
                    self.conn = None;
                    let delay = self.settings.backoff(attempt);
                    tracing::warn!(
                        proxy = %self.settings.workload,
                        instance = self.settings.instance,
                        error = %e,
                        retry_ms = delay.as_millis() as u64,
                        "config subscription lost; keeping the last good config"
                    );
                    attempt = attempt.saturating_add(1);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
    }

    /// The kept connection, or a new one (also after a certificate rotation).
    async fn sender(
        &mut self,
        creds: &watch::Receiver<Credentials>,
    ) -> Result<SendRequest<Full<Bytes>>, ConfigClientError> {
        let c = creds.borrow().clone();
        if let Some(s) = self.conn.take()
            && self.conn_for.as_deref() == Some(c.cert_chain_pem.as_str())
            && !s.is_closed()
        {
            return Ok(s);
        }
        let endpoint = self.settings.endpoint.clone();
        let connect_err = |source: std::io::Error| ConfigClientError::Connect {
            endpoint: endpoint.clone(),
            source,
        };
        let timeout = self.settings.connect_timeout;
        let tls = match tokio::time::timeout(timeout, self.tls.connect(&endpoint, Some(&c))).await {
            Err(_) => return Err(connect_err(std::io::ErrorKind::TimedOut.into())),
            Ok(Err(CpConnectError::Config(m))) => return Err(ConfigClientError::Config(m)),
            Ok(Err(CpConnectError::Io(e))) => return Err(connect_err(e)),
            Ok(Ok(tls)) => tls,
        };
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "control plane connection ended");
            }
        });
        self.conn_for = Some(c.cert_chain_pem);
        Ok(sender)
    }

    async fn send(
        &mut self,
        creds: &watch::Receiver<Credentials>,
        req: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), ConfigClientError> {
        let mut sender = self.sender(creds).await?;
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| ConfigClientError::BadResponse(format!("reading body: {e}")))?
            .to_bytes();
        self.conn = Some(sender);
        Ok((status, body))
    }

    /// One poll: `None` when nothing new came before the server's wait ended. `ready`: the
    /// proxy serves, the poll says so with its epoch.
    async fn poll_once(
        &mut self,
        creds: &watch::Receiver<Credentials>,
        current: Option<&watch::Sender<Arc<ProxyConfig>>>,
        ready: bool,
    ) -> Result<Option<(Outcome, Option<Arc<ProxyConfig>>)>, ConfigClientError> {
        let s = &self.settings;
        let mut uri = format!(
            "{CONFIG_PATH}?workload={}&instance={}&epoch={}&version={}&waitMs={}",
            s.workload,
            s.instance,
            self.epoch,
            self.version,
            s.poll_wait.as_millis()
        );
        if ready {
            uri.push_str(&format!("&{PROXY_EPOCH_PARAM}={}", s.proxy_epoch));
        }
        let req = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .header(header::HOST, s.endpoint.as_str())
            .body(Full::new(Bytes::new()))
            .map_err(|e| ConfigClientError::Config(e.to_string()))?;
        let (status, body) = self.send(creds, req).await?;
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if status != StatusCode::OK {
            return Err(refused(status, &body));
        }
        let answer: ConfigResponse = serde_json::from_slice(&body)
            .map_err(|e| ConfigClientError::BadResponse(e.to_string()))?;
        self.epoch = answer.epoch;
        self.version = answer.version;
        let identity = creds.borrow().identity.clone();
        let checked = check(answer.config, &identity);
        let (outcome, publish) = match checked {
            Ok(cfg) => {
                let same = current.is_some_and(|tx| tx.borrow().same_content(&cfg));
                if same {
                    (Outcome::Unchanged(answer.version), None)
                } else {
                    (Outcome::Applied(answer.version), Some(Arc::new(cfg)))
                }
            }
            Err(why) => (Outcome::Refused(answer.version, why), None),
        };
        if let (Some(tx), Some(cfg)) = (current, &publish) {
            tx.send_replace(cfg.clone());
        }
        // Recorded before the ACK is sent: once the control plane sees it, this is visible.
        self.outcomes.send_replace(Some(outcome.clone()));
        let (accepted, error) = match &outcome {
            Outcome::Refused(_, why) => {
                tracing::warn!(version = answer.version, error = %why, "config refused (NACK)");
                (false, Some(why.clone()))
            }
            _ => {
                tracing::info!(version = answer.version, "config applied (ACK)");
                (true, None)
            }
        };
        let ack = AckRequest {
            workload: self.settings.workload.clone(),
            instance: self.settings.instance,
            epoch: answer.epoch,
            version: answer.version,
            accepted,
            error,
        };
        let json =
            serde_json::to_vec(&ack).map_err(|e| ConfigClientError::Config(e.to_string()))?;
        let req = Request::builder()
            .method(Method::POST)
            .uri(ACK_PATH)
            .header(header::HOST, self.settings.endpoint.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(json)))
            .map_err(|e| ConfigClientError::Config(e.to_string()))?;
        let (status, body) = self.send(creds, req).await?;
        if !status.is_success() {
            return Err(refused(status, &body));
        }
        Ok(Some((outcome, publish)))
    }
}

/// Resolves when `serving` turns true (never without one, or once its sender is gone).
async fn turned_ready(serving: Option<&mut watch::Receiver<bool>>) {
    match serving {
        Some(rx) => {
            if rx.wait_for(|s| *s).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

fn refused(status: StatusCode, body: &[u8]) -> ConfigClientError {
    let message = serde_json::from_slice::<ApiErrorBody>(body)
        .map(|b| b.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).chars().take(200).collect());
    ConfigClientError::Refused {
        status: status.as_u16(),
        message,
    }
}

/// Parses and validates a received config for a proxy of `identity`; the error is the NACK
/// reason.
pub fn check(raw: serde_json::Value, identity: &SpiffeId) -> Result<ProxyConfig, String> {
    let cfg: ProxyConfig = serde_json::from_value(raw).map_err(|e| format!("parse: {e}"))?;
    let errors = cfg.validate();
    if !errors.is_empty() {
        return Err(errors
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect::<Vec<_>>()
            .join("; "));
    }
    if cfg.identity.spiffe_id != *identity {
        return Err(format!(
            "config is for {}, this proxy is {identity}",
            cfg.identity.spiffe_id
        ));
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let s = ConfigClientSettings::new("127.0.0.1:1", "w", 0);
        for attempt in 0..30 {
            let d = s.backoff(attempt);
            assert!(d <= s.backoff_max, "{d:?}");
            assert!(d >= s.backoff_initial / 2, "{d:?}");
        }
        assert!(s.backoff(20) >= s.backoff_max / 2);
    }
}
