//! `meshctl check`'s analysis, the counterpart of `istioctl analyze`: findings that no single
//! resource shows by itself, only the mesh as a whole. Each finding has a stable code (listed
//! in docs/check-codes.md), a severity, the file position of the field at fault and a one-line
//! fix hint.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::istio::IstioResource;
use crate::istio::destination_rule::{DestinationRuleSpec, TlsMode};
use crate::istio::peer_authentication::MtlsMode;
use crate::istio::virtual_service::{Destination, HttpMatchRequest, VirtualService};
use crate::model::{DEFAULT_TRUST_DOMAIN, Inventory, normalize_host};
use crate::model::{Mesh, Resource};
use meshapi::diag::{Diagnostic, Severity};

/// Stable codes of analysis findings.
pub mod codes {
    /// A destination host that is no mesh service.
    pub const UNKNOWN_HOST: &str = "MESH0101";
    /// A subset referenced but defined in no DestinationRule for the host.
    pub const UNKNOWN_SUBSET: &str = "MESH0102";
    /// A subset whose labels select no instance of the service.
    pub const EMPTY_SUBSET: &str = "MESH0103";
    /// An HTTP match that can never apply: after a catch-all, or a duplicate of an earlier one.
    pub const SHADOWED_MATCH: &str = "MESH0104";
    /// More than one VirtualService for one host.
    pub const CONFLICTING_VIRTUAL_SERVICES: &str = "MESH0105";
    /// More than one DestinationRule for one host.
    pub const CONFLICTING_DESTINATION_RULES: &str = "MESH0106";
    /// The tries cannot all fit in the route timeout.
    pub const RETRIES_EXCEED_TIMEOUT: &str = "MESH0108";
    /// A fault without a percentage injects nothing.
    pub const FAULT_WITHOUT_PERCENTAGE: &str = "MESH0109";
    /// A VirtualService host that is no mesh service.
    pub const UNKNOWN_VIRTUAL_SERVICE_HOST: &str = "MESH0110";
    /// A DestinationRule host that is no mesh service.
    pub const UNKNOWN_DESTINATION_RULE_HOST: &str = "MESH0111";
    /// An AuthorizationPolicy principal naming no known service account.
    pub const UNKNOWN_PRINCIPAL: &str = "MESH0201";
    /// An AuthorizationPolicy namespace in which no workload runs.
    pub const UNKNOWN_NAMESPACE: &str = "MESH0202";
    /// A workload selector that selects no workload.
    pub const SELECTS_NOTHING: &str = "MESH0203";
    /// STRICT mTLS on a workload whose callers are told to send plaintext.
    pub const STRICT_WITHOUT_MTLS_CALLERS: &str = "MESH0204";
    /// More than one Sidecar applies to one workload (Istio's IST0109/IST0110): only the
    /// first (file order) does.
    pub const CONFLICTING_SIDECARS: &str = "MESH0112";
    /// A Telemetry tracing provider that no `x-mesh.extensionProviders` entry names.
    pub const UNKNOWN_PROVIDER: &str = "MESH0301";
    /// A DENY AuthorizationPolicy without rules: it matches nothing, so it denies nothing.
    pub const DENY_WITHOUT_RULES: &str = "MESH0205";
    /// More than one Telemetry at one level (two without a selector in one namespace, or two
    /// whose selectors match one workload; Istio's IST0158 / IST0159): only the first (file
    /// order, Istio's oldest) applies.
    pub const CONFLICTING_TELEMETRIES: &str = "MESH0302";
}

struct Ctx<'a> {
    mesh: &'a Mesh,
    inv: Inventory,
    /// Service FQDN -> subset name -> labels, from every DestinationRule (computed once).
    subsets: HashMap<String, BTreeMap<&'a str, BTreeMap<String, String>>>,
    /// Every workload identity, `cluster.local/ns/<ns>/sa/<sa>`.
    accounts: BTreeSet<String>,
    /// Every namespace a workload runs in.
    namespaces: BTreeSet<String>,
    out: Vec<Diagnostic>,
}

impl Ctx<'_> {
    fn push(
        &mut self,
        r: &Resource,
        code: &'static str,
        severity: Severity,
        path: &str,
        message: String,
        hint: &str,
    ) {
        self.out.push(Diagnostic {
            code,
            severity,
            location: r.origin.locate(path),
            resource: Some(format!("{}/{}", r.id.kind, r.id.name)),
            path: path.to_string(),
            message,
            hint: Some(hint.to_string()),
        });
    }

    fn resources(&self) -> impl Iterator<Item = &Resource> {
        self.mesh.resources.iter()
    }
}

