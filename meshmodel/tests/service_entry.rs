//! ServiceEntry: read field by field (unknown field -> file:line:column with a suggestion),
//! checked as Istio checks it with meshctl's refusals by name, and compiled into every client
//! proxy as a service on a VIP whose endpoints are outside the mesh (plaintext by default, the
//! DestinationRule's TLS origination when it has `tls`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use meshapi::diag::Severity;
use meshapi::dns::{VipAllocator, VipRange};
use meshapi::proxy::{Protocol, UpstreamTlsMode};
use meshmodel::compile::{
    CompileInput, FixedPlacement, ProxyKey, compile_proxy, records, service_entry_hosts,
    vip_services,
};
use meshmodel::istio::IstioResource;
use meshmodel::load::{LoadOptions, Loaded, load};
use meshmodel::model::Inventory;

const COMPOSE: &str = "name: se\nservices:\n  frontend:\n    image: f\n    labels: { app: frontend }\n    x-mesh: { ports: [ { port: 3000, protocol: http } ] }\n";

const ENTRY: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: payments
  namespace: default
spec:
  hosts: [api.payments.test]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports:
    - { number: 80, name: http, protocol: HTTP, targetPort: 8443 }
    - { number: 5432, name: pg, protocol: TCP }
  endpoints:
    - address: 127.0.0.10
      labels: { zone: a }
    - address: 127.0.0.11
      ports: { pg: 6543 }
"#;

const DR: &str = r#"---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: payments
  namespace: default
spec:
  host: api.payments.test
  trafficPolicy:
    portLevelSettings:
      - port: { number: 80 }
        tls: { mode: SIMPLE, caCertificates: /etc/payments-ca.pem, sni: api.payments.test }
"#;

fn load_mesh(policies: &str) -> (tempfile::TempDir, Loaded) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("compose.yaml"), COMPOSE).unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), policies).unwrap();
    let mut opts = LoadOptions::new(dir.path());
    opts.env = Box::new(BTreeMap::<String, String>::new());
    let loaded = load(&opts);
    (dir, loaded)
}

fn errors(loaded: &Loaded) -> Vec<String> {
    loaded
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(ToString::to_string)
        .collect()
}

#[test]
fn loads_and_compiles_into_every_client_with_a_vip_and_identityless_endpoints() {
    let (_d, loaded) = load_mesh(&format!("{ENTRY}{DR}"));
    assert!(errors(&loaded).is_empty(), "{:?}", loaded.diagnostics);
    assert!(
        loaded
            .mesh
            .resources
            .iter()
            .any(|r| matches!(r.resource, IstioResource::ServiceEntry(_)))
    );
    let mesh = &loaded.mesh;
    assert!(service_entry_hosts(mesh).contains_key("api.payments.test"));
    let inv = Inventory::from_compose(mesh.compose.as_ref());
    let mut vips = VipAllocator::new(VipRange::default());
    let wanted = vip_services(mesh, &inv);
    vips.sync(wanted.iter().map(|(ns, n)| (ns.as_str(), n.as_str())))
        .unwrap();
    let vip = vips.get("default", "api.payments.test").unwrap();
    assert!(VipRange::default().contains(vip));
    let mut placement = FixedPlacement::default();
    placement
        .0
        .insert(("frontend".into(), 0), "127.0.0.1:15006".parse().unwrap());
    let input = CompileInput::new(mesh, &inv, &vips, &placement, 1);
    let cfg = compile_proxy(
        &input,
        &ProxyKey {
            workload: "frontend".into(),
            instance: 0,
        },
    )
    .unwrap();
    assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
    let http = cfg
        .outbound
        .iter()
        .find(|o| o.service == "api.payments.test:80")
        .unwrap();
    assert_eq!(http.vip, std::net::SocketAddr::from((vip, 80)));
    assert_eq!(http.protocol, Protocol::Http);
    assert_eq!(http.target_port(), 8443);
    let pg = cfg
        .outbound
        .iter()
        .find(|o| o.service == "api.payments.test:5432")
        .unwrap();
    assert_eq!(pg.protocol, Protocol::Tcp);
    // Port 80: both endpoints at the target port, TLS origination from the DestinationRule.
    let eps = &cfg.services["api.payments.test:80"].endpoints;
    assert_eq!(eps.len(), 2);
    assert_eq!(eps[0].address, "127.0.0.10:8443".parse().unwrap());
    assert_eq!(eps[0].identity, None);
    assert_eq!(eps[0].labels["zone"], "a");
    let tls = eps[0].tls_for(8443);
    assert_eq!(tls.mode, UpstreamTlsMode::Simple);
    assert_eq!(tls.sni.as_deref(), Some("api.payments.test"));
    // Port 5432: the second endpoint's own port; plaintext (no tls for that port).
    let eps = &cfg.services["api.payments.test:5432"].endpoints;
    assert_eq!(eps[1].address, "127.0.0.11:6543".parse().unwrap());
    assert_eq!(eps[1].tls_for(6543).mode, UpstreamTlsMode::Disable);
    // meshdns answers the entry's host with the same VIP.
    let r = records(mesh, &inv, &vips);
    assert!(r.validate().is_empty(), "{:?}", r.validate());
    let h = r
        .hosts
        .iter()
        .find(|h| h.name == "api.payments.test")
        .unwrap();
    assert_eq!(h.vip, vip);
}

