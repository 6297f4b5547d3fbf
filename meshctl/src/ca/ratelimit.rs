//! A per-identity token bucket for the CSR endpoint.
//!
//! A healthy proxy asks for a certificate once per half-lifetime; a proxy stuck in a loop (or a
//! stolen credential used in one) should not make the CA sign thousands of certificates.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use meshapi::ca_api::SpiffeId;

/// Rate limit settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Requests allowed back to back per identity. Default 5.
    pub burst: u32,
    /// One more request is allowed per this interval. Default 10 s.
    pub refill_every: Duration,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            burst: 5,
            refill_every: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets keyed by identity.
#[derive(Debug)]
pub struct RateLimiter {
    config: RateLimitConfig,
    buckets: Mutex<HashMap<SpiffeId, Bucket>>,
}

/// Beyond this many tracked identities, full buckets are forgotten.
const PRUNE_ABOVE: usize = 10_000;

impl RateLimiter {
    /// A limiter with `config`.
    pub fn new(config: RateLimitConfig) -> Self {
        Self {
            config,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `identity`'s bucket, or says how long until one is available.
    pub fn try_acquire(&self, identity: &SpiffeId, now: Instant) -> Result<(), Duration> {
        let burst = f64::from(self.config.burst.max(1));
        let per_sec = 1.0 / self.config.refill_every.as_secs_f64().max(1e-3);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > PRUNE_ABOVE {
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * per_sec < burst
            });
        }
        let bucket = buckets.entry(identity.clone()).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_sec).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_sec))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill_per_identity() {
        let limiter = RateLimiter::new(RateLimitConfig {
            burst: 2,
            refill_every: Duration::from_secs(10),
        });
        let a: SpiffeId = "spiffe://cluster.local/ns/default/sa/a".parse().unwrap();
        let b: SpiffeId = "spiffe://cluster.local/ns/default/sa/b".parse().unwrap();
        let t0 = Instant::now();
        assert!(limiter.try_acquire(&a, t0).is_ok());
        assert!(limiter.try_acquire(&a, t0).is_ok());
        let wait = limiter.try_acquire(&a, t0).unwrap_err();
        assert!(wait > Duration::from_secs(9) && wait <= Duration::from_secs(10));
        assert!(
            limiter.try_acquire(&b, t0).is_ok(),
            "buckets are per identity"
        );
        assert!(
            limiter
                .try_acquire(&a, t0 + Duration::from_secs(10))
                .is_ok()
        );
        assert!(
            limiter
                .try_acquire(&a, t0 + Duration::from_secs(10))
                .is_err()
        );
    }
}
