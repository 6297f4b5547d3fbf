//! DestinationRule resolution and the resilience machinery as a user observes them: subset and
//! port-level merging, consistent-hash stability and ~1/N movement (ring hash and maglev),
//! round robin, least request, slow start, outlier ejection timing, maxEjectionPercent, panic
//! mode, circuit-breaker overflow and retry backoff.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use meshapi::traffic::{
    Balancer, CallResult, CircuitBreaker, ClusterPolicy, EndpointState, HashInput, HashKey,
    LbAlgorithm, LbPolicy, OutlierConfig, OutlierDetector, Overflow, Pick, PoolLimits,
    PoolResource, WarmupConfig, backoff,
};
use meshmodel::compile::policy::resolve_policy;
use meshmodel::istio::{DestinationRule, IstioResource};

fn dr(yaml: &str) -> DestinationRule {
    let v: meshapi::yaml::Value = meshapi::yaml::from_str(yaml).unwrap();
    match IstioResource::from_value("networking.istio.io/v1", "DestinationRule", v).unwrap() {
        IstioResource::DestinationRule(d) => d,
        other => panic!("{other:?}"),
    }
}

const MERGE: &str = "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend}
spec:
  host: backend
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool: {tcp: {maxConnections: 100}}
    outlierDetection: {consecutive5xxErrors: 7}
    portLevelSettings:
    - port: {number: 9090}
      loadBalancer: {simple: RANDOM}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      connectionPool: {http: {http2MaxRequests: 5}}
      portLevelSettings:
      - port: {number: 8080}
        tls: {mode: DISABLE}
  - name: v3
    labels: {version: v3}
    trafficPolicy:
      loadBalancer: {simple: LEAST_REQUEST}
";

#[test]
fn destination_rule_merging_subset_over_top_and_port_level() {
    let d = dr(MERGE);
    let spec = &d.spec;
    struct Case {
        name: &'static str,
        subset: Option<&'static str>,
        port: u16,
        lb: LbAlgorithm,
        max_connections: u32,
        http2_max_requests: u32,
        consecutive_5xx: Option<u32>,
        plaintext: bool,
    }
    let cases = [
        Case {
            name: "top level",
            subset: None,
            port: 8080,
            lb: LbAlgorithm::RoundRobin,
            max_connections: 100,
            http2_max_requests: u32::MAX,
            consecutive_5xx: Some(7),
            plaintext: false,
        },
        Case {
            name: "top-level port override",
            subset: None,
            port: 9090,
            lb: LbAlgorithm::Random,
            max_connections: 100,
            http2_max_requests: u32::MAX,
            consecutive_5xx: Some(7),
            plaintext: false,
        },
        Case {
            name: "subset without policy inherits the top",
            subset: Some("v1"),
            port: 9090,
            lb: LbAlgorithm::Random,
            max_connections: 100,
            http2_max_requests: u32::MAX,
            consecutive_5xx: Some(7),
            plaintext: false,
        },
        Case {
            name: "subset field replaces the whole top field (no deep merge)",
            subset: Some("v2"),
            port: 9090,
            lb: LbAlgorithm::Random,
            max_connections: u32::MAX,
            http2_max_requests: 5,
            consecutive_5xx: Some(7),
            plaintext: false,
        },
        Case {
            name: "subset port-level on its port",
            subset: Some("v2"),
            port: 8080,
            lb: LbAlgorithm::RoundRobin,
            max_connections: u32::MAX,
            http2_max_requests: 5,
            consecutive_5xx: Some(7),
            plaintext: true,
        },
        Case {
            name: "subset field beats the top's port-level",
            subset: Some("v3"),
            port: 9090,
            lb: LbAlgorithm::LeastRequest,
            max_connections: 100,
            http2_max_requests: u32::MAX,
            consecutive_5xx: Some(7),
            plaintext: false,
        },
    ];
    for c in cases {
        let p = resolve_policy(Some(spec), c.subset, Some(c.port));
        assert_eq!(p.load_balancer.algorithm, c.lb, "{}", c.name);
        assert_eq!(
            p.connection_pool.max_connections, c.max_connections,
            "{}",
            c.name
        );
        assert_eq!(
            p.connection_pool.http2_max_requests, c.http2_max_requests,
            "{}",
            c.name
        );
        assert_eq!(
            p.outlier_detection.as_ref().and_then(|o| o.consecutive_5xx),
            c.consecutive_5xx,
            "{}",
            c.name
        );
        assert_eq!(
            p.tls == Some(meshapi::authz::ClientTls::disable()),
            c.plaintext,
            "{}",
            c.name
        );
    }
}

