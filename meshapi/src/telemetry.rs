//! What a proxy reports about the traffic it carries, as the control plane compiles it from
//! the top-level `x-mesh` (Istio's MeshConfig) and `telemetry.istio.io/v1` Telemetry
//! resources: which metrics and labels ([`metrics`]), whether and how it writes access logs
//! ([`access_log`]), and how it samples and exports trace spans ([`tracing`]).
//!
//! The section is `telemetry` in [`crate::proxy::ProxyConfig`]; every part has a default, so
//! a config without it reports Istio's defaults.

use serde::{Deserialize, Serialize};

pub mod access_log;
pub mod metrics;
pub mod tracing;

pub use access_log::AccessLogConfig;
pub use metrics::MetricsConfig;
pub use tracing::TracingConfig;

/// One proxy's telemetry: `telemetry` in the proxy config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TelemetryConfig {
    /// Istio's standard metrics and their labels on `/stats/prometheus`.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// One line per HTTP request and TCP connection on the proxy's stdout.
    #[serde(default)]
    pub access_log: AccessLogConfig,
    /// Trace context propagation, sampling and OTLP export.
    #[serde(default)]
    pub tracing: TracingConfig,
}
