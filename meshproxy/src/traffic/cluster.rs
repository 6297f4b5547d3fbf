//! Per cluster (host, subset, port) runtime state: the endpoints, the load balancer, active
//! requests (LEAST_REQUEST), outlier detection (ejections), the connection-pool circuit
//! breaker and connection slots, and what `/config_dump` and `/stats/prometheus` show of them.
//! Built per config from the route table; a cluster whose endpoints and policy did not change
//! keeps its state across a reload. An endpoint whose proxy reports a new start epoch
//! ([`Endpoint::epoch`]) is the same endpoint restarted: its cluster keeps its state, and the
//! endpoint is taken back from outlier ejection at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshapi::proxy::{Endpoint, Protocol, ProxyConfig};
use meshapi::traffic::{
    Balancer, CallResult, CircuitBreaker, Cluster, ClusterPolicy, EndpointState, HashOutcome,
    OutlierDetector, Pick, PoolResource, RouteTable,
};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::pool::PoolKey;
use crate::reply::ProxyError;

thread_local! {
    /// Scratch endpoint states for [`ClusterState::pick`], reused so a pick allocates nothing.
    static STATES: std::cell::RefCell<Vec<EndpointState>> = const { std::cell::RefCell::new(Vec::new()) };
}
use crate::runtime::Target;

/// Runtime state of one cluster (host, subset, port) of the route table.
#[derive(Debug)]
pub struct ClusterState {
    /// Envoy's cluster name: `outbound|<port>|<subset>|<host>`.
    pub name: String,
    /// The `services` key of the host (for messages and the connection pool).
    pub service: Arc<str>,
    /// Application port on the endpoints.
    pub port: u16,
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Each endpoint's pool key, built once.
    keys: Vec<Arc<PoolKey>>,
    /// Whether the endpoints are mesh proxies (have an identity): requests to them carry
    /// this proxy's workload ([`crate::telemetry::PEER_HEADER`]).
    pub to_mesh: bool,
    /// Each endpoint as a destination in metric labels, built once.
    parties: Vec<Arc<crate::telemetry::Party>>,
    pub policy: ClusterPolicy,
    /// Whether requests multiplex on HTTP/2 upstream (`http2`/`grpc` ports, or
    /// `h2UpgradePolicy: UPGRADE`); otherwise each active request holds one of
    /// `maxConnections` connection slots, as an HTTP/1.1 upstream does in Envoy.
    multiplexed: bool,
    balancer: Balancer,
    breaker: Arc<CircuitBreaker>,
    /// HTTP/1.1-style connection slots (`maxConnections`).
    slots: Arc<Semaphore>,
    outlier: Option<Mutex<OutlierDetector>>,
    active: Vec<AtomicU32>,
    /// When each endpoint joined (slow start).
    joined: Vec<Instant>,
    epoch: Instant,
    pub retries: AtomicU64,
    pub ejections: AtomicU64,
}

impl ClusterState {
    fn new(
        name: String,
        service: String,
        cluster: &Cluster,
        endpoints: Vec<Arc<Endpoint>>,
        multiplexed: bool,
    ) -> ClusterState {
        let keys: Vec<String> = endpoints.iter().map(|e| e.address.to_string()).collect();
        let weighted: Vec<(&str, u32)> = keys.iter().map(|k| (k.as_str(), 1)).collect();
        let limits = &cluster.policy.connection_pool;
        let slots = usize::try_from(limits.max_connections)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        let n = endpoints.len();
        let now = Instant::now();
        let keys = endpoints
            .iter()
            .map(|e| {
                let tls = cluster.tls_for(e);
                Arc::new(PoolKey {
                    addr: e.address,
                    identity: e.identity.clone(),
                    port: cluster.port,
                    tls,
                })
            })
            .collect();
        let parties = endpoints
            .iter()
            .map(|e| Arc::new(crate::telemetry::Party::of_endpoint(e)))
            .collect();
        ClusterState {
            to_mesh: endpoints.iter().any(|e| e.identity.is_some()),
            name,
            service: Arc::from(service),
            keys,
            parties,
            port: cluster.port,
            balancer: Balancer::new(&cluster.policy, &weighted),
            breaker: Arc::new(CircuitBreaker::new(limits)),
            slots: Arc::new(Semaphore::new(slots)),
            outlier: cluster.policy.outlier_detection.clone().map(|o| {
                let mut d = OutlierDetector::new(o, n);
                for (i, e) in endpoints.iter().enumerate() {
                    d.observe_epoch(i, e.epoch, Duration::ZERO);
                }
                Mutex::new(d)
            }),
            active: (0..n).map(|_| AtomicU32::new(0)).collect(),
            joined: vec![now; n],
            epoch: now,
            multiplexed: multiplexed || limits.h2_upgrade,
            policy: cluster.policy.clone(),
            endpoints,
            retries: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
        }
    }