/// Loads and analyses a single text as if it were the only file of a project, with an empty
/// environment: the entry point of the fuzz target, and handy for editor integrations.
pub fn check_text(file_name: &str, text: &str) -> Vec<Diagnostic> {
    let loaded = crate::load::load_single_text(file_name, text);
    let mut all = loaded.diagnostics;
    all.extend(analyze(&loaded.mesh));
    all
}

/// Analyses a loaded mesh. Resources that failed to load are not in `mesh` and so are not
/// analysed; their errors come from loading.
pub fn analyze(mesh: &Mesh) -> Vec<Diagnostic> {
    let inv = Inventory::from_compose(mesh.compose.as_ref());
    let mut subsets: HashMap<String, BTreeMap<&str, BTreeMap<String, String>>> = HashMap::new();
    for r in &mesh.resources {
        if let IstioResource::DestinationRule(dr) = &r.resource {
            let defined = subsets
                .entry(normalize_host(&dr.spec.host, &r.id.namespace))
                .or_default();
            for s in &dr.spec.subsets {
                defined.insert(s.name.as_str(), s.labels.clone().into_inner());
            }
        }
    }
    // A principal may name a workload in the mesh's trust domain, an alias of it, or
    // `cluster.local` (Istio rewrites those to every one of them).
    let compose = mesh.compose.as_ref();
    let mut trust_domains = vec![DEFAULT_TRUST_DOMAIN];
    trust_domains.extend(compose.map(|c| c.trust_domain()));
    trust_domains.extend(
        compose
            .map(|c| c.trust_domain_aliases())
            .unwrap_or_default()
            .iter()
            .map(String::as_str),
    );
    let accounts = inv
        .workloads
        .iter()
        .flat_map(|w| trust_domains.iter().map(|td| w.principal(td)))
        .collect();
    let namespaces = inv.workloads.iter().map(|w| w.namespace.clone()).collect();
    let mut cx = Ctx {
        mesh,
        inv,
        subsets,
        accounts,
        namespaces,
        out: Vec::new(),
    };
    let has_services = !cx.inv.services.is_empty();
    for r in mesh.resources.iter() {
        match &r.resource {
            IstioResource::VirtualService(vs) => {
                virtual_service(&mut cx, r, vs, has_services);
            }
            IstioResource::DestinationRule(_) => destination_rule(&mut cx, r, has_services),
            IstioResource::AuthorizationPolicy(_) => authorization_policy(&mut cx, r, has_services),
            IstioResource::PeerAuthentication(_) => peer_authentication(&mut cx, r, has_services),
            // Checked by its own validate(); its hosts are destinations (see `destination`).
            IstioResource::ServiceEntry(_) => {}
            IstioResource::Telemetry(t) => telemetry(&mut cx, r, t, has_services),
            IstioResource::Sidecar(sc) => {
                if has_services {
                    selector(
                        &mut cx,
                        r,
                        &sc.selector_labels(),
                        "spec.workloadSelector.labels",
                    );
                }
            }
            IstioResource::RequestAuthentication(ra) => {
                if has_services && let Some(sel) = &ra.spec.selector {
                    selector(
                        &mut cx,
                        r,
                        &sel.match_labels.clone().into_inner(),
                        "spec.selector.matchLabels",
                    );
                }
            }
        }
    }
    sidecar_conflicts(&mut cx);
    telemetry_conflicts(&mut cx);
    conflicts(&mut cx);
    cx.out
}

