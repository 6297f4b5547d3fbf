//! Traffic management in the request path: the client side of VirtualService and
//! DestinationRule. The decisions are `meshapi::traffic`'s (compiled into the config's
//! `traffic` route table); this module carries them out per request:
//!
//! - route: match, weighted destination, redirect / direct response / CORS preflight;
//! - fault injection (delay, then abort), outside the route's timeout and retries, as Istio;
//! - the retry loop: attempts, `perTryTimeout`, `retryOn`, Envoy's jittered backoff, a retry
//!   prefers another endpoint, bodies buffered up to [`RETRY_BUFFER_LIMIT`] (larger ones are
//!   sent once, never retried), all inside the route `timeout` (504 `UT`);
//! - per cluster (host, subset, port) runtime state in [`ClusterState`]: the load balancer,
//!   active requests (LEAST_REQUEST), outlier detection (ejections), and the connection-pool
//!   circuit breaker (overflow answers 503 `UO` at once, never queues without bound);
//! - mirrors: a fire-and-forget copy that never slows or fails the primary request;
//! - request and response header operations, rewrites, CORS response headers, consistent-hash
//!   cookies.
//!
//! Cluster state survives a config reload when the cluster's endpoints and policy are unchanged
//! (as Envoy keeps a cluster that an update does not change), so ejections and counters are not
//! reset by unrelated edits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body as _, Incoming};
use meshapi::authz::HeaderLookup;
use meshapi::proxy::{Endpoint, Protocol, ProxyConfig};
use meshapi::traffic::{
    Abort, AttemptOutcome, Balancer, CallResult, CircuitBreaker, Cluster, ClusterPolicy,
    DestinationRef, EndpointState, Forward, HashInput, HeaderOps, OutlierDetector, Pick,
    PoolResource, RequestView, RetryPolicy, RouteDecision, RouteTable,
};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::app::Shared;
use crate::authz::Headers;
use crate::body::Tracked;
use crate::http::{Body, full};
use crate::rescue::{FLAGS_HEADER, ProxyError};
use crate::state::{Snapshot, Target};

/// Request bodies up to this size are buffered so a retry or a mirror can send them again;
/// larger (or unsized, chunked) bodies stream once and are not retried or mirrored.
pub const RETRY_BUFFER_LIMIT: usize = 64 * 1024;

/// Runtime state of one cluster (host, subset, port) of the route table.
#[derive(Debug)]
pub struct ClusterState {
    /// Envoy's cluster name: `outbound|<port>|<subset>|<host>`.
    pub name: String,
    /// The `services` key of the host (for messages and the connection pool).
    pub service: String,
    /// Application port on the endpoints.
    pub port: u16,
    pub endpoints: Vec<Arc<Endpoint>>,
    pub policy: ClusterPolicy,
    /// Whether requests multiplex on HTTP/2 upstream (`http2`/`grpc` ports, or
    /// `h2UpgradePolicy: UPGRADE`); otherwise each active request holds one of
    /// `maxConnections` connection slots, as an HTTP/1.1 upstream does in Envoy.
    multiplexed: bool,
    balancer: Balancer,
    breaker: Arc<CircuitBreaker>,
    /// HTTP/1.1-style connection slots (`maxConnections`).
    slots: Arc<Semaphore>,
    outlier: Option<Mutex<OutlierDetector>>,
    active: Vec<AtomicU32>,
    /// When each endpoint joined (slow start).
    joined: Vec<Instant>,
    epoch: Instant,
    pub retries: AtomicU64,
    pub ejections: AtomicU64,
}

