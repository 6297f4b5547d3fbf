//! RequestAuthentication in the model: what loading refuses (with file:line:column), and what
//! a project compiles to per proxy (scope, Istio's default token locations, jwks over jwksUri),
//! with AuthorizationPolicy's `requestPrincipals` and `request.auth.*` now accepted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshmodel::compile::{CompileInput, DEFAULT_HOST_BASE_PORT, HostPlacement, ProxyKey};

const COMPOSE: &str = concat!(
    "services:\n",
    "  frontend:\n    image: demo/frontend\n    expose: [\"8080\"]\n    labels: {app: frontend}\n",
    "  backend:\n    image: demo/backend\n    expose: [\"8080\"]\n    labels: {app: backend}\n",
);

const JWKS: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

fn load(policies: &str) -> meshmodel::load::Loaded {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("compose.yaml"), COMPOSE).unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), policies).unwrap();
    let loaded =
        meshmodel::load::load(&meshmodel::load::LoadOptions::new(dir.path().to_path_buf()));
    // The files are read by now; keep the directory only as long as the load.
    drop(dir);
    loaded
}

fn ra(spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: default}}\nspec:\n{spec}"
    )
}

#[test]
fn bad_rules_are_refused_at_their_line_and_column() {
    // (spec, path, line, column of the field's key, message fragment); `spec:` is on line 4.
    let cases: &[(&str, &str, usize, usize, &str)] = &[
        (
            "  jwtRules:\n  - issuer: a\n    jwksUri: http://keys/jwks\n    fromHeader: [{name: x}]\n",
            "spec.jwtRules[0].fromHeader",
            8,
            5,
            "unknown field `fromHeader`",
        ),
        (
            "  jwtRules:\n  - jwksUri: http://keys/jwks\n",
            "spec.jwtRules[0].issuer",
            6,
            5,
            "issuer must be set",
        ),
        (
            "  jwtRules:\n  - issuer: a\n    jwksUri: ftp://keys/jwks\n",
            "spec.jwtRules[0].jwksUri",
            7,
            5,
            "must be an http:// or https:// URL",
        ),
        (
            "  jwtRules:\n  - issuer: a\n    jwks: '{\"keys\": []}'\n",
            "spec.jwtRules[0].jwks",
            7,
            5,
            "no RSA, EC (P-256, P-384) or Ed25519 key",
        ),
        (
            "  jwtRules:\n  - issuer: a\n    jwksUri: http://k/j\n    fromHeaders: [{prefix: 'Bearer '}]\n",
            "spec.jwtRules[0].fromHeaders[0].name",
            8,
            19,
            "location header name must be set",
        ),
        (
            "  jwtRules:\n  - issuer: a\n    jwksUri: http://k/j\n    outputClaimToHeaders: [{header: 'bad header', claim: sub}]\n",
            "spec.jwtRules[0].outputClaimToHeaders[0].header",
            8,
            29,
            "invalid header name",
        ),
        (
            "  jwtRules:\n  - issuer: a\n    jwksUri: http://k/j\n    timeout: 0s\n",
            "spec.jwtRules[0].timeout",
            8,
            5,
            "must be a valid duration greater than 1ms",
        ),
        (
            "  jwtRules:\n  - issuer: a\n    jwksUri: http://k/j\n    jwks: '{}'\n",
            "spec.jwtRules[0]",
            6,
            5,
            "only one of jwks or jwksUri can be set",
        ),
        (
            "  jwtRules:\n  - issuer: a\n    jwks_uri: http://k/j\n    presence: REQUIRED\n",
            "spec.jwtRules[0].presence",
            8,
            5,
            "not supported by meshctl: presence REQUIRED",
        ),
        (
            "  jwtRules:\n  - issuer: a\n    jwks_uri: http://k/j\n    spaceDelimitedClaims: [scope]\n",
            "spec.jwtRules[0].spaceDelimitedClaims",
            8,
            5,
            "not supported by meshctl: spaceDelimitedClaims",
        ),
        (
            "  selector: {matchLabels: {app: backend}}\n  targetRef: {kind: Service, name: backend}\n",
            "spec",
            4,
            1,
            "only one of selector, targetRef or targetRefs",
        ),
    ];
    let mut failures = Vec::new();
    for (spec, path, line, column, fragment) in cases {
        let loaded = load(&ra(spec));
        let found = loaded.diagnostics.iter().find(|d| d.path == *path);
        match found {
            Some(d)
                if d.location.line == *line
                    && d.location.column == *column
                    && d.message.contains(fragment) => {}
            _ => failures.push(format!(
                "{path} {line}:{column} {fragment:?}: got {:?}",
                loaded
                    .diagnostics
                    .iter()
                    .map(|d| format!(
                        "{} {}:{} {}",
                        d.path, d.location.line, d.location.column, d.message
                    ))
                    .collect::<Vec<_>>()
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn request_principals_and_request_auth_keys_are_accepted() {
    let ap = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: default}\nspec:\n  rules:\n  - from: [{source: {requestPrincipals: ['iss/*'], notRequestPrincipals: ['*/eve']}}]\n    when: [{key: 'request.auth.claims[a][b]', values: [x]}, {key: request.auth.audiences, values: [y]}, {key: request.auth.presenter, values: [z]}, {key: request.auth.principal, values: ['*']}]\n";
    let loaded = load(ap);
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    let bad = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: default}\nspec:\n  rules:\n  - when: [{key: 'request.auth.claims[a][]', values: [x]}]\n";
    let loaded = load(bad);
    let d = loaded
        .diagnostics
        .iter()
        .find(|d| d.path == "spec.rules[0].when[0].key")
        .unwrap_or_else(|| panic!("{:?}", loaded.diagnostics));
    assert!(d.message.contains("request.auth.claims[name]"), "{d:?}");
    assert_eq!((d.location.line, d.location.column), (6, 13), "{d:?}");
}

/// Compiles every workload's proxy config for `policies`.
fn compile(policies: &str) -> Vec<(String, meshapi::proxy::ProxyConfig)> {
    let loaded = load(policies);
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    let mesh = loaded.mesh;
    let inv = meshmodel::model::Inventory::from_compose(mesh.compose.as_ref());
    let mut vips = meshapi::dns::VipAllocator::new(meshapi::dns::VipRange::default());
    vips.sync(
        inv.services
            .iter()
            .map(|s| (s.namespace.as_str(), s.name.as_str())),
    )
    .unwrap();
    let placement = HostPlacement::new(&inv, DEFAULT_HOST_BASE_PORT);
    let input = CompileInput::new(&mesh, &inv, &vips, &placement, 1);
    ["frontend", "backend"]
        .iter()
        .map(|w| {
            let cfg = meshmodel::compile::compile_proxy(
                &input,
                &ProxyKey {
                    workload: (*w).into(),
                    instance: 0,
                },
            )
            .unwrap();
            assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
            (w.to_string(), cfg)
        })
        .collect()
}

#[test]
fn rules_reach_the_workloads_they_select_with_defaults_written_out() {
    let policies = format!(
        "apiVersion: security.istio.io/v1beta1\nkind: RequestAuthentication\nmetadata: {{name: mesh-wide, namespace: istio-system}}\n\
         spec:\n  jwtRules:\n  - issuer: mesh\n    jwksUri: http://keys.internal/jwks\n---\n\
         apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: backend-only, namespace: default}}\n\
         spec:\n  selector: {{matchLabels: {{app: backend}}}}\n  jwtRules:\n  - issuer: local\n    jwks: '{JWKS}'\n\
         \x20   fromHeaders: [{{name: X-Token}}]\n    outputClaimToHeaders: [{{header: X-Sub, claim: sub}}]\n"
    );
    let configs = compile(&policies);
    let rules = |w: &str| -> Vec<meshapi::authn::JwtRule> {
        configs
            .iter()
            .find(|(n, _)| n == w)
            .and_then(|(_, c)| c.request_authentication.clone())
            .map(|s| s.rules)
            .unwrap_or_default()
    };
    let fe = rules("frontend");
    assert_eq!(fe.len(), 1, "{fe:?}");
    assert_eq!(fe[0].issuer, "mesh");
    assert_eq!(fe[0].source, "istio-system/mesh-wide");
    // Istio's default locations when none is given.
    assert_eq!(fe[0].from_headers.len(), 1);
    assert_eq!(fe[0].from_headers[0].name, "authorization");
    assert_eq!(fe[0].from_headers[0].prefix, "Bearer ");
    assert_eq!(fe[0].from_params, vec!["access_token".to_string()]);
    assert!(!fe[0].forward_original_token);

    let be = rules("backend");
    let issuers: Vec<&str> = be.iter().map(|r| r.issuer.as_str()).collect();
    assert_eq!(issuers, ["mesh", "local"], "root namespace first");
    let local = &be[1];
    assert!(
        local.jwks.is_some() && local.jwks_uri.is_none(),
        "inline keys stay inline"
    );
    assert_eq!(local.from_headers[0].name, "x-token");
    assert_eq!(local.from_headers[0].prefix, "");
    assert!(
        local.from_params.is_empty(),
        "no default param once a location is given"
    );
    assert_eq!(local.output_claim_to_headers[0].header, "x-sub");
}

/// What Istio's API server accepts and meshctl now serves: an `https://` jwksUri, a rule with
/// only `issuer` (OpenID discovery), `timeout` and `presence: OPTIONAL`, compiled as written.
#[test]
fn https_discovery_and_timeout_are_served() {
    let policies = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: default}\n\
         spec:\n  jwtRules:\n  - issuer: https://a.example\n    jwksUri: https://keys.example/jwks\n    timeout: 250ms\n\
         \x20 - issuer: https://idp.example/\n    presence: OPTIONAL\n";
    let configs = compile(policies);
    let rules = configs[0].1.request_authentication.clone().unwrap().rules;
    let sources: Vec<meshapi::authn::KeySource> =
        rules.iter().filter_map(|r| r.key_source()).collect();
    assert_eq!(
        sources,
        [
            meshapi::authn::KeySource::Uri {
                uri: "https://keys.example/jwks".into(),
                timeout: std::time::Duration::from_millis(250),
            },
            meshapi::authn::KeySource::Discovery {
                issuer: "https://idp.example/".into(),
                timeout: meshapi::authn::DEFAULT_JWKS_TIMEOUT,
            },
        ]
    );
    assert_eq!(
        sources[1].first_url(),
        "https://idp.example/.well-known/openid-configuration"
    );
}
