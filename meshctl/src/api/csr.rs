//! `POST /v1/csr`: the certificate endpoint, and the one place CA errors become HTTP statuses.

use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use meshapi::ca_api::CsrRequest;

use super::router::{ApiBody, PeerInfo, error_response, json_response, read_json};
use crate::ca::{Ca, CaError};

/// Largest accepted request body.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Handles one CSR request.
pub async fn handle(ca: Arc<Ca>, request: Request<Incoming>, peer: PeerInfo) -> Response<ApiBody> {
    let body: CsrRequest = match read_json(request, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(resp) => return resp,
    };
    // Signing and the fsync of the token file are blocking work.
    let identity = peer.identity.clone();
    let result = tokio::task::spawn_blocking(move || ca.handle_csr(&body, identity.as_ref())).await;
    match result {
        Ok(Ok(answer)) => json_response(StatusCode::OK, &answer),
        Ok(Err(e)) => ca_error_response(&e),
        Err(e) => {
            tracing::error!(error = %e, "CSR task failed");
            error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

/// The status of each CA refusal; internal failures are not described to the client.
pub fn ca_error_response(e: &CaError) -> Response<ApiBody> {
    let status = match e {
        CaError::InvalidIdentity(_) | CaError::BadCsr(_) | CaError::TokenMalformed => {
            StatusCode::BAD_REQUEST
        }
        CaError::Unauthenticated
        | CaError::TokenUnknown
        | CaError::TokenReused { .. }
        | CaError::TokenExpired { .. } => StatusCode::UNAUTHORIZED,
        CaError::PeerIdentityMismatch { .. }
        | CaError::TokenIdentityMismatch { .. }
        | CaError::CsrIdentityMismatch { .. }
        | CaError::ForeignTrustDomain { .. } => StatusCode::FORBIDDEN,
        CaError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        CaError::Io { .. }
        | CaError::Permissions { .. }
        | CaError::Corrupt { .. }
        | CaError::Missing { .. }
        | CaError::Generate(_)
        | CaError::Config(_) => {
            tracing::error!(error = %e, "CA failure while handling a CSR");
            return error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal CA error");
        }
    };
    let mut resp = error_response(status, e.to_string());
    if let CaError::RateLimited { retry_after, .. } = e {
        let secs = retry_after.as_secs().max(1).to_string();
        if let Ok(v) = HeaderValue::from_str(&secs) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    resp
}
