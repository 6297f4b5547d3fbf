//! The request-authentication step's data-path half: the JWKS fetchers of the config's
//! `jwksUri`s and OpenID-discovered issuers ([`JwksStore`], over `http://` or `https://`), the per-config [`Authenticator`], and per inbound HTTP request
//! the token check ([`authenticate`]) and the header changes an authenticated request gets
//! before the application ([`rewrite_headers`]).
//!
//! Fetch failures never open the door: a rule whose keys were never fetched verifies no token
//! (401 for a request that brings one); after a failed refresh the last good keys stay.

mod fetch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderMap;
use meshapi::authn::{Authenticated, Authenticator, KeySource, Location, RemoteKeys, TokenSources};
use meshapi::proxy::ProxyConfig;

use crate::reply::ProxyError;
use crate::tls::Identity;

/// The first retry delay after a failed fetch (doubling up to the refresh interval).
const FIRST_RETRY: Duration = Duration::from_millis(250);

/// One running fetcher.
struct Fetcher {
    keys: Arc<RemoteKeys>,
    refresh: Duration,
    task: tokio::task::AbortHandle,
}

/// The JWKS fetchers of the config in force, one per [`KeySource`] (a `jwksUri`, or an issuer
/// discovered by OpenID), kept across config applies while the source stays.
pub struct JwksStore {
    fetchers: Mutex<HashMap<KeySource, Fetcher>>,
    /// Whose roots (besides the public ones) an `https://` fetch trusts.
    identity: Arc<Identity>,
}

impl std::fmt::Debug for JwksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.fetchers.lock().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("JwksStore")
            .field(
                "sources",
                &m.keys().map(ToString::to_string).collect::<Vec<_>>(),
            )
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
    pub fn new(identity: Arc<Identity>) -> JwksStore {
        JwksStore {
            fetchers: Mutex::default(),
            identity,
        }
    }

    /// The authenticator of `cfg`, `None` without rules. Starts a fetcher for each new key
    /// source and stops those `cfg` no longer names. Needs a Tokio runtime.
    pub fn authenticator(&self, cfg: &ProxyConfig) -> Option<Arc<Authenticator>> {
        let section = cfg.request_authentication.as_ref();
        let sources: Vec<KeySource> = section.map(|s| s.key_sources()).unwrap_or_default();
        let refresh = section.map_or(meshapi::authn::DEFAULT_JWKS_REFRESH, |s| s.jwks_refresh.0);
        let mut m = self.fetchers.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|source, f| {
            let keep = sources.contains(source);
            if !keep {
                f.task.abort();
                tracing::info!(source = %source, "jwks fetcher stopped");
            }
            keep
        });
        let section = section.filter(|s| !s.rules.is_empty())?;
        let auth = Authenticator::new(section, |source| {
            if let Some(f) = m.get_mut(source) {
                if f.refresh != refresh {
                    f.task.abort();
                    f.task = self.spawn_fetcher(source, f.keys.clone(), refresh);
                    f.refresh = refresh;
                }
                return f.keys.clone();
            }
            let keys = Arc::new(RemoteKeys::default());
            let task = self.spawn_fetcher(source, keys.clone(), refresh);
            m.insert(
                source.clone(),
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

    fn spawn_fetcher(
        &self,
        source: &KeySource,
        keys: Arc<RemoteKeys>,
        refresh: Duration,
    ) -> tokio::task::AbortHandle {
        let source = source.clone();
        let identity = self.identity.clone();
        tokio::spawn(async move {
            let mut retry = FIRST_RETRY;
            loop {
                match fetch::fetch(&source, &identity).await {
                    Ok(set) => {
                        tracing::info!(source = %source, keys = set.len(), kids = ?set.kids(),
                            "jwks fetched");
                        keys.set(set);
                        retry = FIRST_RETRY;
                        tokio::time::sleep(refresh).await;
                    }
                    Err(e) => {
                        let kept = keys.get().is_some();
                        tracing::warn!(source = %source, error = %e, kept_last_keys = kept,
                            "jwks fetch failed");
                        tokio::time::sleep(retry.min(refresh)).await;
                        retry = (retry * 2).min(refresh);
                    }
                }
            }
        })
        .abort_handle()
    }
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
