//! Telemetry (telemetry.istio.io v1, v1alpha1): metrics overrides (disable a metric, add or
//! remove a tag), access logging on or off, tracing sampling percentage, custom tags and
//! provider, mesh-wide (root namespace), namespace-wide, or per workload by `selector`.
//!
//! What meshctl does not enforce is refused by name: `targetRef(s)`, per-mode `match` on
//! tracing and access logging, access log `filter`, `reportingInterval`, custom metrics,
//! `useRequestIdForTraceSampling`, tag values that are not string literals.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use meshapi::diag::FieldError;

use super::meta::{Ignored, ObjectMeta, PolicyTargetReference, WorkloadSelector};
use super::types::{Duration, Percent};
use super::validate::Report;

/// A Telemetry document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Telemetry {
    /// `telemetry.istio.io/v1` or `v1alpha1` (same schema).
    pub api_version: String,
    /// `Telemetry`.
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: TelemetrySpec,
    /// Written by a cluster; read and dropped.
    #[serde(default, skip_serializing)]
    pub status: Ignored,
}

/// The `spec` of a Telemetry.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelemetrySpec {
    /// The workloads this applies to. Absent: the whole namespace (the whole mesh in the root
    /// namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// Refused: Kubernetes gateways only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    /// Refused: Kubernetes gateways only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Tracing settings; meshctl reads the first entry (Istio allows one per provider).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracing: Vec<Tracing>,
    /// Metrics overrides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<Metrics>,
    /// Access logging on or off.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_logging: Vec<AccessLogging>,
}

/// A provider by name (`prometheus`, `envoy`, or an `x-mesh.extensionProviders` name).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderRef {
    pub name: String,
}

/// `match` of tracing and access logging entries.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficMatch {
    /// `CLIENT_AND_SERVER` (default), `CLIENT` or `SERVER`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<WorkloadMode>,
}

/// Telemetry's `WorkloadMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkloadMode {
    ClientAndServer,
    Client,
    Server,
}

/// One `tracing` entry.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tracing {
    /// Refused unless `CLIENT_AND_SERVER`.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<TrafficMatch>,
    /// The tracing provider (an `x-mesh.extensionProviders` entry). At most one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    /// Percentage of new traces sampled, 0 to 100. Default: inherited (`x-mesh`, else 1%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_sampling_percentage: Option<Percent>,
    /// Propagate context but export no span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_span_reporting: Option<bool>,
    /// Span attributes added by this proxy.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_tags: BTreeMap<String, CustomTag>,
    /// Refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_request_id_for_trace_sampling: Option<bool>,
    /// Refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_istio_tags: Option<bool>,
    /// Refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_context_propagation: Option<bool>,
}

/// One custom tag: exactly one of `literal`, `environment`, `header`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomTag {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub literal: Option<Literal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<NamedValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<NamedValue>,
    /// Refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub formatter: Option<Literal>,
}

/// A literal tag value.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Literal {
    pub value: String,
}

/// An environment variable or request header, with a default.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamedValue {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_value: Option<String>,
}

/// One `metrics` entry.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metrics {
    /// Only `prometheus` (Istio's default metrics provider).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<MetricsOverride>,
    /// Refused: the proxy's metrics are read at scrape time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reporting_interval: Option<Duration>,
}

/// One metrics override.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsOverride {
    /// Which metric and side. Absent: every metric, both sides.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<MetricSelector>,
    /// Turns the metric off (or on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Labels to add (`UPSERT` with a string literal value) or remove (`REMOVE`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tag_overrides: BTreeMap<String, TagOverride>,
}

/// `match` of a metrics override.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricSelector {
    /// One of Istio's standard metrics, or `ALL_METRICS` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<IstioMetric>,
    /// Refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_metric: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<WorkloadMode>,
}

/// Telemetry's `IstioMetric`: the standard metrics, and gRPC message counts (refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum IstioMetric {
    AllMetrics,
    RequestCount,
    RequestDuration,
    RequestSize,
    ResponseSize,
    TcpOpenedConnections,
    TcpClosedConnections,
    TcpSentBytes,
    TcpReceivedBytes,
    GrpcRequestMessages,
    GrpcResponseMessages,
}

