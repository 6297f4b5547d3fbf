//! HTTP plumbing shared by inbound and outbound: the body type, framing checks against
//! request smuggling, hop-by-hop and internal header stripping, the server builder with its
//! limits and timer, and splicing of upgraded connections.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use meshapi::proxy::Limits;

use crate::reply::ProxyError;

/// Error of a body the proxy sends.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body of every request and response the proxy sends.
pub type Body = BoxBody<Bytes, BoxError>;

/// A received body as one the proxy sends.
pub fn boxed(b: hyper::body::Incoming) -> Body {
    b.map_err(BoxError::from).boxed()
}

/// `x-forwarded-client-cert`.
pub const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
/// The reserved headers ([`meshapi::headers::RESERVED`]) as header names.
const RESERVED: [HeaderName; 3] = [
    HeaderName::from_static(meshapi::headers::RESPONSE_FLAGS),
    HeaderName::from_static(meshapi::headers::FRAMING_ERROR),
    HeaderName::from_static(meshapi::headers::PEER),
];

/// A body from bytes.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|n| match n {}).boxed()
}

/// Whether a request asks for an HTTP/1.1 protocol upgrade (WebSocket and friends).
pub fn is_upgrade(req: &http::Request<hyper::body::Incoming>) -> bool {
    req.version() == http::Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_tokens(req.headers())
            .iter()
            .any(|t| t == "upgrade")
}

/// Whether a request opens a tunnel once answered: an HTTP/1.1 upgrade, or `CONNECT`.
pub fn is_tunnel(req: &http::Request<hyper::body::Incoming>) -> bool {
    req.method() == http::Method::CONNECT || is_upgrade(req)
}

/// Whether the answer to a tunnel request opened the tunnel: `101` to an upgrade, any 2xx to
/// `CONNECT` (RFC 9110 section 9.3.6).
pub fn tunnel_opened(method: &http::Method, status: http::StatusCode) -> bool {
    status == http::StatusCode::SWITCHING_PROTOCOLS
        || (method == http::Method::CONNECT && status.is_success())
}

/// Sends a tunnel request (upgrade or `CONNECT`) on its own HTTP/1.1 connection over `io`; the
/// caller splices the two sides when [`tunnel_opened`].
pub async fn send_tunnel<S>(
    io: S,
    req: http::Request<Body>,
    service: &str,
) -> Result<http::Response<hyper::body::Incoming>, ProxyError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| ProxyError::UpstreamConnect {
            service: service.to_string(),
            reason: e.to_string(),
        })?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    sender
        .send_request(req)
        .await
        .map_err(|e| ProxyError::UpstreamReset {
            service: service.to_string(),
            reason: e.to_string(),
        })
}

fn connection_tokens(h: &HeaderMap) -> Vec<String> {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Defense in depth against ambiguous framing: refuses a request whose parsed headers still
/// hold both Transfer-Encoding and Content-Length, or more than one Content-Length. (hyper's
/// HTTP/1 parser already refuses differing lengths, obs-fold, non-chunked TE and bad chunk
/// sizes, and for CL+TE drops the Content-Length and closes the connection after the
/// response, per RFC 9112 section 6.3.) An HTTP/1.1 request must carry exactly one `Host`
/// (RFC 9112 section 3.2: a server responds 400 to none or several); more than one `Host` is
/// refused in any version.
pub fn check_framing(version: http::Version, h: &HeaderMap) -> Result<(), ProxyError> {
    if let Some(v) = h.get(crate::framing::MARKER) {
        return Err(ProxyError::BadRequest(
            if v.as_bytes().starts_with(b"both") {
                "both Transfer-Encoding and Content-Length"
            } else {
                "more than one Content-Length"
            },
        ));
    }
    if h.contains_key(header::TRANSFER_ENCODING) && h.contains_key(header::CONTENT_LENGTH) {
        return Err(ProxyError::BadRequest(
            "both Transfer-Encoding and Content-Length",
        ));
    }
    if h.get_all(header::CONTENT_LENGTH).iter().count() > 1 {
        return Err(ProxyError::BadRequest("more than one Content-Length"));
    }
    match h.get_all(header::HOST).iter().count() {
        0 if version == http::Version::HTTP_11 => {
            Err(ProxyError::BadRequest("HTTP/1.1 request without Host"))
        }
        0 | 1 => Ok(()),
        _ => Err(ProxyError::BadRequest("more than one Host")),
    }
}

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// Removes hop-by-hop headers and every header named in `Connection`. `te` survives only as
/// `te: trailers` (gRPC needs it). With `keep_upgrade` the `Upgrade` header stays and
/// `Connection: upgrade` is set again, for a request or 101 being passed through.
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    for t in connection_tokens(h) {
        if let Ok(name) = HeaderName::from_bytes(t.as_bytes())
            && !(keep_upgrade && name == header::UPGRADE)
        {
            h.remove(name);
        }
    }
    let upgrade = h.get(header::UPGRADE).cloned();
    for name in HOP_BY_HOP {
        h.remove(name);
    }
    let te_trailers = h.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    h.remove(header::TE);
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if keep_upgrade && let Some(u) = upgrade {
        h.insert(header::UPGRADE, u);
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Removes from a request the headers no application or peer may set: the identity header
/// (`x-forwarded-client-cert`, set by the inbound proxy itself) and the reserved ones.
pub fn strip_internal(h: &mut HeaderMap) {
    h.remove(XFCC);
    strip_reserved(h);
}

/// Removes the reserved headers ([`meshapi::headers`]): from a response of an application
/// or of anything but a verified peer proxy, so only a proxy can flag a response.
pub fn strip_reserved(h: &mut HeaderMap) {
    for name in &RESERVED {
        h.remove(name);
    }
}

/// An HTTP/1.1 + HTTP/2 server builder with the configured limits. The timer is what makes
/// the header-read timeout work at all.
pub fn server_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.0)
        .max_buf_size(limits.max_header_bytes.max(8192));
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(Some(64))
        .keep_alive_interval(Some(Duration::from_secs(60)));
    b
}

