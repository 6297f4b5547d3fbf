//! The config compiler: from a loaded mesh to one [`ProxyConfig`] per proxy, holding only what
//! that proxy needs.
//!
//! - Inbound: the proxy's own application ports, each with the PeerAuthentication mode that
//!   applies to it ([`crate::peer::mtls_mode_for`]).
//! - Outbound: the mesh services it may call, one entry per service VIP:port (VIPs from the
//!   [`VipAllocator`]), with the port protocol declared in `x-mesh` (or derived as Istio does).
//!   Without a Sidecar resource Istio gives every proxy every service; meshctl does the same
//!   minus the proxy's own service. A Sidecar's `egress` narrows that list.
//! - Services: the endpoints of those services only, placed by a [`Placement`] (where each
//!   workload instance's proxy accepts mTLS), each with Istio's auto-mTLS decision per port
//!   (plaintext where the endpoint's PeerAuthentication is DISABLE, ISTIO_MUTUAL elsewhere);
//!   a DestinationRule's `tls` travels in the traffic clusters' policy and wins over it.
//! - ServiceEntries (`resolution: STATIC`): one service per (host, port) on the host's VIP,
//!   endpoints without identity, plaintext or the DestinationRule's TLS origination
//!   ([`service_entry_hosts`]; VIPs for them come from [`vip_services`]).
//! - Egress: a `Sidecar` narrows the services and ServiceEntries a proxy receives to its
//!   `egress[].hosts`, and sets (with the mesh's `x-mesh.outboundTrafficPolicy`) what the
//!   proxy does with anything else ([`egress`]).
//! - Authorization: the AuthorizationPolicies that apply to the workload, compiled by
//!   [`authz::compile_for_workload`] (none apply: no section).
//!
//! - Routes: the client's VirtualServices and DestinationRules ([`routes::compile_routes`],
//!   DestinationRule policy merging in [`policy`]).
//! - Telemetry: metrics labels and overrides, access logs, tracing, from the top-level
//!   `x-mesh` and Telemetry resources ([`telemetry::telemetry_of`]).
//!
//! Output is deterministic: the same mesh, VIPs, placement and revision give the same bytes
//! (every collection is ordered), so a textual diff between two revisions is meaningful.
//! [`records`] gives meshdns's records file from the same inputs.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::compose::Protocol as ComposeProtocol;
use crate::model::Mesh;
use crate::model::{DEFAULT_TRUST_DOMAIN, Inventory, Workload};
use meshapi::dns::{PortRecord, Records, ServiceRecord, VipAllocator};
use meshapi::proxy::{
    API_VERSION, AdminConfig, Endpoint, IdentityConfig, InboundPort, ListenerConfig,
    OutboundService, PeerAuthMode, Protocol, ProxyConfig, ServiceConfig, SpiffeId, UpstreamTls,
};

/// One proxy: a compose service (workload) and the index of its replica.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProxyKey {
    /// Compose service name (`backend-v1`).
    pub workload: String,
    /// Replica index, from 0 to `deploy.replicas - 1`.
    pub instance: u32,
}

impl std::fmt::Display for ProxyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.workload, self.instance)
    }
}

/// Where each workload instance's proxy listens. The runner decides; tests give fixed maps.
pub trait Placement {
    /// The address where the proxy of `workload` replica `instance` accepts mTLS from other
    /// proxies (its inbound listener, or the pod address in container mode). `None`: the
    /// instance has no known address yet and is left out of endpoint lists.
    fn inbound(&self, workload: &str, instance: u32) -> Option<SocketAddr>;

    /// The admin, health and metrics listeners of that proxy. Default: the documented defaults
    /// (Istio's ports), right when each proxy has its own network namespace.
    fn admin(&self, _workload: &str, _instance: u32) -> AdminConfig {
        AdminConfig::default()
    }