fn virtual_service(cx: &mut Ctx<'_>, r: &Resource, vs: &VirtualService, has_services: bool) {
    let ns = r.id.namespace.clone();
    if has_services {
        for (i, host) in vs.spec.hosts.iter().enumerate() {
            if !host.contains('*') && cx.inv.service(host, &ns).is_none() && is_mesh_name(host) {
                cx.push(
                    r,
                    codes::UNKNOWN_VIRTUAL_SERVICE_HOST,
                    Severity::Warning,
                    &format!("spec.hosts[{i}]"),
                    format!(
                        "host `{host}` is no mesh service, so these routes apply to no traffic"
                    ),
                    &known_services_hint(&cx.inv),
                );
            }
        }
    }
    for (i, route) in vs.spec.http.iter().enumerate() {
        let at = format!("spec.http[{i}]");
        for (j, d) in route.route.iter().enumerate() {
            if let Some(dest) = &d.destination {
                destination(
                    cx,
                    r,
                    dest,
                    &format!("{at}.route[{j}].destination"),
                    has_services,
                );
            }
        }
        if let Some(m) = &route.mirror {
            destination(cx, r, m, &format!("{at}.mirror"), has_services);
        }
        for (j, m) in route.mirrors.iter().enumerate() {
            destination(
                cx,
                r,
                &m.destination,
                &format!("{at}.mirrors[{j}].destination"),
                has_services,
            );
        }
        if let (Some(timeout), Some(policy)) = (&route.timeout, route.retry_policy())
            && let Some(per_try) = policy.per_try_timeout
        {
            {
                let tries = policy.attempts + 1;
                let total = per_try.get() * tries;
                if total > timeout.get() {
                    cx.push(
                        r,
                        codes::RETRIES_EXCEED_TIMEOUT,
                        Severity::Warning,
                        &format!("{at}.retries.perTryTimeout"),
                        format!(
                            "{tries} tries (1 + {} retries) of up to {per_try} each take up to {:?}, beyond the route timeout {timeout}: the last retries will be cut short",
                            policy.attempts, total
                        ),
                        "lower `attempts` or `perTryTimeout`, or raise the route `timeout`",
                    );
                }
            }
        }
        if let Some(fault) = &route.fault {
            if fault
                .delay
                .as_ref()
                .is_some_and(|d| d.percentage.is_none() && d.percent.is_none())
            {
                cx.push(
                    r,
                    codes::FAULT_WITHOUT_PERCENTAGE,
                    Severity::Warning,
                    &format!("{at}.fault.delay"),
                    "a delay without `percentage` delays no request (Istio reads a missing percentage as 0%)".into(),
                    "add `percentage: {value: 100}` (or the share you want)",
                );
            }
            if fault.abort.as_ref().is_some_and(|a| a.percentage.is_none()) {
                cx.push(
                    r,
                    codes::FAULT_WITHOUT_PERCENTAGE,
                    Severity::Warning,
                    &format!("{at}.fault.abort"),
                    "an abort without `percentage` aborts no request (Istio reads a missing percentage as 0%)".into(),
                    "add `percentage: {value: 100}` (or the share you want)",
                );
            }
        }
        shadowed(cx, r, vs, i);
    }
    for (i, route) in vs.spec.tcp.iter().enumerate() {
        for (j, d) in route.route.iter().enumerate() {
            if let Some(dest) = &d.destination {
                destination(
                    cx,
                    r,
                    dest,
                    &format!("spec.tcp[{i}].route[{j}].destination"),
                    has_services,
                );
            }
        }
    }
}

/// True for names that can only mean a mesh service: short names and cluster-local FQDNs.
fn is_mesh_name(host: &str) -> bool {
    let h = host.trim_end_matches('.');
    h.split('.').count() <= 2 || h.ends_with(".svc") || h.ends_with(crate::model::CLUSTER_DOMAIN)
}

fn known_services_hint(inv: &Inventory) -> String {
    let names: Vec<&str> = inv
        .services
        .iter()
        .map(|s| s.name.as_str())
        .take(10)
        .collect();
    if names.is_empty() {
        "no mesh services are defined (no compose file loaded?)".into()
    } else {
        format!("mesh services: {}", names.join(", "))
    }
}

