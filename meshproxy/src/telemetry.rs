//! One record per finished HTTP request ([`RequestOutcome`]) and per closed TCP connection
//! ([`ConnectionOutcome`]), handed to one hook ([`record_request`], [`record_connection`])
//! that every consumer reads: Istio's standard metrics ([`crate::metrics`]), and access log
//! lines and span ends.
//!
//! The parties are interned: this proxy's own workload per config ([`Local`]), an endpoint's
//! per cluster, a peer proxy's per connection (from the reserved [`PEER_HEADER`] it sends,
//! Istio's metadata exchange), so a request clones `Arc`s and allocates no label set.
//! [`crate::listener::serve_http`] starts the record when a request arrives and wraps the
//! response body in [`Recorded`], which counts the bytes sent and records once when the body
//! ends, fails or is dropped.
//!
//! Besides the metrics, the hook writes the access log line ([`access_log`]) and the trace
//! span ([`trace`], exported over OTLP/HTTP by [`otlp`]) through [`Telemetry`], whose bounded
//! queues never let either slow a request.

pub mod access_log;
pub mod otlp;
pub mod trace;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use meshapi::proxy::{Endpoint, ProxyConfig, SpiffeId};
use meshapi::telemetry::metrics::WorkloadLabels;

use crate::context::Context;
use crate::http::{Body, BoxError};
use crate::metrics::Direction;

/// The request header a client proxy sends its own workload in, to mesh endpoints only (a
/// reserved header: removed from every request that enters a proxy from outside, and before
/// the application sees it). Read only from an mTLS peer whose principal's namespace matches.
pub const PEER_HEADER: &str = meshapi::headers::PEER;

/// Longest label value taken from a peer's [`PEER_HEADER`] (longer ones read `unknown`).
const MAX_PEER_VALUE: usize = 128;

/// One side of a request in Istio's labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Party {
    pub workload: String,
    pub namespace: String,
    pub app: String,
    pub version: String,
    /// SPIFFE ID (without `spiffe://`, as Istio's `*_principal`), or `unknown`.
    pub principal: String,
}

/// The service a request was for (`destination_service*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceLabels {
    /// Its host name (`backend.default.svc.cluster.local`).
    pub host: String,
    pub name: String,
    pub namespace: String,
}

const UNKNOWN: &str = "unknown";

fn or_unknown(s: &str) -> String {
    if s.is_empty() {
        UNKNOWN.to_string()
    } else {
        s.to_string()
    }
}

fn principal(id: Option<&SpiffeId>) -> String {
    id.map_or_else(
        || UNKNOWN.to_string(),
        |id| {
            let s = id.to_string();
            s.strip_prefix("spiffe://").unwrap_or(&s).to_string()
        },
    )
}

impl Party {
    /// Nobody known.
    pub fn unknown() -> Arc<Party> {
        static U: OnceLock<Arc<Party>> = OnceLock::new();
        U.get_or_init(|| {
            Arc::new(Party {
                workload: UNKNOWN.into(),
                namespace: UNKNOWN.into(),
                app: UNKNOWN.into(),
                version: UNKNOWN.into(),
                principal: UNKNOWN.into(),
            })
        })
        .clone()
    }

    fn from_labels(w: &WorkloadLabels, id: Option<&SpiffeId>) -> Party {
        Party {
            workload: or_unknown(&w.name),
            namespace: or_unknown(&w.namespace),
            app: or_unknown(&w.app),
            version: or_unknown(&w.version),
            principal: principal(id),
        }
    }

    /// An endpoint of a cluster: its workload, labels and identity.
    pub fn of_endpoint(e: &Endpoint) -> Party {
        let label = |k: &str| e.labels.get(k).map_or(UNKNOWN, String::as_str).to_string();
        Party {
            workload: e
                .workload
                .as_deref()
                .or(e.labels.get("app").map(String::as_str))
                .map_or_else(|| UNKNOWN.to_string(), str::to_string),
            namespace: e
                .identity
                .as_ref()
                .map_or_else(|| UNKNOWN.to_string(), |i| i.namespace().to_string()),
            app: label("app"),
            version: label("version"),
            principal: principal(e.identity.as_ref()),
        }
    }
}

