//! The retry loop: attempts, `perTryTimeout`, `retryOn`, Envoy's jittered backoff, a retry
//! prefers another endpoint, request bodies buffered up to [`RETRY_BUFFER_LIMIT`] (larger ones
//! are sent once, never retried), and the circuit breaker's `maxRetries` and
//! `http2MaxRequests`. The route `timeout` around it all is the caller's
//! ([`super::forward`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body as _, Incoming};
use meshapi::traffic::{AttemptOutcome, CallResult, Pick, PoolResource, RetryPolicy};

use super::cluster::{ActiveGuard, ClusterState, slot};
use crate::body::{BodyFault, Downstream, Tracked};
use crate::context::Context;
use crate::http::{Body, RequestHead, full};
use crate::reply::{FLAGS_HEADER, ProxyError};
use tokio::sync::OwnedSemaphorePermit;

/// Request bodies up to this size are buffered so a retry or a mirror can send them again;
/// larger (or unsized, chunked) bodies stream once and are not retried or mirrored.
pub const RETRY_BUFFER_LIMIT: usize = 64 * 1024;

/// A request body kept for retries and mirrors, or streamed once.
pub(super) enum ReqBody {
    Buffered(Bytes),
    /// Streamed once; the fault says whether reading it from the downstream failed.
    Streaming(Option<Incoming>, BodyFault),
}

impl ReqBody {
    /// A body streamed from the downstream as it arrives; `fault` records its failure (and
    /// counts its bytes, see [`BodyFault::for_request`]).
    pub(super) fn streaming(b: Incoming, fault: BodyFault) -> ReqBody {
        ReqBody::Streaming(Some(b), fault)
    }

    /// The body for the next try; `None` when a streamed body was already sent.
    fn take(&mut self) -> Option<Body> {
        match self {
            ReqBody::Buffered(b) => Some(full(b.clone())),
            ReqBody::Streaming(s, fault) => s.take().map(|b| Downstream::wrap(b, fault.clone())),
        }
    }

    /// The downstream's error when reading the streamed body from it failed: a try that
    /// failed then failed because of the downstream, not the endpoint.
    fn fault(&self) -> Option<ProxyError> {
        match self {
            ReqBody::Streaming(_, f) => f.take(),
            ReqBody::Buffered(_) => None,
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, ReqBody::Buffered(_))
    }

    /// Whether the body is empty (known before it is sent).
    fn is_empty(&self) -> bool {
        match self {
            ReqBody::Buffered(b) => b.is_empty(),
            ReqBody::Streaming(s, _) => s.as_ref().is_none_or(|b| b.is_end_stream()),
        }
    }
}

/// Reads a body into memory when it is known to fit in [`RETRY_BUFFER_LIMIT`].
pub(super) async fn buffer(body: Incoming, fault: BodyFault) -> Result<ReqBody, ProxyError> {
    let hint = body.size_hint();
    if body.is_end_stream() {
        return Ok(ReqBody::Buffered(Bytes::new()));
    }
    match hint.upper() {
        Some(n) if n <= RETRY_BUFFER_LIMIT as u64 => {
            let collected = Limited::new(body, RETRY_BUFFER_LIMIT)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        ProxyError::BadRequest("request body longer than announced")
                    } else {
                        ProxyError::downstream_body(&*e)
                    }
                })?;
            let bytes = collected.to_bytes();
            fault.received(bytes.len());
            Ok(ReqBody::Buffered(bytes))
        }
        _ => Ok(ReqBody::streaming(body, fault)),
    }
}

/// How a try ended.
enum Tried {
    Response(Response<Body>),
    Failed(ProxyError, AttemptOutcome),
}

/// A `503 UF` from the endpoint's own proxy: it could not connect to its application, so
/// nothing was processed. The flag can only be there from a verified peer proxy: [`try_once`]
/// removes reserved headers from every other response, and the peer's inbound side removes
/// them from its application's.
fn peer_could_not_connect(r: &Response<Body>) -> bool {
    r.status() == StatusCode::SERVICE_UNAVAILABLE
        && r.headers().get(FLAGS_HEADER).is_some_and(|v| v == "UF")
}

fn grpc_status(h: &HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// What the retry loop has done so far for one request.
struct Attempts<'a> {
    rt: &'a crate::runtime::Runtime,
    cluster: &'a Arc<ClusterState>,
    retries: Option<&'a RetryPolicy>,
    hash: Option<u64>,
    /// Endpoints tried, in order (a retry prefers another).
    tried: Vec<usize>,
    /// Retries sent so far.
    retry: u32,
    /// A retry holds one unit of `maxRetries` from its backoff until its try has ended.
    holding_retry: bool,
}

