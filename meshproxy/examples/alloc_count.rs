//! Heap allocations per request through the proxy pair (issue 12), counted by a counting
//! global allocator (`dhat` in testing mode: counts only, no profile file).
//!
//! One process runs an HTTP/1.1 backend, a server-side meshproxy and one client-side
//! meshproxy per path (all on 127.0.0.1 port 0, mTLS with a test CA), each built with
//! `meshproxy::build` from a config that `meshmodel::compile::compile_proxy` compiles from DIR:
//!
//! - `plain`: DIR's compose.yaml alone (no VirtualService, no DestinationRule);
//! - `plain-untabled`: the `plain` config without its `traffic` section, like bench/run
//!   proxy's hand-written plain config (on 707b5b7 the proxy's older route-less path; once
//!   an absent table means the default table, the same as `plain`);
//! - `routed`: compose.yaml and mesh.yaml (`bench/routed-mesh` writes bench/run proxy's
//!   variant (d): 50 routes with header and regex matches, requests take the last; a
//!   DestinationRule with outlier detection).
//!
//! A keep-alive HTTP/1.1 client sends WARMUP then N sequential `GET /` per path; the count
//! covers the N only. Everything shares the process, so each count includes the client and
//! the backend: `direct` (client straight to the backend) is that baseline, and
//! `plain - direct`, `routed - direct` are what the two proxy hops allocate per request.
//! An allocation is dhat's "block": every `alloc` and every `realloc`.
//!
//! `bench/run alloc`, or by hand:
//! `bench/routed-mesh /tmp/m && cargo run --release -p meshproxy --example alloc_count -- /tmp/m [N] [WARMUP]`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use meshapi::dns::{VipAllocator, VipRange};
use meshapi::proxy::{AdminConfig, PeerAuthMode, ProxyConfig};
use meshmodel::compile::{CompileInput, Placement, ProxyKey, compile_proxy};
use meshmodel::load::{LoadOptions, load};
use meshmodel::model::Inventory;
use meshtest::TestCa;
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// Where each proxy listens: loopback port 0, except the addresses already bound.
struct Loopback(BTreeMap<String, SocketAddr>);

