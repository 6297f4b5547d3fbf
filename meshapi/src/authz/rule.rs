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

use super::RequestAttributes;
use super::matcher::{PathMatch, Peer, StrMatch, host_matches};
use crate::values::IpBlock;

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
    /// `requestPrincipals`, `request.auth.principal`: `<iss>/<sub>` of the verified JWT.
    /// HTTP only.
    RequestPrincipal(Vec<StrMatch>),
    /// `request.auth.audiences`: any `aud` of the verified JWT. HTTP only.
    RequestAudience(Vec<StrMatch>),
    /// `request.auth.presenter`: `azp` of the verified JWT. HTTP only.
    RequestPresenter(Vec<StrMatch>),
    /// `request.auth.claims[a][b]`: a claim of the verified JWT by path; a list claim matches
    /// when any of its strings does. HTTP only.
    RequestClaim {
        path: Vec<String>,
        values: Vec<StrMatch>,
    },
    /// An attribute meshctl never has (Envoy filter metadata): no value matches.
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
            Cond::Host(_)
            | Cond::Method(_)
            | Cond::Path(_)
            | Cond::Header { .. }
            | Cond::RequestPrincipal(_)
            | Cond::RequestAudience(_)
            | Cond::RequestPresenter(_)
            | Cond::RequestClaim { .. } => true,
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
        let auth = req.http.as_ref().and_then(|h| h.auth);
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
            Cond::RequestPrincipal(ms) => any_str(ms, auth.map(|a| a.principal.as_str())),
            Cond::RequestAudience(ms) => auth.is_some_and(|a| {
                a.audiences
                    .iter()
                    .any(|aud| ms.iter().any(|m| m.matches(aud)))
            }),
            Cond::RequestPresenter(ms) => any_str(ms, auth.and_then(|a| a.presenter.as_deref())),
            Cond::RequestClaim { path, values } => auth.is_some_and(|a| {
                a.claim_values(path)
                    .iter()
                    .any(|v| values.iter().any(|m| m.matches(v)))
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
