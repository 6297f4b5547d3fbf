//! Outlier detection (Envoy's consecutive-error detectors as Istio configures them) as a pure
//! state machine: the caller reports each call's result with the time since an arbitrary start,
//! and asks which endpoints are ejected at a given time. Nothing here reads a clock.
//!
//! - An endpoint is ejected when it reaches `consecutive5xxErrors` 5xx in a row (or
//!   `consecutiveGatewayErrors` 502/503/504, or — with `splitExternalLocalOriginErrors` —
//!   `consecutiveLocalOriginFailures` connect failures/timeouts/resets). Without the split, a
//!   local-origin failure counts as a 503.
//! - It stays out for `baseEjectionTime × k` (capped at 300s), where k counts its ejections and
//!   drops by one for every `interval` it spends back in without being ejected, as in Envoy.
//! - No ejection takes the ejected share above `maxEjectionPercent`, except that one endpoint
//!   may always be ejected (Envoy's rule).
//! - meshctl returns an endpoint exactly when its time is up (Envoy waits for the next
//!   `interval` sweep); panic mode (`minHealthPercent`) lives in [`super::Balancer::pick`].
//! - A restarted endpoint is a new host: when the endpoint's proxy reports a new start epoch
//!   ([`OutlierDetector::observe_epoch`]) its ejection, streaks and multiplier are cleared, as
//!   a new pod address starts clean in Istio on Kubernetes.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::lb::EndpointState;
use super::policy::OutlierConfig;

/// How one call to an endpoint ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    /// The endpoint answered with this status.
    Status(u16),
    /// Connecting failed (local origin).
    ConnectFailure,
    /// The call timed out (local origin).
    Timeout,
    /// The connection was reset (local origin).
    Reset,
    /// Connected fine (resets the local-origin streak when errors are split).
    LocalOriginSuccess,
}

#[derive(Debug, Clone, Default)]
struct Host {
    c5xx: u32,
    gateway: u32,
    local: u32,
    /// Ejected until this time.
    until: Option<Duration>,
    /// Envoy's ejection-time multiplier.
    multiplier: u32,
    /// When it last came back (multiplier decay).
    returned_at: Option<Duration>,
    times_ejected: u64,
    /// The start epoch of the endpoint's proxy, when known.
    epoch: Option<u64>,
}

/// One endpoint's state, for metrics and `/config_dump`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EjectionInfo {
    /// Index in the endpoint list.
    pub endpoint: usize,
    pub ejected: bool,
    /// Remaining ejection time, when ejected.
    pub remaining: Option<Duration>,
    /// Ejections so far (`outlier_detection.ejections_total` per endpoint).
    pub times_ejected: u64,
    pub consecutive_5xx: u32,
    pub consecutive_gateway_errors: u32,
    pub consecutive_local_origin_failures: u32,
}

/// The detector for one cluster's endpoint list.
#[derive(Debug, Clone)]
pub struct OutlierDetector {
    cfg: OutlierConfig,
    hosts: Vec<Host>,
    total_ejections: u64,
}

impl OutlierDetector {
    /// A detector for `endpoints` endpoints, none ejected.
    pub fn new(cfg: OutlierConfig, endpoints: usize) -> OutlierDetector {
        OutlierDetector {
            cfg,
            hosts: vec![Host::default(); endpoints],
            total_ejections: 0,
        }
    }

    /// Grows or shrinks the list (new endpoints start clean; indices are the caller's).
    pub fn resize(&mut self, endpoints: usize) {
        self.hosts.resize(endpoints, Host::default());
    }

    pub fn config(&self) -> &OutlierConfig {
        &self.cfg
    }

    /// Ejections since the detector was made.
    pub fn total_ejections(&self) -> u64 {
        self.total_ejections
    }

    /// Whether `endpoint` is ejected at `now`.
    pub fn is_ejected(&self, endpoint: usize, now: Duration) -> bool {
        self.hosts
            .get(endpoint)
            .and_then(|h| h.until)
            .is_some_and(|t| now < t)
    }

    /// Endpoints ejected at `now`.
    pub fn ejected_count(&self, now: Duration) -> usize {
        (0..self.hosts.len())
            .filter(|i| self.is_ejected(*i, now))
            .count()
    }

    /// Marks ejected endpoints unhealthy in `states` (indexed alike).
    pub fn apply(&self, now: Duration, states: &mut [EndpointState]) {
        for (i, s) in states.iter_mut().enumerate() {
            if self.is_ejected(i, now) {
                s.healthy = false;
            }
        }
    }

