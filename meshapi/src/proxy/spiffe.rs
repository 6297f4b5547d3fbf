//! SPIFFE IDs as the mesh uses them: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! The parser is strict on purpose (SPIFFE ID spec plus the Istio path shape): lowercase trust
//! domain of `[a-z0-9._-]`, no port, no userinfo, no query or fragment, no empty, `.` or `..`
//! segments, path segments of `[A-Za-z0-9._-]`, and exactly the `ns/<ns>/sa/<sa>` shape.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A parsed, valid mesh SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// Why a string is not a mesh SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("a SPIFFE ID starts with `spiffe://`")]
    Scheme,
    #[error(
        "trust domain {0:?} must be non-empty and use only lowercase letters, digits, `.`, `-`, `_`"
    )]
    TrustDomain(String),
    #[error("path segment {0:?} is empty, `.`/`..`, or has characters outside [A-Za-z0-9._-]")]
    Segment(String),
    #[error("path must be `/ns/<namespace>/sa/<service-account>`")]
    Shape,
    #[error("SPIFFE ID is longer than 2048 bytes")]
    TooLong,
}

impl SpiffeId {
    /// Builds an ID from its parts, validating each.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}").parse()
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

fn valid_trust_domain(td: &str) -> bool {
    !td.is_empty()
        && td.len() <= 255
        && td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
}

fn valid_segment(seg: &str) -> bool {
    !seg.is_empty()
        && seg != "."
        && seg != ".."
        && seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > 2048 {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s.strip_prefix("spiffe://").ok_or(SpiffeIdError::Scheme)?;
        let (td, path) = rest.split_once('/').ok_or(SpiffeIdError::Shape)?;
        if !valid_trust_domain(td) {
            return Err(SpiffeIdError::TrustDomain(td.to_string()));
        }
        let segs: Vec<&str> = path.split('/').collect();
        if let Some(bad) = segs.iter().find(|s| !valid_segment(s)) {
            return Err(SpiffeIdError::Segment((*bad).to_string()));
        }
        match segs.as_slice() {
            ["ns", ns, "sa", sa] => Ok(SpiffeId {
                trust_domain: td.to_string(),
                namespace: (*ns).to_string(),
                service_account: (*sa).to_string(),
            }),
            _ => Err(SpiffeIdError::Shape),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/web".parse().unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "web");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/web");
        for bad in [
            "",
            "http://cluster.local/ns/a/sa/b",
            "spiffe://Cluster.local/ns/a/sa/b",
            "spiffe://cluster.local:8443/ns/a/sa/b",
            "spiffe://user@td/ns/a/sa/b",
            "spiffe://td/ns/a/sa/b/",
            "spiffe://td/ns//sa/b",
            "spiffe://td/ns/../sa/b",
            "spiffe://td/ns/a/sa/b?x=1",
            "spiffe://td/ns/a/sa/b#f",
            "spiffe://td/ns/a",
            "spiffe://td/sa/b/ns/a",
            "spiffe://td",
            "spiffe:///ns/a/sa/b",
            "spiffe://td/ns/a/sa/b%20",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad} accepted");
        }
    }
}
