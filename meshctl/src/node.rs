//! Several machines in one mesh: nodes that join the control plane with a token.
//!
//! - A *node* is a machine (a VM, a second laptop) that runs the services the compose file
//!   places on it (`x-mesh: {node: vm2}`). It proves who it is with a node certificate
//!   (`spiffe://<td>/ns/mesh-system/sa/node-<name>`), obtained once with a join token and
//!   renewed like a workload certificate, so a node that restarts rejoins without a new token.
//! - [`NodeRegistry`]: the control plane's list of nodes (`.mesh/nodes.json`): each one's
//!   address, when it joined, whether it was removed, and the services placed on it.
//! - [`NodePlacement`]: host-mode placement where a placed service's proxies listen on their
//!   node's address (and are left out of endpoint lists while the node has none).
//! - `token`: the join token (`mesh1/<node>/<address>/<sha256 of the root>/<secret>`).
//! - `api`: the routes a node and the CLI call (`/v1/nodes/...`, `/v1/roots`).
//! - `join`: the joining side; `commands`: `token create`, `join`, `leave`, `node ls|rm`.
//!
//! Revocation (`meshctl node rm`, `meshctl leave`): the node's certificate and its proxies'
//! pod tokens are refused from then on (no new certificate, no renewal), its endpoints leave
//! every config, and the serials of every certificate its proxies hold are pushed to all
//! proxies, which refuse a peer presenting one (docs/hosts.md).

pub mod api;
pub mod commands;
pub mod join;
pub mod token;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use meshapi::ca_api::{CONTROL_PLANE_NAMESPACE, SpiffeId, SpiffeIdError};
use meshapi::proxy::AdminConfig;
use meshmodel::compile::{HostPlacement, Placement};
use serde::{Deserialize, Serialize};

/// File of the registry under `.mesh/`.
pub const NODES_FILE: &str = "nodes.json";

/// Service-account prefix of node identities.
pub const NODE_SA_PREFIX: &str = "node-";

/// The identity of node `name` in `trust_domain`.
pub fn node_id(trust_domain: &str, name: &str) -> Result<SpiffeId, SpiffeIdError> {
    SpiffeId::new(
        trust_domain,
        CONTROL_PLANE_NAMESPACE,
        &format!("{NODE_SA_PREFIX}{name}"),
    )
}

/// The node an identity names, if it is a node identity.
pub fn node_of(id: &SpiffeId) -> Option<&str> {
    if id.namespace() != CONTROL_PLANE_NAMESPACE {
        return None;
    }
    id.service_account().strip_prefix(NODE_SA_PREFIX)
}

/// A node name: a DNS label (lowercase letters, digits, `-`; 1 to 40 characters).
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 40
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The holder name of the pod token of a proxy of `node` (revoked with the node).
pub fn holder(node: &str, workload: &str, instance: u32) -> String {
    format!("node/{node}/{workload}/{instance}")
}

/// The services placed on nodes: node -> workload -> (replicas, identity).
pub type Placed = BTreeMap<String, BTreeMap<String, (u32, SpiffeId)>>;

/// One node in `meshctl status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub name: String,
    /// `invited` (token created), `joined`, `removed`.
    pub state: String,
    pub address: Option<IpAddr>,
    /// Its proxies' endpoints.
    pub endpoints: Vec<EndpointStatus>,
}

/// One proxy endpoint of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    /// `<workload>/<instance>`.
    pub proxy: String,
    /// Its inbound address (none while the node has none).
    pub address: Option<SocketAddr>,
    pub identity: String,
    /// Expiry of the identity's latest certificate, Unix seconds.
    pub not_after: Option<i64>,
}

/// One node as the control plane knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeRecord {
    /// The address its proxies listen on (registered at join); none before it joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    /// When it last registered, Unix seconds.
    #[serde(default)]
    pub joined_at: i64,
    /// Removed (`node rm`, `leave`): refused from then on, until a new token joins it again.
    #[serde(default)]
    pub removed: bool,
    /// Serials (hex) of the certificates issued to it and its proxies; after a removal,
    /// every proxy refuses a peer presenting one.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub serials: BTreeSet<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodesFile {
    version: u32,
    nodes: BTreeMap<String, NodeRecord>,
}

