//! What the proxy reports about the traffic it carries, from one place: every HTTP request
//! and every TCP connection ends in one [`Outcome`] handed to [`Telemetry::complete`], which
//! writes the access log line ([`access_log`]) and the trace span ([`trace`], exported over
//! OTLP/HTTP by [`otlp`]); the metrics of the same request are recorded there too.
//!
//! The data path fills an outcome in three steps: [`RequestRecord::start`] when the request
//! head arrives (request facts, `x-request-id`, trace context), the [`Upstream`] slot the
//! route and retry code fill as they pick a cluster and an endpoint (carried in the request's
//! extensions), and the end of the response body (bytes sent, duration).

pub mod access_log;
pub mod otlp;
pub mod trace;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, HeaderValue, Request, Response};
use meshapi::proxy::SpiffeId;

use crate::body::Tracked;
use crate::context::Context;
use crate::http::Body;
use crate::metrics::Direction;
use crate::reply::FLAGS_HEADER;

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

impl TelemetryCounters {
    /// Prometheus text exposition of the counters.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let rows = [
            (
                "meshproxy_access_log_lines_total",
                "Access log lines written.",
                &self.access_log_written,
            ),
            (
                "meshproxy_access_log_dropped_total",
                "Access log lines dropped because stdout was slower than the traffic.",
                &self.access_log_dropped,
            ),
            (
                "meshproxy_trace_spans_exported_total",
                "Trace spans accepted by the OTLP collector.",
                &self.spans_exported,
            ),
            (
                "meshproxy_trace_spans_dropped_total",
                "Trace spans lost (export queue full, collector down, slow or refusing).",
                &self.spans_dropped,
            ),
        ];
        for (name, help, v) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
    }
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

    /// The single completion hook: one call per HTTP request (when its response body ended
    /// or was dropped) and per TCP connection (when it closed).
    pub fn complete(&self, cfg: &meshapi::telemetry::TelemetryConfig, o: &Outcome) {
        if cfg.access_log.enabled {
            self.access_log
                .write(access_log::format(o, cfg.access_log.encoding));
        }
        if let (Some(span), Some(collector)) = (&o.span, &cfg.tracing.collector) {
            self.spans.submit(
                collector,
                trace::to_otlp(o, span, &self.node, &cfg.tracing),
                &self.node,
            );
        }
    }
}

/// What the route and retry code learn about the upstream of one request or connection;
/// shared with the completion through the request's extensions.
#[derive(Debug, Default, Clone)]
pub struct UpstreamFacts {
    /// The endpoint of the last try (`UPSTREAM_HOST`).
    pub host: Option<SocketAddr>,
    /// Envoy's cluster name (`outbound|8080||backend`, `inbound|8080||`).
    pub cluster: Option<String>,
    /// The name of the route rule that matched (`ROUTE_NAME`).
    pub route: Option<String>,
    /// The identity the upstream was required to present.
    pub peer: Option<String>,
    /// From sending upstream to the response head (`x-envoy-upstream-service-time`).
    pub service_time: Option<Duration>,
}

/// The upstream slot of one request.
#[derive(Debug, Default)]
pub struct Upstream(Mutex<UpstreamFacts>);

impl Upstream {
    /// Updates the facts (a retry overwrites the endpoint).
    pub fn set(&self, f: impl FnOnce(&mut UpstreamFacts)) {
        if let Ok(mut u) = self.0.lock() {
            f(&mut u);
        }
    }

    fn get(&self) -> UpstreamFacts {
        self.0.lock().map(|u| u.clone()).unwrap_or_default()
    }

    /// The slot of `req` (set by [`RequestRecord::start`]); `None` outside a recorded request.
    pub fn of<B>(req: &Request<B>) -> Option<Arc<Upstream>> {
        req.extensions().get::<Arc<Upstream>>().cloned()
    }
}

/// Facts of the downstream connection a request came on.
#[derive(Debug, Clone)]
pub struct Downstream {
    pub remote: SocketAddr,
    /// The address the connection was made to (the VIP outbound, the pod's inbound).
    pub local: Option<SocketAddr>,
    /// The verified peer identity (inbound mTLS).
    pub peer: Option<SpiffeId>,
    /// TLS server name asked for (inbound mTLS).
    pub sni: Option<Arc<str>>,
}

/// The completion record of one HTTP request or TCP connection: what the access log line,
/// the span and the metrics are made of.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub direction: Direction,
    /// Wall-clock start (access log `START_TIME`, span start).
    pub start: SystemTime,
    pub duration: Duration,
    /// `HTTP/1.1`, `HTTP/2` or `TCP`.
    pub protocol: &'static str,
    /// HTTP only: the request facts.
    pub request: Option<RequestFacts>,
    /// HTTP status sent downstream; 0 for TCP or when no response was sent.
    pub response_code: u16,
    /// Envoy response flags (`UF`, `URX`, ...); `-` for none.
    pub response_flags: String,
    /// Envoy's `RESPONSE_CODE_DETAILS` (`via_upstream`, `route_not_found`, ...).
    pub response_code_details: &'static str,
    /// `grpc-status` of the response, when gRPC.
    pub grpc_status: Option<u32>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub downstream: Downstream,
    pub upstream: UpstreamFacts,
    /// The span of this hop, when sampled.
    pub span: Option<trace::SpanIds>,
}

/// The request side of an [`Outcome`].
#[derive(Debug, Clone, Default)]
pub struct RequestFacts {
    pub method: String,
    /// Path and query as received.
    pub path: String,
    pub authority: Option<String>,
    pub user_agent: Option<String>,
    pub x_forwarded_for: Option<String>,
    pub request_id: Option<String>,
    /// Values of the headers custom span tags name.
    pub tag_headers: Vec<(String, String)>,
}

