//! `/stats/prometheus`: Istio's standard metrics ([`IstioMetrics`]: `istio_requests_total`,
//! the request duration and size histograms, the TCP byte and connection counters, with
//! Istio's names, labels and buckets) and the proxy's own health (`meshproxy_*`: connections,
//! requests, TLS failures, local replies, config revision and reloads, authorization
//! decisions), encoded by `prometheus-client` in Prometheus' text format 0.0.4.
//!
//! Label sets are built from interned parties ([`crate::telemetry::Party`]), so recording a
//! request allocates nothing once its series exists; label values are escaped; the values a
//! peer controls are bounded (response flags and gRPC codes from fixed sets, a peer's
//! workload only from an authenticated peer, see [`crate::telemetry::peer_party`]).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use meshapi::telemetry::metrics::{ISTIO_LABELS, MetricName, MetricsConfig, ReporterMode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelSetEncoder,
    LabelValueEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::telemetry::{ConnectionOutcome, Party, RequestOutcome, ServiceLabels};

/// Traffic direction as seen by this proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    fn idx(self) -> usize {
        match self {
            Direction::Inbound => 0,
            Direction::Outbound => 1,
        }
    }
}

/// Istio's `istio_request_duration_milliseconds` buckets.
pub const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Istio's `istio_request_bytes` / `istio_response_bytes` buckets (1 to 10^8, by 10).
pub const BYTES_BUCKETS: [f64; 9] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS_MS)
}

fn bytes_histogram() -> Histogram {
    Histogram::new(BYTES_BUCKETS)
}

/// `reporter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    Source,
    Destination,
}

impl Reporter {
    fn of(d: Direction) -> Reporter {
        match d {
            Direction::Outbound => Reporter::Source,
            Direction::Inbound => Reporter::Destination,
        }
    }
}

/// Which labels one metric carries for one reporter (Telemetry overrides): removed Istio
/// labels and added fixed ones. Compared by content, so equal shapes from two configs are
/// one series.
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash)]
pub struct Shape {
    removed: [bool; ISTIO_LABELS.len()],
    added: Vec<(String, String)>,
}

/// The shapes of the eight metrics for both reporters; `None` is a disabled metric.
#[derive(Debug, Clone)]
pub struct Shapes {
    by: [[Option<Arc<Shape>>; 2]; 8],
}

impl Shapes {
    /// Applies the overrides in order over Istio's defaults.
    pub fn new(cfg: &MetricsConfig) -> Shapes {
        let mut by: [[Option<Shape>; 2]; 8] = Default::default();
        for row in &mut by {
            for cell in row.iter_mut() {
                *cell = Some(Shape::default());
            }
        }
        for o in &cfg.overrides {
            for (m, metric) in MetricName::EACH.iter().enumerate() {
                if !o.metric.covers(*metric) {
                    continue;
                }
                for (r, reporter) in [ReporterMode::Client, ReporterMode::Server]
                    .iter()
                    .enumerate()
                {
                    if o.mode != ReporterMode::ClientAndServer && o.mode != *reporter {
                        continue;
                    }
                    let cell = &mut by[m][r];
                    match o.disabled {
                        Some(true) => *cell = None,
                        Some(false) if cell.is_none() => *cell = Some(Shape::default()),
                        _ => {}
                    }
                    let Some(shape) = cell else { continue };
                    for t in &o.remove_tags {
                        if let Some(i) = ISTIO_LABELS.iter().position(|l| l == t) {
                            shape.removed[i] = true;
                        }
                        shape.added.retain(|(k, _)| k != t);
                    }
                    for (k, v) in &o.tags {
                        if let Some(i) = ISTIO_LABELS.iter().position(|l| l == k) {
                            shape.removed[i] = true;
                        }
                        shape.added.retain(|(a, _)| a != k);
                        shape.added.push((k.clone(), v.clone()));
                    }
                }
            }
        }
        Shapes {
            by: by.map(|row| row.map(|c| c.map(Arc::new))),
        }
    }

