//! Traffic management through real proxies: a client proxy whose route table is compiled by
//! `meshapi` from real VirtualService / DestinationRule files, mTLS to one server proxy per
//! backend instance, and backends that can be told to fail, stall or count. Each test asserts
//! what a user of Istio would observe.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use meshapi::proxy::ProxyConfig;
use meshproxy::Bound;
use meshtest::assert_eventually;
use tokio::net::TcpListener;

/// The service port of `backend` in the compose file (the backend apps listen elsewhere; the
/// server proxies map it with `targetPort`).
const PORT: u16 = 8080;
const HOST: &str = "backend.default.svc.cluster.local";

/// A backend application that can be told to fail, stall or count.
#[derive(Default)]
struct Behaviour {
    /// Answer this status to the next `fail_next` requests.
    fail_next: AtomicU32,
    fail_status: AtomicU32,
    /// Answer every request with this status (0: 200).
    always: AtomicU32,
    /// Wait this long (ms) before answering.
    stall_ms: AtomicU64,
    /// Send the headers and a first chunk, then wait this long (ms) before the last chunk.
    body_stall_ms: AtomicU64,
    requests: AtomicU64,
    /// Path and query, and headers, of the last request.
    last: std::sync::Mutex<Option<(String, http::HeaderMap)>>,
}

/// A response body whose chunks arrive on a channel (a backend that streams slowly).
struct ChanBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|c| c.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

struct App {
    name: String,
    addr: SocketAddr,
    b: Arc<Behaviour>,
}

impl App {
    async fn start(name: &str) -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let b = Arc::new(Behaviour::default());
        let (b2, name2) = (b.clone(), name.to_string());
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let (b, name) = (b2.clone(), name2.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (b, name) = (b.clone(), name.clone());
                        async move {
                            b.requests.fetch_add(1, Ordering::SeqCst);
                            let pq = req.uri().path_and_query().map(|p| p.to_string());
                            *b.last.lock().unwrap() =
                                Some((pq.unwrap_or_default(), req.headers().clone()));
                            let _ = req.into_body().collect().await;
                            let stall = b.stall_ms.load(Ordering::SeqCst);
                            if stall > 0 {
                                tokio::time::sleep(Duration::from_millis(stall)).await;
                            }
                            let failing = b
                                .fail_next
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                    n.checked_sub(1)
                                })
                                .is_ok();
                            let status = if failing {
                                b.fail_status.load(Ordering::SeqCst)
                            } else {
                                b.always.load(Ordering::SeqCst)
                            };
                            let status = if status == 0 { 200 } else { status as u16 };
                            let body_stall = b.body_stall_ms.load(Ordering::SeqCst);
                            let body = if body_stall == 0 {
                                Full::new(Bytes::from(format!("hello from {name}"))).boxed()
                            } else {
                                let (tx, rx) = tokio::sync::mpsc::channel(2);
                                let last = format!(" from {name}");
                                tokio::spawn(async move {
                                    let _ = tx.send(Bytes::from_static(b"hello")).await;
                                    tokio::time::sleep(Duration::from_millis(body_stall)).await;
                                    let _ = tx.send(Bytes::from(last)).await;
                                });
                                ChanBody(rx).boxed()
                            };
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(status)
                                    .header("x-backend", name.as_str())
                                    .body(body)
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
                });
            }
        });
        App {
            name: name.to_string(),
            addr,
            b,
        }
    }

    fn requests(&self) -> u64 {
        self.b.requests.load(Ordering::SeqCst)
    }
}

const COMPOSE: &str = "\
services:
  frontend:
    image: f
    labels: {app: frontend, version: v1}
    x-mesh: {serviceAccount: frontend-sa, ports: [{port: 3000, protocol: http}]}
  backend-v1:
    image: b
    deploy: {replicas: 2}
    labels: {app: backend, version: v1}
    x-mesh: {service: backend, ports: [{port: 8080, protocol: http}]}
  backend-v2:
    image: b
    labels: {app: backend, version: v2}
    x-mesh: {service: backend, ports: [{port: 8080, protocol: http}]}
  mirror:
    image: m
    labels: {app: mirror}
    x-mesh: {ports: [{port: 8080, protocol: http}]}
  db-a:
    image: d
    labels: {app: db, version: a}
    x-mesh: {service: db, ports: [{port: 5432, protocol: tcp}]}
  db-b:
    image: d
    labels: {app: db, version: b}
    x-mesh: {service: db, ports: [{port: 5432, protocol: tcp}]}
";

/// Compiles `policies` for the frontend, as the control plane does.
fn route_table(policies: &str) -> meshapi::traffic::RouteTable {
    compiled_route_table(COMPOSE, policies, "frontend")
}

/// One backend instance: its app and its server proxy.
struct Instance {
    app: App,
    proxy: Bound,
    inbound: SocketAddr,
    workload: &'static str,
    version: &'static str,
}

/// A client proxy in front of backend instances, routed by `policies`.
struct Fixture {
    mesh: Mesh,
    instances: Vec<Instance>,
    mirror: Option<Instance>,
    client: Bound,
    out: SocketAddr,
}

/// The DestinationRule every fixture has unless the test gives its own.
const SUBSETS: &str = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend}
spec:
  host: backend
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
";

