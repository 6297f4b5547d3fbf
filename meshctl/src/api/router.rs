//! Routing of API requests to handlers, and the JSON helpers every handler uses.
//!
//! A handler receives the request and the [`PeerInfo`] of the TLS connection it came on (the
//! verified SPIFFE ID of the client certificate, if one was presented). Add a route with
//! [`Router::route`]; unknown paths get 404 and known paths with another method 405, both as
//! JSON `{"error": ...}` like every other error of the API.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use meshapi::ca_api::{ApiErrorBody, SpiffeId};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Error type of response bodies (streaming handlers may fail mid-body).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body of every API response.
pub type ApiBody = BoxBody<Bytes, BoxError>;

/// What a handler returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Response<ApiBody>> + Send>>;

/// Who is on the other end of a request's connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The TCP peer.
    pub remote_addr: SocketAddr,
    /// SPIFFE ID of the client certificate, verified against the mesh roots; `None` when the
    /// client presented no certificate (bootstrap) or one without a single SPIFFE URI SAN.
    pub identity: Option<SpiffeId>,
    /// Serial (lowercase hex) of the verified client certificate, if one was presented.
    pub serial: Option<String>,
}

impl PeerInfo {
    /// The client's verified identity, or the 401 answer for routes that need mTLS (everything
    /// but the bootstrap CSR).
    // The error is the response itself, built once per refused request; boxing buys nothing.
    #[allow(clippy::result_large_err)]
    pub fn require_identity(&self) -> Result<&SpiffeId, Response<ApiBody>> {
        self.identity.as_ref().ok_or_else(|| {
            error_response(
                StatusCode::UNAUTHORIZED,
                "a mesh client certificate is required",
            )
        })
    }
}

/// A request handler.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(&self, request: Request<Incoming>, peer: PeerInfo) -> HandlerFuture;
}

impl<F, Fut> Handler for F
where
    F: Fn(Request<Incoming>, PeerInfo) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<ApiBody>> + Send + 'static,
{
    fn handle(&self, request: Request<Incoming>, peer: PeerInfo) -> HandlerFuture {
        Box::pin(self(request, peer))
    }
}

/// Method + exact path -> handler.
#[derive(Clone, Default)]
pub struct Router {
    routes: HashMap<String, HashMap<Method, Arc<dyn Handler>>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut routes: Vec<String> = self
            .routes
            .iter()
            .flat_map(|(path, m)| m.keys().map(move |method| format!("{method} {path}")))
            .collect();
        routes.sort();
        f.debug_struct("Router").field("routes", &routes).finish()
    }
}

impl Router {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the handler of `method path`.
    pub fn route(mut self, method: Method, path: &str, handler: impl Handler) -> Self {
        self.routes
            .entry(path.to_owned())
            .or_default()
            .insert(method, Arc::new(handler));
        self
    }

    /// Dispatches one request.
    pub async fn dispatch(&self, request: Request<Incoming>, peer: PeerInfo) -> Response<ApiBody> {
        let Some(by_method) = self.routes.get(request.uri().path()) else {
            return error_response(StatusCode::NOT_FOUND, "no such endpoint");
        };
        match by_method.get(request.method()) {
            Some(handler) => handler.handle(request, peer).await,
            None => {
                let mut allowed: Vec<&str> = by_method.keys().map(Method::as_str).collect();
                allowed.sort_unstable();
                let mut resp = error_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
                if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
                    resp.headers_mut().insert(header::ALLOW, v);
                }
                resp
            }
        }
    }
}

/// A complete body.
pub fn full_body(bytes: impl Into<Bytes>) -> ApiBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// `status` with `value` as JSON.
pub fn json_response(status: StatusCode, value: &impl Serialize) -> Response<ApiBody> {
    match serde_json::to_vec(value) {
        Ok(json) => {
            let mut resp = Response::new(full_body(json));
            *resp.status_mut() = status;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot serialise API response");
            let mut resp = Response::new(full_body(r#"{"error":"internal error"}"#));
            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            resp
        }
    }
}

/// `status` with `{"error": message}`.
pub fn error_response(status: StatusCode, message: impl Into<String>) -> Response<ApiBody> {
    json_response(
        status,
        &ApiErrorBody {
            error: message.into(),
        },
    )
}

/// Reads a JSON body of at most `max_bytes`; the error is the response to send.
pub async fn read_json<T: DeserializeOwned>(
    request: Request<Incoming>,
    max_bytes: usize,
) -> Result<T, Response<ApiBody>> {
    let is_json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return Err(error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected Content-Type: application/json",
        ));
    }
    let body = Limited::new(request.into_body(), max_bytes)
        .collect()
        .await
        .map_err(|e| {
            error_response(
                StatusCode::BAD_REQUEST,
                format!("cannot read request body (limit {max_bytes} bytes): {e}"),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&body)
        .map_err(|e| error_response(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}
