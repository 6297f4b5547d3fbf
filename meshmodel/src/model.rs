//! The mesh as the rest of the system sees it: workloads (one per compose service) grouped into
//! mesh services with their FQDNs, namespaces, service accounts and labels, plus the normalized
//! view `meshctl config` prints.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use meshapi::diag::Location;
use meshapi::yaml::{Node, Pos};
use serde::Serialize;

use crate::compose::ComposeFile;
use crate::istio::IstioResource;

pub use meshapi::{CLUSTER_DOMAIN, DEFAULT_NAMESPACE, DEFAULT_TRUST_DOMAIN, ROOT_NAMESPACE};

/// Where a document came from, kept so any later finding can be placed in the file.
#[derive(Debug, Clone)]
pub struct Origin {
    pub file: PathBuf,
    pub root: Arc<Node>,
}

impl Origin {
    /// The file position of a field path inside this document.
    pub fn locate(&self, path: &str) -> Location {
        let Pos { line, column } = self.root.locate(path);
        Location {
            file: self.file.clone(),
            line,
            column,
        }
    }
}

/// The identity of an Istio resource: kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceId {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}.{}", self.kind, self.name, self.namespace)
    }
}

/// One loaded Istio resource.
#[derive(Debug, Clone)]
pub struct Resource {
    pub id: ResourceId,
    pub resource: IstioResource,
    pub origin: Origin,
}

/// Everything that loaded.
#[derive(Debug, Clone, Default)]
pub struct Mesh {
    /// The compose project name.
    pub project: String,
    /// The directory relative paths in the compose file are resolved against.
    pub project_dir: PathBuf,
    /// The compose files merged in order, if any were loaded.
    pub compose: Option<ComposeFile>,
    /// The compose documents, in merge order, for placing findings about services.
    pub compose_origins: Vec<Origin>,
    pub resources: Vec<Resource>,
    /// Every file read, for `meshctl config` and the file watcher.
    pub files: Vec<PathBuf>,
    /// Every directory whose YAML files were read (new files there must be picked up).
    pub dirs: Vec<PathBuf>,
}

/// One compose service: what runs, and who it is in the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    /// The compose service name (`backend-v1`).
    pub compose_name: String,
    /// The mesh service it serves (`backend`).
    pub service: String,
    pub namespace: String,
    pub service_account: String,
    /// The labels Istio selectors match (`app`, `version`, ...).
    pub labels: BTreeMap<String, String>,
    pub replicas: u32,
    /// Declared container ports.
    pub ports: Vec<u16>,
}

impl Workload {
    /// `cluster.local/ns/<ns>/sa/<sa>`: the principal AuthorizationPolicy matches.
    pub fn principal(&self, trust_domain: &str) -> String {
        format!(
            "{trust_domain}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }

    /// True when every `selector` label is on this workload (an empty selector selects all).
    pub fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        selector.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

/// A mesh service: a name with one VIP, served by one or more workloads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshService {
    pub name: String,
    pub namespace: String,
    /// `<name>.<namespace>.svc.cluster.local`.
    pub fqdn: String,
    pub ports: BTreeSet<u16>,
    /// Compose service names of its workloads.
    pub workloads: Vec<String>,
}

/// Every workload and service of a mesh.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Inventory {
    pub workloads: Vec<Workload>,
    pub services: Vec<MeshService>,
    /// Index of `services` by FQDN, so host lookups stay O(1) on large meshes.
    #[serde(skip)]
    by_fqdn: HashMap<String, usize>,
}

impl Inventory {
    pub fn from_compose(compose: Option<&ComposeFile>) -> Inventory {
        let mut inv = Inventory::default();
        let Some(compose) = compose else { return inv };
        for w in compose.workloads() {
            let name = w.name.to_string();
            let workload = Workload {
                compose_name: name.clone(),
                service: w.mesh_service.to_string(),
                namespace: w.namespace.to_string(),
                service_account: w.service_account.to_string(),
                labels: w.labels,
                replicas: w.replicas,
                ports: w.ports.iter().map(|p| p.port).collect(),
            };
            let key = fqdn(&workload.service, &workload.namespace);
            match inv.by_fqdn.get(&key).and_then(|&i| inv.services.get_mut(i)) {
                Some(s) => {
                    s.ports.extend(workload.ports.iter().copied());
                    s.workloads.push(name.clone());
                }
                None => {
                    inv.by_fqdn.insert(key.clone(), inv.services.len());
                    inv.services.push(MeshService {
                        name: workload.service.clone(),
                        namespace: workload.namespace.clone(),
                        fqdn: key,
                        ports: workload.ports.iter().copied().collect(),
                        workloads: vec![name.clone()],
                    });
                }
            }
            inv.workloads.push(workload);
        }
        inv
    }

