//! The authorization engine, table-driven: every rule shape (sources, operations, conditions,
//! their `not*` forms), both actions, precedence (DENY before ALLOW, root namespace, selectors,
//! targetRefs), dry-run, audit, TCP versus HTTP, plaintext versus mTLS, trust-domain aliases.
//! Each case compiles real Istio YAML for the `backend` workload and evaluates one request.
#![allow(clippy::unwrap_used)] // test helpers unwrap fixed inputs

use std::collections::BTreeMap;
use std::net::IpAddr;

use meshapi::authz::{HttpAttributes, MeshSecurity, Reason, RequestAttributes, WorkloadPolicy};
use meshmodel::compile::authz::compile_for_workload;
use meshmodel::istio::{AuthorizationPolicy, IstioResource};
use meshmodel::model::Workload;

const FRONTEND: &str = "spiffe://cluster.local/ns/default/sa/frontend-sa";

fn policies(yaml: &str) -> Vec<AuthorizationPolicy> {
    let mut out = Vec::new();
    for v in meshapi::yaml::documents(yaml).unwrap() {
        if v.is_null() {
            continue;
        }
        let api = v["apiVersion"].as_str().unwrap().to_string();
        let kind = v["kind"].as_str().unwrap().to_string();
        match IstioResource::from_value(&api, &kind, v).unwrap() {
            IstioResource::AuthorizationPolicy(p) => out.push(p),
            other => panic!("not an AuthorizationPolicy: {other:?}"),
        }
    }
    out
}

fn backend() -> Workload {
    Workload {
        compose_name: "backend".into(),
        service: "backend".into(),
        namespace: "default".into(),
        service_account: "backend".into(),
        labels: BTreeMap::from([
            ("app".into(), "backend".into()),
            ("version".into(), "v1".into()),
        ]),
        replicas: 1,
        ports: vec![8080],
    }
}

fn compile(yaml: &str, mesh: &MeshSecurity) -> WorkloadPolicy {
    let ps = policies(yaml);
    let refs: Vec<&AuthorizationPolicy> = ps.iter().collect();
    let wp = compile_for_workload(&refs, &backend(), mesh).unwrap();
    // The snapshot survives the trip through the proxy's config document.
    let json = serde_json::to_string(&wp).unwrap();
    assert_eq!(serde_json::from_str::<WorkloadPolicy>(&json).unwrap(), wp);
    wp
}

#[derive(Clone, Copy)]
struct R {
    peer: Option<&'static str>,
    src: &'static str,
    remote: Option<&'static str>,
    dst: &'static str,
    port: u16,
    sni: Option<&'static str>,
    http: Option<(&'static str, &'static str, &'static str)>,
    headers: &'static [(&'static str, &'static str)],
}

/// An HTTP request from frontend-sa over mTLS to backend:8080.
fn get(path: &'static str) -> R {
    req("GET", path)
}

fn req(method: &'static str, path: &'static str) -> R {
    R {
        peer: Some(FRONTEND),
        src: "10.0.0.1",
        remote: None,
        dst: "10.0.0.2",
        port: 8080,
        sni: None,
        http: Some((method, "backend:8080", path)),
        headers: &[],
    }
}

impl R {
    fn peer(mut self, p: &'static str) -> R {
        self.peer = Some(p);
        self
    }
    fn plain(mut self) -> R {
        self.peer = None;
        self
    }
    fn src(mut self, ip: &'static str) -> R {
        self.src = ip;
        self
    }
    fn remote(mut self, ip: &'static str) -> R {
        self.remote = Some(ip);
        self
    }
    fn dst(mut self, ip: &'static str) -> R {
        self.dst = ip;
        self
    }
    fn port(mut self, p: u16) -> R {
        self.port = p;
        self
    }
    fn sni(mut self, s: &'static str) -> R {
        self.sni = Some(s);
        self
    }
    fn host(mut self, h: &'static str) -> R {
        if let Some(x) = self.http.as_mut() {
            x.1 = h;
        }
        self
    }
    fn headers(mut self, h: &'static [(&'static str, &'static str)]) -> R {
        self.headers = h;
        self
    }
    fn tcp(mut self) -> R {
        self.http = None;
        self
    }

