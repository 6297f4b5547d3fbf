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
