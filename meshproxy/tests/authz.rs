//! Authorization on the inbound side, over real mTLS between two in-process proxies:
//! client -> proxy A (outbound, some identity) -> mTLS -> proxy B (inbound, with a compiled
//! AuthorizationPolicy in its config) -> echo app. Who may call, DENY path rules with path
//! normalization, TCP, a policy swapped under an open keep-alive connection, and the metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use meshapi::authz::{MeshSecurity, PathNormalization, WorkloadPolicy};
use meshmodel::compile::authz::compile_for_workload;
use meshmodel::istio::AuthorizationPolicy;
use meshmodel::model::Workload;
use meshproxy::Bound;
use meshtest::{EchoServer, TcpEcho, assert_eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const VIP: &str = "127.0.0.1:0";

fn vip() -> SocketAddr {
    VIP.parse().unwrap()
}

fn backend_workload(port: u16) -> Workload {
    Workload {
        compose_name: "backend".into(),
        service: "backend".into(),
        namespace: "default".into(),
        service_account: "backend".into(),
        labels: BTreeMap::from([("app".into(), "backend".into())]),
        replicas: 1,
        ports: vec![port],
    }
}

/// Compiles AuthorizationPolicies (as JSON documents) for the backend workload, as the control
/// plane would.
fn compile(
    policies: &[serde_json::Value],
    normalization: PathNormalization,
    port: u16,
) -> WorkloadPolicy {
    let ps: Vec<AuthorizationPolicy> = policies
        .iter()
        .map(|p| serde_json::from_value(p.clone()).expect("policy document"))
        .collect();
    let refs: Vec<&AuthorizationPolicy> = ps.iter().collect();
    let mesh = MeshSecurity {
        path_normalization: normalization,
        ..MeshSecurity::default()
    };
    compile_for_workload(&refs, &backend_workload(port), &mesh).unwrap()
}

fn policy(name: &str, action: &str, rules: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": { "name": name, "namespace": "default" },
        "spec": {
            "selector": { "matchLabels": { "app": "backend" } },
            "action": action,
            "rules": rules,
        }
    })
}

/// The user's example: only the frontend service account may call backend.
fn frontend_only() -> serde_json::Value {
    policy(
        "frontend-only",
        "ALLOW",
        serde_json::json!([{ "from": [{ "source": {
            "principals": ["cluster.local/ns/default/sa/frontend-sa"]
        } }] }]),
    )
}

fn backend_yaml(mesh: &Mesh, port: u16, protocol: &str, mode: &str, revision: u64) -> String {
    format!(
        "{}inbound:\n  - {{ port: {port}, protocol: {protocol}, mode: {mode} }}\n",
        base_yaml(&mesh.identity_yaml("backend"), revision)
    )
}

/// A backend proxy config with an authorization section.
fn backend_cfg(
    mesh: &Mesh,
    port: u16,
    protocol: &str,
    mode: &str,
    revision: u64,
    authz: Option<WorkloadPolicy>,
) -> meshapi::proxy::ProxyConfig {
    let mut cfg = parse(&backend_yaml(mesh, port, protocol, mode, revision));
    cfg.authorization = authz;
    assert!(cfg.validate().is_empty());
    cfg
}

/// A client-side proxy running as service account `sa`, with `backend` at `b`.
async fn client_proxy(mesh: &Mesh, sa: &str, protocol: &str, port: u16, b: &Bound) -> Bound {
    let yaml = client_yaml(
        &mesh.identity_yaml(sa),
        1,
        VIP,
        protocol,
        port,
        &[(b.inbound, "backend")],
    );
    meshproxy::build(parse(&yaml)).await.unwrap()
}