    /// Whether every metric is disabled for both reporters.
    pub fn all_disabled(&self) -> bool {
        self.by.iter().flatten().all(Option::is_none)
    }

    fn get(&self, metric: usize, reporter: Reporter) -> Option<&Arc<Shape>> {
        let r = match reporter {
            Reporter::Source => 0,
            Reporter::Destination => 1,
        };
        self.by[metric][r].as_ref()
    }
}

/// The label set of every Istio series: interned parties and a few small values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Labels {
    reporter: Reporter,
    source: Arc<Party>,
    destination: Arc<Party>,
    service: Arc<ServiceLabels>,
    /// `http`, `grpc` or `tcp` (TCP series carry no response code).
    protocol: &'static str,
    code: u16,
    grpc: Option<u8>,
    flags: &'static str,
    mtls: bool,
    shape: Arc<Shape>,
}

/// A label value written with the exposition format's escapes (`\\`, `\"`, `\n`).
struct Escaped<'a>(&'a str);

impl EncodeLabelValue for Escaped<'_> {
    fn encode(&self, e: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let mut start = 0;
        for (i, b) in self.0.bytes().enumerate() {
            let esc = match b {
                b'\\' => "\\\\",
                b'"' => "\\\"",
                b'\n' => "\\n",
                _ => continue,
            };
            e.write_str(&self.0[start..i])?;
            e.write_str(esc)?;
            start = i + 1;
        }
        e.write_str(&self.0[start..])
    }
}

fn put(enc: &mut LabelSetEncoder, key: &str, value: &str) -> Result<(), std::fmt::Error> {
    use prometheus_client::encoding::EncodeLabel;
    (key, Escaped(value)).encode(enc.encode_label())
}

impl EncodeLabelSet for Labels {
    fn encode(&self, enc: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let (s, d, svc) = (&*self.source, &*self.destination, &*self.service);
        let code = self.code.to_string();
        let grpc = self.grpc.map_or_else(String::new, |g| g.to_string());
        let security = match (self.reporter, self.mtls) {
            (Reporter::Source, _) => "unknown",
            (Reporter::Destination, true) => "mutual_tls",
            (Reporter::Destination, false) => "none",
        };
        let values: [&str; ISTIO_LABELS.len()] = [
            match self.reporter {
                Reporter::Source => "source",
                Reporter::Destination => "destination",
            },
            &s.workload,
            &s.namespace,
            &s.principal,
            &s.app,
            &s.version,
            &d.workload,
            &d.namespace,
            &d.principal,
            &d.app,
            &d.version,
            &svc.host,
            &svc.name,
            &svc.namespace,
            self.protocol,
            &code,
            &grpc,
            self.flags,
            security,
        ];
        let tcp = self.protocol == "tcp";
        for (i, (k, v)) in ISTIO_LABELS.iter().zip(values).enumerate() {
            if self.shape.removed[i]
                || (tcp && matches!(*k, "response_code" | "grpc_response_status"))
            {
                continue;
            }
            put(enc, k, v)?;
        }
        for (k, v) in &self.shape.added {
            put(enc, k, v)?;
        }
        Ok(())
    }
}

type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// Istio's eight standard metrics.
#[derive(Debug)]
pub struct IstioMetrics {
    requests: Family<Labels, Counter>,
    duration: HistogramFamily,
    request_bytes: HistogramFamily,
    response_bytes: HistogramFamily,
    tcp_opened: Family<Labels, Counter>,
    tcp_closed: Family<Labels, Counter>,
    tcp_sent: Family<Labels, Counter>,
    tcp_received: Family<Labels, Counter>,
}

impl Default for IstioMetrics {
    fn default() -> Self {
        IstioMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            request_bytes: Family::new_with_constructor(bytes_histogram),
            response_bytes: Family::new_with_constructor(bytes_histogram),
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
            tcp_sent: Family::default(),
            tcp_received: Family::default(),
        }
    }
}

/// The per-config side of recording: this proxy's party and the metric shapes.
#[derive(Debug)]
pub struct TelemetryState {
    pub local: crate::telemetry::Local,
    pub shapes: Shapes,
}