    /// Brings back endpoints whose time is up (also done by [`OutlierDetector::record`]).
    pub fn refresh(&mut self, now: Duration) {
        for h in &mut self.hosts {
            if let Some(t) = h.until
                && now >= t
            {
                h.until = None;
                h.returned_at = Some(t);
            }
        }
    }

    /// Records the start epoch of `endpoint`'s proxy. A different epoch than the one known
    /// means the proxy restarted and serves again: the endpoint starts clean (no ejection, no
    /// streak, multiplier 0; `times_ejected` is kept for metrics). Returns `true` when this
    /// took an ejected endpoint back. An epoch seen for the first time (or none) changes
    /// nothing: the control plane learns epochs as proxies report in, which is no restart.
    pub fn observe_epoch(&mut self, endpoint: usize, epoch: Option<u64>, now: Duration) -> bool {
        let Some(h) = self.hosts.get_mut(endpoint) else {
            return false;
        };
        let restarted = matches!((h.epoch, epoch), (Some(old), Some(new)) if old != new);
        if epoch.is_some() {
            h.epoch = epoch;
        }
        if !restarted {
            return false;
        }
        let was_ejected = h.until.is_some_and(|t| now < t);
        *h = Host {
            times_ejected: h.times_ejected,
            epoch,
            ..Host::default()
        };
        was_ejected
    }

    fn is_error(&self, status: u16) -> bool {
        (500..600).contains(&status) || self.cfg.error_codes.contains(&status)
    }

    /// Records a call's result at `now`; `true` when this result ejected the endpoint.
    pub fn record(&mut self, endpoint: usize, result: CallResult, now: Duration) -> bool {
        self.refresh(now);
        let split = self.cfg.split_external_local_origin_errors;
        let (err5xx, gateway, local) = match result {
            CallResult::Status(s) => (Some(self.is_error(s)), Some((502..=504).contains(&s)), None),
            CallResult::ConnectFailure | CallResult::Timeout | CallResult::Reset if split => {
                (None, None, Some(true))
            }
            // Without the split, a local-origin failure counts as a 503 upstream error.
            CallResult::ConnectFailure | CallResult::Timeout | CallResult::Reset => {
                (Some(true), Some(true), None)
            }
            CallResult::LocalOriginSuccess => (None, None, Some(false)),
        };
        let Some(h) = self.hosts.get_mut(endpoint) else {
            return false;
        };
        if h.until.is_some() {
            return false;
        }
        let bump = |c: &mut u32, hit: Option<bool>| match hit {
            Some(true) => *c = c.saturating_add(1),
            Some(false) => *c = 0,
            None => {}
        };
        bump(&mut h.c5xx, err5xx);
        bump(&mut h.gateway, gateway);
        bump(&mut h.local, local.filter(|_| split));
        let trip = self.cfg.consecutive_5xx.is_some_and(|n| h.c5xx >= n)
            || self.cfg.consecutive_gateway.is_some_and(|n| h.gateway >= n)
            || (split
                && self.cfg.consecutive_local_origin > 0
                && h.local >= self.cfg.consecutive_local_origin);
        if !trip {
            return false;
        }
        h.c5xx = 0;
        h.gateway = 0;
        h.local = 0;
        self.eject(endpoint, now)
    }

    fn eject(&mut self, endpoint: usize, now: Duration) -> bool {
        let active = self.ejected_count(now) as u64;
        let n = self.hosts.len() as u64;
        let allowed =
            active == 0 || (active + 1) * 100 <= n * u64::from(self.cfg.max_ejection_percent);
        if !allowed {
            return false;
        }
        let cfg = &self.cfg;
        let Some(h) = self.hosts.get_mut(endpoint) else {
            return false;
        };
        if let (Some(back), false) = (h.returned_at, cfg.interval.is_zero()) {
            let clean = now.saturating_sub(back).as_nanos() / cfg.interval.as_nanos();
            h.multiplier = h
                .multiplier
                .saturating_sub(u32::try_from(clean).unwrap_or(u32::MAX));
        }
        h.multiplier = h.multiplier.saturating_add(1);
        let time = cfg
            .base_ejection_time
            .saturating_mul(h.multiplier)
            .min(cfg.max_ejection_time.max(cfg.base_ejection_time));
        h.until = Some(now + time);
        h.times_ejected += 1;
        self.total_ejections += 1;
        true
    }

