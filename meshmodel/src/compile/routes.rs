//! Compiling a client's [`RouteTable`]: which VirtualService and DestinationRule apply to each
//! destination host (Istio's host resolution, `exportTo` visibility, DestinationRule lookup
//! order), and each HTTP/TCP rule turned into its precompiled form.

use std::collections::BTreeMap;

use meshapi::traffic::{
    Abort, Action, Body, Cluster, Cors, DestinationRef, DirectResponse, FORMAT_VERSION, Fault,
    HeaderOps, HeaderRules, HttpRule, Mirror, NamedCond, Pattern, Redirect, RedirectPort,
    RegexRewrite, RequestMatch, RetryPolicy, Rewrite, RouteTable, ServiceRoutes, StrCond,
    TcpDestination, TcpRule, WeightedDestination, per_million,
};

use super::policy::resolve_policy;
use crate::istio::{
    Destination, DestinationRule, GRPC_STATUS_NAMES, Headers, HttpMatchRequest, HttpRedirect,
    HttpRoute, IstioResource, MESH_GATEWAY, StringMatch, StringMatcher, TcpRoute, VirtualService,
};
use crate::model::{DEFAULT_NAMESPACE, Inventory, Mesh, ROOT_NAMESPACE, Workload, normalize_host};

/// Compiles an Istio `StringMatch`. `ignore_case` applies to exact and prefix only.
pub fn str_cond(m: &StringMatch, ignore_case: bool) -> Result<StrCond, regex::Error> {
    Ok(match m.matcher() {
        StringMatcher::Exact(v) => StrCond::Exact {
            value: v.to_string(),
            ignore_case,
        },
        StringMatcher::Prefix(v) => StrCond::Prefix {
            value: v.to_string(),
            ignore_case,
        },
        StringMatcher::Regex(r) => StrCond::Regex(Pattern::new(r)?),
        StringMatcher::Any => StrCond::Present,
    })
}

/// The retry policy of a model retry setting, Istio's defaults filled in.
pub fn retry_policy(p: &crate::istio::RetryPolicy) -> RetryPolicy {
    RetryPolicy {
        attempts: p.attempts,
        retry_on: p.retry_on.clone(),
        retriable_status_codes: p.retriable_status_codes.clone(),
        per_try_timeout: p.per_try_timeout.map(|d| d.get()),
        retry_ignore_previous_hosts: p.ignore_previous_hosts,
        backoff: p.backoff.get(),
    }
}

/// The retry policy in force for `route`; `None` when retries are disabled (`attempts: 0`).
pub fn route_retry_policy(route: &HttpRoute) -> Option<RetryPolicy> {
    route.retry_policy().map(|p| retry_policy(&p))
}

/// Why a client's routes cannot be compiled (the control plane keeps the last good table).
/// `validate()` refuses these first; compiling checks again so a table never half-applies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("VirtualService {resource}: {field}: regex {pattern:?} does not compile: {why}")]
    Regex {
        resource: String,
        field: String,
        pattern: String,
        why: String,
    },
    #[error("VirtualService {resource}: {field}: body bytes are not valid base64")]
    Base64 { resource: String, field: String },
}

struct Ctx<'a> {
    client: &'a Workload,
    inventory: &'a Inventory,
    /// `namespace/name` of the VirtualService being compiled.
    resource: String,
    /// Its namespace (short destination hosts resolve there).
    namespace: &'a str,
}

impl Ctx<'_> {
    fn regex_err(&self, field: String, pattern: &str, e: regex::Error) -> CompileError {
        CompileError::Regex {
            resource: self.resource.clone(),
            field,
            pattern: pattern.to_string(),
            why: e.to_string(),
        }
    }

    fn str_cond(&self, m: &StringMatch, ic: bool, field: String) -> Result<StrCond, CompileError> {
        str_cond(m, ic).map_err(|e| self.regex_err(field, m.regex.as_deref().unwrap_or(""), e))
    }

    fn destination(&self, d: &Destination) -> DestinationRef {
        let host = normalize_host(&d.host, self.namespace);
        let port = d.port.as_ref().and_then(|p| p.number).map(|p| p.get());
        let port = port.or_else(|| {
            let svc = self.inventory.services.iter().find(|s| s.fqdn == host)?;
            (svc.ports.len() == 1)
                .then(|| svc.ports.iter().next().copied())
                .flatten()
        });
        DestinationRef {
            host,
            subset: d.subset.clone(),
            port,
        }
    }
}

