//! Every response the proxy makes itself, rendered in one place ([`LocalReply::render`]):
//! errors ([`ProxyError`]: a status code, an Envoy-style response flag in
//! `x-meshctl-response-flags` and a one-line body naming what happened and to which service;
//! never a bare 503), and the answers a route gives without an upstream (direct response,
//! redirect, CORS preflight, injected fault abort).

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use meshapi::traffic::{Abort, Cors};

use crate::http::{Body, full};

/// Header carrying the Envoy response flag of a locally generated response (a reserved name).
pub const FLAGS_HEADER: &str = meshapi::headers::RESPONSE_FLAGS;

/// A response the proxy makes itself.
#[derive(Debug)]
pub enum LocalReply<'a> {
    /// An error: its status, flag and one-line body ([`ProxyError::status_and_flag`]).
    Error(ProxyError),
    /// A VirtualService `directResponse`: its status and body, no flag.
    Direct { status: u16, body: &'a [u8] },
    /// A VirtualService `redirect`: its status and `Location`, no flag, no body.
    Redirect { status: u16, location: String },
    /// A CORS preflight answered by the route's policy: 200, no flag, the policy's headers
    /// when `origin` is allowed (`None`: no CORS headers).
    CorsPreflight {
        cors: &'a Cors,
        origin: Option<String>,
    },
    /// An injected fault abort (flag `FI`): the HTTP status with body `fault filter abort`,
    /// or a gRPC status in a 200 with `application/grpc`.
    FaultAbort(&'a Abort),
}

impl From<ProxyError> for LocalReply<'static> {
    fn from(e: ProxyError) -> Self {
        LocalReply::Error(e)
    }
}

impl LocalReply<'_> {
    /// The response sent to the client: the only place a local response is built.
    pub fn render(self) -> Response<Body> {
        let (status, flag, body): (u16, Option<&'static str>, Bytes) = match &self {
            LocalReply::Error(e) => {
                let (status, flag) = e.status_and_flag();
                (status.as_u16(), Some(flag), Bytes::from(e.body()))
            }
            LocalReply::Direct { status, body } => (*status, None, Bytes::copy_from_slice(body)),
            LocalReply::Redirect { status, .. } => (*status, None, Bytes::new()),
            LocalReply::CorsPreflight { .. } => (200, None, Bytes::new()),
            LocalReply::FaultAbort(Abort::Http(status)) => (
                *status,
                Some("FI"),
                Bytes::from_static(b"fault filter abort"),
            ),
            LocalReply::FaultAbort(Abort::Grpc(_)) => (200, Some("FI"), Bytes::new()),
        };
        let mut r = Response::new(full(body));
        *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let h = r.headers_mut();
        if let Some(flag) = flag.filter(|f| *f != "-") {
            h.insert(FLAGS_HEADER, HeaderValue::from_static(flag));
        }
        match self {
            LocalReply::Error(e) => {
                if let ProxyError::Unauthenticated { realm, .. } = &e {
                    let v = format!("Bearer realm=\"{realm}\", error=\"invalid_token\"");
                    if let Ok(v) = HeaderValue::try_from(v) {
                        h.insert(header::WWW_AUTHENTICATE, v);
                    }
                }
                e.log(status, flag.unwrap_or("-"));
                h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                if e.is_downstream() {
                    // The connection's framing can no longer be trusted.
                    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
            }
            LocalReply::Redirect { location, .. } => {
                if let Ok(v) = HeaderValue::try_from(location) {
                    h.insert(header::LOCATION, v);
                }
            }
            LocalReply::CorsPreflight {
                cors,
                origin: Some(origin),
            } => cors_headers(h, cors, &origin, true),
            LocalReply::FaultAbort(Abort::Grpc(code)) => {
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/grpc"),
                );
                if let Ok(v) = HeaderValue::try_from(code.to_string()) {
                    h.insert("grpc-status", v);
                }
                h.insert(
                    "grpc-message",
                    HeaderValue::from_static("fault filter abort"),
                );
            }
            LocalReply::Direct { .. }
            | LocalReply::CorsPreflight { .. }
            | LocalReply::FaultAbort(Abort::Http(_)) => {}
        }
        r
    }
}

