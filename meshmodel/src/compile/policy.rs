//! DestinationRule policy resolution: the `trafficPolicy` in force for one (service, subset,
//! port), merged as Istio merges it, turned into a [`ClusterPolicy`] with every default filled in.
//!
//! Istio's merge (`MergeTrafficPolicy`): start from the rule's top-level policy with its
//! `portLevelSettings` for the port applied; each field the subset's policy sets (load balancer,
//! connection pool, outlier detection, TLS) replaces the whole field; then the subset's own
//! `portLevelSettings` for the port replace fields again. Fields are replaced, never deep-merged.

use meshapi::traffic::{
    ClusterPolicy, DEFAULT_MAGLEV_TABLE_SIZE, DEFAULT_MAX_EJECTION_TIME, DEFAULT_MIN_RING_SIZE,
    HashKey, LbAlgorithm, LbPolicy, OutlierConfig, PoolLimits, WarmupConfig,
};

use crate::istio::{
    ClientTlsSettings, ConnectionPoolSettings, ConsistentHashLb, DestinationRuleSpec,
    LoadBalancerSettings, OutlierDetection, Port, SimpleLb, TrafficPolicy,
};

/// Resolves Istio's `outlierDetection` with its defaults.
pub fn outlier_config(o: &OutlierDetection) -> OutlierConfig {
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
        split_external_local_origin_errors: o.split_external_local_origin_errors.unwrap_or(false),
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
        outlier_detection: f.outlier.map(outlier_config),
        tls: f.tls.and_then(crate::compile::upstream_tls),
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
