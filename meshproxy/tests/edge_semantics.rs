//! Issue 15's "Istio's exact semantics" and reserved headers, through real proxies: a client
//! proxy whose route table the real compiler makes from user YAML, mTLS to a server proxy
//! (configured with the compiled authorization section where a case needs one), and an
//! application that answers with whatever status and headers a case tells it and counts
//! what reaches it. Each case asserts what the caller and the application see.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use meshapi::headers::RESERVED;
use meshproxy::Bound;
use tokio::net::TcpListener;

/// The service port of `backend`: 80, so a default port is in play for redirects.
const PORT: u16 = 80;
const HOST: &str = "backend.default.svc.cluster.local";

const COMPOSE: &str = "\
services:
  frontend:
    image: f
    labels: {app: frontend}
    x-mesh: {serviceAccount: frontend-sa}
  backend:
    image: b
    labels: {app: backend, version: v1}
    x-mesh: {ports: [{port: 80, protocol: http}]}
";

/// What the application saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    path_and_query: String,
    headers: http::HeaderMap,
}

/// An application that answers `status` with `headers` and records what reaches it.
#[derive(Default)]
struct AppState {
    status: AtomicU64,
    headers: Mutex<Vec<(String, String)>>,
    requests: AtomicU64,
    last: Mutex<Option<Seen>>,
}

struct App {
    addr: SocketAddr,
    s: Arc<AppState>,
}

impl App {
    async fn start() -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let s = Arc::new(AppState::default());
        let state = s.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let state = state.clone();
                        async move {
                            state.requests.fetch_add(1, Ordering::SeqCst);
                            *state.last.lock().unwrap() = Some(Seen {
                                path_and_query: req
                                    .uri()
                                    .path_and_query()
                                    .map_or(String::new(), |p| p.to_string()),
                                headers: req.headers().clone(),
                            });
                            let _ = req.into_body().collect().await;
                            let status = match state.status.load(Ordering::SeqCst) {
                                0 => 200,
                                s => s as u16,
                            };
                            let mut resp = Response::builder().status(status);
                            for (k, v) in state.headers.lock().unwrap().iter() {
                                resp = resp.header(k.as_str(), v.as_str());
                            }
                            Ok::<_, Infallible>(
                                resp.body(Full::new(Bytes::from_static(b"from the app")))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(TokioIo::new(conn), svc)
                    .await;
                });
            }
        });
        App { addr, s }
    }

    fn answer(&self, status: u16, headers: &[(&str, &str)]) {
        self.s.status.store(u64::from(status), Ordering::SeqCst);
        *self.s.headers.lock().unwrap() = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    fn requests(&self) -> u64 {
        self.s.requests.load(Ordering::SeqCst)
    }

    fn last(&self) -> Seen {
        self.s
            .last
            .lock()
            .unwrap()
            .clone()
            .expect("a request reached the app")
    }
}

/// frontend's proxy -> (mTLS, or plaintext to the bare app for a host outside the mesh) ->
/// backend's proxy -> the app.
struct Fixture {
    _mesh: Mesh,
    app: App,
    _server: Option<Bound>,
    _client: Bound,
    out: SocketAddr,
}

impl Fixture {
    /// The mesh path, routed by `policies` (Istio YAML, compiled for frontend); the server
    /// proxy gets backend's compiled authorization section from `policies` and `compose`.
    async fn mesh(compose: &str, policies: &str) -> Fixture {
        let mesh = Mesh::new();
        let app = App::start().await;
        let mut server = parse(&format!(
            "{}inbound:\n  - {{ port: {PORT}, targetPort: {}, protocol: http, mode: STRICT }}\n",
            base_yaml(&mesh.identity_yaml("backend"), 1),
            app.addr.port()
        ));
        server.authorization = compiled_authorization(compose, policies, "backend");
        let server = meshproxy::build(server).await.unwrap();
        let mut y = base_yaml(&mesh.identity_yaml("frontend-sa"), 1);
        y.push_str(&format!(
            "outbound:\n  - {{ service: backend, vip: \"127.0.0.1:0\", protocol: http, targetPort: {PORT} }}\n\
             services:\n  backend:\n    host: {HOST}\n    endpoints:\n\
             \x20     - {{ address: \"{}\", identity: \"{}\", workload: backend, labels: {{ app: backend, version: v1 }} }}\n",
            server.inbound,
            spiffe("backend"),
        ));
        let mut cfg = parse(&y);
        cfg.traffic = Some(compiled_route_table(compose, policies, "frontend"));
        let client = meshproxy::build(cfg).await.unwrap();
        let out = client.outbound("127.0.0.1:0".parse().unwrap()).unwrap();
        Fixture {
            _mesh: mesh,
            app,
            _server: Some(server),
            _client: client,
            out,
        }
    }

