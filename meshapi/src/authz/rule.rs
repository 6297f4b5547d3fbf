//! One compiled AuthorizationPolicy rule: `from` sources (ORed), `to` operations (ORed) and
//! `when` conditions (ANDed), each a list of [`Term`]s ANDed together, the way Istio's
//! `authz/model` lays a rule out before generating Envoy RBAC.
//!
//! A term tests one attribute against a list of values (ORed), negated for the `not*` fields and
//! `notValues`. An attribute the request does not have (no mTLS identity, no header, no JWT)
//! matches no value, so its negation matches: a plaintext request never satisfies `principals`
//! or `namespaces`, and always satisfies `notPrincipals`, exactly like Envoy's
//! `not_id: {authenticated: ...}`.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::matcher::{PathMatch, Peer, StrMatch, host_matches};
use super::{CompileError, RequestAttributes};
use crate::istio::authorization_policy::{Attribute, Condition, Operation, Rule, Source};
use crate::istio::{IpBlock, ServiceAccountRef};

/// What a [`Term`] looks at, with the values it accepts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cond {
    /// The mTLS peer's SPIFFE ID without `spiffe://` (`principals`, `source.principal`).
    Principal(Vec<StrMatch>),
    /// The namespace in the peer's SPIFFE ID (`namespaces`, `source.namespace`).
    Namespace(Vec<StrMatch>),
    /// The peer's namespace and service account (`serviceAccounts`, `source.serviceAccount`).
    ServiceAccount(Vec<ServiceAccountName>),
    /// The peer's trust domain (`trustDomains`).
    TrustDomain(Vec<StrMatch>),
    /// The connection's peer address (`ipBlocks`, `source.ip`).
    SourceIp(Vec<IpBlock>),
    /// The original client address (`remoteIpBlocks`, `remote.ip`).
    RemoteIp(Vec<IpBlock>),
    /// `destination.ip`.
    DestinationIp(Vec<IpBlock>),
    /// `ports`, `destination.port`.
    DestinationPort(Vec<u16>),
    /// `connection.sni`.
    Sni(Vec<StrMatch>),
    /// `hosts`: the authority, case-insensitive, port ignored. HTTP only.
    Host(Vec<StrMatch>),
    /// `methods`. HTTP only.
    Method(Vec<StrMatch>),
    /// `paths`, on the normalized path without query. HTTP only.
    Path(Vec<PathMatch>),
    /// `request.headers[name]`; the name is lower case. HTTP only.
    Header { name: String, values: Vec<StrMatch> },
    /// An attribute meshctl never has (JWT request principals and claims, Envoy filter
    /// metadata): no value matches, as in Istio without a RequestAuthentication.
    Absent { key: String, http_only: bool },
}

/// A service account as `serviceAccounts` names it, with the namespace filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAccountName {
    pub namespace: String,
    pub name: String,
}

impl Cond {
    /// Whether Istio drops this attribute on a TCP port (`"..." is HTTP only`).
    pub fn http_only(&self) -> bool {
        match self {
            Cond::Host(_) | Cond::Method(_) | Cond::Path(_) | Cond::Header { .. } => true,
            Cond::Absent { http_only, .. } => *http_only,
            _ => false,
        }
    }

    /// Whether the attribute is the same for every request of one connection (peer identity,
    /// addresses, port, SNI), so it can be decided once per connection.
    pub(crate) fn connection_level(&self) -> bool {
        matches!(
            self,
            Cond::Principal(_)
                | Cond::Namespace(_)
                | Cond::ServiceAccount(_)
                | Cond::TrustDomain(_)
                | Cond::SourceIp(_)
                | Cond::DestinationIp(_)
                | Cond::DestinationPort(_)
                | Cond::Sni(_)
        )
    }