    /// Every endpoint's state at `now`.
    pub fn snapshot(&self, now: Duration) -> Vec<EjectionInfo> {
        self.hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let remaining = h.until.filter(|t| now < *t).map(|t| t - now);
                EjectionInfo {
                    endpoint: i,
                    ejected: remaining.is_some(),
                    remaining,
                    times_ejected: h.times_ejected,
                    consecutive_5xx: h.c5xx,
                    consecutive_gateway_errors: h.gateway,
                    consecutive_local_origin_failures: h.local,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::{Balancer, ClusterPolicy, EndpointState, LbAlgorithm, LbPolicy, Pick};

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn cfg(min_health_percent: u32) -> OutlierConfig {
        OutlierConfig {
            consecutive_5xx: Some(5),
            consecutive_gateway: None,
            split_external_local_origin_errors: false,
            consecutive_local_origin: 5,
            interval: S(10),
            base_ejection_time: S(30),
            max_ejection_time: S(300),
            max_ejection_percent: 100,
            min_health_percent,
            error_codes: vec![],
        }
    }

    fn eject(d: &mut OutlierDetector, endpoint: usize, at: Duration) {
        for _ in 0..5 {
            d.record(endpoint, CallResult::ConnectFailure, at);
        }
        assert!(d.is_ejected(endpoint, at));
    }

    #[test]
    fn a_new_epoch_takes_an_ejected_endpoint_back_at_once() {
        let mut d = OutlierDetector::new(cfg(0), 2);
        assert!(
            !d.observe_epoch(0, Some(7), S(0)),
            "first epoch: nothing to clear"
        );
        eject(&mut d, 0, S(1));
        // The same epoch again (a config push about something else) changes nothing.
        assert!(!d.observe_epoch(0, Some(7), S(2)));
        assert!(!d.observe_epoch(0, None, S(2)), "no epoch is no news");
        assert!(d.is_ejected(0, S(2)));
        // The proxy restarted: back now, not at 31s.
        assert!(d.observe_epoch(0, Some(8), S(3)));
        assert!(!d.is_ejected(0, S(3)));
        let snap = d.snapshot(S(3));
        assert_eq!(
            (
                snap[0].ejected,
                snap[0].times_ejected,
                snap[0].consecutive_5xx
            ),
            (false, 1, 0)
        );
        // A new host: its next ejection lasts baseEjectionTime, not twice that.
        eject(&mut d, 0, S(4));
        assert!(d.is_ejected(0, S(33)));
        assert!(!d.is_ejected(0, S(34)));
        // An endpoint's epoch is its own: the other one is untouched.
        eject(&mut d, 1, S(40));
        assert!(!d.observe_epoch(0, Some(9), S(41)), "0 was not ejected");
        assert!(d.is_ejected(1, S(41)));
    }

    #[test]
    fn a_new_epoch_clears_a_streak_in_progress() {
        let mut d = OutlierDetector::new(cfg(0), 1);
        d.observe_epoch(0, Some(1), S(0));
        for _ in 0..4 {
            d.record(0, CallResult::Status(503), S(0));
        }
        d.observe_epoch(0, Some(2), S(1));
        // Four more after the restart do not reach five.
        for _ in 0..4 {
            assert!(!d.record(0, CallResult::Status(503), S(1)));
        }
        assert!(d.record(0, CallResult::Status(503), S(1)));
    }

    #[test]
    fn below_min_health_percent_the_balancer_uses_ejected_endpoints_too() {
        let policy = |min| ClusterPolicy {
            load_balancer: LbPolicy {
                algorithm: LbAlgorithm::RoundRobin,
                warmup: None,
            },
            outlier_detection: Some(cfg(min)),
            ..ClusterPolicy::default()
        };
        let keys = [("a", 1), ("b", 1)];
        let mut d = OutlierDetector::new(cfg(60), 2);
        eject(&mut d, 0, S(0));
        let mut states = vec![EndpointState::default(); 2];
        d.apply(S(0), &mut states);
        let picks = |b: &Balancer| -> std::collections::BTreeSet<Pick> {
            (0..8).map(|r| b.pick(&states, None, &[], r)).collect()
        };
        // 1 of 2 healthy is 50%: under 60% the cluster panics and balances over both (Envoy's
        // healthy panic threshold, which Istio's minHealthPercent sets).
        assert_eq!(picks(&Balancer::new(&policy(60), &keys)).len(), 2);
        // At 50% it is not under the threshold; at 0 panic is off.
        for min in [50, 0] {
            let only = picks(&Balancer::new(&policy(min), &keys));
            assert_eq!(only.into_iter().collect::<Vec<_>>(), [Pick::Endpoint(1)]);
        }
    }
}