fn destination(cx: &mut Ctx<'_>, r: &Resource, dest: &Destination, at: &str, has_services: bool) {
    if !has_services {
        return;
    }
    let ns = r.id.namespace.clone();
    let Some(service) = cx.inv.service(&dest.host, &ns).cloned() else {
        if crate::compile::service_entry_hosts(cx.mesh).contains_key(dest.host.as_str()) {
            return;
        }
        let (severity, message) = if is_mesh_name(&dest.host) {
            (
                Severity::Error,
                format!("destination host `{}` is no mesh service", dest.host),
            )
        } else {
            (
                Severity::Warning,
                format!(
                    "destination host `{}` is outside the mesh and no ServiceEntry names it, so it cannot be routed",
                    dest.host
                ),
            )
        };
        let hint = known_services_hint(&cx.inv);
        cx.push(
            r,
            codes::UNKNOWN_HOST,
            severity,
            &format!("{at}.host"),
            message,
            &hint,
        );
        return;
    };
    let Some(subset) = &dest.subset else { return };
    let empty = BTreeMap::new();
    let defined = cx.subsets.get(&service.fqdn).unwrap_or(&empty);
    // A subset that selects nothing is reported once, at the DestinationRule.
    if !defined.contains_key(subset.as_str()) {
        {
            let known: Vec<&str> = defined.keys().copied().collect();
            let hint = if known.is_empty() {
                format!(
                    "define it in a DestinationRule with `host: {}` and `subsets: [{{name: {subset}, labels: {{...}}}}]`",
                    service.name
                )
            } else {
                format!(
                    "subsets defined for `{}`: {}",
                    service.name,
                    known.join(", ")
                )
            };
            cx.push(
                r,
                codes::UNKNOWN_SUBSET,
                Severity::Warning,
                &format!("{at}.subset"),
                format!("subset `{subset}` of `{}` is defined in no DestinationRule; requests routed there fail with 503 (NR)", service.name),
                &hint,
            );
        }
    }
}

/// A match block that matches every request.
fn is_catch_all(matches: &[HttpMatchRequest]) -> bool {
    matches.is_empty()
        || matches.iter().any(|m| {
            *m == HttpMatchRequest {
                name: m.name.clone(),
                ..Default::default()
            }
        })
}

fn shadowed(cx: &mut Ctx<'_>, r: &Resource, vs: &VirtualService, i: usize) {
    let route = &vs.spec.http[i];
    if let Some(j) = (0..i).find(|&j| is_catch_all(&vs.spec.http[j].r#match)) {
        cx.push(
            r,
            codes::SHADOWED_MATCH,
            Severity::Warning,
            &format!("spec.http[{i}]"),
            format!("this route can never apply: route http[{j}] before it matches every request"),
            "move the catch-all route to the end of `http`",
        );
        return;
    }
    for (k, m) in route.r#match.iter().enumerate() {
        let unnamed = HttpMatchRequest {
            name: None,
            ..m.clone()
        };
        let earlier = (0..i).find(|&j| {
            vs.spec.http[j].r#match.iter().any(|e| {
                HttpMatchRequest {
                    name: None,
                    ..e.clone()
                } == unnamed
            })
        });
        if let Some(j) = earlier {
            cx.push(
                r,
                codes::SHADOWED_MATCH,
                Severity::Warning,
                &format!("spec.http[{i}].match[{k}]"),
                format!("this match duplicates one in route http[{j}], which wins"),
                "remove the duplicate or make the conditions differ",
            );
        }
    }
}

fn destination_rule(cx: &mut Ctx<'_>, r: &Resource, has_services: bool) {
    let IstioResource::DestinationRule(dr) = &r.resource else {
        return;
    };
    if !has_services {
        return;
    }
    let host = dr.spec.host.clone();
    let Some(service) = cx.inv.service(&host, &r.id.namespace).cloned() else {
        if is_mesh_name(&host) && !host.contains('*') {
            let hint = known_services_hint(&cx.inv);
            cx.push(
                r,
                codes::UNKNOWN_DESTINATION_RULE_HOST,
                Severity::Warning,
                "spec.host",
                format!("host `{host}` is no mesh service, so this rule applies to nothing"),
                &hint,
            );
        }
        return;
    };
    for (i, s) in dr.spec.subsets.iter().enumerate() {
        let labels = s.labels.clone().into_inner();
        if !cx.inv.workloads_of(&service).any(|w| w.matches(&labels)) {
            cx.push(
                r,
                codes::EMPTY_SUBSET,
                Severity::Warning,
                &format!("spec.subsets[{i}].labels"),
                format!(
                    "subset `{}` selects no instance of `{}`",
                    s.name, service.name
                ),
                "fix the labels here or the `labels:` of the compose services",
            );
        }
    }
    if let Some(sel) = &dr.spec.workload_selector {
        selector(
            cx,
            r,
            &sel.match_labels.clone().into_inner(),
            "spec.workloadSelector.matchLabels",
        );
    }
}

