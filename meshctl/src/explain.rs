//! `meshctl explain`: what the mesh does with one request, decided by the code the proxies
//! run. The client's and the servers' configs are compiled from the project's files by the
//! control plane's compiler ([`Offline`], the same as `meshctl proxy-config`); the route is
//! decided by [`meshapi::traffic::RouteTable::route`] over the table the proxy builds
//! ([`ProxyConfig::effective_routes`]), endpoints are those the proxy puts in the cluster
//! ([`meshapi::traffic::Cluster::holds`]), and authorization is
//! [`meshapi::authz::WorkloadPolicy::evaluate`] on the path the server proxy normalizes
//! ([`meshapi::authz::normalize_path`]). Nothing here decides on its own.
//!
//! What it cannot know from the files: which endpoints are ejected right now (the dashboard
//! shows that live) and the request's random draw (every weighted destination is listed with
//! its weight).

mod render;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use meshapi::authz::{HttpAttributes, RequestAttributes, check_method, normalize_path};
use meshapi::dns::{VipAllocator, VipRange};
use meshapi::proxy::{PeerAuthMode, ProxyConfig, UpstreamTlsMode};
use meshapi::traffic::{Action, HttpRule, RequestView, RouteDecision};
use meshmodel::compile::{self, CompileInput, HostPlacement, ProxyKey};
use meshmodel::load::Loaded;
use meshmodel::model::{Inventory, normalize_host};
use serde::Serialize;

pub use render::{ExplainArgs, explain_cmd};

/// What can go wrong explaining a request (the request or the project, never the mesh's
/// answer, which is the explanation itself).
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("the project's files have errors; run `meshctl check`")]
    Invalid,
    #[error("no compose service or mesh service named {0:?}")]
    UnknownSource(String),
    #[error("{url:?} is not an http:// URL with a host ({reason})")]
    BadUrl { url: String, reason: String },
    #[error("header {0:?} is not `name: value`")]
    BadHeader(String),
    #[error("cannot compile the config of {workload}: {message}")]
    Compile { workload: String, message: String },
    #[error("cannot read the project's VIP table: {0}")]
    Vips(String),
}

