//! PeerAuthentication resolution (server side) and auto-mTLS (client side).
//!
//! Server side, as Istio composes it (`ComposePeerAuthentication`): of the policies that apply
//! to a workload, the oldest mesh-wide one (root namespace, no selector), the oldest
//! namespace-wide one (no selector) and the oldest workload one (a selector matching the
//! workload's labels, outside the root namespace) are taken; their modes apply in that order,
//! each one's `UNSET` inheriting the one before, starting from `PERMISSIVE`. `portLevelMtls` is
//! read from the workload policy only; an `UNSET` port inherits the workload's mode.
//!
//! "Oldest" is `metadata.creationTimestamp` (RFC 3339, as the API server writes it); a policy
//! without one counts as created at load time, i.e. newer than any with one; ties and
//! policies without timestamps keep file order (the first wins).
//!
//! Client side, Istio's auto-mTLS: mutual TLS with the mesh identity to a mesh workload unless
//! its mode on that port is `DISABLE`; plaintext to anything outside the mesh; a DestinationRule
//! `tls` setting overrides both.

use std::cmp::Ordering;

use crate::istio::{ClientTlsSettings, IstioResource, MtlsMode, PeerAuthentication};
use crate::model::Mesh;
use crate::model::Workload;
use meshapi::authz::ClientTls;
use meshapi::proxy::UpstreamTls;

/// The PeerAuthentications of a loaded mesh, in file order.
pub fn peer_authentications(mesh: &Mesh) -> Vec<&PeerAuthentication> {
    mesh.resources
        .iter()
        .filter_map(|r| match &r.resource {
            IstioResource::PeerAuthentication(p) => Some(p),
            _ => None,
        })
        .collect()
}

/// Whether `a` is older than `b` (strictly); see the module documentation.
fn older(a: &PeerAuthentication, b: &PeerAuthentication) -> bool {
    match (
        &a.metadata.creation_timestamp,
        &b.metadata.creation_timestamp,
    ) {
        (Some(x), Some(y)) => x.as_str().cmp(y.as_str()) == Ordering::Less,
        (Some(_), None) => true,
        _ => false,
    }
}

fn has_selector(p: &PeerAuthentication) -> bool {
    p.spec
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty())
}

fn effective(m: Option<&crate::istio::Mtls>) -> Option<MtlsMode> {
    m.and_then(crate::istio::Mtls::effective)
}

/// The mTLS mode the server side of `workload` applies on `port` (never `UNSET`).
pub fn mtls_mode_for(
    policies: &[&PeerAuthentication],
    workload: &Workload,
    port: u16,
    root_namespace: &str,
) -> MtlsMode {
    let mut mesh: Option<&PeerAuthentication> = None;
    let mut namespace: Option<&PeerAuthentication> = None;
    let mut workload_level: Option<&PeerAuthentication> = None;
    for &p in policies {
        let ns = p
            .metadata
            .namespace
            .as_deref()
            .unwrap_or(crate::model::DEFAULT_NAMESPACE);
        if ns != root_namespace && ns != workload.namespace {
            continue;
        }
        let slot = if !has_selector(p) {
            if ns == root_namespace {
                &mut mesh
            } else {
                &mut namespace
            }
        } else if ns != root_namespace
            && p.spec
                .selector
                .as_ref()
                .is_some_and(|s| s.match_labels.matches_map(&workload.labels))
        {
            &mut workload_level
        } else {
            continue;
        };
        if slot.is_none_or(|cur| older(p, cur)) {
            *slot = Some(p);
        }
    }
    let mut mode = MtlsMode::DEFAULT;
    for p in [mesh, namespace, workload_level].into_iter().flatten() {
        if let Some(m) = effective(p.spec.mtls.as_ref()) {
            mode = m;
        }
    }
    if let Some(ports) = workload_level.and_then(|p| p.spec.port_level_mtls.as_ref())
        && let Some((_, m)) = ports.iter().find(|(k, _)| k.port().get() == port)
        && let Some(m) = m.effective()
    {
        mode = m;
    }
    mode
}

/// The client side towards one endpoint: `server_mode` is the endpoint's mode on the port
/// ([`mtls_mode_for`]), `None` when the endpoint is not a mesh workload (no proxy in front).
/// A DestinationRule `tls` with a mode wins; otherwise auto-mTLS: ISTIO_MUTUAL unless the
/// server is DISABLE there or outside the mesh.
pub fn client_tls_for(
    server_mode: Option<MtlsMode>,
    dr_tls: Option<&ClientTlsSettings>,
) -> ClientTls {
    if let Some(t) = dr_tls.and_then(super::upstream_tls) {
        return t;
    }
    match server_mode {
        None | Some(MtlsMode::Disable) => UpstreamTls::disable(),
        Some(_) => UpstreamTls::istio_mutual(),
    }
}

/// [`client_tls_for`] towards a mesh workload, resolving its PeerAuthentication.
pub fn client_tls_for_workload(
    policies: &[&PeerAuthentication],
    destination: &Workload,
    port: u16,
    root_namespace: &str,
    dr_tls: Option<&ClientTlsSettings>,
) -> ClientTls {
    client_tls_for(
        Some(mtls_mode_for(policies, destination, port, root_namespace)),
        dr_tls,
    )
}