async fn server_proxy(mesh: &Mesh, sa: &str, app: &App) -> Bound {
    let yaml = format!(
        "{}inbound:\n  - {{ port: {PORT}, targetPort: {}, protocol: http, mode: STRICT }}\n",
        base_yaml(&mesh.identity_yaml(sa), 1),
        app.addr.port()
    );
    meshproxy::build(parse(&yaml)).await.unwrap()
}

impl Fixture {
    /// `instances`: (workload, version) per backend instance, in order.
    async fn new(policies: &str, instances: &[(&'static str, &'static str)]) -> Fixture {
        let mesh = Mesh::new();
        let mut list = Vec::new();
        for (i, (workload, version)) in instances.iter().enumerate() {
            let app = App::start(&format!("{workload}-{i}")).await;
            let proxy = server_proxy(&mesh, "backend", &app).await;
            let inbound = proxy.inbound;
            list.push(Instance {
                app,
                proxy,
                inbound,
                workload,
                version,
            });
        }
        let mirror = if policies.contains("mirror") {
            let app = App::start("mirror").await;
            let proxy = server_proxy(&mesh, "mirror", &app).await;
            let inbound = proxy.inbound;
            Some(Instance {
                app,
                proxy,
                inbound,
                workload: "mirror",
                version: "",
            })
        } else {
            None
        };
        let cfg = Self::client_config(&mesh, policies, &list, mirror.as_ref(), 1);
        let client = meshproxy::build(cfg).await.unwrap();
        let out = client.outbound("127.0.0.1:0".parse().unwrap()).unwrap();
        Fixture {
            mesh,
            instances: list,
            mirror,
            client,
            out,
        }
    }