impl ClusterState {
    fn new(
        name: String,
        service: String,
        cluster: &Cluster,
        endpoints: Vec<Arc<Endpoint>>,
        multiplexed: bool,
    ) -> ClusterState {
        let keys: Vec<String> = endpoints.iter().map(|e| e.address.to_string()).collect();
        let weighted: Vec<(&str, u32)> = keys.iter().map(|k| (k.as_str(), 1)).collect();
        let limits = &cluster.policy.connection_pool;
        let slots = usize::try_from(limits.max_connections)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        let n = endpoints.len();
        let now = Instant::now();
        ClusterState {
            name,
            service,
            port: cluster.port,
            balancer: Balancer::new(&cluster.policy, &weighted),
            breaker: Arc::new(CircuitBreaker::new(limits)),
            slots: Arc::new(Semaphore::new(slots)),
            outlier: cluster
                .policy
                .outlier_detection
                .clone()
                .map(|o| Mutex::new(OutlierDetector::new(o, n))),
            active: (0..n).map(|_| AtomicU32::new(0)).collect(),
            joined: vec![now; n],
            epoch: now,
            multiplexed: multiplexed || limits.h2_upgrade,
            policy: cluster.policy.clone(),
            endpoints,
            retries: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
        }
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Picks an endpoint, avoiding `exclude` when anything else is available.
    fn pick(&self, hash: Option<u64>, exclude: &[usize], random: u64) -> Pick {
        let now = self.now();
        let warm = self.policy.load_balancer.warmup.is_some();
        let mut states: Vec<EndpointState> = (0..self.endpoints.len())
            .map(|i| EndpointState {
                healthy: true,
                active_requests: self.active[i].load(Ordering::Relaxed),
                age: warm.then(|| self.joined[i].elapsed()),
            })
            .collect();
        if let Some(o) = &self.outlier
            && let Ok(mut o) = o.lock()
        {
            o.refresh(now);
            o.apply(now, &mut states);
        }
        self.balancer.pick(&states, hash, exclude, random)
    }

    /// Records how a call to endpoint `i` ended, for outlier detection.
    pub fn record(&self, i: usize, result: CallResult) {
        let Some(o) = &self.outlier else { return };
        let now = self.now();
        if let Ok(mut o) = o.lock()
            && o.record(i, result, now)
        {
            self.ejections.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                cluster = %self.name,
                endpoint = %self.endpoints.get(i).map(|e| e.address.to_string()).unwrap_or_default(),
                "outlier detection ejected an endpoint"
            );
        }
    }

    fn target(self: &Arc<Self>, i: usize) -> Option<Target> {
        let pool = &self.policy.connection_pool;
        Some(Target {
            service: self.service.clone(),
            endpoint: Arc::clone(self.endpoints.get(i)?),
            target_port: self.port,
            connect: crate::state::ConnectSettings {
                timeout: Some(pool.connect_timeout),
                keepalive: pool.tcp_keepalive,
                http2: self.multiplexed,
                max_requests_per_connection: pool.max_requests_per_connection,
                idle_timeout: Some(pool.idle_timeout),
            },
            cluster: Some((Arc::clone(self), i)),
        })
    }

    /// Endpoint `i`'s target for TCP or an upgrade (no retries): the balancer's pick.
    pub fn pick_target(self: &Arc<Self>, random: u64) -> Result<Target, ProxyError> {
        match self.pick(None, &[], random) {
            Pick::Endpoint(i) => self.target(i).ok_or_else(|| self.no_healthy()),
            Pick::Passthrough | Pick::NoHealthy => Err(self.no_healthy()),
        }
    }

    /// A connection slot for a TCP stream (`maxConnections`); `None` is an overflow, counted:
    /// the connection is closed at once (Envoy's `UO` for TCP).
    pub fn tcp_slot(&self) -> Option<OwnedSemaphorePermit> {
        let slot = Arc::clone(&self.slots).try_acquire_owned().ok();
        if slot.is_none() {
            self.breaker.record_overflow(PoolResource::Connection);
            tracing::info!(cluster = %self.name, "TCP connection refused: maxConnections reached");
        }
        slot
    }

    fn no_healthy(&self) -> ProxyError {
        ProxyError::NoHealthyUpstream {
            service: self.name.clone(),
        }
    }

    fn overflow(&self, what: &str) -> ProxyError {
        ProxyError::Overflow {
            service: self.name.clone(),
            what: what.to_string(),
        }
    }

    /// State for `/config_dump`: ejections and circuit-breaker use.
    pub fn status(&self) -> ClusterStatus {
        let now = self.now();
        let outlier = self
            .outlier
            .as_ref()
            .and_then(|o| o.lock().ok().map(|o| o.snapshot(now)))
            .unwrap_or_default();
        ClusterStatus {
            name: self.name.clone(),
            endpoints: self
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| EndpointStatus {
                    address: e.address.to_string(),
                    active_requests: self.active[i].load(Ordering::Relaxed),
                    ejected: outlier.get(i).is_some_and(|o| o.ejected),
                    times_ejected: outlier.get(i).map_or(0, |o| o.times_ejected),
                })
                .collect(),
            circuit_breaker: self.breaker.stats(),
            retries: self.retries.load(Ordering::Relaxed),
            ejections: self.ejections.load(Ordering::Relaxed),
        }
    }
}

