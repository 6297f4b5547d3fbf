//! The mesh view of a compose service: its mesh service name, identity, labels, replicas and
//! port protocols, with the defaults applied.

use std::collections::BTreeMap;

use super::model::{ComposeFile, Protocol, Service};

/// Namespace when `x-mesh.namespace` is absent (Istio's `default`).
pub use meshapi::DEFAULT_NAMESPACE;

/// Label that Istio's telemetry uses as the service's canonical name.
pub const CANONICAL_NAME_LABEL: &str = "service.istio.io/canonical-name";
/// Label that Istio's telemetry uses as the service's canonical revision.
pub const CANONICAL_REVISION_LABEL: &str = "service.istio.io/canonical-revision";

/// One container port with the protocol the proxy will speak on it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortProtocol {
    /// Container port.
    pub port: u16,
    /// Port name, when one was given.
    pub name: Option<String>,
    /// Declared or derived protocol; `None`: unknown, the proxy sniffs it (Istio's default).
    pub protocol: Option<Protocol>,
}

impl Service {
    /// The mesh service name. `name` is the compose service name, used when `x-mesh.service`
    /// is absent.
    pub fn mesh_service<'a>(&'a self, name: &'a str) -> &'a str {
        self.x_mesh
            .as_ref()
            .and_then(|m| m.service.as_deref())
            .unwrap_or(name)
    }

    /// The service account of the SPIFFE identity: `x-mesh.serviceAccount`, else the mesh
    /// service name.
    pub fn service_account<'a>(&'a self, name: &'a str) -> &'a str {
        self.x_mesh
            .as_ref()
            .and_then(|m| m.service_account.as_deref())
            .unwrap_or_else(|| self.mesh_service(name))
    }

    /// The namespace: `x-mesh.namespace`, else `default`.
    pub fn namespace(&self) -> &str {
        self.x_mesh
            .as_ref()
            .and_then(|m| m.namespace.as_deref())
            .unwrap_or(DEFAULT_NAMESPACE)
    }

    /// The workload labels Istio selectors match: the compose `labels`, plus `app` = the mesh
    /// service name when absent (so `selector: {matchLabels: {app: backend}}` works without
    /// boilerplate, as a Deployment's pod labels usually give it), plus the canonical
    /// name/revision labels Istio's injector adds (from `app` and `version`, else `latest`).
    /// Labels written by the user always win.
    pub fn labels(&self, name: &str) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        let mesh = self.mesh_service(name).to_string();
        labels.entry("app".to_string()).or_insert(mesh);
        let app = labels.get("app").cloned().unwrap_or_default();
        let version = labels
            .get("version")
            .cloned()
            .unwrap_or_else(|| "latest".to_string());
        labels
            .entry(CANONICAL_NAME_LABEL.to_string())
            .or_insert(app);
        labels
            .entry(CANONICAL_REVISION_LABEL.to_string())
            .or_insert(version);
        labels
    }

    /// `x-mesh.process`: the host process meshctl runs instead of a container, if any.
    pub fn process(&self) -> Option<&super::model::ProcessSpec> {
        self.x_mesh.as_ref().and_then(|m| m.process.as_ref())
    }

    /// `x-mesh.endpoint`: the address of a host service meshctl only proxies, if any (as
    /// written; `endpoint_addr` parses it).
    pub fn endpoint(&self) -> Option<&str> {
        self.x_mesh.as_ref().and_then(|m| m.endpoint.as_deref())
    }

    /// `x-mesh.endpoint` parsed (`ip:port`); `None` when absent or not an address.
    pub fn endpoint_addr(&self) -> Option<std::net::SocketAddr> {
        self.endpoint()?.trim().parse().ok()
    }

    /// True when the service runs as a container (no `x-mesh.process`, no `x-mesh.endpoint`).
    pub fn is_container(&self) -> bool {
        self.process().is_none() && self.endpoint().is_none()
    }

    /// In the mesh (a sidecar, an identity, a VIP): unless `x-mesh.enabled: false`.
    pub fn meshed(&self) -> bool {
        self.x_mesh.as_ref().and_then(|m| m.enabled) != Some(false)
    }

    /// `deploy.replicas`, default 1.
    pub fn replicas(&self) -> u32 {
        self.deploy.as_ref().and_then(|d| d.replicas).unwrap_or(1)
    }

    /// Every container port (from `x-mesh.ports`, `ports` targets and `expose`), once each,
    /// sorted, with its protocol decided as Istio does: declared in `x-mesh.ports`; else the
    /// port's `app_protocol`; else the name prefix (`http`, `http-web`, `grpc-api`); else
    /// unknown (sniffed).
    pub fn ports_with_protocol(&self) -> Vec<PortProtocol> {
        let mut out: BTreeMap<u16, PortProtocol> = BTreeMap::new();
        for p in self.x_mesh.iter().flat_map(|m| &m.ports) {
            out.insert(
                p.port,
                PortProtocol {
                    port: p.port,
                    name: p.name.clone(),
                    protocol: Some(p.protocol),
                },
            );
        }
        for p in &self.ports {
            let derived = p
                .app_protocol
                .as_deref()
                .and_then(Protocol::from_istio_name)
                .or_else(|| p.name.as_deref().and_then(protocol_from_port_name));
            let entry = out.entry(p.target).or_insert(PortProtocol {
                port: p.target,
                name: None,
                protocol: None,
            });
            if entry.name.is_none() {
                entry.name = p.name.clone();
            }
            if entry.protocol.is_none() {
                entry.protocol = derived;
            }
        }
        // An existing host service's port is a port of the service.
        if let Some(a) = self.endpoint_addr() {
            out.entry(a.port()).or_insert(PortProtocol {
                port: a.port(),
                name: None,
                protocol: None,
            });
        }
        for e in &self.expose {
            let number = e.split('/').next().unwrap_or_default();
            let (a, b) = number.split_once('-').unwrap_or((number, number));
            if let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>()) {
                for port in a..=b {
                    out.entry(port).or_insert(PortProtocol {
                        port,
                        name: None,
                        protocol: None,
                    });
                }
            }
        }
        out.into_values().collect()
    }
}

