//! The Istio model against Istio's own files (`$MESHCTL_CONFORMANCE_DIR/istio`, i.e. shared/conformance beside the repository): every VirtualService,
//! DestinationRule, PeerAuthentication and AuthorizationPolicy loads, validates with exactly the
//! expected refusals, and round-trips through `meshctl config`'s serialization. Plus kind lookup,
//! error paths of `IstioResource::from_value`, and Istio's defaults.

use meshmodel::istio::{
    Action, HttpRetry, HttpRoute, IstioKind, IstioResource, KindLookup, Percent, RetryCondition,
    RetryPolicy, VirtualService, kind_of,
};

/// One YAML document of the corpus.
struct Doc {
    file: String,
    api_version: String,
    kind: String,
    name: String,
    value: meshapi::yaml::Value,
}

/// The corpus's documents; `None` (the test returns) when it is not there.
fn corpus() -> Option<Vec<Doc>> {
    let corpus = meshtest::conformance_dir()?;
    let corpus = corpus.display();
    let mut docs = Vec::new();
    for dir in ["samples", "authz-policies", "analyzer-inputs"] {
        let mut files: Vec<_> = std::fs::read_dir(format!("{corpus}/{dir}"))
            .unwrap_or_else(|e| panic!("read {corpus}/{dir}: {e}"))
            .map(|e| e.expect("dir entry").path())
            .collect();
        files.sort();
        for path in files {
            let text = std::fs::read_to_string(&path).expect("read corpus file");
            let file = format!(
                "{dir}/{}",
                path.file_name()
                    .and_then(|n| n.to_str())
                    .expect("file name")
            );
            for value in meshapi::yaml::documents(&text).unwrap_or_else(|e| panic!("{file}: {e}")) {
                if value.is_null() {
                    continue;
                }
                let s = |v: Option<&meshapi::yaml::Value>| {
                    v.and_then(|v| v.as_str()).unwrap_or("").to_string()
                };
                docs.push(Doc {
                    file: file.clone(),
                    api_version: s(value.get("apiVersion")),
                    kind: s(value.get("kind")),
                    name: s(value.get("metadata").and_then(|m| m.get("name"))),
                    value,
                });
            }
        }
    }
    Some(docs)
}

fn served(docs: &[Doc]) -> Vec<(&Doc, IstioResource)> {
    docs.iter()
        .filter(|d| matches!(kind_of(&d.api_version, &d.kind), KindLookup::Served(_)))
        .map(|d| {
            let r = IstioResource::from_value(&d.api_version, &d.kind, d.value.clone())
                .unwrap_or_else(|e| {
                    panic!(
                        "{} {}/{}: {}: {}",
                        d.file, d.kind, d.name, e.path, e.message
                    )
                });
            (d, r)
        })
        .collect()
}

#[test]
fn every_served_document_in_the_corpus_deserializes() {
    let Some(docs) = corpus() else {
        return;
    };
    let loaded = served(&docs);
    let count = |k: IstioKind| loaded.iter().filter(|(_, r)| r.kind() == k).count();
    // The corpus as shipped: 126 VirtualServices, 28 DestinationRules, 54 AuthorizationPolicies
    // (its only PeerAuthentication file is the CRD itself).
    assert_eq!(count(IstioKind::VirtualService), 126);
    assert_eq!(count(IstioKind::DestinationRule), 28);
    assert_eq!(count(IstioKind::AuthorizationPolicy), 54);
    for (d, r) in &loaded {
        assert_eq!(r.kind().name(), d.kind);
        assert_eq!(r.name(), d.name, "{}", d.file);
    }
}

#[test]
fn unserved_kinds_in_the_corpus_are_reported_not_loaded() {
    let Some(docs) = corpus() else {
        return;
    };
    let mut unserved = 0;
    for d in &docs {
        match kind_of(&d.api_version, &d.kind) {
            KindLookup::Served(_) => {}
            KindLookup::Unserved { message } => {
                unserved += 1;
                assert!(
                    message.contains(&d.kind) && message.contains("not served by meshctl"),
                    "{message}"
                );
                let err = IstioResource::from_value(&d.api_version, &d.kind, d.value.clone())
                    .expect_err("unserved kind must not load");
                assert_eq!(err.path, "kind");
                assert_eq!(err.message, message);
            }
            other => panic!("{} {}/{}: {other:?}", d.file, d.kind, d.name),
        }
    }
    // Gateways, Services, Deployments, Pods, Namespaces, Nodes, Gateway API, CRD.
    assert!(unserved >= 50, "{unserved}");
}

#[test]
fn corpus_round_trips_through_serialization() {
    let Some(docs) = corpus() else {
        return;
    };
    for (d, r) in served(&docs) {
        let yaml = meshapi::yaml::to_value(&r).expect("serialize");
        let back = IstioResource::from_value(&d.api_version, &d.kind, yaml).unwrap_or_else(|e| {
            panic!("{} {}: re-read: {}: {}", d.file, d.name, e.path, e.message)
        });
        assert_eq!(back, r, "{} {}", d.file, d.name);
        let json = serde_json::to_string(&r).expect("json");
        assert!(!json.contains("null"), "None fields are skipped: {json}");
    }
}

