//! Access logs: one line per HTTP request and per TCP connection (Envoy's default text format
//! or JSON, Istio's `accessLogFile`/`accessLogEncoding`), on or off per workload (Telemetry
//! `accessLogging`).

use serde::{Deserialize, Serialize};

/// `telemetry.accessLog` in the proxy config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessLogConfig {
    /// Whether the proxy writes access log lines to its stdout. Default false, as Istio's
    /// default profile (`accessLogFile` unset); the examples turn it on.
    #[serde(default)]
    pub enabled: bool,
    /// Line format. Default `TEXT`.
    #[serde(default)]
    pub encoding: AccessLogEncoding,
}

/// Istio's `accessLogEncoding`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AccessLogEncoding {
    /// Envoy's default text format.
    #[default]
    Text,
    /// One JSON object per line, with the same fields.
    Json,
}
