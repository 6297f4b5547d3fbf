//! The authorization and peer-authentication engine: what the server-side proxy decides per
//! connection and per request, compiled by the control plane from Istio's AuthorizationPolicy
//! and PeerAuthentication resources, with Istio's semantics.
//!
//! - [`compile_for_workload`] selects the policies that apply to one workload and compiles them
//!   into a [`WorkloadPolicy`]: a self-contained, serializable snapshot with precompiled
//!   matchers, meant to travel inside the proxy's config document.
//! - [`WorkloadPolicy::evaluate`] decides one request or connection from borrowed
//!   [`RequestAttributes`], without allocating, and returns a [`Decision`] naming the policy
//!   (and rule) that decided, plus what AUDIT and dry-run policies matched.
//! - [`normalize_path`] normalizes a request path with Istio's options before evaluation; the
//!   proxy forwards the normalized path it authorized.
//! - [`mtls_mode_for`] resolves PeerAuthentication for a workload's port, and
//!   [`client_tls_for`] the client side (Istio's auto-mTLS, or a DestinationRule's `tls`).
//!
//! docs/authorization.md describes the semantics and every choice made where Istio leaves room.

mod index;
mod matcher;
mod normalize;
mod peer;
mod rule;

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

pub use index::ConnectionFilter;
pub use matcher::{PathMatch, StrMatch, TemplateSegment};
pub use normalize::{
    NormalizeError, NormalizedPath, PathNormalization, check_method, normalize_path,
};
pub use peer::{
    ClientTls, client_tls_for, client_tls_for_workload, mtls_mode_for, peer_authentications,
};
pub use rule::{CompiledRule, Cond, ServiceAccountName, Term};

use crate::istio::{Action, AuthorizationPolicy, IstioResource};
use crate::load::Mesh;
use crate::model::Workload;
use index::{Candidate, RequestKey};
use matcher::Peer;
use rule::{Mode, RuleCtx, compile_rule};

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
            root_namespace: crate::model::ROOT_NAMESPACE.to_string(),
            trust_domain: crate::model::DEFAULT_TRUST_DOMAIN.to_string(),
            trust_domain_aliases: Vec::new(),
            path_normalization: PathNormalization::Base,
        }
    }
}

impl MeshSecurity {
    /// The settings of a loaded mesh: the root namespace, trust domain aliases and path
    /// normalization from its compose file's top-level `x-mesh` (defaults without one), and
    /// `trust_domain`, the one its identities are issued in.
    pub fn of(mesh: &Mesh, trust_domain: &str) -> MeshSecurity {
        let Some(c) = mesh.compose.as_ref() else {
            return MeshSecurity {
                trust_domain: trust_domain.to_string(),
                ..MeshSecurity::default()
            };
        };
        MeshSecurity {
            root_namespace: c.root_namespace().to_string(),
            trust_domain: trust_domain.to_string(),
            trust_domain_aliases: c
                .trust_domain_aliases()
                .iter()
                .filter(|a| *a != trust_domain)
                .cloned()
                .collect(),
            path_normalization: c.path_normalization(),
        }
    }
}

/// Why a set of policies cannot be compiled (the control plane keeps the last good config).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("AuthorizationPolicy {policy}: action CUSTOM is not supported by meshctl")]
    Custom { policy: String },
    #[error("when key {key:?}: {why}")]
    BadKey { key: String, why: String },
    #[error("when key {key:?}: bad value {value:?}: {why}")]
    BadValue {
        key: String,
        value: String,
        why: String,
    },
    #[error("AuthorizationPolicy {policy}: {source}")]
    InPolicy {
        policy: String,
        #[source]
        source: Box<CompileError>,
    },
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

/// The AuthorizationPolicies of a loaded mesh, in file order.
pub fn authorization_policies(mesh: &Mesh) -> Vec<&AuthorizationPolicy> {
    mesh.resources
        .iter()
        .filter_map(|r| match &r.resource {
            IstioResource::AuthorizationPolicy(p) => Some(p),
            _ => None,
        })
        .collect()
}