impl IstioMetric {
    /// The metric in the proxy config; `None` for the gRPC message counts.
    pub fn served(self) -> Option<meshapi::telemetry::metrics::MetricName> {
        use meshapi::telemetry::metrics::MetricName as M;
        Some(match self {
            IstioMetric::AllMetrics => M::AllMetrics,
            IstioMetric::RequestCount => M::RequestCount,
            IstioMetric::RequestDuration => M::RequestDuration,
            IstioMetric::RequestSize => M::RequestSize,
            IstioMetric::ResponseSize => M::ResponseSize,
            IstioMetric::TcpOpenedConnections => M::TcpOpenedConnections,
            IstioMetric::TcpClosedConnections => M::TcpClosedConnections,
            IstioMetric::TcpSentBytes => M::TcpSentBytes,
            IstioMetric::TcpReceivedBytes => M::TcpReceivedBytes,
            IstioMetric::GrpcRequestMessages | IstioMetric::GrpcResponseMessages => return None,
        })
    }
}

/// A tag override.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TagOverride {
    /// `UPSERT` (default) or `REMOVE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<TagOperation>,
    /// For `UPSERT`: a CEL expression; meshctl serves string literals (`"'canary'"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// `tagOverrides[].operation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TagOperation {
    Upsert,
    Remove,
}

/// One `accessLogging` entry.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogging {
    /// Refused unless `CLIENT_AND_SERVER`.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<TrafficMatch>,
    /// Only `envoy` (Istio's default stdout provider).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    /// Turns access logs off (`true`) or on (`false`) for the selected workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<AccessLogFilter>,
}

/// `accessLogging[].filter`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogFilter {
    #[serde(default)]
    pub expression: String,
}

/// The value of a string-literal CEL expression (`'v'` or `"v"`), `None` for anything else.
pub fn string_literal(expr: &str) -> Option<&str> {
    let e = expr.trim();
    ['\'', '"'].iter().find_map(|q| {
        e.strip_prefix(*q)?
            .strip_suffix(*q)
            .filter(|v| !v.contains(*q) && !v.contains('\\'))
    })
}

fn mode_is_default(m: &Option<TrafficMatch>) -> bool {
    m.as_ref()
        .and_then(|m| m.mode)
        .is_none_or(|m| m == WorkloadMode::ClientAndServer)
}

