//! Load balancers as pure data over an endpoint list: the caller gives, per pick, each
//! endpoint's health, active requests and age, a random number, and the endpoints to avoid
//! (those a retry already tried); the balancer answers an index.
//!
//! Consistent hashing (ring hash, maglev) is built once per endpoint set from the endpoints'
//! stable keys (their addresses): the same key keeps its endpoint while the set is unchanged,
//! and removing one of N endpoints moves only ~1/N of keys.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::authz::HeaderLookup;

use super::matcher::query_param;
use super::policy::{ClusterPolicy, HashKey, LbAlgorithm, WarmupConfig};
use super::route::sub_random;

/// 64-bit FNV-1a with a splitmix finalizer: stable across runs, platforms and versions (ring
/// positions must not move when the proxy restarts).
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    sub_random(h, 0)
}

fn hash_with(key: &str, salt: u64) -> u64 {
    sub_random(hash_bytes(key.as_bytes()), salt)
}

/// What the balancer needs to know about one endpoint at pick time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointState {
    /// Not ejected and not failing health checks.
    pub healthy: bool,
    /// Requests in flight to it (LEAST_REQUEST).
    pub active_requests: u32,
    /// Time since it joined, for slow start; `None`: long ago.
    pub age: Option<Duration>,
}

impl Default for EndpointState {
    fn default() -> Self {
        EndpointState {
            healthy: true,
            active_requests: 0,
            age: None,
        }
    }
}

/// The balancer's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pick {
    /// Send to this endpoint (index into the list the balancer was built with).
    Endpoint(usize),
    /// PASSTHROUGH: connect to the connection's original destination address.
    Passthrough,
    /// No endpoint can take the request: 503 with flag `UH`.
    NoHealthy,
}

/// The request properties a consistent hash may use.
#[derive(Clone, Copy)]
pub struct HashInput<'a> {
    pub headers: &'a dyn HeaderLookup,
    pub query: &'a str,
    pub source_ip: Option<IpAddr>,
    /// Used to generate a new cookie's value.
    pub random: u64,
}

/// A cookie the proxy must set on the response (`httpCookie` with a `ttl`, absent on the
/// request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetCookie {
    pub name: String,
    pub value: String,
    pub path: Option<String>,
    pub ttl: Duration,
    pub attributes: Vec<String>,
}

impl SetCookie {
    /// The `Set-Cookie` header value (`Max-Age` omitted for a session cookie, ttl 0).
    pub fn header_value(&self) -> String {
        let mut v = format!("{}=\"{}\"", self.name, self.value);
        if !self.ttl.is_zero() {
            v.push_str(&format!("; Max-Age={}", self.ttl.as_secs()));
        }
        if let Some(p) = &self.path {
            v.push_str(&format!("; Path={p}"));
        }
        v.push_str("; HttpOnly");
        for a in &self.attributes {
            v.push_str("; ");
            v.push_str(a);
        }
        v
    }
}

/// The hash of one request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HashOutcome {
    /// `None`: no key on the request; the balancer picks at random.
    pub hash: Option<u64>,
    pub set_cookie: Option<SetCookie>,
}

/// A load balancer for one cluster's endpoint list. Picking takes `&self` (round-robin's
/// counter is atomic), so one balancer serves every connection of the proxy.
#[derive(Debug)]
pub struct Balancer {
    algorithm: LbAlgorithm,
    warmup: Option<WarmupConfig>,
    weights: Vec<u32>,
    panic_threshold: u32,
    rr: AtomicU64,
    /// Ring hash: sorted `(position, endpoint)`.
    ring: Vec<(u64, u32)>,
    /// Maglev lookup table.
    table: Vec<u32>,
}

