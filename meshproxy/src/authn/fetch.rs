//! One fetch of a rule's key set: the `jwksUri`, or OpenID discovery (the issuer's
//! `/.well-known/openid-configuration`, then its `jwks_uri`), over `http://` or `https://`,
//! within the rule's `timeout` and [`MAX_BODY_BYTES`] per document.
//!
//! Connections are the proxy's own ([`crate::capture::connect`]: marked, so capture never
//! sends them back to the proxy and `REGISTRY_ONLY` does not apply to them). HTTPS verifies the
//! server's certificate and name against [`crate::tls::jwks_client_config`]'s roots.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use meshapi::authn::{KeySet, KeySource, discovered_jwks_uri};
use rustls::pki_types::ServerName;

use crate::tls::Identity;

/// The largest JWKS or discovery document read.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Why a fetch failed (logged; the rule keeps its last good keys).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: {reason}")]
    Get { url: String, reason: String },
    #[error("{url}: {error}")]
    Keys {
        url: String,
        error: meshapi::authn::JwksError,
    },
    #[error("{0}")]
    Discovery(String),
    #[error("no answer in {0:?} (the rule's timeout)")]
    Timeout(std::time::Duration),
}

/// The key set `source` names now.
pub async fn fetch(source: &KeySource, identity: &Identity) -> Result<KeySet, FetchError> {
    let timeout = source.timeout();
    let work = async {
        let jwks_url = match source {
            KeySource::Uri { uri, .. } => uri.clone(),
            KeySource::Discovery { .. } => {
                let url = source.first_url();
                let doc = get(&url, identity).await?;
                discovered_jwks_uri(&doc)
                    .map_err(|e| FetchError::Discovery(format!("{url}: {e}")))?
            }
        };
        let doc = get(&jwks_url, identity).await?;
        KeySet::parse(&doc).map_err(|error| FetchError::Keys {
            url: jwks_url,
            error,
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| FetchError::Timeout(timeout))?
}

/// One `GET` of `url`, answered 2xx with a UTF-8 body.
async fn get(url: &str, identity: &Identity) -> Result<String, FetchError> {
    let fail = |reason: String| FetchError::Get {
        url: url.to_string(),
        reason,
    };
    let uri: http::Uri = url.parse().map_err(|e| fail(format!("not a URL: {e}")))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(fail("not an http:// or https:// URL".into())),
    };
    let host = uri
        .host()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        .ok_or_else(|| fail("no host".into()))?;
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = connect(host, port).await.map_err(fail)?;
    let authority = uri.authority().map_or(host, |a| a.as_str());
    let req = http::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| fail(e.to_string()))?;
    if !https {
        return send(TokioIo::new(tcp), req).await.map_err(fail);
    }
    let cfg = crate::tls::jwks_client_config(identity).map_err(|e| fail(e.to_string()))?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| fail(format!("{host:?} is not a DNS name or IP address")))?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| fail(format!("TLS: {e}")))?;
    send(TokioIo::new(tls), req).await.map_err(fail)
}

/// A connection to the first address of `host` that answers.
async fn connect(host: &str, port: u16) -> Result<tokio::net::TcpStream, String> {
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?;
    let mut last = format!("{host} has no address");
    for a in addrs {
        match crate::capture::connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("connect {a}: {e}"),
        }
    }
    Err(last)
}

/// Sends `req` on a new HTTP/1.1 connection over `io` and reads the body.
async fn send<I>(io: I, req: http::Request<Empty<Bytes>>) -> Result<String, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = http1::handshake(io)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let _stop = Stop(tokio::spawn(conn).abort_handle());
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| "body is not UTF-8".to_string())
}

/// Stops the connection task when the fetch ends, timed out included.
struct Stop(tokio::task::AbortHandle);

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