    fn matches(&self, req: &RequestAttributes<'_>, peer: &Peer<'_>) -> bool {
        let any_str =
            |ms: &[StrMatch], v: Option<&str>| v.is_some_and(|v| ms.iter().any(|m| m.matches(v)));
        let any_ip = |bs: &[IpBlock], ip: IpAddr| bs.iter().any(|b| b.contains(ip));
        match self {
            Cond::Principal(ms) => any_str(ms, peer.principal),
            Cond::Namespace(ms) => any_str(ms, peer.namespace),
            Cond::TrustDomain(ms) => any_str(ms, peer.trust_domain),
            Cond::ServiceAccount(sas) => match (peer.namespace, peer.service_account) {
                (Some(ns), Some(sa)) => sas.iter().any(|s| s.namespace == ns && s.name == sa),
                _ => false,
            },
            Cond::SourceIp(bs) => any_ip(bs, req.source_ip),
            Cond::RemoteIp(bs) => any_ip(bs, req.remote_ip.unwrap_or(req.source_ip)),
            Cond::DestinationIp(bs) => any_ip(bs, req.destination_ip),
            Cond::DestinationPort(ps) => ps.contains(&req.destination_port),
            Cond::Sni(ms) => any_str(ms, req.sni),
            Cond::Host(ms) => req
                .http
                .as_ref()
                .is_some_and(|h| ms.iter().any(|m| host_matches(m, h.host))),
            Cond::Method(ms) => any_str(ms, req.http.as_ref().map(|h| h.method)),
            Cond::Path(ms) => peer
                .path
                .is_some_and(|p| ms.iter().any(|m| m.matches_without_query(p))),
            // A header `*` is Envoy's `present_match`: any value, even an empty one.
            Cond::Header { name, values } => req
                .http
                .as_ref()
                .and_then(|h| h.header(name))
                .is_some_and(|v| {
                    values
                        .iter()
                        .any(|m| *m == StrMatch::Present || m.matches(v))
                }),
            Cond::Absent { .. } => false,
        }
    }
}

/// One attribute test: matches when any value matches, inverted when `negate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Term {
    /// Set for `not*` fields and `notValues`. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub negate: bool,
    pub cond: Cond,
}

/// How a rule is applied to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// An HTTP request: every term applies.
    Http,
    /// A TCP connection under an ALLOW policy: a rule with any HTTP-only term is ignored.
    TcpAllow,
    /// A TCP connection under a DENY or AUDIT policy: HTTP-only terms are dropped.
    TcpWiden,
}

fn all_match(terms: &[Term], req: &RequestAttributes<'_>, peer: &Peer<'_>, mode: Mode) -> bool {
    terms.iter().all(|t| {
        (mode == Mode::TcpWiden && t.cond.http_only()) || t.cond.matches(req, peer) != t.negate
    })
}

/// A compiled rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompiledRule {
    /// Istio's name for the rule, `ns[<ns>]-policy[<name>]-rule[<i>]`, as Envoy reports it.
    pub id: String,
    /// Sources, ORed; each one's terms ANDed. Empty: any source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Vec<Term>>,
    /// Operations, ORed; each one's terms ANDed. Empty: any operation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Vec<Term>>,
    /// Conditions, ANDed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Term>,
    /// Whether any term is HTTP only (then an ALLOW rule allows no TCP connection).
    #[serde(default)]
    pub http_only: bool,
}

impl CompiledRule {
    pub(crate) fn matches(&self, req: &RequestAttributes<'_>, peer: &Peer<'_>, mode: Mode) -> bool {
        if mode == Mode::TcpAllow && self.http_only {
            return false;
        }
        let any = |alts: &[Vec<Term>]| {
            alts.is_empty() || alts.iter().any(|t| all_match(t, req, peer, mode))
        };
        all_match(&self.when, req, peer, mode) && any(&self.from) && any(&self.to)
    }
}

impl CompiledRule {
    /// Whether some HTTP request on the connection `conn` describes could match this rule:
    /// false when a connection-level term (see [`Cond::connection_level`]) already fails in
    /// `when`, or in every `from` or every `to` alternative. Never false for a rule that a
    /// request with these connection attributes matches.
    pub(crate) fn may_match_on(&self, conn: &RequestAttributes<'_>, peer: &Peer<'_>) -> bool {
        let conn_ok = |terms: &[Term]| {
            terms
                .iter()
                .all(|t| !t.cond.connection_level() || t.cond.matches(conn, peer) != t.negate)
        };
        let any = |alts: &[Vec<Term>]| alts.is_empty() || alts.iter().any(|t| conn_ok(t));
        conn_ok(&self.when) && any(&self.from) && any(&self.to)
    }
}

/// What compiling needs besides the rule.
pub(crate) struct RuleCtx<'a> {
    pub policy_namespace: &'a str,
    /// The trust domain first, then its aliases.
    pub trust_domains: &'a [&'a str],
}

fn push(terms: &mut Vec<Term>, negate: bool, cond: Cond, empty: bool) {
    if !empty {
        terms.push(Term { negate, cond });
    }
}

fn strs<S: AsRef<str>>(v: &[S]) -> Vec<StrMatch> {
    v.iter().map(|s| StrMatch::parse(s.as_ref())).collect()
}

