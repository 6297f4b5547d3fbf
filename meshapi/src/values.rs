//! Value types the proxy contract shares with the Istio model: what a compiled config carries
//! verbatim from a user's resource (an AuthorizationPolicy's `action`, IP blocks, a retry
//! policy's `retryOn`). They parse and print themselves exactly as Istio writes them, so the
//! model reads them from YAML and the proxy config carries them unchanged.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Implements `Deserialize` for a newtype built from a string by a fallible constructor. The
/// caller must have `fmt`, `Deserialize`, `Deserializer`, `Visitor` and `de` in scope.
#[macro_export]
macro_rules! deserialize_from_str {
    ($ty:ty, $expecting:literal, $ctor:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                        ($ctor)(v).map_err(E::custom)
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}

/// `action` of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    Allow,
    Deny,
    /// Mark matching requests for audit logging; allows or denies nothing.
    Audit,
    /// Delegate to an external authorizer. Not supported by meshctl.
    Custom,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
            Action::Custom => "CUSTOM",
        })
    }
}

/// An IP address or CIDR block (`10.0.0.1`, `10.0.0.0/16`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpBlock {
    pub addr: IpAddr,
    /// Prefix length; 32 or 128 for a single address.
    pub prefix_len: u8,
    /// Whether it was written with a `/len`.
    cidr: bool,
}

impl IpBlock {
    pub fn new(s: &str) -> Result<IpBlock, String> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| format!("bad IP address {s:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max && !l.starts_with('+') => n,
                _ => {
                    return Err(format!(
                        "bad CIDR range {s:?}: prefix length must be 0 to {max}"
                    ));
                }
            },
        };
        Ok(IpBlock {
            addr,
            prefix_len,
            cidr: len.is_some(),
        })
    }

    /// Whether `ip` is inside this block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for IpBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.cidr {
            write!(f, "{}/{}", self.addr, self.prefix_len)
        } else {
            write!(f, "{}", self.addr)
        }
    }
}

impl Serialize for IpBlock {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

deserialize_from_str!(
    IpBlock,
    "an IP address or CIDR block such as \"10.0.0.0/16\"",
    IpBlock::new
);

/// One condition of an HTTP retry policy's `retryOn`, with the names Envoy and Istio use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryCondition {
    /// `5xx`: any 5xx response, a reset, or a connect failure.
    FiveXx,
    /// `gateway-error`: 502, 503 or 504.
    GatewayError,
    /// `reset`: no response (disconnect, reset, read timeout).
    Reset,
    /// `reset-before-request`: reset before any request bytes were sent upstream.
    ResetBeforeRequest,
    /// `connect-failure`: the upstream connection could not be opened.
    ConnectFailure,
    /// `retriable-4xx`: 409.
    Retriable4xx,
    /// `refused-stream`: HTTP/2 REFUSED_STREAM.
    RefusedStream,
    /// `retriable-status-codes`: the status codes listed in the policy (bare numbers in `retryOn`).
    RetriableStatusCodes,
    /// `retriable-headers`: responses carrying a configured retriable header.
    RetriableHeaders,
    /// `envoy-ratelimited`: responses rate-limited by the proxy itself.
    EnvoyRateLimited,
    /// `http3-post-connect-failure`: HTTP/3 failure after connecting.
    Http3PostConnectFailure,
    /// gRPC `cancelled`.
    Cancelled,
    /// gRPC `deadline-exceeded`.
    DeadlineExceeded,
    /// gRPC `internal`.
    Internal,
    /// gRPC `resource-exhausted`.
    ResourceExhausted,
    /// gRPC `unavailable`.
    Unavailable,
    /// A bare HTTP status code such as `503`: retry on that status (implies
    /// `retriable-status-codes`).
    Status(u16),
}

const RETRY_CONDITION_NAMES: &[(&str, RetryCondition)] = &[
    ("5xx", RetryCondition::FiveXx),
    ("gateway-error", RetryCondition::GatewayError),
    ("reset", RetryCondition::Reset),
    ("reset-before-request", RetryCondition::ResetBeforeRequest),
    ("connect-failure", RetryCondition::ConnectFailure),
    ("retriable-4xx", RetryCondition::Retriable4xx),
    ("refused-stream", RetryCondition::RefusedStream),
    (
        "retriable-status-codes",
        RetryCondition::RetriableStatusCodes,
    ),
    ("retriable-headers", RetryCondition::RetriableHeaders),
    ("envoy-ratelimited", RetryCondition::EnvoyRateLimited),
    (
        "http3-post-connect-failure",
        RetryCondition::Http3PostConnectFailure,
    ),
    ("cancelled", RetryCondition::Cancelled),
    ("deadline-exceeded", RetryCondition::DeadlineExceeded),
    ("internal", RetryCondition::Internal),
    ("resource-exhausted", RetryCondition::ResourceExhausted),
    ("unavailable", RetryCondition::Unavailable),
];

impl RetryCondition {
    /// Whether this is one of the gRPC conditions (matched on the `grpc-status` of a response).
    pub fn is_grpc(self) -> bool {
        matches!(
            self,
            RetryCondition::Cancelled
                | RetryCondition::DeadlineExceeded
                | RetryCondition::Internal
                | RetryCondition::ResourceExhausted
                | RetryCondition::Unavailable
        )
    }
}

impl FromStr for RetryCondition {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some((_, c)) = RETRY_CONDITION_NAMES.iter().find(|(n, _)| *n == s) {
            return Ok(*c);
        }
        if s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit()) {
            let code: u16 = s.parse().map_err(|_| format!("bad status {s:?}"))?;
            if (100..=599).contains(&code) {
                return Ok(RetryCondition::Status(code));
            }
        }
        let names: Vec<&str> = RETRY_CONDITION_NAMES.iter().map(|(n, _)| *n).collect();
        Err(format!(
            "{s:?} is not a valid retryOn condition; expected an HTTP status code (100-599) or one of: {}",
            names.join(", ")
        ))
    }
}

impl fmt::Display for RetryCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let RetryCondition::Status(code) = self {
            return write!(f, "{code}");
        }
        let name = RETRY_CONDITION_NAMES
            .iter()
            .find(|(_, c)| c == self)
            .map_or("?", |(n, _)| n);
        f.write_str(name)
    }
}

/// The parsed `retryOn` of an HTTP retry policy: a comma-separated list of [`RetryCondition`]s,
/// e.g. `5xx,connect-failure,503`. An unknown condition is an error.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct RetryOn(Vec<RetryCondition>);

impl RetryOn {
    pub fn new(conditions: Vec<RetryCondition>) -> RetryOn {
        RetryOn(conditions)
    }

    pub fn parse(s: &str) -> Result<RetryOn, String> {
        let mut out = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(format!(
                    "invalid retryOn {s:?}: empty condition between commas"
                ));
            }
            out.push(part.parse()?);
        }
        Ok(RetryOn(out))
    }

    pub fn conditions(&self) -> &[RetryCondition] {
        &self.0
    }

    pub fn contains(&self, c: RetryCondition) -> bool {
        self.0.contains(&c)
    }

    /// The bare status codes listed (`503` in `5xx,503`).
    pub fn status_codes(&self) -> impl Iterator<Item = u16> + '_ {
        self.0.iter().filter_map(|c| match c {
            RetryCondition::Status(code) => Some(*code),
            _ => None,
        })
    }
}

impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

impl FromStr for RetryOn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RetryOn::parse(s)
    }
}

impl Serialize for RetryOn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

deserialize_from_str!(
    RetryOn,
    "a comma-separated list of retry conditions such as \"5xx,connect-failure\"",
    RetryOn::parse
);