impl ServiceLabels {
    /// Nothing known (a request no service matched).
    pub fn unknown() -> Arc<ServiceLabels> {
        static U: OnceLock<Arc<ServiceLabels>> = OnceLock::new();
        U.get_or_init(|| {
            Arc::new(ServiceLabels {
                host: UNKNOWN.into(),
                name: UNKNOWN.into(),
                namespace: UNKNOWN.into(),
            })
        })
        .clone()
    }

    /// From a mesh host name: `name.namespace.svc.<domain>` gives its name and namespace;
    /// any other host (a ServiceEntry's) is its own name, namespace `unknown`.
    pub fn of_host(host: &str) -> ServiceLabels {
        let mut parts = host.split('.');
        let (name, namespace) = match (parts.next(), parts.next(), parts.next()) {
            (Some(n), Some(ns), Some("svc")) => (n.to_string(), ns.to_string()),
            _ => (host.to_string(), UNKNOWN.to_string()),
        };
        ServiceLabels {
            host: host.to_string(),
            name,
            namespace,
        }
    }
}

/// This proxy's own side, built once per config.
#[derive(Debug)]
pub struct Local {
    pub party: Arc<Party>,
    /// The service it serves inbound (`destination_service*` of the server side).
    pub service: Arc<ServiceLabels>,
    /// [`PEER_HEADER`]'s value sent to peers.
    pub header: HeaderValue,
}

impl Local {
    pub fn new(cfg: &ProxyConfig) -> Local {
        let w = &cfg.telemetry.metrics.workload;
        let party = Party::from_labels(w, Some(&cfg.identity.spiffe_id));
        let service = if w.service.is_empty() {
            ServiceLabels::unknown()
        } else {
            let ns = if w.namespace.is_empty() {
                cfg.identity.spiffe_id.namespace().to_string()
            } else {
                w.namespace.clone()
            };
            Arc::new(ServiceLabels::of_host(&format!(
                "{}.{ns}.svc.cluster.local",
                w.service
            )))
        };
        let header = encode_peer(&party);
        Local {
            party: Arc::new(party),
            service,
            header,
        }
    }
}

/// `workload=..,namespace=..,app=..,version=..`, values percent-encoded.
fn encode_peer(p: &Party) -> HeaderValue {
    let mut s = String::new();
    for (k, v) in [
        ("workload", &p.workload),
        ("namespace", &p.namespace),
        ("app", &p.app),
        ("version", &p.version),
    ] {
        if !s.is_empty() {
            s.push(',');
        }
        s.push_str(k);
        s.push('=');
        for b in v.bytes() {
            if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
                s.push(char::from(b));
            } else {
                s.push_str(&format!("%{b:02X}"));
            }
        }
    }
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn decode_value(v: &str) -> Option<String> {
    let mut out = Vec::with_capacity(v.len());
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = v.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let s = String::from_utf8(out).ok()?;
    (!s.is_empty() && s.len() <= MAX_PEER_VALUE).then_some(s)
}

/// The client side of an inbound request: the peer's principal from its certificate, and
/// its workload from its [`PEER_HEADER`] when the peer is authenticated and the header's
/// namespace is its principal's.
pub fn peer_party(identity: Option<&SpiffeId>, header: Option<&HeaderValue>) -> Party {
    let mut p = Party {
        principal: principal(identity),
        ..(*Party::unknown()).clone()
    };
    let Some(id) = identity else {
        return p;
    };
    p.namespace = id.namespace().to_string();
    let Some(h) = header.and_then(|h| h.to_str().ok()) else {
        return p;
    };
    let mut got = Party {
        principal: p.principal.clone(),
        ..(*Party::unknown()).clone()
    };
    for kv in h.split(',') {
        let Some((k, v)) = kv.split_once('=') else {
            return p;
        };
        let v = decode_value(v).unwrap_or_else(|| UNKNOWN.to_string());
        match k {
            "workload" => got.workload = v,
            "namespace" => got.namespace = v,
            "app" => got.app = v,
            "version" => got.version = v,
            _ => {}
        }
    }
    if got.namespace == p.namespace { got } else { p }
}

