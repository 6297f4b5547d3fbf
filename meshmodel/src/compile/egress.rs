//! Egress in the compiled configs: the `Sidecar` that applies to a workload (Istio's order:
//! one in its namespace whose `workloadSelector` matches, else its namespace's Sidecar
//! without a selector, else the root namespace's), the services and ServiceEntries its
//! `egress[].hosts` import (a proxy receives only those, as in Istio), and the
//! `outboundTrafficPolicy` mode (the Sidecar's, else the mesh's `x-mesh`, else `ALLOW_ANY`).

use crate::istio::{EgressHost, IstioResource, Sidecar};
use crate::model::{Mesh, Workload};
use meshapi::proxy::OutboundTrafficPolicy;

/// What a workload's Sidecar leaves it: which hosts it imports and its outbound mode.
#[derive(Debug, Clone, Default)]
pub struct Egress {
    /// `None`: everything is imported (no Sidecar, or one without `egress`).
    hosts: Option<Vec<EgressHost>>,
    pub policy: OutboundTrafficPolicy,
}

impl Egress {
    /// Whether the proxy receives the service or ServiceEntry `host` of namespace `ns`.
    pub fn imports(&self, ns: &str, host: &str) -> bool {
        self.hosts
            .as_ref()
            .is_none_or(|hs| hs.iter().any(|h| h.imports(ns, host)))
    }
}

/// The Sidecar that applies to `w` with its namespace; the first in file order when several
/// could (`meshctl check` reports the others, MESH0112).
pub fn sidecar_for<'a>(mesh: &'a Mesh, w: &Workload) -> Option<(&'a str, &'a Sidecar)> {
    let root = mesh
        .compose
        .as_ref()
        .map_or(crate::model::ROOT_NAMESPACE, |c| c.root_namespace());
    let sidecars = || {
        mesh.resources.iter().filter_map(|r| match &r.resource {
            IstioResource::Sidecar(sc) => Some((r.id.namespace.as_str(), sc)),
            _ => None,
        })
    };
    let selecting = sidecars().find(|(ns, sc)| {
        let labels = sc.selector_labels();
        *ns == w.namespace && !labels.is_empty() && w.matches(&labels)
    });
    let unselected = |in_ns: &str| {
        sidecars().find(|(ns, sc)| *ns == in_ns && sc.spec.workload_selector.is_none())
    };
    selecting
        .or_else(|| unselected(&w.namespace))
        .or_else(|| unselected(root))
}

/// The egress of `w`: its Sidecar's hosts and mode, the mesh's mode otherwise.
pub fn egress_of(mesh: &Mesh, w: &Workload) -> Egress {
    let mesh_policy = mesh
        .compose
        .as_ref()
        .map(|c| c.outbound_traffic_policy())
        .unwrap_or_default();
    match sidecar_for(mesh, w) {
        None => Egress {
            hosts: None,
            policy: mesh_policy,
        },
        Some((ns, sc)) => Egress {
            hosts: sc.egress_hosts(ns),
            policy: sc
                .spec
                .outbound_traffic_policy
                .as_ref()
                .map_or(mesh_policy, |p| OutboundTrafficPolicy { mode: p.mode }),
        },
    }
}