/// One request to explain, as a client application would send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExplainRequest {
    /// Compose service or mesh service that sends it (its first workload, instance 0).
    pub from: String,
    pub method: String,
    /// `http://host[:port]/path?query`.
    pub url: String,
    /// Request headers, names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl ExplainRequest {
    /// Parses `-H name: value` arguments.
    pub fn new(
        from: &str,
        method: &str,
        url: &str,
        headers: &[String],
    ) -> Result<Self, ExplainError> {
        let headers = headers
            .iter()
            .map(|h| {
                let (k, v) = h
                    .split_once(':')
                    .ok_or_else(|| ExplainError::BadHeader(h.clone()))?;
                let k = k.trim().to_ascii_lowercase();
                if k.is_empty() {
                    return Err(ExplainError::BadHeader(h.clone()));
                }
                Ok((k, v.trim().to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(ExplainRequest {
            from: from.to_string(),
            method: method.to_string(),
            url: url.to_string(),
            headers,
        })
    }
}

/// The project compiled the way the control plane compiles it, for tools that read configs
/// without a running control plane (`explain`, `proxy-config`).
pub struct Offline<'a> {
    loaded: &'a Loaded,
    pub inventory: Inventory,
    vips: VipAllocator,
    placement: HostPlacement,
}

impl<'a> Offline<'a> {
    /// Loads the VIP table of `state_dir` (allocating VIPs for new services, as the control
    /// plane does); refuses a project with errors.
    pub fn new(loaded: &'a Loaded, state_dir: &Path) -> Result<Self, ExplainError> {
        let mut diags = loaded.diagnostics.clone();
        diags.extend(meshmodel::check::analyze(&loaded.mesh));
        if diags
            .iter()
            .any(|d| d.severity == meshapi::diag::Severity::Error)
        {
            return Err(ExplainError::Invalid);
        }
        let inventory = Inventory::from_compose(loaded.mesh.compose.as_ref());
        let mut vips = VipAllocator::load_or_new(&state_dir.join("vips.json"), VipRange::default())
            .map_err(|e| ExplainError::Vips(e.to_string()))?;
        vips.sync(
            compile::vip_services(&loaded.mesh, &inventory)
                .iter()
                .map(|(ns, n)| (ns.as_str(), n.as_str())),
        )
        .map_err(|e| ExplainError::Vips(e.to_string()))?;
        let placement = HostPlacement::new(&inventory, compile::DEFAULT_HOST_BASE_PORT);
        Ok(Offline {
            loaded,
            inventory,
            vips,
            placement,
        })
    }

    /// The compose service `name` names: itself, or the first (by name) workload of the mesh
    /// service `name`.
    pub fn workload(&self, name: &str) -> Option<String> {
        let ws = &self.inventory.workloads;
        if ws.iter().any(|w| w.compose_name == name) {
            return Some(name.to_string());
        }
        let mut of: Vec<&str> = (ws.iter().filter(|w| w.service == name))
            .map(|w| w.compose_name.as_str())
            .collect();
        of.sort_unstable();
        of.first().map(|w| (*w).to_string())
    }

    /// The config the control plane compiles for `workload`'s proxy `instance`.
    pub fn compile(&self, workload: &str, instance: u32) -> Result<ProxyConfig, ExplainError> {
        let input = CompileInput::new(
            &self.loaded.mesh,
            &self.inventory,
            &self.vips,
            &self.placement,
            0,
        );
        let key = ProxyKey {
            workload: workload.to_string(),
            instance,
        };
        compile::compile_proxy(&input, &key).map_err(|e| ExplainError::Compile {
            workload: workload.to_string(),
            message: e.to_string(),
        })
    }
}

/// What the mesh does with one request.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// The client workload and its identity.
    pub from: Party,
    pub method: String,
    pub url: String,
    /// The mesh service and port the URL reaches, when it is one this client routes to.
    pub destination: Option<Destination>,
    pub route: RouteExplained,
    /// Per weighted destination of the matched rule: subset, cluster policy, endpoints.
    pub backends: Vec<Backend>,
    /// The outcome in one line (`forwarded`, `403 RBAC ...`, `404 NR`, ...).
    pub verdict: Verdict,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Party {
    pub workload: String,
    pub identity: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    pub service: String,
    pub host: String,
    pub port: u16,
    pub protocol: String,
}

/// The route decision and why.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteExplained {
    /// `forward`, `redirect`, `directResponse`, `corsPreflight`, `noRoute`, `unknownHost`.
    pub decision: String,
    /// `namespace/name` of the VirtualService in force, none for the default route.
    pub virtual_service: Option<String>,
    pub destination_rule: Option<String>,
    /// Index and name of the rule that decided.
    pub rule: Option<usize>,
    pub rule_name: Option<String>,
    /// The match block that matched, as compiled (none: the rule has no `match`).
    pub matched: Option<serde_json::Value>,
    /// Earlier rules, none of whose match blocks matched.
    pub skipped: Vec<String>,
    pub timeout_ms: Option<u64>,
    pub retries: Option<RetriesExplained>,
    /// A local answer's status (redirect, direct response, no route).
    pub status: Option<u16>,
    pub location: Option<String>,
    pub fault: Option<serde_json::Value>,
    pub mirrors: Vec<String>,
    /// The path sent upstream when the rule rewrites it.
    pub rewritten_path: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetriesExplained {
    pub attempts: u32,
    pub retry_on: String,
    pub per_try_timeout_ms: Option<u64>,
}

/// One weighted destination of the rule.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    pub host: String,
    pub subset: Option<String>,
    pub port: u16,
    pub weight: u32,
    /// Share of the rule's traffic, in percent.
    pub percent: f64,
    pub load_balancer: String,
    pub outlier_detection: bool,
    pub endpoints: Vec<EndpointExplained>,
}

/// One endpoint the balancer may pick, with the handshake and the server's verdict.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointExplained {
    pub workload: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// `ISTIO_MUTUAL`, `DISABLE`, `SIMPLE`, `MUTUAL`: how the client connects.
    pub client_tls: String,
    /// The SPIFFE ID the endpoint must present (ISTIO_MUTUAL).
    pub expected_identity: Option<String>,
    /// The server port's PeerAuthentication mode (`STRICT`, `PERMISSIVE`, `DISABLE`).
    pub peer_authentication: Option<String>,
    /// Whether the server accepts the connection at all (mTLS modes agree).
    pub connection_accepted: bool,
    pub authorization: Option<AuthzExplained>,
}