/// The peer of one inbound connection, parsed once from the first request's header.
#[derive(Debug, Default)]
pub struct PeerCache {
    seen: OnceLock<(Option<HeaderValue>, Arc<Party>)>,
}

impl PeerCache {
    /// The client party for a request on this connection.
    pub fn get(&self, identity: Option<&SpiffeId>, headers: &HeaderMap) -> Arc<Party> {
        let h = headers.get(PEER_HEADER);
        let (v, p) = self
            .seen
            .get_or_init(|| (h.cloned(), Arc::new(peer_party(identity, h))));
        if v.as_ref() == h {
            p.clone()
        } else {
            Arc::new(peer_party(identity, h))
        }
    }
}

/// Response flags are one of a fixed set (bounded label values): anything else is `-`.
pub fn intern_flags(v: Option<&HeaderValue>) -> &'static str {
    v.and_then(|v| v.to_str().ok()).map_or("-", intern_flag)
}

/// `flag` if it is one of Envoy's response flags this proxy sets, else `-`.
pub fn intern_flag(flag: &str) -> &'static str {
    const KNOWN: [&str; 16] = [
        "UF", "UH", "NR", "UT", "UO", "UR", "DPE", "DC", "RBAC", "URX", "FI", "DI", "UAEX", "UC",
        "LR", "DF",
    ];
    KNOWN.iter().find(|k| **k == flag).copied().unwrap_or("-")
}

/// `grpc-status` when present and one of gRPC's codes (0 to 16).
pub fn grpc_status(h: &HeaderMap) -> Option<u8> {
    h.get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<u8>()
        .ok()
        .filter(|c| *c <= 16)
}

/// The bytes of a request body of unannounced length (chunked), counted as the proxy reads
/// it ([`crate::body::BodyFault::for_request`]): the record puts it in the request's
/// extensions when it starts and reads it when the response ends.
#[derive(Debug, Clone, Default)]
pub struct BodyBytes(Arc<AtomicU64>);

impl BodyBytes {
    pub fn add(&self, n: usize) {
        self.0.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The request facts an access log line or a span needs beyond the metrics' (header values
/// and the URI share the request's buffers: cloning them copies no bytes).
#[derive(Debug, Clone, Default)]
pub struct RequestFacts {
    pub uri: http::Uri,
    pub authority: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
    pub request_id: Option<HeaderValue>,
    pub forwarded_for: Option<HeaderValue>,
    /// Values of the request headers custom span tags name (sampled requests only).
    pub tag_headers: Vec<(String, String)>,
}

/// What the access log and the span say about the upstream beyond [`Upstream`]: the route
/// rule's name and the upstream service time (outbound, set by the route), or the application
/// an inbound request went to. Carried in the response's extensions.
#[derive(Debug, Clone, Default)]
pub struct UpstreamFacts {
    /// `UPSTREAM_HOST` when there is no [`Upstream`] (inbound: the application).
    pub host: Option<SocketAddr>,
    /// `UPSTREAM_CLUSTER` when there is no [`Upstream`] (inbound: `inbound|<port>||`).
    pub cluster: Option<String>,
    /// The name of the route rule that matched (`ROUTE_NAME`).
    pub route: Option<String>,
    /// From sending upstream to the response head (`x-envoy-upstream-service-time`).
    pub service_time: Option<Duration>,
}

/// Facts of the downstream connection a request or connection came on.
#[derive(Debug, Clone)]
pub struct Downstream {
    pub remote: SocketAddr,
    /// The address the connection was made to (the VIP outbound, the pod's port inbound).
    pub local: Option<SocketAddr>,
    /// The verified peer identity (inbound mTLS).
    pub peer: Option<SpiffeId>,
    /// TLS server name asked for (inbound mTLS).
    pub sni: Option<Arc<str>>,
}

/// The endpoint a request or connection went to.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub cluster: Arc<crate::traffic::ClusterState>,
    /// Index of the endpoint in the cluster.
    pub endpoint: usize,
}

impl Upstream {
    /// `upstream_host`.
    pub fn host(&self) -> Option<std::net::SocketAddr> {
        self.cluster.endpoints.get(self.endpoint).map(|e| e.address)
    }