    fn client_config(
        mesh: &Mesh,
        policies: &str,
        instances: &[Instance],
        mirror: Option<&Instance>,
        revision: u64,
    ) -> ProxyConfig {
        let mut y = base_yaml(&mesh.identity_yaml("frontend-sa"), revision);
        y.push_str(&format!(
            "outbound:\n  - {{ service: backend, vip: \"127.0.0.1:0\", protocol: http, targetPort: {PORT} }}\n\
             services:\n  backend:\n    host: {HOST}\n    endpoints:\n"
        ));
        for i in instances {
            y.push_str(&format!(
                "      - {{ address: \"{}\", identity: \"{}\", workload: {}, labels: {{ app: backend, version: {} }} }}\n",
                i.inbound,
                spiffe("backend"),
                i.workload,
                i.version
            ));
        }
        if let Some(m) = mirror {
            y.push_str(&format!(
                "  mirror:\n    host: mirror.default.svc.cluster.local\n    endpoints:\n      - {{ address: \"{}\", identity: \"{}\", workload: mirror, labels: {{ app: mirror }} }}\n",
                m.inbound,
                spiffe("mirror")
            ));
        }
        let mut cfg = parse(&y);
        cfg.traffic = Some(route_table(policies));
        cfg
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.out)
    }

    /// Requests per backend version over `n` GETs (`concurrency` at a time).
    async fn split(&self, n: usize, concurrency: usize) -> BTreeMap<String, usize> {
        let client = http1_client();
        let counts = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (client, counts, next, url) =
                (client.clone(), counts.clone(), next.clone(), self.url("/"));
            tasks.push(tokio::spawn(async move {
                while next.fetch_add(1, Ordering::SeqCst) < n as u64 {
                    let (status, headers, body) = get(&client, &url).await;
                    assert_eq!(status, 200, "{body}");
                    let name = headers["x-backend"].to_str().unwrap().to_string();
                    *counts.lock().unwrap().entry(name).or_insert(0) += 1;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let by_app = counts.lock().unwrap().clone();
        let mut by_version = BTreeMap::new();
        for (name, c) in by_app {
            let v = self
                .instances
                .iter()
                .find(|i| i.app.name == name)
                .map_or("?", |i| i.version);
            *by_version.entry(v.to_string()).or_insert(0) += c;
        }
        by_version
    }
}

fn vs(http: &str) -> String {
    format!(
        "{SUBSETS}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: backend}}\nspec:\n  hosts: [backend]\n  http:\n{http}"
    )
}

async fn send(
    client: &Client,
    url: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, String) {
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::new())).unwrap())
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

const V1_V2: &[(&str, &str)] = &[("backend-v1", "v1"), ("backend-v2", "v2")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_90_10_hold_within_two_points_over_10000_requests() {
    let f = Fixture::new(
        &vs("  - route:
    - {destination: {host: backend, subset: v1}, weight: 90}
    - {destination: {host: backend, subset: v2}, weight: 10}
"),
        V1_V2,
    )
    .await;
    let n = 10_000;
    let split = f.split(n, 16).await;
    let v2 = *split.get("v2").unwrap_or(&0) as f64 / n as f64 * 100.0;
    assert!((8.0..=12.0).contains(&v2), "v2 got {v2:.2}% ({split:?})");
    assert_eq!(split.values().sum::<usize>(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_match_routes_a_tagged_user_to_v2_and_everyone_else_to_v1() {
    let f = Fixture::new(
        &vs("  - match:
    - headers: {end-user: {exact: jason}}
    route:
    - destination: {host: backend, subset: v2}
  - route:
    - destination: {host: backend, subset: v1}
"),
        V1_V2,
    )
    .await;
    let client = http1_client();
    for _ in 0..20 {
        let (s, h, _) = send(&client, &f.url("/"), &[("end-user", "jason")]).await;
        assert_eq!(s, 200);
        assert_eq!(h["x-backend"], "backend-v2-1");
        let (s, h, _) = send(&client, &f.url("/"), &[("end-user", "alice")]).await;
        assert_eq!(s, 200);
        assert_eq!(h["x-backend"], "backend-v1-0");
    }
}

fn retry_vs(attempts: u32) -> String {
    vs(&format!(
        "  - route:
    - destination: {{host: backend, subset: v1}}
    retries: {{attempts: {attempts}, retryOn: 5xx}}
"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_failing_twice_succeeds_with_three_attempts_and_fails_with_one() {
    let f = Fixture::new(&retry_vs(3), &[("backend-v1", "v1")]).await;
    let b = &f.instances[0].app.b;
    b.fail_status.store(503, Ordering::SeqCst);
    b.fail_next.store(2, Ordering::SeqCst);
    let client = http1_client();
    let (s, _, body) = send(&client, &f.url("/"), &[]).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(f.instances[0].app.requests(), 3);

    let f = Fixture::new(&retry_vs(1), &[("backend-v1", "v1")]).await;
    let b = &f.instances[0].app.b;
    b.fail_status.store(503, Ordering::SeqCst);
    b.fail_next.store(2, Ordering::SeqCst);
    let (s, h, _) = send(&client, &f.url("/"), &[]).await;
    assert_eq!(s, 503);
    assert_eq!(h["x-meshctl-response-flags"], "URX");
    assert_eq!(f.instances[0].app.requests(), 2, "one try and one retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_prefers_another_endpoint() {
    let f = Fixture::new(
        &vs("  - route:
    - destination: {host: backend, subset: v1}
    retries: {attempts: 1, retryOn: 5xx}
"),
        &[("backend-v1", "v1"), ("backend-v1", "v1")],
    )
    .await;
    for i in &f.instances {
        i.app.b.always.store(500, Ordering::SeqCst);
    }
    let client = http1_client();
    for round in 1..=10u64 {
        let (s, _, _) = send(&client, &f.url("/"), &[]).await;
        assert_eq!(s, 500);
        // Each request tried both endpoints once.
        assert_eq!(f.instances[0].app.requests(), round);
        assert_eq!(f.instances[1].app.requests(), round);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_and_route_timeout_answer_504_ut_at_the_right_time() {
    // Three tries of 100 ms each, well inside the 2 s route timeout.
    let f = Fixture::new(
        &vs("  - route:
    - destination: {host: backend, subset: v1}
    timeout: 2s
    retries: {attempts: 2, perTryTimeout: 100ms, retryOn: 5xx}
"),
        &[("backend-v1", "v1")],
    )
    .await;
    f.instances[0].app.b.stall_ms.store(1_000, Ordering::SeqCst);
    let client = http1_client();
    let t = Instant::now();
    let (s, h, body) = send(&client, &f.url("/"), &[]).await;
    let took = t.elapsed();
    assert_eq!(s, 504, "{body}");
    assert_eq!(h["x-meshctl-response-flags"], "UT");
    assert!(
        took >= Duration::from_millis(300),
        "three tries of 100 ms: {took:?}"
    );
    assert!(
        took < Duration::from_millis(1_500),
        "per-try timeouts, not the stall: {took:?}"
    );
    assert_eq!(f.instances[0].app.requests(), 3);

    // The route timeout bounds everything.
    let f = Fixture::new(
        &vs("  - route:
    - destination: {host: backend, subset: v1}
    timeout: 200ms
"),
        &[("backend-v1", "v1")],
    )
    .await;
    f.instances[0].app.b.stall_ms.store(3_000, Ordering::SeqCst);
    let t = Instant::now();
    let (s, h, body) = send(&client, &f.url("/"), &[]).await;
    let took = t.elapsed();
    assert_eq!(s, 504, "{body}");
    assert_eq!(h["x-meshctl-response-flags"], "UT");
    assert!(body.contains("timeout"), "{body}");
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(took < Duration::from_millis(2_000), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_50_percent_lands_within_three_points() {
    let f = Fixture::new(
        &vs("  - fault:
      abort: {httpStatus: 418, percentage: {value: 50}}
    route:
    - destination: {host: backend, subset: v1}
"),
        &[("backend-v1", "v1")],
    )
    .await;
    let client = http1_client();
    let n = 4_000;
    let mut aborted = 0;
    for _ in 0..n {
        let (s, h, _) = send(&client, &f.url("/"), &[]).await;
        if s == 418 {
            assert_eq!(h["x-meshctl-response-flags"], "FI");
            aborted += 1;
        } else {
            assert_eq!(s, 200);
        }
    }
    let pct = aborted as f64 / n as f64 * 100.0;
    assert!((47.0..=53.0).contains(&pct), "aborted {pct:.2}%");
    assert_eq!(f.instances[0].app.requests(), (n - aborted) as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_fault_holds_the_request_without_hitting_the_route_timeout() {
    let f = Fixture::new(
        &vs("  - fault:
      delay: {fixedDelay: 300ms, percentage: {value: 100}}
    timeout: 100ms
    route:
    - destination: {host: backend, subset: v1}
"),
        &[("backend-v1", "v1")],
    )
    .await;
    let client = http1_client();
    let t = Instant::now();
    let (s, _, body) = send(&client, &f.url("/"), &[]).await;
    assert_eq!(
        s, 200,
        "the timeout does not apply to the injected delay: {body}"
    );
    assert!(t.elapsed() >= Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_gets_a_copy_and_never_slows_the_primary() {
    let f = Fixture::new(
        &vs("  - route:
    - destination: {host: backend, subset: v1}
    mirror: {host: mirror}
"),
        &[("backend-v1", "v1")],
    )
    .await;
    let mirror = f.mirror.as_ref().unwrap();
    mirror.app.b.stall_ms.store(2_000, Ordering::SeqCst);
    mirror.app.b.always.store(500, Ordering::SeqCst);
    let client = http1_client();
    let n = 10;
    let t = Instant::now();
    for _ in 0..n {
        let (s, h, _) = send(&client, &f.url("/m"), &[]).await;
        assert_eq!(s, 200);
        assert_eq!(h["x-backend"], "backend-v1-0");
    }
    assert!(
        t.elapsed() < Duration::from_millis(2_000),
        "ten primaries finished before one stalled mirror could answer: {:?}",
        t.elapsed()
    );
    assert_eventually!(
        mirror.app.requests() == n,
        "mirror saw {} of {n}",
        mirror.app.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_consecutive_5xx_eject_an_endpoint_until_its_time_is_up() {
    let f = Fixture::new(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend}
spec:
  host: backend
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 5, interval: 1s, baseEjectionTime: 4s, maxEjectionPercent: 100}
",
        &[("backend-v1", "v1"), ("backend-v1", "v1")],
    )
    .await;
    let bad = &f.instances[0].app;
    bad.b.always.store(500, Ordering::SeqCst);
    let client = http1_client();
    // Round robin: the bad endpoint sees every other request until it has failed 5 times.
    let mut n = 0;
    while bad.requests() < 5 {
        send(&client, &f.url("/"), &[]).await;
        n += 1;
        assert!(n < 50, "bad endpoint never reached 5 failures");
    }
    let ejected_at = Instant::now();
    let before = bad.requests();
    // The fifth failure ejects at once (4 s, far more than the few milliseconds below).
    let dump = admin_get(&f.client, "/config_dump").await;
    assert!(dump.contains("\"ejected\": true"), "{dump}");
    for _ in 0..10 {
        let (s, h, _) = send(&client, &f.url("/"), &[]).await;
        assert_eq!(s, 200);
        assert_eq!(h["x-backend"], "backend-v1-1");
    }
    assert_eq!(
        bad.requests(),
        before,
        "no traffic reaches an ejected endpoint"
    );
    // Healed, it comes back after baseEjectionTime.
    bad.b.always.store(0, Ordering::SeqCst);
    assert_eventually!(
        {
            send(&client, &f.url("/"), &[]).await;
            bad.requests() > before
        },
        timeout = Duration::from_secs(10),
        "ejected endpoint never came back"
    );
    assert!(ejected_at.elapsed() >= Duration::from_millis(3_900));
}

async fn admin_get(b: &Bound, path: &str) -> String {
    let client = http1_client();
    let (_, _, body) = get(&client, &format!("http://{}{path}", b.admin)).await;
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_pool_overflow_answers_503_uo_at_once() {
    let f = Fixture::new(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend}
spec:
  host: backend
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1}
",
        &[("backend-v1", "v1")],
    )
    .await;
    f.instances[0].app.b.stall_ms.store(1_500, Ordering::SeqCst);
    let url = f.url("/");
    let first = tokio::spawn(async move { send(&http1_client(), &url, &[]).await.0 });
    // The first holds the only connection.
    assert_eventually!(
        f.instances[0].app.requests() == 1,
        "first request never reached the backend"
    );
    // Two more at once: one becomes the single pending request, the other overflows. Which
    // one is the scheduler's choice; that exactly one overflows, at once, is the contract.
    let mut racing = Vec::new();
    for _ in 0..2 {
        let url = f.url("/");
        racing.push(tokio::spawn(async move {
            let t = Instant::now();
            let (s, h, body) = send(&http1_client(), &url, &[]).await;
            let flags = h
                .get("x-meshctl-response-flags")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            (s, flags, t.elapsed(), body)
        }));
    }
    let mut outcomes = Vec::new();
    for r in racing {
        outcomes.push(r.await.unwrap());
    }
    outcomes.sort_by_key(|o| o.0.as_u16());
    let (ok, overflow) = (&outcomes[0], &outcomes[1]);
    assert_eq!(
        (ok.0.as_u16(), overflow.0.as_u16()),
        (200, 503),
        "{outcomes:?}"
    );
    assert_eq!(overflow.1, "UO", "{outcomes:?}");
    assert!(
        overflow.2 < Duration::from_millis(1_000),
        "overflow is immediate: {outcomes:?}"
    );
    assert_eq!(first.await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_a_users_endpoint_across_1000_requests() {
    let f = Fixture::new(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend}
spec:
  host: backend
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user}
",
        &[
            ("backend-v1", "v1"),
            ("backend-v1", "v1"),
            ("backend-v2", "v2"),
        ],
    )
    .await;
    let client = http1_client();
    let mut homes = BTreeMap::new();
    for i in 0..1_000 {
        let user = format!("user-{}", i % 10);
        let (s, h, _) = send(&client, &f.url("/"), &[("x-user", &user)]).await;
        assert_eq!(s, 200);
        let got = h["x-backend"].to_str().unwrap().to_string();
        let home = homes.entry(user.clone()).or_insert_with(|| got.clone());
        assert_eq!(*home, got, "{user} moved");
    }
    let distinct: std::collections::BTreeSet<_> = homes.values().collect();
    assert!(
        distinct.len() > 1,
        "ten users all hashed to one endpoint: {homes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_virtual_service_every_endpoint_gets_traffic() {
    let f = Fixture::new(SUBSETS, V1_V2).await;
    let split = f.split(200, 4).await;
    assert!(split.get("v1").copied().unwrap_or(0) > 20, "{split:?}");
    assert!(split.get("v2").copied().unwrap_or(0) > 20, "{split:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_weights_live_changes_the_split_on_the_same_connection() {
    let all_v1 = vs("  - route:
    - {destination: {host: backend, subset: v1}, weight: 100}
    - {destination: {host: backend, subset: v2}, weight: 0}
");
    let f = Fixture::new(&all_v1, V1_V2).await;
    // One keep-alive connection for the whole test.
    let stream = tokio::net::TcpStream::connect(f.out).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut ask = async || {
        sender.ready().await.unwrap();
        let req = Request::get("/")
            .header("host", "backend")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let who = resp.headers()["x-backend"].to_str().unwrap().to_string();
        let _ = resp.into_body().collect().await.unwrap();
        who
    };
    for _ in 0..10 {
        assert_eq!(ask().await, "backend-v1-0");
    }
    let all_v2 = vs("  - route:
    - {destination: {host: backend, subset: v1}, weight: 0}
    - {destination: {host: backend, subset: v2}, weight: 100}
");
    let cfg = Fixture::client_config(&f.mesh, &all_v2, &f.instances, None, 2);
    f.client.handle.apply(cfg).unwrap();
    for _ in 0..10 {
        assert_eq!(ask().await, "backend-v2-1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_direct_response_rewrite_headers_and_cors_are_answered_as_istio_does() {
    let f = Fixture::new(
        &vs("  - match: [{uri: {prefix: /old/}}]
    redirect: {uri: /new/, authority: example.com, redirectCode: 308}
  - match: [{uri: {exact: /teapot}}]
    directResponse: {status: 418, body: {string: short and stout}}
  - match: [{uri: {prefix: /api/}}]
    rewrite: {uri: /v2/}
    headers:
      request: {set: {x-route: api}, remove: [x-secret]}
      response: {add: {x-served-by: mesh}}
    corsPolicy:
      allowOrigins: [{exact: https://app.example}]
      allowMethods: [GET, POST]
      maxAge: 60s
    route:
    - destination: {host: backend, subset: v1}
"),
        &[("backend-v1", "v1")],
    )
    .await;
    let client = http1_client();
    let (s, h, _) = send(&client, &f.url("/old/page"), &[]).await;
    assert_eq!(s, 308);
    assert_eq!(h["location"], "http://example.com/new/");
    let (s, _, body) = send(&client, &f.url("/teapot"), &[]).await;
    assert_eq!(s, 418);
    assert_eq!(body, "short and stout");
    assert_eq!(f.instances[0].app.requests(), 0, "answered by the proxy");

    let (s, h, _) = send(
        &client,
        &f.url("/api/items?q=1"),
        &[("x-secret", "s"), ("origin", "https://app.example")],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(h["x-served-by"], "mesh");
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert_eq!(f.instances[0].app.requests(), 1);
    let (path, seen) = f.instances[0].app.b.last.lock().unwrap().clone().unwrap();
    assert_eq!(path, "/v2/items?q=1", "prefix rewritten, query kept");
    assert_eq!(seen["x-route"], "api");
    assert!(!seen.contains_key("x-secret"));

    // A CORS preflight is answered by the proxy.
    let req = Request::builder()
        .method("OPTIONS")
        .uri(f.url("/api/items"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["access-control-allow-methods"], "GET,POST");
    assert_eq!(resp.headers()["access-control-max-age"], "60");
    assert_eq!(
        f.instances[0].app.requests(),
        1,
        "preflight never reached the app"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_body_is_sent_again_on_retry() {
    let f = Fixture::new(&retry_vs(2), &[("backend-v1", "v1")]).await;
    let b = &f.instances[0].app.b;
    b.fail_status.store(503, Ordering::SeqCst);
    b.fail_next.store(1, Ordering::SeqCst);
    let client = http1_client();
    let req = Request::post(f.url("/orders"))
        .body(Full::new(Bytes::from_static(b"{\"item\": 42}")))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(f.instances[0].app.requests(), 2);
    let stats = admin_get_stats(&f.client).await;
    assert!(
        stats.contains("meshproxy_cluster_retries_total{cluster=\"outbound|8080|v1|backend.default.svc.cluster.local\"} 1"),
        "{stats}"
    );
}

async fn admin_get_stats(b: &Bound) -> String {
    let client = http1_client();
    let (_, _, body) = get(&client, &format!("http://{}/stats/prometheus", b.stats)).await;
    body
}

/// A TCP app that writes its name to every connection, then closes it (or, with `hold`,
/// keeps it open).
async fn name_server(name: &'static str, hold: bool) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let _ = s.write_all(name.as_bytes()).await;
                if hold {
                    let mut sink = Vec::new();
                    let _ = s.read_to_end(&mut sink).await;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// A client proxy routing TCP service `db` (endpoints `db-a` and `db-b`, each its own server
/// proxy) by `policies`; returns the proxies and the client's outbound address.
async fn tcp_mesh(policies: &str, hold: bool) -> (Vec<Bound>, Bound, SocketAddr) {
    let mesh = Mesh::new();
    let mut endpoints = String::new();
    let mut proxies = Vec::new();
    for (name, version) in [("db-a", "a"), ("db-b", "b")] {
        let app = name_server(name, hold).await;
        let yaml = format!(
            "{}inbound:\n  - {{ port: 5432, targetPort: {}, protocol: tcp, mode: STRICT }}\n",
            base_yaml(&mesh.identity_yaml("db"), 1),
            app.port()
        );
        let p = meshproxy::build(parse(&yaml)).await.unwrap();
        endpoints.push_str(&format!(
            "      - {{ address: \"{}\", identity: \"{}\", workload: {name}, labels: {{ app: db, version: {version} }} }}\n",
            p.inbound,
            spiffe("db")
        ));
        proxies.push(p);
    }
    let mut y = base_yaml(&mesh.identity_yaml("frontend-sa"), 1);
    y.push_str(&format!(
        "outbound:\n  - {{ service: db, vip: \"127.0.0.1:0\", protocol: tcp, targetPort: 5432 }}\n\
         services:\n  db:\n    host: db.default.svc.cluster.local\n    endpoints:\n{endpoints}"
    ));
    let mut cfg = parse(&y);
    cfg.traffic = Some(route_table(policies));
    let client = meshproxy::build(cfg).await.unwrap();
    let out = client.outbound("127.0.0.1:0".parse().unwrap()).unwrap();
    (proxies, client, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_routes_split_connections_by_weight() {
    let (_proxies, _client, out) = tcp_mesh(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db}
spec:
  host: db
  subsets:
  - {name: a, labels: {version: a}}
  - {name: b, labels: {version: b}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db}
spec:
  hosts: [db]
  tcp:
  - match: [{port: 5432}]
    route:
    - {destination: {host: db, subset: a}, weight: 75}
    - {destination: {host: db, subset: b}, weight: 25}
",
        false,
    )
    .await;
    let mut counts = BTreeMap::new();
    let n = 400;
    for _ in 0..n {
        use tokio::io::AsyncReadExt;
        let mut s = tokio::net::TcpStream::connect(out).await.unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).await.unwrap();
        *counts.entry(got).or_insert(0) += 1;
    }
    let a = *counts.get("db-a").unwrap_or(&0) as f64 / n as f64 * 100.0;
    assert!((65.0..=85.0).contains(&a), "db-a got {a:.1}%: {counts:?}");
    assert_eq!(counts.values().sum::<i32>(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_whose_app_is_gone_is_retried_elsewhere_by_the_default_policy() {
    // No VirtualService: Istio's default retry policy (connect-failure among others).
    let f = Fixture::new(SUBSETS, &[("backend-v1", "v1"), ("backend-v1", "v1")]).await;
    // Instance 0's app dies: its proxy now forwards to a port nobody listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let yaml = format!(
        "{}inbound:\n  - {{ port: {PORT}, targetPort: {dead}, protocol: http, mode: STRICT }}\n",
        base_yaml(&f.mesh.identity_yaml("backend"), 2),
    );
    f.instances[0].proxy.handle.apply(parse(&yaml)).unwrap();
    let client = http1_client();
    for _ in 0..50 {
        let (s, h, body) = send(&client, &f.url("/"), &[]).await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(h["x-backend"], "backend-v1-1");
    }
}

/// `minHealthPercent` as Envoy's healthy panic threshold (Istio sets it from the field): with
/// one of two endpoints ejected (50% healthy), a cluster at 60% balances over both, ejected one
/// included; at 0 (the default) the ejected endpoint gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_min_health_percent_the_ejected_endpoint_still_gets_traffic() {
    for (min_health, expect_traffic) in [(60, true), (0, false)] {
        let dr = format!(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: backend}}
spec:
  host: backend
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN}}
    outlierDetection: {{consecutive5xxErrors: 1, interval: 30s, baseEjectionTime: 60s, maxEjectionPercent: 100, minHealthPercent: {min_health}}}
"
        );
        let f = Fixture::new(&dr, &[("backend-v1", "v1"), ("backend-v1", "v1")]).await;
        let bad = &f.instances[0].app;
        bad.b.always.store(500, Ordering::SeqCst);
        let client = http1_client();
        let mut n = 0;
        while bad.requests() < 1 {
            send(&client, &f.url("/"), &[]).await;
            n += 1;
            assert!(n < 20, "bad endpoint never reached");
        }
        let dump = admin_get(&f.client, "/config_dump").await;
        assert!(dump.contains("\"ejected\": true"), "{dump}");
        let before = bad.requests();
        for _ in 0..20 {
            send(&client, &f.url("/"), &[]).await;
        }
        let got = bad.requests() - before;
        if expect_traffic {
            assert!(
                got >= 5,
                "minHealthPercent {min_health}: the ejected endpoint got {got} of 20"
            );
        } else {
            assert_eq!(
                got, 0,
                "minHealthPercent 0: the ejected endpoint got {got} of 20"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_leaves_a_cluster_unchanged_keeps_its_ejections() {
    const DR: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend}
spec:
  host: backend
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 2, interval: 30s, baseEjectionTime: 60s, maxEjectionPercent: 100}
";
    let f = Fixture::new(DR, &[("backend-v1", "v1"), ("backend-v1", "v1")]).await;
    let bad = &f.instances[0].app;
    bad.b.always.store(500, Ordering::SeqCst);
    let client = http1_client();
    let mut n = 0;
    while bad.requests() < 2 {
        send(&client, &f.url("/"), &[]).await;
        n += 1;
        assert!(n < 20, "bad endpoint never reached 2 failures");
    }
    // A new revision with the same cluster: the ejection (60 s) survives the swap.
    let cfg = Fixture::client_config(&f.mesh, DR, &f.instances, None, 2);
    f.client.handle.apply(cfg).unwrap();
    let before = bad.requests();
    for _ in 0..10 {
        let (s, h, _) = send(&client, &f.url("/"), &[]).await;
        assert_eq!(s, 200);
        assert_eq!(h["x-backend"], "backend-v1-1");
    }
    assert_eq!(bad.requests(), before, "the reload forgot the ejection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_connection_over_max_connections_is_closed_at_once_and_counted() {
    let (_proxies, client, out) = tcp_mesh(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db}
spec:
  host: db
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
",
        true,
    )
    .await;
    use tokio::io::AsyncReadExt;
    // The first connection holds the only slot.
    let mut first = tokio::net::TcpStream::connect(out).await.unwrap();
    let mut name = [0u8; 4];
    first.read_exact(&mut name).await.unwrap();
    // The second is closed without reaching any app.
    let mut second = tokio::net::TcpStream::connect(out).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), second.read_to_end(&mut got)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?} {got:?}");
    let stats = admin_get_stats(&client).await;
    assert!(
        stats.contains(
            "meshproxy_cluster_overflow_total{cluster=\"outbound|5432||db.default.svc.cluster.local\",resource=\"connections\"} 1"
        ),
        "{stats}"
    );
    // Once the first closes, the slot is free again.
    drop(first);
    assert_eventually!(
        {
            let mut s = tokio::net::TcpStream::connect(out).await.unwrap();
            let mut b = [0u8; 4];
            tokio::time::timeout(Duration::from_millis(500), s.read_exact(&mut b))
                .await
                .is_ok_and(|r| r.is_ok())
        },
        "the slot never came back"
    );
}

/// One counter of a Prometheus text exposition.
fn metric(stats: &str, series: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{stats}"))
}

const INBOUND_CONNECTIONS: &str = "meshproxy_connections_total{direction=\"inbound\"}";

fn pool_dr(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: backend}}
spec:
  host: backend
  trafficPolicy:
    connectionPool:
      http: {{{http}}}
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_per_connection_retires_a_connection_after_that_many_requests() {
    // Default (unlimited): sequential requests reuse one pooled connection between proxies.
    let f = Fixture::new(&pool_dr(""), &[("backend-v1", "v1")]).await;
    let client = http1_client();
    for _ in 0..6 {
        assert_eq!(send(&client, &f.url("/"), &[]).await.0, 200);
    }
    let stats = admin_get_stats(&f.instances[0].proxy).await;
    assert_eq!(metric(&stats, INBOUND_CONNECTIONS), 1, "{stats}");

    // `maxRequestsPerConnection: 2`: six requests take three connections.
    let f = Fixture::new(
        &pool_dr("maxRequestsPerConnection: 2"),
        &[("backend-v1", "v1")],
    )
    .await;
    for _ in 0..6 {
        assert_eq!(send(&client, &f.url("/"), &[]).await.0, 200);
    }
    let stats = admin_get_stats(&f.instances[0].proxy).await;
    assert_eq!(metric(&stats, INBOUND_CONNECTIONS), 3, "{stats}");
}

const POOLED_IDLE: &str = "meshproxy_upstream_pooled_connections{protocol=\"http2\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_a_pooled_connection_and_the_next_request_reconnects() {
    let f = Fixture::new(&pool_dr("idleTimeout: 1s"), &[("backend-v1", "v1")]).await;
    let client = http1_client();
    assert_eq!(send(&client, &f.url("/"), &[]).await.0, 200);
    let stats = admin_get_stats(&f.client).await;
    assert_eq!(metric(&stats, POOLED_IDLE), 1, "{stats}");
    // Closed after a second without requests (the sweeper looks once a second).
    let t = Instant::now();
    assert_eventually!(
        metric(&admin_get_stats(&f.client).await, POOLED_IDLE) == 0,
        "the idle connection was never closed"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(send(&client, &f.url("/"), &[]).await.0, 200);
    let stats = admin_get_stats(&f.instances[0].proxy).await;
    assert_eq!(metric(&stats, INBOUND_CONNECTIONS), 2, "{stats}");

    // Istio's default (1h): a connection to the subset without `idleTimeout` stays pooled
    // while the sweeper closes the idle one next to it (so a sweep demonstrably ran).
    let policies = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend}
spec:
  host: backend
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {connectionPool: {http: {idleTimeout: 1s}}}
  - name: v2
    labels: {version: v2}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend}
spec:
  hosts: [backend]
  http:
  - match: [{headers: {x-subset: {exact: v2}}}]
    route: [{destination: {host: backend, subset: v2}}]
  - route: [{destination: {host: backend, subset: v1}}]
";
    let f = Fixture::new(policies, &[("backend-v1", "v1"), ("backend-v2", "v2")]).await;
    let v2 = [("x-subset", "v2")];
    assert_eq!(send(&client, &f.url("/"), &[]).await.0, 200);
    assert_eq!(send(&client, &f.url("/"), &v2).await.0, 200);
    let stats = admin_get_stats(&f.client).await;
    assert_eq!(metric(&stats, POOLED_IDLE), 2, "{stats}");
    assert_eventually!(
        metric(&admin_get_stats(&f.client).await, POOLED_IDLE) == 1,
        "the connection idle past its 1 s idleTimeout was never closed"
    );
    assert_eq!(send(&client, &f.url("/"), &v2).await.0, 200);
    let stats = admin_get_stats(&f.instances[1].proxy).await;
    assert_eq!(metric(&stats, INBOUND_CONNECTIONS), 1, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_timeout_covers_a_slow_response_body() {
    let f = Fixture::new(
        &vs("  - timeout: 400ms\n    route:\n    - destination: {host: backend, subset: v1}\n"),
        &[("backend-v1", "v1")],
    )
    .await;
    f.instances[0]
        .app
        .b
        .body_stall_ms
        .store(3_000, Ordering::SeqCst);
    let client = http1_client();
    let t = Instant::now();
    let resp = client
        .request(
            Request::get(f.url("/"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    // The headers came in time; the body did not: it is cut, never a short success.
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await;
    assert!(body.is_err(), "a cut body must fail, got {body:?}");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_millis(2_500),
        "cut at the route timeout, took {took:?}"
    );

    // Without a route timeout the same slow body arrives whole.
    let f2 = Fixture::new(
        &vs("  - route:\n    - destination: {host: backend, subset: v1}\n"),
        &[("backend-v1", "v1")],
    )
    .await;
    f2.instances[0]
        .app
        .b
        .body_stall_ms
        .store(600, Ordering::SeqCst);
    let (s, _, body) = send(&client, &f2.url("/"), &[]).await;
    assert_eq!(s, 200);
    assert_eq!(body, format!("hello from {}", f2.instances[0].app.name));
}

/// A loopback address whose connects hang: a listener with a full accept queue (backlog 0,
/// one connection parked, never accepted), so the kernel drops further SYNs.
fn black_hole() -> (std::net::TcpListener, Vec<std::net::TcpStream>, SocketAddr) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.listen(0).unwrap();
    let l: std::net::TcpListener = s.into();
    let addr = l.local_addr().unwrap();
    let mut parked = Vec::new();
    for _ in 0..2 {
        if let Ok(c) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            parked.push(c);
        }
    }
    (l, parked, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_fails_a_hanging_connect_with_uf_in_time() {
    let (_l, _parked, hole) = black_hole();
    let policies = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend}
spec:
  host: backend
  trafficPolicy:
    connectionPool:
      tcp: {connectTimeout: 300ms}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend}
spec:
  hosts: [backend]
  http:
  - route: [{destination: {host: backend}}]
    retries: {attempts: 0}
";
    let f = Fixture::new(policies, &[("backend-v1", "v1")]).await;
    let mut cfg = Fixture::client_config(&f.mesh, policies, &f.instances, None, 2);
    cfg.services.get_mut("backend").unwrap().endpoints[0].address = hole;
    f.client.handle.apply(cfg).unwrap();
    let t = Instant::now();
    let (s, h, body) = send(&http1_client(), &f.url("/"), &[]).await;
    let took = t.elapsed();
    assert_eq!(s, 503, "{body}");
    assert_eq!(h["x-meshctl-response-flags"], "UF", "{body}");
    assert!(body.contains("connection timeout"), "{body}");
    // Istio's default would have waited 10 s.
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

/// The keepalive timer of the client proxy's connection to `peer`, from /proc/net/tcp:
/// `Some(seconds until the next probe)` when the kernel runs a keepalive timer on it.
fn keepalive_timer(peer: SocketAddr) -> Option<f64> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let want = format!("0100007F:{:04X}", peer.port());
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // local, remote, state 01 = ESTABLISHED, "tr:when"
        if f.get(2) != Some(&want.as_str()) || f.get(3) != Some(&"01") {
            return None;
        }
        let (tr, when) = f.get(5)?.split_once(':')?;
        (tr == "02").then(|| u64::from_str_radix(when, 16).ok().map(|j| j as f64 / 100.0))?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_keepalive_arms_the_kernels_keepalive_timer_with_the_given_time() {
    let f = Fixture::new(
        &pool_dr("").replace(
            "      http: {}\n",
            "      tcp: {tcpKeepalive: {time: 600s, interval: 30s, probes: 3}}\n",
        ),
        &[("backend-v1", "v1")],
    )
    .await;
    assert_eq!(send(&http1_client(), &f.url("/"), &[]).await.0, 200);
    // (A delayed-ACK timer shows the same way for a few ms; the keepalive one is minutes.)
    let peer = f.instances[0].inbound;
    assert_eventually!(
        keepalive_timer(peer).is_some_and(|t| t > 500.0 && t <= 600.0),
        "no 600 s keepalive timer on the connection: {:?}",
        keepalive_timer(peer)
    );

    // Without tcpKeepalive (Istio's default: off) no keepalive timer runs.
    let f = Fixture::new(&pool_dr(""), &[("backend-v1", "v1")]).await;
    assert_eq!(send(&http1_client(), &f.url("/"), &[]).await.0, 200);
    for _ in 0..10 {
        let t = keepalive_timer(f.instances[0].inbound);
        assert!(
            t.is_none_or(|t| t < 1.0),
            "unexpected keepalive timer: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
