//! Retries: the compiled policy of a route (Istio's defaults filled in), the decision whether a
//! failed attempt is retried (Envoy's `retryOn` conditions, gRPC ones included), and Envoy's
//! jittered exponential backoff as a pure function of the attempt number and a random number.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::values::{RetryCondition, RetryOn};

/// Envoy's default base backoff interval (Istio keeps it).
pub const DEFAULT_BASE_BACKOFF: Duration = Duration::from_millis(25);

/// The retry policy of a route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Retries per request, not counting the first try. Istio's default 2.
    pub attempts: u32,
    /// Conditions retried. Istio's default
    /// `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes`.
    pub retry_on: RetryOn,
    /// Statuses retried under `retriable-status-codes`. Default none (Istio >= 1.24 does not
    /// retry an application's 503).
    #[serde(default)]
    pub retriable_status_codes: Vec<u16>,
    /// Timeout of each try, the first included. Default none: only the route timeout bounds it.
    #[serde(default)]
    pub per_try_timeout: Option<Duration>,
    /// A retry avoids the endpoints already tried (pass them as the LB's exclude set).
    /// Default true.
    pub retry_ignore_previous_hosts: bool,
    /// Base backoff interval. Default 25ms; the cap is 10x the base (250ms by default).
    pub backoff: Duration,
}

impl RetryPolicy {
    /// Istio's policy for a route without `retries`: 2 attempts on
    /// `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes`, a new
    /// endpoint per retry, 25ms base backoff (the model's `RetryPolicy::istio_default`, which a
    /// meshmodel test keeps equal to this).
    pub fn istio_default() -> RetryPolicy {
        use RetryCondition as C;
        RetryPolicy {
            attempts: 2,
            retry_on: RetryOn::new(vec![
                C::ConnectFailure,
                C::RefusedStream,
                C::Unavailable,
                C::Cancelled,
                C::RetriableStatusCodes,
            ]),
            retriable_status_codes: Vec::new(),
            per_try_timeout: None,
            retry_ignore_previous_hosts: true,
            backoff: DEFAULT_BASE_BACKOFF,
        }
    }

    /// Whether a failed try is retried under `retry_on` (the attempt budget, the route timeout
    /// and the `maxRetries` circuit breaker are the caller's to check).
    pub fn should_retry(&self, outcome: &AttemptOutcome) -> bool {
        self.retry_on
            .conditions()
            .iter()
            .any(|c| condition_covers(*c, outcome, &self.retriable_status_codes))
    }

    /// The wait before retry number `retry` (1 for the first retry), [`backoff`] with this
    /// policy's base.
    pub fn backoff_for(&self, retry: u32, random: u64) -> Duration {
        backoff(self.backoff, retry, random)
    }
}

/// How one try ended, as retry conditions see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A response arrived. `grpc_status` is the `grpc-status` header or trailer, if any.
    Response {
        status: u16,
        grpc_status: Option<u32>,
    },
    /// The connection to the endpoint could not be opened.
    ConnectFailure,
    /// The stream was reset or the connection closed before a response; `request_sent` tells
    /// whether request bytes had gone out.
    Reset { request_sent: bool },
    /// HTTP/2 REFUSED_STREAM.
    RefusedStream,
    /// `perTryTimeout` expired.
    PerTryTimeout,
}

/// gRPC status codes of the gRPC retry conditions.
const GRPC_CANCELLED: u32 = 1;
const GRPC_DEADLINE_EXCEEDED: u32 = 4;
const GRPC_RESOURCE_EXHAUSTED: u32 = 8;
const GRPC_INTERNAL: u32 = 13;
const GRPC_UNAVAILABLE: u32 = 14;

fn condition_covers(c: RetryCondition, o: &AttemptOutcome, codes: &[u16]) -> bool {
    use AttemptOutcome as O;
    use RetryCondition as C;
    let status = match o {
        O::Response { status, .. } => Some(*status),
        _ => None,
    };
    let grpc = match o {
        O::Response { grpc_status, .. } => *grpc_status,
        _ => None,
    };
    let no_response = matches!(
        o,
        O::ConnectFailure | O::Reset { .. } | O::RefusedStream | O::PerTryTimeout
    );
    match c {
        // Any 5xx, or no response at all (reset, connect failure, refused stream, timeout).
        C::FiveXx => status.is_some_and(|s| (500..600).contains(&s)) || no_response,
        C::GatewayError => {
            matches!(status, Some(502..=504)) || matches!(o, O::PerTryTimeout | O::ConnectFailure)
        }
        C::Reset => matches!(o, O::Reset { .. } | O::PerTryTimeout | O::ConnectFailure),
        C::ResetBeforeRequest => matches!(
            o,
            O::Reset {
                request_sent: false
            }
        ),
        C::ConnectFailure => matches!(o, O::ConnectFailure),
        C::Retriable4xx => status == Some(409),
        C::RefusedStream => matches!(o, O::RefusedStream),
        C::RetriableStatusCodes => status.is_some_and(|s| codes.contains(&s)),
        C::Status(code) => status == Some(code),
        C::Cancelled => grpc == Some(GRPC_CANCELLED),
        C::DeadlineExceeded => grpc == Some(GRPC_DEADLINE_EXCEEDED),
        C::Internal => grpc == Some(GRPC_INTERNAL),
        C::ResourceExhausted => grpc == Some(GRPC_RESOURCE_EXHAUSTED),
        C::Unavailable => grpc == Some(GRPC_UNAVAILABLE),
        // No retriable headers are configurable in Istio; the proxy has no local rate limiter;
        // meshctl speaks no HTTP/3.
        C::RetriableHeaders | C::EnvoyRateLimited | C::Http3PostConnectFailure => false,
    }
}

/// Envoy's jittered exponential backoff: before retry `retry` (1-based) wait a uniformly random
/// time in `[0, min(base * 2^(retry-1), 10 * base))`. With the 25ms default: below 25, 50, 100,
/// 200, then 250ms. `random` is any uniformly distributed number.
pub fn backoff(base: Duration, retry: u32, random: u64) -> Duration {
    let base_ms = u64::try_from(base.as_millis()).unwrap_or(u64::MAX).max(1);
    let max_ms = base_ms.saturating_mul(10);
    let shift = retry.saturating_sub(1).min(63);
    let interval = base_ms
        .checked_mul(1u64 << shift)
        .map_or(max_ms, |v| v.min(max_ms));
    Duration::from_millis(random % interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_caps() {
        let b = DEFAULT_BASE_BACKOFF;
        assert_eq!(backoff(b, 1, 24), Duration::from_millis(24));
        assert_eq!(backoff(b, 1, 25), Duration::ZERO);
        assert_eq!(backoff(b, 2, 49), Duration::from_millis(49));
        assert_eq!(backoff(b, 5, 249), Duration::from_millis(249));
        assert_eq!(
            backoff(b, 30, u64::MAX),
            Duration::from_millis(u64::MAX % 250)
        );
    }
}