    /// Resolves a host as Istio does for a resource in `namespace`: a short name is in the
    /// resource's namespace, `svc.ns` and `svc.ns.svc` and the full FQDN are accepted.
    pub fn service(&self, host: &str, namespace: &str) -> Option<&MeshService> {
        let want = normalize_host(host, namespace);
        self.by_fqdn.get(&want).and_then(|&i| self.services.get(i))
    }

    /// The workloads of a service.
    pub fn workloads_of<'a>(
        &'a self,
        service: &'a MeshService,
    ) -> impl Iterator<Item = &'a Workload> + 'a {
        self.workloads
            .iter()
            .filter(move |w| w.service == service.name && w.namespace == service.namespace)
    }
}

/// `<svc>.<ns>.svc.cluster.local`.
pub fn fqdn(service: &str, namespace: &str) -> String {
    format!("{service}.{namespace}.svc.{CLUSTER_DOMAIN}")
}

/// Expands a host the way Istio reads short names: `backend` in namespace `default` is
/// `backend.default.svc.cluster.local`; `backend.prod` is `backend.prod.svc.cluster.local`.
/// Names that already end in the cluster domain, and wildcard or external names, are kept.
pub fn normalize_host(host: &str, namespace: &str) -> String {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.ends_with(CLUSTER_DOMAIN) || host.starts_with('*') {
        return host;
    }
    match host.split('.').count() {
        1 => fqdn(&host, namespace),
        2 => format!("{host}.svc.{CLUSTER_DOMAIN}"),
        3 if host.ends_with(".svc") => format!("{host}.{CLUSTER_DOMAIN}"),
        _ => host,
    }
}

/// What `meshctl config` prints: the merged compose model, the mesh inventory derived from it
/// and every resource, normalized.
#[derive(Debug, Clone, Serialize)]
pub struct Normalized<'a> {
    pub name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compose: Option<&'a ComposeFile>,
    pub mesh: Inventory,
    pub resources: Vec<&'a crate::istio::IstioResource>,
}

/// The normalized model of a loaded mesh.
pub fn normalized(mesh: &Mesh) -> Normalized<'_> {
    Normalized {
        name: &mesh.project,
        compose: mesh.compose.as_ref(),
        mesh: Inventory::from_compose(mesh.compose.as_ref()),
        resources: mesh.resources.iter().map(|r| &r.resource).collect(),
    }
}

/// Block-style YAML text of any serializable model, which [`meshapi::yaml`] reads back to the
/// same value (YAML output lives in this crate with the parsing).
pub fn to_yaml<T: Serialize>(value: &T) -> Result<String, meshapi::yaml::Error> {
    meshapi::yaml::to_string(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_normalize_as_istio_reads_them() {
        let cases = [
            ("backend", "default", "backend.default.svc.cluster.local"),
            ("backend.prod", "default", "backend.prod.svc.cluster.local"),
            (
                "backend.prod.svc",
                "default",
                "backend.prod.svc.cluster.local",
            ),
            (
                "backend.prod.svc.cluster.local",
                "default",
                "backend.prod.svc.cluster.local",
            ),
            ("Backend.", "ns1", "backend.ns1.svc.cluster.local"),
            ("www.example.com", "default", "www.example.com"),
            ("*.example.com", "default", "*.example.com"),
        ];
        for (host, ns, want) in cases {
            assert_eq!(normalize_host(host, ns), want, "{host} in {ns}");
        }
    }
}
