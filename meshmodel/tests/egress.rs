//! Egress control, compiled: the mesh's `x-mesh.outboundTrafficPolicy`, the `Sidecar` kind
//! (served: `workloadSelector`, `egress[].hosts`, `outboundTrafficPolicy`; Istio's fields
//! meshctl does not serve refused by name with file:line:column) and what each proxy
//! receives: a Sidecar that narrows `egress` gives its proxies fewer services, as in Istio.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use meshapi::diag::Severity;
use meshapi::dns::{VipAllocator, VipRange};
use meshapi::proxy::{OutboundMode, ProxyConfig};
use meshmodel::compile::{CompileInput, FixedPlacement, compile_all, vip_services};
use meshmodel::load::{LoadOptions, Loaded, load};
use meshmodel::model::Inventory;

const COMPOSE: &str = "name: eg
services:
  frontend:
    image: f
    labels: { app: frontend }
    x-mesh: { ports: [ { port: 3000, protocol: http } ] }
  backend:
    image: b
    labels: { app: backend }
    x-mesh: { ports: [ { port: 8080, protocol: http } ] }
  db:
    image: d
    labels: { app: db }
    x-mesh: { namespace: data, ports: [ { port: 5432, protocol: tcp } ] }
";

const ENTRY: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: payments, namespace: default }
spec:
  hosts: [api.payments.test]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [ { number: 80, name: http, protocol: HTTP } ]
  endpoints: [ { address: 127.0.0.10 } ]
";

fn load_mesh(x_mesh: &str, policies: &str) -> (tempfile::TempDir, Loaded) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("compose.yaml"),
        format!("{COMPOSE}{x_mesh}"),
    )
    .unwrap();
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

/// Every proxy's config, by compose service name, compiled as the control plane does.
fn compiled(x_mesh: &str, policies: &str) -> BTreeMap<String, ProxyConfig> {
    let (_d, loaded) = load_mesh(x_mesh, policies);
    assert!(errors(&loaded).is_empty(), "{:?}", errors(&loaded));
    let mesh = &loaded.mesh;
    let inv = Inventory::from_compose(mesh.compose.as_ref());
    let mut vips = VipAllocator::new(VipRange::default());
    let wanted = vip_services(mesh, &inv);
    vips.sync(wanted.iter().map(|(ns, n)| (ns.as_str(), n.as_str())))
        .unwrap();
    let mut placement = FixedPlacement::default();
    for (i, w) in ["backend", "db", "frontend"].iter().enumerate() {
        placement.0.insert(
            (w.to_string(), 0),
            format!("127.0.0.1:{}", 15100 + i).parse().unwrap(),
        );
    }
    let input = CompileInput::new(mesh, &inv, &vips, &placement, 1);
    compile_all(&input)
        .unwrap()
        .into_iter()
        .map(|(k, c)| {
            assert!(c.validate().is_empty(), "{:?}", c.validate());
            (k.workload, c)
        })
        .collect()
}

fn services(cfg: &ProxyConfig) -> Vec<&str> {
    cfg.services.keys().map(String::as_str).collect()
}

#[test]
fn without_a_sidecar_every_proxy_gets_every_service_and_allow_any() {
    let cfgs = compiled("", ENTRY);
    assert_eq!(
        services(&cfgs["frontend"]),
        ["api.payments.test:80", "backend.default", "db.data"]
    );
    for c in cfgs.values() {
        assert_eq!(c.outbound_traffic_policy.mode, OutboundMode::AllowAny);
    }
    // ALLOW_ANY is the default and is not written into the config.
    let yaml = meshapi::yaml::to_string(&cfgs["frontend"]).unwrap();
    assert!(!yaml.contains("outboundTrafficPolicy"), "{yaml}");
}

#[test]
fn the_mesh_mode_applies_to_every_proxy_and_a_sidecar_overrides_it() {
    let x_mesh = "x-mesh:\n  outboundTrafficPolicy: { mode: REGISTRY_ONLY }\n";
    let sidecar = "---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: { name: backend-open, namespace: default }
spec:
  workloadSelector: { labels: { app: backend } }
  outboundTrafficPolicy: { mode: ALLOW_ANY }
";
    let cfgs = compiled(x_mesh, &format!("{ENTRY}{sidecar}"));
    let modes: Vec<(&str, OutboundMode)> = cfgs
        .iter()
        .map(|(w, c)| (w.as_str(), c.outbound_traffic_policy.mode))
        .collect();
    assert_eq!(
        modes,
        [
            ("backend", OutboundMode::AllowAny),
            ("db", OutboundMode::RegistryOnly),
            ("frontend", OutboundMode::RegistryOnly),
        ]
    );
    let yaml = meshapi::yaml::to_string(&cfgs["frontend"]).unwrap();
    assert!(
        yaml.contains("outboundTrafficPolicy:\n  mode: REGISTRY_ONLY"),
        "{yaml}"
    );
    // The config round-trips through the proxy's own reader.
    let back = ProxyConfig::from_str_checked(&yaml).unwrap();
    assert_eq!(
        back.outbound_traffic_policy.mode,
        OutboundMode::RegistryOnly
    );
}

