//! Wire types of the control plane's certificate API (port 15012) and the bootstrap token.
//!
//! A proxy generates its key in-process, builds a CSR naming exactly one URI SAN (its SPIFFE
//! identity) and POSTs a [`CsrRequest`] as JSON to [`CSR_PATH`] over TLS. The first request of a
//! workload carries a single-use [`BootstrapToken`] that meshctl handed to the container or host
//! it started; renewals instead present the current certificate as a TLS client certificate and
//! carry no token. The answer is a [`CsrResponse`], or an [`ApiErrorBody`] with status 400
//! (malformed request), 401 (no or unknown credentials), 403 (credentials for another identity),
//! 429 (rate limited) or 500.
//!
//! Both sides share these definitions so the control plane and the data plane can never disagree
//! on the format.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Istio's habit: the control plane's API listens on 15012.
pub const DEFAULT_API_PORT: u16 = 15012;

/// Path of the CSR endpoint (POST, JSON [`CsrRequest`] -> [`CsrResponse`]).
pub const CSR_PATH: &str = "/v1/csr";

/// Namespace the control plane's own identity lives in (Istio's `istio-system`).
pub const CONTROL_PLANE_NAMESPACE: &str = "mesh-system";

/// Service account of the control plane's own identity.
pub const CONTROL_PLANE_SERVICE_ACCOUNT: &str = "meshctl";

/// Environment variable through which meshctl hands a started workload its bootstrap token.
pub const ENV_BOOTSTRAP_TOKEN: &str = "MESH_BOOTSTRAP_TOKEN";
/// Environment variable naming the identity the token is bound to.
pub const ENV_IDENTITY: &str = "MESH_IDENTITY";
/// Environment variable naming the control plane's API address (`host:port`).
pub const ENV_CA_ADDR: &str = "MESH_CA_ADDR";
/// Environment variable holding the PEM trust roots (the proxy verifies the API server with them).
pub const ENV_CA_ROOT_PEM: &str = "MESH_CA_ROOT_PEM";

/// Body of `POST /v1/csr`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsrRequest {
    /// Bootstrap token; required unless the TLS client certificate names `identity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The SPIFFE ID asked for, `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub identity: String,
    /// PKCS#10 CSR in PEM, with exactly one URI SAN equal to `identity`.
    pub csr_pem: String,
}

/// Successful answer of `POST /v1/csr`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsrResponse {
    /// The workload certificate followed by any intermediates, PEM.
    pub cert_chain_pem: String,
    /// The trust root(s) the chain verifies to, PEM.
    pub root_pem: String,
    /// Expiry of the workload certificate, seconds since the Unix epoch.
    pub not_after: i64,
}

/// Body of every error answer of the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    /// Human-readable reason.
    pub error: String,
}

/// Why a SPIFFE ID or token does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The string is not `spiffe://<td>/ns/<ns>/sa/<sa>`.
    #[error("invalid SPIFFE ID {id:?}: {reason}")]
    InvalidSpiffeId {
        /// The offending input.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The token does not have the bootstrap token shape.
    #[error("malformed bootstrap token")]
    MalformedToken,
}

/// A workload identity `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

impl SpiffeId {
    /// Builds an identity from its parts, validating each.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}").parse()
    }

    /// The trust domain (`cluster.local` by default in the mesh).
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The service account.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The control plane's own identity in `trust_domain`.
    pub fn control_plane(trust_domain: &str) -> Result<Self, IdentityError> {
        Self::new(
            trust_domain,
            CONTROL_PLANE_NAMESPACE,
            CONTROL_PLANE_SERVICE_ACCOUNT,
        )
    }
}

fn valid_trust_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

impl FromStr for SpiffeId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| IdentityError::InvalidSpiffeId {
            id: s.to_owned(),
            reason,
        };
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| bad("must start with spiffe://"))?;
        let (td, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("missing /ns/<ns>/sa/<sa> path"))?;
        if !valid_trust_domain(td) {
            return Err(bad(
                "trust domain must be lowercase letters, digits, '-', '.', '_'",
            ));
        }
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["ns", ns, "sa", sa] if valid_segment(ns) && valid_segment(sa) => Ok(Self {
                trust_domain: td.to_owned(),
                namespace: (*ns).to_owned(),
                service_account: (*sa).to_owned(),
            }),
            ["ns", _, "sa", _] => Err(bad(
                "namespace and service account must be letters, digits, '-', '.', '_'",
            )),
            _ => Err(bad("path must be /ns/<namespace>/sa/<service-account>")),
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
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Prefix of every bootstrap token, so a leaked one is recognisable in logs and secret scanners.
pub const TOKEN_PREFIX: &str = "mbt1_";

/// Number of random bytes in a token (hex-encoded after the prefix).
pub const TOKEN_RANDOM_BYTES: usize = 32;

/// A single-use bootstrap token: `mbt1_` followed by 64 lowercase hex digits (256 random bits).
///
/// `Debug` does not print the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken(String);

impl BootstrapToken {
    /// Wraps random bytes generated by the control plane.
    pub fn from_random(bytes: &[u8; TOKEN_RANDOM_BYTES]) -> Self {
        let mut s = String::with_capacity(TOKEN_PREFIX.len() + 2 * TOKEN_RANDOM_BYTES);
        s.push_str(TOKEN_PREFIX);
        for b in bytes {
            s.push_str(&format!("{b:02x}"));
        }
        Self(s)
    }

    /// The token as handed to a workload.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BootstrapToken(<redacted>)")
    }
}

impl FromStr for BootstrapToken {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(IdentityError::MalformedToken)?;
        if hex.len() != 2 * TOKEN_RANDOM_BYTES
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(IdentityError::MalformedToken);
        }
        Ok(Self(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_parse_and_print() {
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/backend"
            .parse()
            .unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "backend");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/backend"
        );
        for bad in [
            "https://cluster.local/ns/default/sa/backend",
            "spiffe://cluster.local/ns/default",
            "spiffe://cluster.local/ns/default/sa/backend/extra",
            "spiffe://Cluster.local/ns/default/sa/backend",
            "spiffe://cluster.local/ns/../sa/backend",
            "spiffe://cluster.local/ns//sa/backend",
            "spiffe:///ns/default/sa/backend",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn tokens_round_trip_and_hide_their_secret() {
        let t = BootstrapToken::from_random(&[0xab; TOKEN_RANDOM_BYTES]);
        assert_eq!(t.as_str().parse::<BootstrapToken>().unwrap(), t);
        assert!(!format!("{t:?}").contains("ab"));
        assert!("mbt1_xyz".parse::<BootstrapToken>().is_err());
        assert!("nope".parse::<BootstrapToken>().is_err());
    }
}
