//! The authorization engine: what the server-side proxy decides per connection and per
//! request, with Istio's AuthorizationPolicy semantics. The control plane compiles the policies
//! (`meshmodel::compile::authz`); this module is the compiled form and its evaluation.
//!
//! - A [`WorkloadPolicy`] is a self-contained, serializable snapshot with precompiled matchers,
//!   meant to travel inside the proxy's config document.
//! - [`WorkloadPolicy::evaluate`] decides one request or connection from borrowed
//!   [`RequestAttributes`], without allocating, and returns a [`Decision`] naming the policy
//!   (and rule) that decided, plus what AUDIT and dry-run policies matched.
//! - [`normalize_path`] normalizes a request path with Istio's options before evaluation; the
//!   proxy forwards the normalized path it authorized.
//!
//! docs/authorization.md describes the semantics and every choice made where Istio leaves room.

mod index;
mod matcher;
mod normalize;
mod rule;

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

pub use index::ConnectionFilter;
pub use matcher::{PathMatch, StrMatch, TemplateSegment};
pub use normalize::{
    NormalizeError, NormalizedPath, PathNormalization, check_method, normalize_path,
};
pub use rule::{CompiledRule, Cond, ServiceAccountName, Term};

pub use crate::values::{Action, IpBlock};
use index::{Candidate, RequestKey};
use matcher::Peer;
use rule::Mode;

/// How a client proxy connects to an endpoint: the proxy config's [`UpstreamTls`](crate::proxy::UpstreamTls).
pub type ClientTls = crate::proxy::UpstreamTls;

/// The version of the [`WorkloadPolicy`] format; bumped on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;
/// The body of a denied HTTP request, as Envoy's RBAC filter sends it.
pub const DENIED_BODY: &str = "RBAC: access denied";
/// The HTTP status of a denied request.
pub const DENIED_STATUS: u16 = 403;
/// The access-log response flag of a denied request (Envoy's `RBAC`).
pub const RESPONSE_FLAG: &str = "RBAC";

/// Mesh-wide settings that compiling needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshSecurity {
    /// Policies here apply to every workload. Default `istio-system`.
    pub root_namespace: String,
    /// The mesh's trust domain. Default `cluster.local`.
    pub trust_domain: String,
    /// Other trust domains whose identities count as this mesh's (Istio's
    /// `trustDomainAliases`). Default none.
    pub trust_domain_aliases: Vec<String>,
    /// How request paths are normalized before matching. Default `BASE`.
    pub path_normalization: PathNormalization,
}

impl Default for MeshSecurity {
    fn default() -> Self {
        MeshSecurity {
            root_namespace: crate::ROOT_NAMESPACE.to_string(),
            trust_domain: crate::DEFAULT_TRUST_DOMAIN.to_string(),
            trust_domain_aliases: Vec::new(),
            path_normalization: PathNormalization::Base,
        }
    }
}

/// One compiled policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompiledPolicy {
    pub namespace: String,
    pub name: String,
    /// Rules, ORed. Empty: the policy matches nothing (an ALLOW policy without rules still
    /// makes the workload deny-by-default).
    #[serde(default)]
    pub rules: Vec<CompiledRule>,
}

impl CompiledPolicy {
    fn matching_rule(
        &self,
        req: &RequestAttributes<'_>,
        peer: &Peer<'_>,
        mode: Mode,
    ) -> Option<usize> {
        self.rules.iter().position(|r| r.matches(req, peer, mode))
    }
}

/// Everything that decides authorization for one workload: the compiled policies by action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadPolicy {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// Path normalization applied before matching. Default `BASE`.
    #[serde(default)]
    pub path_normalization: PathNormalization,
    /// Enforced DENY policies (root namespace first). Default none.
    #[serde(default)]
    pub deny: Vec<CompiledPolicy>,
    /// Enforced ALLOW policies; if there is any, a request must match one. Default none.
    #[serde(default)]
    pub allow: Vec<CompiledPolicy>,
    /// AUDIT policies: matched and reported, never deciding. Default none.
    #[serde(default)]
    pub audit: Vec<CompiledPolicy>,
    /// DENY policies with `istio.io/dry-run: "true"`: evaluated and reported only. Default none.
    #[serde(default)]
    pub dry_run_deny: Vec<CompiledPolicy>,
    /// ALLOW policies with `istio.io/dry-run: "true"`: evaluated and reported only. Default none.
    #[serde(default)]
    pub dry_run_allow: Vec<CompiledPolicy>,
}