fn ns_of(r: &IstioResource) -> &str {
    r.namespace().unwrap_or(DEFAULT_NAMESPACE)
}

/// Whether a resource with `export_to` in `ns` is visible from `client_ns` (`*` by default).
fn visible(export_to: &[String], ns: &str, client_ns: &str) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|e| e == "*" || (e == "." && ns == client_ns) || e == client_ns)
}

/// How well a resource host matches `fqdn`: 0 exact; a wildcard `*.suffix` ranks by how short
/// its suffix is (longer suffixes are more specific); `None` no match.
fn host_rank(host: &str, ns: &str, fqdn: &str) -> Option<usize> {
    let h = normalize_host(host, ns);
    if h == fqdn {
        return Some(0);
    }
    if h == "*" {
        return Some(usize::MAX);
    }
    let suffix = h.strip_prefix('*')?;
    fqdn.ends_with(suffix)
        .then(|| usize::MAX - 1 - suffix.len())
}

/// Compiles the routes of every destination `client` can reach. Destination hosts are the
/// inventory's services plus non-wildcard hosts of visible VirtualServices, narrowed to what
/// the client's Sidecar `egress.hosts` imports.
pub fn compile_routes(
    mesh: &Mesh,
    inventory: &Inventory,
    client: &Workload,
) -> Result<RouteTable, CompileError> {
    let cns = client.namespace.as_str();
    let egress = super::egress::egress_of(mesh, client);
    // A DestinationRule in the root namespace (`x-mesh.rootNamespace`) applies mesh-wide.
    let root = mesh
        .compose
        .as_ref()
        .map_or(ROOT_NAMESPACE, |c| c.root_namespace());
    let vss: Vec<(&str, &VirtualService)> = mesh
        .resources
        .iter()
        .filter_map(|r| match &r.resource {
            IstioResource::VirtualService(v) => Some((ns_of(&r.resource), v)),
            _ => None,
        })
        .filter(|(ns, v)| visible(&v.spec.export_to, ns, cns))
        .filter(|(_, v)| {
            v.spec.gateways.is_empty() || v.spec.gateways.iter().any(|g| g == MESH_GATEWAY)
        })
        // A Sidecar's `egress.hosts` imports a VirtualService by its namespace and hosts, as
        // in Istio: one for hosts it does not import is not compiled into this client's table.
        .filter(|(ns, v)| {
            v.spec
                .hosts
                .iter()
                .any(|h| egress.imports(ns, &normalize_host(h, ns)))
        })
        .collect();
    let drs: Vec<(&str, &DestinationRule)> = mesh
        .resources
        .iter()
        .filter_map(|r| match &r.resource {
            IstioResource::DestinationRule(d) => Some((ns_of(&r.resource), d)),
            _ => None,
        })
        .filter(|(ns, d)| visible(&d.spec.export_to, ns, cns))
        .collect();

    let mut hosts: BTreeMap<String, (Vec<u16>, Option<&str>)> = BTreeMap::new();
    for s in inventory
        .services
        .iter()
        .filter(|s| egress.imports(&s.namespace, &s.fqdn))
    {
        hosts.insert(
            s.fqdn.clone(),
            (s.ports.iter().copied().collect(), Some(&s.namespace)),
        );
    }
    for (ns, v) in &vss {
        for h in &v.spec.hosts {
            let h = normalize_host(h, ns);
            if !h.starts_with('*') && egress.imports(ns, &h) {
                hosts.entry(h).or_insert((Vec::new(), None));
            }
        }
    }

    let mut services = Vec::with_capacity(hosts.len());
    let mut clusters: BTreeMap<(String, Option<String>, u16), Cluster> = BTreeMap::new();
    for (fqdn, (ports, svc_ns)) in &hosts {
        let vs = vss
            .iter()
            .filter_map(|(ns, v)| {
                let rank = v
                    .spec
                    .hosts
                    .iter()
                    .filter_map(|h| host_rank(h, ns, fqdn))
                    .min()?;
                Some((rank, *ns, *v))
            })
            .min_by_key(|(rank, _, _)| *rank);
        let dr = drs
            .iter()
            .filter_map(|(ns, d)| {
                let host = host_rank(&d.spec.host, ns, fqdn)?;
                let ns_rank = match &d.spec.workload_selector {
                    Some(sel) if *ns == cns && client.matches(&sel.match_labels) => 0,
                    Some(_) => return None,
                    None if *ns == cns => 1,
                    None if Some(*ns) == *svc_ns => 2,
                    None if *ns == root => 3,
                    None => 4,
                };
                Some(((ns_rank, host), *ns, *d))
            })
            .min_by_key(|(rank, _, _)| *rank);

        let default_dest = DestinationRef {
            host: fqdn.clone(),
            subset: None,
            port: (ports.len() == 1).then(|| ports[0]),
        };
        let (http, tcp, vs_name) = match vs {
            Some((_, ns, v)) => {
                let ctx = Ctx {
                    client,
                    inventory,
                    resource: format!("{ns}/{}", v.metadata.name.as_deref().unwrap_or("")),
                    namespace: ns,
                };
                let mut http = Vec::new();
                for (i, r) in v.spec.http.iter().enumerate() {
                    if let Some(rule) = compile_http(&ctx, r, i)? {
                        http.push(rule);
                    }
                }
                let tcp: Vec<TcpRule> = v
                    .spec
                    .tcp
                    .iter()
                    .filter_map(|r| compile_tcp(&ctx, r))
                    .collect();
                let http = if v.spec.http.is_empty() {
                    vec![HttpRule::default_to(&default_dest)]
                } else {
                    http
                };
                let tcp = if v.spec.tcp.is_empty() {
                    vec![TcpRule::default_to(&default_dest)]
                } else {
                    tcp
                };
                (http, tcp, Some(ctx.resource))
            }
            None => (
                vec![HttpRule::default_to(&default_dest)],
                vec![TcpRule::default_to(&default_dest)],
                None,
            ),
        };

        // Clusters: every (subset, port) of the host, plus any destination port named.
        let dr_spec = dr.map(|(_, _, d)| &d.spec);
        let mut subsets: Vec<Option<&str>> = vec![None];
        if let Some(d) = dr_spec {
            subsets.extend(d.subsets.iter().map(|s| Some(s.name.as_str())));
        }
        for subset in &subsets {
            for port in ports {
                add_cluster(&mut clusters, inventory, dr_spec, fqdn, *subset, *port);
            }
        }
        services.push(ServiceRoutes {
            host: fqdn.clone(),
            ports: ports.clone(),
            virtual_service: vs_name,
            destination_rule: dr
                .map(|(_, ns, d)| format!("{ns}/{}", d.metadata.name.as_deref().unwrap_or(""))),
            http,
            tcp,
        });
    }

    // Destinations with an explicit port or on another host get their cluster too.
    let mut wanted = Vec::new();
    for s in &services {
        for r in &s.http {
            if let Action::Route(ds) = &r.action {
                wanted.extend(ds.iter().map(|d| &d.destination));
            }
            wanted.extend(r.mirrors.iter().map(|m| &m.destination));
        }
        wanted.extend(
            s.tcp
                .iter()
                .flat_map(|t| t.route.iter().map(|d| &d.destination)),
        );
    }
    for d in wanted {
        let Some(port) = d.port else { continue };
        let key = (d.host.clone(), d.subset.clone(), port);
        if clusters.contains_key(&key) {
            continue;
        }
        let dr = drs
            .iter()
            .find(|(ns, dr)| host_rank(&dr.spec.host, ns, &d.host).is_some())
            .map(|(_, dr)| &dr.spec);
        if let Some(s) = &d.subset
            && dr.and_then(|dr| dr.subset(s)).is_none()
        {
            // A subset no DestinationRule defines has no cluster: requests there get 503 NR,
            // as on Istio (`meshctl check` reports MESH0102).
            continue;
        }
        add_cluster(
            &mut clusters,
            inventory,
            dr,
            &d.host,
            d.subset.as_deref(),
            port,
        );
    }

    Ok(RouteTable {
        version: FORMAT_VERSION,
        client: client.compose_name.clone(),
        services,
        clusters: clusters.into_values().collect(),
    })
}

