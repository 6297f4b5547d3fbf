//! Trust-domain aliases (Istio's `trustDomainAliases`) over real mTLS between in-process
//! proxies whose certificates come from one test CA but name different trust domains, as in a
//! mesh migrating from `old.example` to `new.example`: the server proxy accepts a peer in an
//! alias trust domain and refuses one in any other, and the user's policy written with
//! `cluster.local/ns/default/sa/frontend-sa` matches the frontend in every trust domain of
//! the mesh, as Istio rewrites it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use common::*;
use meshapi::authz::{MeshSecurity, WorkloadPolicy};
use meshmodel::compile::authz::compile_for_workload;
use meshmodel::istio::AuthorizationPolicy;
use meshmodel::model::Workload;
use meshproxy::Bound;
use meshproxy::metrics::Direction;
use meshtest::EchoServer;

const NEW: &str = "new.example";
const OLD: &str = "old.example";

fn id(td: &str, sa: &str) -> String {
    format!("spiffe://{td}/ns/default/sa/{sa}")
}

/// The identity block of a proxy running as `sa` in `td`, accepting peers of `aliases` too.
fn identity_yaml(mesh: &Mesh, td: &str, sa: &str, aliases: &[&str]) -> String {
    let spiffe = id(td, sa);
    let file = format!("{td}-{sa}");
    let (cert, key) = mesh.ca.issue(&spiffe).write(mesh.path(), &file);
    let mut y = format!(
        "identity:\n  spiffeId: {spiffe}\n  certFile: {}\n  keyFile: {}\n  rootsFile: {}\n",
        cert.display(),
        key.display(),
        mesh.path().join("roots.pem").display()
    );
    if !aliases.is_empty() {
        y.push_str(&format!("  trustDomainAliases: [{}]\n", aliases.join(", ")));
    }
    y
}

/// The user's policy, compiled for backend in a mesh whose trust domain is `new.example`
/// with the alias `old.example`, as the control plane does.
fn frontend_only(port: u16) -> WorkloadPolicy {
    let policy: AuthorizationPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": { "name": "frontend-only", "namespace": "default" },
        "spec": {
            "selector": { "matchLabels": { "app": "backend" } },
            "action": "ALLOW",
            "rules": [{ "from": [{ "source": {
                "principals": ["cluster.local/ns/default/sa/frontend-sa"]
            } }] }],
        }
    }))
    .unwrap();
    let backend = Workload {
        compose_name: "backend".into(),
        service: "backend".into(),
        namespace: "default".into(),
        service_account: "backend".into(),
        labels: BTreeMap::from([("app".into(), "backend".into())]),
        replicas: 1,
        ports: vec![port],
    };
    let mesh = MeshSecurity {
        trust_domain: NEW.into(),
        trust_domain_aliases: vec![OLD.into()],
        ..MeshSecurity::default()
    };
    compile_for_workload(&[&policy], &backend, &mesh).unwrap()
}

/// The backend proxy in `new.example`, STRICT, with the policy; `aliases` as configured.
fn backend_cfg(mesh: &Mesh, port: u16, aliases: &[&str], rev: u64) -> meshapi::proxy::ProxyConfig {
    let yaml = format!(
        "{}inbound:\n  - {{ port: {port}, protocol: http, mode: STRICT }}\n",
        base_yaml(&identity_yaml(mesh, NEW, "backend", aliases), rev)
    );
    let mut cfg = parse(&yaml);
    cfg.authorization = Some(frontend_only(port));
    cfg
}