#[test]
fn destination_rule_defaults_one_per_documented_field() {
    let none = resolve_policy(None, None, Some(80));
    assert_eq!(none.load_balancer.algorithm, LbAlgorithm::LeastRequest);
    assert_eq!(
        none.outlier_detection, None,
        "no outlierDetection: nothing is ejected"
    );
    assert_eq!(none.tls, None, "auto mTLS");
    let pool = &none.connection_pool;
    assert_eq!(pool.max_connections, u32::MAX);
    assert_eq!(pool.http1_max_pending_requests, u32::MAX);
    assert_eq!(pool.http2_max_requests, u32::MAX);
    assert_eq!(pool.max_requests_per_connection, 0);
    assert_eq!(pool.max_retries, u32::MAX);
    assert_eq!(pool.connect_timeout, Duration::from_secs(10));
    assert_eq!(pool.idle_timeout, Duration::from_secs(3600));
    let d = dr("
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: b}
spec:
  host: b
  trafficPolicy:
    outlierDetection: {}
    loadBalancer:
      consistentHash: {httpHeaderName: X-User}
      warmupDurationSecs: 60s
");
    let p = resolve_policy(Some(&d.spec), None, None);
    let o = p.outlier_detection.unwrap();
    assert_eq!(o.consecutive_5xx, Some(5));
    assert_eq!(o.consecutive_gateway, None);
    assert_eq!(o.consecutive_local_origin, 5);
    assert_eq!(o.interval, Duration::from_secs(10));
    assert_eq!(o.base_ejection_time, Duration::from_secs(30));
    assert_eq!(o.max_ejection_percent, 10);
    assert_eq!(o.min_health_percent, 0);
    assert_eq!(
        p.load_balancer.algorithm,
        LbAlgorithm::RingHash {
            key: HashKey::Header("x-user".into()),
            minimum_ring_size: 1024
        }
    );
    // Slow start applies to ROUND_ROBIN and LEAST_REQUEST only (Envoy).
    assert_eq!(p.load_balancer.warmup, None);
}

fn policy(algorithm: LbAlgorithm) -> ClusterPolicy {
    ClusterPolicy {
        load_balancer: LbPolicy {
            algorithm,
            warmup: None,
        },
        ..ClusterPolicy::default()
    }
}

fn addrs(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("10.0.0.{i}:8080")).collect()
}

/// Endpoint chosen for each of 10,000 header keys, by address.
fn assignments(algorithm: &LbAlgorithm, endpoints: &[String]) -> Vec<String> {
    let list: Vec<(&str, u32)> = endpoints.iter().map(|a| (a.as_str(), 1)).collect();
    let b = Balancer::new(&policy(algorithm.clone()), &list);
    let states = vec![EndpointState::default(); list.len()];
    (0..10_000)
        .map(|k| {
            let key = format!("user-{k}");
            let headers = [("x-user", key.as_str())];
            let h = b.hash(&HashInput {
                headers: &headers,
                query: "",
                source_ip: None,
                random: 0,
            });
            match b.pick(&states, h.hash, &[], k) {
                Pick::Endpoint(i) => endpoints[i].clone(),
                other => panic!("{other:?}"),
            }
        })
        .collect()
}

#[test]
fn consistent_hash_keeps_keys_and_moves_about_one_nth() {
    let key = HashKey::Header("x-user".into());
    for algorithm in [
        LbAlgorithm::RingHash {
            key: key.clone(),
            minimum_ring_size: 1024,
        },
        LbAlgorithm::Maglev {
            key: key.clone(),
            table_size: 65537,
        },
    ] {
        let all = addrs(10);
        let before = assignments(&algorithm, &all);
        // Same key, same endpoint while the set is unchanged (a rebuilt balancer included).
        assert_eq!(before, assignments(&algorithm, &all), "{algorithm:?}");
        // Roughly even spread.
        for a in &all {
            let n = before.iter().filter(|x| *x == a).count();
            assert!((500..=1600).contains(&n), "{algorithm:?}: {a} got {n}");
        }
        // One of 10 endpoints leaves: its keys move, about 1/10 of the keys in all.
        let fewer: Vec<String> = all.iter().filter(|a| *a != &all[3]).cloned().collect();
        let after = assignments(&algorithm, &fewer);
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        let on_removed = before.iter().filter(|b| *b == &all[3]).count();
        assert!(moved >= on_removed, "{algorithm:?}");
        assert!(
            moved <= 10_000 / 10 + 500,
            "{algorithm:?}: {moved} of 10000 keys moved"
        );
    }
}