fn add_cluster(
    out: &mut BTreeMap<(String, Option<String>, u16), Cluster>,
    inventory: &Inventory,
    dr: Option<&crate::istio::DestinationRuleSpec>,
    host: &str,
    subset: Option<&str>,
    port: u16,
) {
    let labels: BTreeMap<String, String> = subset
        .and_then(|s| dr?.subset(s))
        .map(|s| (*s.labels).clone())
        .unwrap_or_default();
    let workloads = inventory
        .services
        .iter()
        .find(|s| s.fqdn == host)
        .map(|svc| {
            inventory
                .workloads_of(svc)
                .filter(|w| w.matches(&labels))
                .map(|w| w.compose_name.clone())
                .collect()
        })
        .unwrap_or_default();
    out.insert(
        (host.to_string(), subset.map(str::to_string), port),
        Cluster {
            host: host.to_string(),
            subset: subset.map(str::to_string),
            port,
            labels,
            workloads,
            policy: resolve_policy(dr, subset, Some(port)),
        },
    );
}

/// Whether a match block's source conditions admit this client (decided at compile time).
fn source_ok(
    client: &Workload,
    labels: &crate::istio::Labels,
    ns: Option<&str>,
    gateways: &[String],
) -> bool {
    labels.matches_map(&client.labels)
        && ns.is_none_or(|n| n == client.namespace)
        && (gateways.is_empty() || gateways.iter().any(|g| g == MESH_GATEWAY))
}

