//! The table-driven AuthorizationPolicy suite over real mTLS between two in-process proxies:
//! client app -> proxy A (outbound, one of several identities from the test CA) -> mTLS ->
//! proxy B (inbound, serving two HTTP ports and a TCP port, PERMISSIVE so plaintext reaches
//! authorization too) -> echo apps.
//!
//! Each policy set (Istio YAML, compiled by `meshmodel::compile::authz::compile_for_workload` as the
//! control plane does) is pushed to proxy B as a new config revision; then every request of
//! its table is sent and its outcome compared with what Istio decides: each source identity,
//! path, method, port, header and IP in and out of each rule shape, both actions, `when`
//! conditions, HTTP-only fields on a TCP port, and the precedence combinations (DENY before
//! ALLOW, ALLOW without rules, rule `{}`, AUDIT, dry-run, root namespace, selectors, targetRefs,
//! path normalization options). Trust-domain aliases over mTLS: tests/authz_trust_domain.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use meshapi::authz::{MeshSecurity, PathNormalization};
use meshmodel::compile::authz::compile_for_workload;
use meshmodel::istio::AuthorizationPolicy;
use meshmodel::model::Workload;
use meshproxy::Bound;
use meshtest::{EchoServer, TcpEcho};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Who sends a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Who {
    /// `cluster.local/ns/default/sa/frontend-sa`, the user's allowed caller.
    Fe,
    /// `cluster.local/ns/default/sa/other-sa`.
    Other,
    /// `cluster.local/ns/prod/sa/api`.
    Prod,
    /// No proxy, no certificate: plaintext straight to proxy B's inbound listener (port A).
    Plain,
}

impl Who {
    fn spiffe(self) -> &'static str {
        match self {
            Who::Fe => "spiffe://cluster.local/ns/default/sa/frontend-sa",
            Who::Other => "spiffe://cluster.local/ns/default/sa/other-sa",
            Who::Prod => "spiffe://cluster.local/ns/prod/sa/api",
            Who::Plain => unreachable!("plaintext has no identity"),
        }
    }
}

/// Which of proxy B's ports a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Port {
    /// HTTP, the first inbound port (where plaintext lands).
    A,
    /// HTTP, a second port.
    B,
    /// Opaque TCP.
    T,
}

/// What the caller observes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Want {
    /// HTTP 200 from the app, or TCP bytes echoed.
    Pass,
    /// HTTP 403 `RBAC: access denied` without reaching the app, or TCP closed at once.
    Denied,
    /// HTTP 400: the path is refused before authorization.
    Bad,
}
use Want::*;
use Who::*;

#[derive(Debug, Clone)]
struct Case {
    who: Who,
    port: Port,
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    want: Want,
}

/// A GET of `path` on port A by `who`; refine with the builder methods.
fn req(who: Who, path: &'static str) -> Case {
    Case {
        who,
        port: Port::A,
        method: "GET",
        path,
        headers: Vec::new(),
        want: Pass,
    }
}

/// A TCP connection by `who` to port T.
fn tcp(who: Who) -> Case {
    Case {
        port: Port::T,
        ..req(who, "")
    }
}

impl Case {
    fn port(mut self, p: Port) -> Self {
        self.port = p;
        self
    }
    fn method(mut self, m: &'static str) -> Self {
        self.method = m;
        self
    }
    fn header(mut self, k: &'static str, v: &'static str) -> Self {
        self.headers.push((k, v));
        self
    }
    fn is(mut self, w: Want) -> Self {
        self.want = w;
        self
    }
}

/// One policy set and the requests checked against it.
struct Set {
    name: &'static str,
    /// Istio YAML documents; `{A}`, `{B}`, `{T}` stand for the ports.
    policies: Vec<String>,
    normalization: PathNormalization,
    cases: Vec<Case>,
}

fn set(name: &'static str, policies: Vec<String>, cases: Vec<Case>) -> Set {
    Set {
        name,
        policies,
        normalization: PathNormalization::Base,
        cases,
    }
}

const FE: &str = "cluster.local/ns/default/sa/frontend-sa";
const OTHER: &str = "cluster.local/ns/default/sa/other-sa";

/// A policy for the backend workload (selector `app: backend`) in namespace `default`;
/// `rules` is a YAML flow sequence, or empty for a policy without rules.
fn ap(name: &str, action: &str, rules: &str) -> String {
    let rules = if rules.is_empty() {
        String::new()
    } else {
        format!("  rules: {rules}\n")
    };
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{name: {name}, namespace: default}}\n\
         spec:\n  selector: {{matchLabels: {{app: backend}}}}\n  action: {action}\n{rules}"
    )
}