/// The value of the Istio series of `name` whose labels include every one of `labels`.
fn istio_series(b: &Bound, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
    let text = b.handle.metrics().render();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn metric(b: &Bound, series: &str) -> u64 {
    let text = b.handle.metrics().render();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_frontend_sa_may_call_backend() {
    let mesh = Mesh::new();
    let echo = EchoServer::start("backend").await;
    let port = echo.port();
    let authz = compile(&[frontend_only()], PathNormalization::Base, port);
    let b = meshproxy::build(backend_cfg(&mesh, port, "http", "STRICT", 1, Some(authz)))
        .await
        .unwrap();

    let client = http1_client();
    let table: [(&str, u16, &str); 3] = [
        ("frontend-sa", 200, ""),
        ("other-sa", 403, "RBAC: access denied"),
        ("frontend", 403, "RBAC: access denied"),
    ];
    for (sa, want, want_body) in table {
        let a = client_proxy(&mesh, sa, "http", port, &b).await;
        let out = a.outbound(vip()).unwrap();
        let before = echo.completed();
        let (status, headers, body) = get(&client, &format!("http://{out}/api/items")).await;
        assert_eq!(status, want, "{sa}: {body}");
        if want == 403 {
            assert_eq!(body, want_body, "{sa}");
            assert_eq!(headers["x-meshctl-response-flags"], "RBAC", "{sa}");
            assert_eq!(
                echo.completed(),
                before,
                "{sa}: a denied request reached the app"
            );
        } else {
            assert_eq!(headers["x-echo-server"], "backend");
            let seen = echo.last().unwrap();
            assert!(
                seen.headers["x-forwarded-client-cert"]
                    .to_str()
                    .unwrap()
                    .contains(&spiffe(sa)),
                "{seen:?}"
            );
        }
    }

    // Plaintext under STRICT never reaches authorization or the app.
    let before = echo.completed();
    let resp = raw(
        b.inbound,
        b"GET /api/items HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(!resp.contains("200"), "{resp}");
    assert_eq!(echo.completed(), before);

    // Decisions counted by deciding policy.
    assert_eq!(
        metric(
            &b,
            "meshproxy_authz_decisions_total{policy=\"frontend-only.default\",action=\"ALLOW\",result=\"allowed\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            &b,
            "meshproxy_authz_decisions_total{policy=\"none\",action=\"NONE\",result=\"denied\"}"
        ),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_path_rule_sees_the_normalized_path_and_the_app_gets_it() {
    let mesh = Mesh::new();
    let echo = EchoServer::start("backend").await;
    let port = echo.port();
    let deny_admin = policy(
        "deny-admin",
        "DENY",
        serde_json::json!([{ "to": [{ "operation": { "paths": ["/admin", "/admin/*"] } }] }]),
    );
    use PathNormalization::*;
    // (normalization, path sent, expected status, path the app sees when allowed)
    let table: &[(PathNormalization, &str, u16, &str)] = &[
        (Base, "/admin", 403, ""),
        (Base, "/admin/x", 403, ""),
        (Base, "/admin/../admin/x", 403, ""),
        (Base, "/public/../admin/x", 403, ""),
        (Base, "/%61dmin", 403, ""),
        (Base, "/%61dmin/x?q=1", 403, ""),
        (Base, "/public/./a", 200, "/public/a"),
        (Base, "/%70ublic?x=%61", 200, "/public?x=%61"),
        // BASE keeps repeated slashes: `//admin` is not `/admin` and goes through as sent.
        (Base, "//admin", 200, "//admin"),
        (MergeSlashes, "//admin", 403, ""),
        (MergeSlashes, "/admin//x", 403, ""),
        (MergeSlashes, "//public///a", 200, "/public/a"),
        (DecodeAndMergeSlashes, "/%2Fadmin", 403, ""),
        (DecodeAndMergeSlashes, "/admin%2fx", 403, ""),
        (MergeSlashes, "/%2Fadmin", 200, "/%2Fadmin"),
        // NONE matches what was sent: `/public/../admin/x` is no `/admin` path.
        (None, "/public/../admin/x", 200, "/public/../admin/x"),
        (Base, "/a%00b", 400, ""),
        (Base, "/a%zzb", 400, ""),
        (MergeSlashes, "/admin%", 400, ""),
    ];
    let mut b: Option<Bound> = Option::None;
    let mut revision = 1;
    let mut current = Option::None;
    let client = http1_client();
    let mut a: Option<Bound> = Option::None;
    for &(norm, path, want, app_path) in table {
        let authz = compile(std::slice::from_ref(&deny_admin), norm, port);
        if current != Some(norm) {
            revision += 1;
            let cfg = backend_cfg(&mesh, port, "http", "STRICT", revision, Some(authz));
            match &b {
                Some(b) => b.handle.apply(cfg).unwrap(),
                Option::None => b = Some(meshproxy::build(cfg).await.unwrap()),
            }
            current = Some(norm);
        }
        let bp = b.as_ref().unwrap();
        if a.is_none() {
            a = Some(client_proxy(&mesh, "frontend-sa", "http", port, bp).await);
        }
        let out = a.as_ref().unwrap().outbound(vip()).unwrap();
        let before = echo.completed();
        let (status, headers, body) = get(&client, &format!("http://{out}{path}")).await;
        assert_eq!(status, want, "{norm:?} {path}: {body}");
        match want {
            200 => {
                assert_eq!(echo.last().unwrap().uri, app_path, "{norm:?} {path}");
            }
            403 => {
                assert_eq!(body, "RBAC: access denied", "{norm:?} {path}");
                assert_eq!(headers["x-meshctl-response-flags"], "RBAC");
                assert_eq!(echo.completed(), before, "{norm:?} {path} reached the app");
            }
            _ => {
                assert_eq!(
                    headers["x-meshctl-response-flags"], "DPE",
                    "{norm:?} {path}"
                );
                assert_eq!(echo.completed(), before, "{norm:?} {path} reached the app");
            }
        }
        for seen in echo.seen() {
            assert!(!seen.uri.starts_with("/admin"), "{seen:?}");
        }
    }
    let b = b.unwrap();
    assert!(
        metric(
            &b,
            "meshproxy_authz_decisions_total{policy=\"deny-admin.default\",action=\"DENY\",result=\"denied\"}"
        ) >= 9
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_tcp_connection_is_closed_at_once() {
    let mesh = Mesh::new();
    let tcp_echo = TcpEcho::start().await;
    let port = tcp_echo.addr().port();
    let authz = compile(&[frontend_only()], PathNormalization::Base, port);
    let b = meshproxy::build(backend_cfg(&mesh, port, "tcp", "STRICT", 1, Some(authz)))
        .await
        .unwrap();
    for (sa, allowed) in [("frontend-sa", true), ("other-sa", false)] {
        let a = client_proxy(&mesh, sa, "tcp", port, &b).await;
        let mut s = TcpStream::connect(a.outbound(vip()).unwrap())
            .await
            .unwrap();
        let _ = s.write_all(b"hello").await;
        let mut buf = [0u8; 5];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the proxy neither answered nor closed");
        if allowed {
            let n = r.unwrap();
            let mut got = buf[..n].to_vec();
            while got.len() < 5 {
                let mut more = [0u8; 5];
                let m = s.read(&mut more).await.unwrap();
                assert!(m > 0, "closed early");
                got.extend_from_slice(&more[..m]);
            }
            assert_eq!(got, b"hello", "{sa}");
        } else {
            assert!(matches!(r, Ok(0) | Err(_)), "{sa}: {r:?}");
        }
    }
    // Istio's TCP metrics count the refused connection as Envoy does: opened and closed at
    // once, flagged RBAC, from the refused peer, no bytes.
    let refused = [
        ("reporter", "destination"),
        ("response_flags", "RBAC"),
        ("source_principal", "cluster.local/ns/default/sa/other-sa"),
    ];
    for name in [
        "istio_tcp_connections_opened_total",
        "istio_tcp_connections_closed_total",
    ] {
        assert_eq!(istio_series(&b, name, &refused), Some(1), "{name}");
    }
    assert_eq!(
        istio_series(&b, "istio_tcp_received_bytes_total", &refused),
        Some(0)
    );
    assert_eq!(
        metric(
            &b,
            "meshproxy_authz_decisions_total{policy=\"none\",action=\"NONE\",result=\"denied\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            &b,
            "meshproxy_authz_decisions_total{policy=\"frontend-only.default\",action=\"ALLOW\",result=\"allowed\"}"
        ),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_policy_applies_to_the_next_request_on_the_same_connection() {
    let mesh = Mesh::new();
    let echo = EchoServer::start("backend").await;
    let port = echo.port();
    let b = meshproxy::build(backend_cfg(&mesh, port, "http", "STRICT", 1, None))
        .await
        .unwrap();
    let a = client_proxy(&mesh, "frontend-sa", "http", port, &b).await;
    let out = a.outbound(vip()).unwrap();
    let client = http1_client();
    let url = format!("http://{out}/api");

    let deny_frontend = policy(
        "deny-frontend",
        "DENY",
        serde_json::json!([{ "from": [{ "source": {
            "principals": ["cluster.local/ns/default/sa/frontend-sa"]
        } }] }]),
    );
    let dry_run_deny = {
        let mut p = deny_frontend.clone();
        p["metadata"]["name"] = "would-deny".into();
        p["metadata"]["annotations"] = serde_json::json!({ "istio.io/dry-run": "true" });
        p
    };
    let audit = {
        let mut p = deny_frontend.clone();
        p["metadata"]["name"] = "audit-frontend".into();
        p["spec"]["action"] = "AUDIT".into();
        p
    };
    // (policies, expected status): no policy, a dry-run DENY (logged, not enforced), an AUDIT
    // (logged and counted, never blocks), an enforced DENY, the user's ALLOW, then no policy.
    let steps: Vec<(Option<Vec<serde_json::Value>>, u16)> = vec![
        (None, 200),
        (Some(vec![dry_run_deny]), 200),
        (Some(vec![audit]), 200),
        (Some(vec![deny_frontend]), 403),
        (Some(vec![frontend_only()]), 200),
        (None, 200),
    ];
    for (i, (policies, want)) in steps.into_iter().enumerate() {
        let revision = 10 + i as u64;
        let authz = policies.map(|ps| compile(&ps, PathNormalization::Base, port));
        b.handle
            .apply(backend_cfg(&mesh, port, "http", "STRICT", revision, authz))
            .unwrap();
        assert_eq!(b.handle.config().revision, revision);
        let (status, _, body) = get(&client, &url).await;
        assert_eq!(status, want, "step {i}: {body}");
    }
    // Every request rode one mTLS connection between the proxies.
    assert_eventually!(
        metric(&b, "meshproxy_connections_total{direction=\"inbound\"}") == 1,
        "{}",
        b.handle.metrics().render()
    );
    assert_eq!(
        metric(
            &b,
            "meshproxy_authz_dry_run_total{policy=\"would-deny.default\",action=\"DENY\",result=\"denied\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            &b,
            "meshproxy_authz_decisions_total{policy=\"deny-frontend.default\",action=\"DENY\",result=\"denied\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            &b,
            "meshproxy_authz_audit_total{policy=\"audit-frontend.default\",result=\"allowed\"}"
        ),
        1
    );
    // The same numbers on the stats listener.
    let stats = get(&client, &format!("http://{}/stats/prometheus", b.stats))
        .await
        .2;
    assert!(
        stats.contains(
            "meshproxy_authz_decisions_total{policy=\"frontend-only.default\",action=\"ALLOW\",result=\"allowed\"} 1"
        ),
        "{stats}"
    );
}

/// The user's example end to end at the proxy level, from the real files: the seed example's
/// PeerAuthentication (namespace STRICT) and AuthorizationPolicy (only frontend-sa may call
/// backend) compiled by the control plane's compiler. The backend proxy runs the compiled
/// inbound port (its mode and protocol) and authorization section, with only addresses and
/// certificate paths swapped for the test's; then frontend-sa is served, every other identity
/// gets 403, and plaintext is refused before any request is read. The frontend's own proxy gets
/// no authorization section, and its compiled endpoints expect the backend's identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_policy_compiled_by_the_control_plane_is_enforced() {
    use meshapi::proxy::{PeerAuthMode, Protocol};
    use meshmodel::compile::{CompileInput, DEFAULT_HOST_BASE_PORT, HostPlacement, ProxyKey};
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/seed");
    let loaded = meshmodel::load::load(&meshmodel::load::LoadOptions::new(dir));
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    let mesh_model = loaded.mesh;
    let inv = meshmodel::model::Inventory::from_compose(mesh_model.compose.as_ref());
    let mut vips = meshapi::dns::VipAllocator::new(meshapi::dns::VipRange::default());
    vips.sync(
        inv.services
            .iter()
            .map(|s| (s.namespace.as_str(), s.name.as_str())),
    )
    .unwrap();
    let placement = HostPlacement::new(&inv, DEFAULT_HOST_BASE_PORT);
    let input = CompileInput::new(&mesh_model, &inv, &vips, &placement, 1);
    let compiled = |w: &str| {
        meshmodel::compile::compile_proxy(
            &input,
            &ProxyKey {
                workload: w.into(),
                instance: 0,
            },
        )
        .unwrap()
    };
    let frontend = compiled("frontend");
    assert!(frontend.authorization.is_none());
    let backend_endpoints = &frontend.services["backend.default"].endpoints;
    assert_eq!(backend_endpoints.len(), 2, "{backend_endpoints:?}");
    assert!(
        backend_endpoints
            .iter()
            .all(|e| e.identity.as_ref().map(ToString::to_string) == Some(spiffe("backend")))
    );
    let backend = compiled("backend-v1");
    let authz = backend.authorization.clone().expect("backend has a policy");
    assert_eq!(authz.allow.len(), 1);
    assert_eq!(authz.allow[0].name, "backend-allow-frontend");
    assert!(authz.deny.is_empty());
    // The compiled document survives the config file format.
    let json = serde_json::to_string(&backend).unwrap();
    assert_eq!(
        meshapi::proxy::ProxyConfig::from_str_checked(&json)
            .unwrap()
            .authorization,
        Some(authz.clone())
    );
    // The namespace-wide STRICT PeerAuthentication reached the compiled port.
    assert_eq!(backend.inbound.len(), 1);
    assert_eq!(backend.inbound[0].port, 8080);
    assert_eq!(backend.inbound[0].mode, PeerAuthMode::Strict);
    assert_eq!(backend.inbound[0].protocol, Protocol::Http);

    let mesh = Mesh::new();
    let echo = EchoServer::start("backend").await;
    let port = echo.port();
    // The compiled config with the test's addresses and credentials.
    let mut cfg = backend_cfg(&mesh, port, "tcp", "PERMISSIVE", 1, None);
    cfg.inbound = backend.inbound.clone();
    cfg.inbound[0].port = port;
    cfg.authorization = backend.authorization.clone();
    assert!(cfg.validate().is_empty());
    let b = meshproxy::build(cfg).await.unwrap();
    let client = http1_client();
    for (sa, want) in [
        ("frontend-sa", 200),
        ("backend", 403),
        ("frontend", 403),
        ("other-sa", 403),
    ] {
        let a = client_proxy(&mesh, sa, "http", port, &b).await;
        let out = a.outbound(vip()).unwrap();
        let before = echo.completed();
        let (status, _, body) = get(&client, &format!("http://{out}/api/items")).await;
        assert_eq!(status, want, "{sa}: {body}");
        if want == 403 {
            assert_eq!(body, "RBAC: access denied", "{sa}");
            assert_eq!(echo.completed(), before, "{sa} reached the app");
        } else {
            assert_eq!(echo.last().unwrap().uri, "/api/items");
        }
    }
    // Plaintext under STRICT: closed without an answer, never authorized, never forwarded.
    let before = echo.completed();
    let resp = raw(
        b.inbound,
        b"GET /api/items HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n",
    )
    .await;
    // With every port STRICT the listener does not sniff: the TLS handshake fails on the
    // first plaintext byte and the client gets at most a TLS alert (0x15), never HTTP.
    assert!(
        resp.is_empty() || resp.as_bytes()[0] == 0x15,
        "plaintext got an answer: {resp:?}"
    );
    assert_eq!(echo.completed(), before);
    assert_eventually!(
        metric(
            &b,
            "meshproxy_tls_handshake_failures_total{direction=\"inbound\"}"
        ) == 1,
        "{}",
        b.handle.metrics().render()
    );
    assert_eq!(
        metric(
            &b,
            "meshproxy_authz_decisions_total{policy=\"backend-allow-frontend.default\",action=\"ALLOW\",result=\"allowed\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            &b,
            "meshproxy_authz_decisions_total{policy=\"none\",action=\"NONE\",result=\"denied\"}"
        ),
        3
    );
}

/// For pseudo-random paths built from the pieces that trick prefix rules, "the normalized path
/// is under the DENY prefix" and "the request was denied" agree, a refused path is a 400, and an
/// allowed request reaches the app with the normalized path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_paths_denied_exactly_when_the_normalized_path_is_under_the_deny_prefix() {
    let mesh = Mesh::new();
    let echo = EchoServer::start("backend").await;
    let port = echo.port();
    let deny_admin = policy(
        "deny-admin",
        "DENY",
        serde_json::json!([{ "to": [{ "operation": { "paths": ["/admin", "/admin/*"] } }] }]),
    );
    let b = meshproxy::build(backend_cfg(&mesh, port, "http", "STRICT", 1, None))
        .await
        .unwrap();
    let a = client_proxy(&mesh, "frontend-sa", "http", port, &b).await;
    let out = a.outbound(vip()).unwrap();
    let client = http1_client();
    const PIECES: [&str; 14] = [
        "/", "/", "admin", "admin", "%61dmin", "%41dmin", ".", "..", "%2e", "%2E%2e", "%2F", "%2f",
        "x", "%zz",
    ];
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut denied = 0;
    for (i, norm) in [
        PathNormalization::Base,
        PathNormalization::MergeSlashes,
        PathNormalization::DecodeAndMergeSlashes,
    ]
    .into_iter()
    .enumerate()
    {
        let authz = compile(std::slice::from_ref(&deny_admin), norm, port);
        b.handle
            .apply(backend_cfg(
                &mesh,
                port,
                "http",
                "STRICT",
                2 + i as u64,
                Some(authz),
            ))
            .unwrap();
        for _ in 0..80 {
            let mut path = String::from("/");
            for _ in 0..(1 + next() % 5) {
                path.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
            }
            let before = echo.completed();
            let (status, _, body) = get(&client, &format!("http://{out}{path}")).await;
            match meshapi::authz::normalize_path(&path, norm) {
                Err(_) => assert_eq!(status, 400, "{norm:?} {path}: {body}"),
                Ok(n) => {
                    let p = n.path();
                    let under = p == "/admin" || p.starts_with("/admin/");
                    if under {
                        denied += 1;
                        assert_eq!(status, 403, "{norm:?} {path} -> {p}: {body}");
                        assert_eq!(echo.completed(), before, "{norm:?} {path} reached the app");
                    } else {
                        assert_eq!(status, 200, "{norm:?} {path} -> {p}: {body}");
                        assert_eq!(echo.last().unwrap().uri, n.as_str(), "{norm:?} {path}");
                    }
                }
            }
        }
    }
    assert!(denied >= 10, "too few denied paths generated: {denied}");
}