#[test]
fn an_unknown_field_is_reported_at_its_line_and_column_with_a_suggestion() {
    let bad = ENTRY.replace("  resolution: STATIC\n", "  resolutoin: STATIC\n");
    let (_d, loaded) = load_mesh(&bad);
    let errs: Vec<_> = loaded
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    assert_eq!(errs.len(), 1, "{:#?}", loaded.diagnostics);
    let e = errs[0];
    assert_eq!(e.path, "spec.resolutoin");
    assert_eq!((e.location.line, e.location.column), (9, 3), "{e}");
    assert!(e.location.file.ends_with("mesh.yaml"), "{e}");
    assert_eq!(e.hint.as_deref(), Some("did you mean `resolution`?"), "{e}");
    let bad = ENTRY.replace("labels: { zone: a }", "lables: { zone: a }");
    let (_d, loaded) = load_mesh(&bad);
    let errs = errors(&loaded);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].contains("spec.endpoints[0].lables"), "{errs:?}");
}

#[test]
fn istio_rules_and_meshctl_refusals_by_name() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "  resolution: STATIC\n",
            "  resolution: DNS\n",
            "spec.resolution: not supported by meshctl: DNS resolution",
        ),
        (
            "  resolution: STATIC\n",
            "",
            "spec.resolution: not supported by meshctl: resolution NONE",
        ),
        (
            "  location: MESH_EXTERNAL\n",
            "  location: MESH_INTERNAL\n",
            "spec.location: not supported by meshctl",
        ),
        (
            "  hosts: [api.payments.test]\n",
            "  hosts: [\"*\"]\n",
            "spec.hosts[0]: hostname cannot be wildcard",
        ),
        (
            "  hosts: [api.payments.test]\n",
            "  hosts: [api.payments.test]\n  exportTo: [\".\"]\n",
            "spec.exportTo: not supported by meshctl",
        ),
        (
            "  hosts: [api.payments.test]\n",
            "  hosts: [api.payments.test]\n  addresses: [10.1.2.3]\n",
            "spec.addresses: not supported by meshctl",
        ),
        (
            "name: pg, protocol: TCP",
            "name: http, protocol: TCP",
            "spec.ports[1].name: port name must be unique",
        ),
        (
            "number: 5432",
            "number: 80",
            "spec.ports[1].number: port number cannot be duplicated",
        ),
        (
            "number: 5432",
            "number: 70000",
            "spec.ports[1].number: port must be between 1-65535",
        ),
        (
            "protocol: TCP",
            "protocol: SCTP",
            "spec.ports[1].protocol: unknown protocol",
        ),
        (
            "address: 127.0.0.10",
            "address: db.payments.test",
            "spec.endpoints[0].address: \"db.payments.test\" is not an IP address",
        ),
        (
            "ports: { pg: 6543 }",
            "ports: { pgsql: 6543 }",
            "spec.endpoints[1].ports.pgsql: no port named",
        ),
        (
            "ports: { pg: 6543 }",
            "weight: 3",
            "spec.endpoints[1].weight: not supported by meshctl",
        ),
    ];
    for (from, to, want) in cases {
        let text = ENTRY.replacen(from, to, 1);
        assert_ne!(text, ENTRY, "{from}");
        let (_d, loaded) = load_mesh(&text);
        let errs = errors(&loaded);
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "{to}: want {want}; got {errs:#?}"
        );
        // Nothing else is wrong but what the case changed (NONE also refuses its endpoints).
        assert!(errs.len() <= 2, "{to}: {errs:#?}");
    }
}