    /// The outbound capture listener of that proxy (container mode: the pod's VIP traffic is
    /// redirected to it by the capture rules), which then binds no per-VIP listeners.
    /// Default none: one listener per outbound VIP:port (host mode).
    fn outbound_capture(&self, _workload: &str, _instance: u32) -> Option<SocketAddr> {
        None
    }

    /// The edge listener of that proxy (container mode: published ports reached from outside
    /// the project network are redirected to it). Default none.
    fn edge(&self, _workload: &str, _instance: u32) -> Option<SocketAddr> {
        None
    }
}

/// Host mode: every proxy on one host's loopback, each with its own ports. Proxy number `k`
/// (workloads in compose-name order, then replicas) gets inbound `127.0.0.1:<base + k>`, admin
/// `127.0.0.1:<base + 1000 + k>`, health `<base + 2000 + k>` and metrics `<base + 3000 + k>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPlacement {
    /// Proxy number of each `(workload, instance)`.
    index: BTreeMap<(String, u32), u16>,
    /// First inbound port. Default 15100.
    pub base_port: u16,
}

/// The first inbound port of [`HostPlacement`].
pub const DEFAULT_HOST_BASE_PORT: u16 = 15100;

impl HostPlacement {
    /// Numbers every replica of every workload of `inventory`, from `base_port`.
    pub fn new(inventory: &Inventory, base_port: u16) -> HostPlacement {
        let mut names: Vec<&Workload> = inventory.workloads.iter().collect();
        names.sort_by(|a, b| a.compose_name.cmp(&b.compose_name));
        let mut index = BTreeMap::new();
        let mut k: u16 = 0;
        for w in names {
            for i in 0..w.replicas {
                index.insert((w.compose_name.clone(), i), k);
                k = k.saturating_add(1);
            }
        }
        HostPlacement { index, base_port }
    }

    fn port(&self, workload: &str, instance: u32, offset: u16) -> Option<u16> {
        let k = self.index.get(&(workload.to_string(), instance))?;
        self.base_port.checked_add(offset)?.checked_add(*k)
    }
}

impl Placement for HostPlacement {
    fn inbound(&self, workload: &str, instance: u32) -> Option<SocketAddr> {
        let port = self.port(workload, instance, 0)?;
        Some(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
    }

    fn admin(&self, workload: &str, instance: u32) -> AdminConfig {
        let at = |offset| {
            self.port(workload, instance, offset)
                .map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, p)))
        };
        let d = AdminConfig::default();
        AdminConfig {
            admin: at(1000).unwrap_or(d.admin),
            health: at(2000).unwrap_or(d.health),
            stats: at(3000).unwrap_or(d.stats),
        }
    }
}

/// A fixed map of inbound addresses (tests, or a runner that already knows them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FixedPlacement(pub BTreeMap<(String, u32), SocketAddr>);

impl Placement for FixedPlacement {
    fn inbound(&self, workload: &str, instance: u32) -> Option<SocketAddr> {
        self.0.get(&(workload.to_string(), instance)).copied()
    }
}

/// Everything compiling needs, bundled.
pub struct CompileInput<'a> {
    /// The loaded (and checked) mesh.
    pub mesh: &'a Mesh,
    /// Its inventory (`Inventory::from_compose`).
    pub inventory: &'a Inventory,
    /// VIPs of every service (the caller syncs the allocator with the inventory first).
    pub vips: &'a VipAllocator,
    /// Where proxies listen.
    pub placement: &'a dyn Placement,
    /// Revision written into each config.
    pub revision: u64,
    /// Trust domain of identities. Default `cluster.local`.
    pub trust_domain: &'a str,
    /// The start epoch each proxy reported once it served (the control plane's record), put
    /// into its endpoint ([`Endpoint::epoch`]) so clients take a restarted endpoint back.
    /// Default none.
    pub epochs: &'a BTreeMap<ProxyKey, u64>,
}