impl Default for WorkloadPolicy {
    fn default() -> Self {
        WorkloadPolicy {
            version: FORMAT_VERSION,
            path_normalization: PathNormalization::Base,
            deny: Vec::new(),
            allow: Vec::new(),
            audit: Vec::new(),
            dry_run_deny: Vec::new(),
            dry_run_allow: Vec::new(),
        }
    }
}

/// Looks up a request header by lower-case name. Repeated headers should be given joined with
/// `,` (as Istio matches them); pseudo-headers (`:method`, `:authority`, `:path`) are answered
/// by [`HttpAttributes::header`] itself.
pub trait HeaderLookup {
    fn get(&self, lowercase_name: &str) -> Option<&str>;
}

impl HeaderLookup for [(&str, &str)] {
    fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

impl<const N: usize> HeaderLookup for [(&str, &str); N] {
    fn get(&self, name: &str) -> Option<&str> {
        HeaderLookup::get(self.as_slice(), name)
    }
}

impl<T: HeaderLookup + ?Sized> HeaderLookup for &T {
    fn get(&self, name: &str) -> Option<&str> {
        (**self).get(name)
    }
}

/// No headers.
impl HeaderLookup for () {
    fn get(&self, _: &str) -> Option<&str> {
        None
    }
}

/// The HTTP part of a request.
#[derive(Clone, Copy)]
pub struct HttpAttributes<'a> {
    /// `:method`, as received (Istio compares case-sensitively).
    pub method: &'a str,
    /// `:authority` / `Host`, possibly with a port.
    pub host: &'a str,
    /// The normalized path ([`NormalizedPath::as_str`]); a query is ignored by matching.
    pub path: &'a str,
    pub headers: &'a dyn HeaderLookup,
    /// The token a RequestAuthentication rule verified on this request (`requestPrincipals`,
    /// `request.auth.*`); `None`: the request carries no request principal.
    pub auth: Option<&'a crate::authn::Verified>,
}

impl<'a> HttpAttributes<'a> {
    /// A header by lower-case name, including the pseudo-headers.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        match name {
            ":method" => Some(self.method),
            ":authority" | "host" if !self.host.is_empty() => Some(self.host),
            ":path" => Some(self.path),
            _ => self.headers.get(name),
        }
    }
}

/// What the proxy knows about a connection or request, borrowed.
#[derive(Clone, Copy)]
pub struct RequestAttributes<'a> {
    /// The peer's SPIFFE ID (with or without `spiffe://`) when the connection is mTLS with a
    /// verified certificate; `None` for plaintext.
    pub peer_principal: Option<&'a str>,
    /// The connection's peer address (`source.ip`, `ipBlocks`).
    pub source_ip: IpAddr,
    /// The original client address (`remote.ip`, `remoteIpBlocks`); `None`: the source IP.
    pub remote_ip: Option<IpAddr>,
    /// The address the connection was made to.
    pub destination_ip: IpAddr,
    /// The port the connection was made to (the workload's port).
    pub destination_port: u16,
    /// The TLS server name the client asked for.
    pub sni: Option<&'a str>,
    /// The request, on an HTTP port; `None` for a TCP connection.
    pub http: Option<HttpAttributes<'a>>,
}

impl<'a> RequestAttributes<'a> {
    /// A TCP connection from `source_ip` to `destination_port` on 127.0.0.1, without identity.
    pub fn tcp(source_ip: IpAddr, destination_port: u16) -> Self {
        RequestAttributes {
            peer_principal: None,
            source_ip,
            remote_ip: None,
            destination_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            destination_port,
            sni: None,
            http: None,
        }
    }
}