/// `None` when every match block excludes this client (the rule can never apply to it).
fn compile_http(ctx: &Ctx<'_>, r: &HttpRoute, i: usize) -> Result<Option<HttpRule>, CompileError> {
    let mut matches = Vec::with_capacity(r.r#match.len());
    for (j, m) in r.r#match.iter().enumerate() {
        if source_ok(
            ctx.client,
            &m.source_labels,
            m.source_namespace.as_deref(),
            &m.gateways,
        ) {
            matches.push(compile_match(
                ctx,
                m,
                &format!("spec.http[{i}].match[{j}]"),
            )?);
        }
    }
    if !r.r#match.is_empty() && matches.is_empty() {
        return Ok(None);
    }
    let action = if let Some(rd) = &r.redirect {
        Action::Redirect(redirect(rd))
    } else if let Some(d) = &r.direct_response {
        let body = match &d.body {
            None => None,
            Some(b) => match (&b.string, &b.bytes) {
                (Some(s), _) => Some(Body::Text(s.clone())),
                (None, Some(b64)) => Some(Body::Bytes(decode_base64(b64).ok_or_else(|| {
                    CompileError::Base64 {
                        resource: ctx.resource.clone(),
                        field: format!("spec.http[{i}].directResponse.body.bytes"),
                    }
                })?)),
                (None, None) => None,
            },
        };
        Action::DirectResponse(DirectResponse {
            status: u16::try_from(d.status).unwrap_or(500),
            body,
        })
    } else {
        let weights = r.destination_weights();
        Action::Route(
            r.route
                .iter()
                .zip(weights)
                .filter_map(|(d, weight)| {
                    Some(WeightedDestination {
                        destination: ctx.destination(d.destination.as_ref()?),
                        weight,
                        headers: header_rules(d.headers.as_ref()),
                    })
                })
                .collect(),
        )
    };
    let rewrite = match &r.rewrite {
        None => None,
        Some(rw) => Some(Rewrite {
            uri: rw.uri.clone(),
            uri_regex: match &rw.uri_regex_rewrite {
                Some(rx) => {
                    let pat = rx.r#match.as_deref().unwrap_or("");
                    Some(
                        RegexRewrite::new(pat, rx.rewrite.as_deref().unwrap_or("")).map_err(
                            |e| {
                                ctx.regex_err(
                                    format!("spec.http[{i}].rewrite.uriRegexRewrite.match"),
                                    pat,
                                    e,
                                )
                            },
                        )?,
                    )
                }
                None => None,
            },
            authority: rw.authority.clone(),
        }),
    };
    let fault = r.fault.as_ref().map(|f| Fault {
        delay: f
            .delay
            .as_ref()
            .and_then(|d| Some((d.fixed_delay?.get(), per_million(d.percentage().value())))),
        abort: f.abort.as_ref().and_then(|a| {
            let abort = match (&a.http_status, &a.grpc_status) {
                (Some(s), _) => Abort::Http(u16::try_from(*s).ok()?),
                (None, Some(g)) => {
                    Abort::Grpc(u32::try_from(GRPC_STATUS_NAMES.iter().position(|n| n == g)?).ok()?)
                }
                (None, None) => return None,
            };
            Some((abort, per_million(a.percentage().value())))
        }),
    });
    let mut mirrors = Vec::new();
    if let Some(m) = &r.mirror {
        mirrors.push(Mirror {
            destination: ctx.destination(m),
            per_million: per_million(r.mirror_percentage().value()),
        });
    }
    mirrors.extend(r.mirrors.iter().map(|m| Mirror {
        destination: ctx.destination(&m.destination),
        per_million: per_million(m.percentage().value()),
    }));
    let cors = match &r.cors_policy {
        None => None,
        Some(c) => {
            let mut allow_origins: Vec<StrCond> = c
                .allow_origin
                .iter()
                .map(|o| StrCond::Exact {
                    value: o.clone(),
                    ignore_case: false,
                })
                .collect();
            for (j, o) in c.allow_origins.iter().enumerate() {
                allow_origins.push(ctx.str_cond(
                    o,
                    false,
                    format!("spec.http[{i}].corsPolicy.allowOrigins[{j}]"),
                )?);
            }
            let join = |v: &[String]| (!v.is_empty()).then(|| v.join(","));
            Some(Cors {
                allow_origins,
                allow_methods: join(&c.allow_methods),
                allow_headers: join(&c.allow_headers),
                expose_headers: join(&c.expose_headers),
                max_age_secs: c.max_age.map(|d| d.get().as_secs()),
                allow_credentials: c.allow_credentials.unwrap_or(false),
                ignore_unmatched_preflights: matches!(
                    c.unmatched_preflights,
                    Some(crate::istio::virtual_service::UnmatchedPreflights::Ignore)
                ),
            })
        }
    };
    Ok(Some(HttpRule {
        name: r.name.clone(),
        matches,
        action,
        rewrite,
        timeout: r.timeout.map(|d| d.get()),
        retries: route_retry_policy(r),
        fault,
        mirrors,
        cors,
        headers: header_rules(r.headers.as_ref()),
    }))
}