#[test]
fn cookie_hash_sets_a_cookie_when_absent_with_ttl() {
    let algorithm = LbAlgorithm::RingHash {
        key: HashKey::Cookie {
            name: "session".into(),
            path: Some("/".into()),
            ttl: Some(Duration::from_secs(60)),
            attributes: vec![],
        },
        minimum_ring_size: 1024,
    };
    let b = Balancer::new(&policy(algorithm), &[("a", 1), ("b", 1), ("c", 1)]);
    let none: [(&str, &str); 0] = [];
    let first = b.hash(&HashInput {
        headers: &none,
        query: "",
        source_ip: None,
        random: 42,
    });
    let set = first.set_cookie.clone().unwrap();
    assert_eq!(set.name, "session");
    assert!(set.header_value().contains("Max-Age=60"));
    // The next request carries the cookie: same hash, no new cookie.
    let cookie = format!("other=1; session={}", set.value);
    let headers = [("cookie", cookie.as_str())];
    let next = b.hash(&HashInput {
        headers: &headers,
        query: "",
        source_ip: None,
        random: 7,
    });
    assert_eq!(next.hash, first.hash);
    assert_eq!(next.set_cookie, None);
    // Source IP and query parameter keys.
    let ip = LbAlgorithm::Maglev {
        key: HashKey::SourceIp,
        table_size: 65537,
    };
    let b = Balancer::new(&policy(ip), &[("a", 1), ("b", 1)]);
    let h = |last| {
        b.hash(&HashInput {
            headers: &none,
            query: "",
            source_ip: Some(IpAddr::V4(Ipv4Addr::new(10, 1, 1, last))),
            random: 0,
        })
        .hash
    };
    assert_eq!(h(5), h(5));
    assert!(h(5).is_some());
}

#[test]
fn round_robin_cycles_and_retries_prefer_another_endpoint() {
    let b = Balancer::new(
        &policy(LbAlgorithm::RoundRobin),
        &[("a", 1), ("b", 1), ("c", 1)],
    );
    let states = vec![EndpointState::default(); 3];
    let picks: Vec<Pick> = (0..6).map(|_| b.pick(&states, None, &[], 0)).collect();
    assert_eq!(
        picks,
        [0, 1, 2, 0, 1, 2].map(Pick::Endpoint).to_vec(),
        "round robin"
    );
    // Least request: a retry excludes the endpoints tried; when all are tried it may reuse.
    let lr = Balancer::new(&policy(LbAlgorithm::LeastRequest), &[("a", 1), ("b", 1)]);
    let two = vec![EndpointState::default(); 2];
    for r in 0..100 {
        assert_eq!(lr.pick(&two, None, &[0], r), Pick::Endpoint(1));
        assert!(matches!(lr.pick(&two, None, &[0, 1], r), Pick::Endpoint(_)));
    }
    // Passthrough never balances.
    let pt = Balancer::new(&policy(LbAlgorithm::Passthrough), &[("a", 1)]);
    assert_eq!(pt.pick(&two, None, &[], 0), Pick::Passthrough);
}

#[test]
fn least_request_prefers_the_idle_endpoint() {
    let b = Balancer::new(
        &policy(LbAlgorithm::LeastRequest),
        &[("a", 1), ("b", 1), ("c", 1), ("d", 1)],
    );
    let mut states = vec![
        EndpointState {
            active_requests: 50,
            ..EndpointState::default()
        };
        4
    ];
    states[2].active_requests = 0;
    let idle = (0..10_000u64)
        .filter(|r| {
            b.pick(&states, None, &[], r.wrapping_mul(0x9E37_79B9_7F4A_7C15)) == Pick::Endpoint(2)
        })
        .count();
    // Power of two choices: the idle endpoint wins whenever it is one of the two (7/16).
    assert!((4000..=4800).contains(&idle), "idle got {idle}");
}