fn namespace_of(meta: &crate::istio::ObjectMeta) -> &str {
    meta.namespace
        .as_deref()
        .unwrap_or(crate::model::DEFAULT_NAMESPACE)
}

/// Whether `policy` applies to `workload`: a policy in the root namespace applies mesh-wide, one
/// in the workload's namespace applies namespace-wide; `selector` then narrows by labels.
/// `targetRef(s)` of kind `Service` apply to the workloads of that mesh service in the policy's
/// namespace (meshctl has no waypoints; the server sidecar enforces what a waypoint would);
/// targets of other kinds (Gateway, ServiceEntry) select no sidecar.
pub fn applies_to(policy: &AuthorizationPolicy, workload: &Workload, root_namespace: &str) -> bool {
    let ns = namespace_of(&policy.metadata);
    if ns != root_namespace && ns != workload.namespace {
        return false;
    }
    let spec = &policy.spec;
    let targets: Vec<_> = spec.target_ref.iter().chain(&spec.target_refs).collect();
    if !targets.is_empty() {
        return ns == workload.namespace
            && targets.iter().any(|t| {
                matches!(t.group.as_deref(), None | Some("") | Some("core"))
                    && t.kind == "Service"
                    && t.name == workload.service
            });
    }
    spec.selector
        .as_ref()
        .is_none_or(|s| s.match_labels.matches_map(&workload.labels))
}

/// Compiles the policies among `policies` that apply to `workload` (see [`applies_to`]).
///
/// A CUSTOM policy that applies is an error (`meshctl check` refuses it earlier). Fields meshctl
/// refuses at load time (JWT `requestPrincipals`, `request.auth.*`) compile to attributes no
/// request has, which is what they mean in Istio without a RequestAuthentication.
pub fn compile_for_workload(
    policies: &[&AuthorizationPolicy],
    workload: &Workload,
    mesh: &MeshSecurity,
) -> Result<WorkloadPolicy, CompileError> {
    let mut out = WorkloadPolicy {
        path_normalization: mesh.path_normalization,
        ..WorkloadPolicy::default()
    };
    let mut trust_domains: Vec<&str> = vec![mesh.trust_domain.as_str()];
    trust_domains.extend(mesh.trust_domain_aliases.iter().map(String::as_str));
    // Root-namespace policies first, as Istio's separate root DENY filter runs first.
    let mut selected: Vec<&AuthorizationPolicy> = policies
        .iter()
        .copied()
        .filter(|p| applies_to(p, workload, &mesh.root_namespace))
        .collect();
    selected.sort_by_key(|p| namespace_of(&p.metadata) != mesh.root_namespace);
    for p in selected {
        let ns = namespace_of(&p.metadata);
        let name = p.metadata.name.as_deref().unwrap_or("");
        let qualified = || format!("{name}.{ns}");
        let action = p.spec.action();
        if action == Action::Custom {
            return Err(CompileError::Custom {
                policy: qualified(),
            });
        }
        let ctx = RuleCtx {
            policy_namespace: ns,
            trust_domains: &trust_domains,
        };
        let rules = p
            .spec
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| compile_rule(r, name, i, &ctx))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CompileError::InPolicy {
                policy: qualified(),
                source: Box::new(e),
            })?;
        let compiled = CompiledPolicy {
            namespace: ns.to_string(),
            name: name.to_string(),
            rules,
        };
        let list = match (action, p.dry_run()) {
            (Action::Deny, false) => &mut out.deny,
            (Action::Deny, true) => &mut out.dry_run_deny,
            (Action::Allow, false) => &mut out.allow,
            (Action::Allow, true) => &mut out.dry_run_allow,
            // Istio accepts dry-run only on ALLOW and DENY; an AUDIT policy always just audits.
            _ => &mut out.audit,
        };
        list.push(compiled);
    }
    Ok(out)
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
