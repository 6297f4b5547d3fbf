//! Telemetry: the top-level `x-mesh` (MeshConfig's `accessLogFile`, `accessLogEncoding`,
//! `defaultConfig.tracing.sampling`, `extensionProviders`, `defaultProviders`) and
//! `telemetry.istio.io` Telemetry resources (mesh-wide, namespace-wide, per workload) compiled
//! into each proxy's `telemetry`; unknown fields refused at file:line:column; what meshctl does
//! not enforce refused by name.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use meshapi::diag::Severity;
use meshapi::dns::{VipAllocator, VipRange};
use meshapi::proxy::ProxyConfig;
use meshapi::telemetry::access_log::AccessLogEncoding;
use meshapi::telemetry::metrics::{MetricName, ReporterMode};
use meshapi::telemetry::tracing::CustomTag;
use meshmodel::compile::{CompileInput, FixedPlacement, ProxyKey, compile_proxy, vip_services};
use meshmodel::load::{LoadOptions, Loaded, load};
use meshmodel::model::Inventory;

const COMPOSE: &str = r#"name: tel
x-mesh:
  accessLogFile: /dev/stdout
  accessLogEncoding: JSON
  defaultConfig:
    tracing:
      sampling: 10
  extensionProviders:
    - name: otel
      opentelemetry:
        service: collector.default.svc.cluster.local
        port: 4318
        http: { path: /v1/traces }
  defaultProviders:
    tracing: [otel]
services:
  frontend:
    image: f
    labels: { app: frontend, version: v1 }
    x-mesh: { ports: [ { port: 3000, protocol: http } ] }
  backend-v2:
    image: b
    labels: { app: backend, version: v2 }
    x-mesh: { service: backend, ports: [ { port: 8080, protocol: http } ] }
"#;

const MESH_WIDE: &str = r#"apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: mesh-default
  namespace: istio-system
spec:
  metrics:
    - providers: [{ name: prometheus }]
      overrides:
        - match: { metric: ALL_METRICS }
          tagOverrides:
            request_protocol: { operation: REMOVE }
            mesh: { value: "'demo'" }
"#;

const BACKEND: &str = r#"---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: backend
  namespace: default
spec:
  selector:
    matchLabels: { app: backend }
  accessLogging:
    - disabled: true
  tracing:
    - randomSamplingPercentage: 50
      customTags:
        team: { literal: { value: payments } }
        user: { header: { name: x-user, defaultValue: anon } }
  metrics:
    - overrides:
        - match: { metric: REQUEST_SIZE, mode: SERVER }
          disabled: true
"#;

fn load_mesh(compose: &str, policies: &str) -> (tempfile::TempDir, Loaded) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("compose.yaml"), compose).unwrap();
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

fn compiled(loaded: &Loaded, workload: &str) -> ProxyConfig {
    let mesh = &loaded.mesh;
    let inv = Inventory::from_compose(mesh.compose.as_ref());
    let mut vips = VipAllocator::new(VipRange::default());
    let wanted = vip_services(mesh, &inv);
    vips.sync(wanted.iter().map(|(ns, n)| (ns.as_str(), n.as_str())))
        .unwrap();
    let mut placement = FixedPlacement::default();
    for (w, port) in [("frontend", 15006), ("backend-v2", 15007)] {
        placement
            .0
            .insert((w.into(), 0), format!("127.0.0.1:{port}").parse().unwrap());
    }
    let input = CompileInput::new(mesh, &inv, &vips, &placement, 1);
    let cfg = compile_proxy(
        &input,
        &ProxyKey {
            workload: workload.into(),
            instance: 0,
        },
    )
    .unwrap();
    assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
    cfg
}

