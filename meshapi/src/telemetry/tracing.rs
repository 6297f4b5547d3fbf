//! Tracing: `x-request-id`, W3C and B3 propagation, sampling percentage (Istio's default 1%),
//! custom tags, and the OTLP/HTTP collector spans are exported to.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `telemetry.tracing` in the proxy config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TracingConfig {
    /// Percentage (0 to 100) of new traces this proxy samples; an incoming sampled flag is
    /// honoured whatever this says. Default `1.0` (Istio's default).
    #[serde(default = "default_sampling")]
    pub sampling_percent: f64,
    /// Extra span attributes (Telemetry `customTags`), by attribute name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_tags: BTreeMap<String, CustomTag>,
    /// OTLP/HTTP (protobuf) traces endpoint, e.g. `http://collector:4318/v1/traces`. Default
    /// none: context is still propagated and `x-request-id` created, but no span is exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector: Option<String>,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            sampling_percent: default_sampling(),
            custom_tags: BTreeMap::new(),
            collector: None,
        }
    }
}

fn default_sampling() -> f64 {
    1.0
}

/// Where a custom tag's value comes from (Istio's Telemetry `customTags` kinds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum CustomTag {
    /// A fixed value.
    Literal {
        /// The value.
        value: String,
    },
    /// A request header's value, or `default_value` when absent.
    Header {
        /// Header name.
        name: String,
        /// Used when the header is absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        default_value: Option<String>,
    },
    /// An environment variable of the proxy, or `default_value` when unset.
    Environment {
        /// Variable name.
        name: String,
        /// Used when the variable is unset.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        default_value: Option<String>,
    },
}