#[test]
fn slow_start_ramps_a_new_endpoint() {
    let w = WarmupConfig {
        duration: Duration::from_secs(100),
        minimum_percent: 10.0,
        aggression: 1.0,
    };
    assert_eq!(w.factor(Duration::ZERO), 0.1);
    assert!((w.factor(Duration::from_secs(50)) - 0.5).abs() < 1e-9);
    assert_eq!(w.factor(Duration::from_secs(100)), 1.0);
    let mut p = policy(LbAlgorithm::RoundRobin);
    p.load_balancer.warmup = Some(w);
    let b = Balancer::new(&p, &[("old", 1), ("new", 1)]);
    let states = [
        EndpointState::default(),
        EndpointState {
            age: Some(Duration::from_secs(10)),
            ..EndpointState::default()
        },
    ];
    let new = (0..10_000u64)
        .filter(|r| b.pick(&states, None, &[], *r) == Pick::Endpoint(1))
        .count();
    // Weight 0.1 vs 1: about 9%.
    assert!((600..=1200).contains(&new), "new endpoint got {new}");
}

fn outlier(max_ejection_percent: u32, min_health_percent: u32) -> OutlierConfig {
    OutlierConfig {
        consecutive_5xx: Some(5),
        consecutive_gateway: None,
        split_external_local_origin_errors: false,
        consecutive_local_origin: 5,
        interval: Duration::from_secs(10),
        base_ejection_time: Duration::from_secs(30),
        max_ejection_time: Duration::from_secs(300),
        max_ejection_percent,
        min_health_percent,
        error_codes: vec![],
    }
}

const S: fn(u64) -> Duration = Duration::from_secs;

#[test]
fn five_consecutive_5xx_eject_for_base_time_then_twice_as_long() {
    let mut d = OutlierDetector::new(outlier(100, 0), 4);
    for i in 0..4 {
        assert!(!d.record(1, CallResult::Status(503), S(1)), "error {i}");
    }
    // A success breaks the streak.
    d.record(1, CallResult::Status(200), S(1));
    for _ in 0..4 {
        d.record(1, CallResult::Status(500), S(2));
    }
    assert!(!d.is_ejected(1, S(2)));
    assert!(
        d.record(1, CallResult::Status(502), S(2)),
        "fifth 5xx ejects"
    );
    assert!(d.is_ejected(1, S(2)));
    assert!(d.is_ejected(1, S(31)), "out for baseEjectionTime");
    assert!(!d.is_ejected(1, S(32)), "back after 30s");
    let snap = d.snapshot(S(32));
    assert_eq!(snap[1].times_ejected, 1);
    assert!(!snap[1].ejected);
    // Ejected again right away: 2 x baseEjectionTime.
    for _ in 0..5 {
        d.record(1, CallResult::ConnectFailure, S(33));
    }
    assert!(d.is_ejected(1, S(33 + 59)));
    assert!(!d.is_ejected(1, S(33 + 60)));
    assert_eq!(d.snapshot(S(40))[1].remaining, Some(S(53)));
    // The balancer skips the ejected endpoint.
    let b = Balancer::new(
        &policy(LbAlgorithm::RoundRobin),
        &[("a", 1), ("b", 1), ("c", 1), ("d", 1)],
    );
    let mut states = vec![EndpointState::default(); 4];
    d.apply(S(40), &mut states);
    for r in 0..20 {
        assert_ne!(b.pick(&states, None, &[], r), Pick::Endpoint(1));
    }
}

#[test]
fn ejection_multiplier_decays_while_healthy() {
    let mut d = OutlierDetector::new(outlier(100, 0), 2);
    let eject = |d: &mut OutlierDetector, at| {
        for _ in 0..5 {
            d.record(0, CallResult::Status(500), at);
        }
    };
    eject(&mut d, S(0));
    eject(&mut d, S(30)); // back at 30, ejected again: 60s
    assert!(d.is_ejected(0, S(89)));
    assert!(!d.is_ejected(0, S(90)));
    // Healthy for 10 intervals: the multiplier is back to 0, so the next ejection is 30s.
    eject(&mut d, S(200));
    assert!(!d.is_ejected(0, S(230)));
}