impl Attempts<'_> {
    fn max_retries(&self) -> u32 {
        self.retries.map_or(0, |r| r.attempts)
    }

    /// Whether the request head may be needed again after this try: a retry is still
    /// possible, or the pool may resend an idempotent body-less request whose reused
    /// connection died (RFC 9110 section 9.2.2). Otherwise the head is moved, not cloned.
    fn may_replay(&self, head: &RequestHead, body: &ReqBody) -> bool {
        (self.retries.is_some() && self.retry < self.max_retries() && body.replayable())
            || (head.method.is_idempotent() && body.is_empty())
    }

    /// The endpoint for the next try, avoiding those tried when the policy says so.
    fn pick(&self) -> Result<(usize, crate::runtime::Target), ProxyError> {
        let exclude: &[usize] = if self.retries.is_some_and(|r| r.retry_ignore_previous_hosts) {
            &self.tried
        } else {
            &[]
        };
        let c = self.cluster;
        match c.pick(self.hash, exclude, rand::random()) {
            Pick::Endpoint(i) => Ok((i, c.target(i).ok_or_else(|| c.no_healthy())?)),
            Pick::Passthrough | Pick::NoHealthy => Err(c.no_healthy()),
        }
    }

    /// Whether a try that ended with `outcome` is retried: `retryOn`, the attempt budget, a
    /// replayable body and a unit of `maxRetries` (taken here).
    fn retry_allowed(&self, outcome: &AttemptOutcome, body: &ReqBody) -> bool {
        let retriable = self.retries.is_some_and(|r| r.should_retry(outcome));
        let can = retriable && self.retry < self.max_retries() && body.replayable();
        can && {
            let ok = self.cluster.breaker_try(PoolResource::Retry);
            if !ok {
                tracing::debug!(cluster = %self.cluster.name, "retry budget (maxRetries) exhausted");
            }
            ok
        }
    }

    /// Whether the last try failed in a retriable way with the attempts used up (`URX`).
    fn exhausted(&self, outcome: &AttemptOutcome) -> bool {
        self.retries.is_some_and(|r| r.should_retry(outcome))
            && self.retry >= self.max_retries()
            && self.max_retries() > 0
    }

    /// Waits out the backoff before the next retry, holding a unit of `maxRetries`.
    async fn backoff(&mut self) {
        self.retry += 1;
        self.cluster.retries.fetch_add(1, Ordering::Relaxed);
        let wait = self.retries.map_or(Duration::ZERO, |r| {
            r.backoff_for(self.retry, rand::random())
        });
        self.holding_retry = true;
        tokio::time::sleep(wait).await;
    }
}

/// Sends `req` to `target` once, within `perTryTimeout`.
async fn try_once(
    shared: &Arc<Context>,
    target: &crate::runtime::Target,
    req: http::Request<Body>,
    resend: Option<&RequestHead>,
    attempts: &Attempts<'_>,
) -> Tried {
    let send = crate::pool::send_pooled(shared, attempts.rt, target, req, resend);
    let res = match attempts.retries.and_then(|r| r.per_try_timeout) {
        Some(t) => match tokio::time::timeout(t, send).await {
            Ok(r) => r.map_err(Some),
            Err(_) => Err(None),
        },
        None => send.await.map_err(Some),
    };
    match res {
        Ok(mut resp) => {
            if !target.is_verified_peer() {
                // An application or a host outside the mesh cannot flag its own response.
                crate::http::strip_reserved(resp.headers_mut());
            }
            Tried::Response(resp)
        }
        Err(None) => Tried::Failed(
            ProxyError::Timeout {
                service: attempts.cluster.name.clone(),
            },
            AttemptOutcome::PerTryTimeout,
        ),
        Err(Some(e)) => {
            let outcome = match &e {
                ProxyError::UpstreamConnect { .. } => AttemptOutcome::ConnectFailure,
                _ => AttemptOutcome::Reset { request_sent: true },
            };
            Tried::Failed(e, outcome)
        }
    }
}