/// No proxy epochs known ([`CompileInput::epochs`]'s default).
pub static NO_EPOCHS: BTreeMap<ProxyKey, u64> = BTreeMap::new();

impl std::fmt::Debug for CompileInput<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompileInput")
            .field("project", &self.mesh.project)
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

impl<'a> CompileInput<'a> {
    /// Input with the default trust domain.
    pub fn new(
        mesh: &'a Mesh,
        inventory: &'a Inventory,
        vips: &'a VipAllocator,
        placement: &'a dyn Placement,
        revision: u64,
    ) -> Self {
        CompileInput {
            mesh,
            inventory,
            vips,
            placement,
            revision,
            trust_domain: DEFAULT_TRUST_DOMAIN,
            epochs: &NO_EPOCHS,
        }
    }
}

/// Why a proxy's config could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("no workload {0:?} in the mesh")]
    UnknownWorkload(String),
    #[error("workload {workload:?} has {replicas} replica(s); there is no instance {instance}")]
    UnknownInstance {
        workload: String,
        instance: u32,
        replicas: u32,
    },
    #[error("identity of {workload:?}: {message}")]
    Identity { workload: String, message: String },
    #[error("service {service}.{namespace} has no VIP (sync the allocator first)")]
    NoVip { service: String, namespace: String },
    #[error("proxy {proxy} has no inbound address in the placement")]
    NoPlacement { proxy: ProxyKey },
    #[error("authorization of {workload:?}: {message}")]
    Authorization { workload: String, message: String },
    #[error("routes of {workload:?}: {message}")]
    Traffic { workload: String, message: String },
    #[error("ServiceEntry host {host}: {message}")]
    ServiceEntry { host: String, message: String },
    #[error("telemetry of {workload:?}: {message}")]
    Telemetry { workload: String, message: String },
}

/// The key of a service in [`ProxyConfig::services`]: `<name>.<namespace>`.
pub fn service_key(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}")
}

/// The SPIFFE ID of a workload: `spiffe://<td>/ns/<ns>/sa/<sa>`.
pub fn identity_of(workload: &Workload, trust_domain: &str) -> Result<SpiffeId, CompileError> {
    SpiffeId::new(trust_domain, &workload.namespace, &workload.service_account).map_err(|e| {
        CompileError::Identity {
            workload: workload.compose_name.clone(),
            message: e.to_string(),
        }
    })
}

/// Every proxy of the mesh: each replica of each workload, in order.
pub fn proxies(inventory: &Inventory) -> Vec<ProxyKey> {
    let mut keys: Vec<ProxyKey> = inventory
        .workloads
        .iter()
        .flat_map(|w| {
            (0..w.replicas).map(|instance| ProxyKey {
                workload: w.compose_name.clone(),
                instance,
            })
        })
        .collect();
    keys.sort();
    keys
}

/// The proxy protocol of a compose port protocol. Unknown (Istio would sniff), TLS and HTTPS
/// are carried as opaque TCP.
pub fn proxy_protocol(p: Option<ComposeProtocol>) -> Protocol {
    match p {
        Some(ComposeProtocol::Http) => Protocol::Http,
        Some(ComposeProtocol::Http2) => Protocol::Http2,
        Some(ComposeProtocol::Grpc) => Protocol::Grpc,
        _ => Protocol::Tcp,
    }
}

/// `(port, protocol, name)` of each declared port of each compose service.
type PortTable = BTreeMap<String, Vec<(u16, Protocol, Option<String>)>>;

fn port_table(mesh: &Mesh) -> PortTable {
    let mut out = PortTable::new();
    if let Some(compose) = &mesh.compose {
        for w in compose.workloads() {
            let ports = w
                .ports
                .iter()
                .map(|p| (p.port, proxy_protocol(p.protocol), p.name.clone()))
                .collect();
            out.insert(w.name.to_string(), ports);
        }
    }
    out
}