/// The server's AuthorizationPolicy verdict.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthzExplained {
    pub allowed: bool,
    /// `denied_by_policy`, `no_allow_match`, `allowed_by_policy`, `no_allow_policies`.
    pub reason: String,
    /// `namespace/name` of the deciding policy.
    pub policy: Option<String>,
    pub rule: Option<usize>,
    pub rule_id: Option<String>,
    /// The principal the server sees (none for plaintext).
    pub principal: Option<String>,
    /// The path authorization matched (normalized).
    pub path: String,
    pub dry_run: Vec<String>,
}

/// The outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    /// The status a client sees when the proxies answer themselves; none when forwarded to
    /// the application.
    pub status: Option<u16>,
    /// Envoy's response flag (`NR`, `RBAC`, `UF`, ...), when there is one.
    pub flag: Option<String>,
    pub summary: String,
}

/// Explains `req` in `offline`'s project.
pub fn explain(offline: &Offline<'_>, req: &ExplainRequest) -> Result<Explanation, ExplainError> {
    let workload = offline
        .workload(&req.from)
        .ok_or_else(|| ExplainError::UnknownSource(req.from.clone()))?;
    let client = offline.compile(&workload, 0)?;
    let url = parse_url(&req.url)?;
    let (table, hosts) = client.effective_routes();
    let namespace = offline
        .inventory
        .workloads
        .iter()
        .find(|w| w.compose_name == workload)
        .map_or(meshapi::DEFAULT_NAMESPACE, |w| w.namespace.as_str());
    let fqdn = normalize_host(&url.host, namespace);
    let out = client.outbound.iter().find(|o| {
        o.vip.port() == url.port
            && (o.vip.ip().to_string() == url.host
                || hosts.get(&o.service).is_some_and(|h| *h == fqdn))
    });
    let from = Party {
        workload: workload.clone(),
        identity: client.identity.spiffe_id.to_string(),
    };
    let mut explained = Explanation {
        from,
        method: req.method.clone(),
        url: req.url.clone(),
        destination: None,
        route: RouteExplained::decided("unknownHost"),
        backends: Vec::new(),
        verdict: Verdict {
            status: None,
            flag: None,
            summary: String::new(),
        },
    };
    let Some(out) = out else {
        let mode = client.outbound_traffic_policy.mode.as_str();
        explained.verdict.summary = format!(
            "{}:{} is not a mesh service {workload} routes to; outboundTrafficPolicy {mode} \
             decides (ALLOW_ANY passes it through unmeshed, REGISTRY_ONLY refuses it)",
            url.host, url.port
        );
        return Ok(explained);
    };
    let host = hosts.get(&out.service).cloned().unwrap_or_default();
    let port = out.target_port();
    explained.destination = Some(Destination {
        service: out.service.clone(),
        host: host.clone(),
        port,
        protocol: format!("{:?}", out.protocol).to_ascii_lowercase(),
    });
    let headers: Vec<(&str, &str)> = req
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let authority = header(&headers, "host").unwrap_or(&url.authority);
    let view = RequestView {
        host: &host,
        port,
        method: &req.method,
        scheme: "http",
        authority,
        path: &url.path,
        query: &url.query,
        headers: &headers.as_slice(),
        random: 0,
    };
    let routes = table.service(&host);
    explained.route.virtual_service = routes.and_then(|s| s.virtual_service.clone());
    explained.route.destination_rule = routes.and_then(|s| s.destination_rule.clone());
    let decision = table.route(&view);
    let rule = routes.and_then(|s| decided_rule(s, &decision));
    if let (Some(s), Some((i, _))) = (routes, rule) {
        explained.route.skipped = s.http.iter().take(i).enumerate().map(rule_label).collect();
    }
    let route = &mut explained.route;
    match &decision {
        RouteDecision::Forward(f) => {
            route.decision = "forward".into();
            route.matched = f.matched.and_then(|m| serde_json::to_value(m).ok());
            route.timeout_ms = f.timeout().map(millis);
            route.retries = f.retries().map(|r| RetriesExplained {
                attempts: r.attempts,
                retry_on: serde_json::to_value(&r.retry_on)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| format!("{:?}", r.retry_on)),
                per_try_timeout_ms: r.per_try_timeout.map(millis),
            });
            route.fault = f
                .rule
                .fault
                .as_ref()
                .and_then(|x| serde_json::to_value(x).ok());
            route.mirrors = (f.rule.mirrors.iter())
                .map(|m| {
                    let d = &m.destination;
                    format!(
                        "{}{} ({}%)",
                        d.host,
                        d.subset
                            .as_deref()
                            .map(|s| format!("/{s}"))
                            .unwrap_or_default(),
                        f64::from(m.per_million) / 10_000.0
                    )
                })
                .collect();
            let upstream = f.upstream_path(&url.path);
            if upstream != url.path.as_str() {
                route.rewritten_path = Some(upstream.into_owned());
            }
        }
        RouteDecision::Redirect {
            status, location, ..
        } => {
            route.decision = "redirect".into();
            route.status = Some(*status);
            route.location = Some(location.clone());
        }
        RouteDecision::Direct { response, .. } => {
            route.decision = "directResponse".into();
            route.status = Some(response.status);
        }
        RouteDecision::CorsPreflight { allowed, .. } => {
            route.decision = "corsPreflight".into();
            route.status = Some(200);
            route.location = None;
            route.matched = Some(serde_json::json!({ "originAllowed": allowed }));
        }
        RouteDecision::NoRoute => {
            route.decision = "noRoute".into();
            route.status = Some(404);
        }
        RouteDecision::UnknownHost => route.decision = "unknownHost".into(),
    }
    if let Some((i, r)) = rule {
        route.rule = Some(i);
        route.rule_name = r.name.clone();
    }
    if let (RouteDecision::Forward(f), Some((_, rule))) = (&decision, rule)
        && let Action::Route(dests) = &rule.action
    {
        let total: u32 = dests.iter().map(|d| d.weight).sum();
        let server_req = ServerRequest {
            client: &client,
            method: &req.method,
            path_and_query: &url.upstream_path_and_query(&f.upstream_path(&url.path)),
            authority: f.upstream_authority().unwrap_or(authority),
            headers: with_ops(&req.headers, &f.request_headers()),
        };
        for d in dests {
            let Some(cluster) = table.cluster(&d.destination, port) else {
                continue;
            };
            let endpoints = client
                .services
                .get(&out.service)
                .map(|s| s.endpoints.iter().filter(|e| cluster.holds(e)).collect())
                .unwrap_or_else(Vec::new);
            let endpoints = endpoints
                .into_iter()
                .map(|e| server_side(offline, &server_req, cluster, e))
                .collect::<Result<_, _>>()?;
            explained.backends.push(Backend {
                host: cluster.host.clone(),
                subset: cluster.subset.clone(),
                port: cluster.port,
                weight: d.weight,
                percent: if total == 0 {
                    0.0
                } else {
                    f64::from(d.weight) * 100.0 / f64::from(total)
                },
                load_balancer: lb_name(&cluster.policy.load_balancer.algorithm),
                outlier_detection: cluster.policy.outlier_detection.is_some(),
                endpoints,
            });
        }
    }
    explained.verdict = verdict(&explained);
    Ok(explained)
}

