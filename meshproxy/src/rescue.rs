//! Every locally generated response, in one place: proxy errors map to a status code, an
//! Envoy-style response flag (`x-mesh-response-flags`) and a one-line body naming what happened
//! and to which service. Never a bare 503.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::http::Body;

/// Header carrying the Envoy response flag of a locally generated response.
pub const FLAGS_HEADER: &str = "x-mesh-response-flags";

/// Why the proxy answered a request itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// UF: could not connect (TCP or TLS) to the chosen endpoint or the application.
    #[error("upstream connect error to {service}: {reason}")]
    UpstreamConnect { service: String, reason: String },
    /// UH: the service has no endpoint to send to.
    #[error("no healthy upstream for {service}")]
    NoHealthyUpstream { service: String },
    /// NR: nothing is configured for this destination or request.
    #[error("no route to {target}")]
    NoRoute { target: String },
    /// UT: the upstream did not answer in time.
    #[error("upstream request timeout to {service}")]
    Timeout { service: String },
    /// UR: the upstream reset or broke the stream.
    #[error("upstream reset from {service}: {reason}")]
    UpstreamReset { service: String, reason: String },
    /// UO: a circuit breaker (DestinationRule connectionPool) is at its limit.
    #[error("upstream overflow for {service}: {what} at its limit")]
    Overflow { service: String, what: String },
    /// DPE: the downstream sent a malformed or ambiguous request.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// RBAC: the authorize step refused the request. The body is Envoy's, exactly
    /// `RBAC: access denied`; `target` (port and matched policy) goes to the log only.
    #[error("RBAC: access denied")]
    Denied { target: String },
}

impl ProxyError {
    /// Status code and Envoy response flag for this error.
    pub fn status_and_flag(&self) -> (StatusCode, &'static str) {
        match self {
            ProxyError::UpstreamConnect { .. } => (StatusCode::SERVICE_UNAVAILABLE, "UF"),
            ProxyError::NoHealthyUpstream { .. } => (StatusCode::SERVICE_UNAVAILABLE, "UH"),
            ProxyError::NoRoute { .. } => (StatusCode::NOT_FOUND, "NR"),
            ProxyError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "UT"),
            ProxyError::Overflow { .. } => (StatusCode::SERVICE_UNAVAILABLE, "UO"),
            ProxyError::UpstreamReset { .. } => (StatusCode::BAD_GATEWAY, "UR"),
            ProxyError::BadRequest(_) => (StatusCode::BAD_REQUEST, "DPE"),
            ProxyError::Denied { .. } => (StatusCode::FORBIDDEN, "RBAC"),
        }
    }

    /// The response sent to the client.
    pub fn into_response(self) -> Response<Body> {
        let (status, flag) = self.status_and_flag();
        let body = match &self {
            ProxyError::Denied { target } => {
                tracing::debug!(%status, flag, %target, "local response: RBAC denied");
                meshapi::authz::DENIED_BODY.to_string()
            }
            _ => {
                tracing::debug!(%status, flag, error = %self, "local response");
                format!("{self}\n")
            }
        };
        let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(|n| match n {}).boxed());
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(FLAGS_HEADER, HeaderValue::from_static(flag));
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        if flag == "DPE" {
            // The connection's framing can no longer be trusted.
            h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connect_error_has_flag_and_one_line_body() {
        let resp = ProxyError::UpstreamConnect {
            service: "backend".into(),
            reason: "connection refused".into(),
        }
        .into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[FLAGS_HEADER], "UF");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            &body[..],
            b"upstream connect error to backend: connection refused\n"
        );
    }

    #[tokio::test]
    async fn denied_is_envoys_rbac_response() {
        let resp = ProxyError::Denied {
            target: "inbound|8080 rbac_access_denied_matched_policy[none]".into(),
        }
        .into_response();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert_eq!(resp.headers()[FLAGS_HEADER], "RBAC");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"RBAC: access denied");
    }
}