/// Warns when a non-empty selector selects no workload in the resource's namespace (or any
/// namespace for a root-namespace policy).
fn selector(cx: &mut Ctx<'_>, r: &Resource, labels: &BTreeMap<String, String>, at: &str) {
    if labels.is_empty() {
        return;
    }
    let ns = r.id.namespace.as_str();
    let any = cx
        .inv
        .workloads
        .iter()
        .any(|w| w.namespace == ns && w.matches(labels));
    if !any {
        cx.push(
            r,
            codes::SELECTS_NOTHING,
            Severity::Warning,
            at,
            format!("the selector {labels:?} selects no workload in namespace `{ns}`"),
            "check the labels against the compose services' `labels:` (`meshctl config` lists them)",
        );
    }
}

fn telemetry(
    cx: &mut Ctx<'_>,
    r: &Resource,
    t: &crate::istio::telemetry::Telemetry,
    has_services: bool,
) {
    for (i, tr) in t.spec.tracing.iter().enumerate() {
        for (j, p) in tr.providers.iter().enumerate() {
            let known = cx
                .mesh
                .compose
                .as_ref()
                .and_then(|c| c.extension_provider(&p.name))
                .is_some();
            if !known {
                cx.push(
                    r,
                    codes::UNKNOWN_PROVIDER,
                    Severity::Error,
                    &format!("spec.tracing[{i}].providers[{j}].name"),
                    format!("no extension provider is named {:?}", p.name),
                    "add it to the top-level x-mesh.extensionProviders (an opentelemetry entry with http)",
                );
            }
        }
    }
    if !has_services {
        return;
    }
    if let Some(sel) = &t.spec.selector {
        let labels = sel.match_labels.clone().into_inner();
        selector(cx, r, &labels, "spec.selector.matchLabels");
    }
}

fn authorization_policy(cx: &mut Ctx<'_>, r: &Resource, has_services: bool) {
    let IstioResource::AuthorizationPolicy(ap) = &r.resource else {
        return;
    };
    // Istio accepts it and its analyzer flags it; the policy is inert.
    if ap.spec.action() == crate::istio::authorization_policy::Action::Deny
        && ap.spec.rules.is_empty()
    {
        cx.push(
            r,
            codes::DENY_WITHOUT_RULES,
            Severity::Warning,
            "spec.rules",
            "a DENY policy without rules matches nothing: it denies no request".into(),
            "add an empty rule `rules: [{}]` to deny every request, or delete the policy",
        );
    }
    if !has_services {
        return;
    }
    if let Some(sel) = &ap.spec.selector {
        selector(
            cx,
            r,
            &sel.match_labels.clone().into_inner(),
            "spec.selector.matchLabels",
        );
    }
    // Taken out for the loop (findings are pushed into `cx` meanwhile), put back after.
    let accounts = std::mem::take(&mut cx.accounts);
    let namespaces = std::mem::take(&mut cx.namespaces);
    for (i, rule) in ap.spec.rules.iter().enumerate() {
        for (j, from) in rule.from.iter().enumerate() {
            let Some(source) = &from.source else { continue };
            let at = format!("spec.rules[{i}].from[{j}].source");
            for (k, p) in source
                .principals
                .iter()
                .chain(source.not_principals.iter())
                .enumerate()
            {
                let text = p.as_str();
                if text.contains('*') {
                    continue;
                }
                if !accounts.contains(text) {
                    let field = if k < source.principals.len() {
                        format!("{at}.principals[{k}]")
                    } else {
                        format!("{at}.notPrincipals[{}]", k - source.principals.len())
                    };
                    let known: Vec<&str> = accounts.iter().map(String::as_str).take(8).collect();
                    cx.push(
                        r,
                        codes::UNKNOWN_PRINCIPAL,
                        Severity::Warning,
                        &field,
                        format!("principal `{text}` is the identity of no workload in this mesh"),
                        &format!(
                            "known identities: {} (set `x-mesh.serviceAccount` on the caller)",
                            known.join(", ")
                        ),
                    );
                }
            }
            for (k, n) in source.namespaces.iter().enumerate() {
                let text = n.as_str();
                if !text.contains('*') && !namespaces.contains(text) {
                    cx.push(
                        r,
                        codes::UNKNOWN_NAMESPACE,
                        Severity::Warning,
                        &format!("{at}.namespaces[{k}]"),
                        format!("no workload runs in namespace `{text}`"),
                        "namespaces come from `x-mesh.namespace` on compose services (default `default`)",
                    );
                }
            }
        }
    }
    cx.accounts = accounts;
    cx.namespaces = namespaces;
}