/// A service's ports with their protocols: the union over its workloads, the first workload
/// (compose-name order) deciding a port's protocol and name.
fn service_ports(
    service: &crate::model::MeshService,
    table: &PortTable,
) -> BTreeMap<u16, (Protocol, Option<String>)> {
    let mut names: Vec<&String> = service.workloads.iter().collect();
    names.sort();
    let mut out = BTreeMap::new();
    for name in names {
        for (port, proto, pname) in table.get(name).into_iter().flatten() {
            out.entry(*port).or_insert((*proto, pname.clone()));
        }
    }
    // Ports the inventory knows without a protocol entry (should not happen) stay TCP.
    for port in &service.ports {
        out.entry(*port).or_insert((Protocol::Tcp, None));
    }
    out
}

fn peer_mode(m: crate::istio::MtlsMode) -> PeerAuthMode {
    use crate::istio::MtlsMode;
    match m {
        MtlsMode::Strict => PeerAuthMode::Strict,
        MtlsMode::Disable => PeerAuthMode::Disable,
        MtlsMode::Permissive | MtlsMode::Unset => PeerAuthMode::Permissive,
    }
}

/// Istio's auto-mTLS towards `w`: a plaintext entry for each of `ports` where its
/// PeerAuthentication is DISABLE; every other port keeps the endpoint default, ISTIO_MUTUAL.
/// (A DestinationRule's `tls` rides in the traffic cluster's policy and overrides this.)
fn auto_mtls(
    peer_auths: &[&crate::istio::PeerAuthentication],
    w: &Workload,
    ports: impl Iterator<Item = u16>,
    root_namespace: &str,
) -> Vec<UpstreamTls> {
    ports
        .filter(|p| {
            peer::mtls_mode_for(peer_auths, w, *p, root_namespace)
                == crate::istio::MtlsMode::Disable
        })
        .map(|p| UpstreamTls {
            port: Some(p),
            ..UpstreamTls::disable()
        })
        .collect()
}

/// Compiles the config of one proxy. See the module documentation for what goes in.
pub fn compile_proxy(
    input: &CompileInput<'_>,
    proxy: &ProxyKey,
) -> Result<ProxyConfig, CompileError> {
    let table = port_table(input.mesh);
    compile_with(input, proxy, &table)
}

/// Compiles every proxy of the mesh (see [`proxies`]).
pub fn compile_all(
    input: &CompileInput<'_>,
) -> Result<BTreeMap<ProxyKey, ProxyConfig>, CompileError> {
    let table = port_table(input.mesh);
    proxies(input.inventory)
        .into_iter()
        .map(|k| compile_with(input, &k, &table).map(|c| (k, c)))
        .collect()
}