    fn eval<T>(&self, wp: &WorkloadPolicy, f: impl FnOnce(meshapi::authz::Decision<'_>) -> T) -> T {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let http = self.http.map(|(method, host, path)| HttpAttributes {
            method,
            host,
            path,
            headers: &self.headers,
            auth: None,
        });
        let attrs = RequestAttributes {
            peer_principal: self.peer,
            source_ip: ip(self.src),
            remote_ip: self.remote.map(ip),
            destination_ip: ip(self.dst),
            destination_port: self.port,
            sni: self.sni,
            http,
        };
        f(wp.evaluate(&attrs))
    }
}

const FRONTEND_ONLY: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: backend-allow-frontend, namespace: default}
spec:
  selector: {matchLabels: {app: backend}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/frontend-sa"]}}]
"#;

const REQUIRE_MTLS: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-mtls, namespace: default}
spec:
  action: DENY
  rules: [{from: [{source: {notPrincipals: ["*"]}}]}]
"#;

const NAMESPACES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: from-ns, namespace: default}
spec:
  rules: [{from: [{source: {namespaces: ["prod", "team-*"]}}]}]
"#;

const NOT_NAMESPACES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-default, namespace: default}
spec:
  action: DENY
  rules: [{from: [{source: {notNamespaces: ["default"]}}]}]
"#;

const SERVICE_ACCOUNTS: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: by-sa, namespace: default}
spec:
  rules: [{from: [{source: {serviceAccounts: ["frontend-sa", "other/worker"]}}]}]
"#;

const IP_BLOCKS: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: by-ip, namespace: default}
spec:
  rules: [{from: [{source: {ipBlocks: ["10.1.0.0/16"], notIpBlocks: ["10.1.2.3"]}}]}]
"#;

const REMOTE_IP: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: block-remote, namespace: default}
spec:
  action: DENY
  rules: [{from: [{source: {remoteIpBlocks: ["203.0.113.0/24"]}}]}]
"#;

const METHODS_PATHS: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api, namespace: default}
spec:
  rules:
  - to:
    - operation: {methods: ["GET", "HEAD"], paths: ["/api/*", "/health"]}
    - operation: {methods: ["POST"], paths: ["/api/orders"]}
"#;

