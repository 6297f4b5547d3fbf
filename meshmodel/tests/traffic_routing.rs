//! The routing engine as a user observes it: real Istio YAML compiled for a client workload,
//! then requests decided — match semantics (order, OR/AND, regex full match, ignoreUriCase,
//! queryParams, withoutHeaders, sourceLabels), weights, redirect/rewrite/directResponse, CORS,
//! faults, mirrors, retry defaults, TCP routes, and the seed example compiled whole.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use meshapi::traffic::{
    Abort, AttemptOutcome, Body, LbAlgorithm, RequestView, RetryPolicy, RouteDecision, RouteTable,
};
use meshmodel::compile::routes::compile_routes;
use meshmodel::istio::RetryCondition;
use meshmodel::load::{LoadOptions, load};
use meshmodel::model::Inventory;

const BACKEND: &str = "backend.default.svc.cluster.local";

const COMPOSE: &str = "\
services:
  frontend:
    image: f
    labels: {app: frontend, version: v1}
    x-mesh: {serviceAccount: frontend-sa, ports: [{port: 3000, protocol: http}]}
  tester:
    image: t
    labels: {app: tester}
    x-mesh: {ports: [{port: 3001, protocol: http}]}
  backend-v1:
    image: b
    labels: {app: backend, version: v1}
    x-mesh: {service: backend, ports: [{port: 8080, protocol: http}]}
  backend-v2:
    image: b
    labels: {app: backend, version: v2}
    x-mesh: {service: backend, ports: [{port: 8080, protocol: http}]}
  db:
    image: d
    labels: {app: db}
    x-mesh: {ports: [{port: 5432, protocol: tcp}]}
  db-replica:
    image: d
    labels: {app: db, role: replica}
    x-mesh: {service: db, ports: [{port: 5432, protocol: tcp}]}
";

const DR: &str = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend}
spec:
  host: backend
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
";

fn compile_in(dir: &std::path::Path, client: &str) -> RouteTable {
    let mut opts = LoadOptions::new(dir);
    opts.env = Box::new(BTreeMap::<String, String>::new());
    let loaded = load(&opts);
    assert!(
        !loaded.has_errors(),
        "load errors: {:#?}",
        loaded.diagnostics
    );
    let inv = Inventory::from_compose(loaded.mesh.compose.as_ref());
    let w = inv
        .workloads
        .iter()
        .find(|w| w.compose_name == client)
        .unwrap();
    compile_routes(&loaded.mesh, &inv, w).unwrap()
}

/// Compiles `policies` (plus the backend DestinationRule) for `client`.
fn table_for(policies: &str, client: &str) -> RouteTable {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("compose.yaml"), COMPOSE).unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), format!("{DR}---\n{policies}")).unwrap();
    compile_in(dir.path(), client)
}

fn table(policies: &str) -> RouteTable {
    table_for(policies, "frontend")
}

fn vs(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: backend}}\nspec:\n  hosts: [backend]\n  http:\n{http}"
    )
}

/// A request to the backend.
struct Req {
    method: &'static str,
    path: &'static str,
    query: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    random: u64,
}

impl Req {
    fn get(path: &'static str) -> Req {
        Req {
            method: "GET",
            path,
            query: "",
            headers: Vec::new(),
            random: 0,
        }
    }
    fn header(mut self, k: &'static str, v: &'static str) -> Req {
        self.headers.push((k, v));
        self
    }
    fn query(mut self, q: &'static str) -> Req {
        self.query = q;
        self
    }
}

fn decide<'a>(t: &'a RouteTable, r: &Req) -> RouteDecision<'a> {
    t.route(&RequestView {
        host: BACKEND,
        port: 8080,
        method: r.method,
        scheme: "http",
        authority: "backend:8080",
        path: r.path,
        query: r.query,
        headers: &r.headers.as_slice(),
        random: r.random,
    })
}