/// VirtualServices in both namespaces, one for a ServiceEntry host.
const ROUTES: &str = "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: backend, namespace: default }
spec:
  hosts: [backend]
  http: [ { route: [ { destination: { host: backend } } ], timeout: 2s } ]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: db, namespace: data }
spec:
  hosts: [db]
  tcp: [ { route: [ { destination: { host: db } } ] } ]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: payments, namespace: default }
spec:
  hosts: [api.payments.test]
  http: [ { route: [ { destination: { host: api.payments.test } } ], timeout: 3s } ]
";

/// The hosts of a proxy's route table, each with the VirtualService compiled for it.
fn routes(cfg: &ProxyConfig) -> Vec<(String, Option<String>)> {
    cfg.traffic
        .as_ref()
        .expect("a route table")
        .services
        .iter()
        .map(|s| (s.host.clone(), s.virtual_service.clone()))
        .collect()
}

#[test]
fn a_sidecar_egress_narrows_what_its_proxies_receive() {
    const BE: &str = "backend.default.svc.cluster.local";
    const DB: &str = "db.data.svc.cluster.local";
    const FE: &str = "frontend.default.svc.cluster.local";
    const PAY: &str = "api.payments.test";
    // Table: the egress hosts of a namespace-wide Sidecar in `default` -> the services and
    // the route table hosts frontend gets (VirtualServices only for imported hosts).
    type Case<'a> = (&'a str, &'a [&'a str], &'a [&'a str]);
    let cases: &[Case] = &[
        (
            "[\"./*\"]",
            &["api.payments.test:80", "backend.default"],
            &[PAY, BE, FE],
        ),
        ("[\"data/*\"]", &["db.data"], &[DB]),
        (
            "[\"*/*\"]",
            &["api.payments.test:80", "backend.default", "db.data"],
            &[PAY, BE, DB, FE],
        ),
        ("[\"~/*\"]", &[], &[]),
        (
            "[\"./backend.default.svc.cluster.local\"]",
            &["backend.default"],
            &[BE],
        ),
        ("[\"*/*.payments.test\"]", &["api.payments.test:80"], &[PAY]),
        (
            "[\"./backend.default.svc.cluster.local\", \"data/*\"]",
            &["backend.default", "db.data"],
            &[BE, DB],
        ),
    ];
    let vs_of = |host: &str| match host {
        BE => Some("default/backend".to_string()),
        DB => Some("data/db".to_string()),
        PAY => Some("default/payments".to_string()),
        _ => None,
    };
    for (hosts, want, want_routes) in cases {
        let sidecar = format!(
            "---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{ name: default, namespace: default }}
spec:
  egress: [ {{ hosts: {hosts} }} ]
"
        );
        let cfgs = compiled("", &format!("{ENTRY}{ROUTES}{sidecar}"));
        let fe = &cfgs["frontend"];
        assert_eq!(services(fe), *want, "hosts {hosts}");
        // Outbound entries follow the services: nothing on a VIP of a dropped service.
        assert!(
            fe.outbound
                .iter()
                .all(|o| fe.services.contains_key(&o.service)),
            "hosts {hosts}"
        );
        // The route table too: no host (and no VirtualService) the Sidecar does not import.
        let want_routes: Vec<(String, Option<String>)> = want_routes
            .iter()
            .map(|h| (h.to_string(), vs_of(h)))
            .collect();
        assert_eq!(routes(fe), want_routes, "hosts {hosts}");
        // `db` is in namespace `data`: the `default` Sidecar does not apply to it.
        assert_eq!(
            services(&cfgs["db"]),
            [
                "api.payments.test:80",
                "backend.default",
                "frontend.default"
            ],
            "hosts {hosts}"
        );
        assert_eq!(routes(&cfgs["db"]).len(), 4, "hosts {hosts}");
    }
}