const DENY_ADMIN: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin", "/admin/*"]}}]}]
"#;

const DENY_NOT_GET: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: read-only, namespace: default}
spec:
  action: DENY
  rules: [{to: [{operation: {notMethods: ["GET"]}}]}]
"#;

const TEMPLATES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: templates, namespace: default}
spec:
  rules: [{to: [{operation: {paths: ["/users/{*}/profile", "/files/{**}"]}}]}]
"#;

const PORTS: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: port-8080, namespace: default}
spec:
  rules: [{to: [{operation: {ports: ["8080"]}}]}]
"#;

const DENY_NOT_PORTS: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-8080, namespace: default}
spec:
  action: DENY
  rules: [{to: [{operation: {notPorts: ["8080"]}}]}]
"#;

const HOSTS: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: hosts, namespace: default}
spec:
  rules: [{to: [{operation: {hosts: ["backend", "backend.default.svc.cluster.local", "*.example.com"]}}]}]
"#;

const HEADERS: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: token, namespace: default}
spec:
  rules:
  - when:
    - key: request.headers[X-Token]
      values: ["secret-*"]
      notValues: ["secret-revoked"]
"#;

const WHEN_DENY: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: when-deny, namespace: default}
spec:
  action: DENY
  rules:
  - when: [{key: source.ip, values: ["10.9.0.0/16"]}]
  - when: [{key: destination.port, values: ["9090"]}]
  - when: [{key: connection.sni, values: ["*.blocked.test"]}]
  - when: [{key: source.principal, values: ["cluster.local/ns/default/sa/evil"]}]
  - when: [{key: source.namespace, values: ["quarantine"]}]
  - when: [{key: destination.ip, values: ["192.0.2.0/24"]}]
  - when: [{key: remote.ip, notValues: ["0.0.0.0/0", "::/0"]}]
"#;

const ALLOW_NOTHING: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: default}
spec: {}
"#;

const ALLOW_ALL: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: default}
spec:
  rules: [{}]
"#;

const DENY_ALL: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: default}
spec:
  action: DENY
  rules: [{}]
"#;

const DENY_AND_ALLOW: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-default-ns, namespace: default}
spec:
  rules: [{from: [{source: {namespaces: ["default"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-bad, namespace: default}
spec:
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/default/sa/bad"]}}]}]
"#;

const SCOPES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-deny-legacy, namespace: istio-system}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: ["legacy"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-ns-deny-all, namespace: other}
spec:
  action: DENY
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: frontend-only-deny-all, namespace: default}
spec:
  selector: {matchLabels: {app: frontend}}
  action: DENY
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-allow-backend-get, namespace: istio-system}
spec:
  selector: {matchLabels: {app: backend}}
  rules: [{to: [{operation: {methods: ["GET"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: service-target-post, namespace: default}
spec:
  targetRefs: [{kind: Service, group: "", name: backend}]
  rules: [{to: [{operation: {methods: ["POST"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: gateway-target-deny-all, namespace: default}
spec:
  targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: backend}
  action: DENY
  rules: [{}]
"#;

const DRY_RUN: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: shadow-deny-all
  namespace: default
  annotations: {istio.io/dry-run: "true"}
spec:
  action: DENY
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: shadow-allow-public
  namespace: default
  annotations: {istio.io/dry-run: "true"}
spec:
  rules: [{to: [{operation: {paths: ["/public*"]}}]}]
"#;

const AUDIT: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-admin, namespace: default}
spec:
  action: AUDIT
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
"#;

const TCP_ALLOW_MIXED: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: tcp-allow, namespace: default}
spec:
  rules:
  - from: [{source: {namespaces: ["ns-1"]}}]
    to: [{operation: {methods: ["GET"]}}]
  - from: [{source: {namespaces: ["ns-2"]}}]
    to: [{operation: {ports: ["8080"]}}]
"#;

const TCP_DENY_MIXED: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: tcp-deny, namespace: default}
spec:
  action: DENY
  rules:
  - from: [{source: {namespaces: ["ns-1"]}}]
    to: [{operation: {methods: ["GET"]}}]
"#;

const JWT: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: needs-jwt, namespace: default}
spec:
  rules: [{from: [{source: {requestPrincipals: ["*"]}}]}]
"#;

const DENY_NO_JWT: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-no-jwt, namespace: default}
spec:
  action: DENY
  rules: [{from: [{source: {notRequestPrincipals: ["*"]}}]}]
"#;

const ALIASES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: aliases, namespace: default}
spec:
  rules:
  - from: [{source: {principals: ["old.td/ns/default/sa/frontend-sa", "cluster.local/ns/default/sa/worker"]}}]
  - from: [{source: {trustDomains: ["new.td"], namespaces: ["ops"]}}]
"#;

struct Case {
    name: &'static str,
    yaml: &'static str,
    req: R,
    allow: bool,
    /// The deciding policy's name, when one decides.
    by: Option<&'static str>,
}

fn c(
    name: &'static str,
    yaml: &'static str,
    req: R,
    allow: bool,
    by: Option<&'static str>,
) -> Case {
    Case {
        name,
        yaml,
        req,
        allow,
        by,
    }
}

fn cases() -> Vec<Case> {
    let fo = Some("backend-allow-frontend");
    vec![
        // The user's example.
        c("frontend-sa allowed", FRONTEND_ONLY, get("/"), true, fo),
        c(
            "frontend-sa bare id allowed",
            FRONTEND_ONLY,
            get("/").peer("cluster.local/ns/default/sa/frontend-sa"),
            true,
            fo,
        ),
        c(
            "other sa denied",
            FRONTEND_ONLY,
            get("/").peer("spiffe://cluster.local/ns/default/sa/other"),
            false,
            None,
        ),
        c(
            "same sa other ns denied",
            FRONTEND_ONLY,
            get("/").peer("spiffe://cluster.local/ns/prod/sa/frontend-sa"),
            false,
            None,
        ),
        c(
            "other trust domain denied",
            FRONTEND_ONLY,
            get("/").peer("spiffe://evil.td/ns/default/sa/frontend-sa"),
            false,
            None,
        ),
        c(
            "plaintext denied",
            FRONTEND_ONLY,
            get("/").plain(),
            false,
            None,
        ),
        c(
            "frontend-sa tcp allowed",
            FRONTEND_ONLY,
            get("/").tcp(),
            true,
            fo,
        ),
        c(
            "plaintext tcp denied",
            FRONTEND_ONLY,
            get("/").tcp().plain(),
            false,
            None,
        ),
        // notPrincipals: ["*"] denies plaintext only.
        c(
            "require mtls: plaintext denied",
            REQUIRE_MTLS,
            get("/").plain(),
            false,
            Some("require-mtls"),
        ),
        c(
            "require mtls: mtls allowed",
            REQUIRE_MTLS,
            get("/"),
            true,
            None,
        ),
        c(
            "require mtls: tcp plaintext denied",
            REQUIRE_MTLS,
            get("/").tcp().plain(),
            false,
            Some("require-mtls"),
        ),
        // namespaces.
        c(
            "ns exact",
            NAMESPACES,
            get("/").peer("spiffe://cluster.local/ns/prod/sa/x"),
            true,
            Some("from-ns"),
        ),
        c(
            "ns prefix",
            NAMESPACES,
            get("/").peer("spiffe://cluster.local/ns/team-a/sa/x"),
            true,
            Some("from-ns"),
        ),
        c("ns other", NAMESPACES, get("/"), false, None),
        c("ns plaintext", NAMESPACES, get("/").plain(), false, None),
        c("notNamespaces in", NOT_NAMESPACES, get("/"), true, None),
        c(
            "notNamespaces out",
            NOT_NAMESPACES,
            get("/").peer("spiffe://cluster.local/ns/prod/sa/x"),
            false,
            Some("only-default"),
        ),
        c(
            "notNamespaces plaintext",
            NOT_NAMESPACES,
            get("/").plain(),
            false,
            Some("only-default"),
        ),
        // serviceAccounts.
        c(
            "sa in policy ns",
            SERVICE_ACCOUNTS,
            get("/"),
            true,
            Some("by-sa"),
        ),
        c(
            "sa qualified",
            SERVICE_ACCOUNTS,
            get("/").peer("spiffe://cluster.local/ns/other/sa/worker"),
            true,
            Some("by-sa"),
        ),
        c(
            "sa wrong ns",
            SERVICE_ACCOUNTS,
            get("/").peer("spiffe://cluster.local/ns/other/sa/frontend-sa"),
            false,
            None,
        ),
        c(
            "sa plaintext",
            SERVICE_ACCOUNTS,
            get("/").plain(),
            false,
            None,
        ),
        // ipBlocks.
        c(
            "ip in cidr",
            IP_BLOCKS,
            get("/").src("10.1.5.5"),
            true,
            Some("by-ip"),
        ),
        c(
            "ip in notIpBlocks",
            IP_BLOCKS,
            get("/").src("10.1.2.3"),
            false,
            None,
        ),
        c(
            "ip out of cidr",
            IP_BLOCKS,
            get("/").src("10.2.0.1"),
            false,
            None,
        ),
        c(
            "ipv6 not in v4 cidr",
            IP_BLOCKS,
            get("/").src("fd00::1"),
            false,
            None,
        ),
        c(
            "ip tcp plaintext in cidr",
            IP_BLOCKS,
            get("/").src("10.1.0.9").tcp().plain(),
            true,
            Some("by-ip"),
        ),
        c(
            "remote ip blocked",
            REMOTE_IP,
            get("/").remote("203.0.113.5"),
            false,
            Some("block-remote"),
        ),
        c(
            "remote ip defaults to source",
            REMOTE_IP,
            get("/").src("203.0.113.9"),
            false,
            Some("block-remote"),
        ),
        c(
            "remote ip other",
            REMOTE_IP,
            get("/").src("203.0.113.9").remote("198.51.100.1"),
            true,
            None,
        ),
        // methods and paths.
        c(
            "GET prefix path",
            METHODS_PATHS,
            get("/api/users"),
            true,
            Some("api"),
        ),
        c(
            "GET exact path",
            METHODS_PATHS,
            get("/health"),
            true,
            Some("api"),
        ),
        c(
            "GET exact path is exact",
            METHODS_PATHS,
            get("/healthz"),
            false,
            None,
        ),
        c(
            "HEAD allowed",
            METHODS_PATHS,
            req("HEAD", "/api/x"),
            true,
            Some("api"),
        ),
        c(
            "POST second operation",
            METHODS_PATHS,
            req("POST", "/api/orders"),
            true,
            Some("api"),
        ),
        c(
            "POST other path",
            METHODS_PATHS,
            req("POST", "/api/users"),
            false,
            None,
        ),
        c(
            "DELETE denied",
            METHODS_PATHS,
            req("DELETE", "/api/users"),
            false,
            None,
        ),
        c(
            "method case-sensitive",
            METHODS_PATHS,
            req("get", "/api/users"),
            false,
            None,
        ),
        c(
            "query ignored",
            METHODS_PATHS,
            get("/health?verbose=1"),
            true,
            Some("api"),
        ),
        c(
            "path case-sensitive",
            METHODS_PATHS,
            get("/API/users"),
            false,
            None,
        ),
        c(
            "http-only allow on tcp",
            METHODS_PATHS,
            get("/api/users").tcp(),
            false,
            None,
        ),
        c(
            "deny exact",
            DENY_ADMIN,
            get("/admin"),
            false,
            Some("deny-admin"),
        ),
        c(
            "deny prefix",
            DENY_ADMIN,
            get("/admin/users"),
            false,
            Some("deny-admin"),
        ),
        c(
            "deny prefix is segment",
            DENY_ADMIN,
            get("/administrator"),
            true,
            None,
        ),
        c("deny other", DENY_ADMIN, get("/public"), true, None),
        c(
            "http-only deny on tcp denies",
            DENY_ADMIN,
            get("/").tcp(),
            false,
            Some("deny-admin"),
        ),
        c("notMethods GET", DENY_NOT_GET, get("/x"), true, None),
        c(
            "notMethods POST",
            DENY_NOT_GET,
            req("POST", "/x"),
            false,
            Some("read-only"),
        ),
        c(
            "template one segment",
            TEMPLATES,
            get("/users/42/profile"),
            true,
            Some("templates"),
        ),
        c(
            "template one is one",
            TEMPLATES,
            get("/users/4/2/profile"),
            false,
            None,
        ),
        c(
            "template many",
            TEMPLATES,
            get("/files/a/b/c.txt"),
            true,
            Some("templates"),
        ),
        c(
            "template many needs a segment",
            TEMPLATES,
            get("/files"),
            false,
            None,
        ),
        // ports.
        c("port match http", PORTS, get("/"), true, Some("port-8080")),
        c(
            "port mismatch http",
            PORTS,
            get("/").port(9090),
            false,
            None,
        ),
        c(
            "port match tcp",
            PORTS,
            get("/").tcp(),
            true,
            Some("port-8080"),
        ),
        c(
            "port mismatch tcp",
            PORTS,
            get("/").tcp().port(9090),
            false,
            None,
        ),
        c(
            "notPorts other",
            DENY_NOT_PORTS,
            get("/").port(9090),
            false,
            Some("only-8080"),
        ),
        c("notPorts same", DENY_NOT_PORTS, get("/"), true, None),
        // hosts.
        // The whole authority is compared, port included (Istio): `backend` is not
        // `backend:8080`.
        c("host with port", HOSTS, get("/"), false, None),
        c(
            "host without port",
            HOSTS,
            get("/").host("backend"),
            true,
            Some("hosts"),
        ),
        c(
            "host case",
            HOSTS,
            get("/").host("BACKEND.default.svc.cluster.local"),
            true,
            Some("hosts"),
        ),
        c(
            "host suffix",
            HOSTS,
            get("/").host("api.example.com"),
            true,
            Some("hosts"),
        ),
        c(
            "host suffix with port",
            HOSTS,
            get("/").host("api.example.com:443"),
            false,
            None,
        ),
        c("host other", HOSTS, get("/").host("evil.test"), false, None),
        // headers.
        c(
            "header prefix",
            HEADERS,
            get("/").headers(&[("x-token", "secret-1")]),
            true,
            Some("token"),
        ),
        c(
            "header notValues",
            HEADERS,
            get("/").headers(&[("x-token", "secret-revoked")]),
            false,
            None,
        ),
        c("header missing", HEADERS, get("/"), false, None),
        c(
            "header name case",
            HEADERS,
            get("/").headers(&[("X-TOKEN", "secret-2")]),
            true,
            Some("token"),
        ),
        c(
            "header on tcp allows nothing",
            HEADERS,
            get("/").tcp(),
            false,
            None,
        ),
        // when conditions.
        c(
            "when source.ip",
            WHEN_DENY,
            get("/").src("10.9.1.1"),
            false,
            Some("when-deny"),
        ),
        c(
            "when destination.port",
            WHEN_DENY,
            get("/").port(9090),
            false,
            Some("when-deny"),
        ),
        c(
            "when sni",
            WHEN_DENY,
            get("/").sni("x.blocked.test"),
            false,
            Some("when-deny"),
        ),
        c(
            "when source.principal",
            WHEN_DENY,
            get("/").peer("spiffe://cluster.local/ns/default/sa/evil"),
            false,
            Some("when-deny"),
        ),
        c(
            "when source.namespace",
            WHEN_DENY,
            get("/").peer("spiffe://cluster.local/ns/quarantine/sa/x"),
            false,
            Some("when-deny"),
        ),
        c(
            "when destination.ip",
            WHEN_DENY,
            get("/").dst("192.0.2.7"),
            false,
            Some("when-deny"),
        ),
        c(
            "when none match",
            WHEN_DENY,
            get("/").sni("ok.test"),
            true,
            None,
        ),
        c("when none match tcp", WHEN_DENY, get("/").tcp(), true, None),
        // rule shapes.
        c(
            "allow without rules denies",
            ALLOW_NOTHING,
            get("/"),
            false,
            None,
        ),
        c(
            "allow without rules denies tcp",
            ALLOW_NOTHING,
            get("/").tcp(),
            false,
            None,
        ),
        c(
            "empty rule allows",
            ALLOW_ALL,
            get("/").plain(),
            true,
            Some("allow-all"),
        ),
        c(
            "empty rule allows tcp",
            ALLOW_ALL,
            get("/").tcp().plain(),
            true,
            Some("allow-all"),
        ),
        c(
            "deny empty rule",
            DENY_ALL,
            get("/"),
            false,
            Some("deny-all"),
        ),
        c(
            "deny empty rule tcp",
            DENY_ALL,
            get("/").tcp(),
            false,
            Some("deny-all"),
        ),
        c("no policies", "", get("/").plain(), true, None),
        // precedence.
        c(
            "deny beats allow",
            DENY_AND_ALLOW,
            get("/").peer("spiffe://cluster.local/ns/default/sa/bad"),
            false,
            Some("deny-bad"),
        ),
        c(
            "allow after deny",
            DENY_AND_ALLOW,
            get("/"),
            true,
            Some("allow-default-ns"),
        ),
        c(
            "neither",
            DENY_AND_ALLOW,
            get("/").peer("spiffe://cluster.local/ns/prod/sa/x"),
            false,
            None,
        ),
        c(
            "root deny applies",
            SCOPES,
            get("/").peer("spiffe://cluster.local/ns/legacy/sa/x"),
            false,
            Some("mesh-deny-legacy"),
        ),
        c(
            "root allow with selector",
            SCOPES,
            get("/"),
            true,
            Some("mesh-allow-backend-get"),
        ),
        c(
            "targetRef service allow",
            SCOPES,
            req("POST", "/"),
            true,
            Some("service-target-post"),
        ),
        c(
            "other ns, other selector, gateway ignored",
            SCOPES,
            req("PUT", "/"),
            false,
            None,
        ),
        // dry-run never enforces.
        c(
            "dry-run deny not enforced",
            DRY_RUN,
            get("/private"),
            true,
            None,
        ),
        c(
            "dry-run allow not enforced",
            DRY_RUN,
            get("/public"),
            true,
            None,
        ),
        // audit never decides.
        c("audit match allowed", AUDIT, get("/admin"), true, None),
        // TCP versus HTTP.
        c(
            "tcp allow: http-only rule ignored",
            TCP_ALLOW_MIXED,
            get("/").tcp().peer("spiffe://cluster.local/ns/ns-1/sa/a"),
            false,
            None,
        ),
        c(
            "tcp allow: http GET allowed",
            TCP_ALLOW_MIXED,
            get("/").peer("spiffe://cluster.local/ns/ns-1/sa/a"),
            true,
            Some("tcp-allow"),
        ),
        c(
            "tcp allow: tcp rule applies",
            TCP_ALLOW_MIXED,
            get("/").tcp().peer("spiffe://cluster.local/ns/ns-2/sa/a"),
            true,
            Some("tcp-allow"),
        ),
        c(
            "tcp deny: http part dropped",
            TCP_DENY_MIXED,
            get("/").tcp().peer("spiffe://cluster.local/ns/ns-1/sa/a"),
            false,
            Some("tcp-deny"),
        ),
        c(
            "tcp deny: rest still applies",
            TCP_DENY_MIXED,
            get("/").tcp().peer("spiffe://cluster.local/ns/ns-2/sa/a"),
            true,
            None,
        ),
        c(
            "tcp deny: http POST not denied",
            TCP_DENY_MIXED,
            req("POST", "/").peer("spiffe://cluster.local/ns/ns-1/sa/a"),
            true,
            None,
        ),
        c(
            "tcp deny: http GET denied",
            TCP_DENY_MIXED,
            get("/").peer("spiffe://cluster.local/ns/ns-1/sa/a"),
            false,
            Some("tcp-deny"),
        ),
        // JWT fields on a request that carries no verified token.
        c("requestPrincipals never match", JWT, get("/"), false, None),
        c(
            "notRequestPrincipals always match",
            DENY_NO_JWT,
            get("/"),
            false,
            Some("deny-no-jwt"),
        ),
        c(
            "notRequestPrincipals dropped on tcp: deny",
            DENY_NO_JWT,
            get("/").tcp(),
            false,
            Some("deny-no-jwt"),
        ),
    ]
}

#[test]
fn table() {
    let mesh = MeshSecurity::default();
    let all = cases();
    assert!(all.len() >= 80, "only {} cases", all.len());
    let mut failures = Vec::new();
    for case in &all {
        let wp = compile(case.yaml, &mesh);
        case.req.eval(&wp, |d| {
            let by = d.policy.map(|p| p.name);
            if d.allowed != case.allow {
                failures.push(format!(
                    "{}: allowed={} ({:?}), want {}",
                    case.name, d.allowed, d.reason, case.allow
                ));
            }
            if let Some(want) = case.by {
                if by != Some(want) {
                    failures.push(format!("{}: decided by {by:?}, want {want}", case.name));
                }
            } else if by.is_some() {
                failures.push(format!("{}: decided by {by:?}, want no policy", case.name));
            }
        });
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

#[test]
fn trust_domain_aliases() {
    let mesh = MeshSecurity {
        trust_domain: "new.td".into(),
        trust_domain_aliases: vec!["old.td".into()],
        ..MeshSecurity::default()
    };
    let wp = compile(ALIASES, &mesh);
    let cases = [
        ("spiffe://new.td/ns/default/sa/frontend-sa", true),
        ("spiffe://old.td/ns/default/sa/frontend-sa", true),
        ("spiffe://other.td/ns/default/sa/frontend-sa", false),
        // cluster.local in a policy stands for the mesh's trust domain and its aliases.
        ("spiffe://new.td/ns/default/sa/worker", true),
        ("spiffe://old.td/ns/default/sa/worker", true),
        ("spiffe://cluster.local/ns/default/sa/worker", false),
        // trustDomains expand to the aliases too.
        ("spiffe://old.td/ns/ops/sa/x", true),
        ("spiffe://other.td/ns/ops/sa/x", false),
    ];
    for (peer, want) in cases {
        get("/")
            .peer(peer)
            .eval(&wp, |d| assert_eq!(d.allowed, want, "{peer}"));
    }
}

#[test]
fn decisions_carry_what_the_proxy_reports() {
    let wp = compile(
        &format!("{DENY_AND_ALLOW}---{AUDIT}---{DRY_RUN}"),
        &MeshSecurity::default(),
    );
    get("/admin")
        .peer("spiffe://cluster.local/ns/default/sa/bad")
        .eval(&wp, |d| {
            assert!(!d.allowed);
            assert_eq!(d.reason, Reason::DeniedByPolicy);
            let p = d.policy.unwrap();
            assert_eq!((p.namespace, p.name, p.rule), ("default", "deny-bad", 0));
            assert_eq!(p.id, "ns[default]-policy[deny-bad]-rule[0]");
            assert_eq!(d.audit.unwrap().name, "audit-admin");
            let shadow = d.dry_run.deny.unwrap();
            assert!(!shadow.allowed);
            assert_eq!(shadow.policy.unwrap().name, "shadow-deny-all");
            let shadow_allow = d.dry_run.allow.unwrap();
            assert!(!shadow_allow.allowed && shadow_allow.policy.is_none());
        });
    get("/public").eval(&wp, |d| {
        assert!(d.allowed);
        assert!(d.audit.is_none());
        assert!(d.dry_run.allow.unwrap().allowed);
    });
    assert_eq!(meshapi::authz::DENIED_BODY, "RBAC: access denied");
    assert_eq!(meshapi::authz::DENIED_STATUS, 403);
}

#[test]
fn custom_is_refused_and_bad_keys_are_errors() {
    let custom = policies(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: default}
spec: {action: CUSTOM, provider: {name: x}, rules: [{}]}
"#,
    );
    let refs: Vec<&AuthorizationPolicy> = custom.iter().collect();
    let err = compile_for_workload(&refs, &backend(), &MeshSecurity::default()).unwrap_err();
    assert!(err.to_string().contains("CUSTOM"), "{err}");
    let bad = policies(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: default}
spec: {action: DENY, rules: [{when: [{key: source.ipx, values: ["1.2.3.4"]}]}]}
"#,
    );
    let refs: Vec<&AuthorizationPolicy> = bad.iter().collect();
    let err = compile_for_workload(&refs, &backend(), &MeshSecurity::default()).unwrap_err();
    assert!(err.to_string().contains("bad.default"), "{err}");
}
