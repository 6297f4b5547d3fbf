//! The join token: everything `meshctl join` needs, in one string.
//!
//! `mesh1/<node>/<control plane host:port>/<sha256 of the CA root, hex>/<secret>`, like
//! `kubeadm join`'s address + `--discovery-token-ca-cert-hash` + token. The joining side
//! fetches the control plane's roots (public), checks that one hashes to the fingerprint and
//! only then, over TLS verified against that root, sends the secret.

use std::fmt;

/// Version prefix of the token format.
pub const PREFIX: &str = "mesh1";

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The node it admits.
    pub node: String,
    /// The control plane's API, `host:port`.
    pub address: String,
    /// sha256 of the CA root certificate (DER), lowercase hex.
    pub fingerprint: String,
    /// The single-use bootstrap token for the node identity.
    pub secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("node", &self.node)
            .field("address", &self.address)
            .field("fingerprint", &self.fingerprint)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}/{}/{}/{}/{}",
            self.node, self.address, self.fingerprint, self.secret
        )
    }
}

/// Why a string is not a join token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a join token ({0}); expected mesh1/<node>/<host:port>/<sha256>/<secret> as printed by `meshctl token create`"
)]
pub struct BadToken(&'static str);

impl std::str::FromStr for JoinToken {
    type Err = BadToken;

    fn from_str(s: &str) -> Result<JoinToken, BadToken> {
        let mut parts = s.trim().splitn(5, '/');
        if parts.next() != Some(PREFIX) {
            return Err(BadToken("unknown prefix"));
        }
        let (Some(node), Some(address), Some(fingerprint), Some(secret)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(BadToken("too few parts"));
        };
        if !super::valid_node_name(node) {
            return Err(BadToken("bad node name"));
        }
        if !address.contains(':') || address.contains('/') {
            return Err(BadToken("the address is not host:port"));
        }
        if fingerprint.len() != 64 || !fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BadToken("the fingerprint is not 64 hex digits"));
        }
        if secret.is_empty() || secret.contains('/') {
            return Err(BadToken("bad secret"));
        }
        Ok(JoinToken {
            node: node.to_string(),
            address: address.to_string(),
            fingerprint: fingerprint.to_ascii_lowercase(),
            secret: secret.to_string(),
        })
    }
}

/// sha256 of `der`, lowercase hex: the fingerprint of a root certificate.
pub fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_malformed_tokens() {
        let t = JoinToken {
            node: "vm2".into(),
            address: "10.0.0.1:15012".into(),
            fingerprint: "ab".repeat(32),
            secret: "mbt_0123".into(),
        };
        let text = t.to_string();
        assert_eq!(text.parse::<JoinToken>(), Ok(t.clone()));
        assert!(
            !format!("{t:?}").contains("mbt_0123"),
            "Debug hides the secret"
        );
        for bad in [
            "",
            "mesh2/vm2/10.0.0.1:15012/ab/x",
            "mesh1/VM_2/10.0.0.1:15012/".to_string().as_str(),
            &text.replace("10.0.0.1:15012", "10.0.0.1"),
            &text.replace(&"ab".repeat(32), "abc"),
            "mesh1/vm2/10.0.0.1:15012",
        ] {
            assert!(bad.parse::<JoinToken>().is_err(), "{bad:?} parsed");
        }
    }
}