/// A policy written in full (metadata and spec), for scope and annotation cases.
fn doc(body: &str) -> String {
    format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n{body}")
}

fn table() -> Vec<Set> {
    let allow_fe = ap(
        "allow-fe",
        "ALLOW",
        &format!("[{{from: [{{source: {{principals: [{FE}]}}}}]}}]"),
    );
    let deny_admin = ap(
        "deny-admin",
        "DENY",
        r#"[{to: [{operation: {paths: ["/admin", "/admin/*"]}}]}]"#,
    );
    vec![
        set(
            "no policy",
            vec![],
            vec![
                req(Fe, "/"),
                req(Plain, "/"),
                tcp(Fe),
                req(Other, "/x").method("DELETE"),
                req(Fe, "/").port(Port::B),
            ],
        ),
        // --- from.source ------------------------------------------------------------------
        set(
            "ALLOW principals",
            vec![allow_fe.clone()],
            vec![
                req(Fe, "/"),
                req(Other, "/").is(Denied),
                req(Prod, "/").is(Denied),
                req(Plain, "/").is(Denied),
                tcp(Fe),
                tcp(Other).is(Denied),
            ],
        ),
        set(
            "ALLOW notPrincipals",
            vec![ap(
                "allow-not-fe",
                "ALLOW",
                &format!("[{{from: [{{source: {{notPrincipals: [{FE}]}}}}]}}]"),
            )],
            vec![req(Fe, "/").is(Denied), req(Other, "/"), req(Plain, "/")],
        ),
        set(
            "DENY principals *",
            vec![ap(
                "deny-mtls",
                "DENY",
                r#"[{from: [{source: {principals: ["*"]}}]}]"#,
            )],
            vec![
                req(Fe, "/").is(Denied),
                req(Plain, "/"),
                tcp(Other).is(Denied),
            ],
        ),
        set(
            "DENY notPrincipals * (plaintext)",
            vec![ap(
                "deny-plain",
                "DENY",
                r#"[{from: [{source: {notPrincipals: ["*"]}}]}]"#,
            )],
            vec![req(Plain, "/").is(Denied), req(Fe, "/"), tcp(Prod)],
        ),
        set(
            "ALLOW principal patterns",
            vec![ap(
                "allow-patterns",
                "ALLOW",
                r#"[{from: [{source: {principals: ["*/sa/other-sa", "cluster.local/ns/prod/*"]}}]}]"#,
            )],
            vec![req(Other, "/"), req(Prod, "/"), req(Fe, "/").is(Denied)],
        ),
        set(
            "ALLOW namespaces",
            vec![ap(
                "allow-prod",
                "ALLOW",
                "[{from: [{source: {namespaces: [prod]}}]}]",
            )],
            vec![
                req(Prod, "/"),
                req(Fe, "/").is(Denied),
                req(Plain, "/").is(Denied),
            ],
        ),
        set(
            "DENY notNamespaces",
            vec![ap(
                "deny-foreign",
                "DENY",
                "[{from: [{source: {notNamespaces: [default]}}]}]",
            )],
            vec![
                req(Prod, "/").is(Denied),
                req(Fe, "/"),
                req(Plain, "/").is(Denied),
                tcp(Prod).is(Denied),
            ],
        ),
        set(
            "ALLOW namespace prefix",
            vec![ap(
                "allow-pro",
                "ALLOW",
                r#"[{from: [{source: {namespaces: ["pro*"]}}]}]"#,
            )],
            vec![req(Prod, "/"), req(Other, "/").is(Denied)],
        ),
        set(
            "ALLOW serviceAccounts",
            vec![ap(
                "allow-sas",
                "ALLOW",
                "[{from: [{source: {serviceAccounts: [frontend-sa, prod/api]}}]}]",
            )],
            vec![
                req(Fe, "/"),
                req(Prod, "/"),
                req(Other, "/").is(Denied),
                req(Plain, "/").is(Denied),
            ],
        ),
        set(
            "ALLOW ipBlocks in",
            vec![ap(
                "allow-loopback",
                "ALLOW",
                r#"[{from: [{source: {ipBlocks: ["127.0.0.1/32"]}}]}]"#,
            )],
            vec![req(Fe, "/"), req(Plain, "/"), tcp(Fe)],
        ),
        set(
            "ALLOW ipBlocks out",
            vec![ap(
                "allow-ten",
                "ALLOW",
                r#"[{from: [{source: {ipBlocks: ["10.0.0.0/8"]}}]}]"#,
            )],
            vec![req(Fe, "/").is(Denied), tcp(Fe).is(Denied)],
        ),
        set(
            "DENY ipBlocks / notIpBlocks",
            vec![
                ap(
                    "deny-not-loopback",
                    "DENY",
                    r#"[{from: [{source: {notIpBlocks: ["127.0.0.0/8"]}}]}]"#,
                ),
                ap(
                    "deny-ten",
                    "DENY",
                    r#"[{from: [{source: {ipBlocks: ["10.0.0.0/8"]}}]}]"#,
                ),
            ],
            vec![req(Fe, "/"), tcp(Fe)],
        ),
        set(
            "DENY ipBlocks loopback",
            vec![ap(
                "deny-loopback",
                "DENY",
                r#"[{from: [{source: {ipBlocks: ["127.0.0.0/8"]}}]}]"#,
            )],
            vec![
                req(Fe, "/").is(Denied),
                tcp(Fe).is(Denied),
                // x-forwarded-for does not change the peer address.
                req(Fe, "/")
                    .header("x-forwarded-for", "10.1.2.3")
                    .is(Denied),
            ],
        ),
        set(
            "DENY remoteIpBlocks",
            vec![ap(
                "deny-remote",
                "DENY",
                r#"[{from: [{source: {remoteIpBlocks: ["203.0.113.0/24"]}}]}]"#,
            )],
            vec![
                req(Fe, "/"),
                req(Fe, "/")
                    .header("x-forwarded-for", "203.0.113.7")
                    .is(Denied),
                req(Fe, "/")
                    .header("x-forwarded-for", "198.51.100.1, 203.0.113.7")
                    .is(Denied),
                // Only the last hop counts (no trusted hops at a sidecar).
                req(Fe, "/").header("x-forwarded-for", "203.0.113.7, 127.0.0.1"),
                req(Fe, "/").header("x-forwarded-for", "not-an-ip"),
                req(Plain, "/")
                    .header("x-forwarded-for", "203.0.113.9")
                    .is(Denied),
            ],
        ),
        set(
            "ALLOW notRemoteIpBlocks",
            vec![ap(
                "allow-not-remote",
                "ALLOW",
                r#"[{from: [{source: {notRemoteIpBlocks: ["203.0.113.0/24"]}}]}]"#,
            )],
            vec![
                req(Fe, "/"),
                req(Fe, "/")
                    .header("x-forwarded-for", "203.0.113.9")
                    .is(Denied),
                tcp(Fe),
            ],
        ),
        // --- to.operation ---------------------------------------------------------------------
        set(
            "ALLOW hosts",
            vec![ap(
                "allow-hosts",
                "ALLOW",
                r#"[{to: [{operation: {hosts: ["backend.example", "*.internal", "web:*"]}}]}]"#,
            )],
            vec![
                req(Fe, "/").header("host", "backend.example"),
                req(Fe, "/").header("host", "BACKEND.Example"),
                // The whole authority is compared, port included (Istio).
                req(Fe, "/")
                    .header("host", "backend.example:8080")
                    .is(Denied),
                req(Fe, "/").header("host", "api.internal"),
                req(Fe, "/").header("host", "api.internal:80").is(Denied),
                req(Fe, "/").header("host", "web:80"),
                req(Fe, "/").header("host", "WEB:8080"),
                req(Fe, "/").header("host", "web").is(Denied),
                req(Fe, "/").header("host", "other.example").is(Denied),
                // An ALLOW rule with an HTTP-only field allows no TCP connection.
                tcp(Fe).is(Denied),
            ],
        ),
        set(
            "ALLOW notHosts",
            vec![ap(
                "allow-not-admin-host",
                "ALLOW",
                r#"[{to: [{operation: {notHosts: ["admin.*"]}}]}]"#,
            )],
            vec![
                req(Fe, "/").header("host", "admin.example").is(Denied),
                req(Fe, "/").header("host", "ADMIN.example:80").is(Denied),
                req(Fe, "/").header("host", "backend"),
            ],
        ),
        set(
            "ALLOW methods",
            vec![ap(
                "allow-read",
                "ALLOW",
                "[{to: [{operation: {methods: [GET, HEAD]}}]}]",
            )],
            vec![
                req(Fe, "/"),
                req(Fe, "/").method("HEAD"),
                req(Fe, "/").method("POST").is(Denied),
                req(Fe, "/").method("DELETE").is(Denied),
            ],
        ),
        set(
            "DENY notMethods",
            vec![ap(
                "deny-writes",
                "DENY",
                "[{to: [{operation: {notMethods: [GET]}}]}]",
            )],
            vec![
                req(Fe, "/").method("POST").is(Denied),
                req(Fe, "/"),
                // On TCP the HTTP-only notMethods is dropped: the DENY rule denies every connection.
                tcp(Fe).is(Denied),
            ],
        ),
        set(
            "ALLOW paths",
            vec![ap(
                "allow-paths",
                "ALLOW",
                r#"[{to: [{operation: {paths: ["/api/*", "/health", "/users/{*}/profile", "/files/{**}"]}}]}]"#,
            )],
            vec![
                req(Fe, "/api/items"),
                req(Fe, "/api").is(Denied),
                req(Fe, "/health"),
                req(Fe, "/health?verbose=1"),
                req(Fe, "/health/x").is(Denied),
                req(Fe, "/users/42/profile"),
                req(Fe, "/users/a/b/profile").is(Denied),
                req(Fe, "/files/a/b/c"),
                req(Fe, "/files").is(Denied),
                req(Fe, "/api/../admin").is(Denied),
                req(Fe, "/%61pi/items"),
                req(Fe, "/a%00").is(Bad),
            ],
        ),
        set(
            "DENY notPaths",
            vec![ap(
                "deny-not-public",
                "DENY",
                r#"[{to: [{operation: {notPaths: ["/public/*"]}}]}]"#,
            )],
            vec![
                req(Fe, "/public/a"),
                req(Fe, "/private").is(Denied),
                req(Fe, "/public/../private").is(Denied),
            ],
        ),
        set(
            "ALLOW ports",
            vec![ap(
                "allow-port-a",
                "ALLOW",
                r#"[{to: [{operation: {ports: ["{A}", "{T}"]}}]}]"#,
            )],
            vec![req(Fe, "/"), req(Fe, "/").port(Port::B).is(Denied), tcp(Fe)],
        ),
        set(
            "DENY notPorts",
            vec![ap(
                "deny-not-a",
                "DENY",
                r#"[{to: [{operation: {notPorts: ["{A}"]}}]}]"#,
            )],
            vec![
                req(Fe, "/"),
                req(Fe, "/").port(Port::B).is(Denied),
                tcp(Fe).is(Denied),
            ],
        ),
        // --- when -----------------------------------------------------------------------------
        set(
            "ALLOW when header values",
            vec![ap(
                "allow-tenant",
                "ALLOW",
                r#"[{when: [{key: "request.headers[x-tenant]", values: ["acme", "t-*"]}]}]"#,
            )],
            vec![
                req(Fe, "/").header("x-tenant", "acme"),
                req(Fe, "/").header("x-tenant", "t-42"),
                req(Fe, "/").header("x-tenant", "other").is(Denied),
                req(Fe, "/").is(Denied),
            ],
        ),
        set(
            "DENY when header present",
            vec![ap(
                "deny-debug",
                "DENY",
                r#"[{when: [{key: "request.headers[X-Debug]", values: ["*"]}]}]"#,
            )],
            vec![
                req(Fe, "/").header("x-debug", "1").is(Denied),
                req(Fe, "/").header("x-debug", "").is(Denied),
                req(Fe, "/"),
            ],
        ),
        set(
            "ALLOW when header notValues",
            vec![ap(
                "allow-not-prod-env",
                "ALLOW",
                r#"[{when: [{key: "request.headers[x-env]", notValues: ["prod"]}]}]"#,
            )],
            vec![
                req(Fe, "/").header("x-env", "prod").is(Denied),
                req(Fe, "/").header("x-env", "dev"),
                req(Fe, "/"),
            ],
        ),
        set(
            "ALLOW when source.ip, destination.ip, destination.port",
            vec![ap(
                "allow-addrs",
                "ALLOW",
                r#"[{when: [{key: source.ip, values: ["127.0.0.1"]}, {key: destination.ip, values: ["127.0.0.0/8"]}, {key: destination.port, values: ["{A}"]}]}]"#,
            )],
            vec![req(Fe, "/"), req(Fe, "/").port(Port::B).is(Denied)],
        ),
        set(
            "DENY when destination.ip / remote.ip",
            vec![
                ap(
                    "deny-dst-ten",
                    "DENY",
                    r#"[{when: [{key: destination.ip, values: ["10.0.0.0/8"]}]}]"#,
                ),
                ap(
                    "deny-remote-ip",
                    "DENY",
                    r#"[{when: [{key: remote.ip, values: ["203.0.113.7"]}]}]"#,
                ),
            ],
            vec![
                req(Fe, "/"),
                req(Fe, "/")
                    .header("x-forwarded-for", "203.0.113.7")
                    .is(Denied),
                tcp(Fe),
            ],
        ),
        set(
            "ALLOW when source.namespace / source.principal",
            vec![ap(
                "allow-when-id",
                "ALLOW",
                &format!(
                    r#"[{{when: [{{key: source.namespace, values: [prod]}}]}}, {{when: [{{key: source.principal, values: ["{FE}"]}}]}}]"#
                ),
            )],
            vec![
                req(Prod, "/"),
                req(Fe, "/"),
                req(Other, "/").is(Denied),
                req(Plain, "/").is(Denied),
            ],
        ),
        set(
            "ALLOW when connection.sni",
            vec![ap(
                "allow-sni",
                "ALLOW",
                r#"[{when: [{key: connection.sni, values: ["*.inbound.mesh"]}]}]"#,
            )],
            vec![req(Fe, "/"), req(Plain, "/").is(Denied), tcp(Other)],
        ),
        set(
            "DENY when connection.sni of port B",
            vec![ap(
                "deny-sni-b",
                "DENY",
                r#"[{when: [{key: connection.sni, values: ["p{B}.inbound.mesh"]}]}]"#,
            )],
            vec![req(Fe, "/"), req(Fe, "/").port(Port::B).is(Denied)],
        ),
        // --- HTTP-only fields on a TCP port ---------------------------------------------------
        set(
            "DENY paths only: every TCP connection",
            vec![deny_admin.clone()],
            vec![
                tcp(Fe).is(Denied),
                req(Fe, "/x"),
                req(Fe, "/admin").is(Denied),
            ],
        ),
        set(
            "DENY principal + method: widened on TCP",
            vec![ap(
                "deny-other-post",
                "DENY",
                &format!(
                    "[{{from: [{{source: {{principals: [{OTHER}]}}}}], to: [{{operation: {{methods: [POST]}}}}]}}]"
                ),
            )],
            vec![
                tcp(Other).is(Denied),
                tcp(Fe),
                req(Other, "/"),
                req(Other, "/").method("POST").is(Denied),
            ],
        ),
        set(
            "ALLOW principal + path: ignored on TCP",
            vec![ap(
                "allow-fe-x",
                "ALLOW",
                &format!(
                    r#"[{{from: [{{source: {{principals: [{FE}]}}}}], to: [{{operation: {{paths: ["/x"]}}}}]}}]"#
                ),
            )],
            vec![tcp(Fe).is(Denied), req(Fe, "/x"), req(Fe, "/y").is(Denied)],
        ),
        set(
            "ALLOW with a TCP rule beside the HTTP one",
            vec![ap(
                "allow-fe-x-or-tcp",
                "ALLOW",
                &format!(
                    r#"[{{from: [{{source: {{principals: [{FE}]}}}}], to: [{{operation: {{paths: ["/x"]}}}}]}}, {{to: [{{operation: {{ports: ["{{T}}"]}}}}]}}]"#
                ),
            )],
            vec![tcp(Fe), tcp(Other), req(Other, "/x").is(Denied)],
        ),
        // --- precedence -----------------------------------------------------------------------
        set(
            "DENY and ALLOW both match",
            vec![
                allow_fe.clone(),
                ap(
                    "deny-fe",
                    "DENY",
                    &format!("[{{from: [{{source: {{principals: [{FE}]}}}}]}}]"),
                ),
            ],
            vec![
                req(Fe, "/").is(Denied),
                req(Other, "/").is(Denied),
                tcp(Fe).is(Denied),
            ],
        ),
        set(
            "DENY path, ALLOW principal",
            vec![deny_admin.clone(), allow_fe.clone()],
            vec![
                req(Fe, "/admin").is(Denied),
                req(Fe, "/admin/x").is(Denied),
                req(Fe, "/x"),
                req(Other, "/x").is(Denied),
                // BASE keeps `//`: not under `/admin`, and allowed.
                req(Fe, "//admin"),
                req(Fe, "/public/../admin").is(Denied),
                req(Fe, "/%61dmin").is(Denied),
            ],
        ),
        set(
            "ALLOW without rules denies everything",
            vec![ap("allow-nothing", "ALLOW", "")],
            vec![
                req(Fe, "/").is(Denied),
                req(Plain, "/").is(Denied),
                tcp(Fe).is(Denied),
            ],
        ),
        set(
            "ALLOW rule {} allows everything",
            vec![ap("allow-all", "ALLOW", "[{}]")],
            vec![req(Fe, "/"), req(Plain, "/"), tcp(Other)],
        ),
        set(
            "DENY rule {} denies everything",
            vec![
                ap("deny-all", "DENY", "[{}]"),
                ap("allow-all", "ALLOW", "[{}]"),
            ],
            vec![req(Fe, "/").is(Denied), tcp(Fe).is(Denied)],
        ),
        set(
            "AUDIT never blocks",
            vec![ap("audit-all", "AUDIT", "[{}]"), allow_fe.clone()],
            vec![req(Fe, "/"), req(Other, "/").is(Denied)],
        ),
        set(
            "AUDIT alone",
            vec![ap(
                "audit-fe",
                "AUDIT",
                &format!("[{{from: [{{source: {{principals: [{FE}]}}}}]}}]"),
            )],
            vec![req(Fe, "/"), req(Other, "/")],
        ),
        set(
            "dry-run DENY and ALLOW are not enforced",
            vec![
                doc(&format!(
                    "metadata: {{name: would-deny-fe, namespace: default, annotations: {{istio.io/dry-run: \"true\"}}}}\nspec:\n  action: DENY\n  rules: [{{from: [{{source: {{principals: [{FE}]}}}}]}}]\n"
                )),
                doc(&format!(
                    "metadata: {{name: would-allow-other, namespace: default, annotations: {{istio.io/dry-run: \"true\"}}}}\nspec:\n  action: ALLOW\n  rules: [{{from: [{{source: {{principals: [{OTHER}]}}}}]}}]\n"
                )),
            ],
            vec![req(Fe, "/"), req(Prod, "/"), tcp(Fe)],
        ),
        set(
            "dry-run DENY beside an enforced ALLOW",
            vec![
                doc(
                    "metadata: {name: would-deny-all, namespace: default, annotations: {istio.io/dry-run: \"true\"}}\nspec:\n  action: DENY\n  rules: [{}]\n",
                ),
                allow_fe.clone(),
            ],
            vec![req(Fe, "/"), req(Other, "/").is(Denied)],
        ),
        set(
            "root namespace DENY, namespace ALLOW",
            vec![
                doc(
                    "metadata: {name: mesh-deny-admin, namespace: istio-system}\nspec:\n  action: DENY\n  rules: [{to: [{operation: {paths: [\"/admin*\"]}}]}]\n",
                ),
                ap("allow-all", "ALLOW", "[{}]"),
            ],
            vec![req(Fe, "/admin").is(Denied), req(Fe, "/")],
        ),
        set(
            "root namespace ALLOW makes the workload deny by default",
            vec![doc(&format!(
                "metadata: {{name: mesh-allow-fe, namespace: istio-system}}\nspec:\n  action: ALLOW\n  rules: [{{from: [{{source: {{principals: [{FE}]}}}}]}}]\n"
            ))],
            vec![req(Fe, "/"), req(Other, "/").is(Denied)],
        ),
        set(
            "policies for other workloads do not apply",
            vec![
                doc(
                    "metadata: {name: deny-other-app, namespace: default}\nspec:\n  selector: {matchLabels: {app: other}}\n  action: DENY\n  rules: [{}]\n",
                ),
                doc(
                    "metadata: {name: deny-in-prod, namespace: prod}\nspec:\n  action: DENY\n  rules: [{}]\n",
                ),
                doc(
                    "metadata: {name: deny-other-service, namespace: default}\nspec:\n  targetRefs: [{kind: Service, group: \"\", name: other}]\n  action: DENY\n  rules: [{}]\n",
                ),
            ],
            vec![req(Fe, "/"), tcp(Fe)],
        ),
        set(
            "namespace-wide and targetRefs policies apply",
            vec![
                doc(
                    "metadata: {name: ns-deny-delete, namespace: default}\nspec:\n  action: DENY\n  rules: [{to: [{operation: {methods: [DELETE]}}]}]\n",
                ),
                doc(
                    "metadata: {name: svc-deny-post, namespace: default}\nspec:\n  targetRefs: [{kind: Service, group: \"\", name: backend}]\n  action: DENY\n  rules: [{to: [{operation: {methods: [POST]}}]}]\n",
                ),
            ],
            vec![
                req(Fe, "/").method("DELETE").is(Denied),
                req(Fe, "/").method("POST").is(Denied),
                req(Fe, "/"),
            ],
        ),
        set(
            "two ALLOW policies: either suffices",
            vec![
                allow_fe.clone(),
                ap(
                    "allow-prod",
                    "ALLOW",
                    "[{from: [{source: {namespaces: [prod]}}]}]",
                ),
            ],
            vec![req(Fe, "/"), req(Prod, "/"), req(Other, "/").is(Denied)],
        ),
        set(
            "rule: from AND to AND when; sources ORed",
            vec![ap(
                "allow-combo",
                "ALLOW",
                &format!(
                    r#"[{{from: [{{source: {{principals: [{FE}]}}}}, {{source: {{namespaces: [prod]}}}}], to: [{{operation: {{methods: [GET], paths: ["/api/*"]}}}}], when: [{{key: "request.headers[x-tenant]", values: [acme]}}]}}]"#
                ),
            )],
            vec![
                req(Fe, "/api/a").header("x-tenant", "acme"),
                req(Prod, "/api/a").header("x-tenant", "acme"),
                req(Other, "/api/a").header("x-tenant", "acme").is(Denied),
                req(Fe, "/api/a").is(Denied),
                req(Fe, "/api/a")
                    .method("POST")
                    .header("x-tenant", "acme")
                    .is(Denied),
                req(Fe, "/other").header("x-tenant", "acme").is(Denied),
            ],
        ),
        Set {
            normalization: PathNormalization::MergeSlashes,
            ..set(
                "MERGE_SLASHES",
                vec![deny_admin.clone()],
                vec![
                    req(Fe, "//admin").is(Denied),
                    req(Fe, "/admin//x").is(Denied),
                    req(Fe, "/%2Fadmin"),
                ],
            )
        },
        Set {
            normalization: PathNormalization::DecodeAndMergeSlashes,
            ..set(
                "DECODE_AND_MERGE_SLASHES",
                vec![deny_admin.clone()],
                vec![
                    req(Fe, "/%2Fadmin").is(Denied),
                    req(Fe, "/x%5C..%5Cadmin").is(Denied),
                    req(Fe, "/x"),
                ],
            )
        },
        Set {
            normalization: PathNormalization::None,
            ..set(
                "NONE",
                vec![deny_admin],
                vec![req(Fe, "/public/../admin"), req(Fe, "/admin").is(Denied)],
            )
        },
    ]
}