/// Every `validate()` error in the corpus: (file, Kind/name, path, start of message). Anything
/// else, or anything missing, fails the test.
const EXPECTED_CORPUS_ERRORS: &[(&str, &str, &str, &str)] = &[
    (
        "samples/bookinfo-gateway.yaml",
        "VirtualService/bookinfo",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "bookinfo-gateway""#,
    ),
    (
        "samples/certmanager-gateway.yaml",
        "VirtualService/cert-manager",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "cert-manager-gateway""#,
    ),
    (
        "samples/helloworld-gateway.yaml",
        "VirtualService/helloworld",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "helloworld-gateway""#,
    ),
    (
        "authz-policies/http-allow-full-rule-in.yaml",
        "AuthorizationPolicy/httpbin-1",
        "spec.rules[1].when[13].key",
        r#"not supported by meshctl: when key "experimental.envoy.filters.a.b[c]""#,
    ),
    (
        "authz-policies/http-custom-bad-multiple-providers-in.yaml",
        "AuthorizationPolicy/httpbin-1",
        "spec.action",
        "not supported by meshctl: action CUSTOM",
    ),
    (
        "authz-policies/http-custom-bad-multiple-providers-in.yaml",
        "AuthorizationPolicy/httpbin-1",
        "spec.provider",
        "not supported by meshctl: provider",
    ),
    (
        "authz-policies/http-custom-bad-multiple-providers-in.yaml",
        "AuthorizationPolicy/httpbin-2",
        "spec.action",
        "not supported by meshctl: action CUSTOM",
    ),
    (
        "authz-policies/http-custom-bad-multiple-providers-in.yaml",
        "AuthorizationPolicy/httpbin-2",
        "spec.provider",
        "not supported by meshctl: provider",
    ),
    (
        "authz-policies/http-custom-simple-http-in.yaml",
        "AuthorizationPolicy/httpbin-1",
        "spec.action",
        "not supported by meshctl: action CUSTOM",
    ),
    (
        "authz-policies/http-custom-simple-http-in.yaml",
        "AuthorizationPolicy/httpbin-1",
        "spec.provider",
        "not supported by meshctl: provider",
    ),
    (
        "authz-policies/http-custom-simple-http-in.yaml",
        "AuthorizationPolicy/httpbin-2",
        "spec.action",
        "not supported by meshctl: action CUSTOM",
    ),
    (
        "authz-policies/http-custom-simple-http-in.yaml",
        "AuthorizationPolicy/httpbin-2",
        "spec.provider",
        "not supported by meshctl: provider",
    ),
    (
        "authz-policies/tcp-audit-both-http-tcp-in.yaml",
        "AuthorizationPolicy/httpbin-audit",
        "spec.rules[0].when[12].key",
        r#"not supported by meshctl: when key "experimental.envoy.filters.a.b[c]""#,
    ),
    (
        "authz-policies/tcp-custom-both-http-tcp-in.yaml",
        "AuthorizationPolicy/httpbin-deny",
        "spec.action",
        "not supported by meshctl: action CUSTOM",
    ),
    (
        "authz-policies/tcp-custom-both-http-tcp-in.yaml",
        "AuthorizationPolicy/httpbin-deny",
        "spec.provider",
        "not supported by meshctl: provider",
    ),
    (
        "authz-policies/tcp-custom-only-http-in.yaml",
        "AuthorizationPolicy/httpbin-1",
        "spec.action",
        "not supported by meshctl: action CUSTOM",
    ),
    (
        "authz-policies/tcp-custom-only-http-in.yaml",
        "AuthorizationPolicy/httpbin-1",
        "spec.provider",
        "not supported by meshctl: provider",
    ),
    (
        "authz-policies/tcp-custom-only-http-in.yaml",
        "AuthorizationPolicy/httpbin-2",
        "spec.action",
        "not supported by meshctl: action CUSTOM",
    ),
    (
        "authz-policies/tcp-custom-only-http-in.yaml",
        "AuthorizationPolicy/httpbin-2",
        "spec.provider",
        "not supported by meshctl: provider",
    ),
    (
        "authz-policies/tcp-deny-both-http-tcp-in.yaml",
        "AuthorizationPolicy/httpbin-deny",
        "spec.rules[10].when[12].key",
        r#"not supported by meshctl: when key "experimental.envoy.filters.a.b[c]""#,
    ),
    (
        "analyzer-inputs/virtualservice_conflictingmeshgatewayhosts.yaml",
        "VirtualService/reviews",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-ingressgateway""#,
    ),
    (
        "analyzer-inputs/virtualservice_conflictingmeshgatewayhosts.yaml",
        "VirtualService/ratings",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-ingressgateway""#,
    ),
    (
        "analyzer-inputs/virtualservice_conflictingmeshgatewayhosts.yaml",
        "VirtualService/ratings",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-ingressgateway""#,
    ),
    (
        "analyzer-inputs/virtualservice_conflictingmeshgatewayhosts.yaml",
        "VirtualService/ratings",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-ingressgateway""#,
    ),
    (
        "analyzer-inputs/virtualservice_destinationhosts.yaml",
        "VirtualService/reviews",
        "spec.hosts",
        "not supported by meshctl: a VirtualService without hosts",
    ),
    (
        "analyzer-inputs/virtualservice_destinationhosts.yaml",
        "VirtualService/reviews-bogushost",
        "spec.hosts",
        "not supported by meshctl: a VirtualService without hosts",
    ),
    (
        "analyzer-inputs/virtualservice_destinationhosts.yaml",
        "VirtualService/reviews-bogushost",
        "spec.http[0].route[0].destination",
        "destination is required",
    ),
    (
        "analyzer-inputs/virtualservice_destinationhosts.yaml",
        "VirtualService/reviews-bogushost",
        "spec.http[0].route",
        "the total weight of the destinations is 0, so no traffic can be routed",
    ),
    (
        "analyzer-inputs/virtualservice_destinationhosts.yaml",
        "VirtualService/reviews-fqdn",
        "spec.hosts",
        "not supported by meshctl: a VirtualService without hosts",
    ),
    (
        "analyzer-inputs/virtualservice_destinationhosts.yaml",
        "VirtualService/reviews-external",
        "spec.hosts",
        "not supported by meshctl: a VirtualService without hosts",
    ),
    (
        "analyzer-inputs/virtualservice_destinationhosts.yaml",
        "VirtualService/reviews-bookinfo-eu",
        "spec.hosts",
        "not supported by meshctl: a VirtualService without hosts",
    ),
    (
        "analyzer-inputs/virtualservice_destinationhosts.yaml",
        "VirtualService/reviews-bookinfo-eu-wildcard",
        "spec.hosts",
        "not supported by meshctl: a VirtualService without hosts",
    ),
    (
        "analyzer-inputs/virtualservice_destinationhosts.yaml",
        "VirtualService/reviews-bookinfo-other",
        "spec.hosts",
        "not supported by meshctl: a VirtualService without hosts",
    ),
    (
        "analyzer-inputs/virtualservice_destinationhosts.yaml",
        "VirtualService/reviews-mirror",
        "spec.hosts",
        "not supported by meshctl: a VirtualService without hosts",
    ),
    (
        "analyzer-inputs/virtualservice_destinationhosts.yaml",
        "VirtualService/reviews-mirror-bogushost",
        "spec.hosts",
        "not supported by meshctl: a VirtualService without hosts",
    ),
    (
        "analyzer-inputs/virtualservice_destinationhosts.yaml",
        "VirtualService/reviews-bogusport",
        "spec.hosts",
        "not supported by meshctl: a VirtualService without hosts",
    ),
    (
        "analyzer-inputs/virtualservice_destinationhosts.yaml",
        "VirtualService/reviews-2port-missing",
        "spec.hosts",
        "not supported by meshctl: a VirtualService without hosts",
    ),
    (
        "analyzer-inputs/virtualservice_destinationhosts.yaml",
        "VirtualService/reviews-2port-present",
        "spec.hosts",
        "not supported by meshctl: a VirtualService without hosts",
    ),
    (
        "analyzer-inputs/virtualservice_destinationhosts.yaml",
        "VirtualService/vs-to-extporto-serviceentry",
        "spec.hosts",
        "not supported by meshctl: a VirtualService without hosts",
    ),
    (
        "analyzer-inputs/virtualservice_destinationrules.yaml",
        "VirtualService/reviews",
        "spec.hosts",
        "not supported by meshctl: a VirtualService without hosts",
    ),
    (
        "analyzer-inputs/virtualservice_destinationrules.yaml",
        "VirtualService/reviews-bogussubset",
        "spec.hosts",
        "not supported by meshctl: a VirtualService without hosts",
    ),
    (
        "analyzer-inputs/virtualservice_destinationrules.yaml",
        "VirtualService/reviews-fqdn",
        "spec.hosts",
        "not supported by meshctl: a VirtualService without hosts",
    ),
    (
        "analyzer-inputs/virtualservice_destinationrules.yaml",
        "VirtualService/reviews-mirror",
        "spec.hosts",
        "not supported by meshctl: a VirtualService without hosts",
    ),
    (
        "analyzer-inputs/virtualservice_destinationrules.yaml",
        "VirtualService/reviews-mirror-bogussubset",
        "spec.hosts",
        "not supported by meshctl: a VirtualService without hosts",
    ),
    (
        "analyzer-inputs/virtualservice_dupmatches.yaml",
        "VirtualService/duplicate-tcp-match",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "tcp-echo-gateway""#,
    ),
    (
        "analyzer-inputs/virtualservice_dupmatches.yaml",
        "VirtualService/duplicate-empty-tcp",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "tcp-echo-gateway""#,
    ),
    (
        "analyzer-inputs/virtualservice_dupmatches.yaml",
        "VirtualService/almost-duplicate-tcp-match",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "tcp-echo-gateway""#,
    ),
    (
        "analyzer-inputs/virtualservice_dupmatches.yaml",
        "VirtualService/tls-routing",
        "spec.tls",
        "not supported by meshctl: tls",
    ),
    (
        "analyzer-inputs/virtualservice_dupmatches.yaml",
        "VirtualService/tls-routing-almostmatch",
        "spec.tls",
        "not supported by meshctl: tls",
    ),
    (
        "analyzer-inputs/virtualservice_gateways.yaml",
        "VirtualService/httpbin",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "httpbin-gateway""#,
    ),
    (
        "analyzer-inputs/virtualservice_gateways.yaml",
        "VirtualService/httpbin",
        "spec",
        "http, tcp or tls must be provided in a VirtualService",
    ),
    (
        "analyzer-inputs/virtualservice_gateways.yaml",
        "VirtualService/httpbin-bogus",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "httpbin-gateway-bogus""#,
    ),
    (
        "analyzer-inputs/virtualservice_gateways.yaml",
        "VirtualService/httpbin-bogus",
        "spec",
        "http, tcp or tls must be provided in a VirtualService",
    ),
    (
        "analyzer-inputs/virtualservice_gateways.yaml",
        "VirtualService/httpbin-mesh",
        "spec.hosts[0]",
        "wildcard host * is not allowed for a VirtualService bound to the mesh; name the service",
    ),
    (
        "analyzer-inputs/virtualservice_gateways.yaml",
        "VirtualService/httpbin-mesh",
        "spec",
        "http, tcp or tls must be provided in a VirtualService",
    ),
    (
        "analyzer-inputs/virtualservice_gateways.yaml",
        "VirtualService/cross-test",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "another/crossnamespace-gw""#,
    ),
    (
        "analyzer-inputs/virtualservice_gateways.yaml",
        "VirtualService/cross-test",
        "spec",
        "http, tcp or tls must be provided in a VirtualService",
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway.yaml",
        "VirtualService/testing-service-01-test-01",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-01-test-01""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway.yaml",
        "VirtualService/testing-service-02-test-01",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-01-test-01""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway.yaml",
        "VirtualService/testing-service-01-test-02",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-01-test-02""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway.yaml",
        "VirtualService/testing-service-02-test-02",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-01-test-02""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway.yaml",
        "VirtualService/testing-service-01-test-03",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-01-test-03""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway.yaml",
        "VirtualService/testing-service-01-test-03",
        "spec.gateways[1]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-02-test-03""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway.yaml",
        "VirtualService/testing-service-02-test-03",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-01-test-03""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway.yaml",
        "VirtualService/testing-service-02-test-03",
        "spec.gateways[1]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-02-test-03""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway.yaml",
        "VirtualService/testing-service-01-test-04",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-01-test-04""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway.yaml",
        "VirtualService/testing-service-02-test-04",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-01-test-04""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway.yaml",
        "VirtualService/testing-service-03-test-04",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-01-test-04""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway_beta.yaml",
        "VirtualService/testing-service-01-test-01",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-01-test-01""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway_beta.yaml",
        "VirtualService/testing-service-02-test-01",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-01-test-01""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway_beta.yaml",
        "VirtualService/testing-service-01-test-02",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-01-test-02""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway_beta.yaml",
        "VirtualService/testing-service-02-test-02",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-01-test-02""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway_beta.yaml",
        "VirtualService/testing-service-01-test-03",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-01-test-03""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway_beta.yaml",
        "VirtualService/testing-service-01-test-03",
        "spec.gateways[1]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-02-test-03""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway_beta.yaml",
        "VirtualService/testing-service-02-test-03",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-01-test-03""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway_beta.yaml",
        "VirtualService/testing-service-02-test-03",
        "spec.gateways[1]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-02-test-03""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway_beta.yaml",
        "VirtualService/testing-service-01-test-04",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-01-test-04""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway_beta.yaml",
        "VirtualService/testing-service-02-test-04",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-01-test-04""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway_beta.yaml",
        "VirtualService/testing-service-03-test-04",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-01-test-04""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway_with_ns_prefix.yaml",
        "VirtualService/testing-service-01-test-01",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway_with_ns_prefix.yaml",
        "VirtualService/testing-service-01-test-01",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway_with_ns_prefix.yaml",
        "VirtualService/testing-service-01-test-02",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-2""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway_with_ns_prefix.yaml",
        "VirtualService/testing-service-01-test-02",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-2""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway_with_ns_prefix.yaml",
        "VirtualService/testing-service-01-test-03",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-3""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway_with_ns_prefix.yaml",
        "VirtualService/testing-service-01-test-03",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-3""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway_with_ns_prefix.yaml",
        "VirtualService/testing-service-01-test-04",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-4""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway_with_ns_prefix.yaml",
        "VirtualService/testing-service-01-test-04",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-4""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway_with_ns_prefix_beta.yaml",
        "VirtualService/testing-service-01-test-01",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway_with_ns_prefix_beta.yaml",
        "VirtualService/testing-service-01-test-01",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway_with_ns_prefix_beta.yaml",
        "VirtualService/testing-service-01-test-02",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-2""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway_with_ns_prefix_beta.yaml",
        "VirtualService/testing-service-01-test-02",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-2""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway_with_ns_prefix_beta.yaml",
        "VirtualService/testing-service-01-test-03",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-3""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway_with_ns_prefix_beta.yaml",
        "VirtualService/testing-service-01-test-03",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-3""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway_with_ns_prefix_beta.yaml",
        "VirtualService/testing-service-01-test-04",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-4""#,
    ),
    (
        "analyzer-inputs/virtualservice_host_not_found_gateway_with_ns_prefix_beta.yaml",
        "VirtualService/testing-service-01-test-04",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-4""#,
    ),
    (
        "analyzer-inputs/virtualservice_internal_gateway_ref.yaml",
        "VirtualService/httpbin",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-ingress/gateway~istio-autogenerated-k8s-gateway~foo""#,
    ),
    (
        "analyzer-inputs/virtualservice_jwtclaimroute.yaml",
        "VirtualService/foo",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "foo-gateway""#,
    ),
    (
        "analyzer-inputs/virtualservice_jwtclaimroute.yaml",
        "VirtualService/foo",
        "spec.http[0].match[0].headers.@request.auth.claims.foo",
        r#"not supported by meshctl: header "@request.auth.claims.foo""#,
    ),
    (
        "analyzer-inputs/virtualservice_kubernetes_gateways.yaml",
        "VirtualService/my-vs",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "default/my-gateway""#,
    ),
    (
        "analyzer-inputs/virtualservice_kubernetes_gateways.yaml",
        "VirtualService/my-vs-host-mismatch",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "default/my-gateway""#,
    ),
    (
        "analyzer-inputs/virtualservice_route_rule_no_effects_ingress.yaml",
        "VirtualService/testing-service-01-test-01",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-01-test-01""#,
    ),
    (
        "analyzer-inputs/virtualservice_route_rule_no_effects_ingress.yaml",
        "VirtualService/testing-service-02-test-02",
        "spec.gateways[0]",
        r#"not supported by meshctl: gateway "istio-system/testing-gateway-02-test-02""#,
    ),
    (
        "analyzer-inputs/destinationrule-simple-destination-credentialname-selector.yaml",
        "DestinationRule/db-tls",
        "spec.trafficPolicy.tls.credentialName",
        "not supported by meshctl: tls.credentialName (no Kubernetes secrets",
    ),
    (
        "analyzer-inputs/destinationrule-simple-destination-credentialname.yaml",
        "DestinationRule/db-tls",
        "spec.trafficPolicy.tls.credentialName",
        "not supported by meshctl: tls.credentialName (no Kubernetes secrets",
    ),
    (
        "analyzer-inputs/destinationrule-simple-port-credentialname-selector.yaml",
        "DestinationRule/db-tls",
        "spec.trafficPolicy.portLevelSettings[0].tls.credentialName",
        "not supported by meshctl: tls.credentialName (no Kubernetes secrets",
    ),
    (
        "analyzer-inputs/destinationrule-simple-port-credentialname.yaml",
        "DestinationRule/db-tls",
        "spec.trafficPolicy.portLevelSettings[0].tls.credentialName",
        "not supported by meshctl: tls.credentialName (no Kubernetes secrets",
    ),
    (
        "samples/egress-rule-google-apis.yaml",
        "ServiceEntry/googleapis",
        "spec.resolution",
        "not supported by meshctl: DNS resolution of ServiceEntry endpoints",
    ),
    (
        "analyzer-inputs/authorizationpolicies.yaml",
        "ServiceEntry/istio",
        "spec.hosts[1]",
        "not supported by meshctl: wildcard ServiceEntry hosts",
    ),
    (
        "analyzer-inputs/authorizationpolicies.yaml",
        "ServiceEntry/istio",
        "spec.resolution",
        "not supported by meshctl: DNS resolution of ServiceEntry endpoints",
    ),
    (
        "analyzer-inputs/condition-analyzer.yaml",
        "ServiceEntry/negative-condition-svcEntry",
        "metadata.name",
        "invalid name \"negative-condition-svcEntry\"",
    ),
    (
        "analyzer-inputs/condition-analyzer.yaml",
        "ServiceEntry/negative-condition-svcEntry",
        "spec.hosts",
        "at least one host is required",
    ),
    (
        "analyzer-inputs/condition-analyzer.yaml",
        "ServiceEntry/negative-condition-svcEntry",
        "spec.resolution",
        "not supported by meshctl: resolution NONE",
    ),
    (
        "analyzer-inputs/virtualservice_destinationhosts.yaml",
        "ServiceEntry/external-reviews",
        "spec.resolution",
        "not supported by meshctl: resolution NONE",
    ),
    (
        "analyzer-inputs/virtualservice_destinationhosts.yaml",
        "ServiceEntry/eu-wildcard",
        "spec.hosts[0]",
        "not supported by meshctl: wildcard ServiceEntry hosts",
    ),
    (
        "analyzer-inputs/virtualservice_destinationhosts.yaml",
        "ServiceEntry/eu-wildcard",
        "spec.resolution",
        "not supported by meshctl: resolution NONE",
    ),
    (
        "analyzer-inputs/virtualservice_destinationhosts.yaml",
        "ServiceEntry/service-entry-ignore",
        "spec.hosts[0]",
        "hostname cannot be wildcard",
    ),
    (
        "analyzer-inputs/virtualservice_destinationhosts.yaml",
        "ServiceEntry/service-entry-ignore",
        "spec.exportTo",
        "not supported by meshctl: ServiceEntry exportTo",
    ),
    (
        "analyzer-inputs/virtualservice_destinationhosts.yaml",
        "ServiceEntry/service-entry-ignore",
        "spec.resolution",
        "not supported by meshctl: resolution NONE",
    ),
    (
        "analyzer-inputs/virtualservice_destinationhosts.yaml",
        "ServiceEntry/service-entry-other",
        "spec.exportTo",
        "not supported by meshctl: ServiceEntry exportTo",
    ),
    (
        "analyzer-inputs/virtualservice_destinationhosts.yaml",
        "ServiceEntry/service-entry-other",
        "spec.resolution",
        "not supported by meshctl: resolution NONE",
    ),
    (
        "analyzer-inputs/virtualservice_destinationhosts.yaml",
        "ServiceEntry/service-entry-exported",
        "spec.exportTo",
        "not supported by meshctl: ServiceEntry exportTo",
    ),
    (
        "analyzer-inputs/virtualservice_destinationhosts.yaml",
        "ServiceEntry/service-entry-exported",
        "spec.resolution",
        "not supported by meshctl: resolution NONE",
    ),
];