/// Istio's port naming convention: `<protocol>[-<suffix>]`.
pub fn protocol_from_port_name(name: &str) -> Option<Protocol> {
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("grpc-web") {
        return Some(Protocol::Http);
    }
    let prefix = lower.split('-').next().unwrap_or_default();
    Protocol::from_istio_name(prefix)
}

/// One compose service as the mesh sees it, every default applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload<'a> {
    /// Compose service name (`backend-v1`).
    pub name: &'a str,
    /// The typed service.
    pub service: &'a Service,
    /// Mesh service name (`backend`).
    pub mesh_service: &'a str,
    /// Namespace (`default`).
    pub namespace: &'a str,
    /// Service account of its SPIFFE identity.
    pub service_account: &'a str,
    /// Labels Istio selectors and subsets match (see [`Service::labels`]).
    pub labels: BTreeMap<String, String>,
    /// Number of containers.
    pub replicas: u32,
    /// Container ports with protocols.
    pub ports: Vec<PortProtocol>,
}

impl ComposeFile {
    /// Every service in the mesh as a [`Workload`], in compose-name order (services with
    /// `x-mesh.enabled: false` are not workloads: see [`ComposeFile::unmeshed`]).
    pub fn workloads(&self) -> Vec<Workload<'_>> {
        self.services
            .iter()
            .filter(|(_, s)| s.meshed())
            .map(|(name, service)| Workload {
                name,
                service,
                mesh_service: service.mesh_service(name),
                namespace: service.namespace(),
                service_account: service.service_account(name),
                labels: service.labels(name),
                replicas: service.replicas(),
                ports: service.ports_with_protocol(),
            })
            .collect()
    }

    /// The node each placed service runs on (`x-mesh.node`), by compose service name.
    pub fn nodes(&self) -> std::collections::BTreeMap<String, String> {
        self.services
            .iter()
            .filter_map(|(name, s)| Some((name.to_string(), s.x_mesh.as_ref()?.node.clone()?)))
            .collect()
    }

    /// The services kept out of the mesh (`x-mesh.enabled: false`), by compose name.
    pub fn unmeshed(&self) -> impl Iterator<Item = (&str, &Service)> {
        self.services
            .iter()
            .filter(|(_, s)| !s.meshed())
            .map(|(n, s)| (n.as_str(), s))
    }

    /// The workloads behind one mesh service (`backend` in `default`: `backend-v1`,
    /// `backend-v2`).
    pub fn instances_of(&self, namespace: &str, mesh_service: &str) -> Vec<Workload<'_>> {
        self.workloads()
            .into_iter()
            .filter(|w| w.namespace == namespace && w.mesh_service == mesh_service)
            .collect()
    }

    /// Compose names of the services enabled by the active profiles (`--profile`,
    /// `COMPOSE_PROFILES`): a service without `profiles` is always enabled, one with
    /// `profiles` only when one of them is active or `*` is.
    pub fn enabled_services(&self, active_profiles: &[&str]) -> Vec<&str> {
        let all = active_profiles.contains(&"*");
        self.services
            .iter()
            .filter(|(_, s)| {
                all || s.profiles.is_empty()
                    || s.profiles
                        .iter()
                        .any(|p| active_profiles.contains(&p.as_str()))
            })
            .map(|(name, _)| name.as_str())
            .collect()
    }
}