impl TelemetryState {
    pub fn new(cfg: &meshapi::proxy::ProxyConfig) -> TelemetryState {
        TelemetryState {
            local: crate::telemetry::Local::new(cfg),
            shapes: Shapes::new(&cfg.telemetry.metrics),
        }
    }
}

impl IstioMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "istio_requests",
            "Requests, by source and destination workload, response code and flags",
            self.requests.clone(),
        );
        r.register(
            "istio_request_duration_milliseconds",
            "Time from the request's arrival to the response's last byte, in milliseconds",
            self.duration.clone(),
        );
        r.register(
            "istio_request_bytes",
            "Request body sizes, in bytes",
            self.request_bytes.clone(),
        );
        r.register(
            "istio_response_bytes",
            "Response body sizes, in bytes",
            self.response_bytes.clone(),
        );
        r.register(
            "istio_tcp_sent_bytes",
            "Bytes sent to the downstream on TCP connections",
            self.tcp_sent.clone(),
        );
        r.register(
            "istio_tcp_received_bytes",
            "Bytes received from the downstream on TCP connections",
            self.tcp_received.clone(),
        );
        r.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            self.tcp_opened.clone(),
        );
        r.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            self.tcp_closed.clone(),
        );
    }

    fn labels(
        t: &TelemetryState,
        reporter: Reporter,
        metric: usize,
        base: &Labels,
    ) -> Option<Labels> {
        let shape = t.shapes.get(metric, reporter)?;
        let mut l = base.clone();
        l.shape = shape.clone();
        Some(l)
    }

    /// Records one finished request.
    pub fn request(&self, t: &TelemetryState, o: &RequestOutcome) {
        let reporter = Reporter::of(o.direction);
        let base = Labels {
            reporter,
            source: o.source.clone(),
            destination: o.destination.clone(),
            service: o.service.clone(),
            protocol: if o.grpc { "grpc" } else { "http" },
            code: o.status,
            grpc: o.grpc_status,
            flags: o.response_flags,
            mtls: o.mtls,
            shape: Arc::default(),
        };
        if let Some(l) = Self::labels(t, reporter, 0, &base) {
            self.requests.get_or_create(&l).inc();
        }
        if let Some(l) = Self::labels(t, reporter, 1, &base) {
            let ms = o.duration.as_secs_f64() * 1000.0;
            self.duration.get_or_create(&l).observe(ms);
        }
        if let Some(l) = Self::labels(t, reporter, 2, &base) {
            self.request_bytes
                .get_or_create(&l)
                .observe(o.bytes_received as f64);
        }
        if let Some(l) = Self::labels(t, reporter, 3, &base) {
            self.response_bytes
                .get_or_create(&l)
                .observe(o.bytes_sent as f64);
        }
    }

    fn tcp_labels(o: &ConnectionOutcome) -> Labels {
        Labels {
            reporter: Reporter::of(o.direction),
            source: o.source.clone(),
            destination: o.destination.clone(),
            service: o.service.clone(),
            protocol: "tcp",
            code: 0,
            grpc: None,
            flags: o.response_flags,
            mtls: o.mtls,
            shape: Arc::default(),
        }
    }

    /// Records a TCP connection as opened.
    pub fn tcp_opened(&self, t: &TelemetryState, o: &ConnectionOutcome) {
        let base = Self::tcp_labels(o);
        if let Some(l) = Self::labels(t, base.reporter, 4, &base) {
            self.tcp_opened.get_or_create(&l).inc();
        }
    }

    /// Records a TCP connection as closed, with its bytes.
    pub fn tcp_closed(&self, t: &TelemetryState, o: &ConnectionOutcome) {
        let base = Self::tcp_labels(o);
        if let Some(l) = Self::labels(t, base.reporter, 5, &base) {
            self.tcp_closed.get_or_create(&l).inc();
        }
        if let Some(l) = Self::labels(t, base.reporter, 6, &base) {
            self.tcp_sent.get_or_create(&l).inc_by(o.bytes_sent);
        }
        if let Some(l) = Self::labels(t, base.reporter, 7, &base) {
            self.tcp_received.get_or_create(&l).inc_by(o.bytes_received);
        }
    }
}