#[test]
fn mesh_settings_and_telemetry_resources_compile_per_workload() {
    let (_d, loaded) = load_mesh(COMPOSE, &format!("{MESH_WIDE}{BACKEND}"));
    assert!(errors(&loaded).is_empty(), "{:?}", loaded.diagnostics);

    let front = compiled(&loaded, "frontend").telemetry;
    let w = &front.metrics.workload;
    assert_eq!(
        (w.name.as_str(), w.namespace.as_str(), w.app.as_str()),
        ("frontend", "default", "frontend")
    );
    assert_eq!((w.version.as_str(), w.service.as_str()), ("v1", "frontend"));
    assert!(front.access_log.enabled);
    assert_eq!(front.access_log.encoding, AccessLogEncoding::Json);
    assert_eq!(front.tracing.sampling_percent, 10.0);
    assert_eq!(
        front.tracing.collector.as_deref(),
        Some("http://collector.default.svc.cluster.local:4318/v1/traces")
    );
    // The mesh-wide override only: every metric loses request_protocol and gains mesh=demo.
    assert_eq!(front.metrics.overrides.len(), 1);
    let o = &front.metrics.overrides[0];
    assert_eq!(o.metric, MetricName::AllMetrics);
    assert_eq!(o.remove_tags, ["request_protocol"]);
    assert_eq!(o.tags["mesh"], "demo");

    let back = compiled(&loaded, "backend-v2").telemetry;
    assert_eq!(back.metrics.workload.name, "backend-v2");
    assert_eq!(back.metrics.workload.service, "backend");
    assert!(
        !back.access_log.enabled,
        "the workload's Telemetry turns it off"
    );
    assert_eq!(back.tracing.sampling_percent, 50.0);
    assert_eq!(
        back.tracing.custom_tags["team"],
        CustomTag::Literal {
            value: "payments".into()
        }
    );
    assert!(matches!(
        &back.tracing.custom_tags["user"],
        CustomTag::Header { name, default_value: Some(d) } if name == "x-user" && d == "anon"
    ));
    // Mesh-wide first, then the workload's: the later one wins where they overlap.
    assert_eq!(back.metrics.overrides.len(), 2);
    let o = &back.metrics.overrides[1];
    assert_eq!(
        (o.metric, o.mode, o.disabled),
        (MetricName::RequestSize, ReporterMode::Server, Some(true))
    );
}

#[test]
fn without_settings_the_defaults_are_istios() {
    let compose = COMPOSE
        .split("services:")
        .nth(1)
        .map(|s| format!("name: tel\nservices:{s}"))
        .unwrap();
    let (_d, loaded) = load_mesh(&compose, "");
    assert!(errors(&loaded).is_empty(), "{:?}", loaded.diagnostics);
    let t = compiled(&loaded, "frontend").telemetry;
    assert!(!t.access_log.enabled);
    assert_eq!(t.tracing.sampling_percent, 1.0);
    assert_eq!(t.tracing.collector, None);
    assert!(t.metrics.overrides.is_empty());
}

#[test]
fn an_unknown_field_is_reported_at_its_line_and_column() {
    let bad = BACKEND.replace(
        "    - randomSamplingPercentage: 50\n",
        "    - randomSampling: 50\n",
    );
    let (_d, loaded) = load_mesh(COMPOSE, &bad);
    let errs: Vec<_> = loaded
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    assert_eq!(errs.len(), 1, "{:#?}", loaded.diagnostics);
    let e = errs[0];
    assert_eq!(e.path, "spec.tracing[0].randomSampling");
    assert_eq!((e.location.line, e.location.column), (13, 7), "{e}");
    assert!(e.location.file.ends_with("mesh.yaml"), "{e}");
}

#[test]
fn istio_rules_and_meshctl_refusals_by_name() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "randomSamplingPercentage: 50",
            "randomSamplingPercentage: 150",
            "spec.tracing[0].randomSamplingPercentage",
        ),
        (
            "mesh: { value: \"'demo'\" }",
            "mesh: { value: \"request.host\" }",
            "spec.metrics[0].overrides[0].tagOverrides.mesh.value: not supported by meshctl",
        ),
        (
            "request_protocol: { operation: REMOVE }",
            "request_protocol: { operation: REMOVE, value: x }",
            "value must be empty for REMOVE",
        ),
        (
            "match: { metric: ALL_METRICS }",
            "match: { metric: GRPC_REQUEST_MESSAGES }",
            "not supported by meshctl: gRPC message metrics",
        ),
        (
            "providers: [{ name: prometheus }]",
            "providers: [{ name: stackdriver }]",
            "not supported by meshctl: metrics provider \"stackdriver\"",
        ),
        (
            "    - disabled: true\n",
            "    - disabled: true\n      filter: { expression: \"response.code >= 400\" }\n",
            "spec.accessLogging[0].filter: not supported by meshctl",
        ),
        (
            "  selector:\n    matchLabels: { app: backend }\n",
            "  targetRef: { kind: Gateway, group: gateway.networking.k8s.io, name: gw }\n",
            "spec.targetRef: not supported by meshctl",
        ),
    ];
    for (from, to, want) in cases {
        let doc = format!("{MESH_WIDE}{BACKEND}");
        assert!(doc.contains(from), "{from}");
        let (_d, loaded) = load_mesh(COMPOSE, &doc.replacen(from, to, 1));
        let errs = errors(&loaded);
        assert!(errs.iter().any(|e| e.contains(want)), "{want}: {errs:#?}");
    }
    // x-mesh: a log file other than stdout, gRPC export, an unknown default provider.
    let cases: &[(&str, &str, &str)] = &[
        (
            "accessLogFile: /dev/stdout",
            "accessLogFile: /var/log/mesh.log",
            "x-mesh.accessLogFile: not supported by meshctl",
        ),
        (
            "        http: { path: /v1/traces }\n",
            "",
            "not supported by meshctl: OTLP over gRPC",
        ),
        (
            "tracing: [otel]",
            "tracing: [jaeger]",
            "x-mesh.defaultProviders.tracing[0]: no extension provider is named \"jaeger\"",
        ),
        (
            "sampling: 10",
            "sampling: 101",
            "x-mesh.defaultConfig.tracing.sampling",
        ),
    ];
    for (from, to, want) in cases {
        assert!(COMPOSE.contains(from), "{from}");
        let (_d, loaded) = load_mesh(&COMPOSE.replacen(from, to, 1), "");
        let errs = errors(&loaded);
        assert!(errs.iter().any(|e| e.contains(want)), "{want}: {errs:#?}");
    }
}

