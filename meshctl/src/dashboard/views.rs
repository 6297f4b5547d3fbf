//! The dashboard's JSON views, built from what the collector saw ([`Seen`]) and the
//! project's files: the service graph, one service's page, the config view.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use meshapi::traffic::Action;
use meshmodel::model::Inventory;
use serde::Serialize;
use serde_json::{Value, json};

use super::collect::{KEEP, Seen};
use crate::explain::Offline;
use crate::observe::ScrapeTarget;
use crate::observe::stats::{Sample, bound_key, quantile};

/// The window of rates, splits and p99 (a live edit shows within it).
pub const RATE_WINDOW: Duration = Duration::from_secs(3);

/// A graph node: a mesh service.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub id: String,
    pub namespace: String,
    /// `container` (Docker) or `process` (host mode); `outside` for callers not in the mesh.
    pub kind: String,
    pub versions: Vec<Version>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Version {
    pub version: String,
    pub workload: String,
    pub replicas: u32,
}

/// A graph edge: calls from one service to another over the window.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Edge {
    pub source: String,
    pub target: String,
    pub rps: f64,
    /// Share of responses that are not 5xx; none without traffic.
    pub success_rate: Option<f64>,
    pub p99_ms: Option<f64>,
    /// `mTLS`, `plaintext`, `refused` (the server's PeerAuthentication refused connections),
    /// `unknown` (no request reached the server in the window).
    pub mtls: String,
    /// `healthy`, `degraded`, `failing`, `idle`.
    pub health: String,
    /// Requests per destination version in the window.
    pub by_version: BTreeMap<String, f64>,
}

fn label<'s>(s: &'s Sample, k: &str) -> &'s str {
    s.labels.get(k).map_or("unknown", String::as_str)
}

/// The mesh service of a request's source: its `source_workload` (a compose service name),
/// else the workload whose identity is its `source_principal`.
fn source_of(inv: &Inventory, s: &Sample) -> String {
    let workload = label(s, "source_workload");
    let principal = label(s, "source_principal");
    inv.workloads
        .iter()
        .find(|w| w.compose_name == workload)
        .or_else(|| {
            (inv.workloads.iter()).find(|w| w.principal(meshapi::DEFAULT_TRUST_DOMAIN) == principal)
        })
        .map_or_else(|| workload.to_string(), |w| w.service.clone())
}

/// `healthy` from 99 % successes, `degraded` from 95 %, else `failing`.
fn health(success: Option<f64>) -> &'static str {
    match success {
        None => "idle",
        Some(s) if s >= 0.99 => "healthy",
        Some(s) if s >= 0.95 => "degraded",
        Some(_) => "failing",
    }
}