/// Istio's trust-domain migration of principal patterns: a principal in the mesh's trust
/// domain, one of its aliases, or `cluster.local` also matches every other of them; a principal
/// whose trust domain starts with `*` is kept as is.
fn principals(values: &[&str], ctx: &RuleCtx<'_>) -> Vec<StrMatch> {
    let mut out = Vec::new();
    let mut add = |m: StrMatch| {
        if !out.contains(&m) {
            out.push(m);
        }
    };
    for v in values {
        let parts: Vec<&str> = v.split('/').collect();
        let td = parts[0];
        let td_pattern = StrMatch::parse(td);
        let enforced = parts.len() == 5 && td != "*";
        let known =
            td == "cluster.local" || ctx.trust_domains.iter().any(|d| td_pattern.matches(d));
        if !enforced || !known {
            add(StrMatch::parse(v));
            continue;
        }
        for alias in ctx.trust_domains {
            if td.starts_with('*') && td_pattern.matches(alias) {
                add(StrMatch::parse(v));
            } else {
                add(StrMatch::parse(&format!(
                    "{alias}/{}",
                    parts[1..].join("/")
                )));
            }
        }
    }
    out
}

fn service_accounts(v: &[ServiceAccountRef], ns: &str) -> Vec<ServiceAccountName> {
    v.iter()
        .map(|s| ServiceAccountName {
            namespace: s.namespace.clone().unwrap_or_else(|| ns.to_string()),
            name: s.name.clone(),
        })
        .collect()
}

fn trust_domains(v: &[crate::istio::Wildcard], ctx: &RuleCtx<'_>) -> Vec<StrMatch> {
    let mut out = Vec::new();
    for w in v {
        let expanded: Vec<&str> = if ctx.trust_domains.contains(&w.as_str()) {
            ctx.trust_domains.to_vec()
        } else {
            vec![w.as_str()]
        };
        for td in expanded {
            let m = StrMatch::parse(td);
            if !out.contains(&m) {
                out.push(m);
            }
        }
    }
    out
}

fn source_terms(s: &Source, ctx: &RuleCtx<'_>) -> Vec<Term> {
    let mut t = Vec::new();
    fn p(v: &[crate::istio::Principal]) -> Vec<&str> {
        v.iter().map(|p| p.as_str()).collect()
    }
    let w = |v: &[crate::istio::Wildcard]| strs(&v.iter().map(|w| w.as_str()).collect::<Vec<_>>());
    push(
        &mut t,
        false,
        Cond::Principal(principals(&p(&s.principals), ctx)),
        s.principals.is_empty(),
    );
    push(
        &mut t,
        true,
        Cond::Principal(principals(&p(&s.not_principals), ctx)),
        s.not_principals.is_empty(),
    );
    push(
        &mut t,
        false,
        Cond::Namespace(w(&s.namespaces)),
        s.namespaces.is_empty(),
    );
    push(
        &mut t,
        true,
        Cond::Namespace(w(&s.not_namespaces)),
        s.not_namespaces.is_empty(),
    );
    let ns = ctx.policy_namespace;
    push(
        &mut t,
        false,
        Cond::ServiceAccount(service_accounts(&s.service_accounts, ns)),
        s.service_accounts.is_empty(),
    );
    push(
        &mut t,
        true,
        Cond::ServiceAccount(service_accounts(&s.not_service_accounts, ns)),
        s.not_service_accounts.is_empty(),
    );
    push(
        &mut t,
        false,
        Cond::TrustDomain(trust_domains(&s.trust_domains, ctx)),
        s.trust_domains.is_empty(),
    );
    push(
        &mut t,
        true,
        Cond::TrustDomain(trust_domains(&s.not_trust_domains, ctx)),
        s.not_trust_domains.is_empty(),
    );
    push(
        &mut t,
        false,
        Cond::SourceIp(s.ip_blocks.clone()),
        s.ip_blocks.is_empty(),
    );
    push(
        &mut t,
        true,
        Cond::SourceIp(s.not_ip_blocks.clone()),
        s.not_ip_blocks.is_empty(),
    );
    push(
        &mut t,
        false,
        Cond::RemoteIp(s.remote_ip_blocks.clone()),
        s.remote_ip_blocks.is_empty(),
    );
    push(
        &mut t,
        true,
        Cond::RemoteIp(s.not_remote_ip_blocks.clone()),
        s.not_remote_ip_blocks.is_empty(),
    );
    let rp = |key: &str| Cond::Absent {
        key: key.to_string(),
        http_only: true,
    };
    push(
        &mut t,
        false,
        rp("requestPrincipals"),
        s.request_principals.is_empty(),
    );
    push(
        &mut t,
        true,
        rp("notRequestPrincipals"),
        s.not_request_principals.is_empty(),
    );
    t
}