/// The proxy's own counters; cheap relaxed atomics, encoded at scrape time.
#[derive(Debug, Default)]
pub struct Health {
    connections: [AtomicU64; 2],
    requests: [AtomicU64; 2],
    tls_failures: [AtomicU64; 2],
    local_responses: [AtomicU64; 2],
    /// Requests refused for the downstream's fault, by direction and flag (`DPE`, `DC`).
    downstream_errors: [[AtomicU64; 2]; 2],
    /// Plaintext connections refused by a STRICT port (or TLS refused by DISABLE).
    pub mode_rejected: AtomicU64,
    /// Connections to published ports from outside the mesh (the edge listener).
    pub edge_connections: AtomicU64,
    /// Captured outbound connections to destinations outside the registry passed through
    /// (`ALLOW_ANY`).
    pub passthrough: AtomicU64,
    /// Captured outbound connections to destinations outside the registry refused
    /// (`REGISTRY_ONLY`).
    pub registry_blocked: AtomicU64,
    /// Accepted config reloads.
    pub reloads_ok: AtomicU64,
    /// Refused (invalid) config reloads.
    pub reloads_rejected: AtomicU64,
    /// Revision of the config being served.
    pub config_revision: AtomicU64,
}

/// Every metric of one proxy.
#[derive(Debug)]
pub struct Metrics {
    health: Arc<Health>,
    /// Istio's standard metrics.
    pub istio: IstioMetrics,
    /// Authorization decisions by policy.
    pub authz: Arc<crate::authz::AuthzCounters>,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let health = Arc::new(Health::default());
        let istio = IstioMetrics::default();
        let authz = Arc::new(crate::authz::AuthzCounters::default());
        let mut registry = Registry::default();
        istio.register(&mut registry);
        registry.register_collector(Box::new(HealthCollector(health.clone())));
        registry.register_collector(Box::new(AuthzCollector(authz.clone())));
        Metrics {
            health,
            istio,
            authz,
            registry,
        }
    }
}

/// Encodes the authorization decisions at scrape time.
#[derive(Debug)]
struct AuthzCollector(Arc<crate::authz::AuthzCounters>);

impl Collector for AuthzCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(&mut enc)
    }
}

impl std::ops::Deref for Metrics {
    type Target = Health;

    fn deref(&self) -> &Health {
        &self.health
    }
}

