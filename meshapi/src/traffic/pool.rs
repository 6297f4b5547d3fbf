//! Connection-pool accounting (Envoy's circuit breakers) as lock-free counters: the proxy
//! acquires a resource before using it and releases it after; an acquire over the limit is an
//! overflow, answered at once with 503 and flag `UO` — nothing queues without bound.
//!
//! How the proxy uses it per request: acquire [`PoolResource::Request`] (`http2MaxRequests`,
//! active requests of either HTTP version); reuse an idle connection, or acquire
//! [`PoolResource::Connection`] (`maxConnections`) to open one, or else acquire
//! [`PoolResource::PendingRequest`] (`http1MaxPendingRequests`) while waiting for a connection;
//! a retry acquires [`PoolResource::Retry`] (`maxRetries`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::policy::PoolLimits;

/// The counted resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolResource {
    Connection,
    PendingRequest,
    Request,
    Retry,
}

impl PoolResource {
    fn index(self) -> usize {
        match self {
            PoolResource::Connection => 0,
            PoolResource::PendingRequest => 1,
            PoolResource::Request => 2,
            PoolResource::Retry => 3,
        }
    }
}

/// A resource was at its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker: {resource:?} limit {limit} reached")]
pub struct Overflow {
    pub resource: PoolResource,
    pub limit: u32,
}

impl Overflow {
    /// The status the proxy answers with.
    pub const STATUS: u16 = 503;
    /// The access-log response flag.
    pub const FLAG: &'static str = "UO";
}

/// Current use and overflow counts, for metrics and `/config_dump`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolStats {
    pub connections: u32,
    pub pending_requests: u32,
    pub requests: u32,
    pub retries: u32,
    /// Overflows per resource, in the order above (`upstream_cx_overflow`,
    /// `upstream_rq_pending_overflow`, ...).
    pub overflows: [u64; 4],
}

/// The counters of one cluster.
#[derive(Debug)]
pub struct CircuitBreaker {
    limits: [u32; 4],
    max_requests_per_connection: u32,
    used: [AtomicU32; 4],
    overflows: [AtomicU64; 4],
}

impl CircuitBreaker {
    pub fn new(limits: &PoolLimits) -> CircuitBreaker {
        CircuitBreaker {
            limits: [
                limits.max_connections,
                limits.http1_max_pending_requests,
                limits.http2_max_requests,
                limits.max_retries,
            ],
            max_requests_per_connection: limits.max_requests_per_connection,
            used: Default::default(),
            overflows: Default::default(),
        }
    }

    /// Takes one unit of `r`, or reports the overflow (and counts it).
    pub fn try_acquire(&self, r: PoolResource) -> Result<(), Overflow> {
        let i = r.index();
        let limit = self.limits[i];
        let res = self.used[i].fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
            (u < limit).then_some(u + 1)
        });
        match res {
            Ok(_) => Ok(()),
            Err(_) => {
                self.overflows[i].fetch_add(1, Ordering::Relaxed);
                Err(Overflow { resource: r, limit })
            }
        }
    }

    /// Counts an overflow of `r` found by the caller's own limit (a proxy that keeps
    /// connection slots elsewhere), as [`CircuitBreaker::try_acquire`] counts its own.
    pub fn record_overflow(&self, r: PoolResource) {
        self.overflows[r.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Gives back one unit of `r` (never below zero).
    pub fn release(&self, r: PoolResource) {
        let _ = self.used[r.index()]
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| u.checked_sub(1));
    }

    /// [`CircuitBreaker::try_acquire`] returning a guard that releases on drop.
    pub fn acquire_owned(self: &Arc<Self>, r: PoolResource) -> Result<PoolPermit, Overflow> {
        self.try_acquire(r)?;
        Ok(PoolPermit {
            breaker: Arc::clone(self),
            resource: r,
        })
    }

    /// Whether a connection that has served `served` requests may take another
    /// (`maxRequestsPerConnection`; 0 is unlimited).
    pub fn connection_reusable(&self, served: u32) -> bool {
        self.max_requests_per_connection == 0 || served < self.max_requests_per_connection
    }

    pub fn stats(&self) -> PoolStats {
        let u = |i: usize| self.used[i].load(Ordering::Relaxed);
        PoolStats {
            connections: u(0),
            pending_requests: u(1),
            requests: u(2),
            retries: u(3),
            overflows: std::array::from_fn(|i| self.overflows[i].load(Ordering::Relaxed)),
        }
    }
}

/// One acquired unit, released when dropped.
#[derive(Debug)]
pub struct PoolPermit {
    breaker: Arc<CircuitBreaker>,
    resource: PoolResource,
}

impl Drop for PoolPermit {
    fn drop(&mut self) {
        self.breaker.release(self.resource);
    }
}
