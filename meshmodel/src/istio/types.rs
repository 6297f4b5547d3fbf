//! Newtypes for the scalar values of Istio resources: durations, percentages, ports and the
//! `retryOn` condition list. Label selectors, wildcard strings, principals, trust domains, service
//! accounts and IP blocks are in [`super::matchers`] and re-exported here.
//!
//! Each one checks its value while it is deserialized, so a bad value is reported with the path
//! of the field that holds it (`spec.http[0].timeout: invalid duration ...`), and code that reads
//! the model never sees an unchecked value. Each serializes back to the form Istio reads.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

pub use meshapi::values::{RetryCondition, RetryOn};

pub use super::matchers::{
    IpBlock, Labels, Principal, ServiceAccountRef, SpiffeParts, TrustDomain, Wildcard,
    WildcardMatch, is_dns1123_label, is_dns1123_subdomain,
};

// ---------------------------------------------------------------------------------------------
// Duration

/// A duration written the way Istio accepts it: Go's `time.ParseDuration` form (`100ms`, `1.5s`,
/// `1m`, `1h30m`, `250us`, `10ns`), which includes protobuf JSON's `"0.5s"`, or a bare `0`.
///
/// Negative values, missing units and unknown units are refused. Zero is accepted here; the
/// fields where Istio demands at least 1ms check that in `validate()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(std::time::Duration);

impl Duration {
    /// The smallest duration Istio accepts for most fields (`duration(self) >= duration('1ms')`).
    pub const MIN_ISTIO: Duration = Duration(std::time::Duration::from_millis(1));

    pub const fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }

    pub const fn from_secs(s: u64) -> Self {
        Duration(std::time::Duration::from_secs(s))
    }

    /// The value as a standard library duration.
    pub const fn get(self) -> std::time::Duration {
        self.0
    }

    pub const fn is_zero(self) -> bool {
        self.0.is_zero()
    }

    /// Whether the duration is a whole number of milliseconds (Istio's precision for most fields).
    pub fn is_whole_millis(self) -> bool {
        self.0.subsec_nanos().is_multiple_of(1_000_000)
    }

    /// Parses Istio's duration syntax.
    pub fn parse(s: &str) -> Result<Duration, String> {
        parse_duration(s).map(Duration)
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Duration(d)
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Duration::parse(s)
    }
}

const NANOS_PER_UNIT: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("\u{b5}s", 1_000),  // micro sign
    ("\u{3bc}s", 1_000), // greek mu
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

fn parse_duration(input: &str) -> Result<std::time::Duration, String> {
    let invalid = |why: &str| format!("invalid duration {input:?}: {why}");
    let mut s = input;
    if s.is_empty() {
        return Err(invalid(
            "empty string (write e.g. \"5s\", \"100ms\", \"1m\")",
        ));
    }
    if s.starts_with('-') {
        return Err(invalid("negative durations are not allowed"));
    }
    if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let mut total: u128 = 0;
    while !s.is_empty() {
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, rest) = s.split_at(int_len);
        let (frac_part, rest) = match rest.strip_prefix('.') {
            Some(r) => {
                let n = r.bytes().take_while(u8::is_ascii_digit).count();
                r.split_at(n)
            }
            None => ("", rest),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid(
                "expected a number followed by a unit (h, m, s, ms, us, ns)",
            ));
        }
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(rest.len(), |(i, _)| i);
        let (unit, rest) = rest.split_at(unit_len);
        if unit.is_empty() {
            return Err(invalid(&format!(
                "missing unit after {int_part}{}{frac_part} (use h, m, s, ms, us or ns, e.g. \"{int_part}s\")",
                if frac_part.is_empty() { "" } else { "." }
            )));
        }
        let Some(&(_, per)) = NANOS_PER_UNIT.iter().find(|(u, _)| *u == unit) else {
            return Err(invalid(&format!(
                "unknown unit {unit:?} (use h, m, s, ms, us or ns)"
            )));
        };
        if int_part.len() > 20 || frac_part.len() > 30 {
            return Err(invalid("too large"));
        }
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| invalid("too large"))?
        };
        let mut value = int.checked_mul(per).ok_or_else(|| invalid("too large"))?;
        if !frac_part.is_empty() {
            // Only the digits that can matter at nanosecond resolution.
            let digits = &frac_part[..frac_part.len().min(18)];
            let frac: u128 = digits.parse().map_err(|_| invalid("bad fraction"))?;
            value += frac * per / 10u128.pow(digits.len() as u32);
        }
        total = total
            .checked_add(value)
            .ok_or_else(|| invalid("too large"))?;
        s = rest;
    }
    let nanos = u64::try_from(total).map_err(|_| invalid("too large"))?;
    Ok(std::time::Duration::from_nanos(nanos))
}