impl Balancer {
    /// Builds a balancer over `endpoints`: `(stable key, weight)`; the key (the endpoint's
    /// address) places it on a hash ring.
    pub fn new(policy: &ClusterPolicy, endpoints: &[(&str, u32)]) -> Balancer {
        let weights: Vec<u32> = endpoints.iter().map(|(_, w)| *w).collect();
        let mut b = Balancer {
            algorithm: policy.load_balancer.algorithm.clone(),
            warmup: policy.load_balancer.warmup.clone(),
            weights,
            panic_threshold: policy
                .outlier_detection
                .as_ref()
                .map_or(0, |o| o.min_health_percent),
            rr: AtomicU64::new(0),
            ring: Vec::new(),
            table: Vec::new(),
        };
        match &b.algorithm {
            LbAlgorithm::RingHash {
                minimum_ring_size, ..
            } => b.ring = build_ring(endpoints, *minimum_ring_size),
            LbAlgorithm::Maglev { table_size, .. } => {
                b.table = build_maglev(endpoints, *table_size)
            }
            _ => {}
        }
        b
    }

    /// The number of endpoints.
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// The consistent-hash key of a request; empty for other algorithms.
    pub fn hash(&self, input: &HashInput<'_>) -> HashOutcome {
        let key = match &self.algorithm {
            LbAlgorithm::RingHash { key, .. } | LbAlgorithm::Maglev { key, .. } => key,
            _ => return HashOutcome::default(),
        };
        let hash = |s: &str| Some(hash_bytes(s.as_bytes()));
        match key {
            HashKey::Header(h) => HashOutcome {
                hash: input.headers.get(h).and_then(hash),
                set_cookie: None,
            },
            HashKey::QueryParameter(q) => HashOutcome {
                hash: query_param(input.query, q).and_then(hash),
                set_cookie: None,
            },
            HashKey::SourceIp => HashOutcome {
                hash: input.source_ip.map(|ip| match ip {
                    IpAddr::V4(v) => hash_bytes(&v.octets()),
                    IpAddr::V6(v) => hash_bytes(&v.octets()),
                }),
                set_cookie: None,
            },
            HashKey::Cookie {
                name,
                path,
                ttl,
                attributes,
            } => {
                if let Some(v) = input.headers.get("cookie").and_then(|c| cookie(c, name)) {
                    return HashOutcome {
                        hash: hash(v),
                        set_cookie: None,
                    };
                }
                let Some(ttl) = ttl else {
                    return HashOutcome::default();
                };
                let value = format!("{:016x}", sub_random(input.random, 7));
                HashOutcome {
                    hash: hash(&value),
                    set_cookie: Some(SetCookie {
                        name: name.clone(),
                        value,
                        path: path.clone(),
                        ttl: *ttl,
                        attributes: attributes.clone(),
                    }),
                }
            }
        }
    }

    /// Picks an endpoint. `states` is indexed like the endpoint list; `exclude` lists endpoints
    /// to avoid (already tried by this request) — ignored when nothing else is available;
    /// `hash` is [`Balancer::hash`]'s; `random` is a fresh random number.
    ///
    /// Panic mode: when fewer than `minHealthPercent` of endpoints are healthy, every endpoint
    /// counts as healthy (Envoy's panic threshold, which Istio's `minHealthPercent` sets).
    pub fn pick(
        &self,
        states: &[EndpointState],
        hash: Option<u64>,
        exclude: &[usize],
        random: u64,
    ) -> Pick {
        if matches!(self.algorithm, LbAlgorithm::Passthrough) {
            return Pick::Passthrough;
        }
        let n = self.weights.len().min(states.len());
        if n == 0 {
            return Pick::NoHealthy;
        }
        let healthy = states[..n].iter().filter(|s| s.healthy).count();
        let panic = (healthy as u64) * 100 < (n as u64) * u64::from(self.panic_threshold);
        let usable = |i: usize| (panic || states[i].healthy) && self.weights[i] > 0;
        let any_fresh = (0..n).any(|i| usable(i) && !exclude.contains(&i));
        let ok = |i: usize| usable(i) && (!any_fresh || !exclude.contains(&i));
        if !(0..n).any(ok) {
            return Pick::NoHealthy;
        }
        let idx = match &self.algorithm {
            LbAlgorithm::RingHash { .. } => self.pick_ring(hash.unwrap_or(random), &ok),
            LbAlgorithm::Maglev { .. } => self.pick_maglev(hash.unwrap_or(random), &ok),
            LbAlgorithm::RoundRobin => self.pick_rr(states, n, &ok, random),
            LbAlgorithm::LeastRequest => self.pick_least(states, n, &ok, random),
            LbAlgorithm::Random | LbAlgorithm::Passthrough => {
                self.pick_weighted(states, n, &ok, random, |_| 1.0)
            }
        };
        idx.map_or(Pick::NoHealthy, Pick::Endpoint)
    }

