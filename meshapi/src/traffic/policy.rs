//! DestinationRule policy resolution: the `trafficPolicy` in force for one (service, subset,
//! port), merged as Istio merges it, turned into a [`ClusterPolicy`] with every default filled in.
//!
//! Istio's merge (`MergeTrafficPolicy`): start from the rule's top-level policy with its
//! `portLevelSettings` for the port applied; each field the subset's policy sets (load balancer,
//! connection pool, outlier detection, TLS) replaces the whole field; then the subset's own
//! `portLevelSettings` for the port replace fields again. Fields are replaced, never deep-merged.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::authz::ClientTls;
use crate::istio::{
    ClientTlsSettings, ConnectionPoolSettings, ConsistentHashLb, DestinationRuleSpec,
    LoadBalancerSettings, OutlierDetection, Port, SimpleLb, TrafficPolicy,
};

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
    /// ([`crate::authz::client_tls_for`] decides from the endpoint's PeerAuthentication;
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

impl OutlierConfig {
    /// Resolves Istio's `outlierDetection` with its defaults.
    pub fn from_istio(o: &OutlierDetection) -> OutlierConfig {
        let pct = |v: Option<i32>, d: u32| v.map_or(d, |v| u32::try_from(v).unwrap_or(0).min(100));
        // The deprecated `consecutiveErrors` means gateway errors (Istio maps it so).
        let gateway = o
            .consecutive_gateway_errors
            .or_else(|| o.consecutive_errors.and_then(|v| u32::try_from(v).ok()));
        OutlierConfig {
            consecutive_5xx: match o.consecutive_5xx_errors {
                Some(0) => None,
                Some(n) => Some(n),
                None => Some(OutlierDetection::DEFAULT_CONSECUTIVE_5XX_ERRORS),
            },
            consecutive_gateway: gateway.filter(|n| *n > 0),
            split_external_local_origin_errors: o
                .split_external_local_origin_errors
                .unwrap_or(false),
            consecutive_local_origin: o.consecutive_local_origin_failures.unwrap_or(5),
            interval: o
                .interval
                .unwrap_or(OutlierDetection::DEFAULT_INTERVAL)
                .get(),
            base_ejection_time: o
                .base_ejection_time
                .unwrap_or(OutlierDetection::DEFAULT_BASE_EJECTION_TIME)
                .get(),
            max_ejection_time: DEFAULT_MAX_EJECTION_TIME,
            max_ejection_percent: pct(
                o.max_ejection_percent,
                OutlierDetection::DEFAULT_MAX_EJECTION_PERCENT,
            ),
            min_health_percent: pct(o.min_health_percent, 0),
            error_codes: o
                .outlier_detection_http_error_codes
                .iter()
                .filter_map(|c| u16::try_from(*c).ok())
                .collect(),
        }
    }
}

/// The four replaceable fields of a traffic policy, borrowed.
#[derive(Default, Clone, Copy)]
struct Fields<'a> {
    lb: Option<&'a LoadBalancerSettings>,
    pool: Option<&'a ConnectionPoolSettings>,
    outlier: Option<&'a OutlierDetection>,
    tls: Option<&'a ClientTlsSettings>,
}

impl<'a> Fields<'a> {
    fn override_with(&mut self, p: &'a TrafficPolicy, port: Option<u16>) {
        self.lb = p.load_balancer.as_ref().or(self.lb);
        self.pool = p.connection_pool.as_ref().or(self.pool);
        self.outlier = p.outlier_detection.as_ref().or(self.outlier);
        self.tls = p.tls.as_ref().or(self.tls);
        let Some(port) = port.and_then(|p| Port::new(u32::from(p)).ok()) else {
            return;
        };
        if let Some(pl) = p.port_level(port) {
            self.lb = pl.load_balancer.as_ref().or(self.lb);
            self.pool = pl.connection_pool.as_ref().or(self.pool);
            self.outlier = pl.outlier_detection.as_ref().or(self.outlier);
            self.tls = pl.tls.as_ref().or(self.tls);
        }
    }
}

/// The policy for traffic to `subset` (or the whole service) on `port`, resolved from a
/// DestinationRule as Istio merges it. `dr` `None`: Istio's defaults.
pub fn resolve_policy(
    dr: Option<&DestinationRuleSpec>,
    subset: Option<&str>,
    port: Option<u16>,
) -> ClusterPolicy {
    let mut f = Fields::default();
    if let Some(dr) = dr {
        if let Some(top) = &dr.traffic_policy {
            f.override_with(top, port);
        }
        if let Some(sp) = subset
            .and_then(|s| dr.subset(s))
            .and_then(|s| s.traffic_policy.as_ref())
        {
            f.override_with(sp, port);
        }
    }
    ClusterPolicy {
        load_balancer: f.lb.map(lb_policy).unwrap_or_default(),
        connection_pool: f.pool.map(pool_limits).unwrap_or_default(),
        outlier_detection: f.outlier.map(OutlierConfig::from_istio),
        tls: f.tls.and_then(tls),
    }
}