/// `rule name -> subset` of the decision, or what else it was.
fn outcome(t: &RouteTable, r: &Req) -> String {
    match decide(t, r) {
        RouteDecision::Forward(f) => format!(
            "{}:{}",
            f.rule.name.as_deref().unwrap_or("-"),
            f.destination.destination.subset.as_deref().unwrap_or("all")
        ),
        RouteDecision::NoRoute => "404".into(),
        other => format!("{other:?}"),
    }
}

#[test]
fn header_match_routes_a_tagged_user_to_v2_and_everyone_else_to_v1() {
    let t = table(&vs("
  - name: tagged
    match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: backend, subset: v2}}]
  - name: rest
    route: [{destination: {host: backend, subset: v1}}]
"));
    assert_eq!(
        outcome(&t, &Req::get("/").header("end-user", "jason")),
        "tagged:v2"
    );
    assert_eq!(
        outcome(&t, &Req::get("/").header("end-user", "json")),
        "rest:v1"
    );
    assert_eq!(outcome(&t, &Req::get("/")), "rest:v1");
}

#[test]
fn match_semantics_table() {
    let t = table(&vs(r#"
  - name: first
    match: [{uri: {prefix: /api}}]
    route: [{destination: {host: backend, subset: v1}}]
  - name: shadowed
    match: [{uri: {prefix: /api/v2}}]
    route: [{destination: {host: backend, subset: v2}}]
  - name: or-blocks
    match: [{uri: {exact: /a}}, {uri: {exact: /b}}]
    route: [{destination: {host: backend, subset: v2}}]
  - name: and-conditions
    match: [{uri: {exact: /c}, method: {exact: POST}}]
    route: [{destination: {host: backend, subset: v2}}]
  - name: regex
    match: [{uri: {regex: "/items/[0-9]+"}}]
    route: [{destination: {host: backend, subset: v2}}]
  - name: nocase
    match: [{uri: {prefix: /Shop}, ignoreUriCase: true}]
    route: [{destination: {host: backend, subset: v2}}]
  - name: query
    match: [{uri: {exact: /q}, queryParams: {debug: {exact: "1"}, trace: {}}}]
    route: [{destination: {host: backend, subset: v2}}]
  - name: without
    match: [{uri: {exact: /w}, withoutHeaders: {x-canary: {exact: "no"}}}]
    route: [{destination: {host: backend, subset: v2}}]
  - name: present
    match: [{uri: {exact: /p}, headers: {x-flag: {}}}]
    route: [{destination: {host: backend, subset: v2}}]
  - name: header-regex
    match: [{uri: {exact: /h}, headers: {user-agent: {regex: ".*Firefox.*"}}}]
    route: [{destination: {host: backend, subset: v2}}]
"#));
    let post = |p| Req {
        method: "POST",
        ..Req::get(p)
    };
    let cases: Vec<(&str, Req, &str)> = vec![
        ("first match wins", Req::get("/api/v2/x"), "first:v1"),
        (
            "query is not part of the path",
            Req::get("/api").query("x=1"),
            "first:v1",
        ),
        ("block 1 of OR", Req::get("/a"), "or-blocks:v2"),
        ("block 2 of OR", Req::get("/b"), "or-blocks:v2"),
        ("AND: both hold", post("/c"), "and-conditions:v2"),
        ("AND: one fails", Req::get("/c"), "404"),
        ("regex full match", Req::get("/items/42"), "regex:v2"),
        (
            "regex must match whole path",
            Req::get("/items/42/x"),
            "404",
        ),
        (
            "regex must match from start",
            Req::get("/x/items/42"),
            "404",
        ),
        ("ignoreUriCase", Req::get("/sHoP/cart"), "nocase:v2"),
        (
            "query params",
            Req::get("/q").query("trace&debug=1"),
            "query:v2",
        ),
        (
            "query value differs",
            Req::get("/q").query("trace=1&debug=2"),
            "404",
        ),
        (
            "query param missing",
            Req::get("/q").query("debug=1"),
            "404",
        ),
        ("withoutHeaders: absent", Req::get("/w"), "without:v2"),
        (
            "withoutHeaders: other value",
            Req::get("/w").header("x-canary", "yes"),
            "without:v2",
        ),
        (
            "withoutHeaders: matching",
            Req::get("/w").header("x-canary", "no"),
            "404",
        ),
        (
            "{} = present",
            Req::get("/p").header("x-flag", ""),
            "present:v2",
        ),
        ("{} absent", Req::get("/p"), "404"),
        (
            "header regex",
            Req::get("/h").header("user-agent", "Mozilla Firefox 120"),
            "header-regex:v2",
        ),
        (
            "header regex miss",
            Req::get("/h").header("user-agent", "curl"),
            "404",
        ),
    ];
    for (name, req, want) in cases {
        assert_eq!(outcome(&t, &req), want, "{name}");
    }
}

#[test]
fn source_labels_and_namespace_are_decided_for_the_client() {
    let policies = vs("
  - name: from-tester
    match: [{sourceLabels: {app: tester}}]
    route: [{destination: {host: backend, subset: v2}}]
  - name: from-other-ns
    match: [{sourceNamespace: prod}]
    route: [{destination: {host: backend, subset: v2}}]
  - name: rest
    route: [{destination: {host: backend, subset: v1}}]
");
    let tester = table_for(&policies, "tester");
    let frontend = table_for(&policies, "frontend");
    assert_eq!(outcome(&tester, &Req::get("/")), "from-tester:v2");
    assert_eq!(outcome(&frontend, &Req::get("/")), "rest:v1");
    // Rules that can never apply to this client are not in its table.
    assert_eq!(frontend.service(BACKEND).unwrap().http.len(), 1);
}

#[test]
fn weights_90_10_hold_within_two_points() {
    let t = table(&vs("
  - route:
    - {destination: {host: backend, subset: v1}, weight: 90}
    - {destination: {host: backend, subset: v2}, weight: 10}
    - {destination: {host: backend, subset: v2}, weight: 0}
"));
    let mut v2 = 0;
    let mut rng = 0x1234_5678u64;
    for _ in 0..10_000 {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let r = Req {
            random: rng,
            ..Req::get("/")
        };
        if let RouteDecision::Forward(f) = decide(&t, &r) {
            assert_ne!(f.destination.weight, 0, "weight 0 gets nothing");
            if f.destination.destination.subset.as_deref() == Some("v2") {
                v2 += 1;
            }
        }
    }
    let share = f64::from(v2) / 100.0;
    assert!((8.0..=12.0).contains(&share), "v2 got {share}%");
}

#[test]
fn redirect_rewrite_and_direct_response_outputs() {
    let t = table(&vs("
  - name: moved
    match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, authority: example.com, scheme: https, redirectCode: 302}
  - name: moved-prefix
    match: [{uri: {prefix: /legacy}}]
    redirect: {prefixRewrite: /v2, port: 8443}
  - name: rewrite-prefix
    match: [{uri: {prefix: /api/v1}}]
    rewrite: {uri: /v1, authority: internal}
    route: [{destination: {host: backend}}]
  - name: rewrite-regex
    match: [{uri: {prefix: /users}}]
    rewrite: {uriRegexRewrite: {match: '^/users/([0-9]+)/profile$', rewrite: '/profile?id=\\1'}}
    route: [{destination: {host: backend}}]
  - name: teapot
    match: [{uri: {exact: /tea}}]
    directResponse: {status: 418, body: {string: short and stout}}
  - name: bytes
    match: [{uri: {exact: /bin}}]
    directResponse: {status: 200, body: {bytes: aGVsbG8=}}
"));
    match decide(&t, &Req::get("/old/page").query("a=1")) {
        RouteDecision::Redirect {
            status, location, ..
        } => {
            assert_eq!(status, 302);
            assert_eq!(location, "https://example.com/new?a=1");
        }
        other => panic!("{other:?}"),
    }
    match decide(&t, &Req::get("/legacy/x")) {
        RouteDecision::Redirect {
            status, location, ..
        } => {
            assert_eq!(status, 301, "Istio's default redirect code");
            assert_eq!(location, "http://backend:8443/v2/x");
        }
        other => panic!("{other:?}"),
    }
    let RouteDecision::Forward(f) = decide(&t, &Req::get("/api/v1/users")) else {
        panic!()
    };
    assert_eq!(f.upstream_path("/api/v1/users"), "/v1/users");
    assert_eq!(f.upstream_authority(), Some("internal"));
    let RouteDecision::Forward(f) = decide(&t, &Req::get("/users/7/profile")) else {
        panic!()
    };
    assert_eq!(f.upstream_path("/users/7/profile"), "/profile?id=7");
    match decide(&t, &Req::get("/tea")) {
        RouteDecision::Direct { response, .. } => {
            assert_eq!(response.status, 418);
            assert_eq!(response.body, Some(Body::Text("short and stout".into())));
        }
        other => panic!("{other:?}"),
    }
    match decide(&t, &Req::get("/bin")) {
        RouteDecision::Direct { response, .. } => {
            assert_eq!(response.body.as_ref().unwrap().as_bytes(), b"hello");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn header_operations_route_and_destination() {
    let t = table(&vs("
  - headers:
      request: {set: {X-Route: r}, remove: [X-Secret]}
      response: {add: {X-Served-By: mesh}}
    route:
    - destination: {host: backend, subset: v1}
      headers: {request: {set: {x-dest: v1}}}
"));
    let RouteDecision::Forward(f) = decide(&t, &Req::get("/")) else {
        panic!()
    };
    let [dest, route] = f.request_headers();
    assert_eq!(dest.set, vec![("x-dest".into(), "v1".into())]);
    assert_eq!(route.set, vec![("x-route".into(), "r".into())]);
    assert_eq!(route.remove, vec!["x-secret".to_string()]);
    assert_eq!(
        f.response_headers()[1].add,
        vec![("x-served-by".into(), "mesh".into())]
    );
}

#[test]
fn cors_preflight_is_answered_locally() {
    let t = table(&vs("
  - corsPolicy:
      allowOrigins: [{exact: 'https://app.example'}]
      allowMethods: [GET, POST]
      maxAge: 24h
    route: [{destination: {host: backend, subset: v1}}]
"));
    let pre = |origin| Req {
        method: "OPTIONS",
        ..Req::get("/")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
    };
    match decide(&t, &pre("https://app.example")) {
        RouteDecision::CorsPreflight { cors, allowed, .. } => {
            assert!(allowed);
            assert_eq!(cors.allow_methods.as_deref(), Some("GET,POST"));
            assert_eq!(cors.max_age_secs, Some(86400));
        }
        other => panic!("{other:?}"),
    }
    // Unmatched preflights are forwarded (Istio's default FORWARD).
    assert!(matches!(
        decide(&t, &pre("https://evil.example")),
        RouteDecision::Forward(_)
    ));
}

fn count_faults(t: &RouteTable) -> (u32, u32) {
    let (mut aborted, mut delayed) = (0, 0);
    for i in 0..10_000u64 {
        let r = Req {
            random: i.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ..Req::get("/")
        };
        if let RouteDecision::Forward(f) = decide(t, &r) {
            aborted += u32::from(f.fault.abort.is_some());
            delayed += u32::from(f.fault.delay.is_some());
        }
    }
    (aborted, delayed)
}

#[test]
fn fault_abort_50_percent_within_three_points_and_no_percentage_injects_nothing() {
    let t = table(&vs("
  - fault:
      abort: {httpStatus: 503, percentage: {value: 50}}
      delay: {fixedDelay: 2s, percentage: {value: 10}}
    route: [{destination: {host: backend, subset: v1}}]
"));
    let (aborted, delayed) = count_faults(&t);
    assert!((4700..=5300).contains(&aborted), "aborted {aborted}");
    assert!((800..=1200).contains(&delayed), "delayed {delayed}");
    let r = Req::get("/");
    let RouteDecision::Forward(f) = decide(&t, &Req { random: 3, ..r }) else {
        panic!()
    };
    if let Some(a) = f.fault.abort {
        assert_eq!(a, Abort::Http(503));
    }
    let none = table(&vs("
  - fault:
      abort: {httpStatus: 503}
      delay: {fixedDelay: 2s}
    route: [{destination: {host: backend, subset: v1}}]
"));
    assert_eq!(count_faults(&none), (0, 0));
    let grpc = table(&vs("
  - fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}
    route: [{destination: {host: backend, subset: v1}}]
"));
    let RouteDecision::Forward(f) = decide(&grpc, &Req::get("/")) else {
        panic!()
    };
    assert_eq!(f.fault.abort, Some(Abort::Grpc(14)));
}

#[test]
fn mirror_defaults_to_100_percent() {
    let t = table(&vs("
  - match: [{uri: {exact: /one}}]
    mirror: {host: backend, subset: v2}
    route: [{destination: {host: backend, subset: v1}}]
  - mirrors:
    - destination: {host: backend, subset: v2}
    - destination: {host: backend, subset: v1}
      percentage: {value: 0}
    route: [{destination: {host: backend, subset: v1}}]
"));
    for path in ["/one", "/two"] {
        for i in 0..1000u64 {
            let r = Req {
                random: i.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                ..Req::get(path)
            };
            let RouteDecision::Forward(f) = decide(&t, &r) else {
                panic!()
            };
            let m: Vec<_> = f.mirrors().collect();
            assert_eq!(m.len(), 1, "{path}");
            assert_eq!(m[0].destination.subset.as_deref(), Some("v2"));
        }
    }
}

fn retry_of(t: &RouteTable) -> Option<RetryPolicy> {
    let RouteDecision::Forward(f) = decide(t, &Req::get("/")) else {
        panic!()
    };
    f.retries().cloned()
}

#[test]
fn retry_defaults_one_per_documented_field() {
    let defaults = retry_of(&table(&vs("  - route: [{destination: {host: backend}}]\n"))).unwrap();
    // attempts: 2
    assert_eq!(defaults.attempts, 2);
    // retryOn: connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes
    assert_eq!(
        defaults.retry_on.to_string(),
        "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
    );
    // No status code is retriable by default since Istio 1.24: an application's 503 is not retried.
    assert!(defaults.retriable_status_codes.is_empty());
    let app_503 = AttemptOutcome::Response {
        status: 503,
        grpc_status: None,
    };
    assert!(!defaults.should_retry(&app_503));
    assert!(defaults.should_retry(&AttemptOutcome::ConnectFailure));
    assert!(defaults.should_retry(&AttemptOutcome::RefusedStream));
    assert!(defaults.should_retry(&AttemptOutcome::Response {
        status: 200,
        grpc_status: Some(14)
    }));
    // perTryTimeout: none (the route timeout bounds the tries).
    assert_eq!(defaults.per_try_timeout, None);
    // retryIgnorePreviousHosts: true.
    assert!(defaults.retry_ignore_previous_hosts);
    // backoff: 25ms.
    assert_eq!(defaults.backoff, Duration::from_millis(25));
    // A service without a VirtualService gets the same default policy.
    let plain = table("");
    assert_eq!(retry_of(&plain), Some(defaults.clone()));
    // timeout: none.
    let RouteDecision::Forward(f) = decide(&plain, &Req::get("/")) else {
        panic!()
    };
    assert_eq!(f.timeout(), None);
    // `retries` given without attempts disables retries.
    let off = table(&vs(
        "  - retries: {attempts: 0}\n    route: [{destination: {host: backend}}]\n",
    ));
    assert_eq!(retry_of(&off), None);
    // Status codes in retryOn imply retriable-status-codes.
    let codes = retry_of(&table(&vs(
        "  - retries: {attempts: 3, retryOn: '5xx,503'}\n    route: [{destination: {host: backend}}]\n",
    )))
    .unwrap();
    assert_eq!(codes.retriable_status_codes, vec![503]);
    assert!(
        codes
            .retry_on
            .contains(RetryCondition::RetriableStatusCodes)
    );
    assert!(codes.should_retry(&app_503));
    assert!(codes.should_retry(&AttemptOutcome::Reset { request_sent: true }));
    assert!(!codes.should_retry(&AttemptOutcome::Response {
        status: 404,
        grpc_status: None
    }));
}

#[test]
fn retry_conditions_table() {
    use AttemptOutcome as O;
    let resp = |status| O::Response {
        status,
        grpc_status: None,
    };
    let grpc = |g| O::Response {
        status: 200,
        grpc_status: Some(g),
    };
    let cases: Vec<(&str, O, bool)> = vec![
        ("5xx", resp(500), true),
        ("5xx", O::PerTryTimeout, true),
        ("5xx", resp(404), false),
        ("gateway-error", resp(502), true),
        ("gateway-error", resp(500), false),
        ("reset", O::Reset { request_sent: true }, true),
        ("reset", resp(503), false),
        (
            "reset-before-request",
            O::Reset {
                request_sent: false,
            },
            true,
        ),
        (
            "reset-before-request",
            O::Reset { request_sent: true },
            false,
        ),
        ("connect-failure", O::ConnectFailure, true),
        ("retriable-4xx", resp(409), true),
        ("retriable-4xx", resp(400), false),
        ("refused-stream", O::RefusedStream, true),
        ("cancelled", grpc(1), true),
        ("deadline-exceeded", grpc(4), true),
        ("internal", grpc(13), true),
        ("resource-exhausted", grpc(8), true),
        ("unavailable", grpc(14), true),
        ("unavailable", grpc(13), false),
    ];
    for (on, outcome, want) in cases {
        let t = table(&vs(&format!(
            "  - retries: {{attempts: 1, retryOn: '{on}'}}\n    route: [{{destination: {{host: backend}}}}]\n"
        )));
        assert_eq!(
            retry_of(&t).unwrap().should_retry(&outcome),
            want,
            "{on} {outcome:?}"
        );
    }
}

#[test]
fn tcp_routes_match_port_and_weigh() {
    let t = table(
        "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db}
spec:
  hosts: [db]
  tcp:
  - match: [{port: 5432, sourceLabels: {app: tester}}]
    route: [{destination: {host: db, subset: replica}}]
  - match: [{port: 5432}]
    route:
    - {destination: {host: db}, weight: 75}
    - {destination: {host: db, subset: replica}, weight: 25}
",
    );
    let db = "db.default.svc.cluster.local";
    let mut replica = 0;
    for i in 0..4000u64 {
        let d = t
            .route_tcp(db, 5432, i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .unwrap();
        assert_eq!(d.port, Some(5432));
        replica += u32::from(d.subset.is_some());
    }
    assert!((800..=1200).contains(&replica), "replica {replica}");
    assert!(t.route_tcp(db, 9999, 0).is_none(), "no rule for the port");
    // A service without a VirtualService gets one default TCP route.
    assert_eq!(t.route_tcp(BACKEND, 8080, 0).unwrap().host, BACKEND);
}

#[test]
fn unknown_host_and_no_route() {
    let t = table(&vs(
        "  - match: [{uri: {exact: /only}}]\n    route: [{destination: {host: backend}}]\n",
    ));
    assert_eq!(outcome(&t, &Req::get("/other")), "404");
    let r = RequestView::get("nope.default.svc.cluster.local", 80, "/");
    assert_eq!(t.route(&r), RouteDecision::UnknownHost);
}

#[test]
fn the_table_survives_serialization() {
    let t = table(&vs("
  - match: [{uri: {regex: '/r/[a-z]+'}, headers: {x: {prefix: a}}}]
    rewrite: {uriRegexRewrite: {match: '/r/(.*)', rewrite: '/s/\\1'}}
    route: [{destination: {host: backend, subset: v2}}]
"));
    let json = serde_json::to_string(&t).unwrap();
    let back: RouteTable = serde_json::from_str(&json).unwrap();
    assert_eq!(back, t);
    assert_eq!(
        outcome(&back, &Req::get("/r/abc").header("x", "ab")),
        "-:v2"
    );
}

#[test]
fn the_seed_example_compiles_to_the_expected_table() {
    let seed = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/seed");
    let t = compile_in(std::path::Path::new(seed), "frontend");
    let svc = t.service(BACKEND).unwrap();
    assert_eq!(svc.virtual_service.as_deref(), Some("default/backend"));
    assert_eq!(svc.destination_rule.as_deref(), Some("default/backend"));
    assert_eq!(svc.http.len(), 1);
    let rule = &svc.http[0];
    assert_eq!(rule.timeout, Some(Duration::from_millis(500)));
    let retries = rule.retries.as_ref().unwrap();
    assert_eq!(retries.attempts, 3);
    assert_eq!(retries.per_try_timeout, Some(Duration::from_millis(100)));
    let meshapi::traffic::Action::Route(dests) = &rule.action else {
        panic!()
    };
    let split: Vec<(Option<&str>, u32, Option<u16>)> = dests
        .iter()
        .map(|d| {
            (
                d.destination.subset.as_deref(),
                d.weight,
                d.destination.port,
            )
        })
        .collect();
    assert_eq!(
        split,
        vec![(Some("v1"), 90, Some(8080)), (Some("v2"), 10, Some(8080))]
    );
    for subset in ["v1", "v2"] {
        let c = t.cluster(&dests[0].destination, 8080).unwrap();
        let c = if subset == "v1" {
            c
        } else {
            t.cluster(&dests[1].destination, 8080).unwrap()
        };
        assert_eq!(c.workloads, vec![format!("backend-{subset}")]);
        assert_eq!(c.labels.get("version").map(String::as_str), Some(subset));
        let p = &c.policy;
        assert_eq!(p.load_balancer.algorithm, LbAlgorithm::LeastRequest);
        assert_eq!(p.connection_pool.max_connections, 100);
        assert_eq!(p.connection_pool.http1_max_pending_requests, 10);
        assert_eq!(p.connection_pool.max_requests_per_connection, 10);
        assert_eq!(p.connection_pool.http2_max_requests, u32::MAX);
        let o = p.outlier_detection.as_ref().unwrap();
        assert_eq!(o.consecutive_5xx, Some(5));
        assert_eq!(o.interval, Duration::from_secs(10));
        assert_eq!(o.base_ejection_time, Duration::from_secs(30));
        assert_eq!(o.max_ejection_percent, 50);
        assert_eq!(o.min_health_percent, 0);
    }
}

#[test]
fn which_virtual_service_and_destination_rule_apply() {
    let route_to = |name: &str, host: &str, subset: &str, extra: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}{extra}}}\nspec:\n  hosts: ['{host}']\n  http:\n  - name: {name}\n    route: [{{destination: {{host: backend.default.svc.cluster.local, subset: {subset}}}}}]\n"
        )
    };
    let vs_name = |t: &RouteTable| {
        t.service(BACKEND)
            .unwrap()
            .virtual_service
            .clone()
            .unwrap_or_default()
    };
    // A wildcard host applies when nothing names the host exactly.
    let wild = table(&route_to("wild", "*.default.svc.cluster.local", "v2", ""));
    assert_eq!(vs_name(&wild), "default/wild");
    assert_eq!(outcome(&wild, &Req::get("/")), "wild:v2");
    // An exact host beats a wildcard, whatever the order.
    let both = table(&format!(
        "{}{}",
        route_to("wild", "*.default.svc.cluster.local", "v2", ""),
        route_to("exact", "backend", "v1", "")
    ));
    assert_eq!(outcome(&both, &Req::get("/")), "exact:v1");
    // Exported only to its own namespace: invisible to a client in `default`.
    let hidden = table(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: hidden, namespace: prod}\nspec:\n  exportTo: ['.']\n  hosts: [backend.default.svc.cluster.local]\n  http:\n  - route: [{destination: {host: backend.default.svc.cluster.local, subset: v2}}]\n",
    );
    assert_eq!(outcome(&hidden, &Req::get("/")), "default:all");
    // A DestinationRule whose workloadSelector does not select the client is not used for it.
    let selected = |client: &str| {
        let t = table_for(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: for-tester}\nspec:\n  host: db\n  workloadSelector: {matchLabels: {app: tester}}\n  trafficPolicy: {loadBalancer: {simple: RANDOM}}\n",
            client,
        );
        let db = meshapi::traffic::DestinationRef {
            host: "db.default.svc.cluster.local".into(),
            subset: None,
            port: Some(5432),
        };
        t.cluster(&db, 5432)
            .unwrap()
            .policy
            .load_balancer
            .algorithm
            .clone()
    };
    assert_eq!(selected("tester"), LbAlgorithm::Random);
    assert_eq!(selected("frontend"), LbAlgorithm::LeastRequest);
}

#[test]
fn a_destination_rule_in_the_root_namespace_applies_mesh_wide() {
    // Two DestinationRules for db, neither in the client's or db's namespace: `other` first
    // (ROUND_ROBIN), `mesh-root` second (RANDOM). With `x-mesh.rootNamespace: mesh-root` the
    // root namespace's rule wins (Istio's precedence); without it the first in file order does.
    let lb_for = |root: Option<&str>| {
        let dir = tempfile::tempdir().unwrap();
        let compose = match root {
            Some(r) => format!("x-mesh: {{rootNamespace: {r}}}\n{COMPOSE}"),
            None => COMPOSE.to_string(),
        };
        std::fs::write(dir.path().join("compose.yaml"), compose).unwrap();
        std::fs::write(
            dir.path().join("mesh.yaml"),
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: db-other, namespace: other}\nspec:\n  host: db.default.svc.cluster.local\n  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: db-wide, namespace: mesh-root}\nspec:\n  host: db.default.svc.cluster.local\n  trafficPolicy: {loadBalancer: {simple: RANDOM}}\n",
        )
        .unwrap();
        let t = compile_in(dir.path(), "frontend");
        let db = meshapi::traffic::DestinationRef {
            host: "db.default.svc.cluster.local".into(),
            subset: None,
            port: Some(5432),
        };
        t.cluster(&db, 5432)
            .unwrap()
            .policy
            .load_balancer
            .algorithm
            .clone()
    };
    assert_eq!(lb_for(Some("mesh-root")), LbAlgorithm::Random);
    assert_eq!(lb_for(None), LbAlgorithm::RoundRobin);
}

/// The default entry a proxy gives a service its table does not route
/// (`RouteTable::with_defaults`) is exactly what the compiler emits for a service without
/// VirtualService or DestinationRule: same rules, same cluster policy.
#[test]
fn default_entries_are_what_the_compiler_emits_without_policies() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("compose.yaml"), COMPOSE).unwrap();
    let compiled = compile_in(dir.path(), "frontend");
    let db = "db.default.svc.cluster.local";
    let from_compiler = compiled.service(db).unwrap();
    let defaults = RouteTable::empty("frontend").with_defaults([
        (db.to_string(), vec![5432]),
        (BACKEND.to_string(), vec![8080]),
    ]);
    assert_eq!(defaults.services.len(), 2);
    assert_eq!(defaults.service(db).unwrap(), from_compiler);
    for c in &defaults.clusters {
        let compiled_cluster = compiled
            .clusters
            .iter()
            .find(|k| k.host == c.host && k.subset.is_none() && k.port == c.port)
            .unwrap();
        assert_eq!(c.policy, compiled_cluster.policy, "{}", c.host);
        // No workload filter: every endpoint of the service.
        assert!(c.workloads.is_empty() && c.labels.is_empty());
    }
    // A host the table already routes is left alone.
    let again = compiled
        .clone()
        .with_defaults([(db.to_string(), vec![5432])]);
    assert_eq!(again, compiled);
}