fn peer_authentication(cx: &mut Ctx<'_>, r: &Resource, has_services: bool) {
    let IstioResource::PeerAuthentication(pa) = &r.resource else {
        return;
    };
    if !has_services {
        return;
    }
    let labels = pa
        .spec
        .selector
        .as_ref()
        .map(|s| s.match_labels.clone().into_inner())
        .unwrap_or_default();
    selector(cx, r, &labels, "spec.selector.matchLabels");
    if pa.spec.mtls.as_ref().and_then(|m| m.effective()) != Some(MtlsMode::Strict) {
        return;
    }
    // Workloads under this STRICT policy, and DestinationRules telling their callers to send
    // plaintext (tls.mode DISABLE or SIMPLE) to them.
    let ns = r.id.namespace.clone();
    let root = r.id.namespace
        == cx
            .mesh
            .compose
            .as_ref()
            .map_or(crate::model::ROOT_NAMESPACE, |c| c.root_namespace());
    let covered: Vec<String> = cx
        .inv
        .workloads
        .iter()
        .filter(|w| (root || w.namespace == ns) && w.matches(&labels))
        .map(|w| crate::model::fqdn(&w.service, &w.namespace))
        .collect();
    let mut found = Vec::new();
    for other in cx.resources() {
        if let IstioResource::DestinationRule(dr) = &other.resource {
            let host = normalize_host(&dr.spec.host, &other.id.namespace);
            if covered.contains(&host)
                && let Some(mode) = plaintext_tls_mode(&dr.spec)
            {
                found.push((
                    dr.spec.host.clone(),
                    other.origin.locate("spec.trafficPolicy.tls.mode"),
                    mode,
                ));
            }
        }
    }
    for (host, location, mode) in found {
        cx.push(
            r,
            codes::STRICT_WITHOUT_MTLS_CALLERS,
            Severity::Error,
            "spec.mtls.mode",
            format!("STRICT mTLS here, but the DestinationRule at {location} tells callers of `{host}` to use tls mode {mode}: every call will be refused"),
            "remove the DestinationRule's `tls` (mesh traffic is ISTIO_MUTUAL by default) or relax this policy to PERMISSIVE",
        );
    }
}

/// The non-mutual TLS mode a DestinationRule tells callers to use, if any (`DISABLE` or
/// `SIMPLE` at the top level, as those are what reach a STRICT server).
fn plaintext_tls_mode(spec: &DestinationRuleSpec) -> Option<&'static str> {
    match spec.traffic_policy.as_ref()?.tls.as_ref()?.mode? {
        TlsMode::Disable => Some("DISABLE"),
        TlsMode::Simple => Some("SIMPLE"),
        TlsMode::Mutual | TlsMode::IstioMutual => None,
    }
}

/// More than one VirtualService, or DestinationRule without a workload selector, for a host.
/// Two Sidecars for one workload: two with selectors that both match it, or two without a
/// selector in its namespace. The first in file order applies
/// (`crate::compile::sidecar_for`).
fn sidecar_conflicts(cx: &mut Ctx<'_>) {
    let mut found = Vec::new();
    for w in &cx.inv.workloads {
        for with_selector in [true, false] {
            let list: Vec<&Resource> = cx
                .mesh
                .resources
                .iter()
                .filter(|r| r.id.namespace == w.namespace)
                .filter(|r| match &r.resource {
                    IstioResource::Sidecar(sc) => {
                        let labels = sc.selector_labels();
                        labels.is_empty() != with_selector && w.matches(&labels)
                    }
                    _ => false,
                })
                .collect();
            for r in list.iter().skip(1) {
                let first = list[0];
                let message = format!(
                    "workload {} is already selected by Sidecar {} at {}; only that one applies",
                    w.compose_name,
                    first.id.name,
                    first.origin.locate("metadata.name")
                );
                if !found.iter().any(|(f, _): &(Resource, String)| f.id == r.id) {
                    found.push(((*r).clone(), message));
                }
            }
        }
    }
    for (r, message) in found {
        cx.push(
            &r,
            codes::CONFLICTING_SIDECARS,
            Severity::Warning,
            "metadata.name",
            message,
            "give each workload one Sidecar: one per namespace without a selector, selectors that do not overlap",
        );
    }
}