fn compile_with(
    input: &CompileInput<'_>,
    proxy: &ProxyKey,
    table: &PortTable,
) -> Result<ProxyConfig, CompileError> {
    let inv = input.inventory;
    let me = inv
        .workloads
        .iter()
        .find(|w| w.compose_name == proxy.workload)
        .ok_or_else(|| CompileError::UnknownWorkload(proxy.workload.clone()))?;
    if proxy.instance >= me.replicas {
        return Err(CompileError::UnknownInstance {
            workload: proxy.workload.clone(),
            instance: proxy.instance,
            replicas: me.replicas,
        });
    }
    let inbound_addr = input
        .placement
        .inbound(&proxy.workload, proxy.instance)
        .ok_or_else(|| CompileError::NoPlacement {
            proxy: proxy.clone(),
        })?;
    let peer_auths = peer::peer_authentications(input.mesh);
    let security = authz::mesh_security(input.mesh, input.trust_domain);
    let root = security.root_namespace.as_str();
    let inbound = table
        .get(&me.compose_name)
        .into_iter()
        .flatten()
        .map(|(port, protocol, _)| InboundPort {
            port: *port,
            protocol: *protocol,
            mode: peer_mode(peer::mtls_mode_for(&peer_auths, me, *port, root)),
            target_port: None,
        })
        .collect();

    let mut outbound = Vec::new();
    let mut services = BTreeMap::new();
    let egress = egress::egress_of(input.mesh, me);
    let mut targets: Vec<&crate::model::MeshService> = inv
        .services
        .iter()
        .filter(|s| !(s.name == me.service && s.namespace == me.namespace))
        .filter(|s| egress.imports(&s.namespace, &s.fqdn))
        .collect();
    targets.sort_by(|a, b| a.fqdn.cmp(&b.fqdn));
    for svc in targets {
        let ports = service_ports(svc, table);
        if ports.is_empty() {
            continue;
        }
        let vip = input
            .vips
            .get(&svc.namespace, &svc.name)
            .ok_or_else(|| CompileError::NoVip {
                service: svc.name.clone(),
                namespace: svc.namespace.clone(),
            })?;
        let key = service_key(&svc.name, &svc.namespace);
        for (port, (protocol, _)) in &ports {
            outbound.push(OutboundService {
                service: key.clone(),
                vip: SocketAddr::new(IpAddr::V4(vip), *port),
                protocol: *protocol,
                target_port: None,
            });
        }
        let mut workloads: Vec<&Workload> = inv.workloads_of(svc).collect();
        workloads.sort_by(|a, b| a.compose_name.cmp(&b.compose_name));
        let mut endpoints = Vec::new();
        for w in workloads {
            let identity = identity_of(w, input.trust_domain)?;
            let tls = auto_mtls(&peer_auths, w, ports.keys().copied(), root);
            for i in 0..w.replicas {
                if let Some(address) = input.placement.inbound(&w.compose_name, i) {
                    endpoints.push(Endpoint {
                        address,
                        identity: Some(identity.clone()),
                        labels: w.labels.clone(),
                        workload: Some(w.compose_name.clone()),
                        tls: tls.clone(),
                        epoch: input
                            .epochs
                            .get(&ProxyKey {
                                workload: w.compose_name.clone(),
                                instance: i,
                            })
                            .copied(),
                    });
                }
            }
        }
        services.insert(
            key,
            ServiceConfig {
                endpoints,
                host: Some(svc.fqdn.clone()),
            },
        );
    }

    entries::add_entries(input, me, &egress, &mut outbound, &mut services)?;

    Ok(ProxyConfig {
        api_version: API_VERSION.to_string(),
        revision: input.revision,
        identity: IdentityConfig {
            spiffe_id: identity_of(me, input.trust_domain)?,
            cert_file: None,
            key_file: None,
            roots_file: None,
            trust_domain_aliases: security.trust_domain_aliases.clone(),
            trust_bundle: None,
        },
        listeners: {
            let capture = input
                .placement
                .outbound_capture(&proxy.workload, proxy.instance);
            ListenerConfig {
                inbound: inbound_addr,
                outbound_capture: capture,
                bind_vips: capture.is_none(),
                edge: input.placement.edge(&proxy.workload, proxy.instance),
            }
        },
        inbound,
        outbound,
        services,
        xfcc: true,
        drain_deadline: meshapi::proxy::Dur(std::time::Duration::from_secs(5)),
        limits: Default::default(),
        admin: input.placement.admin(&proxy.workload, proxy.instance),
        authorization: authorization_of(input, me)?,
        request_authentication: authn::compile_for_workload(
            &authn::request_authentications(input.mesh),
            me,
            &security.root_namespace,
        ),
        traffic: Some(routes::compile_routes(input.mesh, inv, me).map_err(|e| {
            CompileError::Traffic {
                workload: me.compose_name.clone(),
                message: e.to_string(),
            }
        })?),
        telemetry: telemetry::telemetry_of(input.mesh, me)?,
        outbound_traffic_policy: egress.policy,
    })
}

