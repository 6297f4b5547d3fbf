//! AuthorizationPolicy (security.istio.io v1beta1, v1): which callers may do what to a workload.
//!
//! Evaluation (done by the proxy, not here): CUSTOM, then DENY, then ALLOW policies; a request
//! matching any DENY rule is refused; if any ALLOW policy applies to the workload, the request
//! must match one of its rules. AUDIT only marks requests for logging.

use serde::{Deserialize, Serialize};

pub use meshapi::values::Action;

use meshapi::diag::FieldError;

use super::meta::{
    DRY_RUN_ANNOTATION, Ignored, ObjectMeta, PolicyTargetReference, WorkloadSelector,
};
use super::types::{IpBlock, PortString, Principal, ServiceAccountRef, Wildcard};
use super::validate::{Report, check_header_name};

/// An AuthorizationPolicy document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicy {
    /// `security.istio.io/v1` or `v1beta1` (same schema).
    pub api_version: String,
    /// `AuthorizationPolicy`.
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: AuthorizationPolicySpec,
    /// Written by a cluster; read and dropped.
    #[serde(default, skip_serializing)]
    pub status: Ignored,
}

/// The `spec` of an AuthorizationPolicy.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// The workloads this applies to. Absent (and no targetRef): the whole namespace, or the mesh
    /// in the root namespace. Exclusive with `targetRef`/`targetRefs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// Attach to a Service/ServiceEntry/Gateway by name. Exclusive with `selector`, `targetRefs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    /// Attach to several targets; at most 16. Exclusive with `selector`, `targetRef`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Rules, ORed. No rules: an ALLOW policy allows nothing; `[{}]` matches every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// Default `ALLOW`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// The external authorizer of a CUSTOM policy. Not supported by meshctl.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ExtensionProvider>,
}

impl AuthorizationPolicySpec {
    /// `action`, `ALLOW` when unset.
    pub fn action(&self) -> Action {
        self.action.unwrap_or(Action::Allow)
    }
}

/// The authorizer of a CUSTOM policy.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProvider {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A rule: it matches when one of `from`, one of `to` and all of `when` match (an empty list
/// matches anything).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Sources, ORed; at most 512.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<RuleFrom>,
    /// Operations, ORed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<RuleTo>,
    /// Extra conditions, ANDed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

/// An entry of `from`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFrom {
    /// Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

/// Who the caller is. All fields given must match (AND); within a list, any value (OR); a
/// `not*` list must not match.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// Peer identities from mTLS (`cluster.local/ns/default/sa/frontend`), with wildcards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<Principal>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<Principal>,
    /// Request (JWT) principals, `<iss>/<sub>` of the token a RequestAuthentication verified,
    /// with `*` prefix/suffix wildcards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
    /// Namespaces of the peer identity, with wildcards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<Wildcard>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<Wildcard>,
    /// Service accounts of the peer (`name` or `namespace/name`); at most 16. Exclusive with
    /// principals and namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<ServiceAccountRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<ServiceAccountRef>,
    /// Source IPs of the connection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<IpBlock>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<IpBlock>,
    /// Original client IPs (X-Forwarded-For, PROXY protocol).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_ip_blocks: Vec<IpBlock>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_remote_ip_blocks: Vec<IpBlock>,
    /// Trust domains of the peer identity, with wildcards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_domains: Vec<Wildcard>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_trust_domains: Vec<Wildcard>,
}

/// An entry of `to`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTo {
    /// Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
}

/// What the request does. Fields ANDed, values ORed; strings take `*` prefix/suffix wildcards,
/// paths also Istio's `{*}`/`{**}` templates.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    /// Host (authority) names, case-insensitive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    /// Destination ports of the connection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortString>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<PortString>,
    /// HTTP methods (gRPC: always POST).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    /// Normalized request paths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

/// A `when` condition on an attribute (see [`Attribute`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// The attribute, e.g. `request.headers[x-user]`, `source.ip`. Required.
    pub key: String,
    /// Matches if the attribute has any of these values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Matches if the attribute has none of these values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