    /// Endpoint `i` as a destination in metric labels.
    pub fn party(&self, i: usize) -> Option<Arc<crate::telemetry::Party>> {
        self.parties.get(i).cloned()
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Picks an endpoint, avoiding `exclude` when anything else is available.
    pub(super) fn pick(&self, hash: Option<u64>, exclude: &[usize], random: u64) -> Pick {
        let now = self.now();
        let warm = self.policy.load_balancer.warmup.is_some();
        STATES.with_borrow_mut(|states| {
            states.clear();
            states.extend((0..self.endpoints.len()).map(|i| EndpointState {
                healthy: true,
                active_requests: self.active[i].load(Ordering::Relaxed),
                age: warm.then(|| self.joined[i].elapsed()),
            }));
            if let Some(o) = &self.outlier
                && let Ok(mut o) = o.lock()
            {
                o.refresh(now);
                o.apply(now, states);
            }
            self.balancer.pick(states, hash, exclude, random)
        })
    }

    /// Records how a call to endpoint `i` ended, for outlier detection.
    pub fn record(&self, i: usize, result: CallResult) {
        let Some(o) = &self.outlier else { return };
        let now = self.now();
        if let Ok(mut o) = o.lock()
            && o.record(i, result, now)
        {
            self.ejections.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                cluster = %self.name,
                endpoint = %self.endpoints.get(i).map(|e| e.address.to_string()).unwrap_or_default(),
                "outlier detection ejected an endpoint"
            );
        }
    }

    /// Takes in the start epochs of `endpoints` (this cluster's list, in a new config): an
    /// ejected endpoint whose proxy restarted is taken back at once.
    fn observe_epochs(&self, endpoints: &[Arc<Endpoint>]) {
        let Some(o) = &self.outlier else { return };
        let now = self.now();
        let Ok(mut o) = o.lock() else { return };
        for (i, e) in endpoints.iter().enumerate() {
            if o.observe_epoch(i, e.epoch, now) {
                tracing::info!(
                    cluster = %self.name,
                    endpoint = %e.address,
                    "endpoint's proxy restarted: taken back from outlier ejection"
                );
            }
        }
    }

    pub(super) fn target(self: &Arc<Self>, i: usize) -> Option<Target> {
        let pool = &self.policy.connection_pool;
        Some(Target {
            service: Arc::clone(&self.service),
            key: Arc::clone(self.keys.get(i)?),
            endpoint: Arc::clone(self.endpoints.get(i)?),
            target_port: self.port,
            connect: crate::runtime::ConnectSettings {
                timeout: Some(pool.connect_timeout),
                keepalive: pool.tcp_keepalive,
                http2: self.multiplexed,
                max_requests_per_connection: pool.max_requests_per_connection,
                idle_timeout: Some(pool.idle_timeout),
            },
            cluster: (Arc::clone(self), i),
        })
    }

    /// Endpoint `i`'s target for TCP or an upgrade (no retries): the balancer's pick.
    pub fn pick_target(self: &Arc<Self>, random: u64) -> Result<Target, ProxyError> {
        match self.pick(None, &[], random) {
            Pick::Endpoint(i) => self.target(i).ok_or_else(|| self.no_healthy()),
            Pick::Passthrough | Pick::NoHealthy => Err(self.no_healthy()),
        }
    }

    /// A connection slot for a TCP stream (`maxConnections`); `None` is an overflow, counted:
    /// the connection is closed at once (Envoy's `UO` for TCP).
    pub fn tcp_slot(&self) -> Option<OwnedSemaphorePermit> {
        let slot = Arc::clone(&self.slots).try_acquire_owned().ok();
        if slot.is_none() {
            self.breaker.record_overflow(PoolResource::Connection);
            tracing::info!(cluster = %self.name, "TCP connection refused: maxConnections reached");
        }
        slot
    }

    pub(super) fn no_healthy(&self) -> ProxyError {
        ProxyError::NoHealthyUpstream {
            service: self.name.clone(),
        }
    }

    fn overflow(&self, what: &str) -> ProxyError {
        ProxyError::Overflow {
            service: self.name.clone(),
            what: what.to_string(),
        }
    }

    /// A place in `http2MaxRequests` for one request (its tries and retries); overflow is a
    /// `503 UO`.
    pub(super) fn request_permit(&self) -> Result<meshapi::traffic::PoolPermit, ProxyError> {
        self.breaker
            .acquire_owned(PoolResource::Request)
            .map_err(|_| self.overflow("active requests (http2MaxRequests)"))
    }

    /// Takes one unit of `r` from the circuit breaker; `false` when at its limit.
    pub(super) fn breaker_try(&self, r: PoolResource) -> bool {
        self.breaker.try_acquire(r).is_ok()
    }

    pub(super) fn breaker_release(&self, r: PoolResource) {
        self.breaker.release(r);
    }

    /// The consistent-hash outcome of a request (`None` hash unless the policy hashes).
    pub(super) fn hash(&self, input: &meshapi::traffic::HashInput<'_>) -> HashOutcome {
        self.balancer.hash(input)
    }