impl Placement for Loopback {
    fn inbound(&self, workload: &str, _: u32) -> Option<SocketAddr> {
        Some(self.0.get(workload).copied().unwrap_or(any_port()))
    }
    fn admin(&self, _: &str, _: u32) -> AdminConfig {
        AdminConfig {
            admin: any_port(),
            health: any_port(),
            stats: any_port(),
        }
    }
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Compiles the config of `workload` from the files of `dir`, as the control plane does, and
/// points it at the test CA's files; outbound VIPs keep their address but bind port 0 (the
/// service port becomes the `targetPort`).
fn compile(dir: &Path, workload: &str, placed: &Loopback, ca: &TestCa, tmp: &Path) -> ProxyConfig {
    let mut opts = LoadOptions::new(dir);
    opts.env = Box::new(BTreeMap::<String, String>::new());
    let loaded = load(&opts);
    assert!(!loaded.has_errors(), "{:#?}", loaded.diagnostics);
    let inv = Inventory::from_compose(loaded.mesh.compose.as_ref());
    let mut vips = VipAllocator::new(VipRange::default());
    vips.sync(
        inv.services
            .iter()
            .map(|s| (s.namespace.as_str(), s.name.as_str())),
    )
    .unwrap();
    let input = CompileInput::new(&loaded.mesh, &inv, &vips, placed, 1);
    let key = ProxyKey {
        workload: workload.to_string(),
        instance: 0,
    };
    let mut cfg = compile_proxy(&input, &key).unwrap();
    let (cert, key) = ca
        .issue(&cfg.identity.spiffe_id.to_string())
        .write(tmp, workload);
    cfg.identity.cert_file = Some(cert);
    cfg.identity.key_file = Some(key);
    cfg.identity.roots_file = Some(tmp.join("roots.pem"));
    for o in &mut cfg.outbound {
        o.target_port = Some(o.target_port());
        o.vip.set_port(0);
    }
    cfg
}

/// `cfg` without its `traffic` section (the compiled route table), as bench/run proxy's
/// hand-written plain config has none; through the config's serialized form.
fn without_traffic(cfg: &ProxyConfig) -> ProxyConfig {
    let mut value = serde_json::to_value(cfg).unwrap();
    value.as_object_mut().unwrap().remove("traffic");
    ProxyConfig::from_str_checked(&value.to_string()).unwrap()
}

/// The backend application: `200 ok` to every request, HTTP/1.1 keep-alive.
async fn backend() -> SocketAddr {
    let listener = TcpListener::bind(any_port()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        Bytes::from_static(b"ok\n"),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// Sends `warmup` then `n` GETs on one keep-alive connection to `addr`; returns the blocks
/// and bytes allocated during the `n`.
async fn count(addr: SocketAddr, n: u64, warmup: u64) -> (u64, u64) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let host = addr.to_string();
    let mut before = dhat::HeapStats::get();
    for i in 0..warmup + n {
        if i == warmup {
            before = dhat::HeapStats::get();
        }
        let req = hyper::Request::get("/")
            .header(hyper::header::HOST, host.as_str())
            .body(Empty::<Bytes>::new())
            .unwrap();
        send.ready().await.unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "request {i} to {addr}");
        resp.into_body().collect().await.unwrap();
    }
    let after = dhat::HeapStats::get();
    (
        after.total_blocks - before.total_blocks,
        after.total_bytes - before.total_bytes,
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let args: Vec<String> = std::env::args().collect();
    let Some(mesh_dir) = args.get(1).map(Path::new) else {
        eprintln!("usage: alloc_count MESH_DIR [N] [WARMUP]   (bench/routed-mesh writes MESH_DIR)");
        std::process::exit(2);
    };
    let n: u64 = args.get(2).map_or(2000, |s| s.parse().expect("N"));
    let warmup: u64 = args.get(3).map_or(200, |s| s.parse().expect("WARMUP"));

    // The plain mesh: the same compose file without the policy files.
    let tmp = tempfile::tempdir().unwrap();
    let plain_dir = tmp.path().join("plain");
    std::fs::create_dir(&plain_dir).unwrap();
    std::fs::copy(
        mesh_dir.join("compose.yaml"),
        plain_dir.join("compose.yaml"),
    )
    .unwrap();
    let ca = TestCa::new("mesh-root");
    ca.write_roots(tmp.path(), "roots.pem");

    let app = backend().await;
    let mut placed = Loopback(BTreeMap::new());
    let mut server = compile(&plain_dir, "backend", &placed, &ca, tmp.path());
    server.outbound.clear();
    server.services.clear();
    for p in &mut server.inbound {
        p.target_port = Some(app.port());
        p.mode = PeerAuthMode::Strict;
    }
    let server = meshproxy::build(server).await.unwrap();
    placed.0.insert("backend".to_string(), server.inbound);

    let mut results = vec![("direct", count(app, n, warmup).await)];
    let paths = [
        ("plain", plain_dir.as_path(), false),
        ("plain-untabled", plain_dir.as_path(), true),
        ("routed", mesh_dir, false),
    ];
    for (name, dir, untabled) in paths {
        let mut cfg = compile(dir, "frontend", &placed, &ca, tmp.path());
        if untabled {
            cfg = without_traffic(&cfg);
        }
        let vip = cfg.outbound.first().expect("an outbound service").vip;
        for s in cfg.traffic.iter().flat_map(|t| &t.services) {
            let (vs, dr) = (&s.virtual_service, &s.destination_rule);
            eprintln!(
                "{name}: {} {} HTTP rule(s), VirtualService {vs:?}, DestinationRule {dr:?}",
                s.host,
                s.http.len()
            );
        }
        let client = meshproxy::build(cfg).await.unwrap();
        let out = client.outbound(vip).unwrap();
        results.push((name, count(out, n, warmup).await));
    }

    let per = |(blocks, bytes): (u64, u64)| (blocks as f64 / n as f64, bytes as f64 / n as f64);
    let (direct_a, direct_b) = per(results[0].1);
    println!(
        "{:<15} {:>12} {:>12} {:>18} {:>18}",
        "path", "allocs/req", "bytes/req", "proxy allocs/req", "proxy bytes/req"
    );
    let mut summary = format!("summary: requests={n}");
    for (name, r) in &results {
        let (a, b) = per(*r);
        let key = name.replace('-', "_");
        let (pa, pb) = (a - direct_a, b - direct_b);
        println!("{name:<15} {a:>12.1} {b:>12.0} {pa:>18.1} {pb:>18.0}");
        summary.push_str(&format!(" allocs_per_request_{key}={a:.1}"));
        if *name != "direct" {
            summary.push_str(&format!(" proxy_allocs_per_request_{key}={pa:.1}"));
        }
    }
    for (name, r) in &results[1..] {
        summary.push_str(&format!(
            " proxy_bytes_per_request_{}={:.0}",
            name.replace('-', "_"),
            per(*r).1 - direct_b
        ));
    }
    println!("{summary}");
}