    /// The endpoint as the destination party.
    pub fn party(&self) -> Arc<Party> {
        self.cluster
            .party(self.endpoint)
            .unwrap_or_else(Party::unknown)
    }
}

/// One finished HTTP request, as both proxies' consumers read it.
#[derive(Debug, Clone)]
pub struct RequestOutcome {
    pub direction: Direction,
    /// Wall-clock start (access logs) and elapsed time to the response's last byte.
    pub start: SystemTime,
    pub duration: Duration,
    pub method: http::Method,
    pub version: http::Version,
    /// `request_protocol`: `grpc` for a gRPC request, else `http`.
    pub grpc: bool,
    pub status: u16,
    /// `grpc-status` of the response (headers or trailers).
    pub grpc_status: Option<u8>,
    pub response_flags: &'static str,
    /// Request body bytes: its announced length, or the bytes read of a chunked body.
    pub bytes_received: u64,
    /// Response body bytes sent to the downstream.
    pub bytes_sent: u64,
    pub source: Arc<Party>,
    pub destination: Arc<Party>,
    pub service: Arc<ServiceLabels>,
    /// Whether the connection to the peer proxy is mutual TLS (destination side).
    pub mtls: bool,
    /// The endpoint (client side, once one answered).
    pub upstream: Option<Upstream>,
    pub request: RequestFacts,
    /// Envoy's `RESPONSE_CODE_DETAILS` (`via_upstream`, `route_not_found`, ...).
    pub details: &'static str,
    pub facts: UpstreamFacts,
    pub downstream: Arc<Downstream>,
    /// This hop's span, when the trace is sampled.
    pub span: Option<trace::SpanIds>,
}

/// One closed TCP connection.
#[derive(Debug, Clone)]
pub struct ConnectionOutcome {
    pub direction: Direction,
    pub start: SystemTime,
    pub duration: Duration,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub response_flags: &'static str,
    /// Why a connection never reached its upstream (`rbac_access_denied`, ...), else `-`.
    pub details: &'static str,
    pub source: Arc<Party>,
    pub destination: Arc<Party>,
    pub service: Arc<ServiceLabels>,
    pub mtls: bool,
    pub upstream: Option<Upstream>,
    /// For the access log: the downstream connection and, inbound, the application.
    pub downstream: Option<Arc<Downstream>>,
    pub facts: UpstreamFacts,
}

impl ConnectionOutcome {
    /// A connection between `source` and `destination`, starting now.
    pub fn start(
        direction: Direction,
        source: Arc<Party>,
        destination: Arc<Party>,
        service: Arc<ServiceLabels>,
    ) -> ConnectionOutcome {
        ConnectionOutcome {
            direction,
            start: SystemTime::now(),
            duration: Duration::ZERO,
            bytes_received: 0,
            bytes_sent: 0,
            response_flags: "-",
            details: "-",
            source,
            destination,
            service,
            mtls: false,
            upstream: None,
            downstream: None,
            facts: UpstreamFacts::default(),
        }
    }

    /// The byte counts of `copy_bidirectional(downstream, upstream)`: received from the
    /// downstream, sent to it.
    pub fn bytes(&mut self, copied: Option<(u64, u64)>) {
        if let Some((from_down, to_down)) = copied {
            self.bytes_received = from_down;
            self.bytes_sent = to_down;
        }
    }