/// Appends the clusters' Prometheus series: retries, outlier ejections (total and current),
/// circuit-breaker overflows by resource, active requests.
pub fn render_metrics(clusters: &[ClusterStatus], out: &mut String) {
    use std::fmt::Write;
    if clusters.is_empty() {
        return;
    }
    let series: [(&str, &str, &str); 4] = [
        (
            "meshproxy_cluster_retries_total",
            "counter",
            "Retries sent, by cluster.",
        ),
        (
            "meshproxy_cluster_outlier_ejections_total",
            "counter",
            "Outlier-detection ejections, by cluster.",
        ),
        (
            "meshproxy_cluster_ejected_endpoints",
            "gauge",
            "Endpoints ejected now, by cluster.",
        ),
        (
            "meshproxy_cluster_active_requests",
            "gauge",
            "Requests in flight, by cluster.",
        ),
    ];
    for (name, kind, help) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for c in clusters {
            let v = match name {
                "meshproxy_cluster_retries_total" => c.retries,
                "meshproxy_cluster_outlier_ejections_total" => c.ejections,
                "meshproxy_cluster_ejected_endpoints" => {
                    c.endpoints.iter().filter(|e| e.ejected).count() as u64
                }
                _ => c
                    .endpoints
                    .iter()
                    .map(|e| u64::from(e.active_requests))
                    .sum(),
            };
            let _ = writeln!(out, "{name}{{cluster=\"{}\"}} {v}", c.name);
        }
    }
    let name = "meshproxy_cluster_overflow_total";
    let _ = writeln!(
        out,
        "# HELP {name} Circuit-breaker overflows (503 UO), by cluster and resource.\n# TYPE {name} counter"
    );
    for c in clusters {
        for (i, r) in ["connections", "pending_requests", "requests", "retries"]
            .iter()
            .enumerate()
        {
            let _ = writeln!(
                out,
                "{name}{{cluster=\"{}\",resource=\"{r}\"}} {}",
                c.name, c.circuit_breaker.overflows[i]
            );
        }
    }
}

/// One cluster in `/config_dump`'s `clusters`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    pub name: String,
    pub endpoints: Vec<EndpointStatus>,
    pub circuit_breaker: meshapi::traffic::PoolStats,
    pub retries: u64,
    pub ejections: u64,
}

/// One endpoint in [`ClusterStatus`].
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    pub address: String,
    pub active_requests: u32,
    pub ejected: bool,
    pub times_ejected: u64,
}

/// Builds the runtime state of every cluster of `table` (the snapshot's), reusing `prev`'s state for
/// clusters whose endpoints and policy did not change.
pub fn build_clusters(
    cfg: &ProxyConfig,
    table: &RouteTable,
    prev: Option<&[Arc<ClusterState>]>,
) -> Vec<Arc<ClusterState>> {
    let by_host: HashMap<&str, (&String, &meshapi::proxy::ServiceConfig)> = cfg
        .services
        .iter()
        .map(|(k, s)| (s.host.as_deref().unwrap_or(k), (k, s)))
        .collect();
    let protocol_of = |service: &str, port: u16| {
        cfg.outbound
            .iter()
            .find(|o| o.service == service && o.target_port() == port)
            .map(|o| o.protocol)
    };
    let prev: HashMap<&str, &Arc<ClusterState>> = prev
        .unwrap_or_default()
        .iter()
        .map(|c| (c.name.as_str(), c))
        .collect();
    table
        .clusters
        .iter()
        .map(|c| {
            let name = format!(
                "outbound|{}|{}|{}",
                c.port,
                c.subset.as_deref().unwrap_or(""),
                c.host
            );
            let (service, endpoints) = match by_host.get(c.host.as_str()) {
                Some((key, svc)) => (
                    (*key).clone(),
                    svc.endpoints
                        .iter()
                        .filter(|e| in_cluster(c, e))
                        .map(|e| Arc::new(e.clone()))
                        .collect(),
                ),
                None => (c.host.clone(), Vec::new()),
            };
            if let Some(old) = prev.get(name.as_str())
                && old.endpoints == endpoints
                && old.policy == c.policy
            {
                return Arc::clone(old);
            }
            let multiplexed = matches!(
                protocol_of(&service, c.port),
                Some(Protocol::Http2 | Protocol::Grpc)
            );
            Arc::new(ClusterState::new(name, service, c, endpoints, multiplexed))
        })
        .collect()
}