fn lb_policy(lb: &LoadBalancerSettings) -> LbPolicy {
    let algorithm = match &lb.consistent_hash {
        Some(ch) => consistent_hash(ch),
        None => match lb.simple_or_default() {
            SimpleLb::RoundRobin => LbAlgorithm::RoundRobin,
            SimpleLb::Random => LbAlgorithm::Random,
            SimpleLb::Passthrough => LbAlgorithm::Passthrough,
            _ => LbAlgorithm::LeastRequest,
        },
    };
    let warmup = match (&lb.warmup, lb.warmup_duration_secs) {
        (Some(w), _) => Some(WarmupConfig {
            duration: w.duration.get(),
            minimum_percent: w.minimum_percent.map_or(10.0, |p| p.value()),
            aggression: w.aggression.unwrap_or(1.0),
        }),
        (None, Some(d)) => Some(WarmupConfig {
            duration: d.get(),
            minimum_percent: 10.0,
            aggression: 1.0,
        }),
        (None, None) => None,
    };
    // Envoy applies slow start to ROUND_ROBIN and LEAST_REQUEST only.
    let warmup = warmup.filter(|_| {
        matches!(
            algorithm,
            LbAlgorithm::RoundRobin | LbAlgorithm::LeastRequest
        )
    });
    LbPolicy { algorithm, warmup }
}

fn consistent_hash(ch: &ConsistentHashLb) -> LbAlgorithm {
    let key = if let Some(h) = &ch.http_header_name {
        HashKey::Header(h.to_ascii_lowercase())
    } else if let Some(c) = &ch.http_cookie {
        HashKey::Cookie {
            name: c.name.clone(),
            path: c.path.clone(),
            ttl: c.ttl.map(|d| d.get()),
            attributes: c
                .attributes
                .iter()
                .map(|a| match &a.value {
                    Some(v) => format!("{}={v}", a.name),
                    None => a.name.clone(),
                })
                .collect(),
        }
    } else if let Some(q) = &ch.http_query_parameter_name {
        HashKey::QueryParameter(q.clone())
    } else {
        HashKey::SourceIp
    };
    match &ch.maglev {
        Some(m) => LbAlgorithm::Maglev {
            key,
            table_size: m.table_size.unwrap_or(DEFAULT_MAGLEV_TABLE_SIZE),
        },
        None => LbAlgorithm::RingHash {
            key,
            minimum_ring_size: ch
                .ring_hash
                .as_ref()
                .and_then(|r| r.minimum_ring_size)
                .or(ch.minimum_ring_size)
                .unwrap_or(DEFAULT_MIN_RING_SIZE),
        },
    }
}

fn limit(v: Option<i32>, default: u32) -> u32 {
    v.map_or(default, |v| u32::try_from(v).unwrap_or(default))
}

fn pool_limits(p: &ConnectionPoolSettings) -> PoolLimits {
    let mut out = PoolLimits::default();
    if let Some(t) = &p.tcp {
        out.max_connections = limit(t.max_connections, u32::MAX);
        if let Some(c) = t.connect_timeout {
            out.connect_timeout = c.get();
        }
        out.tcp_keepalive = t.tcp_keepalive.as_ref().map(|k| {
            (
                k.time.map(|d| d.get()),
                k.interval.map(|d| d.get()),
                k.probes,
            )
        });
    }
    if let Some(h) = &p.http {
        out.http1_max_pending_requests = limit(h.http1_max_pending_requests, u32::MAX);
        out.http2_max_requests = limit(h.http2_max_requests, u32::MAX);
        out.max_requests_per_connection = limit(h.max_requests_per_connection, 0);
        out.max_retries = limit(h.max_retries, u32::MAX);
        if let Some(i) = h.idle_timeout {
            out.idle_timeout = i.get();
        }
        out.h2_upgrade = matches!(
            h.h2_upgrade_policy,
            Some(crate::istio::H2UpgradePolicy::Upgrade)
        );
    }
    out
}

fn tls(t: &ClientTlsSettings) -> Option<ClientTls> {
    ClientTls::from_destination_rule(t)
}