#[test]
fn check_names_an_unknown_tracing_provider_at_its_line() {
    let doc = BACKEND.replace(
        "    - randomSamplingPercentage: 50\n",
        "    - randomSamplingPercentage: 50\n      providers: [{ name: zipkin }]\n",
    );
    let (_d, loaded) = load_mesh(COMPOSE, &doc);
    assert!(errors(&loaded).is_empty(), "{:?}", loaded.diagnostics);
    let found = meshmodel::check::analyze(&loaded.mesh);
    let d = found
        .iter()
        .find(|d| d.code == "MESH0301")
        .unwrap_or_else(|| panic!("{found:#?}"));
    assert_eq!(d.path, "spec.tracing[0].providers[0].name");
    assert_eq!(d.location.line, 14, "{d}");
    assert!(d.message.contains("\"zipkin\""), "{d}");
}

#[test]
fn of_two_telemetries_at_one_level_the_first_applies_and_check_warns() {
    // Two mesh-wide ones: `zz-first` (50%) is first in the file, `aa-second` (5%) would win
    // by name; Istio applies the oldest, here the first in file order.
    let mesh_wide = |name: &str, pct: u32| {
        format!(
            "---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata:\n  name: {name}\n  namespace: istio-system\nspec:\n  tracing:\n    - randomSamplingPercentage: {pct}\n"
        )
    };
    // Two selecting backend-v2: only the first's `accessLogging` counts.
    let selecting = |name: &str, disabled: bool| {
        format!(
            "---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  selector:\n    matchLabels: {{ app: backend }}\n  accessLogging:\n    - disabled: {disabled}\n"
        )
    };
    let doc = format!(
        "{}{}{}{}",
        mesh_wide("zz-first", 50),
        mesh_wide("aa-second", 5),
        selecting("backend-logs-off", true),
        selecting("backend-logs-on", false)
    );
    let (_d, loaded) = load_mesh(COMPOSE, &doc);
    assert!(errors(&loaded).is_empty(), "{:?}", loaded.diagnostics);
    let backend = compiled(&loaded, "backend-v2");
    assert_eq!(backend.telemetry.tracing.sampling_percent, 50.0);
    assert!(
        !backend.telemetry.access_log.enabled,
        "the first selecting one applies"
    );
    let frontend = compiled(&loaded, "frontend");
    assert_eq!(frontend.telemetry.tracing.sampling_percent, 50.0);
    assert!(
        frontend.telemetry.access_log.enabled,
        "x-mesh's accessLogFile"
    );

    let found = meshmodel::check::analyze(&loaded.mesh);
    let conflicts: Vec<_> = found.iter().filter(|d| d.code == "MESH0302").collect();
    assert_eq!(conflicts.len(), 2, "{found:#?}");
    let second = conflicts
        .iter()
        .find(|d| d.resource.as_deref() == Some("Telemetry/aa-second"))
        .unwrap_or_else(|| panic!("{conflicts:#?}"));
    assert_eq!(second.severity, Severity::Warning);
    assert!(second.message.contains("Telemetry zz-first"), "{second}");
    assert_eq!(second.location.line, 14, "{second}");
    let on = conflicts
        .iter()
        .find(|d| d.resource.as_deref() == Some("Telemetry/backend-logs-on"))
        .unwrap_or_else(|| panic!("{conflicts:#?}"));
    assert!(on.message.contains("workload backend-v2"), "{on}");
}