/// Whether endpoint `e` belongs to cluster `c`: one of its workloads (when both say), and
/// carrying the subset's labels.
fn in_cluster(c: &Cluster, e: &Endpoint) -> bool {
    let workload_ok = match (&e.workload, c.workloads.is_empty()) {
        (Some(w), false) => c.workloads.iter().any(|cw| cw == w),
        _ => true,
    };
    workload_ok && c.labels.iter().all(|(k, v)| e.labels.get(k) == Some(v))
}

/// The endpoint of a TCP connection or an HTTP upgrade to `out` under the route table.
pub fn route_connection(
    snap: &Snapshot,
    host: &str,
    port: u16,
    req: Option<(&http::Method, &Uri, &HeaderMap)>,
) -> Result<Target, ProxyError> {
    let random = rand::random::<u64>();
    let table = snap.table();
    let dest: DestinationRef = match req {
        None => table
            .route_tcp(host, port, random)
            .cloned()
            .ok_or_else(|| ProxyError::NoRoute {
                target: format!("{host}:{port}"),
            })?,
        Some((method, uri, headers)) => {
            let lookup = Headers::new(headers);
            let authority = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or(host);
            let view = RequestView {
                host,
                port,
                method: method.as_str(),
                scheme: "http",
                authority,
                path: uri.path(),
                query: uri.query().unwrap_or(""),
                headers: &lookup,
                random,
            };
            match table.route(&view) {
                RouteDecision::Forward(f) => f.destination.destination.clone(),
                _ => {
                    return Err(ProxyError::NoRoute {
                        target: format!("{host}{}", uri.path()),
                    });
                }
            }
        }
    };
    let cluster = snap
        .cluster(&dest, port)
        .ok_or_else(|| ProxyError::NoRoute {
            target: format!("{}:{}", dest.host, dest.port_for(port)),
        })?;
    cluster.pick_target(rand::random())
}

/// A request body kept for retries and mirrors, or streamed once.
enum ReqBody {
    Buffered(Bytes),
    Streaming(Option<Incoming>),
}

impl ReqBody {
    /// The body for the next try; `None` when a streamed body was already sent.
    fn take(&mut self) -> Option<Body> {
        match self {
            ReqBody::Buffered(b) => Some(full(b.clone())),
            ReqBody::Streaming(s) => s.take().map(crate::http::boxed),
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, ReqBody::Buffered(_))
    }
}

/// Reads a body into memory when it is known to fit in [`RETRY_BUFFER_LIMIT`].
async fn buffer(body: Incoming) -> Result<ReqBody, ProxyError> {
    let hint = body.size_hint();
    if body.is_end_stream() {
        return Ok(ReqBody::Buffered(Bytes::new()));
    }
    match hint.upper() {
        Some(n) if n <= RETRY_BUFFER_LIMIT as u64 => {
            let collected = Limited::new(body, RETRY_BUFFER_LIMIT)
                .collect()
                .await
                .map_err(|_| ProxyError::BadRequest("request body ended early or grew"))?;
            Ok(ReqBody::Buffered(collected.to_bytes()))
        }
        _ => Ok(ReqBody::Streaming(Some(body))),
    }
}

/// What one request to an upstream needs, prepared once and sent per try.
struct Upstream {
    method: http::Method,
    /// The client's HTTP version: an HTTP/2 request goes upstream as HTTP/2 whatever the port.
    version: http::Version,
    uri: Uri,
    headers: HeaderMap,
}