#[test]
fn a_route_to_an_entry_host_is_no_unknown_host() {
    let vs = r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: pay, namespace: default }
spec:
  hosts: [frontend]
  http:
    - route: [ { destination: { host: api.payments.test } } ]
"#;
    let (_d, loaded) = load_mesh(&format!("{ENTRY}{vs}"));
    assert!(errors(&loaded).is_empty(), "{:#?}", loaded.diagnostics);
    let findings = meshmodel::check::analyze(&loaded.mesh);
    let unknown: Vec<_> = findings
        .iter()
        .filter(|d| d.message.contains("api.payments.test"))
        .collect();
    assert!(unknown.is_empty(), "{unknown:#?}");
    let (_d, loaded) = load_mesh(&vs[4..]);
    let findings = meshmodel::check::analyze(&loaded.mesh);
    assert!(
        findings
            .iter()
            .any(|d| d.message.contains("no ServiceEntry names it")),
        "{findings:#?}"
    );
}

#[test]
fn istio_mutual_towards_an_entry_is_a_compile_error_naming_the_host() {
    let dr = DR.replace(
        "tls: { mode: SIMPLE, caCertificates: /etc/payments-ca.pem, sni: api.payments.test }",
        "tls: { mode: ISTIO_MUTUAL }",
    );
    assert_ne!(dr, DR);
    let (_d, loaded) = load_mesh(&format!("{ENTRY}{dr}"));
    assert!(errors(&loaded).is_empty(), "{:?}", loaded.diagnostics);
    let mesh = &loaded.mesh;
    let inv = Inventory::from_compose(mesh.compose.as_ref());
    let mut vips = VipAllocator::new(VipRange::default());
    let wanted = vip_services(mesh, &inv);
    vips.sync(wanted.iter().map(|(ns, n)| (ns.as_str(), n.as_str())))
        .unwrap();
    let mut placement = FixedPlacement::default();
    placement
        .0
        .insert(("frontend".into(), 0), "127.0.0.1:15006".parse().unwrap());
    let input = CompileInput::new(mesh, &inv, &vips, &placement, 1);
    let err = compile_proxy(
        &input,
        &ProxyKey {
            workload: "frontend".into(),
            instance: 0,
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("api.payments.test"), "{err}");
    assert!(err.contains("ISTIO_MUTUAL"), "{err}");
    // Without the entry's VIP in the allocator the compile says so (meshctl syncs vip_services).
    let bare = VipAllocator::new(VipRange::default());
    let input = CompileInput::new(mesh, &inv, &bare, &placement, 1);
    assert!(matches!(
        compile_proxy(
            &input,
            &ProxyKey {
                workload: "frontend".into(),
                instance: 0,
            },
        ),
        Err(meshmodel::compile::CompileError::NoVip { .. })
    ));
}