/// The service graph.
pub fn graph(inv: &Inventory, seen: &Seen, kind: &str) -> Value {
    let (inc, secs) = seen.increase(RATE_WINDOW);
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    for s in &inv.services {
        let versions = inv
            .workloads_of(s)
            .map(|w| Version {
                version: w.labels.get("version").cloned().unwrap_or_default(),
                workload: w.compose_name.clone(),
                replicas: w.replicas,
            })
            .collect();
        nodes.insert(
            s.name.clone(),
            Node {
                id: s.name.clone(),
                namespace: s.namespace.clone(),
                kind: kind.to_string(),
                versions,
            },
        );
    }
    // Workloads without ports are clients only: nodes too.
    for w in &inv.workloads {
        nodes.entry(w.service.clone()).or_insert_with(|| Node {
            id: w.service.clone(),
            namespace: w.namespace.clone(),
            kind: kind.to_string(),
            versions: vec![Version {
                version: w.labels.get("version").cloned().unwrap_or_default(),
                workload: w.compose_name.clone(),
                replicas: w.replicas,
            }],
        });
    }
    #[derive(Default)]
    struct Acc {
        requests: f64,
        failures: f64,
        mtls: BTreeSet<String>,
        buckets: BTreeMap<u64, f64>,
        by_version: BTreeMap<String, f64>,
        refused: f64,
    }
    let mut acc: BTreeMap<(String, String), Acc> = BTreeMap::new();
    for (_, s) in &inc {
        let reporter = label(s, "reporter");
        let key = || {
            (
                source_of(inv, s),
                label(s, "destination_service_name").to_string(),
            )
        };
        match (s.name.as_str(), reporter) {
            ("istio_requests_total", "destination") => {
                let a = acc.entry(key()).or_default();
                a.requests += s.value;
                if label(s, "response_code").starts_with('5') {
                    a.failures += s.value;
                }
                if s.value > 0.0 {
                    a.mtls
                        .insert(label(s, "connection_security_policy").to_string());
                }
                *a.by_version
                    .entry(label(s, "destination_version").to_string())
                    .or_default() += s.value;
            }
            ("istio_request_duration_milliseconds_bucket", "destination") => {
                let a = acc.entry(key()).or_default();
                if let Some(b) = s.labels.get("le").and_then(|l| bound_key(l)) {
                    *a.buckets.entry(b).or_default() += s.value;
                }
            }
            ("istio_requests_total", "source") if label(s, "response_flags").contains("UF") => {
                acc.entry(key()).or_default().refused += s.value;
            }
            _ => {}
        }
    }
    let mut edges = Vec::new();
    for ((source, target), a) in acc {
        if a.requests <= 0.0 && a.refused <= 0.0 {
            continue;
        }
        if !nodes.contains_key(&source) {
            nodes.insert(
                source.clone(),
                Node {
                    id: source.clone(),
                    namespace: String::new(),
                    kind: "outside".into(),
                    versions: Vec::new(),
                },
            );
        }
        let success = (a.requests > 0.0).then(|| 1.0 - a.failures / a.requests);
        let mtls = if a.requests <= 0.0 {
            "refused"
        } else if a.mtls.iter().all(|m| m == "mutual_tls") {
            "mTLS"
        } else {
            "plaintext"
        };
        edges.push(Edge {
            source,
            target,
            rps: a.requests / secs.max(f64::EPSILON),
            success_rate: success,
            p99_ms: (a.requests > 0.0)
                .then(|| quantile(0.99, &a.buckets))
                .flatten(),
            mtls: mtls.into(),
            health: if a.requests <= 0.0 {
                "failing".into()
            } else {
                health(success).into()
            },
            by_version: a.by_version,
        });
    }
    json!({
        "windowSeconds": secs,
        "nodes": nodes.into_values().collect::<Vec<_>>(),
        "edges": edges,
    })
}