impl Upstream {
    fn request(&self, body: Body) -> Request<Body> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

fn apply_ops(h: &mut HeaderMap, ops: &HeaderOps) {
    for (k, v) in &ops.set {
        if let (Ok(k), Ok(v)) = (
            HeaderName::try_from(k.as_str()),
            HeaderValue::try_from(v.as_str()),
        ) {
            h.insert(k, v);
        }
    }
    for (k, v) in &ops.add {
        if let (Ok(k), Ok(v)) = (
            HeaderName::try_from(k.as_str()),
            HeaderValue::try_from(v.as_str()),
        ) {
            h.append(k, v);
        }
    }
    for k in &ops.remove {
        h.remove(k.as_str());
    }
}

fn local(status: u16, flag: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(FLAGS_HEADER, HeaderValue::from_static(flag));
    r
}

/// One outbound HTTP request under the route table: the decision, then faults, retries,
/// mirrors and header operations. `port` is the service port the client dialled.
pub async fn forward(
    shared: &Arc<Shared>,
    snap: Arc<Snapshot>,
    host: &str,
    port: u16,
    source: std::net::SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let table = snap.table();
    let random = rand::random::<u64>();
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_else(|| host.to_string());
    // Everything that borrows the request's headers is decided here, before any await.
    let (f, origin, cluster, hash) = {
        let lookup = Headers::new(req.headers());
        let view = RequestView {
            host,
            port,
            method: req.method().as_str(),
            scheme: "http",
            authority: &authority,
            path: req.uri().path(),
            query: req.uri().query().unwrap_or(""),
            headers: &lookup,
            random,
        };
        let f = match table.route(&view) {
            RouteDecision::Forward(f) => f,
            RouteDecision::NoRoute | RouteDecision::UnknownHost => {
                return Err(ProxyError::NoRoute {
                    target: format!("{host}{}", req.uri().path()),
                });
            }
            RouteDecision::Redirect {
                status, location, ..
            } => {
                let mut r = local(status, "-", Bytes::new());
                r.headers_mut().remove(FLAGS_HEADER);
                if let Ok(v) = HeaderValue::try_from(location) {
                    r.headers_mut().insert(header::LOCATION, v);
                }
                return Ok(r);
            }
            RouteDecision::Direct { response, .. } => {
                let body = response
                    .body
                    .as_ref()
                    .map(|b| Bytes::copy_from_slice(b.as_bytes()))
                    .unwrap_or_default();
                let mut r = local(response.status, "DR", body);
                r.headers_mut().remove(FLAGS_HEADER);
                return Ok(r);
            }
            RouteDecision::CorsPreflight { cors, allowed, .. } => {
                let mut r = local(200, "-", Bytes::new());
                r.headers_mut().remove(FLAGS_HEADER);
                if allowed {
                    let origin = lookup.get("origin").unwrap_or_default();
                    cors_headers(r.headers_mut(), cors, origin, true);
                }
                return Ok(r);
            }
        };
        let origin = lookup.get("origin").map(str::to_string);
        let cluster = snap.cluster(&f.destination.destination, port);
        let hash = cluster.map(|c| {
            c.balancer.hash(&HashInput {
                headers: &lookup,
                query: req.uri().query().unwrap_or(""),
                source_ip: Some(source.ip()),
                random,
            })
        });
        (f, origin, cluster, hash)
    };
    let path_and_query = upstream_path_and_query(&f, req.uri());
    let (parts, body) = req.into_parts();

    // Faults first: as in Istio, the route's timeout and retries do not apply to them.
    if let Some(delay) = f.fault.delay {
        tokio::time::sleep(delay).await;
    }
    if let Some(abort) = &f.fault.abort {
        return Ok(abort_response(abort));
    }

    let cluster = cluster.ok_or_else(|| ProxyError::NoRoute {
        target: format!(
            "{}:{}",
            f.destination.destination.host,
            f.destination.destination.port_for(port)
        ),
    })?;
    let retries = f.retries();
    let mirrors: Vec<&meshapi::traffic::Mirror> = f.mirrors().collect();
    let mut body = if retries.is_some() || !mirrors.is_empty() {
        buffer(body).await?
    } else {
        ReqBody::Streaming(Some(body))
    };

    let mut headers = parts.headers;
    crate::http::strip_hop_by_hop(&mut headers, false);
    crate::http::strip_internal(&mut headers);
    headers.remove(header::HOST);
    for ops in f.request_headers() {
        apply_ops(&mut headers, ops);
    }
    let up_authority = f
        .upstream_authority()
        .map(str::to_string)
        .unwrap_or(authority);
    let uri = Uri::builder()
        .scheme("http")
        .authority(up_authority.as_str())
        .path_and_query(path_and_query.as_str())
        .build()
        .map_err(|_| ProxyError::BadRequest("unusable request target or Host"))?;
    let upstream = Upstream {
        method: parts.method,
        version: parts.version,
        uri,
        headers,
    };

    if let ReqBody::Buffered(b) = &body {
        for m in &mirrors {
            spawn_mirror(shared, &snap, &m.destination, port, &upstream, b.clone());
        }
    } else if !mirrors.is_empty() {
        tracing::debug!(cluster = %cluster.name, "request body too large to mirror");
    }

    let deadline = f.timeout().map(|t| tokio::time::Instant::now() + t);
    let send = send_with_retries(
        shared,
        cluster,
        hash.as_ref().and_then(|h| h.hash),
        retries,
        &upstream,
        &mut body,
    );
    let mut resp = match deadline {
        Some(d) => match tokio::time::timeout_at(d, send).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(ProxyError::Timeout {
                    service: cluster.name.clone(),
                });
            }
        },
        None => send.await?,
    };
    // As Envoy's route timeout, the deadline covers the response body too: one still streaming
    // then is cut (the client sees a reset stream, never a short success).
    if let Some(d) = deadline {
        let name = cluster.name.clone();
        resp = resp.map(|b| {
            Tracked::new(b)
                .deadline(d, &name)
                .on_end(move |complete| {
                    if !complete && tokio::time::Instant::now() >= d {
                        tracing::info!(cluster = %name, "route timeout while the response body streamed (UT)");
                    }
                })
                .boxed()
        });
    }
    crate::http::strip_hop_by_hop(resp.headers_mut(), false);
    for ops in f.response_headers() {
        apply_ops(resp.headers_mut(), ops);
    }
    if let (Some(cors), Some(origin)) = (f.cors(), origin)
        && cors.allows(&origin)
    {
        cors_headers(resp.headers_mut(), cors, &origin, false);
    }
    if let Some(c) = hash.and_then(|h| h.set_cookie)
        && let Ok(v) = HeaderValue::try_from(c.header_value())
    {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(resp)
}

