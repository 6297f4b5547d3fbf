//! Compiler tests on the seed example (examples/seed) and small inline meshes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use super::*;
use crate::load::{LoadOptions, load};
use meshapi::dns::VipRange;

fn seed() -> Mesh {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/seed");
    let loaded = load(&LoadOptions::new(dir));
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    loaded.mesh
}

fn vips_for(inv: &Inventory) -> VipAllocator {
    let mut vips = VipAllocator::new(VipRange::default());
    vips.sync(
        inv.services
            .iter()
            .map(|s| (s.namespace.as_str(), s.name.as_str())),
    )
    .unwrap();
    vips
}

#[test]
fn seed_frontend_gets_backend_only_with_every_endpoint() {
    let mesh = seed();
    let inv = Inventory::from_compose(mesh.compose.as_ref());
    let vips = vips_for(&inv);
    let placement = HostPlacement::new(&inv, DEFAULT_HOST_BASE_PORT);
    let input = CompileInput::new(&mesh, &inv, &vips, &placement, 7);
    let key = ProxyKey {
        workload: "frontend".into(),
        instance: 0,
    };
    let cfg = compile_proxy(&input, &key).unwrap();
    assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
    assert_eq!(cfg.revision, 7);
    assert_eq!(
        cfg.identity.spiffe_id.to_string(),
        "spiffe://cluster.local/ns/default/sa/frontend-sa"
    );
    // Inbound: its own port, STRICT from the namespace PeerAuthentication.
    assert_eq!(cfg.inbound.len(), 1);
    assert_eq!(cfg.inbound[0].port, 3000);
    assert_eq!(cfg.inbound[0].protocol, Protocol::Http);
    assert_eq!(cfg.inbound[0].mode, PeerAuthMode::Strict);
    // Outbound: backend on its VIP, not itself.
    let backend_vip = vips.get("default", "backend").unwrap();
    assert_eq!(cfg.outbound.len(), 1);
    assert_eq!(cfg.outbound[0].service, "backend.default");
    assert_eq!(cfg.outbound[0].vip, SocketAddr::from((backend_vip, 8080)));
    assert_eq!(cfg.outbound[0].protocol, Protocol::Http);
    let backend = &cfg.services["backend.default"];
    assert_eq!(backend.endpoints.len(), 2);
    // backend-v1 is proxy 0, backend-v2 proxy 1, frontend proxy 2 in compose-name order.
    assert_eq!(
        backend.endpoints[0].address,
        "127.0.0.1:15100".parse().unwrap()
    );
    assert_eq!(backend.endpoints[0].labels["version"], "v1");
    assert_eq!(
        backend.endpoints[1].address,
        "127.0.0.1:15101".parse().unwrap()
    );
    assert_eq!(
        backend.endpoints[1].identity.as_ref().unwrap().to_string(),
        "spiffe://cluster.local/ns/default/sa/backend"
    );
    // STRICT backend: auto-mTLS keeps the ISTIO_MUTUAL default (no entries).
    assert!(backend.endpoints[1].tls.is_empty());
    assert_eq!(
        backend.endpoints[1].tls_for(8080).mode,
        meshapi::proxy::UpstreamTlsMode::IstioMutual
    );
    assert_eq!(cfg.listeners.inbound, "127.0.0.1:15102".parse().unwrap());
    assert_eq!(cfg.admin.admin, "127.0.0.1:16102".parse().unwrap());
    assert!(!cfg.services.contains_key("frontend.default"));
}

#[test]
fn output_is_deterministic_and_every_proxy_compiles() {
    let mesh = seed();
    let inv = Inventory::from_compose(mesh.compose.as_ref());
    let vips = vips_for(&inv);
    let placement = HostPlacement::new(&inv, DEFAULT_HOST_BASE_PORT);
    let input = CompileInput::new(&mesh, &inv, &vips, &placement, 1);
    let json = || {
        let all = compile_all(&input).unwrap();
        serde_json::to_string(&all.values().collect::<Vec<_>>()).unwrap()
    };
    let (a, b) = (json(), json());
    assert_eq!(a, b);
    let all = compile_all(&input).unwrap();
    let keys: Vec<String> = all.keys().map(ToString::to_string).collect();
    assert_eq!(keys, ["backend-v1/0", "backend-v2/0", "frontend/0"]);
    // The backend calls the frontend's service (Istio default: every other service).
    let b1 = &all[&ProxyKey {
        workload: "backend-v1".into(),
        instance: 0,
    }];
    assert_eq!(b1.outbound[0].service, "frontend.default");
    assert_eq!(b1.inbound[0].mode, PeerAuthMode::Strict);
    // Same content at another revision is "the same".
    let input2 = CompileInput::new(&mesh, &inv, &vips, &placement, 2);
    let b1_again = compile_proxy(
        &input2,
        &ProxyKey {
            workload: "backend-v1".into(),
            instance: 0,
        },
    )
    .unwrap();
    assert!(b1.same_content(&b1_again));
    assert_ne!(b1, &b1_again);
}