impl Metrics {
    pub fn connection(&self, d: Direction) {
        self.health.connections[d.idx()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn request(&self, d: Direction) {
        self.health.requests[d.idx()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn tls_failure(&self, d: Direction) {
        self.health.tls_failures[d.idx()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn local_response(&self, d: Direction) {
        self.health.local_responses[d.idx()].fetch_add(1, Ordering::Relaxed);
    }

    /// A request refused for the downstream's fault (`flag` `DPE` or `DC`).
    pub fn downstream_error(&self, d: Direction, flag: &str) {
        let f = usize::from(flag == "DC");
        self.health.downstream_errors[d.idx()][f].fetch_add(1, Ordering::Relaxed);
    }

    /// TLS handshake failures so far in one direction (tests and admin).
    pub fn tls_failures(&self, d: Direction) -> u64 {
        self.health.tls_failures[d.idx()].load(Ordering::Relaxed)
    }

    /// Prometheus text exposition (format 0.0.4) of the metrics this holds (Istio's, the
    /// proxy's counters, authorization decisions).
    pub fn render(&self) -> String {
        self.render_with(None)
    }

    /// As [`Metrics::render`], followed by what only the whole proxy knows ([`Scrape`]):
    /// what `/stats/prometheus` serves.
    pub fn render_with(&self, scrape: Option<Scrape>) -> String {
        let mut om = String::new();
        let mut r = prometheus_client::encoding::text::encode_registry(&mut om, &self.registry);
        if let Some(s) = scrape {
            let mut extra = Registry::default();
            extra.register_collector(Box::new(s));
            r = r
                .and_then(|()| prometheus_client::encoding::text::encode_registry(&mut om, &extra));
        }
        if let Err(e) = r {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        to_prometheus_text(&om)
    }
}

/// prometheus-client writes OpenMetrics, whose counter family is named without `_total`;
/// Prometheus' text format (what `/stats/prometheus` serves, as Envoy does, and what
/// `promtool check metrics` reads) names the family as its samples: `istio_requests_total`.
fn to_prometheus_text(om: &str) -> String {
    let mut counters: Vec<&str> = Vec::new();
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            counters.push(name);
        }
    }
    let mut out = String::with_capacity(om.len() + 64);
    for line in om.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Encodes [`Health`] at scrape time.
#[derive(Debug)]
struct HealthCollector(Arc<Health>);

/// A label set of fixed or scrape-time pairs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Kv<'a>(pub(crate) &'a [(&'a str, &'a str)]);

impl EncodeLabelSet for Kv<'_> {
    fn encode(&self, enc: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        for (k, v) in self.0 {
            put(enc, k, v)?;
        }
        Ok(())
    }
}

const DIRS: [&[(&str, &str)]; 2] = [&[("direction", "inbound")], &[("direction", "outbound")]];

/// One counter family (`name` without `_total`) with its series.
pub(crate) fn counter_series(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Kv<'_>, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    if let [(Kv([]), v)] = series {
        return ConstCounter::new(*v).encode(m);
    }
    for (labels, v) in series {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

/// One gauge family with its series.
pub(crate) fn gauge_series(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Kv<'_>, i64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    if let [(Kv([]), v)] = series {
        return ConstGauge::new(*v).encode(m);
    }
    for (labels, v) in series {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

/// What only the whole proxy knows, taken at scrape time: its clusters (retries, ejections,
/// active requests, circuit-breaker overflows), its connection pool, what telemetry could not
/// deliver, and its certificates' expiry. Encoded by prometheus-client like the rest.
#[derive(Debug, Default)]
pub struct Scrape {
    pub clusters: Vec<crate::traffic::ClusterStatus>,
    /// Pooled HTTP/2 connections and idle HTTP/1.1 ones.
    pub pooled: [u64; 2],
    /// Access log lines written and dropped, spans exported and dropped.
    pub telemetry: [u64; 4],
    /// The proxy's own certificate's and the first root's `notAfter` (Unix seconds).
    pub cert_not_after: Option<i64>,
    pub roots_not_after: Option<i64>,
    /// Unix seconds now.
    pub now: i64,
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let clusters = &self.clusters;
        // Label sets borrow the cluster names, so they are built per family here.
        let names: Vec<[(&str, &str); 1]> = clusters
            .iter()
            .map(|c| [("cluster", c.name.as_str())])
            .collect();
        let counter_by = |f: fn(&crate::traffic::ClusterStatus) -> u64| -> Vec<(Kv<'_>, u64)> {
            names
                .iter()
                .zip(clusters)
                .map(|(n, c)| (Kv(n), f(c)))
                .collect()
        };
        counter_series(
            &mut enc,
            "meshproxy_cluster_retries",
            "Retries sent, by cluster.",
            &counter_by(|c| c.retries),
        )?;
        counter_series(
            &mut enc,
            "meshproxy_cluster_outlier_ejections",
            "Outlier-detection ejections, by cluster.",
            &counter_by(|c| c.ejections),
        )?;
        fn as_gauge(v: Vec<(Kv<'_>, u64)>) -> Vec<(Kv<'_>, i64)> {
            v.into_iter()
                .map(|(k, n)| (k, i64::try_from(n).unwrap_or(i64::MAX)))
                .collect()
        }
        gauge_series(
            &mut enc,
            "meshproxy_cluster_ejected_endpoints",
            "Endpoints ejected now, by cluster.",
            &as_gauge(counter_by(|c| {
                c.endpoints.iter().filter(|e| e.ejected).count() as u64
            })),
        )?;
        gauge_series(
            &mut enc,
            "meshproxy_cluster_active_requests",
            "Requests in flight, by cluster.",
            &as_gauge(counter_by(|c| {
                c.endpoints
                    .iter()
                    .map(|e| u64::from(e.active_requests))
                    .sum()
            })),
        )?;
        const RESOURCES: [&str; 4] = ["connections", "pending_requests", "requests", "retries"];
        let overflow_labels: Vec<[(&str, &str); 2]> = clusters
            .iter()
            .flat_map(|c| RESOURCES.map(|r| [("cluster", c.name.as_str()), ("resource", r)]))
            .collect();
        let overflows: Vec<(Kv<'_>, u64)> = overflow_labels
            .iter()
            .zip(
                clusters
                    .iter()
                    .flat_map(|c| (0..RESOURCES.len()).map(|i| c.circuit_breaker.overflows[i])),
            )
            .map(|(l, v)| (Kv(l), v))
            .collect();
        counter_series(
            &mut enc,
            "meshproxy_cluster_overflow",
            "Circuit-breaker overflows (503 UO), by cluster and resource.",
            &overflows,
        )?;
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        gauge_series(
            &mut enc,
            "meshproxy_upstream_pooled_connections",
            "Pooled connections to peer proxies: HTTP/2, and HTTP/1.1 idle ones.",
            &[
                (Kv(&[("protocol", "http2")]), gauge(self.pooled[0])),
                (Kv(&[("protocol", "http1_idle")]), gauge(self.pooled[1])),
            ],
        )?;
        for (i, (name, help)) in [
            ("meshproxy_access_log_lines", "Access log lines written."),
            (
                "meshproxy_access_log_dropped",
                "Access log lines dropped because stdout was slower than the traffic.",
            ),
            (
                "meshproxy_trace_spans_exported",
                "Trace spans accepted by the OTLP collector.",
            ),
            (
                "meshproxy_trace_spans_dropped",
                "Trace spans lost (export queue full, collector down, slow or refusing).",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            counter_series(&mut enc, name, help, &[(Kv(&[]), self.telemetry[i])])?;
        }
        if let Some(t) = self.cert_not_after {
            gauge_series(
                &mut enc,
                "istio_agent_cert_expiry_seconds",
                "Seconds until the proxy's own certificate expires (negative: expired).",
                &[(Kv(&[]), t - self.now)],
            )?;
        }
        let certs: Vec<(Kv<'_>, i64)> = [
            ("workload", self.cert_not_after),
            ("root", self.roots_not_after),
        ]
        .iter()
        .filter_map(|(k, t)| Some((k, (*t)?)))
        .map(|(k, t)| {
            let labels: &[(&str, &str)] = match *k {
                "workload" => &[("cert", "workload")],
                _ => &[("cert", "root")],
            };
            (Kv(labels), t)
        })
        .collect();
        gauge_series(
            &mut enc,
            "meshproxy_cert_expiry_timestamp_seconds",
            "When the proxy's certificate (cert=workload) and the first of its trusted roots (cert=root) expire, in Unix seconds.",
            &certs,
        )?;
        Ok(())
    }
}

impl Collector for HealthCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let h = &self.0;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let by_dir = |v: &[AtomicU64; 2]| [(Kv(DIRS[0]), load(&v[0])), (Kv(DIRS[1]), load(&v[1]))];
        counter_series(
            &mut enc,
            "meshproxy_connections",
            "Accepted downstream connections.",
            &by_dir(&h.connections),
        )?;
        counter_series(
            &mut enc,
            "meshproxy_requests",
            "HTTP requests received.",
            &by_dir(&h.requests),
        )?;
        counter_series(
            &mut enc,
            "meshproxy_tls_handshake_failures",
            "Failed TLS handshakes (peer refused or invalid).",
            &by_dir(&h.tls_failures),
        )?;
        counter_series(
            &mut enc,
            "meshproxy_local_responses",
            "Responses generated by the proxy.",
            &by_dir(&h.local_responses),
        )?;
        const DE: [&[(&str, &str)]; 4] = [
            &[("direction", "inbound"), ("flag", "DPE")],
            &[("direction", "inbound"), ("flag", "DC")],
            &[("direction", "outbound"), ("flag", "DPE")],
            &[("direction", "outbound"), ("flag", "DC")],
        ];
        let de = &h.downstream_errors;
        counter_series(
            &mut enc,
            "meshproxy_downstream_errors",
            "Requests refused for the downstream's fault (400 DPE: malformed or ambiguous request; 400 DC: body cut short).",
            &[
                (Kv(DE[0]), load(&de[0][0])),
                (Kv(DE[1]), load(&de[0][1])),
                (Kv(DE[2]), load(&de[1][0])),
                (Kv(DE[3]), load(&de[1][1])),
            ],
        )?;
        for (name, help, v) in [
            (
                "meshproxy_peer_auth_rejected",
                "Connections refused by PeerAuthentication mode.",
                &h.mode_rejected,
            ),
            (
                "meshproxy_edge_connections",
                "Plaintext connections to published ports from outside the mesh (edge listener).",
                &h.edge_connections,
            ),
            (
                "meshproxy_outbound_passthrough",
                "Outbound connections to destinations outside the registry, passed through (ALLOW_ANY).",
                &h.passthrough,
            ),
            (
                "meshproxy_outbound_registry_blocked",
                "Outbound connections to destinations outside the registry, refused (REGISTRY_ONLY).",
                &h.registry_blocked,
            ),
        ] {
            ConstCounter::new(load(v)).encode(enc.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        counter_series(
            &mut enc,
            "meshproxy_config_reloads",
            "Config reloads.",
            &[
                (Kv(&[("result", "ok")]), load(&h.reloads_ok)),
                (Kv(&[("result", "rejected")]), load(&h.reloads_rejected)),
            ],
        )?;
        let rev = i64::try_from(load(&h.config_revision)).unwrap_or(i64::MAX);
        ConstGauge::new(rev).encode(enc.encode_descriptor(
            "meshproxy_config_revision",
            "Revision of the config being served.",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_apply_in_order_per_metric_and_side() {
        use meshapi::telemetry::metrics::MetricOverride;
        let o = |metric, mode, disabled| MetricOverride {
            metric,
            mode,
            disabled,
            remove_tags: vec!["source_app".into()],
            tags: Default::default(),
        };
        let cfg = MetricsConfig {
            overrides: vec![
                o(
                    MetricName::AllMetrics,
                    ReporterMode::ClientAndServer,
                    Some(true),
                ),
                o(MetricName::RequestCount, ReporterMode::Server, Some(false)),
            ],
            ..Default::default()
        };
        let s = Shapes::new(&cfg);
        assert!(!s.all_disabled());
        assert!(s.get(0, Reporter::Source).is_none());
        let back = s.get(0, Reporter::Destination).expect("re-enabled");
        // Re-enabled by the second override, which also removes source_app.
        assert!(back.removed[4]);
        assert!(s.get(1, Reporter::Destination).is_none());
        let all_off = MetricsConfig {
            overrides: vec![o(
                MetricName::AllMetrics,
                ReporterMode::ClientAndServer,
                Some(true),
            )],
            ..Default::default()
        };
        assert!(Shapes::new(&all_off).all_disabled());
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        let mut reg = Registry::default();
        let f: Family<Kv, Counter> = Family::default();
        reg.register("x", "x", f.clone());
        f.get_or_create(&Kv(&[("a", "q\"b\\s\nt")])).inc();
        prometheus_client::encoding::text::encode_registry(&mut out, &reg).expect("encode");
        assert!(out.contains(r#"x_total{a="q\"b\\s\nt"} 1"#), "{out}");
        let text = to_prometheus_text(&out);
        assert!(text.contains("# TYPE x_total counter"), "{text}");
    }
}
