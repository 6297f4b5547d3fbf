//! The per-connection rule filter (`WorkloadPolicy::connection_filter` + `evaluate_on`) decides
//! exactly as the full evaluation: for a policy set using every condition, each combination of
//! connection attributes (identities, plaintext, source and destination addresses, ports, SNI)
//! and request (methods, paths, hosts, headers, x-forwarded-for style remote IPs) gets the same
//! `Decision` (allowed, reason, deciding policy and rule, audit and dry-run findings) both ways,
//! and the filter does drop rules.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::IpAddr;

use meshapi::authz::{HttpAttributes, MeshSecurity, RequestAttributes, WorkloadPolicy};
use meshmodel::compile::authz::compile_for_workload;
use meshmodel::istio::{AuthorizationPolicy, IstioResource};
use meshmodel::model::Workload;

const POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-mixed, namespace: default}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
  - from: [{source: {notNamespaces: [default, prod]}}]
    to: [{operation: {ports: ["7000"]}}]
  - from: [{source: {principals: [cluster.local/ns/default/sa/bad]}}, {source: {ipBlocks: ["10.9.0.0/16"]}}]
  - when: [{key: connection.sni, values: ["evil.*"]}, {key: "request.headers[x-kill]", values: ["*"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-fe, namespace: default}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/frontend-sa]}}]
    to: [{operation: {methods: [GET, POST], notPaths: ["/private*"]}}]
  - from: [{source: {namespaces: ["pro*"], notIpBlocks: ["10.0.0.0/8"]}}]
    when: [{key: destination.port, values: ["8080"]}, {key: remote.ip, notValues: ["203.0.113.0/24"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-any-get, namespace: default}
spec:
  action: ALLOW
  rules:
  - to: [{operation: {methods: [GET], paths: ["/public/{**}"], hosts: ["*.example"]}}]
  - from: [{source: {serviceAccounts: [other-sa]}}]
    when: [{key: destination.ip, values: ["127.0.0.1"]}, {key: source.ip, notValues: ["127.0.0.2"]}]
  - from: [{source: {notPrincipals: ["*"]}}]
    to: [{operation: {notPorts: ["9090"]}}]
    when: [{key: "request.headers[x-plain]", values: ["yes"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: guarded-deny, namespace: default}
spec:
  action: DENY
  rules:
  - to: [{operation: {methods: [PUT, PATCH], paths: ["/users/{*}/items/{**}", "/exact"]}}]
  - when: [{key: "request.headers[x-tenant]", values: ["t1*"]}, {key: "request.headers[:method]", values: [PURGE]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: guarded-audit, namespace: default}
spec:
  action: AUDIT
  rules:
  - to: [{operation: {methods: ["PO*"]}}, {operation: {paths: ["*.php"]}}]
  - when: [{key: "request.headers[x-debug]", notValues: ["off"]}]
    to: [{operation: {paths: ["/dbg"], notMethods: [GET]}}]
  - to: [{operation: {paths: ["/users/{*}/items/{**}"], methods: [GET]}}]
    when: [{key: "request.headers[x-tenant]", values: ["*"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-writes, namespace: default}
spec:
  action: AUDIT
  rules:
  - to: [{operation: {methods: [POST, DELETE]}}]
  - from: [{source: {principals: ["*"]}}]
    when: [{key: connection.sni, values: ["p8080.*"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: would-deny, namespace: default, annotations: {istio.io/dry-run: "true"}}
spec:
  action: DENY
  rules:
  - from: [{source: {namespaces: [prod]}}]
    to: [{operation: {paths: ["/public/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: would-allow, namespace: default, annotations: {istio.io/dry-run: "true"}}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/other-sa]}}]
  - when: [{key: destination.port, notValues: ["7000"]}]
"#;

fn compile() -> WorkloadPolicy {
    let mut ps = Vec::new();
    for v in meshapi::yaml::documents(POLICIES).unwrap() {
        let api = v["apiVersion"].as_str().unwrap().to_string();
        let kind = v["kind"].as_str().unwrap().to_string();
        match IstioResource::from_value(&api, &kind, v).unwrap() {
            IstioResource::AuthorizationPolicy(p) => ps.push(p),
            other => panic!("{other:?}"),
        }
    }
    let refs: Vec<&AuthorizationPolicy> = ps.iter().collect();
    let w = Workload {
        compose_name: "backend".into(),
        service: "backend".into(),
        namespace: "default".into(),
        service_account: "backend".into(),
        labels: BTreeMap::from([("app".into(), "backend".into())]),
        replicas: 1,
        ports: vec![8080],
    };
    compile_for_workload(&refs, &w, &MeshSecurity::default()).unwrap()
}

/// Method, path, host and headers of one request.
type Req = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

#[test]
fn filtered_evaluation_decides_exactly_as_the_full_one() {
    let wp = compile();
    let principals = [
        None,
        Some("spiffe://cluster.local/ns/default/sa/frontend-sa"),
        Some("spiffe://cluster.local/ns/default/sa/other-sa"),
        Some("spiffe://cluster.local/ns/default/sa/bad"),
        Some("spiffe://cluster.local/ns/prod/sa/api"),
        Some("spiffe://cluster.local/ns/staging/sa/api"),
    ];
    let ips: [IpAddr; 4] = [
        "127.0.0.1".parse().unwrap(),
        "127.0.0.2".parse().unwrap(),
        "10.9.1.1".parse().unwrap(),
        "10.1.1.1".parse().unwrap(),
    ];
    let ports = [8080u16, 7000, 9090];
    let snis = [None, Some("p8080.inbound.mesh"), Some("evil.example")];
    let requests: [Req; 18] = [
        ("GET", "/", "backend", &[]),
        ("POST", "/api", "backend", &[]),
        ("GET", "/private/x", "backend", &[]),
        ("GET", "/public/a/b", "www.example", &[]),
        ("DELETE", "/admin/x", "backend", &[]),
        ("GET", "/x", "backend", &[("x-plain", "yes")]),
        ("GET", "/x", "backend", &[("x-kill", "1")]),
        ("GET", "/public/a", "backend", &[("x-plain", "yes")]),
        ("PUT", "/x", "a.example", &[("x-plain", "no")]),
        // Requests for the method, header and path guards (meshapi/src/authz/index.rs).
        ("PUT", "/users/1/items/a", "backend", &[]),
        ("PATCH", "/exact?x=1", "backend", &[]),
        ("PUT", "/exactly", "backend", &[]),
        ("PURGE", "/x", "backend", &[("x-tenant", "t1a")]),
        ("PURGE", "/x", "backend", &[("x-tenant", "u1")]),
        ("GET", "/users/1/items/z", "backend", &[("x-tenant", "")]),
        ("DELETE", "/dbg", "backend", &[]),
        ("GET", "/a.php", "backend", &[]),
        ("POST", "/users/1/items", "backend", &[("x-debug", "off")]),
    ];
    let remotes: [Option<IpAddr>; 2] = [None, Some("203.0.113.5".parse().unwrap())];
    let (mut checked, mut allowed, mut dropped_somewhere) = (0, 0, 0);
    for principal in principals {
        for source_ip in ips {
            for port in ports {
                for sni in snis {
                    let conn = RequestAttributes {
                        peer_principal: principal,
                        source_ip,
                        remote_ip: None,
                        destination_ip: "127.0.0.1".parse().unwrap(),
                        destination_port: port,
                        sni,
                        http: None,
                    };
                    let filter = wp.connection_filter(&conn);
                    if filter.len() < 19 {
                        dropped_somewhere += 1;
                    }
                    // TCP: evaluate_on falls back to the full evaluation.
                    assert_eq!(wp.evaluate_on(&conn, &filter), wp.evaluate(&conn));
                    for (method, path, host, headers) in requests {
                        for remote_ip in remotes {
                            let req = RequestAttributes {
                                remote_ip,
                                http: Some(HttpAttributes {
                                    method,
                                    host,
                                    path,
                                    headers: &headers,
                                    auth: None,
                                }),
                                ..conn
                            };
                            let full = wp.evaluate(&req);
                            assert_eq!(
                                wp.evaluate_on(&req, &filter),
                                full,
                                "{principal:?} {source_ip} :{port} {sni:?} {method} {path} {host} {headers:?} {remote_ip:?}"
                            );
                            checked += 1;
                            allowed += usize::from(full.allowed);
                        }
                    }
                }
            }
        }
    }
    assert_eq!(checked, 6 * 4 * 3 * 3 * 18 * 2);
    // The table is not degenerate: both outcomes occur, and filters drop rules.
    assert!(
        allowed > 100 && allowed < checked - 100,
        "{allowed} of {checked}"
    );
    assert!(dropped_somewhere > 100, "{dropped_somewhere}");
}