impl RouteExplained {
    fn decided(decision: &str) -> Self {
        RouteExplained {
            decision: decision.to_string(),
            virtual_service: None,
            destination_rule: None,
            rule: None,
            rule_name: None,
            matched: None,
            skipped: Vec::new(),
            timeout_ms: None,
            retries: None,
            status: None,
            location: None,
            fault: None,
            mirrors: Vec::new(),
            rewritten_path: None,
        }
    }
}

fn rule_label((i, r): (usize, &HttpRule)) -> String {
    match &r.name {
        Some(n) => format!("#{i} {n:?}: no match block matched"),
        None => format!("#{i}: no match block matched"),
    }
}

/// The rule that decided, with its index in the host's rules.
fn decided_rule<'t>(
    s: &'t meshapi::traffic::ServiceRoutes,
    d: &RouteDecision<'t>,
) -> Option<(usize, &'t HttpRule)> {
    let rule: &HttpRule = match d {
        RouteDecision::Forward(f) => return Some((f.rule_index, f.rule)),
        RouteDecision::Redirect { rule, .. }
        | RouteDecision::Direct { rule, .. }
        | RouteDecision::CorsPreflight { rule, .. } => rule,
        RouteDecision::NoRoute | RouteDecision::UnknownHost => return None,
    };
    let i = s.http.iter().position(|r| std::ptr::eq(r, rule))?;
    Some((i, rule))
}