    /// The record as the connection closes.
    pub fn finish(mut self) -> ConnectionOutcome {
        self.duration = self.start.elapsed().unwrap_or_default();
        self
    }
}

/// Counters of what telemetry itself could not deliver (exported on `/stats/prometheus`).
#[derive(Debug, Default)]
pub struct TelemetryCounters {
    /// Access log lines written to the sink.
    pub access_log_written: AtomicU64,
    /// Access log lines dropped because the sink was slower than the traffic.
    pub access_log_dropped: AtomicU64,
    /// Spans the collector accepted.
    pub spans_exported: AtomicU64,
    /// Spans lost: the export queue was full, or the collector was down, slow or refused them.
    pub spans_dropped: AtomicU64,
}

/// The telemetry sinks of one proxy: the access log writer and the span exporter, both fed
/// through bounded queues so that neither can slow a request.
pub struct Telemetry {
    pub counters: Arc<TelemetryCounters>,
    access_log: access_log::Writer,
    spans: otlp::Exporter,
    /// This proxy, as spans name it.
    pub node: Arc<trace::Node>,
}

impl Telemetry {
    /// Starts the writer and exporter tasks; access log lines go to `sink` (stdout when
    /// `None`).
    pub fn start(cfg: &meshapi::proxy::ProxyConfig, sink: Option<access_log::Sink>) -> Telemetry {
        let counters = Arc::new(TelemetryCounters::default());
        let sink = sink.unwrap_or_else(|| Box::pin(tokio::io::stdout()));
        Telemetry {
            access_log: access_log::Writer::spawn(sink, Arc::clone(&counters)),
            spans: otlp::Exporter::spawn(Arc::clone(&counters)),
            node: Arc::new(trace::Node::new(&cfg.identity.spiffe_id)),
            counters,
        }
    }

    /// A request finished: its access log line and span, as `cfg` says.
    pub fn request(&self, cfg: &meshapi::telemetry::TelemetryConfig, o: &RequestOutcome) {
        let span = o.span.zip(cfg.tracing.collector.as_ref());
        if !cfg.access_log.enabled && span.is_none() {
            return;
        }
        access_log::with_request_line(o, |line| {
            if cfg.access_log.enabled {
                self.access_log
                    .write(|out| line.write(cfg.access_log.encoding, out));
            }
            if let Some((ids, collector)) = span {
                let s = trace::to_otlp(o, &line.to_owned_line(), &ids, &self.node, &cfg.tracing);
                self.spans.submit(collector, s, &self.node);
            }
        });
    }

    /// A TCP connection closed: its access log line.
    pub fn connection(&self, cfg: &meshapi::telemetry::TelemetryConfig, o: &ConnectionOutcome) {
        if cfg.access_log.enabled {
            self.access_log.write(|out| {
                access_log::write_connection_line(o, cfg.access_log.encoding, out);
            });
        }
    }
}

/// The hook: a request finished.
pub fn record_request(ctx: &Context, o: &RequestOutcome) {
    let rt = ctx.runtime.load();
    ctx.metrics.istio.request(&rt.telemetry, o);
    ctx.telemetry.request(&rt.cfg.telemetry, o);
}

/// The hook: a TCP connection opened (Istio counts opened connections at once).
pub fn connection_opened(ctx: &Context, o: &ConnectionOutcome) {
    ctx.metrics
        .istio
        .tcp_opened(&ctx.runtime.load().telemetry, o);
}

/// The hook: a TCP connection closed.
pub fn record_connection(ctx: &Context, o: &ConnectionOutcome) {
    let rt = ctx.runtime.load();
    ctx.metrics.istio.tcp_closed(&rt.telemetry, o);
    ctx.telemetry.connection(&rt.cfg.telemetry, o);
}

/// The hook: a TCP connection that never reached its upstream (authorization refused it, no
/// route or endpoint, the endpoint or application could not be reached, overflow). As Envoy
/// counts it: opened and closed at once, with the error's response flag, no bytes, and its
/// access log line.
pub fn refused_connection(ctx: &Context, mut o: ConnectionOutcome, e: &crate::reply::ProxyError) {
    o.response_flags = intern_flag(e.status_and_flag().1);
    o.details = e.details();
    connection_opened(ctx, &o);
    record_connection(ctx, &o.finish());
}

/// What one downstream connection tells about the parties of its requests.
#[derive(Debug)]
pub enum Side {
    /// A client of this proxy: the service its VIP names.
    Outbound { service: Arc<ServiceLabels> },
    /// A peer proxy or plaintext client: its certificate's identity and whether it is mTLS.
    Inbound {
        identity: Option<SpiffeId>,
        mtls: bool,
        peers: PeerCache,
    },
}

impl Side {
    pub fn direction(&self) -> Direction {
        match self {
            Side::Outbound { .. } => Direction::Outbound,
            Side::Inbound { .. } => Direction::Inbound,
        }
    }

