//! Compiling AuthorizationPolicies for one workload into the proxy's [`WorkloadPolicy`]: which
//! policies apply (root namespace, namespace, selector, `targetRefs`), and each rule's `from`,
//! `to` and `when` turned into precompiled [`Term`]s, the way Istio's `authz/model` lays a rule
//! out before generating Envoy RBAC.

use meshapi::authz::{
    CompiledPolicy, CompiledRule, Cond, MeshSecurity, PathMatch, ServiceAccountName, StrMatch,
    Term, WorkloadPolicy,
};
use meshapi::values::IpBlock;

use crate::istio::authorization_policy::{Attribute, Condition, Operation, Rule, Source};
use crate::istio::{Action, AuthorizationPolicy, IstioResource, ServiceAccountRef};
use crate::model::{Mesh, Workload};

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

/// The settings of a loaded mesh: the root namespace, trust domain aliases and path
/// normalization from its compose file's top-level `x-mesh` (defaults without one), and
/// `trust_domain`, the one its identities are issued in.
pub fn mesh_security(mesh: &Mesh, trust_domain: &str) -> MeshSecurity {
    {
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

pub(crate) fn namespace_of(meta: &crate::istio::ObjectMeta) -> &str {
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
    let spec = &policy.spec;
    selects(
        &policy.metadata,
        Scope {
            selector: spec.selector.as_ref(),
            target_ref: spec.target_ref.as_ref(),
            target_refs: &spec.target_refs,
        },
        workload,
        root_namespace,
    )
}

/// How a security policy (AuthorizationPolicy, RequestAuthentication) names its workloads.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub selector: Option<&'a crate::istio::WorkloadSelector>,
    pub target_ref: Option<&'a crate::istio::PolicyTargetReference>,
    pub target_refs: &'a [crate::istio::PolicyTargetReference],
}

/// Whether a security policy with `meta` and `scope` applies to `workload`, by the rules of
/// [`applies_to`].
pub fn selects(
    meta: &crate::istio::ObjectMeta,
    scope: Scope<'_>,
    workload: &Workload,
    root_namespace: &str,
) -> bool {
    let ns = namespace_of(meta);
    if ns != root_namespace && ns != workload.namespace {
        return false;
    }
    let targets: Vec<_> = scope
        .target_ref
        .iter()
        .copied()
        .chain(scope.target_refs)
        .collect();
    if !targets.is_empty() {
        return ns == workload.namespace
            && targets.iter().any(|t| {
                matches!(t.group.as_deref(), None | Some("") | Some("core"))
                    && t.kind == "Service"
                    && t.name == workload.service
            });
    }
    scope
        .selector
        .is_none_or(|s| s.match_labels.matches_map(&workload.labels))
}

/// Compiles the policies among `policies` that apply to `workload` (see [`applies_to`]).
///
/// A CUSTOM policy that applies is an error (`meshctl check` refuses it earlier).
/// `requestPrincipals` and `request.auth.*` compile to tests on the token a RequestAuthentication
/// verified; a request without one matches none of their values.
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

/// What compiling needs besides the rule.
struct RuleCtx<'a> {
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
    push(
        &mut t,
        false,
        Cond::RequestPrincipal(strs(&s.request_principals)),
        s.request_principals.is_empty(),
    );
    push(
        &mut t,
        true,
        Cond::RequestPrincipal(strs(&s.not_request_principals)),
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
        Attribute::RequestAuth(rest) => match rest {
            "principal" => Cond::RequestPrincipal(strs(values)),
            "audiences" => Cond::RequestAudience(strs(values)),
            "presenter" => Cond::RequestPresenter(strs(values)),
            _ => Cond::RequestClaim {
                path: claim_path(rest).ok_or_else(|| CompileError::BadKey {
                    key: c.key.clone(),
                    why: "should have the form request.auth.claims[name] or claims[a][b]"
                        .to_string(),
                })?,
                values: strs(values),
            },
        },
        Attribute::InlineHeader(_) => Cond::Absent {
            key: c.key.clone(),
            http_only: true,
        },
        Attribute::EnvoyFilterMetadata(_) => Cond::Absent {
            key: c.key.clone(),
            http_only: false,
        },
    })
}

/// The path of `claims[a][b]`: `["a", "b"]`; `None` when a name is empty or a bracket is
/// missing.
pub fn claim_path(key: &str) -> Option<Vec<String>> {
    let inner = key.strip_prefix("claims[")?.strip_suffix(']')?;
    let path: Vec<String> = inner.split("][").map(str::to_string).collect();
    let ok = path
        .iter()
        .all(|p| !p.is_empty() && !p.contains('[') && !p.contains(']'));
    ok.then_some(path)
}

/// Compiles rule `index` of policy `name`.
fn compile_rule(
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