fn compile_match(
    ctx: &Ctx<'_>,
    m: &HttpMatchRequest,
    at: &str,
) -> Result<RequestMatch, CompileError> {
    let ic = m.ignore_uri_case.unwrap_or(false);
    let opt =
        |s: &Option<StringMatch>, ic: bool, f: &str| -> Result<Option<StrCond>, CompileError> {
            s.as_ref()
                .map(|s| ctx.str_cond(s, ic, format!("{at}.{f}")))
                .transpose()
        };
    let mut headers = Vec::new();
    for (name, sm) in &m.headers {
        let cond = header_cond(ctx, sm, format!("{at}.headers.{name}"))?;
        headers.push(NamedCond {
            name: name.to_ascii_lowercase(),
            cond,
            invert: false,
        });
    }
    for (name, sm) in &m.without_headers {
        let cond = if sm.regex.as_deref() == Some("*") {
            StrCond::Present
        } else {
            header_cond(ctx, sm, format!("{at}.withoutHeaders.{name}"))?
        };
        headers.push(NamedCond {
            name: name.to_ascii_lowercase(),
            cond,
            invert: true,
        });
    }
    let mut query = Vec::new();
    for (name, sm) in &m.query_params {
        let cond = ctx.str_cond(sm, false, format!("{at}.queryParams.{name}"))?;
        query.push(NamedCond {
            name: name.clone(),
            cond,
            invert: false,
        });
    }
    Ok(RequestMatch {
        name: m.name.clone(),
        uri: opt(&m.uri, ic, "uri")?,
        scheme: opt(&m.scheme, false, "scheme")?,
        method: opt(&m.method, false, "method")?,
        authority: opt(&m.authority, false, "authority")?,
        headers,
        query,
        port: m.port.map(|p| p.get()),
    })
}