#[test]
fn corpus_validates_with_exactly_the_expected_errors() {
    let Some(docs) = corpus() else {
        return;
    };
    let mut expected: Vec<(&str, &str, &str, &str)> = EXPECTED_CORPUS_ERRORS.to_vec();
    let mut unexpected = Vec::new();
    for (d, r) in served(&docs) {
        let res = format!("{}/{}", d.kind, d.name);
        for e in r.validate() {
            let pos = expected.iter().position(|(f, n, p, m)| {
                *f == d.file && *n == res && *p == e.path && e.message.starts_with(m)
            });
            match pos {
                Some(i) => {
                    expected.remove(i);
                }
                None => unexpected.push(format!("{} {res} {}: {}", d.file, e.path, e.message)),
            }
        }
    }
    assert!(
        unexpected.is_empty(),
        "unexpected errors:\n{}",
        unexpected.join("\n")
    );
    assert!(
        expected.is_empty(),
        "expected errors not reported:\n{expected:#?}"
    );
}

#[test]
fn corpus_custom_policies_say_custom_is_not_supported() {
    let Some(docs) = corpus() else {
        return;
    };
    let mut custom = 0;
    for (d, r) in served(&docs) {
        let IstioResource::AuthorizationPolicy(ap) = &r else {
            continue;
        };
        if ap.spec.action() != Action::Custom {
            continue;
        }
        custom += 1;
        let errs = r.validate();
        let action = errs
            .iter()
            .find(|e| e.path == "spec.action")
            .unwrap_or_else(|| panic!("{}", d.file));
        assert!(
            action
                .message
                .starts_with("not supported by meshctl: action CUSTOM"),
            "{}",
            action.message
        );
        let provider = errs
            .iter()
            .find(|e| e.path == "spec.provider")
            .expect("provider refused");
        assert!(
            provider.message.contains("CUSTOM is not supported"),
            "{}",
            provider.message
        );
    }
    assert_eq!(custom, 7);
}