fn header<'h>(headers: &[(&str, &'h str)], name: &str) -> Option<&'h str> {
    headers.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn lb_name(a: &meshapi::traffic::LbAlgorithm) -> String {
    serde_json::to_value(a)
        .ok()
        .and_then(|v| match v {
            serde_json::Value::String(s) => Some(s),
            serde_json::Value::Object(m) => m.keys().next().cloned(),
            _ => None,
        })
        .unwrap_or_else(|| format!("{a:?}"))
}

/// The request as the server proxy receives it.
struct ServerRequest<'r> {
    client: &'r ProxyConfig,
    method: &'r str,
    path_and_query: &'r str,
    authority: &'r str,
    headers: Vec<(String, String)>,
}

/// The request headers after the route's header operations (destination's, then the rule's),
/// which the server proxy's authorization sees.
fn with_ops(
    headers: &[(String, String)],
    ops: &[&meshapi::traffic::HeaderOps; 2],
) -> Vec<(String, String)> {
    let mut h = headers.to_vec();
    for op in ops {
        for (k, v) in &op.set {
            let k = k.to_ascii_lowercase();
            h.retain(|(n, _)| *n != k);
            h.push((k, v.clone()));
        }
        for (k, v) in &op.add {
            h.push((k.to_ascii_lowercase(), v.clone()));
        }
        for k in &op.remove {
            let k = k.to_ascii_lowercase();
            h.retain(|(n, _)| *n != k);
        }
    }
    h
}

/// The handshake with endpoint `e` and its server proxy's authorization of the request.
fn server_side(
    offline: &Offline<'_>,
    req: &ServerRequest<'_>,
    cluster: &meshapi::traffic::Cluster,
    e: &meshapi::proxy::Endpoint,
) -> Result<EndpointExplained, ExplainError> {
    let tls = cluster.tls_for(e);
    let mut out = EndpointExplained {
        workload: e.workload.clone(),
        labels: e.labels.clone(),
        client_tls: serde_json::to_value(tls.mode)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        expected_identity: (tls.mode == UpstreamTlsMode::IstioMutual)
            .then(|| e.identity.as_ref().map(ToString::to_string))
            .flatten(),
        peer_authentication: None,
        connection_accepted: true,
        authorization: None,
    };
    let Some(workload) = e.workload.as_deref() else {
        return Ok(out);
    };
    let server = offline.compile(workload, 0)?;
    let Some(inbound) = server.inbound.iter().find(|p| p.port == cluster.port) else {
        return Ok(out);
    };
    let mtls = tls.mode == UpstreamTlsMode::IstioMutual;
    out.peer_authentication = Some(
        match inbound.mode {
            PeerAuthMode::Strict => "STRICT",
            PeerAuthMode::Permissive => "PERMISSIVE",
            PeerAuthMode::Disable => "DISABLE",
        }
        .to_string(),
    );
    out.connection_accepted = match inbound.mode {
        PeerAuthMode::Strict => mtls,
        PeerAuthMode::Permissive => true,
        PeerAuthMode::Disable => !mtls,
    };
    if !out.connection_accepted {
        return Ok(out);
    }
    let principal = mtls.then(|| req.client.identity.spiffe_id.to_string());
    let policy = server.authorization.clone().unwrap_or_default();
    let normalized = check_method(req.method)
        .and_then(|()| normalize_path(req.path_and_query, policy.path_normalization));
    let normalized = match normalized {
        Ok(n) => n,
        Err(e) => {
            out.authorization = Some(AuthzExplained {
                allowed: false,
                reason: format!("bad request: {e}"),
                policy: None,
                rule: None,
                rule_id: None,
                principal,
                path: req.path_and_query.to_string(),
                dry_run: Vec::new(),
            });
            return Ok(out);
        }
    };
    let headers: Vec<(&str, &str)> = (req.headers.iter())
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let headers = headers.as_slice();
    let remote_ip = header(headers, "x-forwarded-for").and_then(meshapi::authz::forwarded_for);
    let attrs = RequestAttributes {
        peer_principal: principal.as_deref(),
        source_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        remote_ip,
        destination_ip: e.address.ip(),
        destination_port: inbound.port,
        sni: None,
        http: Some(HttpAttributes {
            method: req.method,
            host: req.authority,
            path: normalized.as_str(),
            headers: &headers,
            auth: None,
        }),
    };
    let d = policy.evaluate(&attrs);
    let mut dry_run = Vec::new();
    for (what, r) in [("deny", d.dry_run.deny), ("allow", d.dry_run.allow)] {
        if let Some(r) = r {
            dry_run.push(format!(
                "dry-run {what} policies would {} it{}",
                if r.allowed { "allow" } else { "deny" },
                r.policy
                    .map(|p| format!(" ({}/{} rule {})", p.namespace, p.name, p.rule))
                    .unwrap_or_default()
            ));
        }
    }
    out.authorization = Some(AuthzExplained {
        allowed: d.allowed,
        reason: serde_json::to_value(d.reason)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        policy: d.policy.map(|p| format!("{}/{}", p.namespace, p.name)),
        rule: d.policy.map(|p| p.rule),
        rule_id: d.policy.map(|p| p.id.to_string()),
        principal,
        path: normalized.as_str().to_string(),
        dry_run,
    });
    Ok(out)
}