/// Two Telemetry resources at one level: two without a selector in one namespace (the root
/// namespace's are mesh-wide), or two whose selectors match one workload. Istio applies the
/// oldest; here the first in file order (`crate::compile::telemetry::telemetries_for`).
fn telemetry_conflicts(cx: &mut Ctx<'_>) {
    let telemetries: Vec<(&Resource, bool)> = cx
        .mesh
        .resources
        .iter()
        .filter_map(|r| match &r.resource {
            IstioResource::Telemetry(t) => Some((
                r,
                t.spec
                    .selector
                    .as_ref()
                    .is_some_and(|s| !s.match_labels.is_empty()),
            )),
            _ => None,
        })
        .collect();
    let mut found: Vec<(Resource, String)> = Vec::new();
    let mut flag = |r: &Resource, first: &Resource, what: String| {
        if !found.iter().any(|(f, _)| f.id == r.id) {
            let message = format!(
                "{what} already has Telemetry {} at {}; only that one (the oldest) applies",
                first.id.name,
                first.origin.locate("metadata.name")
            );
            found.push((r.clone(), message));
        }
    };
    let mut by_namespace: BTreeMap<&str, &Resource> = BTreeMap::new();
    for (r, selected) in &telemetries {
        if *selected {
            continue;
        }
        match by_namespace.get(r.id.namespace.as_str()) {
            Some(first) => flag(
                r,
                first,
                format!("namespace {} (no selector)", r.id.namespace),
            ),
            None => {
                by_namespace.insert(r.id.namespace.as_str(), r);
            }
        }
    }
    for w in &cx.inv.workloads {
        let mut first: Option<&Resource> = None;
        for (r, selected) in &telemetries {
            let IstioResource::Telemetry(t) = &r.resource else {
                continue;
            };
            let matches = *selected
                && r.id.namespace == w.namespace
                && t.spec
                    .selector
                    .as_ref()
                    .is_some_and(|s| w.matches(&s.match_labels));
            if !matches {
                continue;
            }
            match first {
                Some(f) => flag(
                    r,
                    f,
                    format!("workload {} (by its selector)", w.compose_name),
                ),
                None => first = Some(r),
            }
        }
    }
    for (r, message) in found {
        cx.push(
            &r,
            codes::CONFLICTING_TELEMETRIES,
            Severity::Warning,
            "metadata.name",
            message,
            "merge them into one Telemetry: one per namespace without a selector, one selecting each workload",
        );
    }
}

fn conflicts(cx: &mut Ctx<'_>) {
    let mut vs_hosts: BTreeMap<String, Vec<(&Resource, usize)>> = BTreeMap::new();
    let mut dr_hosts: BTreeMap<String, Vec<&Resource>> = BTreeMap::new();
    for r in cx.mesh.resources.iter() {
        match &r.resource {
            IstioResource::VirtualService(vs) => {
                for (i, h) in vs.spec.hosts.iter().enumerate() {
                    vs_hosts
                        .entry(normalize_host(h, &r.id.namespace))
                        .or_default()
                        .push((r, i));
                }
            }
            IstioResource::DestinationRule(dr) if dr.spec.workload_selector.is_none() => {
                dr_hosts
                    .entry(normalize_host(&dr.spec.host, &r.id.namespace))
                    .or_default()
                    .push(r);
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    for (host, list) in vs_hosts.iter().filter(|(_, l)| l.len() > 1) {
        let first = list[0].0;
        for (r, i) in &list[1..] {
            found.push((
                *r,
                codes::CONFLICTING_VIRTUAL_SERVICES,
                format!("spec.hosts[{i}]"),
                format!(
                    "host `{host}` already has VirtualService {} at {}; only one applies",
                    first.id.name,
                    first.origin.locate("metadata.name")
                ),
                "merge the routes into one VirtualService per host",
            ));
        }
    }
    for (host, list) in dr_hosts.iter().filter(|(_, l)| l.len() > 1) {
        let first = list[0];
        for r in &list[1..] {
            found.push((
                *r,
                codes::CONFLICTING_DESTINATION_RULES,
                "spec.host".to_string(),
                format!(
                    "host `{host}` already has DestinationRule {} at {}; only one applies",
                    first.id.name,
                    first.origin.locate("metadata.name")
                ),
                "merge the subsets and traffic policies into one DestinationRule per host",
            ));
        }
    }
    let found: Vec<_> = found
        .into_iter()
        .map(|(r, c, p, m, h)| (r.clone(), c, p, m, h))
        .collect();
    for (r, code, path, message, hint) in found {
        cx.push(&r, code, Severity::Warning, &path, message, hint);
    }
}