/// A client proxy running as `sa` in `td` with backend (in `new.example`) at `b`.
async fn client(
    mesh: &Mesh,
    td: &str,
    sa: &str,
    aliases: &[&str],
    port: u16,
    b: SocketAddr,
) -> Bound {
    let mut y = base_yaml(&identity_yaml(mesh, td, sa, aliases), 1);
    y.push_str(&format!(
        "outbound:\n  - {{ service: backend, vip: \"127.0.0.1:0\", protocol: http, targetPort: {port} }}\n\
         services:\n  backend:\n    endpoints:\n      - {{ address: \"{b}\", identity: \"{}\" }}\n",
        id(NEW, "backend")
    ));
    meshproxy::build(parse(&y)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_in_an_alias_trust_domain_is_accepted_and_matched_as_istio_does() {
    let mesh = Mesh::new();
    let echo = EchoServer::start("backend").await;
    let port = echo.port();
    let b = meshproxy::build(backend_cfg(&mesh, port, &[OLD], 1))
        .await
        .unwrap();
    let http = http1_client();
    let refused = || b.handle.metrics().tls_failures(Direction::Inbound);

    // (caller trust domain, service account, the caller's own aliases, status, whether the
    // backend counted a failed handshake)
    let table: [(&str, &str, &[&str], u16, bool); 5] = [
        // The frontend still in the old trust domain: accepted, and the policy's
        // `cluster.local/...frontend-sa` matches it.
        (OLD, "frontend-sa", &[NEW], 200, false),
        // The frontend already migrated.
        (NEW, "frontend-sa", &[], 200, false),
        // Accepted over mTLS, but not the frontend: the policy denies it.
        (OLD, "other-sa", &[NEW], 403, false),
        // A trust domain that is neither ours nor an alias: the handshake is refused.
        ("evil.example", "frontend-sa", &[NEW], 503, true),
        // A client that does not accept the server's trust domain refuses it itself.
        (OLD, "frontend-sa", &[], 503, true),
    ];
    for (td, sa, aliases, want, server_refused) in table {
        let a = client(&mesh, td, sa, aliases, port, b.inbound).await;
        let out = a.outbound("127.0.0.1:0".parse().unwrap()).unwrap();
        let (before_app, before_refused) = (echo.completed(), refused());
        let (status, _, body) = get(&http, &format!("http://{out}/api")).await;
        // A refused handshake is a 5xx from the client's proxy: 503 when the client refuses
        // the server, 502 (reset) when the server refuses the client after TLS 1.3 finished
        // on the client's side.
        match want {
            503 => assert!(status.is_server_error(), "{sa}@{td}: {status} {body}"),
            _ => assert_eq!(status, want, "{sa}@{td}: {body}"),
        }
        let reached = echo.completed() > before_app;
        assert_eq!(
            reached,
            want == 200,
            "{sa}@{td}: reached the app: {reached}"
        );
        // The server counts a refused handshake when its side of it ends, which may come
        // after the client already answered: wait for the count where one is due. Where none
        // is, the handshake succeeded before the response, so the count is final.
        if server_refused {
            meshtest::assert_eventually!(
                refused() > before_refused,
                "{sa}@{td}: the failed handshake was never counted by the server"
            );
        } else {
            assert_eq!(
                refused(),
                before_refused,
                "{sa}@{td}: a handshake failure counted for an accepted peer"
            );
        }
        if want == 200 {
            let seen = echo.last().unwrap();
            let xfcc = seen.headers["x-forwarded-client-cert"].to_str().unwrap();
            assert!(xfcc.contains(&id(td, sa)), "{xfcc}");
        }
    }

    // Without the alias the same old-domain frontend is refused at the handshake: the alias
    // is what admits it (a new config applies to new connections).
    b.handle.apply(backend_cfg(&mesh, port, &[], 2)).unwrap();
    let a = client(&mesh, OLD, "frontend-sa", &[NEW], port, b.inbound).await;
    let out = a.outbound("127.0.0.1:0".parse().unwrap()).unwrap();
    let before = refused();
    let (status, _, body) = get(&http, &format!("http://{out}/api")).await;
    assert!(status.is_server_error(), "{status} {body}");
    meshtest::assert_eventually!(
        refused() > before,
        "the old-domain handshake without the alias was never counted as refused"
    );
    assert_eq!(
        echo.completed(),
        2,
        "only the two allowed requests reached the app"
    );
}