#[test]
fn a_selecting_sidecar_wins_over_the_namespace_one_and_the_root_one_is_the_default() {
    let policies = format!(
        "{ENTRY}---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{ name: mesh-default, namespace: istio-system }}
spec:
  egress: [ {{ hosts: [\"istio-system/*\"] }} ]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{ name: frontend, namespace: default }}
spec:
  workloadSelector: {{ labels: {{ app: frontend }} }}
  egress: [ {{ hosts: [\"./*\"] }} ]
"
    );
    let cfgs = compiled("", &policies);
    assert_eq!(
        services(&cfgs["frontend"]),
        ["api.payments.test:80", "backend.default"]
    );
    // backend and db: the root namespace's Sidecar, which imports only istio-system.
    assert!(services(&cfgs["backend"]).is_empty());
    assert!(services(&cfgs["db"]).is_empty());
}

#[test]
fn fields_meshctl_does_not_serve_and_istios_rejections_are_errors_with_positions() {
    let cases: &[(&str, &str)] = &[
        (
            "spec:\n  ingress:\n    - port: { number: 80, protocol: HTTP, name: http }\n      defaultEndpoint: 127.0.0.1:8080\n",
            "not supported by meshctl: Sidecar ingress",
        ),
        (
            "spec:\n  inboundConnectionPool: { http: { http1MaxPendingRequests: 10 } }\n",
            "not supported by meshctl: Sidecar inboundConnectionPool",
        ),
        (
            "spec:\n  egress:\n    - port: { number: 80, protocol: HTTP, name: http }\n      hosts: [\"./*\"]\n",
            "not supported by meshctl: egress port",
        ),
        (
            "spec:\n  egress:\n    - hosts: [\"./*\"]\n      captureMode: NONE\n",
            "not supported by meshctl: egress captureMode",
        ),
        (
            "spec:\n  outboundTrafficPolicy:\n    mode: ALLOW_ANY\n    egressProxy: { host: proxy.example.com }\n",
            "not supported by meshctl: outboundTrafficPolicy egressProxy",
        ),
        (
            "spec:\n  egress:\n    - hosts: [backend]\n",
            "must be namespace/dnsName",
        ),
        ("spec:\n  egress:\n    - hosts: []\n", "at least one host"),
        ("spec: {}\n", "empty configuration"),
        (
            "spec:\n  workloadSelector: { labels: {} }\n  egress: [ { hosts: [\"./*\"] } ]\n",
            "at least one label",
        ),
        (
            "spec:\n  outboundTrafficPolicy: { mode: BLOCK }\n",
            "unknown variant `BLOCK`",
        ),
        (
            "spec:\n  egres: [ { hosts: [\"./*\"] } ]\n",
            "unknown field `egres`",
        ),
    ];
    for (spec, want) in cases {
        let doc = format!(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{ name: s, namespace: default }}\n{spec}"
        );
        let (_d, loaded) = load_mesh("", &doc);
        let errs = errors(&loaded);
        assert!(
            errs.iter()
                .any(|e| e.contains(want) && e.contains("mesh.yaml:")),
            "{spec}: want {want:?} in {errs:?}"
        );
    }
}

#[test]
fn the_mesh_mode_rejects_unknown_values_and_fields() {
    for (x_mesh, want) in [
        (
            "x-mesh:\n  outboundTrafficPolicy: { mode: DENY }\n",
            "unknown variant `DENY`",
        ),
        (
            "x-mesh:\n  outboundTrafficPolicy: { mod: REGISTRY_ONLY }\n",
            "unknown field `mod`",
        ),
    ] {
        let (_d, loaded) = load_mesh(x_mesh, "");
        let errs = errors(&loaded);
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "{x_mesh}: want {want:?} in {errs:?}"
        );
    }
}

#[test]
fn two_sidecars_for_one_workload_are_flagged_and_the_first_applies() {
    let policies = "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: { name: a, namespace: default }
spec:
  egress: [ { hosts: [\"./*\"] } ]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: { name: b, namespace: default }
spec:
  egress: [ { hosts: [\"~/*\"] } ]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: { name: nobody, namespace: default }
spec:
  workloadSelector: { labels: { app: nobody } }
  egress: [ { hosts: [\"./*\"] } ]
";
    let (_d, loaded) = load_mesh("", policies);
    assert!(errors(&loaded).is_empty(), "{:?}", errors(&loaded));
    let findings = meshmodel::check::analyze(&loaded.mesh);
    let codes: Vec<(&str, String)> = findings.iter().map(|f| (f.code, f.to_string())).collect();
    assert!(
        codes
            .iter()
            .any(|(c, m)| *c == "MESH0112" && m.contains("Sidecar a")),
        "{codes:?}"
    );
    assert!(codes.iter().any(|(c, _)| *c == "MESH0203"), "{codes:?}");
    let cfgs = compiled("", policies);
    assert_eq!(services(&cfgs["frontend"]), ["backend.default"]);
}