/// The control plane's nodes, persisted to `.mesh/nodes.json` after each change.
#[derive(Debug)]
pub struct NodeRegistry {
    path: PathBuf,
    nodes: Mutex<BTreeMap<String, NodeRecord>>,
    /// Placed services by node (from the last good load): workload -> replicas, identity.
    placed: Mutex<Placed>,
    /// Inbound address of each placed proxy (`workload/instance`), from the last reload.
    endpoints: Mutex<BTreeMap<String, Option<SocketAddr>>>,
}

/// Why the registry could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a nodes file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

impl NodeRegistry {
    /// Opens the registry of `state_dir`, loading it if it exists.
    pub fn open(state_dir: &Path) -> Result<NodeRegistry, NodeError> {
        let path = state_dir.join(NODES_FILE);
        let nodes = match std::fs::read_to_string(&path) {
            Ok(text) => {
                serde_json::from_str::<NodesFile>(&text)
                    .map_err(|e| NodeError::Corrupt {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?
                    .nodes
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(NodeError::Io { path, source }),
        };
        Ok(NodeRegistry {
            path,
            nodes: Mutex::new(nodes),
            placed: Mutex::new(BTreeMap::new()),
            endpoints: Mutex::new(BTreeMap::new()),
        })
    }

    fn save(&self, nodes: &BTreeMap<String, NodeRecord>) {
        let file = NodesFile {
            version: 1,
            nodes: nodes.clone(),
        };
        let result = serde_json::to_vec_pretty(&file)
            .map_err(std::io::Error::other)
            .and_then(|json| {
                let tmp = self.path.with_extension("json.tmp");
                std::fs::write(&tmp, json)?;
                std::fs::rename(&tmp, &self.path)
            });
        if let Err(e) = result {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot save the node registry");
        }
    }

    fn update<T>(&self, f: impl FnOnce(&mut BTreeMap<String, NodeRecord>) -> T) -> T {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let out = f(&mut nodes);
        self.save(&nodes);
        out
    }

    /// Every node.
    pub fn list(&self) -> BTreeMap<String, NodeRecord> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// One node.
    pub fn get(&self, name: &str) -> Option<NodeRecord> {
        self.list().remove(name)
    }

    /// A token was created for `name`: a removed node may join again with it.
    pub fn admit(&self, name: &str) {
        self.update(|n| {
            let r = n.entry(name.to_string()).or_default();
            if r.removed {
                *r = NodeRecord::default();
            }
        });
    }

    /// `name` registered from `address`; false when it was removed.
    pub fn register(&self, name: &str, address: IpAddr) -> bool {
        self.update(|n| {
            let r = n.entry(name.to_string()).or_default();
            if r.removed {
                return false;
            }
            r.address = Some(address);
            r.joined_at = crate::ca::unix_secs(std::time::SystemTime::now());
            true
        })
    }

    /// Records a certificate serial issued to `name` or one of its proxies.
    pub fn add_serial(&self, name: &str, serial: String) {
        self.update(|n| {
            n.entry(name.to_string())
                .or_default()
                .serials
                .insert(serial);
        });
    }

    /// Marks `name` removed; false when there is no such node.
    pub fn remove(&self, name: &str) -> bool {
        self.update(|n| match n.get_mut(name) {
            Some(r) => {
                r.removed = true;
                r.address = None;
                true
            }
            None => false,
        })
    }

    /// Whether `name` is removed.
    pub fn is_removed(&self, name: &str) -> bool {
        self.get(name).is_some_and(|r| r.removed)
    }

    /// The node a serial was issued to, if any.
    pub fn owner_of_serial(&self, serial: &str) -> Option<String> {
        self.list()
            .into_iter()
            .find(|(_, r)| r.serials.contains(serial))
            .map(|(n, _)| n)
    }

    /// The serials of removed nodes: what every proxy refuses.
    pub fn denied_serials(&self) -> BTreeSet<String> {
        self.list()
            .into_values()
            .filter(|r| r.removed)
            .flat_map(|r| r.serials)
            .collect()
    }

    /// The address of each node that has one.
    pub fn addresses(&self) -> BTreeMap<String, IpAddr> {
        self.list()
            .into_iter()
            .filter(|(_, r)| !r.removed)
            .filter_map(|(n, r)| Some((n, r.address?)))
            .collect()
    }

    /// Sets the placed services (by node: workload -> replicas, identity) from a good load.
    pub fn set_placed(&self, placed: Placed) {
        *self.placed.lock().unwrap_or_else(|p| p.into_inner()) = placed;
    }

    /// The services placed on `name`: workload -> replicas, identity.
    pub fn placed_identities(&self, name: &str) -> BTreeMap<String, (u32, SpiffeId)> {
        self.placed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// Records the inbound address of every placed proxy (after a reload).
    pub fn set_endpoints(&self, placement: &dyn Placement) {
        let mut out = BTreeMap::new();
        for w in self
            .placed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            for (workload, (replicas, _)) in w {
                for i in 0..*replicas {
                    out.insert(format!("{workload}/{i}"), placement.inbound(workload, i));
                }
            }
        }
        *self.endpoints.lock().unwrap_or_else(|p| p.into_inner()) = out;
    }

    /// Every node with its endpoints; `expiry` gives an identity's certificate expiry.
    pub fn status(&self, expiry: impl Fn(&SpiffeId) -> Option<i64>) -> Vec<NodeStatus> {
        let endpoints = self
            .endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.list()
            .into_iter()
            .map(|(name, r)| {
                let mut eps = Vec::new();
                for (workload, (replicas, id)) in self.placed_identities(&name) {
                    for i in 0..replicas {
                        let proxy = format!("{workload}/{i}");
                        eps.push(EndpointStatus {
                            address: endpoints.get(&proxy).copied().flatten(),
                            proxy,
                            identity: id.to_string(),
                            not_after: expiry(&id),
                        });
                    }
                }
                NodeStatus {
                    state: if r.removed {
                        "removed"
                    } else if r.address.is_some() {
                        "joined"
                    } else {
                        "invited"
                    }
                    .to_string(),
                    name,
                    address: r.address,
                    endpoints: eps,
                }
            })
            .collect()
    }

    /// The services placed on `name`: workload -> replicas.
    pub fn placed_on(&self, name: &str) -> BTreeMap<String, u32> {
        self.placed_identities(name)
            .into_iter()
            .map(|(w, (r, _))| (w, r))
            .collect()
    }
}

/// Host mode across nodes: ports as [`HostPlacement`] numbers them (unique in the project, so
/// one machine may host any subset), the inbound address on the machine's own IP: the
/// control plane's (`local`) for unplaced services, the node's for placed ones (none while
/// the node has not joined or was removed: left out of endpoint lists).
#[derive(Debug, Clone)]
pub struct NodePlacement {
    /// Port numbering.
    pub host: HostPlacement,
    /// The control plane machine's address (loopback when it listens on every address).
    pub local: IpAddr,
    /// Node of each placed workload.
    pub placed: BTreeMap<String, String>,
    /// Address of each joined node.
    pub nodes: BTreeMap<String, IpAddr>,
}

impl NodePlacement {
    fn ip(&self, workload: &str) -> Option<IpAddr> {
        match self.placed.get(workload) {
            Some(node) => self.nodes.get(node).copied(),
            None => Some(self.local),
        }
    }
}

impl Placement for NodePlacement {
    fn inbound(&self, workload: &str, instance: u32) -> Option<SocketAddr> {
        let port = self.host.inbound(workload, instance)?.port();
        Some(SocketAddr::new(self.ip(workload)?, port))
    }

    fn admin(&self, workload: &str, instance: u32) -> AdminConfig {
        self.host.admin(workload, instance)
    }
}

/// The address local proxies advertise for a control plane listening on `listen`: that IP,
/// or loopback when it listens on every address (one machine).
pub fn local_address(listen: SocketAddr) -> IpAddr {
    if listen.ip().is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        listen.ip()
    }
}