    /// Effective weight: configured weight times the slow-start factor.
    fn eff(&self, states: &[EndpointState], i: usize) -> f64 {
        let w = f64::from(self.weights[i]);
        match (&self.warmup, states[i].age) {
            (Some(cfg), Some(age)) => w * cfg.factor(age),
            _ => w,
        }
    }

    fn uniform(&self, states: &[EndpointState], n: usize) -> bool {
        let first = self.eff(states, 0);
        (1..n).all(|i| self.eff(states, i) == first)
    }

    fn pick_weighted(
        &self,
        states: &[EndpointState],
        n: usize,
        ok: &dyn Fn(usize) -> bool,
        random: u64,
        scale: impl Fn(usize) -> f64,
    ) -> Option<usize> {
        let w = |i: usize| {
            if ok(i) {
                self.eff(states, i) * scale(i)
            } else {
                0.0
            }
        };
        let total: f64 = (0..n).map(w).sum();
        if total <= 0.0 {
            return (0..n).find(|i| ok(*i));
        }
        let mut x = (random >> 11) as f64 / (1u64 << 53) as f64 * total;
        for i in 0..n {
            let wi = w(i);
            if x < wi {
                return Some(i);
            }
            x -= wi;
        }
        (0..n).rev().find(|i| ok(*i))
    }

    fn nth_ok(n: usize, ok: &dyn Fn(usize) -> bool, k: usize) -> Option<usize> {
        (0..n).filter(|i| ok(*i)).nth(k)
    }

    fn pick_rr(
        &self,
        states: &[EndpointState],
        n: usize,
        ok: &dyn Fn(usize) -> bool,
        random: u64,
    ) -> Option<usize> {
        let c = self.rr.fetch_add(1, Ordering::Relaxed);
        if self.uniform(states, n) {
            let count = (0..n).filter(|i| ok(*i)).count() as u64;
            return Self::nth_ok(n, ok, (c % count.max(1)) as usize);
        }
        if self.warmup.is_some() {
            return self.pick_weighted(states, n, ok, sub_random(random, c), |_| 1.0);
        }
        // Weighted: a cycle of sum(weights) picks gives each endpoint its weight.
        let total: u64 = (0..n)
            .filter(|i| ok(*i))
            .map(|i| u64::from(self.weights[i]))
            .sum();
        let mut x = c % total.max(1);
        for i in (0..n).filter(|i| ok(*i)) {
            let w = u64::from(self.weights[i]);
            if x < w {
                return Some(i);
            }
            x -= w;
        }
        None
    }

    /// Envoy's LEAST_REQUEST: with equal weights, the better of two random choices; otherwise
    /// weighted random with weight / (active + 1).
    fn pick_least(
        &self,
        states: &[EndpointState],
        n: usize,
        ok: &dyn Fn(usize) -> bool,
        random: u64,
    ) -> Option<usize> {
        if self.uniform(states, n) {
            let count = (0..n).filter(|i| ok(*i)).count() as u64;
            let a = Self::nth_ok(n, ok, (sub_random(random, 1) % count.max(1)) as usize)?;
            let b = Self::nth_ok(n, ok, (sub_random(random, 2) % count.max(1)) as usize)?;
            return Some(if states[b].active_requests < states[a].active_requests {
                b
            } else {
                a
            });
        }
        self.pick_weighted(states, n, ok, random, |i| {
            1.0 / (f64::from(states[i].active_requests) + 1.0)
        })
    }