/// The path (rewritten when the rule says so) and query to send upstream.
fn upstream_path_and_query(f: &Forward<'_>, uri: &Uri) -> String {
    let path = f.upstream_path(uri.path());
    match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.into_owned(),
    }
}

fn cors_headers(h: &mut HeaderMap, cors: &meshapi::traffic::Cors, origin: &str, preflight: bool) {
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

fn abort_response(abort: &Abort) -> Response<Body> {
    match abort {
        Abort::Http(status) => local(*status, "FI", "fault filter abort"),
        Abort::Grpc(code) => {
            let mut r = local(200, "FI", Bytes::new());
            let h = r.headers_mut();
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
            r
        }
    }
}

/// Sends a copy to a mirror destination; the response is read and dropped, errors are logged
/// at debug level and never reach the client.
fn spawn_mirror(
    shared: &Arc<Shared>,
    snap: &Arc<Snapshot>,
    dest: &DestinationRef,
    port: u16,
    upstream: &Upstream,
    body: Bytes,
) {
    let Some(cluster) = snap.cluster(dest, port) else {
        tracing::debug!(host = %dest.host, "mirror destination has no cluster");
        return;
    };
    let Ok(target) = cluster.pick_target(rand::random()) else {
        return;
    };
    let req = upstream.request(full(body));
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        match crate::pool::send_pooled(&shared, &target, req).await {
            Ok(resp) => {
                let _ = resp.into_body().collect().await;
            }
            Err(e) => tracing::debug!(error = %e, "mirror request failed"),
        }
    });
}

/// Holds one unit of endpoint `i`'s `active` count for LEAST_REQUEST while a try is
/// outstanding (until its response body ends).
struct ActiveGuard(Arc<ClusterState>, usize);

impl ActiveGuard {
    fn new(cluster: &Arc<ClusterState>, i: usize) -> ActiveGuard {
        if let Some(a) = cluster.active.get(i) {
            a.fetch_add(1, Ordering::AcqRel);
        }
        ActiveGuard(Arc::clone(cluster), i)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if let Some(a) = self.0.active.get(self.1) {
            let _ = a.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1));
        }
    }
}

/// How a try ended.
enum Tried {
    Response(Response<Body>),
    Failed(ProxyError, AttemptOutcome),
}

/// A `503 UF` from the endpoint's own proxy (an authenticated mesh peer): it could not connect
/// to its application, so nothing was processed.
fn peer_could_not_connect(r: &Response<Body>) -> bool {
    r.status() == StatusCode::SERVICE_UNAVAILABLE
        && r.headers().get(FLAGS_HEADER).is_some_and(|v| v == "UF")
}