/// Sets the CORS response headers of `cors` for an allowed `origin`; a `preflight` gets the
/// allowed methods, headers and max age too.
pub fn cors_headers(h: &mut HeaderMap, cors: &Cors, origin: &str, preflight: bool) {
    let mut set = |name: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::try_from(v) {
            h.insert(name, v);
        }
    };
    set("access-control-allow-origin", origin);
    if cors.allow_credentials {
        set("access-control-allow-credentials", "true");
    }
    if let Some(v) = &cors.expose_headers {
        set("access-control-expose-headers", v);
    }
    if preflight {
        if let Some(v) = &cors.allow_methods {
            set("access-control-allow-methods", v);
        }
        if let Some(v) = &cors.allow_headers {
            set("access-control-allow-headers", v);
        }
        if let Some(v) = cors.max_age_secs {
            set("access-control-max-age", &v.to_string());
        }
    }
}

/// Why the proxy answered a request itself.
#[derive(Debug, Clone, thiserror::Error)]
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
    /// NR with 503: the route names a destination that has no cluster (a subset no
    /// DestinationRule defines: applied with a `meshctl check` finding, as Istio does).
    #[error("no cluster for {target}")]
    NoCluster { target: String },
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
    /// DPE or DC: the downstream's request body failed while the proxy read it (a malformed
    /// chunk or length: `DPE`; the peer cut the body short or reset its stream: `DC`). The
    /// downstream's fault: answered `400`, never retried, never charged to an upstream
    /// endpoint by outlier detection.
    #[error("bad request body: {reason}")]
    DownstreamBody { cause: Downstream, reason: String },
    /// NR (502): `outboundTrafficPolicy` is `REGISTRY_ONLY` and `host` is neither a mesh
    /// service nor a ServiceEntry of this proxy (Istio's `BlackHoleCluster`).
    #[error("{host} is not in the mesh registry (outboundTrafficPolicy REGISTRY_ONLY)")]
    NotInRegistry { host: String },
    /// RBAC: the authorize step refused the request. The body is Envoy's, exactly
    /// `RBAC: access denied`; `target` (port and matched policy) goes to the log only.
    #[error("RBAC: access denied")]
    Denied { target: String },
    /// 401: the request brought a token no RequestAuthentication rule verifies. The body is
    /// Envoy's `jwt_authn` text (`Jwt is expired`, ...), with `www-authenticate: Bearer
    /// realm="<url>", error="invalid_token"`; no response flag, as Envoy sets none.
    #[error("{reason}")]
    Unauthenticated {
        reason: meshapi::authn::AuthnError,
        realm: String,
    },
}

/// How a downstream request body failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Downstream {
    /// `DPE` (Envoy's downstream protocol error): malformed framing (bad chunk size or
    /// terminator, a length the body does not match).
    Protocol,
    /// `DC` (Envoy's downstream connection termination): the body ended early (connection
    /// closed mid-body) or the peer reset its stream.
    Terminated,
}

impl Downstream {
    /// Envoy's response flag.
    pub fn flag(self) -> &'static str {
        match self {
            Downstream::Protocol => "DPE",
            Downstream::Terminated => "DC",
        }
    }

    /// Classifies the error of a received request body: an `InvalidInput`/`InvalidData`
    /// I/O error is hyper's decoder refusing the framing; anything else (early EOF, a reset
    /// connection or stream) is the downstream going away.
    pub fn of(e: &(dyn std::error::Error + 'static)) -> Downstream {
        match crate::http::find_io(e).map(std::io::Error::kind) {
            Some(std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData) => {
                Downstream::Protocol
            }
            _ => Downstream::Terminated,
        }
    }
}

impl ProxyError {
    /// The error for a request body that failed while it was read from the downstream.
    pub fn downstream_body(e: &(dyn std::error::Error + 'static)) -> ProxyError {
        let mut reason = e.to_string();
        let mut cur = e.source();
        while let Some(c) = cur {
            reason.push_str(": ");
            reason.push_str(&c.to_string());
            cur = c.source();
        }
        ProxyError::DownstreamBody {
            cause: Downstream::of(e),
            reason,
        }
    }

    /// Whether the downstream caused this error (its framing can no longer be trusted; the
    /// connection is closed after the answer).
    pub fn is_downstream(&self) -> bool {
        matches!(
            self,
            ProxyError::BadRequest(_) | ProxyError::DownstreamBody { .. }
        )
    }

    /// Status code and Envoy response flag for this error.
    pub fn status_and_flag(&self) -> (StatusCode, &'static str) {
        match self {
            ProxyError::UpstreamConnect { .. } => (StatusCode::SERVICE_UNAVAILABLE, "UF"),
            ProxyError::NoHealthyUpstream { .. } => (StatusCode::SERVICE_UNAVAILABLE, "UH"),
            ProxyError::NoRoute { .. } => (StatusCode::NOT_FOUND, "NR"),
            ProxyError::NotInRegistry { .. } => (StatusCode::BAD_GATEWAY, "NR"),
            ProxyError::NoCluster { .. } => (StatusCode::SERVICE_UNAVAILABLE, "NR"),
            ProxyError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "UT"),
            ProxyError::Overflow { .. } => (StatusCode::SERVICE_UNAVAILABLE, "UO"),
            ProxyError::UpstreamReset { .. } => (StatusCode::BAD_GATEWAY, "UR"),
            ProxyError::BadRequest(_) => (StatusCode::BAD_REQUEST, "DPE"),
            ProxyError::DownstreamBody { cause, .. } => (StatusCode::BAD_REQUEST, cause.flag()),
            ProxyError::Denied { .. } => (StatusCode::FORBIDDEN, "RBAC"),
            ProxyError::Unauthenticated { .. } => (StatusCode::UNAUTHORIZED, "-"),
        }
    }