    /// The record of a request as it arrives (the response fills in the rest): creates its
    /// `x-request-id` when absent and takes or starts its trace context, rewriting the
    /// propagation headers for this hop's span ([`trace::begin`]).
    pub fn start(
        &self,
        ctx: &Arc<Context>,
        downstream: &Arc<Downstream>,
        req: &mut http::Request<hyper::body::Incoming>,
    ) -> Box<Pending> {
        let rt = ctx.runtime.load();
        let tracing = &rt.cfg.telemetry.tracing;
        let headers = req.headers_mut();
        if !headers.contains_key(trace::REQUEST_ID)
            && let Ok(v) = HeaderValue::from_str(&trace::new_request_id())
        {
            headers.insert(trace::REQUEST_ID, v);
        }
        let span = trace::begin(headers, tracing.sampling_percent);
        let tag_headers = match span {
            Some(_) => trace::tag_headers(headers, tracing),
            None => Vec::new(),
        };
        let local = &rt.telemetry.local;
        let (source, destination, service, mtls) = match self {
            Side::Outbound { service } => (
                local.party.clone(),
                Party::unknown(),
                service.clone(),
                false,
            ),
            Side::Inbound {
                identity,
                mtls,
                peers,
            } => (
                peers.get(identity.as_ref(), req.headers()),
                local.party.clone(),
                local.service.clone(),
                *mtls,
            ),
        };
        let h = req.headers();
        let grpc = h
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let announced = req.body().size_hint().exact();
        let received = announced.is_none().then(BodyBytes::default);
        let (uri, authority, user_agent, request_id, forwarded_for) = (
            req.uri().clone(),
            h.get(http::header::HOST).cloned(),
            h.get(http::header::USER_AGENT).cloned(),
            h.get(trace::REQUEST_ID).cloned(),
            h.get("x-forwarded-for").cloned(),
        );
        if let Some(r) = &received {
            req.extensions_mut().insert(r.clone());
        }
        Box::new(Pending {
            ctx: Arc::clone(ctx),
            started: Instant::now(),
            received,
            outcome: RequestOutcome {
                direction: self.direction(),
                start: SystemTime::now(),
                duration: Duration::ZERO,
                method: req.method().clone(),
                version: req.version(),
                grpc,
                status: 0,
                grpc_status: None,
                response_flags: "-",
                bytes_received: announced.unwrap_or(0),
                bytes_sent: 0,
                source,
                destination,
                service,
                mtls,
                upstream: None,
                request: RequestFacts {
                    uri,
                    authority,
                    user_agent,
                    request_id,
                    forwarded_for,
                    tag_headers,
                },
                details: "-",
                facts: UpstreamFacts::default(),
                downstream: Arc::clone(downstream),
                span,
            },
        })
    }
}

impl Pending {
    /// Takes the response's facts (status, flags, gRPC status, the endpoint) and wraps its
    /// body so the request is recorded when the body ends. `local` is the response code
    /// details of a local reply made for an error.
    pub fn respond(
        mut self: Box<Self>,
        mut resp: http::Response<Body>,
        local: Option<&'static str>,
    ) -> http::Response<Body> {
        let o = &mut self.outcome;
        o.status = resp.status().as_u16();
        let flags = resp.headers().get(crate::reply::FLAGS_HEADER);
        o.response_flags = intern_flags(flags);
        let injected = flags.is_some_and(|f| f == "FI");
        o.grpc_status = grpc_status(resp.headers());
        if let Some(up) = resp.extensions_mut().remove::<Upstream>() {
            o.destination = up.party();
            o.upstream = Some(up);
        }
        if let Some(f) = resp.extensions_mut().remove::<UpstreamFacts>() {
            o.facts = f;
        }
        o.details = match local {
            Some(details) => details,
            None if injected => "fault_filter_abort",
            _ if o.upstream.is_some() || o.facts.host.is_some() => "via_upstream",
            _ => "direct_response",
        };
        if let Some(t) = o.facts.service_time
            && let Ok(v) = HeaderValue::try_from(t.as_millis().to_string())
        {
            resp.headers_mut()
                .insert("x-envoy-upstream-service-time", v);
        }
        resp.map(|b| Recorded::wrap(b, self))
    }
}

/// A request in flight: what is known when it arrives, completed by [`Recorded`].
pub struct Pending {
    pub ctx: Arc<Context>,
    pub started: Instant,
    /// The request body's bytes as read, when its length was not announced.
    pub received: Option<BodyBytes>,
    pub outcome: RequestOutcome,
}

/// A response body that records its request once, when it ends, fails or is dropped.
pub struct Recorded {
    inner: Body,
    pending: Option<Box<Pending>>,
}

impl Recorded {
    /// Wraps `inner`; `pending` is recorded with the bytes sent when it ends.
    pub fn wrap(inner: Body, pending: Box<Pending>) -> Body {
        http_body_util::BodyExt::boxed(Recorded {
            inner,
            pending: Some(pending),
        })
    }