fn header_str(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// One HTTP request being recorded, from its head to the end of its response body.
pub struct RequestRecord {
    ctx: Arc<Context>,
    started: Instant,
    outcome: Outcome,
    upstream: Arc<Upstream>,
}

impl RequestRecord {
    /// Starts recording `req`: creates `x-request-id` when absent, takes or starts the trace
    /// context and rewrites the propagation headers for this hop's span, and puts the
    /// [`Upstream`] slot in the request's extensions.
    pub fn start<B>(
        ctx: &Arc<Context>,
        direction: Direction,
        downstream: &Downstream,
        req: &mut Request<B>,
    ) -> RequestRecord {
        let rt = ctx.runtime.load();
        let tel = &rt.cfg.telemetry;
        let headers = req.headers_mut();
        let request_id = match headers.get(trace::REQUEST_ID) {
            Some(v) => v.to_str().ok().map(str::to_string),
            None => {
                let id = trace::new_request_id();
                if let Ok(v) = HeaderValue::from_str(&id) {
                    headers.insert(trace::REQUEST_ID, v);
                }
                Some(id)
            }
        };
        let span = trace::begin(headers, tel.tracing.sampling_percent);
        let tag_headers = if span.is_some() {
            trace::tag_headers(headers, &tel.tracing)
        } else {
            Vec::new()
        };
        let facts = RequestFacts {
            method: req.method().as_str().to_string(),
            path: req
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
            authority: req
                .uri()
                .authority()
                .map(|a| a.as_str().to_string())
                .or_else(|| header_str(req.headers(), "host")),
            user_agent: header_str(req.headers(), "user-agent"),
            x_forwarded_for: header_str(req.headers(), "x-forwarded-for"),
            request_id,
            tag_headers,
        };
        let upstream = Arc::new(Upstream::default());
        req.extensions_mut().insert(Arc::clone(&upstream));
        RequestRecord {
            ctx: Arc::clone(ctx),
            started: Instant::now(),
            outcome: Outcome {
                direction,
                start: SystemTime::now(),
                duration: Duration::ZERO,
                protocol: protocol(req.version()),
                bytes_received: req
                    .headers()
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .unwrap_or(0),
                request: Some(facts),
                response_code: 0,
                response_flags: "-".into(),
                response_code_details: "-",
                grpc_status: None,
                bytes_sent: 0,
                downstream: downstream.clone(),
                upstream: UpstreamFacts::default(),
                span,
            },
            upstream,
        }
    }

    /// Finishes with the response going downstream; `local` is the response code details of
    /// a local reply made for an error. The record completes when the body has been sent (or
    /// dropped: a client gone mid-body).
    pub fn finish(
        mut self,
        mut resp: Response<Body>,
        local: Option<&'static str>,
    ) -> Response<Body> {
        self.outcome.response_code_details = match (local, resp.headers().get(FLAGS_HEADER)) {
            (Some(details), _) => details,
            (None, Some(f)) if f == "FI" => "fault_filter_abort",
            _ if self.upstream.get().host.is_some() => "via_upstream",
            _ => "direct_response",
        };
        let o = &mut self.outcome;
        o.response_code = resp.status().as_u16();
        if let Some(f) = resp
            .headers()
            .get(FLAGS_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            o.response_flags = f.to_string();
        }
        o.grpc_status = resp
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()?.parse().ok());
        if let Some(t) = self.upstream.get().service_time
            && let Ok(v) = HeaderValue::from_str(&t.as_millis().to_string())
        {
            resp.headers_mut()
                .insert("x-envoy-upstream-service-time", v);
        }
        let sent = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&sent);
        resp.map(move |b| {
            Tracked::new(b)
                .count_into(counted)
                .on_end(move |_complete| {
                    let mut o = self.outcome;
                    o.bytes_sent = sent.load(Ordering::Relaxed);
                    o.duration = self.started.elapsed();
                    o.upstream = self.upstream.get();
                    let rt = self.ctx.runtime.load();
                    self.ctx.telemetry.complete(&rt.cfg.telemetry, &o);
                })
                .boxed()
        })
    }
}

/// One TCP connection being recorded (no request facts, no span).
pub struct ConnectionRecord {
    started: Instant,
    outcome: Outcome,
}

impl ConnectionRecord {
    pub fn start(direction: Direction, downstream: Downstream) -> ConnectionRecord {
        ConnectionRecord {
            started: Instant::now(),
            outcome: Outcome {
                direction,
                start: SystemTime::now(),
                duration: Duration::ZERO,
                protocol: "TCP",
                request: None,
                response_code: 0,
                response_flags: "-".into(),
                response_code_details: "-",
                grpc_status: None,
                bytes_received: 0,
                bytes_sent: 0,
                downstream,
                upstream: UpstreamFacts::default(),
                span: None,
            },
        }
    }

    /// The upstream the connection was sent to.
    pub fn upstream(&mut self, f: impl FnOnce(&mut UpstreamFacts)) {
        f(&mut self.outcome.upstream);
    }

    /// Completes the record: `flags` (`-` when none), bytes from and to the downstream.
    pub fn finish(mut self, ctx: &Context, flags: &str, received: u64, sent: u64) {
        let o = &mut self.outcome;
        o.response_flags = flags.to_string();
        o.bytes_received = received;
        o.bytes_sent = sent;
        o.duration = self.started.elapsed();
        let rt = ctx.runtime.load();
        ctx.telemetry.complete(&rt.cfg.telemetry, o);
    }
}