fn grpc_status(h: &HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// Takes a connection slot (HTTP/1.1-style upstreams) or waits for one as a pending request,
/// within `http1MaxPendingRequests`; overflow is an immediate 503 `UO`.
async fn slot(cluster: &ClusterState) -> Result<Option<OwnedSemaphorePermit>, ProxyError> {
    if cluster.multiplexed {
        return Ok(None);
    }
    if let Ok(p) = Arc::clone(&cluster.slots).try_acquire_owned() {
        return Ok(Some(p));
    }
    cluster
        .breaker
        .try_acquire(PoolResource::PendingRequest)
        .map_err(|_| cluster.overflow("pending requests (http1MaxPendingRequests)"))?;
    let p = Arc::clone(&cluster.slots).acquire_owned().await;
    cluster.breaker.release(PoolResource::PendingRequest);
    p.map(Some)
        .map_err(|_| cluster.overflow("connection pool closed"))
}

async fn send_with_retries(
    shared: &Arc<Shared>,
    cluster: &Arc<ClusterState>,
    hash: Option<u64>,
    retries: Option<&RetryPolicy>,
    upstream: &Upstream,
    body: &mut ReqBody,
) -> Result<Response<Body>, ProxyError> {
    let request = cluster
        .breaker
        .acquire_owned(PoolResource::Request)
        .map_err(|_| cluster.overflow("active requests (http2MaxRequests)"))?;
    let max_retries = retries.map_or(0, |r| r.attempts);
    let mut tried: Vec<usize> = Vec::new();
    let mut retry = 0u32;
    // A retry holds one unit of `maxRetries` from its backoff until its try has ended.
    let mut holding_retry = false;
    loop {
        let Some(b) = body.take() else {
            return Err(ProxyError::UpstreamReset {
                service: cluster.name.clone(),
                reason: "request body already sent".into(),
            });
        };
        let exclude: &[usize] = if retries.is_some_and(|r| r.retry_ignore_previous_hosts) {
            &tried
        } else {
            &[]
        };
        let i = match cluster.pick(hash, exclude, rand::random()) {
            Pick::Endpoint(i) => i,
            Pick::Passthrough | Pick::NoHealthy => return Err(cluster.no_healthy()),
        };
        let Some(target) = cluster.target(i) else {
            return Err(cluster.no_healthy());
        };
        tried.push(i);
        let permit = slot(cluster).await?;
        let active = ActiveGuard::new(cluster, i);
        let tried_now = {
            let send = crate::pool::send_pooled(shared, &target, upstream.request(b));
            let per_try = retries.and_then(|r| r.per_try_timeout);
            let res = match per_try {
                Some(t) => match tokio::time::timeout(t, send).await {
                    Ok(r) => r.map_err(Some),
                    Err(_) => Err(None),
                },
                None => send.await.map_err(Some),
            };
            match res {
                Ok(resp) => Tried::Response(resp),
                Err(None) => Tried::Failed(
                    ProxyError::Timeout {
                        service: cluster.name.clone(),
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
        };
        let (outcome, call) = match &tried_now {
            // The endpoint's proxy could not reach its application (`503` flagged `UF`, e.g.
            // the app container died): the request reached no application, so it is retried
            // exactly like a connect failure of our own, on another endpoint.
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
        };
        cluster.record(i, call);
        if std::mem::take(&mut holding_retry) {
            cluster.breaker.release(PoolResource::Retry);
        }
        let retriable = retries.is_some_and(|r| r.should_retry(&outcome));
        let can_retry = retriable && retry < max_retries && body.replayable();
        let can_retry = can_retry && {
            let ok = cluster.breaker.try_acquire(PoolResource::Retry).is_ok();
            if !ok {
                tracing::debug!(cluster = %cluster.name, "retry budget (maxRetries) exhausted");
            }
            ok
        };
        if !can_retry {
            let exhausted = retriable && retry >= max_retries && max_retries > 0;
            return match tried_now {
                Tried::Response(r) => {
                    // The request keeps its connection slot, its active count and its place
                    // in `http2MaxRequests` until the response body ends.
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
            };
        }
        drop(permit);
        drop(active);
        if let Tried::Response(r) = tried_now {
            // Read and drop the failed response so its stream is released.
            let _ = tokio::time::timeout(Duration::from_secs(1), r.into_body().collect()).await;
        }
        retry += 1;
        cluster.retries.fetch_add(1, Ordering::Relaxed);
        let wait = retries.map_or(Duration::ZERO, |r| r.backoff_for(retry, rand::random()));
        holding_retry = true;
        tokio::time::sleep(wait).await;
    }
}