    /// State for `/config_dump`: ejections and circuit-breaker use.
    pub fn status(&self) -> ClusterStatus {
        let now = self.now();
        let outlier = self
            .outlier
            .as_ref()
            .and_then(|o| o.lock().ok().map(|o| o.snapshot(now)))
            .unwrap_or_default();
        ClusterStatus {
            name: self.name.clone(),
            endpoints: self
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| EndpointStatus {
                    address: e.address.to_string(),
                    active_requests: self.active[i].load(Ordering::Relaxed),
                    ejected: outlier.get(i).is_some_and(|o| o.ejected),
                    times_ejected: outlier.get(i).map_or(0, |o| o.times_ejected),
                })
                .collect(),
            circuit_breaker: self.breaker.stats(),
            retries: self.retries.load(Ordering::Relaxed),
            ejections: self.ejections.load(Ordering::Relaxed),
        }
    }
}

/// One cluster in `/config_dump`'s `clusters`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    pub name: String,
    pub endpoints: Vec<EndpointStatus>,
    pub circuit_breaker: meshapi::traffic::PoolStats,
    pub retries: u64,
    pub ejections: u64,
}

/// One endpoint in [`ClusterStatus`].
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    pub address: String,
    pub active_requests: u32,
    pub ejected: bool,
    pub times_ejected: u64,
}

/// Builds the runtime state of every cluster of `table` (the snapshot's), reusing `prev`'s state for
/// clusters whose endpoints and policy did not change.
pub fn build_clusters(
    cfg: &ProxyConfig,
    table: &RouteTable,
    prev: Option<&[Arc<ClusterState>]>,
) -> Vec<Arc<ClusterState>> {
    let by_host: HashMap<&str, (&String, &meshapi::proxy::ServiceConfig)> = cfg
        .services
        .iter()
        .map(|(k, s)| (s.host.as_deref().unwrap_or(k), (k, s)))
        .collect();
    let protocol_of = |service: &str, port: u16| {
        cfg.outbound
            .iter()
            .find(|o| o.service == service && o.target_port() == port)
            .map(|o| o.protocol)
    };
    let prev: HashMap<&str, &Arc<ClusterState>> = prev
        .unwrap_or_default()
        .iter()
        .map(|c| (c.name.as_str(), c))
        .collect();
    table
        .clusters
        .iter()
        .map(|c| {
            let name = format!(
                "outbound|{}|{}|{}",
                c.port,
                c.subset.as_deref().unwrap_or(""),
                c.host
            );
            let (service, endpoints) = match by_host.get(c.host.as_str()) {
                Some((key, svc)) => (
                    (*key).clone(),
                    svc.endpoints
                        .iter()
                        .filter(|e| c.holds(e))
                        .map(|e| Arc::new(e.clone()))
                        .collect(),
                ),
                None => (c.host.clone(), Vec::new()),
            };
            if let Some(old) = prev.get(name.as_str())
                && old.endpoints.len() == endpoints.len()
                && (old.endpoints.iter().zip(&endpoints)).all(|(a, b)| a.same_but_epoch(b))
                && old.policy == c.policy
            {
                old.observe_epochs(&endpoints);
                return Arc::clone(old);
            }
            let multiplexed = matches!(
                protocol_of(&service, c.port),
                Some(Protocol::Http2 | Protocol::Grpc)
            );
            Arc::new(ClusterState::new(name, service, c, endpoints, multiplexed))
        })
        .collect()
}

/// Holds one unit of endpoint `i`'s `active` count for LEAST_REQUEST while a try is
/// outstanding (until its response body ends).
pub(super) struct ActiveGuard(Arc<ClusterState>, usize);

impl ActiveGuard {
    pub(super) fn new(cluster: &Arc<ClusterState>, i: usize) -> ActiveGuard {
        if let Some(a) = cluster.active.get(i) {
            a.fetch_add(1, Ordering::AcqRel);
        }
        ActiveGuard(Arc::clone(cluster), i)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if let Some(a) = self.0.active.get(self.1) {
            let _ = a.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1));
        }
    }
}

/// Takes a connection slot (HTTP/1.1-style upstreams) or waits for one as a pending request,
/// within `http1MaxPendingRequests`; overflow is an immediate 503 `UO`.
pub(super) async fn slot(
    cluster: &ClusterState,
) -> Result<Option<OwnedSemaphorePermit>, ProxyError> {
    if cluster.multiplexed {
        return Ok(None);
    }
    if let Ok(p) = Arc::clone(&cluster.slots).try_acquire_owned() {
        return Ok(Some(p));
    }
    cluster
        .breaker
        .try_acquire(PoolResource::PendingRequest)
        .map_err(|_| cluster.overflow("pending requests (http1MaxPendingRequests)"))?;
    let p = Arc::clone(&cluster.slots).acquire_owned().await;
    cluster.breaker.release(PoolResource::PendingRequest);
    p.map(Some)
        .map_err(|_| cluster.overflow("connection pool closed"))
}