impl fmt::Display for Duration {
    /// Writes the shortest form that parses back to the same value: `0s`, `100ms`, `1.5s`,
    /// `1m30s`, `2h`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.is_zero() {
            return f.write_str("0s");
        }
        let secs = d.as_secs();
        let nanos = d.subsec_nanos();
        if secs == 0 {
            return if nanos.is_multiple_of(1_000_000) {
                write!(f, "{}ms", nanos / 1_000_000)
            } else if nanos.is_multiple_of(1_000) {
                write!(f, "{}us", nanos / 1_000)
            } else {
                write!(f, "{nanos}ns")
            };
        }
        let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 || nanos > 0 {
            write!(f, "{s}")?;
            if nanos > 0 {
                let frac = format!("{nanos:09}");
                write!(f, ".{}", frac.trim_end_matches('0'))?;
            }
            f.write_str("s")?;
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"100ms\", \"1.5s\", \"1m\" or \"1h30m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                Duration::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                if v == 0 {
                    return Ok(Duration::default());
                }
                Err(E::custom(format!(
                    "invalid duration {v}: a duration needs a unit, write it as a string such as \"{v}s\" or \"{v}ms\""
                )))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                if v < 0 {
                    return Err(E::custom(format!(
                        "invalid duration {v}: negative durations are not allowed"
                    )));
                }
                self.visit_u64(v.unsigned_abs())
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
                Err(E::custom(format!(
                    "invalid duration {v}: a duration needs a unit, write it as a string such as \"{v}s\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------------
// Percentages

/// A percentage between 0 and 100 inclusive, with a fractional part (Istio's `Percent.value`).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Percent(f64);

impl Percent {
    pub const ZERO: Percent = Percent(0.0);
    pub const HUNDRED: Percent = Percent(100.0);

    /// A checked percentage: finite and within 0..=100.
    pub fn new(value: f64) -> Result<Percent, String> {
        if !value.is_finite() || !(0.0..=100.0).contains(&value) {
            return Err(format!(
                "invalid percentage {value}: must be between 0 and 100"
            ));
        }
        Ok(Percent(value))
    }

    pub const fn value(self) -> f64 {
        self.0
    }

    /// The share of requests as a fraction between 0 and 1.
    pub fn fraction(self) -> f64 {
        self.0 / 100.0
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0)
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Percent;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number between 0 and 100")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Percent, E> {
                Percent::new(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Percent, E> {
                Percent::new(v as f64).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Percent, E> {
                Percent::new(v as f64).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Istio's `Percent` message: `percentage: {value: 12.5}`. An empty message means 0%.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Percentage {
    /// Percentage in the range 0.0 to 100.0. Default 0.
    #[serde(default)]
    pub value: Percent,
}

impl Percentage {
    pub fn new(value: Percent) -> Self {
        Percentage { value }
    }
}

/// A whole-number percentage, 0..=100: the deprecated integer fields (`fault.delay.percent`,
/// `mirrorPercent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct IntPercent(u32);

impl IntPercent {
    pub fn new(value: u32) -> Result<Self, String> {
        if value > 100 {
            return Err(format!(
                "invalid percentage {value}: must be between 0 and 100"
            ));
        }
        Ok(IntPercent(value))
    }

    pub const fn get(self) -> u32 {
        self.0
    }

    pub fn as_percent(self) -> Percent {
        Percent(f64::from(self.0))
    }
}

impl<'de> Deserialize<'de> for IntPercent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IntPercent;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number between 0 and 100")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntPercent, E> {
                let v = u32::try_from(v).unwrap_or(u32::MAX);
                IntPercent::new(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntPercent, E> {
                if v < 0 {
                    return Err(E::custom(format!(
                        "invalid percentage {v}: must be between 0 and 100"
                    )));
                }
                self.visit_u64(v.unsigned_abs())
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------------
// Ports

/// A TCP/UDP port number, 1..=65535, written as an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Port(u16);

impl Port {
    pub fn new(value: u32) -> Result<Port, String> {
        match u16::try_from(value) {
            Ok(p) if p != 0 => Ok(Port(p)),
            _ => Err(format!("invalid port {value}: must be between 1 and 65535")),
        }
    }

    pub const fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Port {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || s.len() > 10 {
            return Err(format!(
                "invalid port {s:?}: must be a number between 1 and 65535"
            ));
        }
        let n: u64 = s.parse().map_err(|_| format!("invalid port {s:?}"))?;
        Port::new(u32::try_from(n).unwrap_or(u32::MAX))
    }
}

fn port_from_i64<E: de::Error>(v: i64) -> Result<Port, E> {
    let v = u32::try_from(v)
        .map_err(|_| E::custom(format!("invalid port {v}: must be between 1 and 65535")))?;
    Port::new(v).map_err(E::custom)
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Port;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number between 1 and 65535")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Port, E> {
                port_from_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Port, E> {
                port_from_i64(v)
            }
        }
        d.deserialize_any(V)
    }
}

/// A port that Istio's schema writes as a string: AuthorizationPolicy `ports`/`notPorts` and the
/// keys of PeerAuthentication `portLevelMtls`. Accepts `"8080"` and `8080`; always serializes as
/// the string `"8080"`, which is what Kubernetes accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortString(pub Port);

impl PortString {
    pub const fn port(self) -> Port {
        self.0
    }
}

impl fmt::Display for PortString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for PortString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PortString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PortString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number between 1 and 65535, such as \"8080\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortString, E> {
                v.parse().map(PortString).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortString, E> {
                port_from_i64(i64::try_from(v).unwrap_or(i64::MAX)).map(PortString)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortString, E> {
                port_from_i64(v).map(PortString)
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------------
// retryOn
