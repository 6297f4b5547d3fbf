//! ServiceEntries in the compiled configs: every served entry (`resolution: STATIC`,
//! `MESH_EXTERNAL`) gives each client proxy one service per (host, port), named
//! `<host>:<port>`, on the host's VIP, whose endpoints have no mesh identity: plaintext by
//! default, or the `tls` of the DestinationRule for that host and port (TLS origination).
//! VirtualService routing and DestinationRule load balancing do not apply to entries yet.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use crate::istio::service_entry::{Location, Resolution, ServiceEntry};
use crate::istio::{DestinationRule, IstioResource};
use crate::model::Mesh;
use crate::model::{DEFAULT_NAMESPACE, Workload, normalize_host};
use meshapi::proxy::{
    Endpoint, OutboundService, Protocol, ServiceConfig, UpstreamTls, UpstreamTlsMode,
};

use super::{CompileError, CompileInput};

/// The hosts of served ServiceEntries, each with its entry's namespace and the entry (the
/// first entry in file order wins a host named twice).
pub fn service_entry_hosts(mesh: &Mesh) -> BTreeMap<&str, (&str, &ServiceEntry)> {
    let mut out = BTreeMap::new();
    for r in &mesh.resources {
        let IstioResource::ServiceEntry(se) = &r.resource else {
            continue;
        };
        if se.spec.resolution != Some(Resolution::Static)
            || se.spec.location == Some(Location::MeshInternal)
        {
            continue;
        }
        let ns = r.resource.namespace().unwrap_or(DEFAULT_NAMESPACE);
        for h in &se.spec.hosts {
            if !h.starts_with('*') {
                out.entry(h.as_str()).or_insert((ns, se));
            }
        }
    }
    out
}

/// The `(namespace, name)` pairs that need a VIP: the inventory's services and every served
/// ServiceEntry host (named by the host). Give this to `VipAllocator::sync`.
pub fn vip_services(mesh: &Mesh, inventory: &crate::model::Inventory) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = inventory
        .services
        .iter()
        .map(|s| (s.namespace.clone(), s.name.clone()))
        .collect();
    out.extend(
        service_entry_hosts(mesh)
            .into_iter()
            .map(|(h, (ns, _))| (ns.to_string(), h.to_string())),
    );
    out
}

fn protocol(p: Option<&str>) -> Protocol {
    match p.map(str::to_ascii_uppercase).as_deref() {
        Some("HTTP") => Protocol::Http,
        Some("HTTP2") => Protocol::Http2,
        Some("GRPC") | Some("GRPC-WEB") => Protocol::Grpc,
        _ => Protocol::Tcp,
    }
}

/// The DestinationRule for an entry host as `client` sees it: its own namespace's first, then
/// the entry's, then any (file order), skipping rules for other workloads.
fn destination_rule<'a>(
    mesh: &'a Mesh,
    host: &str,
    client: &Workload,
    entry_ns: &str,
) -> Option<&'a DestinationRule> {
    let lower = host.to_ascii_lowercase();
    mesh.resources
        .iter()
        .filter_map(|r| match &r.resource {
            IstioResource::DestinationRule(d) => {
                Some((r.resource.namespace().unwrap_or(DEFAULT_NAMESPACE), d))
            }
            _ => None,
        })
        .filter(|(ns, d)| normalize_host(&d.spec.host, ns) == lower)
        .filter(|(_, d)| {
            d.spec
                .workload_selector
                .as_ref()
                .is_none_or(|s| client.matches(&s.match_labels))
        })
        .min_by_key(|(ns, _)| {
            if *ns == client.namespace {
                0
            } else if *ns == entry_ns {
                1
            } else {
                2
            }
        })
        .map(|(_, d)| d)
}

/// Adds every served entry to a client's `outbound` and `services`.
pub(super) fn add_entries(
    input: &CompileInput<'_>,
    client: &Workload,
    outbound: &mut Vec<OutboundService>,
    services: &mut BTreeMap<String, ServiceConfig>,
) -> Result<(), CompileError> {
    for (host, (ns, se)) in service_entry_hosts(input.mesh) {
        let vip = input
            .vips
            .get(ns, host)
            .ok_or_else(|| CompileError::NoVip {
                service: host.to_string(),
                namespace: ns.to_string(),
            })?;
        let dr = destination_rule(input.mesh, host, client, ns);
        for port in &se.spec.ports {
            let (Ok(number), Ok(target)) =
                (u16::try_from(port.number), u16::try_from(port.target()))
            else {
                continue;
            };
            let tls = super::policy::resolve_policy(dr.map(|d| &d.spec), None, Some(number)).tls;
            if let Some(t) = &tls
                && t.mode == UpstreamTlsMode::IstioMutual
            {
                return Err(CompileError::ServiceEntry {
                    host: host.to_string(),
                    message: format!(
                        "the DestinationRule asks ISTIO_MUTUAL on port {number}, but the entry's endpoints have no mesh identity; use SIMPLE, MUTUAL or DISABLE"
                    ),
                });
            }
            let key = format!("{host}:{number}");
            outbound.push(OutboundService {
                service: key.clone(),
                vip: SocketAddr::new(IpAddr::V4(vip), number),
                protocol: protocol(port.protocol.as_deref()),
                target_port: Some(target),
            });
            let endpoints = se
                .spec
                .endpoints
                .iter()
                .filter_map(|e| {
                    let ip: IpAddr = e.address.as_deref()?.parse().ok()?;
                    let at = e
                        .ports
                        .get(&port.name)
                        .and_then(|p| u16::try_from(*p).ok())
                        .unwrap_or(target);
                    Some(Endpoint {
                        address: SocketAddr::new(ip, at),
                        identity: None,
                        labels: e.labels.clone(),
                        workload: None,
                        tls: tls
                            .clone()
                            .map(|t| UpstreamTls { port: None, ..t })
                            .into_iter()
                            .collect(),
                        epoch: None,
                    })
                })
                .collect();
            services.insert(
                key,
                ServiceConfig {
                    endpoints,
                    host: None,
                },
            );
        }
    }
    Ok(())
}