fn operation_terms(o: &Operation) -> Vec<Term> {
    let mut t = Vec::new();
    push(
        &mut t,
        false,
        Cond::Host(strs(&o.hosts)),
        o.hosts.is_empty(),
    );
    push(
        &mut t,
        true,
        Cond::Host(strs(&o.not_hosts)),
        o.not_hosts.is_empty(),
    );
    push(
        &mut t,
        false,
        Cond::Method(strs(&o.methods)),
        o.methods.is_empty(),
    );
    push(
        &mut t,
        true,
        Cond::Method(strs(&o.not_methods)),
        o.not_methods.is_empty(),
    );
    let paths = |v: &[String]| v.iter().map(|p| PathMatch::parse(p)).collect();
    push(
        &mut t,
        false,
        Cond::Path(paths(&o.paths)),
        o.paths.is_empty(),
    );
    push(
        &mut t,
        true,
        Cond::Path(paths(&o.not_paths)),
        o.not_paths.is_empty(),
    );
    let ports = |v: &[crate::istio::PortString]| v.iter().map(|p| p.port().get()).collect();
    push(
        &mut t,
        false,
        Cond::DestinationPort(ports(&o.ports)),
        o.ports.is_empty(),
    );
    push(
        &mut t,
        true,
        Cond::DestinationPort(ports(&o.not_ports)),
        o.not_ports.is_empty(),
    );
    t
}

fn condition_cond(
    c: &Condition,
    values: &[String],
    ctx: &RuleCtx<'_>,
) -> Result<Cond, CompileError> {
    let bad = |value: &str, why: String| CompileError::BadValue {
        key: c.key.clone(),
        value: value.to_string(),
        why,
    };
    let ips = || -> Result<Vec<IpBlock>, CompileError> {
        values
            .iter()
            .map(|v| IpBlock::new(v).map_err(|e| bad(v, e)))
            .collect()
    };
    let attr = c.attribute().map_err(|why| CompileError::BadKey {
        key: c.key.clone(),
        why,
    })?;
    Ok(match attr {
        Attribute::RequestHeader(name) => Cond::Header {
            name: name.to_ascii_lowercase(),
            values: strs(values),
        },
        Attribute::SourceIp => Cond::SourceIp(ips()?),
        Attribute::RemoteIp => Cond::RemoteIp(ips()?),
        Attribute::DestinationIp => Cond::DestinationIp(ips()?),
        Attribute::SourceNamespace => Cond::Namespace(strs(values)),
        Attribute::SourcePrincipal => Cond::Principal(principals(
            &values.iter().map(String::as_str).collect::<Vec<_>>(),
            ctx,
        )),
        Attribute::SourceServiceAccount => {
            let refs = values
                .iter()
                .map(|v| ServiceAccountRef::new(v).map_err(|e| bad(v, e)))
                .collect::<Result<Vec<_>, _>>()?;
            Cond::ServiceAccount(service_accounts(&refs, ctx.policy_namespace))
        }
        Attribute::DestinationPort => Cond::DestinationPort(
            values
                .iter()
                .map(|v| v.parse::<u16>().map_err(|e| bad(v, e.to_string())))
                .collect::<Result<_, _>>()?,
        ),
        Attribute::ConnectionSni => Cond::Sni(strs(values)),
        Attribute::RequestAuth(_) | Attribute::InlineHeader(_) => Cond::Absent {
            key: c.key.clone(),
            http_only: true,
        },
        Attribute::EnvoyFilterMetadata(_) => Cond::Absent {
            key: c.key.clone(),
            http_only: false,
        },
    })
}

/// Compiles rule `index` of policy `name`.
pub(crate) fn compile_rule(
    rule: &Rule,
    name: &str,
    index: usize,
    ctx: &RuleCtx<'_>,
) -> Result<CompiledRule, CompileError> {
    let mut when = Vec::new();
    for c in &rule.when {
        if !c.values.is_empty() {
            when.push(Term {
                negate: false,
                cond: condition_cond(c, &c.values, ctx)?,
            });
        }
        if !c.not_values.is_empty() {
            when.push(Term {
                negate: true,
                cond: condition_cond(c, &c.not_values, ctx)?,
            });
        }
    }
    let from: Vec<Vec<Term>> = rule
        .from
        .iter()
        .map(|f| {
            f.source
                .as_ref()
                .map(|s| source_terms(s, ctx))
                .unwrap_or_default()
        })
        .collect();
    let to: Vec<Vec<Term>> = rule
        .to
        .iter()
        .map(|t| {
            t.operation
                .as_ref()
                .map(operation_terms)
                .unwrap_or_default()
        })
        .collect();
    let http_only = when
        .iter()
        .chain(from.iter().flatten())
        .chain(to.iter().flatten())
        .any(|t| t.cond.http_only());
    Ok(CompiledRule {
        id: format!("ns[{}]-policy[{name}]-rule[{index}]", ctx.policy_namespace),
        from,
        to,
        when,
        http_only,
    })
}
