//! The resolved DestinationRule policy of one (service, subset, port): a [`ClusterPolicy`] with
//! every default filled in (`meshmodel::compile::policy` resolves it from the rule, as Istio
//! merges it).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::authz::ClientTls;

/// Envoy's default minimum ring size for ring hash.
pub const DEFAULT_MIN_RING_SIZE: u64 = 1024;
/// Envoy's default maglev table size (a prime).
pub const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65537;
/// Envoy's default cap on an ejection's duration.
pub const DEFAULT_MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

/// Everything that decides how traffic to one (service, subset, port) is balanced and limited.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterPolicy {
    /// Load balancing. Default LEAST_REQUEST.
    pub load_balancer: LbPolicy,
    /// Circuit-breaker limits and connection settings. Default: Istio's (no practical limit).
    pub connection_pool: PoolLimits,
    /// Ejection of failing endpoints. Default none: without `outlierDetection` nothing is
    /// ejected (as on Istio).
    #[serde(default)]
    pub outlier_detection: Option<OutlierConfig>,
    /// Upstream TLS from the DestinationRule. Default none: auto mTLS
    /// (`meshmodel::compile::peer::client_tls_for` decides from the endpoint's PeerAuthentication;
    /// ISTIO_MUTUAL towards mesh workloads).
    #[serde(default)]
    pub tls: Option<ClientTls>,
}

/// The load-balancing algorithm and its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LbAlgorithm {
    RoundRobin,
    /// Power of two choices, fewer active requests wins (Istio's default).
    LeastRequest,
    Random,
    /// No balancing: connect to the address the client originally dialled (the connection's
    /// original destination), which must be an endpoint's address.
    Passthrough,
    /// Consistent hashing on a ring of virtual nodes.
    RingHash {
        key: HashKey,
        minimum_ring_size: u64,
    },
    /// Consistent hashing with a maglev lookup table.
    Maglev {
        key: HashKey,
        table_size: u64,
    },
}

/// What a consistent hash is computed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HashKey {
    /// A request header (lower-case name).
    Header(String),
    /// A cookie; when absent and `ttl` is set, the proxy generates one and sets it on the
    /// response (the decision says so); without `ttl` an absent cookie gives no hash.
    Cookie {
        name: String,
        path: Option<String>,
        ttl: Option<Duration>,
        /// Extra attributes, rendered `name=value` or `name`.
        attributes: Vec<String>,
    },
    /// The client's IP address.
    SourceIp,
    /// A query parameter.
    QueryParameter(String),
}

/// Slow start for new endpoints (Envoy's slow-start on ROUND_ROBIN and LEAST_REQUEST).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WarmupConfig {
    /// Length of the ramp. Required.
    pub duration: Duration,
    /// Share of its weight a new endpoint starts with, percent. Default 10.
    pub minimum_percent: f64,
    /// Curve of the ramp; 1 is linear. Default 1.
    pub aggression: f64,
}

impl WarmupConfig {
    /// Envoy's slow-start factor for an endpoint of this age:
    /// `max(min%, (age/duration)^(1/aggression))`, 1 once the ramp is over.
    pub fn factor(&self, age: Duration) -> f64 {
        if age >= self.duration || self.duration.is_zero() {
            return 1.0;
        }
        let t = age.as_secs_f64().max(0.001) / self.duration.as_secs_f64();
        let a = if self.aggression > 0.0 {
            self.aggression
        } else {
            1.0
        };
        t.powf(1.0 / a).max(self.minimum_percent / 100.0).min(1.0)
    }
}

/// A resolved `loadBalancer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LbPolicy {
    /// Default LEAST_REQUEST.
    pub algorithm: LbAlgorithm,
    /// Default none.
    #[serde(default)]
    pub warmup: Option<WarmupConfig>,
}

impl Default for LbPolicy {
    fn default() -> Self {
        LbPolicy {
            algorithm: LbAlgorithm::LeastRequest,
            warmup: None,
        }
    }
}

/// Connection-pool limits (Envoy's circuit breakers) and connection settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolLimits {
    /// Connections to all endpoints of the cluster. Default 2^32-1.
    pub max_connections: u32,
    /// Requests waiting for a connection. Default 2^32-1 (Istio's, not Envoy's 1024).
    pub http1_max_pending_requests: u32,
    /// Active requests. Default 2^32-1.
    pub http2_max_requests: u32,
    /// Requests per connection; 0 is unlimited, 1 disables keep-alive. Default 0.
    pub max_requests_per_connection: u32,
    /// Outstanding retries. Default 2^32-1.
    pub max_retries: u32,
    /// TCP connect timeout. Default 10s.
    pub connect_timeout: Duration,
    /// Idle timeout of pooled HTTP connections. Default 1h.
    pub idle_timeout: Duration,
    /// TCP keepalive `(time, interval, probes)`; `None` fields use the OS's. Default off.
    #[serde(default)]
    pub tcp_keepalive: Option<(Option<Duration>, Option<Duration>, Option<u32>)>,
    /// Upgrade HTTP/1.1 to HTTP/2 upstream. Default false.
    pub h2_upgrade: bool,
}

impl Default for PoolLimits {
    fn default() -> Self {
        PoolLimits {
            max_connections: u32::MAX,
            http1_max_pending_requests: u32::MAX,
            http2_max_requests: u32::MAX,
            max_requests_per_connection: 0,
            max_retries: u32::MAX,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(3600),
            tcp_keepalive: None,
            h2_upgrade: false,
        }
    }
}

/// Resolved `outlierDetection`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutlierConfig {
    /// 5xx (and, unless split, local-origin failures) in a row before ejection; `None`
    /// disables. Default 5.
    pub consecutive_5xx: Option<u32>,
    /// 502/503/504 (and, unless split, local-origin failures) in a row; `None` disables.
    /// Default disabled.
    pub consecutive_gateway: Option<u32>,
    /// Count connect failures, timeouts and resets apart from upstream responses. Default false.
    pub split_external_local_origin_errors: bool,
    /// Local-origin failures in a row before ejection (when split). Default 5.
    pub consecutive_local_origin: u32,
    /// Sweep interval; the ejection multiplier decays by one per clean interval. Default 10s.
    pub interval: Duration,
    /// Ejection time, multiplied by the times the endpoint was ejected. Default 30s.
    pub base_ejection_time: Duration,
    /// Cap on one ejection. Default 300s (Envoy's).
    pub max_ejection_time: Duration,
    /// Most endpoints ejected at once, percent (at least one may always be). Default 10.
    pub max_ejection_percent: u32,
    /// Below this share of available endpoints, balance over all (panic mode), percent.
    /// Default 0 (never).
    pub min_health_percent: u32,
    /// Statuses counted as errors instead of 5xx. Default none (5xx).
    #[serde(default)]
    pub error_codes: Vec<u16>,
}