    fn finish(&mut self) {
        if let Some(mut p) = self.pending.take() {
            p.outcome.duration = p.started.elapsed();
            if let Some(r) = &p.received {
                p.outcome.bytes_received = r.get();
            }
            record_request(&p.ctx, &p.outcome);
        }
    }
}

impl HttpBody for Recorded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(p) = this.pending.as_mut() {
                    if let Some(d) = f.data_ref() {
                        p.outcome.bytes_sent += d.len() as u64;
                    } else if let Some(t) = f.trailers_ref()
                        && let Some(g) = grpc_status(t)
                    {
                        p.outcome.grpc_status = Some(g);
                    }
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            None | Some(Err(_)) => this.finish(),
        }
        std::task::Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        s.parse().expect("spiffe id")
    }

    #[test]
    fn peer_header_round_trips_and_is_checked_against_the_principal() {
        let me = Party {
            workload: "frontend-v1".into(),
            namespace: "default".into(),
            app: "front end,=%".into(),
            version: "v1".into(),
            principal: "x".into(),
        };
        let h = encode_peer(&me);
        let peer = id("spiffe://cluster.local/ns/default/sa/frontend");
        let got = peer_party(Some(&peer), Some(&h));
        assert_eq!(got.app, "front end,=%");
        assert_eq!(got.workload, "frontend-v1");
        assert_eq!(got.principal, "cluster.local/ns/default/sa/frontend");
        // Another namespace than the certificate's: the header is not believed.
        let other = id("spiffe://cluster.local/ns/prod/sa/frontend");
        let got = peer_party(Some(&other), Some(&h));
        assert_eq!(got.app, "unknown");
        assert_eq!(got.namespace, "prod");
        // No certificate: nothing from the header.
        assert_eq!(peer_party(None, Some(&h)).workload, "unknown");
    }

    #[test]
    fn flags_and_grpc_status_are_bounded() {
        assert_eq!(intern_flags(Some(&HeaderValue::from_static("UO"))), "UO");
        assert_eq!(intern_flags(Some(&HeaderValue::from_static("evil"))), "-");
        let mut h = HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static("14"));
        assert_eq!(grpc_status(&h), Some(14));
        h.insert("grpc-status", HeaderValue::from_static("99"));
        assert_eq!(grpc_status(&h), None);
    }

    #[test]
    fn service_labels_from_hosts() {
        let s = ServiceLabels::of_host("backend.default.svc.cluster.local");
        assert_eq!(
            (s.name.as_str(), s.namespace.as_str()),
            ("backend", "default")
        );
        let s = ServiceLabels::of_host("api.example.com");
        assert_eq!(
            (s.name.as_str(), s.namespace.as_str()),
            ("api.example.com", "unknown")
        );
    }
}
