//! Which of Istio's standard metrics a proxy exports and with which labels (Telemetry
//! `metrics` overrides), and who the proxy is in those labels (`workload`). Default: all of
//! them, with Istio's labels, the workload `unknown`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::diag::FieldError;

/// `telemetry.metrics` in the proxy config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricsConfig {
    /// This proxy's own workload, reported as `source_*` on the client side and
    /// `destination_*` on the server side, and sent to peer proxies (Istio's metadata
    /// exchange). Default: every field `unknown`.
    #[serde(default)]
    pub workload: WorkloadLabels,
    /// Overrides, applied in order (a later one wins for the same metric and label), as
    /// Telemetry `metrics[].overrides` compiles them. Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<MetricOverride>,
}

/// A workload in Istio's metric labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadLabels {
    /// `*_workload`: the compose service (`backend-v1`). Default `unknown`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// `*_workload_namespace`. Default `unknown`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// `*_app`: the `app` label. Default `unknown`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub app: String,
    /// `*_version`: the `version` label. Default `unknown`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// `destination_service_name` of this workload's service (inbound). Default `unknown`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
}

/// One of Istio's standard metrics (Telemetry's `metric` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MetricName {
    /// Every metric below.
    AllMetrics,
    /// `istio_requests_total`.
    RequestCount,
    /// `istio_request_duration_milliseconds`.
    RequestDuration,
    /// `istio_request_bytes`.
    RequestSize,
    /// `istio_response_bytes`.
    ResponseSize,
    /// `istio_tcp_connections_opened_total`.
    TcpOpenedConnections,
    /// `istio_tcp_connections_closed_total`.
    TcpClosedConnections,
    /// `istio_tcp_sent_bytes_total`.
    TcpSentBytes,
    /// `istio_tcp_received_bytes_total`.
    TcpReceivedBytes,
}

impl MetricName {
    /// The eight metrics, in exposition order.
    pub const EACH: [MetricName; 8] = [
        MetricName::RequestCount,
        MetricName::RequestDuration,
        MetricName::RequestSize,
        MetricName::ResponseSize,
        MetricName::TcpOpenedConnections,
        MetricName::TcpClosedConnections,
        MetricName::TcpSentBytes,
        MetricName::TcpReceivedBytes,
    ];

    /// Whether an override for `self` applies to `m`.
    pub fn covers(self, m: MetricName) -> bool {
        self == MetricName::AllMetrics || self == m
    }
}

/// Which side's reporting an override changes (Telemetry's `WorkloadMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReporterMode {
    /// Both `reporter="source"` and `reporter="destination"`. The default.
    #[default]
    ClientAndServer,
    /// Only `reporter="source"` (this proxy as a client).
    Client,
    /// Only `reporter="destination"` (this proxy as a server).
    Server,
}

/// One metric override.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricOverride {
    /// The metric. Required.
    pub metric: MetricName,
    /// The reporting side. Default both.
    #[serde(default)]
    pub mode: ReporterMode,
    /// Turns the metric off (or back on). Default: unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Istio labels the metric drops. Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_tags: Vec<String>,
    /// Labels added (or whose value is replaced) with a fixed value. Default none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// Istio's labels of the request metrics, in exposition order. The TCP metrics carry the same
/// except `response_code` and `grpc_response_status`.
pub const ISTIO_LABELS: [&str; 19] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

/// Whether `name` is a usable Prometheus label name (`[a-zA-Z_][a-zA-Z0-9_]*`, not `__*`).
pub fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

impl MetricsConfig {
    /// Every problem of the overrides (label names), with paths under `telemetry.metrics`.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        for (i, o) in self.overrides.iter().enumerate() {
            for (j, t) in o.remove_tags.iter().enumerate() {
                if !ISTIO_LABELS.contains(&t.as_str()) {
                    errs.push(
                        FieldError::new(
                            format!("telemetry.metrics.overrides[{i}].removeTags[{j}]"),
                            format!("`{t}` is not one of Istio's metric labels"),
                        )
                        .with_hint(format!("one of {}", ISTIO_LABELS.join(", "))),
                    );
                }
            }
            for t in o.tags.keys() {
                if !is_label_name(t) || t == "le" {
                    errs.push(FieldError::new(
                        format!("telemetry.metrics.overrides[{i}].tags.{t}"),
                        format!("`{t}` is not a usable Prometheus label name"),
                    ));
                }
            }
        }
        errs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_names() {
        for ok in ["a", "_a", "request_host", "A9"] {
            assert!(is_label_name(ok), "{ok}");
        }
        for bad in ["", "9a", "a-b", "__name", "é"] {
            assert!(!is_label_name(bad), "{bad}");
        }
    }

    #[test]
    fn overrides_name_unknown_labels() {
        let cfg = MetricsConfig {
            overrides: vec![MetricOverride {
                metric: MetricName::RequestCount,
                mode: ReporterMode::ClientAndServer,
                disabled: None,
                remove_tags: vec!["source_app".into(), "request_path".into()],
                tags: BTreeMap::from([("bad-name".to_string(), "x".to_string())]),
            }],
            ..MetricsConfig::default()
        };
        let errs = cfg.validate();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_eq!(errs[0].path, "telemetry.metrics.overrides[0].removeTags[1]");
    }
}