#[test]
fn fixed_placement_and_errors() {
    let mesh = seed();
    let inv = Inventory::from_compose(mesh.compose.as_ref());
    let vips = vips_for(&inv);
    let mut fixed = FixedPlacement::default();
    fixed
        .0
        .insert(("frontend".into(), 0), "10.0.0.1:15006".parse().unwrap());
    fixed
        .0
        .insert(("backend-v2".into(), 0), "10.0.0.3:15006".parse().unwrap());
    let input = CompileInput::new(&mesh, &inv, &vips, &fixed, 1);
    let fe = ProxyKey {
        workload: "frontend".into(),
        instance: 0,
    };
    let cfg = compile_proxy(&input, &fe).unwrap();
    // backend-v1 has no address: left out of the endpoints.
    let eps = &cfg.services["backend.default"].endpoints;
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0].address, "10.0.0.3:15006".parse().unwrap());
    assert_eq!(cfg.admin, AdminConfig::default());
    let missing = ProxyKey {
        workload: "backend-v1".into(),
        instance: 0,
    };
    assert!(matches!(
        compile_proxy(&input, &missing),
        Err(CompileError::NoPlacement { .. })
    ));
    let nope = ProxyKey {
        workload: "nope".into(),
        instance: 0,
    };
    assert!(matches!(
        compile_proxy(&input, &nope),
        Err(CompileError::UnknownWorkload(_))
    ));
    let second = ProxyKey {
        workload: "frontend".into(),
        instance: 1,
    };
    assert!(matches!(
        compile_proxy(&input, &second),
        Err(CompileError::UnknownInstance { .. })
    ));
    let empty = VipAllocator::new(VipRange::default());
    let input = CompileInput::new(&mesh, &inv, &empty, &fixed, 1);
    assert!(matches!(
        compile_proxy(&input, &fe),
        Err(CompileError::NoVip { .. })
    ));
}

#[test]
fn records_name_ports_and_validate() {
    let mesh = seed();
    let inv = Inventory::from_compose(mesh.compose.as_ref());
    let vips = vips_for(&inv);
    let r = records(&mesh, &inv, &vips);
    assert!(r.validate().is_empty(), "{:?}", r.validate());
    let names: Vec<&str> = r.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["backend", "frontend"]);
    assert_eq!(r.services[0].ports[0].name, "http-8080");
    assert_eq!(r.services[0].vip, vips.get("default", "backend").unwrap());
}

/// A mesh in a temp dir: `compose.yaml` plus `mesh.yaml`.
fn inline(compose: &str, policies: &str) -> (tempfile::TempDir, Mesh) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("compose.yaml"), compose).unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), policies).unwrap();
    let loaded = load(&LoadOptions::new(dir.path()));
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    (dir, loaded.mesh)
}

const TWO: &str = r#"
name: tls
services:
  frontend:
    image: f
    labels: { app: frontend }
    x-mesh: { ports: [ { port: 3000, protocol: http } ] }
  backend:
    image: b
    labels: { app: backend }
    x-mesh: { ports: [ { port: 8080, protocol: http }, { port: 9090, protocol: tcp } ] }
"#;

#[test]
fn auto_mtls_plaintext_only_where_the_server_disables_and_dr_tls_rides_in_the_cluster() {
    let (_d, mesh) = inline(
        TWO,
        r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: backend, namespace: default }
spec:
  selector: { matchLabels: { app: backend } }
  mtls: { mode: STRICT }
  portLevelMtls: { 9090: { mode: DISABLE } }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: backend, namespace: default }
spec:
  host: backend
  trafficPolicy:
    portLevelSettings:
      - port: { number: 8080 }
        tls: { mode: SIMPLE, caCertificates: /etc/ca.pem, sni: backend.example, subjectAltNames: [backend.example] }
"#,
    );
    let inv = Inventory::from_compose(mesh.compose.as_ref());
    let vips = vips_for(&inv);
    let placement = HostPlacement::new(&inv, DEFAULT_HOST_BASE_PORT);
    let input = CompileInput::new(&mesh, &inv, &vips, &placement, 1);
    let cfg = compile_proxy(
        &input,
        &ProxyKey {
            workload: "frontend".into(),
            instance: 0,
        },
    )
    .unwrap();
    assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
    let ep = &cfg.services["backend.default"].endpoints[0];
    use meshapi::proxy::UpstreamTlsMode as M;
    assert_eq!(ep.tls_for(9090).mode, M::Disable, "server DISABLE on 9090");
    assert_eq!(
        ep.tls_for(8080).mode,
        M::IstioMutual,
        "server STRICT on 8080"
    );
    let traffic = cfg.traffic.as_ref().unwrap();
    let cluster = |port: u16| {
        traffic
            .clusters
            .iter()
            .find(|c| c.host == "backend.default.svc.cluster.local" && c.port == port)
            .and_then(|c| c.subset.is_none().then_some(c))
            .unwrap()
    };
    let tls = cluster(8080).policy.tls.as_ref().unwrap();
    assert_eq!(tls.mode, M::Simple);
    assert_eq!(tls.ca_certificates.as_deref(), Some("/etc/ca.pem".as_ref()));
    assert_eq!(tls.sni.as_deref(), Some("backend.example"));
    assert_eq!(tls.subject_alt_names, ["backend.example"]);
    assert_eq!(
        cluster(9090).policy.tls,
        None,
        "no DR tls on 9090: auto-mTLS"
    );
    // The whole config round-trips through YAML (the form meshctl pushes) unchanged.
    let yaml = meshapi::yaml::to_string(&cfg).unwrap();
    assert_eq!(ProxyConfig::from_str_checked(&yaml).unwrap(), cfg);
    // The backend itself sees frontend (no PeerAuthentication there): ISTIO_MUTUAL.
    let b = compile_proxy(
        &input,
        &ProxyKey {
            workload: "backend".into(),
            instance: 0,
        },
    )
    .unwrap();
    assert!(b.services["frontend.default"].endpoints[0].tls.is_empty());
}