/// The retry outcome of a try and what outlier detection records for it.
fn classify(tried: &Tried) -> (AttemptOutcome, CallResult) {
    match tried {
        // The endpoint's proxy could not reach its application (`503` flagged `UF`, e.g. the
        // app container died): the request reached no application, so it is retried exactly
        // like a connect failure of our own, on another endpoint.
        Tried::Response(r) if peer_could_not_connect(r) => {
            (AttemptOutcome::ConnectFailure, CallResult::ConnectFailure)
        }
        Tried::Response(r) => (
            AttemptOutcome::Response {
                status: r.status().as_u16(),
                grpc_status: grpc_status(r.headers()),
            },
            CallResult::Status(r.status().as_u16()),
        ),
        Tried::Failed(_, o) => (
            *o,
            match o {
                AttemptOutcome::ConnectFailure => CallResult::ConnectFailure,
                AttemptOutcome::PerTryTimeout => CallResult::Timeout,
                _ => CallResult::Reset,
            },
        ),
    }
}

/// The final answer of the loop. A response keeps its connection slot, its active count and
/// its place in `http2MaxRequests` until its body ends; `exhausted` flags it `URX`.
fn finish(
    tried: Tried,
    holds: (
        Option<OwnedSemaphorePermit>,
        ActiveGuard,
        meshapi::traffic::PoolPermit,
    ),
    exhausted: bool,
) -> Result<Response<Body>, ProxyError> {
    match tried {
        Tried::Response(r) => {
            let (permit, active, request) = holds;
            let mut r = r.map(|b| {
                Tracked::new(b)
                    .hold(permit)
                    .hold(active)
                    .hold(request)
                    .boxed()
            });
            if exhausted {
                r.headers_mut()
                    .insert(FLAGS_HEADER, HeaderValue::from_static("URX"));
            }
            Ok(r)
        }
        Tried::Failed(e, _) => Err(e),
    }
}

/// Sends the request to `cluster` under the route's retry policy. The request head is cloned
/// per try only while it may be needed again ([`Attempts::may_replay`]).
pub(super) async fn send_with_retries(
    shared: &Arc<Context>,
    rt: &crate::runtime::Runtime,
    cluster: &Arc<ClusterState>,
    hash: Option<u64>,
    retries: Option<&RetryPolicy>,
    head: RequestHead,
    body: &mut ReqBody,
) -> Result<Response<Body>, ProxyError> {
    let request = cluster.request_permit()?;
    let mut a = Attempts {
        rt,
        cluster,
        retries,
        hash,
        tried: Vec::new(),
        retry: 0,
        holding_retry: false,
    };
    let mut head = Some(head);
    loop {
        let replay = head.as_ref().is_some_and(|h| a.may_replay(h, body));
        let Some(b) = body.take() else {
            return Err(already_sent(cluster));
        };
        let (i, target) = a.pick()?;
        a.tried.push(i);
        let permit = slot(cluster).await?;
        let active = ActiveGuard::new(cluster, i);
        let tried = match (replay, head.as_ref()) {
            (true, Some(h)) => try_once(shared, &target, h.request(b), Some(h), &a).await,
            _ => match head.take() {
                Some(h) => try_once(shared, &target, h.into_request(b), None, &a).await,
                None => return Err(already_sent(cluster)),
            },
        };
        if let (Tried::Failed(..), Some(e)) = (&tried, body.fault()) {
            // The downstream's body failed, not the endpoint: nothing recorded against it,
            // no retry (the body is gone anyway).
            if std::mem::take(&mut a.holding_retry) {
                cluster.breaker_release(PoolResource::Retry);
            }
            return Err(e);
        }
        let (outcome, call) = classify(&tried);
        cluster.record(i, call);
        if std::mem::take(&mut a.holding_retry) {
            cluster.breaker_release(PoolResource::Retry);
        }
        if head.is_none() || !a.retry_allowed(&outcome, body) {
            let mut resp = finish(tried, (permit, active, request), a.exhausted(&outcome))?;
            resp.extensions_mut().insert(crate::telemetry::Upstream {
                cluster: Arc::clone(cluster),
                endpoint: i,
            });
            return Ok(resp);
        }
        drop((permit, active));
        if let Tried::Response(r) = tried {
            // Read and drop the failed response so its stream is released.
            let _ = tokio::time::timeout(Duration::from_secs(1), r.into_body().collect()).await;
        }
        a.backoff().await;
    }
}

fn already_sent(cluster: &ClusterState) -> ProxyError {
    ProxyError::UpstreamReset {
        service: cluster.name.clone(),
        reason: "request body already sent".into(),
    }
}