/// A header condition; an empty prefix means "present", as Istio translates it.
fn header_cond(ctx: &Ctx<'_>, sm: &StringMatch, field: String) -> Result<StrCond, CompileError> {
    if sm.prefix.as_deref() == Some("") && sm.exact.is_none() {
        return Ok(StrCond::Present);
    }
    ctx.str_cond(sm, false, field)
}

fn compile_tcp(ctx: &Ctx<'_>, r: &TcpRoute) -> Option<TcpRule> {
    let ports: Vec<Option<u16>> = r
        .r#match
        .iter()
        .filter(|m| {
            source_ok(
                ctx.client,
                &m.source_labels,
                m.source_namespace.as_deref(),
                &m.gateways,
            )
        })
        .map(|m| m.port.map(|p| p.get()))
        .collect();
    if !r.r#match.is_empty() && ports.is_empty() {
        return None;
    }
    let route = r
        .route
        .iter()
        .zip(r.destination_weights())
        .filter_map(|(d, weight)| {
            Some(TcpDestination {
                destination: ctx.destination(d.destination.as_ref()?),
                weight,
            })
        })
        .collect();
    Some(TcpRule { ports, route })
}

fn redirect(r: &HttpRedirect) -> Redirect {
    use crate::istio::virtual_service::RedirectPortSelection as S;
    Redirect {
        uri: r.uri.clone(),
        prefix_rewrite: r.prefix_rewrite.clone(),
        authority: r.authority.clone(),
        port: match (r.port, r.derive_port) {
            (Some(p), _) => RedirectPort::Fixed(p.get()),
            (None, Some(S::FromProtocolDefault)) => RedirectPort::FromProtocolDefault,
            (None, Some(S::FromRequestPort)) => RedirectPort::FromRequestPort,
            (None, None) => RedirectPort::Keep,
        },
        scheme: r.scheme.clone(),
        status: r
            .redirect_code
            .and_then(|c| u16::try_from(c).ok())
            .unwrap_or(HttpRedirect::DEFAULT_REDIRECT_CODE as u16),
    }
}

fn header_ops(o: Option<&crate::istio::virtual_service::HeaderOperations>) -> HeaderOps {
    let Some(o) = o else {
        return HeaderOps::default();
    };
    let lower = |m: &BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect()
    };
    HeaderOps {
        set: lower(&o.set),
        add: lower(&o.add),
        remove: o.remove.iter().map(|k| k.to_ascii_lowercase()).collect(),
    }
}

fn header_rules(h: Option<&Headers>) -> HeaderRules {
    HeaderRules {
        request: header_ops(h.and_then(|h| h.request.as_ref())),
        response: header_ops(h.and_then(|h| h.response.as_ref())),
    }
}

/// Standard base64 (padding optional); `None` on a bad character.
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes() {
        assert_eq!(decode_base64("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(decode_base64("aGk").as_deref(), Some(&b"hi"[..]));
        assert_eq!(decode_base64("a!"), None);
    }
}