/// `remote.ip` from an `x-forwarded-for` value (repeated headers' last one) as Envoy derives
/// it at an Istio sidecar (`use_remote_address: false`, no trusted hops): its last address
/// when that is a valid IP, else `None` (the connection's peer address counts).
pub fn forwarded_for(value: &str) -> Option<IpAddr> {
    value.rsplit(',').next()?.trim().parse().ok()
}

/// Why a decision came out as it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// A DENY policy matched.
    DeniedByPolicy,
    /// ALLOW policies apply and none matched.
    NoAllowMatch,
    /// An ALLOW policy matched.
    AllowedByPolicy,
    /// No DENY matched and no ALLOW policy applies.
    NoAllowPolicies,
}

/// The policy and rule that matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatchedPolicy<'p> {
    pub namespace: &'p str,
    pub name: &'p str,
    /// Index of the matching rule.
    pub rule: usize,
    /// Istio's id of the rule, `ns[<ns>]-policy[<name>]-rule[<i>]`.
    pub id: &'p str,
}

/// What enforcing the dry-run policies of one action would have done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShadowResult<'p> {
    /// Whether that action's dry-run policies would have let the request through.
    pub allowed: bool,
    /// The dry-run policy that matched, if any.
    pub policy: Option<MatchedPolicy<'p>>,
}

/// Dry-run outcomes: `None` for an action without dry-run policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DryRunFindings<'p> {
    pub deny: Option<ShadowResult<'p>>,
    pub allow: Option<ShadowResult<'p>>,
}

/// The outcome of [`WorkloadPolicy::evaluate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'p> {
    pub allowed: bool,
    pub reason: Reason,
    /// The action of the deciding policy: `Deny`, `Allow`, or `None` when no policy decided.
    pub action: Option<Action>,
    /// The deciding policy, for metrics and access logs.
    pub policy: Option<MatchedPolicy<'p>>,
    /// The first AUDIT policy that matched: the request should be audit-logged.
    pub audit: Option<MatchedPolicy<'p>>,
    pub dry_run: DryRunFindings<'p>,
}

impl Decision<'_> {
    /// Envoy's `%RESPONSE_CODE_DETAILS%` prefix of a denial; the proxy appends
    /// `[<policy id or none>]`.
    pub const DETAILS_PREFIX: &'static str = "rbac_access_denied_matched_policy";
}

/// The first rule of `policies` that matches: among the connection's candidates when the
/// request comes with its [`ConnectionFilter`], else among all rules.
fn first_match<'p>(
    policies: &'p [CompiledPolicy],
    req: &RequestAttributes<'_>,
    peer: &Peer<'_>,
    mode: Mode,
    filtered: Option<(&ConnectionFilter, &RequestKey, &[Candidate])>,
) -> Option<MatchedPolicy<'p>> {
    if let Some((filter, key, list)) = filtered {
        return index::first_candidate_match(policies, list, filter, key, req, peer, mode);
    }
    policies.iter().find_map(|p| {
        p.matching_rule(req, peer, mode).map(|i| MatchedPolicy {
            namespace: &p.namespace,
            name: &p.name,
            rule: i,
            id: &p.rules[i].id,
        })
    })
}

impl WorkloadPolicy {
    /// Whether no policy at all applies (every request is allowed, nothing is reported).
    pub fn is_empty(&self) -> bool {
        self.deny.is_empty()
            && self.allow.is_empty()
            && self.audit.is_empty()
            && self.dry_run_deny.is_empty()
            && self.dry_run_allow.is_empty()
    }