/// One service's page: endpoints, the routes and DestinationRule that apply with the
/// configured weights, the live split, recent errors by response flag, recent denials.
pub fn service(offline: &Offline<'_>, seen: &Seen, name: &str) -> Option<Value> {
    let inv = &offline.inventory;
    let svc = inv.services.iter().find(|s| s.name == name)?;
    let status = seen.status.as_ref().and_then(|s| s.as_ref().ok());
    let (live, _) = seen.increase(RATE_WINDOW);
    let (recent, recent_secs) = seen.increase(KEEP);

    // Routes and DestinationRule, as a client of the service compiles them.
    let caller = (inv.workloads.iter())
        .find(|w| w.service != svc.name)
        .or_else(|| inv.workloads.first());
    let mut routes = Vec::new();
    let mut configured: BTreeMap<String, u32> = BTreeMap::new();
    let mut subsets: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let (mut vs, mut dr) = (None, None);
    if let Some(Ok(cfg)) = caller.map(|w| offline.compile(&w.compose_name, 0)) {
        let (table, _) = cfg.effective_routes();
        if let Some(s) = table.service(&svc.fqdn) {
            vs = s.virtual_service.clone();
            dr = s.destination_rule.clone();
            for (i, r) in s.http.iter().enumerate() {
                let dests: Vec<Value> = match &r.action {
                    Action::Route(ds) => ds
                        .iter()
                        .map(|d| {
                            json!({
                                "subset": d.destination.subset,
                                "weight": d.weight,
                            })
                        })
                        .collect(),
                    Action::Redirect(_) => vec![json!({"redirect": true})],
                    Action::DirectResponse(d) => vec![json!({"directResponse": d.status})],
                };
                if r.matches.is_empty()
                    && configured.is_empty()
                    && let Action::Route(ds) = &r.action
                {
                    let total: u32 = ds.iter().map(|d| d.weight).sum::<u32>().max(1);
                    for d in ds {
                        let k = d.destination.subset.clone().unwrap_or_default();
                        *configured.entry(k).or_default() += d.weight * 100 / total;
                    }
                }
                routes.push(json!({
                    "index": i,
                    "name": r.name,
                    "matches": r.matches.len(),
                    "match": serde_json::to_value(&r.matches).unwrap_or(Value::Null),
                    "destinations": dests,
                    "timeoutMs": r.timeout.map(|t| t.as_millis() as u64),
                    "retries": r.retries.as_ref().map(|x| x.attempts),
                }));
            }
        }
        for c in table.clusters.iter().filter(|c| c.host == svc.fqdn) {
            if let Some(s) = &c.subset {
                subsets.insert(s.clone(), c.labels.clone());
            }
        }
    }

    // Ejections as the clients see them: per subset cluster of this host.
    let mut ejected: BTreeMap<String, f64> = BTreeMap::new();
    for (t, s) in &live {
        if s.name != "meshproxy_cluster_ejected_endpoints" || s.value <= 0.0 {
            continue;
        }
        let cluster = label(s, "cluster");
        let mut parts = cluster.split('|');
        let (_, _, subset, host) = (parts.next(), parts.next(), parts.next(), parts.next());
        if host == Some(svc.fqdn.as_str()) {
            let k = format!("{} (seen by {})", subset.unwrap_or(""), t.service);
            *ejected.entry(k).or_default() += s.value;
        }
    }
    let subset_of = |labels: &BTreeMap<String, String>| -> Option<String> {
        subsets
            .iter()
            .find(|(_, sel)| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
            .map(|(n, _)| n.clone())
    };
    let mut endpoints = Vec::new();
    for w in inv.workloads_of(svc) {
        let subset = subset_of(&w.labels);
        let identity = format!(
            "spiffe://{}/ns/{}/sa/{}",
            meshapi::DEFAULT_TRUST_DOMAIN,
            w.namespace,
            w.service_account
        );
        let cert = status.and_then(|st| st.identities.iter().find(|i| i.identity == identity));
        let subset_ejected: f64 = ejected
            .iter()
            .filter(|(k, _)| {
                subset
                    .as_ref()
                    .is_some_and(|s| k.starts_with(&format!("{s} ")))
            })
            .map(|(_, v)| *v)
            .sum();
        for i in 0..w.replicas {
            let proxy = format!("{}/{}", w.compose_name, i);
            let p = status.and_then(|st| st.proxies.iter().find(|p| p.proxy == proxy));
            let state = match p {
                None => "unknown",
                Some(p) if !p.connected => "disconnected",
                Some(p) if p.nacked.is_some() && p.nacked > p.acked => "NACK",
                Some(p) if p.acked == Some(p.version) => "serving",
                Some(_) => "syncing",
            };
            endpoints.push(json!({
                "workload": w.compose_name,
                "instance": i,
                "version": w.labels.get("version"),
                "subset": subset,
                "state": state,
                "identity": identity,
                "certNotAfter": cert.map(|c| c.not_after),
                "ejected": subset_ejected > 0.0,
            }));
        }
    }

    // Live split by version, from the servers' own counts.
    let mut split: BTreeMap<String, f64> = BTreeMap::new();
    for (_, s) in &live {
        if s.name == "istio_requests_total"
            && label(s, "reporter") == "destination"
            && label(s, "destination_service_name") == svc.name
        {
            *split
                .entry(label(s, "destination_version").to_string())
                .or_default() += s.value;
        }
    }
    let total: f64 = split.values().sum();
    let live_split: BTreeMap<String, Option<f64>> = split
        .into_iter()
        .map(|(v, n)| (v, (total > 0.0).then(|| (n * 100.0 / total).round())))
        .collect();
    // Weights by version: a subset's selector names the version.
    let configured_by_version: BTreeMap<String, u32> = configured
        .iter()
        .map(|(subset, w)| {
            let version = subsets
                .get(subset)
                .and_then(|l| l.get("version").cloned())
                .unwrap_or_else(|| subset.clone());
            (version, *w)
        })
        .collect();

    let errors = by_flag(&recent, &svc.name);
    let denials = denials(&recent, &svc.name);
    Some(json!({
        "name": svc.name,
        "namespace": svc.namespace,
        "host": svc.fqdn,
        "ports": svc.ports,
        "virtualService": vs,
        "destinationRule": dr,
        "routes": routes,
        "subsets": subsets,
        "configuredWeights": configured_by_version,
        "liveSplit": live_split,
        "endpoints": endpoints,
        "ejections": ejected,
        "recentSeconds": recent_secs,
        "errors": errors,
        "denials": denials,
    }))
}

/// Requests with a response flag or a 5xx to `service` in the window, by reporter, flag and
/// code.
fn by_flag(inc: &[(ScrapeTarget, Sample)], service: &str) -> Vec<Value> {
    let mut acc: BTreeMap<(String, String, String), f64> = BTreeMap::new();
    for (_, s) in inc {
        if s.name != "istio_requests_total" || s.value <= 0.0 {
            continue;
        }
        if label(s, "destination_service_name") != service {
            continue;
        }
        let flag = label(s, "response_flags");
        let code = label(s, "response_code");
        if flag == "-" && !code.starts_with('5') {
            continue;
        }
        let k = (
            flag.to_string(),
            code.to_string(),
            label(s, "reporter").to_string(),
        );
        *acc.entry(k).or_default() += s.value;
    }
    acc.into_iter()
        .map(|((flag, code, reporter), n)| {
            json!({"flag": flag, "code": code, "reporter": reporter, "count": n})
        })
        .collect()
}

/// Authorization denials by the service's own proxies in the window, by deciding policy.
fn denials(inc: &[(ScrapeTarget, Sample)], service: &str) -> Vec<Value> {
    let mut acc: BTreeMap<(String, String), f64> = BTreeMap::new();
    for (t, s) in inc {
        if s.name == "meshproxy_authz_decisions_total"
            && t.mesh_service == service
            && label(s, "result") == "denied"
            && s.value > 0.0
        {
            let k = (label(s, "policy").to_string(), t.service.clone());
            *acc.entry(k).or_default() += s.value;
        }
    }
    acc.into_iter()
        .map(|((policy, workload), n)| {
            // `name.namespace` as the proxies label it, `none`: no ALLOW policy matched.
            let policy = match policy.rsplit_once('.') {
                Some((name, ns)) => format!("{ns}/{name}"),
                None => policy,
            };
            json!({"policy": policy, "workload": workload, "count": n})
        })
        .collect()
}

/// The config view: the control plane's revision, each proxy's ACK/NACK, the last reload.
pub fn config(seen: &Seen) -> Value {
    match &seen.status {
        None => json!({"controlPlane": "not read yet"}),
        Some(Err(e)) => json!({"controlPlane": format!("unreachable: {e}")}),
        Some(Ok(st)) => json!({
            "controlPlane": "running",
            "revision": st.revision,
            "proxies": st.proxies,
            "lastReload": st.last_reload,
            "identities": st.identities,
            "warnings": st.warnings,
        }),
    }
}