/// The one-line outcome.
fn verdict(x: &Explanation) -> Verdict {
    let local = |status: u16, flag: Option<&str>, summary: String| Verdict {
        status: Some(status),
        flag: flag.map(str::to_string),
        summary,
    };
    let r = &x.route;
    match r.decision.as_str() {
        "noRoute" => return local(404, Some("NR"), "404 NR: no route rule matched".into()),
        "redirect" | "directResponse" | "corsPreflight" => {
            let status = r.status.unwrap_or(200);
            return local(
                status,
                None,
                format!("{status} answered by the client proxy ({})", r.decision),
            );
        }
        "forward" => {}
        _ => {
            return Verdict {
                status: None,
                flag: None,
                summary: "not routed by the mesh".into(),
            };
        }
    }
    let live: Vec<&Backend> = x.backends.iter().filter(|b| b.weight > 0).collect();
    let eps: Vec<&EndpointExplained> = live.iter().flat_map(|b| &b.endpoints).collect();
    if eps.is_empty() {
        return local(
            503,
            Some("UH"),
            "503 UH: no endpoint in the chosen subset(s)".into(),
        );
    }
    if eps.iter().all(|e| !e.connection_accepted) {
        return local(
            503,
            Some("UF"),
            "503 UF: the server's PeerAuthentication refuses the client's connection".into(),
        );
    }
    let denials: Vec<&AuthzExplained> = (eps.iter())
        .filter_map(|e| e.authorization.as_ref())
        .filter(|a| !a.allowed)
        .collect();
    if denials.len() == eps.len() {
        let a = denials[0];
        let by = match &a.policy {
            Some(p) => format!("DENY policy {p} rule {}", a.rule.unwrap_or(0)),
            None => "no ALLOW policy matched".into(),
        };
        return local(403, Some("RBAC"), format!("403 RBAC: access denied ({by})"));
    }
    let split: Vec<String> = live
        .iter()
        .map(|b| {
            format!(
                "{}{} {:.0}%",
                b.host.split('.').next().unwrap_or(&b.host),
                b.subset
                    .as_deref()
                    .map(|s| format!("/{s}"))
                    .unwrap_or_default(),
                b.percent
            )
        })
        .collect();
    Verdict {
        status: None,
        flag: None,
        summary: format!("forwarded to {}", split.join(", ")),
    }
}

/// The parts of an `http://` URL the proxies look at.
struct Url {
    host: String,
    port: u16,
    authority: String,
    path: String,
    query: String,
}

impl Url {
    fn upstream_path_and_query(&self, path: &str) -> String {
        if self.query.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{}", self.query)
        }
    }
}

fn parse_url(url: &str) -> Result<Url, ExplainError> {
    let bad = |reason: &str| ExplainError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => return Err(bad(&format!("scheme {other} is not http"))),
        None => return Err(bad("no scheme")),
    }
    let auth = uri.authority().ok_or_else(|| bad("no host"))?;
    Ok(Url {
        host: auth.host().trim_matches(['[', ']']).to_ascii_lowercase(),
        port: auth.port_u16().unwrap_or(80),
        authority: auth.as_str().to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
    })
}