/// Copies bytes both ways between the two sides of an upgraded connection.
pub async fn splice_upgrade(down: hyper::upgrade::OnUpgrade, up: hyper::upgrade::OnUpgrade) {
    let (Ok(down), Ok(up)) = (down.await, up.await) else {
        tracing::debug!("upgrade did not complete");
        return;
    };
    let (mut a, mut b) = (TokioIo::new(down), TokioIo::new(up));
    if let Err(e) = tokio::io::copy_bidirectional(&mut a, &mut b).await {
        tracing::debug!(error = %e, "upgraded stream ended");
    }
}

/// A short reason for an I/O error, as Envoy prints it (`connection refused`).
pub fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::TimedOut => "connection timeout".into(),
        std::io::ErrorKind::ConnectionReset => "connection reset".into(),
        _ => e.to_string(),
    }
}

/// The innermost I/O error of an error chain, if any.
pub fn find_io<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

/// A request head prepared once and sent per try: [`RequestHead::request`] copies it for a
/// try that may be followed by another, [`RequestHead::into_request`] moves it into the last.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: http::Method,
    /// The client's HTTP version: an HTTP/2 request goes upstream as HTTP/2 whatever the port.
    pub version: http::Version,
    pub uri: http::Uri,
    pub headers: http::HeaderMap,
}

impl RequestHead {
    /// A request with a copy of this head.
    pub fn request(&self, body: Body) -> http::Request<Body> {
        self.clone().into_request(body)
    }

    /// A request with this head.
    pub fn into_request(self, body: Body) -> http::Request<Body> {
        let mut req = http::Request::new(body);
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers;
        req
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("gzip, trailers"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h[header::TE], "trailers");
        assert!(h.contains_key("x-keep"));
        let mut h = HeaderMap::new();
        h.insert(XFCC, HeaderValue::from_static("By=evil"));
        h.insert("x-meshctl-response-flags", HeaderValue::from_static("UF"));
        h.insert("x-meshctl-framing-error", HeaderValue::from_static("both"));
        h.insert("x-meshctl-peer", HeaderValue::from_static("workload=admin"));
        h.insert("x-mesh-anything", HeaderValue::from_static("kept"));
        strip_internal(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-mesh-anything"], "kept");
    }

    #[test]
    fn framing_checks() {
        let v11 = http::Version::HTTP_11;
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("b"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        assert!(check_framing(v11, &h).is_ok());
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        assert!(check_framing(v11, &h).is_err());
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("b"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert!(check_framing(v11, &h).is_err());
        // Host: exactly one in HTTP/1.1; none is fine in HTTP/1.0 and HTTP/2.
        let mut h = HeaderMap::new();
        assert!(check_framing(v11, &h).is_err());
        assert!(check_framing(http::Version::HTTP_10, &h).is_ok());
        assert!(check_framing(http::Version::HTTP_2, &h).is_ok());
        h.insert(header::HOST, HeaderValue::from_static("a"));
        h.append(header::HOST, HeaderValue::from_static("a"));
        assert!(check_framing(v11, &h).is_err());
        assert!(check_framing(http::Version::HTTP_2, &h).is_err());
    }
}