fn backend_workload() -> Workload {
    Workload {
        compose_name: "backend".into(),
        service: "backend".into(),
        namespace: "default".into(),
        service_account: "backend".into(),
        labels: BTreeMap::from([("app".into(), "backend".into())]),
        replicas: 1,
        ports: vec![],
    }
}

fn parse_policy(yaml: &str) -> AuthorizationPolicy {
    let docs =
        meshapi::yaml::parse(yaml, Default::default()).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let value = serde_json::to_value(docs[0].root.to_value()).unwrap();
    serde_json::from_value(value).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

struct Harness {
    mesh: Mesh,
    b: Bound,
    ports: HashMap<Port, u16>,
    echo: [EchoServer; 2],
    clients: HashMap<(Who, Port), Bound>,
    http: Client,
}

impl Harness {
    fn backend_cfg(&self, revision: u64) -> meshapi::proxy::ProxyConfig {
        backend_cfg(&self.mesh, &self.ports, revision)
    }

    /// A client proxy for `who` with `backend` on `port`, made once.
    async fn client(&mut self, who: Who, port: Port) -> SocketAddr {
        if !self.clients.contains_key(&(who, port)) {
            let id = who.spiffe();
            let name = format!("{who:?}-{port:?}").to_lowercase();
            let (cert, key) = self.mesh.ca.issue(id).write(self.mesh.path(), &name);
            let identity = format!(
                "identity:\n  spiffeId: {id}\n  certFile: {}\n  keyFile: {}\n  rootsFile: {}\n",
                cert.display(),
                key.display(),
                self.mesh.path().join("roots.pem").display()
            );
            let protocol = if port == Port::T { "tcp" } else { "http" };
            let yaml = client_yaml(
                &identity,
                1,
                "127.0.0.1:0",
                protocol,
                self.ports[&port],
                &[(self.b.inbound, "backend")],
            );
            let bound = meshproxy::build(parse(&yaml)).await.unwrap();
            self.clients.insert((who, port), bound);
        }
        self.clients[&(who, port)]
            .outbound("127.0.0.1:0".parse().unwrap())
            .unwrap()
    }

    /// Sends one case and returns what the caller observed, with detail for a failure message.
    async fn run(&mut self, c: &Case) -> (Want, String) {
        if c.port == Port::T {
            let out = self.client(c.who, c.port).await;
            let mut s = TcpStream::connect(out).await.unwrap();
            let _ = s.write_all(b"ping").await;
            let mut got = Vec::new();
            let mut buf = [0u8; 16];
            while got.len() < 4 {
                match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                    Err(_) => return (Bad, "neither echoed nor closed in 5 s".into()),
                    Ok(Ok(0)) | Ok(Err(_)) => return (Denied, format!("closed after {got:?}")),
                    Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                }
            }
            return if got == b"ping" {
                (Pass, String::new())
            } else {
                (Bad, format!("{got:?}"))
            };
        }
        let app = if c.port == Port::A { 0 } else { 1 };
        let before = self.echo[app].completed();
        let (status, flags, body) = if c.who == Plain {
            let mut head = format!(
                "{} {} HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n",
                c.method, c.path
            );
            for (k, v) in &c.headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let resp = raw(self.b.inbound, head.as_bytes()).await;
            let status: u16 = resp
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let flags = resp
                .lines()
                .find_map(|l| l.strip_prefix("x-meshctl-response-flags: "))
                .unwrap_or("")
                .to_string();
            let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
            (status, flags, body)
        } else {
            let out = self.client(c.who, c.port).await;
            let mut r = http::Request::builder()
                .method(c.method)
                .uri(format!("http://{out}{}", c.path));
            for (k, v) in &c.headers {
                r = r.header(*k, *v);
            }
            let resp = self
                .http
                .request(r.body(Full::new(Bytes::new())).unwrap())
                .await
                .unwrap();
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            let flags = parts
                .headers
                .get("x-meshctl-response-flags")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            (
                parts.status.as_u16(),
                flags,
                String::from_utf8_lossy(&body).into_owned(),
            )
        };
        let reached = self.echo[app].completed() - before;
        let detail =
            format!("status {status}, flags {flags:?}, body {body:?}, reached app {reached}");
        let seen = match status {
            200 if reached == 1 => Pass,
            403 if body == "RBAC: access denied" && flags == "RBAC" && reached == 0 => Denied,
            400 if reached == 0 => Bad,
            _ => return (Bad, format!("unexpected: {detail}")),
        };
        (seen, detail)
    }
}