impl Telemetry {
    /// Checks the resource as Istio would, and refuses by name what meshctl does not
    /// enforce. Paths start at the document root.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut r = Report::default();
        self.metadata.validate_into(&mut r, false);
        let s = &self.spec;
        if let Some(sel) = &s.selector {
            sel.validate_into(&mut r, "spec.selector");
        }
        if s.target_ref.is_some() {
            r.unsupported(
                "spec.targetRef",
                "targetRef",
                "it selects Kubernetes gateways; use selector",
            );
        }
        if !s.target_refs.is_empty() {
            r.unsupported(
                "spec.targetRefs",
                "targetRefs",
                "it selects Kubernetes gateways; use selector",
            );
        }
        for (i, t) in s.tracing.iter().enumerate() {
            let at = format!("spec.tracing[{i}]");
            if i > 0 {
                r.unsupported(
                    at.clone(),
                    "a second tracing entry",
                    "one tracing provider per workload",
                );
            }
            if !mode_is_default(&t.match_) {
                r.unsupported(
                    format!("{at}.match.mode"),
                    "tracing per mode",
                    "spans are sampled alike on both sides",
                );
            }
            if t.providers.len() > 1 {
                r.error(
                    format!("{at}.providers"),
                    "at most one tracing provider is supported",
                );
            }
            if t.use_request_id_for_trace_sampling.is_some() {
                r.unsupported(
                    format!("{at}.useRequestIdForTraceSampling"),
                    "useRequestIdForTraceSampling",
                    "sampling is random per new trace",
                );
            }
            if t.enable_istio_tags.is_some() {
                r.unsupported(
                    format!("{at}.enableIstioTags"),
                    "enableIstioTags",
                    "Istio's span attributes are always set",
                );
            }
            if t.disable_context_propagation.is_some() {
                r.unsupported(
                    format!("{at}.disableContextPropagation"),
                    "disableContextPropagation",
                    "trace context is always propagated",
                );
            }
            for (name, tag) in &t.custom_tags {
                if tag.formatter.is_some() {
                    r.unsupported(
                        format!("{at}.customTags.{name}.formatter"),
                        "custom tag formatters",
                        "use literal, environment or header",
                    );
                }
                let n = [
                    tag.literal.is_some(),
                    tag.environment.is_some(),
                    tag.header.is_some(),
                ]
                .iter()
                .filter(|b| **b)
                .count();
                if n != 1 {
                    r.error_hint(
                        format!("{at}.customTags.{name}"),
                        "a custom tag needs exactly one of literal, environment, header",
                        "e.g. `literal: {value: canary}`",
                    );
                }
            }
        }
        for (i, m) in s.metrics.iter().enumerate() {
            let at = format!("spec.metrics[{i}]");
            for (j, p) in m.providers.iter().enumerate() {
                if p.name != "prometheus" {
                    r.unsupported(
                        format!("{at}.providers[{j}].name"),
                        &format!("metrics provider {:?}", p.name),
                        "the proxies serve Prometheus metrics on 15090 only; use `prometheus`",
                    );
                }
            }
            if m.reporting_interval.is_some() {
                r.unsupported(
                    format!("{at}.reportingInterval"),
                    "reportingInterval",
                    "metrics are read at scrape time",
                );
            }
            for (j, o) in m.overrides.iter().enumerate() {
                let oat = format!("{at}.overrides[{j}]");
                if let Some(m) = o.match_.as_ref().and_then(|m| m.metric)
                    && m.served().is_none()
                {
                    r.unsupported(
                        format!("{oat}.match.metric"),
                        "gRPC message metrics",
                        "the proxy does not count gRPC messages",
                    );
                }
                if o.match_.as_ref().is_some_and(|m| m.custom_metric.is_some()) {
                    r.unsupported(
                        format!("{oat}.match.customMetric"),
                        "custom metrics",
                        "only Istio's standard metrics exist",
                    );
                }
                for (tag, t) in &o.tag_overrides {
                    let tat = format!("{oat}.tagOverrides.{tag}");
                    if !meshapi::telemetry::metrics::is_label_name(tag) {
                        r.error(
                            tat.clone(),
                            format!("{tag:?} is not a valid metric label name"),
                        );
                    }
                    match (t.operation.unwrap_or(TagOperation::Upsert), &t.value) {
                        (TagOperation::Remove, Some(_)) => {
                            r.error(format!("{tat}.value"), "value must be empty for REMOVE");
                        }
                        (TagOperation::Remove, None) => {
                            if !meshapi::telemetry::metrics::ISTIO_LABELS.contains(&tag.as_str()) {
                                r.error_hint(
                                    tat,
                                    format!("{tag:?} is not one of Istio's metric labels"),
                                    "REMOVE takes a standard label such as `request_protocol`",
                                );
                            }
                        }
                        (TagOperation::Upsert, None) => {
                            r.error(format!("{tat}.value"), "value is required for UPSERT");
                        }
                        (TagOperation::Upsert, Some(v)) => {
                            if string_literal(v).is_none() {
                                r.unsupported(format!("{tat}.value"), &format!("the expression {v:?}"), "meshctl serves string literals such as \"'canary'\" (attribute values would make the label set unbounded)");
                            }
                        }
                    }
                }
            }
        }
        for (i, a) in s.access_logging.iter().enumerate() {
            let at = format!("spec.accessLogging[{i}]");
            if i > 0 {
                r.unsupported(
                    at.clone(),
                    "a second accessLogging entry",
                    "one access log provider per workload",
                );
            }
            if !mode_is_default(&a.match_) {
                r.unsupported(
                    format!("{at}.match.mode"),
                    "access logging per mode",
                    "both sides log alike",
                );
            }
            for (j, p) in a.providers.iter().enumerate() {
                if p.name != "envoy" {
                    r.unsupported(
                        format!("{at}.providers[{j}].name"),
                        &format!("access log provider {:?}", p.name),
                        "the proxies log to their stdout; use `envoy`",
                    );
                }
            }
            if a.filter.is_some() {
                r.unsupported(
                    format!("{at}.filter"),
                    "access log filters",
                    "every request is logged",
                );
            }
        }
        r.into_errors()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_literals() {
        assert_eq!(string_literal("'canary'"), Some("canary"));
        assert_eq!(string_literal("\"v1\""), Some("v1"));
        assert_eq!(string_literal("request.host"), None);
        assert_eq!(string_literal("'a' + 'b'"), None);
    }
}