    /// `backend` as a host outside the mesh: the client proxy dials the app in plaintext, with
    /// Istio's default route and retry policy.
    async fn outside() -> Fixture {
        let mesh = Mesh::new();
        let app = App::start().await;
        let mut y = base_yaml(&mesh.identity_yaml("frontend-sa"), 1);
        y.push_str(&format!(
            "outbound:\n  - {{ service: backend, vip: \"127.0.0.1:0\", protocol: http, targetPort: {} }}\n\
             services:\n  backend:\n    host: {HOST}\n    endpoints:\n      - {{ address: \"{}\" }}\n",
            app.addr.port(),
            app.addr,
        ));
        let client = meshproxy::build(parse(&y)).await.unwrap();
        let out = client.outbound("127.0.0.1:0".parse().unwrap()).unwrap();
        Fixture {
            _mesh: mesh,
            app,
            _server: None,
            _client: client,
            out,
        }
    }

    /// Sends one request; returns status, headers and body.
    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, http::HeaderMap, String) {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.out));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = http1_client()
            .request(req.body(Full::new(Bytes::from_static(b"{}"))).unwrap())
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }
}

fn vs(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: backend}}\n\
         spec:\n  hosts: [backend]\n  http:\n{http}"
    )
}

/// Retries on connect failures only: what a peer proxy's `503 UF` counts as.
fn retry_connect_failures() -> String {
    vs("  - route:
    - destination: {host: backend}
    retries: {attempts: 3, retryOn: connect-failure}
")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_with_reserved_headers_from_an_app_is_returned_as_is_and_not_retried() {
    // (who answers, route policies); the app's 503 carries each reserved header in turn, on
    // a GET and on a POST, and a 200 carries a forged flag too.
    let meshes = [
        ("mesh, Istio's default retries", String::new()),
        ("mesh, retryOn connect-failure", retry_connect_failures()),
    ];
    let mut fixtures = Vec::new();
    for (name, policies) in &meshes {
        fixtures.push((*name, Fixture::mesh(COMPOSE, policies).await));
    }
    fixtures.push(("host outside the mesh", Fixture::outside().await));
    let mut failures = Vec::new();
    let mut cases = 0;
    for (name, f) in &fixtures {
        for status in [503, 200] {
            for reserved in RESERVED {
                for method in ["GET", "POST"] {
                    cases += 1;
                    f.app.answer(status, &[(reserved, "UF"), ("x-app", "kept")]);
                    let before = f.app.requests();
                    let (s, h, body) = f.send(method, "/orders", &[]).await;
                    let tries = f.app.requests() - before;
                    let ok = s.as_u16() == status
                        && body == "from the app"
                        && h.get(reserved).is_none()
                        && h.get("x-app").is_some_and(|v| v == "kept")
                        && tries == 1;
                    if !ok {
                        failures.push(format!(
                            "[{name}] {method} answered {status} with {reserved}: got {s}, \
                             {tries} tries, headers {h:?}, body {body:?}"
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // 3 answerers x 2 statuses x every reserved name x 2 methods.
    assert_eq!(cases, 3 * 2 * RESERVED.len() * 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applications_keep_their_x_mesh_headers_both_ways() {
    let f = Fixture::mesh(
        COMPOSE,
        &vs("  - headers:
      request: {set: {x-mesh-anything: from-the-route}}
      response: {add: {x-mesh-reply: from-the-route}}
    route:
    - destination: {host: backend}
"),
    )
    .await;
    f.app.answer(200, &[("x-mesh-app", "from-the-app")]);
    let (s, h, _) = f.send("GET", "/", &[("x-mesh-client", "c")]).await;
    assert_eq!(s, 200);
    let seen = f.app.last();
    assert_eq!(seen.headers["x-mesh-anything"], "from-the-route");
    assert_eq!(seen.headers["x-mesh-client"], "c");
    assert_eq!(h["x-mesh-app"], "from-the-app");
    assert_eq!(h["x-mesh-reply"], "from-the-route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_headers_from_the_caller_never_reach_the_app() {
    let f = Fixture::mesh(COMPOSE, "").await;
    for reserved in RESERVED {
        if reserved == meshapi::headers::FRAMING_ERROR {
            // The marker of an ambiguous head: a caller that sends it gets 400 DPE.
            let (s, h, _) = f.send("GET", "/", &[(reserved, "both")]).await;
            assert_eq!(s, 400);
            assert_eq!(h[meshapi::headers::RESPONSE_FLAGS], "DPE");
            continue;
        }
        let (s, _, _) = f.send("GET", "/", &[(reserved, "UF")]).await;
        assert_eq!(s, 200);
        assert!(f.app.last().headers.get(reserved).is_none(), "{reserved}");
    }
}

/// One request of the semantics table and what must come of it.
struct Case {
    name: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    status: u16,
    /// The `Location` of a redirect.
    location: Option<&'static str>,
    /// The `Host` the application received.
    authority: Option<&'static str>,
    /// The path and query the application received.
    app_path: Option<&'static str>,
}

fn case(name: &'static str, path: &'static str, status: u16) -> Case {
    Case {
        name,
        path,
        headers: Vec::new(),
        status,
        location: None,
        authority: None,
        app_path: None,
    }
}

impl Case {
    fn header(mut self, k: &'static str, v: &'static str) -> Self {
        self.headers.push((k, v));
        self
    }
    fn location(mut self, l: &'static str) -> Self {
        self.location = Some(l);
        self
    }
    fn authority(mut self, a: &'static str) -> Self {
        self.authority = Some(a);
        self
    }
    fn app_path(mut self, p: &'static str) -> Self {
        self.app_path = Some(p);
        self
    }
}

/// The routes every table case runs against: each `match` is one Istio behaviour.
fn semantics_routes() -> String {
    vs(r#"  - match: [{uri: {prefix: /host-route}}]
    headers: {request: {set: {Host: route.example}}}
    route:
    - destination: {host: backend}
      headers: {request: {set: {Host: destination.example}}}
  - match: [{uri: {prefix: /host-destination}}]
    route:
    - destination: {host: backend}
      headers: {request: {set: {":authority": destination.example}}}
  - match: [{uri: {prefix: /host-add}}]
    headers: {request: {add: {host: added.example}}}
    route:
    - destination: {host: backend}
  - match: [{uri: {exact: /redirect/request-port}}]
    redirect: {uri: /moved, authority: example.com, derivePort: FROM_REQUEST_PORT}
  - match: [{uri: {exact: /redirect/https-request-port}}]
    redirect: {uri: /moved, authority: example.com, scheme: https, derivePort: FROM_REQUEST_PORT}
  - match: [{uri: {exact: /redirect/protocol-default}}]
    redirect: {uri: /moved, authority: "example.com:8443", derivePort: FROM_PROTOCOL_DEFAULT}
  - match: [{uri: {exact: /without/exact}, withoutHeaders: {x-h: {exact: a}}}]
    directResponse: {status: 211}
  - match: [{uri: {exact: /without/prefix}, withoutHeaders: {x-h: {prefix: a}}}]
    directResponse: {status: 211}
  - match: [{uri: {exact: /without/regex-any}, withoutHeaders: {x-h: {regex: ".*"}}}]
    directResponse: {status: 211}
  - match: [{uri: {exact: /without/regex-a}, withoutHeaders: {x-h: {regex: "a.*"}}}]
    directResponse: {status: 211}
  - match: [{uri: {exact: /without/present}, withoutHeaders: {x-h: {}}}]
    directResponse: {status: 211}
  - route:
    - destination: {host: backend}
"#)
}

fn semantics_table() -> Vec<Case> {
    vec![
        // Host / :authority header operations rewrite the authority; the route level wins.
        case("route-level Host set wins", "/host-route", 200).authority("route.example"),
        case("destination-level :authority set", "/host-destination", 200)
            .authority("destination.example"),
        case("route-level Host add", "/host-add", 200).authority("added.example"),
        // derivePort.
        case("FROM_REQUEST_PORT keeps :80", "/redirect/request-port", 301)
            .location("http://example.com:80/moved"),
        case(
            "FROM_REQUEST_PORT on https",
            "/redirect/https-request-port",
            301,
        )
        .location("https://example.com:80/moved"),
        case("FROM_PROTOCOL_DEFAULT", "/redirect/protocol-default", 301)
            .location("http://example.com/moved"),
        // withoutHeaders: a missing header is the empty value, then inverted (211: held).
        case("without exact, absent", "/without/exact", 211),
        case("without exact, other", "/without/exact", 211).header("x-h", "b"),
        case("without exact, equal", "/without/exact", 200).header("x-h", "a"),
        case("without prefix, absent", "/without/prefix", 211),
        case("without prefix, matching", "/without/prefix", 200).header("x-h", "ab"),
        case("without regex .*, absent", "/without/regex-any", 200),
        case("without regex .*, present", "/without/regex-any", 200).header("x-h", "z"),
        case("without regex a.*, absent", "/without/regex-a", 211),
        case("without regex a.*, other", "/without/regex-a", 211).header("x-h", "b"),
        case("without regex a.*, matching", "/without/regex-a", 200).header("x-h", "ab"),
        case("without {}, absent", "/without/present", 211),
        case("without {}, present", "/without/present", 200).header("x-h", ""),
        // Path normalization (BASE) without any AuthorizationPolicy; escapes kept as sent.
        case("dot segments resolved", "/a/./b/../c", 200).app_path("/a/c"),
        case("lower-case escape kept", "/a%2fb", 200).app_path("/a%2fb"),
        case("upper-case escape kept", "/a%2Fb", 200).app_path("/a%2Fb"),
        case("unreserved escape decoded", "/%7euser/x%3fy", 200).app_path("/~user/x%3fy"),
        case("query untouched", "/q/../r?a=%2e%2E", 200).app_path("/r?a=%2e%2E"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_semantics_table_through_real_proxies() {
    let f = Fixture::mesh(COMPOSE, &semantics_routes()).await;
    let mut failures = Vec::new();
    let cases = semantics_table();
    for c in &cases {
        let before = f.app.requests();
        let (s, h, body) = f.send("GET", c.path, &c.headers).await;
        let reached = f.app.requests() - before;
        let mut wrong = Vec::new();
        if s.as_u16() != c.status {
            wrong.push(format!("status {s} ({body:?})"));
        }
        if let Some(want) = c.location
            && h.get("location").is_none_or(|l| l != want)
        {
            wrong.push(format!("location {:?}", h.get("location")));
        }
        if (c.status == 200) != (reached == 1) {
            wrong.push(format!("reached the app {reached} times"));
        }
        if reached == 1 {
            let seen = f.app.last();
            if let Some(want) = c.authority {
                let hosts: Vec<_> = seen.headers.get_all("host").iter().collect();
                if hosts.len() != 1 || hosts[0] != want {
                    wrong.push(format!("app saw Host {hosts:?}"));
                }
            }
            if let Some(want) = c.app_path
                && seen.path_and_query != want
            {
                wrong.push(format!("app saw {}", seen.path_and_query));
            }
        }
        if !wrong.is_empty() {
            failures.push(format!("[{}] GET {}: {}", c.name, c.path, wrong.join(", ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_wide_path_normalization_applies_without_a_policy() {
    let compose =
        format!("{COMPOSE}x-mesh:\n  pathNormalization:\n    normalization: MERGE_SLASHES\n");
    let f = Fixture::mesh(&compose, "").await;
    for (sent, want) in [
        ("//a//b", "/a/b"),
        ("/a/%2fb/../c", "/a/c"),
        ("/x%2F%2fy", "/x%2F%2fy"),
    ] {
        let (s, _, body) = f.send("GET", sent, &[]).await;
        assert_eq!(s, 200, "{sent}: {body}");
        assert_eq!(f.app.last().path_and_query, want, "{sent}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_istio_accepts_and_analyze_flags_behaves_as_on_istio() {
    // A route to a subset no DestinationRule defines (MESH0102) and a DENY policy without rules
    // (MESH0205), compiled as the control plane applies them.
    let policies = format!(
        "{}---\n{}",
        vs("  - match: [{uri: {prefix: /v3-port}}]
    route:
    - destination: {host: backend, subset: v3, port: {number: 80}}
  - match: [{uri: {prefix: /v3}}]
    route:
    - destination: {host: backend, subset: v3}
  - route:
    - destination: {host: backend}
"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {name: deny-nothing, namespace: default}\n\
         spec:\n  selector: {matchLabels: {app: backend}}\n  action: DENY\n"
    );
    let deny = compiled_authorization(COMPOSE, &policies, "backend").expect("a section");
    assert_eq!(deny.deny.len(), 1, "the policy is applied, not dropped");
    let f = Fixture::mesh(COMPOSE, &policies).await;
    for path in ["/v3", "/v3-port/x"] {
        let before = f.app.requests();
        let (s, h, body) = f.send("GET", path, &[]).await;
        assert_eq!(s, 503, "{path}: {body}");
        assert_eq!(h[meshapi::headers::RESPONSE_FLAGS], "NR", "{path}");
        assert_eq!(f.app.requests(), before, "{path} reached the app");
    }
    // The rule-less DENY policy is inert: every request passes.
    for path in ["/", "/admin", "/anything"] {
        let (s, _, body) = f.send("GET", path, &[]).await;
        assert_eq!(s, 200, "{path}: {body}");
    }
}