fn backend_cfg(
    mesh: &Mesh,
    ports: &HashMap<Port, u16>,
    revision: u64,
) -> meshapi::proxy::ProxyConfig {
    let yaml = format!(
        "{}inbound:\n  - {{ port: {}, protocol: http, mode: PERMISSIVE }}\n  - {{ port: {}, protocol: http, mode: PERMISSIVE }}\n  - {{ port: {}, protocol: tcp, mode: PERMISSIVE }}\n",
        base_yaml(&mesh.identity_yaml("backend"), revision),
        ports[&Port::A],
        ports[&Port::B],
        ports[&Port::T],
    );
    parse(&yaml)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_policy_table_over_mtls() {
    let mesh = Mesh::new();
    let echo_a = EchoServer::start("a").await;
    let echo_b = EchoServer::start("b").await;
    let tcp_echo = TcpEcho::start().await;
    let ports = HashMap::from([
        (Port::A, echo_a.port()),
        (Port::B, echo_b.port()),
        (Port::T, tcp_echo.addr().port()),
    ]);
    let b = meshproxy::build(backend_cfg(&mesh, &ports, 1))
        .await
        .unwrap();
    let mut h = Harness {
        mesh,
        b,
        ports,
        echo: [echo_a, echo_b],
        clients: HashMap::new(),
        http: http1_client(),
    };
    let sets = table();
    let mut failures = Vec::new();
    let mut total = 0;
    let mut covered: HashMap<(Who, Port, Want), usize> = HashMap::new();
    for (i, s) in sets.iter().enumerate() {
        let subst = |p: &String| {
            p.replace("{A}", &h.ports[&Port::A].to_string())
                .replace("{B}", &h.ports[&Port::B].to_string())
                .replace("{T}", &h.ports[&Port::T].to_string())
        };
        let docs: Vec<AuthorizationPolicy> =
            s.policies.iter().map(|p| parse_policy(&subst(p))).collect();
        let refs: Vec<&AuthorizationPolicy> = docs.iter().collect();
        let security = MeshSecurity {
            path_normalization: s.normalization,
            ..MeshSecurity::default()
        };
        let compiled = compile_for_workload(&refs, &backend_workload(), &security)
            .unwrap_or_else(|e| panic!("{}: {e}", s.name));
        let revision = 2 + i as u64;
        let mut cfg = h.backend_cfg(revision);
        cfg.authorization = (!compiled.is_empty()).then_some(compiled);
        assert!(cfg.validate().is_empty(), "{}", s.name);
        h.b.handle.apply(cfg).unwrap();
        assert_eq!(h.b.handle.config().revision, revision);
        for c in &s.cases {
            total += 1;
            let (got, detail) = h.run(c).await;
            *covered.entry((c.who, c.port, c.want)).or_default() += 1;
            if got != c.want {
                failures.push(format!(
                    "[{}] {:?} {:?} {} {} {:?}: want {:?}, got {got:?} ({detail})",
                    s.name, c.who, c.port, c.method, c.path, c.headers, c.want
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("authz table: {total} cases in {} policy sets", sets.len());
    assert!(total >= 80, "only {total} cases");
    // Every identity is seen both allowed and denied, over HTTP; TCP both ways too.
    for who in [Fe, Other, Prod, Plain] {
        for want in [Pass, Denied] {
            assert!(
                covered.contains_key(&(who, Port::A, want)),
                "{who:?} never {want:?}"
            );
        }
    }
    assert!(
        covered.contains_key(&(Fe, Port::T, Pass)) && covered.contains_key(&(Fe, Port::T, Denied))
    );
    assert!(
        covered.contains_key(&(Fe, Port::B, Pass)) && covered.contains_key(&(Fe, Port::B, Denied))
    );
}
