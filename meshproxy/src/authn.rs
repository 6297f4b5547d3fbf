//! The request-authentication step's data-path half: the JWKS fetchers of the config's
//! `jwksUri`s ([`JwksStore`]), the per-config [`Authenticator`], and per inbound HTTP request
//! the token check ([`authenticate`]) and the header changes an authenticated request gets
//! before the application ([`rewrite_headers`]).
//!
//! Fetch failures never open the door: a rule whose keys were never fetched verifies no token
//! (401 for a request that brings one); after a failed refresh the last good keys stay.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use meshapi::authn::{
    Authenticated, Authenticator, KeySet, Location, RemoteKeys, RequestAuthentication, TokenSources,
};
use meshapi::proxy::ProxyConfig;

use crate::reply::ProxyError;

/// How long one JWKS fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// The first retry delay after a failed fetch (doubling up to the refresh interval).
const FIRST_RETRY: Duration = Duration::from_millis(250);

/// One running fetcher.
struct Fetcher {
    keys: Arc<RemoteKeys>,
    refresh: Duration,
    task: tokio::task::AbortHandle,
}

/// The JWKS fetchers of the config in force, one per `jwksUri`, kept across config applies
/// while the URI stays.
#[derive(Default)]
pub struct JwksStore {
    fetchers: Mutex<HashMap<String, Fetcher>>,
}

impl std::fmt::Debug for JwksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.fetchers.lock().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("JwksStore")
            .field("uris", &m.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Drop for JwksStore {
    fn drop(&mut self) {
        let m = self.fetchers.get_mut().unwrap_or_else(|p| p.into_inner());
        for f in m.values() {
            f.task.abort();
        }
    }
}

impl JwksStore {
    /// The authenticator of `cfg`, `None` without rules. Starts a fetcher for each new
    /// `jwksUri` and stops those `cfg` no longer names. Needs a Tokio runtime.
    pub fn authenticator(&self, cfg: &ProxyConfig) -> Option<Arc<Authenticator>> {
        let section = cfg.request_authentication.as_ref();
        let uris: Vec<&str> = section
            .map(RequestAuthentication::jwks_uris)
            .unwrap_or_default();
        let refresh = section.map_or(meshapi::authn::DEFAULT_JWKS_REFRESH, |s| s.jwks_refresh.0);
        let mut m = self.fetchers.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|uri, f| {
            let keep = uris.contains(&uri.as_str());
            if !keep {
                f.task.abort();
                tracing::info!(uri = %uri, "jwks fetcher stopped");
            }
            keep
        });
        let section = section.filter(|s| !s.rules.is_empty())?;
        let auth = Authenticator::new(section, |uri| {
            if let Some(f) = m.get_mut(uri) {
                if f.refresh != refresh {
                    f.task.abort();
                    f.task = spawn_fetcher(uri, f.keys.clone(), refresh);
                    f.refresh = refresh;
                }
                return f.keys.clone();
            }
            let keys = Arc::new(RemoteKeys::default());
            let task = spawn_fetcher(uri, keys.clone(), refresh);
            m.insert(
                uri.to_string(),
                Fetcher {
                    keys: keys.clone(),
                    refresh,
                    task,
                },
            );
            keys
        });
        Some(Arc::new(auth))
    }
}

fn spawn_fetcher(uri: &str, keys: Arc<RemoteKeys>, refresh: Duration) -> tokio::task::AbortHandle {
    let uri = uri.to_string();
    tokio::spawn(async move {
        let client: Client<HttpConnector, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let mut retry = FIRST_RETRY;
        loop {
            match fetch(&client, &uri).await {
                Ok(set) => {
                    tracing::info!(uri = %uri, keys = set.len(), kids = ?set.kids(), "jwks fetched");
                    keys.set(set);
                    retry = FIRST_RETRY;
                    tokio::time::sleep(refresh).await;
                }
                Err(e) => {
                    let kept = keys.get().is_some();
                    tracing::warn!(uri = %uri, error = %e, kept_last_keys = kept,
                        "jwks fetch failed");
                    tokio::time::sleep(retry.min(refresh)).await;
                    retry = (retry * 2).min(refresh);
                }
            }
        }
    })
    .abort_handle()
}

/// One fetch of a key set over HTTP, within [`FETCH_TIMEOUT`] and [`MAX_JWKS_BYTES`].
async fn fetch(client: &Client<HttpConnector, Empty<Bytes>>, uri: &str) -> Result<KeySet, String> {
    if uri.starts_with("https://") {
        return Err("https jwksUri is not supported by meshproxy yet".into());
    }
    let target: http::Uri = uri.parse().map_err(|e| format!("bad uri: {e}"))?;
    let get = async {
        let resp = client
            .get(target)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        let text = std::str::from_utf8(&body).map_err(|_| "body is not UTF-8".to_string())?;
        KeySet::parse(text).map_err(|e| e.to_string())
    };
    tokio::time::timeout(FETCH_TIMEOUT, get)
        .await
        .map_err(|_| format!("no answer in {FETCH_TIMEOUT:?}"))?
}

/// The token check of one request: `Ok(None)` without a token, the verified token, or the
/// 401 for a token no rule verifies.
pub fn authenticate<'a>(
    auth: &'a Authenticator,
    uri: &http::Uri,
    headers: &HeaderMap,
) -> Result<Option<Authenticated<'a>>, ProxyError> {
    let lookup = crate::authz::Headers::new(headers);
    let sources = TokenSources {
        headers: &lookup,
        query: uri.query(),
    };
    auth.authenticate(&sources).map_err(|reason| {
        let host = uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .unwrap_or("");
        tracing::info!(target: "meshproxy::authn", %reason, host, path = uri.path(),
            "request authentication failed");
        ProxyError::Unauthenticated {
            reason,
            realm: format!("http://{host}{}", uri.path()),
        }
    })
}

/// The request headers the application gets: the headers a rule outputs are never taken from
/// the client; an authenticated request gets them from its token, and loses its token header
/// unless the rule forwards it.
pub fn rewrite_headers(
    auth: &Authenticator,
    done: Option<&Authenticated<'_>>,
    headers: &mut HeaderMap,
) {
    for r in auth.rules() {
        if let Some(h) = &r.output_payload_to_header {
            headers.remove(h.as_str());
        }
        for c in &r.output_claim_to_headers {
            headers.remove(c.header.as_str());
        }
    }
    let Some(a) = done else { return };
    if let (false, Location::Header(h)) = (a.rule.forward_original_token, a.location) {
        headers.remove(h);
    }
    for (name, value) in a.output_headers() {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            headers.insert(n, v);
        }
    }
}