    /// Decides a request (`req.http` set) or a TCP connection (`req.http` is `None`), with
    /// Istio's order: DENY policies first; then, if any ALLOW policy applies, one must match;
    /// otherwise the request is allowed. AUDIT and dry-run policies are evaluated and reported.
    pub fn evaluate(&self, req: &RequestAttributes<'_>) -> Decision<'_> {
        self.decide(req, None)
    }

    /// The rules that can match HTTP requests on the connection `conn` describes (its `http`
    /// is ignored); see [`ConnectionFilter`].
    pub fn connection_filter(&self, conn: &RequestAttributes<'_>) -> ConnectionFilter {
        let peer = Peer::parse(conn.peer_principal);
        let mut f = ConnectionFilter::default();
        f.deny = f.candidates(&self.deny, conn, &peer);
        f.allow = f.candidates(&self.allow, conn, &peer);
        f.audit = f.candidates(&self.audit, conn, &peer);
        f.dry_run_deny = f.candidates(&self.dry_run_deny, conn, &peer);
        f.dry_run_allow = f.candidates(&self.dry_run_allow, conn, &peer);
        f
    }

    /// [`evaluate`](Self::evaluate) for an HTTP request on a connection whose
    /// [`connection_filter`](Self::connection_filter) is `filter`, built from this policy and
    /// the same connection attributes (peer principal, source and destination IP, port, SNI).
    /// Same decision, but only the rules left by the filter are evaluated. A TCP connection
    /// (`req.http` is `None`) is evaluated in full.
    pub fn evaluate_on(
        &self,
        req: &RequestAttributes<'_>,
        filter: &ConnectionFilter,
    ) -> Decision<'_> {
        if req.http.is_none() {
            return self.decide(req, None);
        }
        self.decide(req, Some(filter))
    }

    fn decide(
        &self,
        req: &RequestAttributes<'_>,
        filter: Option<&ConnectionFilter>,
    ) -> Decision<'_> {
        let peer = Peer {
            path: req
                .http
                .map(|h| h.path.split_once('?').map_or(h.path, |(p, _)| p)),
            ..Peer::parse(req.peer_principal)
        };
        let (allow_mode, widen_mode) = match req.http {
            Some(_) => (Mode::Http, Mode::Http),
            None => (Mode::TcpAllow, Mode::TcpWiden),
        };
        // With the connection's filter, each guard reads the method and headers once.
        let keyed = match (filter, req.http.as_ref()) {
            (Some(f), Some(h)) => Some((f, f.request_key(h))),
            _ => None,
        };
        let on = |pick: fn(&ConnectionFilter) -> &[Candidate]| {
            keyed.as_ref().map(|(f, k)| (*f, k, pick(f)))
        };
        let audit = first_match(&self.audit, req, &peer, widen_mode, on(|f| &f.audit));
        let shadow_deny = (!self.dry_run_deny.is_empty()).then(|| {
            let policy = first_match(
                &self.dry_run_deny,
                req,
                &peer,
                widen_mode,
                on(|f| &f.dry_run_deny),
            );
            ShadowResult {
                allowed: policy.is_none(),
                policy,
            }
        });
        let shadow_allow = (!self.dry_run_allow.is_empty()).then(|| {
            let policy = first_match(
                &self.dry_run_allow,
                req,
                &peer,
                allow_mode,
                on(|f| &f.dry_run_allow),
            );
            ShadowResult {
                allowed: policy.is_some(),
                policy,
            }
        });
        let dry_run = DryRunFindings {
            deny: shadow_deny,
            allow: shadow_allow,
        };
        let decision = |allowed, reason, action, policy| Decision {
            allowed,
            reason,
            action,
            policy,
            audit,
            dry_run,
        };
        if let Some(p) = first_match(&self.deny, req, &peer, widen_mode, on(|f| &f.deny)) {
            return decision(false, Reason::DeniedByPolicy, Some(Action::Deny), Some(p));
        }
        if self.allow.is_empty() {
            return decision(true, Reason::NoAllowPolicies, None, None);
        }
        match first_match(&self.allow, req, &peer, allow_mode, on(|f| &f.allow)) {
            Some(p) => decision(true, Reason::AllowedByPolicy, Some(Action::Allow), Some(p)),
            None => decision(false, Reason::NoAllowMatch, None, None),
        }
    }
}