    fn pick_ring(&self, hash: u64, ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        let start = self.ring.partition_point(|(h, _)| *h < hash);
        (0..self.ring.len())
            .map(|k| self.ring[(start + k) % self.ring.len()].1 as usize)
            .find(|i| ok(*i))
    }

    fn pick_maglev(&self, hash: u64, ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        let m = self.table.len() as u64;
        if m == 0 {
            return None;
        }
        let first = self.table[(hash % m) as usize] as usize;
        if ok(first) {
            return Some(first);
        }
        // Fall back through a deterministic sequence of slots: keys of a failed endpoint spread
        // over the others.
        (1..m)
            .map(|k| self.table[(sub_random(hash, k) % m) as usize] as usize)
            .take(64)
            .find(|i| ok(*i))
            .or_else(|| self.table.iter().map(|i| *i as usize).find(|i| ok(*i)))
    }
}

/// The value of cookie `name` in a `Cookie` header.
fn cookie<'c>(header: &'c str, name: &str) -> Option<&'c str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then(|| v.trim_matches('"'))
    })
}

/// The ring: each endpoint gets virtual nodes in proportion to its weight, at least `min_size`
/// in all (capped at 8M). Nodes per unit of weight are rounded up to a power of two, so that
/// removing or adding one endpoint usually leaves every other endpoint's nodes where they were
/// and only ~1/N of keys move (Envoy rescales every endpoint's node count, which moves more).
fn build_ring(endpoints: &[(&str, u32)], min_size: u64) -> Vec<(u64, u32)> {
    let total: u64 = endpoints.iter().map(|(_, w)| u64::from(*w)).sum();
    if total == 0 {
        return Vec::new();
    }
    let size = min_size.clamp(1, 8 * 1024 * 1024);
    let per_weight = size.div_ceil(total).next_power_of_two();
    let mut ring = Vec::new();
    for (i, (key, w)) in endpoints.iter().enumerate() {
        let count = (per_weight * u64::from(*w)).min(8 * 1024 * 1024);
        for j in 0..count {
            ring.push((hash_bytes(format!("{key}_{j}").as_bytes()), i as u32));
        }
    }
    ring.sort_unstable();
    ring
}

/// Maglev's lookup table (Eisenbud et al., weighted as Envoy does): each endpoint fills slots
/// along its own permutation of the table, in turns proportional to its weight.
fn build_maglev(endpoints: &[(&str, u32)], size: u64) -> Vec<u32> {
    let m = size.max(1);
    let max_w = endpoints.iter().map(|(_, w)| *w).max().unwrap_or(0);
    if max_w == 0 {
        return Vec::new();
    }
    let perms: Vec<(u64, u64)> = endpoints
        .iter()
        .map(|(k, _)| {
            (
                hash_with(k, 1) % m,
                hash_with(k, 2) % m.saturating_sub(1).max(1) + 1,
            )
        })
        .collect();
    let mut next = vec![0u64; endpoints.len()];
    let mut credit = vec![0.0f64; endpoints.len()];
    let mut table = vec![u32::MAX; m as usize];
    let mut filled = 0u64;
    while filled < m {
        let before = filled;
        for (i, (_, w)) in endpoints.iter().enumerate() {
            credit[i] += f64::from(*w) / f64::from(max_w);
            while credit[i] >= 1.0 && filled < m {
                credit[i] -= 1.0;
                let (offset, skip) = perms[i];
                // Next free slot on this endpoint's permutation (bounded: m tries at most).
                for _ in 0..m {
                    let slot = ((offset + next[i] % m * skip) % m) as usize;
                    next[i] += 1;
                    if table[slot] == u32::MAX {
                        table[slot] = i as u32;
                        filled += 1;
                        break;
                    }
                }
            }
        }
        if filled == before {
            // A table size that is not prime can leave permutations short: fill what is left
            // in turn (validation asks for a prime, so this is a safety net).
            let n = endpoints.len().max(1);
            for (i, slot) in table.iter_mut().filter(|s| **s == u32::MAX).enumerate() {
                *slot = (i % n) as u32;
            }
            break;
        }
    }
    table
}