#[test]
fn max_ejection_percent_and_panic_mode() {
    // 10 endpoints, at most 20% ejected.
    let mut d = OutlierDetector::new(outlier(20, 0), 10);
    for e in 0..5 {
        for _ in 0..5 {
            d.record(e, CallResult::Status(500), S(1));
        }
    }
    assert_eq!(d.ejected_count(S(1)), 2);
    // With 10% of 4 endpoints, one may still be ejected (Envoy's rule).
    let mut one = OutlierDetector::new(outlier(10, 0), 4);
    for _ in 0..5 {
        one.record(0, CallResult::Status(500), S(1));
    }
    assert_eq!(one.ejected_count(S(1)), 1);

    // Panic mode: with minHealthPercent 50 and 3 of 4 endpoints unhealthy, all are used.
    let mut p = policy(LbAlgorithm::RoundRobin);
    p.outlier_detection = Some(outlier(100, 50));
    let b = Balancer::new(&p, &[("a", 1), ("b", 1), ("c", 1), ("d", 1)]);
    let mut states = vec![EndpointState::default(); 4];
    for s in &mut states[..3] {
        s.healthy = false;
    }
    let picked: std::collections::BTreeSet<Pick> =
        (0..8).map(|r| b.pick(&states, None, &[], r)).collect();
    assert_eq!(picked.len(), 4, "panic: every endpoint is used");
    // Without panic mode (0%) only the healthy one is; with none healthy, no endpoint.
    let strict = Balancer::new(
        &policy(LbAlgorithm::RoundRobin),
        &[("a", 1), ("b", 1), ("c", 1), ("d", 1)],
    );
    for r in 0..8 {
        assert_eq!(strict.pick(&states, None, &[], r), Pick::Endpoint(3));
    }
    states[3].healthy = false;
    assert_eq!(strict.pick(&states, None, &[], 0), Pick::NoHealthy);
}

#[test]
fn split_local_origin_failures_count_apart() {
    let mut cfg = outlier(100, 0);
    cfg.split_external_local_origin_errors = true;
    cfg.consecutive_local_origin = 3;
    let mut d = OutlierDetector::new(cfg, 2);
    d.record(0, CallResult::ConnectFailure, S(0));
    d.record(0, CallResult::ConnectFailure, S(0));
    d.record(0, CallResult::LocalOriginSuccess, S(0));
    d.record(0, CallResult::ConnectFailure, S(0));
    d.record(0, CallResult::Timeout, S(0));
    assert!(!d.is_ejected(0, S(0)));
    assert!(d.record(0, CallResult::Reset, S(0)));
}

#[test]
fn circuit_breaker_overflows_at_once() {
    let limits = PoolLimits {
        max_connections: 1,
        http1_max_pending_requests: 1,
        max_retries: 0,
        max_requests_per_connection: 2,
        ..PoolLimits::default()
    };
    let cb = Arc::new(CircuitBreaker::new(&limits));
    cb.try_acquire(PoolResource::Connection).unwrap();
    let err = cb.try_acquire(PoolResource::Connection).unwrap_err();
    assert_eq!(err.resource, PoolResource::Connection);
    let pending = cb.acquire_owned(PoolResource::PendingRequest).unwrap();
    let over = cb.try_acquire(PoolResource::PendingRequest).unwrap_err();
    assert_eq!((Overflow::STATUS, Overflow::FLAG), (503, "UO"));
    assert_eq!(over.limit, 1);
    assert!(cb.try_acquire(PoolResource::Retry).is_err(), "maxRetries 0");
    drop(pending);
    cb.try_acquire(PoolResource::PendingRequest).unwrap();
    let stats = cb.stats();
    assert_eq!(stats.connections, 1);
    assert_eq!(stats.overflows, [1, 1, 0, 1]);
    assert!(cb.connection_reusable(1));
    assert!(!cb.connection_reusable(2));
}

#[test]
fn retry_backoff_is_envoys() {
    let base = Duration::from_millis(25);
    let mut maxes = BTreeMap::new();
    for retry in 1..=6 {
        let m = (0..5000u64)
            .map(|r| backoff(base, retry, r.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
            .max()
            .unwrap();
        maxes.insert(retry, m);
    }
    let ms = |m: u64| Duration::from_millis(m);
    assert!(maxes[&1] < ms(25) && maxes[&1] >= ms(20));
    assert!(maxes[&2] < ms(50) && maxes[&2] >= ms(45));
    assert!(maxes[&3] < ms(100));
    assert!(maxes[&4] < ms(200));
    assert!(
        maxes[&5] < ms(250) && maxes[&5] >= ms(240),
        "capped at 10 x base"
    );
    assert!(maxes[&6] < ms(250));
}