    /// Envoy's `RESPONSE_CODE_DETAILS` for the local reply of this error (access logs).
    pub fn details(&self) -> &'static str {
        match self {
            ProxyError::UpstreamConnect { .. } => {
                "upstream_reset_before_response_started{connection_failure}"
            }
            ProxyError::NoHealthyUpstream { .. } => "no_healthy_upstream",
            ProxyError::NoRoute { .. } => "route_not_found",
            ProxyError::NoCluster { .. } => "cluster_not_found",
            ProxyError::NotInRegistry { .. } => "registry_only_blackhole",
            ProxyError::Timeout { .. } => "upstream_response_timeout",
            ProxyError::UpstreamReset { .. } => "upstream_reset_before_response_started",
            ProxyError::Overflow { .. } => "upstream_reset_before_response_started{overflow}",
            ProxyError::BadRequest(_) => "downstream_protocol_error",
            ProxyError::DownstreamBody { cause, .. } => match cause {
                Downstream::Protocol => "downstream_protocol_error",
                Downstream::Terminated => "downstream_remote_disconnect",
            },
            ProxyError::Denied { .. } => "rbac_access_denied",
            ProxyError::Unauthenticated { .. } => "jwt_authn_access_denied",
        }
    }

    /// The one-line body: Envoy's exact `RBAC: access denied` for a denial, else the error
    /// and a newline.
    fn body(&self) -> String {
        match self {
            ProxyError::Denied { .. } => meshapi::authz::DENIED_BODY.to_string(),
            ProxyError::Unauthenticated { reason, .. } => reason.to_string(),
            _ => format!("{self}\n"),
        }
    }

    fn log(&self, status: u16, flag: &str) {
        match self {
            ProxyError::Denied { target } => {
                tracing::debug!(status, flag, %target, "local response: RBAC denied");
            }
            _ => tracing::debug!(status, flag, error = %self, "local response"),
        }
    }

    /// The response sent to the client ([`LocalReply::render`]).
    pub fn into_response(self) -> Response<Body> {
        LocalReply::Error(self).render()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

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
    async fn a_failed_request_body_is_the_downstreams_400() {
        let bad = std::io::Error::new(std::io::ErrorKind::InvalidInput, "Invalid chunk size");
        let e = ProxyError::downstream_body(&bad);
        assert!(e.is_downstream());
        let resp = e.into_response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(resp.headers()[FLAGS_HEADER], "DPE");
        assert_eq!(resp.headers()[header::CONNECTION], "close");
        let cut = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "early eof");
        let resp = ProxyError::downstream_body(&cut).into_response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(resp.headers()[FLAGS_HEADER], "DC");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"bad request body: early eof\n");
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

    #[tokio::test]
    async fn route_answers_have_no_flag_and_aborts_say_fi() {
        let r = LocalReply::Direct {
            status: 418,
            body: b"teapot",
        }
        .render();
        assert_eq!(r.status(), 418);
        assert!(r.headers().get(FLAGS_HEADER).is_none());
        assert_eq!(
            &r.into_body().collect().await.unwrap().to_bytes()[..],
            b"teapot"
        );

        let r = LocalReply::Redirect {
            status: 301,
            location: "http://x/y".into(),
        }
        .render();
        assert_eq!(r.headers()[header::LOCATION], "http://x/y");
        assert!(r.headers().get(FLAGS_HEADER).is_none());

        let r = LocalReply::FaultAbort(&Abort::Http(503)).render();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[FLAGS_HEADER], "FI");
        assert_eq!(
            &r.into_body().collect().await.unwrap().to_bytes()[..],
            b"fault filter abort"
        );

        let r = LocalReply::FaultAbort(&Abort::Grpc(14)).render();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/grpc");
    }
}