#[test]
fn kind_of_classifies_versions_and_kinds() {
    for v in ["v1", "v1beta1", "v1alpha3"] {
        assert_eq!(
            kind_of(&format!("networking.istio.io/{v}"), "VirtualService"),
            KindLookup::Served(IstioKind::VirtualService)
        );
        assert_eq!(
            kind_of(&format!("networking.istio.io/{v}"), "DestinationRule"),
            KindLookup::Served(IstioKind::DestinationRule)
        );
        assert_eq!(
            kind_of(&format!("networking.istio.io/{v}"), "Sidecar"),
            KindLookup::Served(IstioKind::Sidecar)
        );
    }
    for v in ["v1", "v1beta1"] {
        assert_eq!(
            kind_of(&format!("security.istio.io/{v}"), "PeerAuthentication"),
            KindLookup::Served(IstioKind::PeerAuthentication)
        );
        assert_eq!(
            kind_of(&format!("security.istio.io/{v}"), "AuthorizationPolicy"),
            KindLookup::Served(IstioKind::AuthorizationPolicy)
        );
    }
    let KindLookup::UnservedVersion { kind, message } =
        kind_of("security.istio.io/v1alpha1", "AuthorizationPolicy")
    else {
        panic!("v1alpha1 AuthorizationPolicy is not served")
    };
    assert_eq!(kind, IstioKind::AuthorizationPolicy);
    assert!(
        message.contains("security.istio.io/v1, security.istio.io/v1beta1"),
        "{message}"
    );
    assert!(matches!(
        kind_of("security.istio.io/v1", "VirtualService"),
        KindLookup::UnservedVersion {
            kind: IstioKind::VirtualService,
            ..
        }
    ));

    let unserved = [
        ("networking.istio.io/v1", "Gateway"),
        ("networking.istio.io/v1", "WorkloadEntry"),
        ("networking.istio.io/v1alpha3", "EnvoyFilter"),
        ("networking.istio.io/v1beta1", "ProxyConfig"),
        ("extensions.istio.io/v1alpha1", "WasmPlugin"),
        ("v1", "Service"),
        ("v1", "Namespace"),
        ("v1", "ConfigMap"),
        ("apps/v1", "Deployment"),
        ("gateway.networking.k8s.io/v1", "Gateway"),
        ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ];
    for (av, k) in unserved {
        let KindLookup::Unserved { message } = kind_of(av, k) else {
            panic!("{av} {k}")
        };
        assert!(
            message.contains(k) && message.contains("not served by meshctl:"),
            "{message}"
        );
        assert!(!message.contains('\n'));
    }
    assert!(matches!(
        kind_of("example.com/v1", "Widget"),
        KindLookup::Unknown { .. }
    ));
    let KindLookup::Unknown { message } = kind_of("networking.istio.io/v1", "VirtualServce") else {
        panic!()
    };
    assert!(
        message.contains("VirtualService"),
        "lists what is served: {message}"
    );
    assert!(matches!(kind_of("", ""), KindLookup::Unknown { .. }));
}

