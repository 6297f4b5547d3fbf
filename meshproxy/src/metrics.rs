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
    pub authz: crate::authz::AuthzCounters,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let health = Arc::new(Health::default());
        let istio = IstioMetrics::default();
        let mut registry = Registry::default();
        istio.register(&mut registry);
        registry.register_collector(Box::new(HealthCollector(health.clone())));
        Metrics {
            health,
            istio,
            authz: Default::default(),
            registry,
        }
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

    /// Prometheus text exposition (format 0.0.4) of every metric.
    pub fn render(&self) -> String {
        let mut om = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode_registry(&mut om, &self.registry)
        {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        let mut out = to_prometheus_text(&om);
        self.authz.render(&mut out);
        out
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

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Kv(&'static [(&'static str, &'static str)]);

impl EncodeLabelSet for Kv {
    fn encode(&self, enc: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        for (k, v) in self.0 {
            put(enc, k, v)?;
        }
        Ok(())
    }
}

const DIRS: [&[(&str, &str)]; 2] = [&[("direction", "inbound")], &[("direction", "outbound")]];

fn counter_series(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Kv, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
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
        ConstCounter::new(load(&h.mode_rejected)).encode(enc.encode_descriptor(
            "meshproxy_peer_auth_rejected",
            "Connections refused by PeerAuthentication mode.",
            None,
            MetricType::Counter,
        )?)?;
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