/// The attribute named by a [`Condition::key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribute<'a> {
    /// `request.headers[<name>]`.
    RequestHeader(&'a str),
    /// `source.ip`: the connection's peer address.
    SourceIp,
    /// `remote.ip`: the original client address.
    RemoteIp,
    /// `source.namespace`.
    SourceNamespace,
    /// `source.serviceAccount` (`namespace/name`).
    SourceServiceAccount,
    /// `source.principal`.
    SourcePrincipal,
    /// `destination.ip`.
    DestinationIp,
    /// `destination.port`.
    DestinationPort,
    /// `connection.sni`.
    ConnectionSni,
    /// `request.auth.*` (principal, audiences, presenter, claims[...]): the verified JWT.
    RequestAuth(&'a str),
    /// `experimental.envoy.filters.*`. Not supported by meshctl.
    EnvoyFilterMetadata(&'a str),
    /// `request.experimental.inline.headers[...]`. Not supported by meshctl.
    InlineHeader(&'a str),
}

impl Condition {
    /// Parses `key`, with Istio's message when it is not an attribute Istio knows.
    pub fn attribute(&self) -> Result<Attribute<'_>, String> {
        let key = self.key.as_str();
        let bracket = |prefix: &str| -> Option<Result<&str, String>> {
            let rest = key.strip_prefix(prefix)?;
            Some(
                match rest.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
                    Some(inner) if !inner.is_empty() => Ok(inner),
                    _ => Err(format!(
                        "bad key {key:?}: should have the form {prefix}[name]"
                    )),
                },
            )
        };
        if let Some(r) = bracket("request.headers") {
            return r.map(Attribute::RequestHeader);
        }
        if let Some(r) = bracket("request.experimental.inline.headers") {
            return r.map(Attribute::InlineHeader);
        }
        if let Some(rest) = key.strip_prefix("request.auth.") {
            let known = matches!(rest, "principal" | "audiences" | "presenter")
                || (rest.starts_with("claims[")
                    && rest.ends_with(']')
                    && rest.len() > "claims[]".len());
            if !known {
                return Err(format!("unknown attribute {key:?}"));
            }
            return Ok(Attribute::RequestAuth(rest));
        }
        if let Some(rest) = key.strip_prefix("experimental.envoy.filters.") {
            return Ok(Attribute::EnvoyFilterMetadata(rest));
        }
        Ok(match key {
            "source.ip" => Attribute::SourceIp,
            "remote.ip" => Attribute::RemoteIp,
            "source.namespace" => Attribute::SourceNamespace,
            "source.serviceAccount" => Attribute::SourceServiceAccount,
            "source.principal" => Attribute::SourcePrincipal,
            "destination.ip" => Attribute::DestinationIp,
            "destination.port" => Attribute::DestinationPort,
            "connection.sni" => Attribute::ConnectionSni,
            "destination.namespace" => {
                return Err(format!(
                    "attribute {key} is replaced by the policy's metadata.namespace"
                ));
            }
            k if k.starts_with("destination.labels") => {
                return Err(format!(
                    "attribute {key} is replaced by the workload selector"
                ));
            }
            "destination.name" | "destination.user" => {
                return Err(format!(
                    "deprecated attribute {key}: only supported in v1alpha1"
                ));
            }
            _ => return Err(format!("unknown attribute {key:?}")),
        })
    }
}

/// Istio's limit on rules per policy and on `from` entries per rule.
pub const MAX_RULES: usize = 512;
/// Istio's limit on `targetRefs` and on `serviceAccounts`.
pub const MAX_TARGET_REFS: usize = 16;

impl AuthorizationPolicy {
    /// Whether the policy is in dry-run (shadow) mode: evaluated and logged, never enforced.
    pub fn dry_run(&self) -> bool {
        self.metadata
            .annotations
            .get(DRY_RUN_ANNOTATION)
            .is_some_and(|v| parse_bool(v) == Some(true))
    }

    /// Checks the resource as Istio would, plus meshctl's refusals. Paths start at the document
    /// root (`spec.rules[0].from[0].source.requestPrincipals`).
    pub fn validate(&self) -> Vec<FieldError> {
        let mut r = Report::default();
        self.metadata.validate_into(&mut r, true);
        let spec = &self.spec;
        let action = spec.action();

        let targets = usize::from(spec.selector.is_some())
            + usize::from(spec.target_ref.is_some())
            + usize::from(!spec.target_refs.is_empty());
        if targets > 1 {
            r.error(
                "spec",
                "only one of selector, targetRef or targetRefs can be set",
            );
        }
        if let Some(sel) = &spec.selector {
            sel.validate_into(&mut r, "spec.selector");
        }
        if let Some(t) = &spec.target_ref {
            t.validate_into(&mut r, "spec.targetRef");
        }
        if spec.target_refs.len() > MAX_TARGET_REFS {
            r.error(
                "spec.targetRefs",
                format!("at most {MAX_TARGET_REFS} targetRefs are allowed"),
            );
        }
        for (i, t) in spec.target_refs.iter().enumerate() {
            t.validate_into(&mut r, &format!("spec.targetRefs[{i}]"));
        }

        if action == Action::Custom {
            r.unsupported(
                "spec.action",
                "action CUSTOM",
                "CUSTOM authorization by an external provider is not supported; use ALLOW or DENY rules",
            );
        }
        if spec.provider.is_some() {
            r.unsupported(
                "spec.provider",
                "provider",
                "it names the external authorizer of a CUSTOM policy, and CUSTOM is not supported",
            );
        }
        if let Some(v) = self.metadata.annotations.get(DRY_RUN_ANNOTATION) {
            let p = format!("metadata.annotations.{DRY_RUN_ANNOTATION}");
            if parse_bool(v).is_none() {
                r.error(
                    &p,
                    format!("invalid {DRY_RUN_ANNOTATION} value {v:?}: use \"true\" or \"false\""),
                );
            }
            if !matches!(action, Action::Allow | Action::Deny) {
                r.error(p, format!("{DRY_RUN_ANNOTATION} is only supported with action ALLOW or DENY, not {action}"));
            }
        }

        if spec.rules.len() > MAX_RULES {
            r.error(
                "spec.rules",
                format!("at most {MAX_RULES} rules are allowed"),
            );
        }
        for (i, rule) in spec.rules.iter().enumerate() {
            validate_rule(&mut r, &format!("spec.rules[{i}]"), rule);
        }
        r.into_errors()
    }
}

/// Go's `strconv.ParseBool`, which Istio uses for the dry-run annotation.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

fn validate_rule(r: &mut Report, p: &str, rule: &Rule) {
    if rule.from.len() > MAX_RULES {
        r.error(
            format!("{p}.from"),
            format!("at most {MAX_RULES} from entries are allowed"),
        );
    }
    for (j, from) in rule.from.iter().enumerate() {
        let fp = format!("{p}.from[{j}].source");
        match &from.source {
            None => r.error(fp, "source is required in a from entry"),
            Some(src) => validate_source(r, &fp, src),
        }
    }
    for (j, to) in rule.to.iter().enumerate() {
        let tp = format!("{p}.to[{j}].operation");
        match &to.operation {
            None => r.error(tp, "operation is required in a to entry"),
            Some(op) => validate_operation(r, &tp, op),
        }
    }
    for (j, c) in rule.when.iter().enumerate() {
        validate_condition(r, &format!("{p}.when[{j}]"), c);
    }
}

fn validate_source(r: &mut Report, p: &str, s: &Source) {
    let empty = s.principals.is_empty()
        && s.not_principals.is_empty()
        && s.request_principals.is_empty()
        && s.not_request_principals.is_empty()
        && s.namespaces.is_empty()
        && s.not_namespaces.is_empty()
        && s.service_accounts.is_empty()
        && s.not_service_accounts.is_empty()
        && s.ip_blocks.is_empty()
        && s.not_ip_blocks.is_empty()
        && s.remote_ip_blocks.is_empty()
        && s.not_remote_ip_blocks.is_empty()
        && s.trust_domains.is_empty()
        && s.not_trust_domains.is_empty();
    if empty {
        r.error(
            p,
            "source must not be empty; remove the from entry to match any source",
        );
    }
    let has_sa = !s.service_accounts.is_empty() || !s.not_service_accounts.is_empty();
    let has_id = !s.principals.is_empty()
        || !s.not_principals.is_empty()
        || !s.namespaces.is_empty()
        || !s.not_namespaces.is_empty();
    if has_sa && has_id {
        r.error(
            p,
            "cannot set serviceAccounts with namespaces or principals; use separate from entries",
        );
    }
    for (field, list) in [
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
    ] {
        if list.len() > MAX_TARGET_REFS {
            r.error(
                format!("{p}.{field}"),
                format!("at most {MAX_TARGET_REFS} service accounts are allowed"),
            );
        }
    }
    for (field, list) in [
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
    ] {
        for (i, v) in list.iter().enumerate() {
            if v.is_empty() {
                r.error(format!("{p}.{field}[{i}]"), "empty value is not allowed");
            }
        }
    }
}

fn validate_operation(r: &mut Report, p: &str, op: &Operation) {
    let empty = op.hosts.is_empty()
        && op.not_hosts.is_empty()
        && op.ports.is_empty()
        && op.not_ports.is_empty()
        && op.methods.is_empty()
        && op.not_methods.is_empty()
        && op.paths.is_empty()
        && op.not_paths.is_empty();
    if empty {
        r.error(
            p,
            "operation must not be empty; remove the to entry to match any operation",
        );
    }
    for (field, list) in [
        ("hosts", &op.hosts),
        ("notHosts", &op.not_hosts),
        ("methods", &op.methods),
        ("notMethods", &op.not_methods),
        ("paths", &op.paths),
        ("notPaths", &op.not_paths),
    ] {
        for (i, v) in list.iter().enumerate() {
            if v.is_empty() {
                r.error(format!("{p}.{field}[{i}]"), "empty value is not allowed");
            }
        }
    }
    for (field, list) in [("paths", &op.paths), ("notPaths", &op.not_paths)] {
        for (i, v) in list.iter().enumerate() {
            if let Err(e) = check_path_template(v) {
                r.error(format!("{p}.{field}[{i}]"), e);
            }
        }
    }
}

/// Istio's path templates: `{*}` matches one segment, `{**}` any number and must be last; other
/// braces are refused, and segments of a templated path must be valid path characters.
pub(crate) fn check_path_template(path: &str) -> Result<(), String> {
    let templated = path.contains("{*}") || path.contains("{**}");
    let mut seen_any = false;
    for seg in path.trim_matches('/').split('/') {
        match seg {
            "{*}" | "{**}" if seen_any => {
                return Err(format!(
                    "invalid path {path:?}: {{**}} must be the last operator"
                ));
            }
            "{*}" => continue,
            "{**}" => {
                seen_any = true;
                continue;
            }
            _ => {}
        }
        if seg.contains('{') || seg.contains('}') {
            return Err(format!(
                "invalid path {path:?}: '{{' or '}}' outside a {{*}} or {{**}} template"
            ));
        }
        let pchar = |c: char| c.is_ascii_alphanumeric() || "-._~%!$&'()+,;:@=".contains(c);
        if templated && !seg.is_empty() && !seg.chars().all(pchar) {
            return Err(format!(
                "invalid path {path:?}: segment {seg:?} has characters not allowed in a path"
            ));
        }
    }
    Ok(())
}

fn validate_condition(r: &mut Report, p: &str, c: &Condition) {
    if c.key.is_empty() {
        r.error(format!("{p}.key"), "key must not be empty");
        return;
    }
    if c.values.is_empty() && c.not_values.is_empty() {
        r.error(
            p,
            format!(
                "at least one of values or notValues must be set for key {}",
                c.key
            ),
        );
    }
    let attr = match c.attribute() {
        Ok(a) => a,
        Err(e) => {
            r.error(format!("{p}.key"), e);
            return;
        }
    };
    if let Attribute::RequestAuth(rest) = attr
        && rest.starts_with("claims")
        && crate::compile::authz::claim_path(rest).is_none()
    {
        r.error(
            format!("{p}.key"),
            format!(
                "bad key {:?}: should have the form request.auth.claims[name] or request.auth.claims[a][b]",
                c.key
            ),
        );
        return;
    }
    let unsupported_why = match attr {
        Attribute::EnvoyFilterMetadata(_) => {
            Some("it reads Envoy filter metadata, which the meshctl proxy does not have")
        }
        Attribute::InlineHeader(_) => Some("use request.headers[...]"),
        _ => None,
    };
    if let Some(why) = unsupported_why {
        r.unsupported(format!("{p}.key"), &format!("when key {:?}", c.key), why);
        return;
    }
    if let Attribute::RequestHeader(name) = attr
        && let Err(e) = check_header_name(name)
    {
        r.error(format!("{p}.key"), e);
    }
    for (field, list) in [("values", &c.values), ("notValues", &c.not_values)] {
        for (i, v) in list.iter().enumerate() {
            let vp = format!("{p}.{field}[{i}]");
            if v.is_empty() {
                r.error(vp, "empty value is not allowed");
                continue;
            }
            let check = match attr {
                Attribute::SourceIp | Attribute::RemoteIp | Attribute::DestinationIp => {
                    IpBlock::new(v).map(|_| ())
                }
                Attribute::DestinationPort => v.parse::<super::types::Port>().map(|_| ()),
                Attribute::SourceServiceAccount => ServiceAccountRef::new(v).map(|_| ()),
                Attribute::SourcePrincipal => Principal::new(v.as_str()).map(|_| ()),
                Attribute::SourceNamespace => Wildcard::new(v.as_str()).map(|_| ()),
                _ => Ok(()),
            };
            if let Err(e) = check {
                r.error(vp, e);
            }
        }
    }
}
