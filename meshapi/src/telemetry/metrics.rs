//! Which of Istio's standard metrics a proxy exports and with which labels (Telemetry
//! `metrics` overrides). Default: all of them, with Istio's labels.

use serde::{Deserialize, Serialize};

/// `telemetry.metrics` in the proxy config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricsConfig {}