fn vs_value(spec: &str) -> meshapi::yaml::Value {
    let doc = format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n{}",
        spec.lines().map(|l| format!("  {l}\n")).collect::<String>()
    );
    meshapi::yaml::from_str(&doc).expect("test yaml")
}

fn load_vs(spec: &str) -> Result<VirtualService, meshapi::diag::FieldError> {
    match IstioResource::from_value("networking.istio.io/v1", "VirtualService", vs_value(spec))? {
        IstioResource::VirtualService(vs) => Ok(vs),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_fields_report_the_path_and_serde_message() {
    let cases = [
        (
            "hosts: [reviews]\nhttp:\n- route: [{destination: {host: reviews}}]\n  retries:\n    attempts: 3\n    timeout: 2s\n",
            "spec.http[0].retries.timeout",
            "unknown field `timeout`, expected one of `attempts`, `perTryTimeout`, `retryOn`",
        ),
        (
            "hosts: [reviews]\nhttp:\n- route: [{destination: {host: reviews}}]\n  retires: {attempts: 3}\n",
            "spec.http[0].retires",
            "unknown field `retires`, expected one of",
        ),
        (
            "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews}\n    loadBalancer: {simple: RANDOM}\n",
            "spec.http[0].route[0].loadBalancer",
            "unknown field `loadBalancer`, expected one of `destination`, `weight`, `headers`",
        ),
        ("hostz: [reviews]\n", "spec.hostz", "unknown field `hostz`"),
    ];
    for (spec, path, msg) in cases {
        let err = load_vs(spec).expect_err(spec);
        assert_eq!(err.path, path);
        assert!(err.message.starts_with(msg), "{}", err.message);
    }
    // Unknown top-level and metadata fields too.
    let mut v = vs_value("hosts: [a]\n");
    v.as_mapping_mut()
        .expect("map")
        .insert("specs".into(), meshapi::yaml::Value::Null);
    let err = IstioResource::from_value("networking.istio.io/v1", "VirtualService", v)
        .expect_err("specs");
    assert_eq!(err.path, "specs");
    assert!(
        err.message
            .contains("expected one of `apiVersion`, `kind`, `metadata`, `spec`, `status`")
    );
}

#[test]
fn bad_values_report_the_field_path() {
    let cases = [
        (
            "hosts: [r]\nhttp:\n- timeout: 10\n  route: [{destination: {host: r}}]\n",
            "spec.http[0].timeout",
            "needs a unit",
        ),
        (
            "hosts: [r]\nhttp:\n- timeout: -1s\n  route: [{destination: {host: r}}]\n",
            "spec.http[0].timeout",
            "negative",
        ),
        (
            "hosts: [r]\nhttp:\n- route: [{destination: {host: r, port: {number: 70000}}}]\n",
            "spec.http[0].route[0].destination.port.number",
            "invalid port 70000",
        ),
        (
            "hosts: [r]\nhttp:\n- route: [{destination: {host: r}}]\n  retries: {attempts: 2, retryOn: '5xx,bogus'}\n",
            "spec.http[0].retries.retryOn",
            "\"bogus\" is not a valid retryOn condition",
        ),
        (
            "hosts: [r]\nhttp:\n- route: [{destination: {host: r}}]\n  mirrorPercentage: {value: 150}\n",
            "spec.http[0].mirrorPercentage.value",
            "must be between 0 and 100",
        ),
        (
            "hosts: [r]\nhttp:\n- match: [{sourceLabels: {app: '*'}}]\n  route: [{destination: {host: r}}]\n",
            "spec.http[0].match[0].sourceLabels",
            "wildcard not allowed in label value match",
        ),
        (
            "hosts: [r]\nhttp:\n- route: [{destination: {subset: v1}}]\n",
            "spec.http[0].route[0].destination",
            "missing field `host`",
        ),
    ];
    for (spec, path, msg) in cases {
        let err = load_vs(spec).expect_err(spec);
        assert_eq!(err.path, path, "{spec}");
        assert!(err.message.contains(msg), "{spec}: {}", err.message);
    }
    // Enums list their values.
    let dr: meshapi::yaml::Value = meshapi::yaml::from_str(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec:\n  host: r\n  trafficPolicy: {loadBalancer: {simple: FASTEST}}\n",
    )
    .expect("yaml");
    let err = IstioResource::from_value("networking.istio.io/v1", "DestinationRule", dr)
        .expect_err("enum");
    assert_eq!(err.path, "spec.trafficPolicy.loadBalancer.simple");
    assert!(
        err.message
            .contains("unknown variant `FASTEST`, expected one of `UNSPECIFIED`, `LEAST_CONN`"),
        "{}",
        err.message
    );
}

#[test]
fn status_is_accepted_and_dropped() {
    let mut v = vs_value("hosts: [r]\nhttp:\n- route: [{destination: {host: r}}]\n");
    let status: meshapi::yaml::Value = meshapi::yaml::from_str(
        "conditions: [{type: Reconciled, status: 'True'}]\nobservedGeneration: 3\n",
    )
    .expect("yaml");
    v.as_mapping_mut()
        .expect("map")
        .insert("status".into(), status);
    let r =
        IstioResource::from_value("networking.istio.io/v1", "VirtualService", v).expect("loads");
    let out = meshapi::yaml::to_string(&r).expect("serialize");
    assert!(!out.contains("status"), "{out}");
    assert!(r.validate().is_empty(), "{:?}", r.validate());
}

#[test]
fn kubernetes_metadata_fields_are_accepted() {
    let v: meshapi::yaml::Value = meshapi::yaml::from_str(
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: prod\n  uid: 0b8f4f0e-1\n  resourceVersion: '12345'\n  generation: 2\n  creationTimestamp: '2024-01-01T00:00:00Z'\n  labels: {team: a}\n  annotations: {note: x}\n  finalizers: [x]\n  ownerReferences: [{apiVersion: v1, kind: ConfigMap, name: owner, uid: u, controller: true}]\n  managedFields: [{manager: kubectl, operation: Apply}]\nspec:\n  mtls: {mode: STRICT}\n",
    )
    .expect("yaml");
    let r = IstioResource::from_value("security.istio.io/v1beta1", "PeerAuthentication", v)
        .expect("loads");
    assert_eq!(r.name(), "default");
    assert_eq!(r.namespace(), Some("prod"));
    assert_eq!(r.metadata().generation, Some(2));
    assert!(r.validate().is_empty(), "{:?}", r.validate());
    // The namespace is left for the loader to default.
    let v: meshapi::yaml::Value = meshapi::yaml::from_str(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a}\n",
    )
    .expect("yaml");
    let r =
        IstioResource::from_value("security.istio.io/v1", "PeerAuthentication", v).expect("loads");
    assert_eq!(r.namespace(), None);
}

#[test]
fn retry_defaults_are_istios() {
    assert_eq!(HttpRetry::DEFAULT_ATTEMPTS, 2);
    assert_eq!(
        HttpRetry::DEFAULT_RETRY_ON,
        "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
    );
    assert_eq!(
        HttpRetry::default_retry_on().to_string(),
        HttpRetry::DEFAULT_RETRY_ON
    );
    assert_eq!(
        HttpRetry::default_retry_on(),
        HttpRetry::DEFAULT_RETRY_ON.parse().expect("default parses")
    );

    // No retries: Istio's default policy.
    let vs = load_vs("hosts: [r]\nhttp:\n- route: [{destination: {host: r}}]\n").expect("loads");
    let p = vs.spec.http[0].retry_policy().expect("default policy");
    assert_eq!(p, RetryPolicy::istio_default());
    // The proxy's own default (a config without a route table) is the same policy.
    assert_eq!(
        meshmodel::compile::routes::retry_policy(&p),
        meshapi::traffic::RetryPolicy::istio_default()
    );
    assert_eq!(p.attempts, 2);
    // Since Istio 1.24 an application's 503 is not retried by default.
    assert!(p.retriable_status_codes.is_empty());
    assert!(p.ignore_previous_hosts);
    assert!(p.retry_on.contains(RetryCondition::ConnectFailure));

    // retries given without attempts: disabled, as in Istio.
    let route = |retries: &str| -> HttpRoute {
        let vs = load_vs(&format!(
            "hosts: [r]\nhttp:\n- route: [{{destination: {{host: r}}}}]\n  retries: {retries}\n"
        ))
        .expect("loads");
        vs.spec.http[0].clone()
    };
    assert_eq!(route("{}").retry_policy(), None);
    assert_eq!(route("{attempts: 0}").retry_policy(), None);

    // Attempts given: the rest keeps Istio's defaults.
    let p = route("{attempts: 5, perTryTimeout: 2s}")
        .retry_policy()
        .expect("enabled");
    assert_eq!(p.attempts, 5);
    assert_eq!(p.retry_on.to_string(), HttpRetry::DEFAULT_RETRY_ON);
    assert_eq!(
        p.per_try_timeout.map(|d| d.get()),
        Some(std::time::Duration::from_secs(2))
    );

    // Bare status codes become retriable status codes.
    let p = route("{attempts: 3, retryOn: 'gateway-error,502,504'}")
        .retry_policy()
        .expect("enabled");
    assert_eq!(p.retriable_status_codes, vec![502, 504]);
    assert_eq!(
        p.retry_on.to_string(),
        "gateway-error,retriable-status-codes"
    );
}

#[test]
fn mirror_and_fault_percentage_defaults() {
    let vs = load_vs(
        "hosts: [r]\nhttp:\n- route: [{destination: {host: r}}]\n  mirror: {host: shadow}\n- route: [{destination: {host: r}}]\n  mirror: {host: shadow}\n  mirrorPercentage: {value: 12.5}\n- route: [{destination: {host: r}}]\n  mirror: {host: shadow}\n  mirror_percent: 30\n- route: [{destination: {host: r}}]\n  mirrors:\n  - destination: {host: a}\n  - destination: {host: b}\n    percentage: {value: 5}\n",
    )
    .expect("loads");
    assert_eq!(vs.spec.http[0].mirror_percentage(), Percent::HUNDRED);
    assert_eq!(vs.spec.http[1].mirror_percentage().value(), 12.5);
    assert_eq!(vs.spec.http[2].mirror_percentage().value(), 30.0);
    assert_eq!(vs.spec.http[3].mirrors[0].percentage(), Percent::HUNDRED);
    assert_eq!(vs.spec.http[3].mirrors[1].percentage().value(), 5.0);
    // The deprecated snake_case spelling is read and written back as mirrorPercent.
    let out = meshapi::yaml::to_string(&vs).expect("serialize");
    assert!(out.contains("mirrorPercent: 30"), "{out}");

    let vs = load_vs(
        "hosts: [r]\nhttp:\n- route: [{destination: {host: r}}]\n  fault:\n    delay: {fixedDelay: 5s}\n    abort: {httpStatus: 503}\n- route: [{destination: {host: r}}]\n  fault:\n    delay: {fixedDelay: 5s, percent: 20}\n    abort: {httpStatus: 503, percentage: {value: 0.5}}\n- route: [{destination: {host: r}}]\n  fault:\n    delay: {fixedDelay: 5s, percentage: {}}\n",
    )
    .expect("loads");
    let fault = |i: usize| vs.spec.http[i].fault.clone().expect("fault");
    assert_eq!(
        fault(0).delay.expect("delay").percentage(),
        Percent::ZERO,
        "absent percentage injects nothing"
    );
    assert_eq!(fault(0).abort.expect("abort").percentage(), Percent::ZERO);
    assert_eq!(fault(1).delay.expect("delay").percentage().value(), 20.0);
    assert_eq!(fault(1).abort.expect("abort").percentage().value(), 0.5);
    assert_eq!(
        fault(2).delay.expect("delay").percentage(),
        Percent::ZERO,
        "an empty Percent is 0"
    );
}

#[test]
fn weight_semantics() {
    let vs = load_vs(
        "hosts: [r]\nhttp:\n- route: [{destination: {host: r, subset: v1}, weight: 0}]\n- route:\n  - {destination: {host: r, subset: v1}, weight: 80}\n  - {destination: {host: r, subset: v2}, weight: 20}\n- route:\n  - {destination: {host: r, subset: v1}, weight: 50}\n  - {destination: {host: r, subset: v2}}\n",
    )
    .expect("loads");
    assert_eq!(
        vs.spec.http[0].destination_weights(),
        vec![100],
        "a single destination gets everything"
    );
    assert_eq!(vs.spec.http[1].destination_weights(), vec![80, 20]);
    assert_eq!(
        vs.spec.http[2].destination_weights(),
        vec![50, 0],
        "unset weight is 0"
    );
    assert!(vs.validate().is_empty(), "{:?}", vs.validate());
}
