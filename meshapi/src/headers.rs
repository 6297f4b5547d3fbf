//! The HTTP headers meshctl's proxies reserve for themselves: one set of exact names, all
//! starting `x-meshctl-`, so every other header an application sends or a route adds
//! (`x-mesh-anything` included) passes the mesh untouched.
//!
//! A proxy removes every reserved name at each trust boundary: from a request an application
//! or any peer sends, from a request it forwards to an application, and from a response of an
//! application or of anything that is not a verified peer proxy. A reserved header in a
//! response therefore always comes from a proxy: this one, or the peer proxy it reached over
//! mTLS with a mesh identity.

/// The Envoy response flag (`UF`, `NR`, `RBAC`, ...) of a response a proxy made itself, or
/// added to one (`URX`). Sent to the client so a person can tell a proxy's answer from the
/// application's; the client's proxy trusts it from a verified peer proxy only.
pub const RESPONSE_FLAGS: &str = "x-meshctl-response-flags";

/// Marks the placeholder request that replaces an ambiguously framed HTTP/1 head inside the
/// proxy; never sent anywhere.
pub const FRAMING_ERROR: &str = "x-meshctl-framing-error";

/// The calling workload's labels (name, namespace, app, version), sent by a client proxy to
/// a peer proxy so the server side labels its metrics with them (Istio's metadata
/// exchange); believed only from a verified peer proxy.
pub const PEER: &str = "x-meshctl-peer";

/// Every reserved name, lower case.
pub const RESERVED: [&str; 3] = [RESPONSE_FLAGS, FRAMING_ERROR, PEER];

/// Whether `name` is a reserved header (ASCII case-insensitively, as HTTP field names compare).
pub fn is_reserved(name: &str) -> bool {
    RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_names_are_reserved() {
        assert!(is_reserved("x-meshctl-response-flags"));
        assert!(is_reserved("X-Meshctl-Framing-Error"));
        assert!(is_reserved("x-meshctl-peer"));
        for free in [
            "x-mesh-anything",
            "x-mesh-response-flags",
            "x-meshctl-",
            "x-meshctl-other",
        ] {
            assert!(!is_reserved(free), "{free}");
        }
    }
}