/// The compiled AuthorizationPolicies that apply to `me`; `None` when none does and the path
/// normalization is Istio's default (the proxy then allows everything and normalizes paths
/// with `BASE`). A mesh-wide `pathNormalization` other than `BASE` gives every workload a
/// section, so the option applies whether or not a policy selects it.
fn authorization_of(
    input: &CompileInput<'_>,
    me: &Workload,
) -> Result<Option<meshapi::authz::WorkloadPolicy>, CompileError> {
    let policies = authz::authorization_policies(input.mesh);
    let security = authz::mesh_security(input.mesh, input.trust_domain);
    let compiled = authz::compile_for_workload(&policies, me, &security).map_err(|e| {
        CompileError::Authorization {
            workload: me.compose_name.clone(),
            message: e.to_string(),
        }
    })?;
    let default_normalization =
        compiled.path_normalization == meshapi::authz::PathNormalization::Base;
    Ok((!compiled.is_empty() || !default_normalization).then_some(compiled))
}

/// The settings of a DestinationRule `tls` block that sets a mode (`None`: no mode, so
/// auto-mTLS decides). File paths are kept as written: the proxy reads them.
pub fn upstream_tls(t: &crate::istio::ClientTlsSettings) -> Option<UpstreamTls> {
    use crate::istio::TlsMode;
    use meshapi::proxy::UpstreamTlsMode;
    let mode = match t.mode? {
        TlsMode::Disable => UpstreamTlsMode::Disable,
        TlsMode::IstioMutual => UpstreamTlsMode::IstioMutual,
        TlsMode::Simple => UpstreamTlsMode::Simple,
        TlsMode::Mutual => UpstreamTlsMode::Mutual,
    };
    let mut out = UpstreamTls::of(mode);
    if out.originates() {
        out.ca_certificates = t.ca_certificates.as_ref().map(Into::into);
        out.client_certificate = t.client_certificate.as_ref().map(Into::into);
        out.private_key = t.private_key.as_ref().map(Into::into);
        out.sni = t.sni.clone();
        out.subject_alt_names = t.subject_alt_names.clone();
        out.insecure_skip_verify = t.insecure_skip_verify == Some(true);
    }
    Some(out)
}

/// The meshdns records file for the inventory's services with their VIPs (ports named by
/// their declared name, else `<protocol>-<port>`), and the hosts of ServiceEntries.
pub fn records(mesh: &Mesh, inventory: &Inventory, vips: &VipAllocator) -> Records {
    let table = port_table(mesh);
    let mut services: Vec<ServiceRecord> = inventory
        .services
        .iter()
        .filter_map(|svc| {
            let vip = vips.get(&svc.namespace, &svc.name)?;
            let ports = service_ports(svc, &table)
                .into_iter()
                .map(|(port, (proto, name))| PortRecord {
                    name: name
                        .filter(|n| meshapi::dns::check_label(n).is_ok())
                        .unwrap_or_else(|| format!("{}-{port}", proto_name(proto))),
                    port,
                    protocol: Default::default(),
                })
                .collect();
            Some(ServiceRecord {
                name: svc.name.clone(),
                namespace: Some(svc.namespace.clone()),
                vip,
                vip6: None,
                ports,
            })
        })
        .collect();
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let hosts = service_entry_hosts(mesh)
        .into_iter()
        .filter_map(|(h, (ns, _))| {
            Some(meshapi::dns::HostRecord {
                name: h.to_ascii_lowercase(),
                vip: vips.get(ns, h)?,
            })
        })
        .collect();
    Records {
        services,
        hosts,
        ..Records::default()
    }
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "http",
        Protocol::Http2 => "http2",
        Protocol::Grpc => "grpc",
        Protocol::Tcp => "tcp",
    }
}

#[cfg(test)]
mod tests;

pub mod authn;
pub mod authz;
pub mod egress;
mod entries;
pub mod peer;
pub mod policy;
pub mod routes;
pub mod telemetry;

pub use entries::{service_entry_hosts, vip_services};
