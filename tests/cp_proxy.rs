//! Two meshproxies in control-plane mode against a real control plane on loopback: bootstrap
//! with a token, config from the push API, then requests client-proxy -> mTLS -> server-proxy
//! -> echo app while the CA's 3 s certificates rotate under load. Every wait polls with a
//! deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshapi::proxy::SpiffeId;
use meshctl::api::ApiConfig;
use meshctl::ca::{CaConfig, RateLimitConfig};
use meshctl::controlplane::{ControlPlane, ControlPlaneConfig, PlacementSpec, ProjectSpec};
use meshproxy::ca_client::RenewPolicy;
use meshproxy::cp_mode::{ControlPlaneSettings, CpProxy, run_with_control_plane};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEADLINE: Duration = Duration::from_secs(20);

fn compose(app_port: u16) -> String {
    format!(
        r#"
name: cpproxy
services:
  client:
    image: demo/client
    labels: {{ app: client }}
    x-mesh:
      serviceAccount: client-sa
      ports: [{{ port: 9999, protocol: http }}]
  server:
    image: demo/server
    labels: {{ app: server }}
    x-mesh:
      serviceAccount: server-sa
      ports: [{{ port: {app_port}, protocol: http }}]
"#
    )
}

const STRICT: &str = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: default\nspec:\n  mtls:\n    mode: STRICT\n";

/// A host-placement base port whose inbound/admin/health/stats ports for `proxies` proxies are
/// free.
fn free_base(proxies: u16) -> u16 {
    // Tests in this binary run in parallel: each call starts from its own offset, so two
    // tests never pick the same free-looking base before either has bound it.
    static CALLS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let mut base = 20000 + ((std::process::id() as u16 % 20000) + call * 97) % 20000;
    loop {
        let all_free = [0u16, 1000, 2000, 3000].iter().all(|off| {
            (0..proxies).all(|k| std::net::TcpListener::bind(("127.0.0.1", base + off + k)).is_ok())
        });
        if all_free {
            return base;
        }
        base = 20000 + (base - 20000 + 7) % 20000;
    }
}

fn id(sa: &str) -> SpiffeId {
    format!("spiffe://cluster.local/ns/default/sa/{sa}")
        .parse()
        .unwrap()
}

async fn start_proxy(cp: &ControlPlane, workload: &str, sa: &str) -> CpProxy {
    start_instance(cp, workload, sa, 0).await
}

async fn start_instance(cp: &ControlPlane, workload: &str, sa: &str, instance: u32) -> CpProxy {
    let identity = id(sa);
    let token = cp.ca().issue_token(&identity).unwrap();
    let mut s = ControlPlaneSettings::new(
        cp.local_addr().to_string(),
        token.as_str(),
        identity,
        cp.ca().root_pem(),
        workload,
        instance,
    );
    s.renew = RenewPolicy {
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(300),
        ..RenewPolicy::default()
    };
    s.config_backoff = (Duration::from_millis(50), Duration::from_millis(300));
    s.startup_timeout = DEADLINE;
    run_with_control_plane(s, meshproxy::app::Options::default())
        .await
        .unwrap()
}

/// The leaf certificate the server proxy's inbound serves on a fresh mTLS handshake, made with
/// the client proxy's live credentials.
async fn served_leaf(client: &CpProxy, server: &CpProxy, port: u16) -> Vec<u8> {
    let tls =
        meshproxy::tls::client_config(client.handle().identity(), id("server-sa"), b"http/1.1")
            .unwrap();
    let tcp = tokio::net::TcpStream::connect(server.bound.inbound)
        .await
        .unwrap();
    let conn = tokio::time::timeout(
        DEADLINE,
        tokio_rustls::TlsConnector::from(tls).connect(meshproxy::tls::sni_for_port(port), tcp),
    )
    .await
    .unwrap()
    .unwrap();
    conn.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// One HTTP/1.1 request on a fresh connection to the client proxy's outbound listener.
async fn request(addr: SocketAddr, n: usize) -> Result<String, String> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let req = format!("GET /r/{n} HTTP/1.1\r\nHost: server\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out).to_string();
        if text.starts_with("HTTP/1.1 200") {
            Ok(text)
        } else {
            Err(text.lines().next().unwrap_or("empty answer").to_string())
        }
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_flow_through_control_plane_mode_proxies_across_certificate_rotations() {
    let echo = meshtest::echo::EchoServer::start("server").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("compose.yaml"), compose(echo.port())).unwrap();
    std::fs::create_dir(dir.path().join("mesh")).unwrap();
    std::fs::write(dir.path().join("mesh/peer-authentication.yaml"), STRICT).unwrap();
    let config = ControlPlaneConfig {
        project: ProjectSpec {
            working_dir: dir.path().to_path_buf(),
            ..ProjectSpec::default()
        },
        api: ApiConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            ..ApiConfig::default()
        },
        ca: CaConfig {
            cert_lifetime: Duration::from_secs(3),
            rate_limit: RateLimitConfig {
                burst: 1000,
                refill_every: Duration::from_millis(1),
            },
            ..CaConfig::default()
        },
        placement: PlacementSpec::Host {
            base_port: free_base(2),
        },
        watch: false,
        ..ControlPlaneConfig::default()
    };
    let cp = ControlPlane::start(config).await.unwrap();

    let server = start_proxy(&cp, "server", "server-sa").await;
    let client = start_proxy(&cp, "client", "client-sa").await;
    let vip = client.config.borrow().outbound[0].vip;
    let out = client.bound.outbound(vip).expect("outbound VIP listener");

    let first_server_cert = server.credentials.borrow().cert_chain_pem.clone();
    let first_server_tls = server.handle().identity().current().unwrap();
    let served_first = served_leaf(&client, &server, echo.port()).await;
    let mut server_certs = HashSet::from([first_server_cert.clone()]);
    let mut client_certs = HashSet::from([client.credentials.borrow().cert_chain_pem.clone()]);
    let mut xfcc = HashSet::new();
    let (mut ok, mut failed) = (0usize, Vec::new());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    // At least 3 rotations of both certificates (renewed at 40-60 % of 3 s), with requests
    // flowing the whole time.
    while server_certs.len() < 4 || client_certs.len() < 4 {
        assert!(
            Instant::now() < deadline,
            "rotations: server {} client {} certs seen in 30 s",
            server_certs.len(),
            client_certs.len()
        );
        let batch: Vec<_> = (0..4).map(|k| tokio::spawn(request(out, n + k))).collect();
        n += 4;
        for b in batch {
            match b.await.unwrap() {
                Ok(_) => ok += 1,
                Err(e) => failed.push(e),
            }
        }
        server_certs.insert(server.credentials.borrow().cert_chain_pem.clone());
        client_certs.insert(client.credentials.borrow().cert_chain_pem.clone());
        if let Some(r) = echo.last()
            && let Some(v) = r.headers.get("x-forwarded-client-cert")
        {
            xfcc.insert(v.as_bytes().to_vec());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        ok + failed.len()
    );
    assert!(ok >= 20, "only {ok} requests sent");
    assert!(
        echo.completed() >= ok,
        "the echo app saw {} of {ok}",
        echo.completed()
    );
    // The proxy's TLS layer serves the renewed certificate, not the bootstrap one.
    let now_tls = server.handle().identity().current().unwrap();
    assert!(
        !Arc::ptr_eq(&first_server_tls, &now_tls),
        "server TLS credentials never swapped"
    );
    assert_ne!(
        server.credentials.borrow().cert_chain_pem,
        first_server_cert
    );
    // And a fresh handshake gets a different certificate than the first one did.
    let served_now = served_leaf(&client, &server, echo.port()).await;
    assert_ne!(
        served_first, served_now,
        "the served certificate did not change"
    );
    let last = echo.last().unwrap();
    let header = last
        .headers
        .get("x-forwarded-client-cert")
        .expect("server proxy adds XFCC (mTLS hop)")
        .to_str()
        .unwrap();
    assert!(header.contains("client-sa"), "{header}");
    eprintln!(
        "{ok} requests, 0 failed; {} server and {} client certificates; {} distinct XFCC values",
        server_certs.len(),
        client_certs.len(),
        xfcc.len()
    );
    client.shutdown().await;
    server.shutdown().await;
    cp.shutdown().await;
}

/// The control-plane settings of the restart test: a fixed API port so the proxies can find
/// the restarted control plane where they left it.
fn restart_config(dir: &std::path::Path, api: SocketAddr, base_port: u16) -> ControlPlaneConfig {
    ControlPlaneConfig {
        project: ProjectSpec {
            working_dir: dir.to_path_buf(),
            ..ProjectSpec::default()
        },
        api: ApiConfig {
            listen: api,
            ..ApiConfig::default()
        },
        placement: PlacementSpec::Host { base_port },
        watch: false,
        ..ControlPlaneConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_keep_flowing_while_the_control_plane_restarts_and_proxies_resync() {
    let echo = meshtest::echo::EchoServer::start("server").await;
    let dir = tempfile::tempdir().unwrap();
    // Another client port than the rotation test's: both run at once, and each server proxy
    // binds the client service's VIP:port (same name, same VIP).
    let compose = compose(echo.port()).replace("port: 9999", "port: 9997");
    std::fs::write(dir.path().join("compose.yaml"), compose).unwrap();
    std::fs::create_dir(dir.path().join("mesh")).unwrap();
    let pa = dir.path().join("mesh/peer-authentication.yaml");
    std::fs::write(&pa, STRICT).unwrap();
    let api: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let base = free_base(2);
    let cp = ControlPlane::start(restart_config(dir.path(), api, base))
        .await
        .unwrap();
    let server = start_proxy(&cp, "server", "server-sa").await;
    let client = start_proxy(&cp, "client", "client-sa").await;
    let vip = client.config.borrow().outbound[0].vip;
    let out = client.bound.outbound(vip).expect("outbound VIP listener");

    // Requests flow the whole time, in a bounded loop, until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0usize, Vec::new());
            for n in 0..100_000 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                match request(out, n).await {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, failed)
        })
    };
    let echo = &echo;
    let wait_served = |more: usize| async move {
        let target = echo.completed() + more;
        let deadline = Instant::now() + DEADLINE;
        while echo.completed() < target {
            assert!(Instant::now() < deadline, "requests stopped arriving");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    wait_served(20).await;

    cp.shutdown().await;
    // Down: the proxies keep serving on their last config and certificates.
    wait_served(20).await;

    // Back on the same address and state directory: the proxies reconnect and resync, and a
    // change made after the restart reaches them.
    let cp = ControlPlane::start(restart_config(dir.path(), api, base))
        .await
        .unwrap();
    // Revisions count again from the restart (and a proxy reporting in makes one).
    let before = cp.revision();
    std::fs::write(&pa, STRICT.replace("STRICT", "PERMISSIVE")).unwrap();
    let report = cp.reload().await.unwrap();
    assert!(report.ok, "{:?}", report.errors);
    assert!(report.revision > before, "a new revision after the edit");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let acks = cp.wait_acks(report.revision, Duration::from_secs(1)).await;
        if acks.acked.len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "not resynced: {acks:?}");
    }
    assert_eq!(
        server.config.borrow().inbound[0].mode,
        meshapi::proxy::PeerAuthMode::Permissive
    );
    wait_served(20).await;

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across the restart: {failed:?}",
        failed.len(),
        ok + failed.len()
    );
    client.shutdown().await;
    server.shutdown().await;
    cp.shutdown().await;
}

/// One GET on a fresh connection to an admin or stats port; the body.
async fn admin_get(addr: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    text.split_once("\r\n\r\n")
        .map_or(text.clone(), |(_, b)| b.to_string())
}

/// Whether the client's `/config_dump` shows the endpoint at `addr` ejected.
async fn ejected(client: &CpProxy, addr: SocketAddr) -> bool {
    let dump: serde_json::Value =
        serde_json::from_str(&admin_get(client.bound.admin, "/config_dump").await).unwrap();
    dump["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["endpoints"].as_array().unwrap())
        .any(|e| e["address"] == addr.to_string() && e["ejected"] == true)
}

/// HTTP requests a proxy's inbound listener received (its Prometheus counter).
async fn inbound_requests(p: &CpProxy) -> u64 {
    let stats = admin_get(p.bound.stats, "/stats/prometheus").await;
    stats
        .lines()
        .find(|l| l.starts_with("meshproxy_requests_total{") && l.contains("inbound"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_endpoint_proxy_is_taken_back_from_ejection_as_soon_as_it_serves() {
    let echo = meshtest::echo::EchoServer::start("server").await;
    let dir = tempfile::tempdir().unwrap();
    // Two server replicas on one host. The client serves no port, so the replicas have no VIP
    // of it to bind (two proxies on one host cannot both bind one VIP:port).
    let compose = compose(echo.port())
        .replace("      ports: [{ port: 9999, protocol: http }]\n", "")
        .replace(
            "    image: demo/server\n",
            "    image: demo/server\n    deploy: { replicas: 2 }\n",
        );
    std::fs::write(dir.path().join("compose.yaml"), compose).unwrap();
    std::fs::create_dir(dir.path().join("mesh")).unwrap();
    std::fs::write(dir.path().join("mesh/peer-authentication.yaml"), STRICT).unwrap();
    // One failure ejects for a minute: only the restart can bring the endpoint back sooner.
    std::fs::write(
        dir.path().join("mesh/destination-rule.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: server}\n\
         spec:\n  host: server\n  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 1, \
         interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}\n",
    )
    .unwrap();
    let api: SocketAddr = ([127, 0, 0, 1], 0).into();
    let cp = ControlPlane::start(restart_config(dir.path(), api, free_base(3)))
        .await
        .unwrap();
    let server0 = start_instance(&cp, "server", "server-sa", 0).await;
    let server1 = start_instance(&cp, "server", "server-sa", 1).await;
    let client = start_proxy(&cp, "client", "client-sa").await;
    let vip = client.config.borrow().outbound[0].vip;
    let out = client.bound.outbound(vip).expect("outbound VIP listener");
    let addr0 = server0.bound.inbound;

    // Steady load for the whole test: nothing may fail, the stop of a replica included (no
    // request is in flight on it: it drains first), thanks to the default retry elsewhere.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0usize, Vec::new());
            for n in 0..100_000 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                match request(out, n).await {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, failed)
        })
    };
    // Both replicas serve, and the control plane knows each one's epoch.
    meshtest::assert_eventually!(
        inbound_requests(&server0).await > 0 && inbound_requests(&server1).await > 0,
        timeout = DEADLINE,
        "both replicas should get requests"
    );

    // Replica 0 stops: the client fails to connect to it, retries elsewhere and ejects it.
    server0.shutdown().await;
    meshtest::assert_eventually!(
        ejected(&client, addr0).await,
        timeout = DEADLINE,
        "the stopped replica should be ejected"
    );
    // Started again on the same address: serving, it reports its new epoch, the client takes
    // it back (not after the 60 s ejection).
    let server0 = start_instance(&cp, "server", "server-sa", 0).await;
    let ready = Instant::now();
    meshtest::assert_eventually!(
        inbound_requests(&server0).await > 0,
        timeout = DEADLINE,
        "the restarted replica should get requests again"
    );
    let back = ready.elapsed();
    assert!(!ejected(&client, addr0).await);
    assert!(
        back < Duration::from_secs(2),
        "served again {back:?} after its proxy was ready"
    );
    let st = cp.push_state().status();
    let s0 = st.iter().find(|p| p.proxy == "server/0").unwrap();
    assert!(
        s0.proxy_epoch.is_some() && s0.ready_since_ms.is_some(),
        "{s0:?}"
    );

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across the restart: {failed:?}",
        failed.len(),
        ok + failed.len()
    );
    client.shutdown().await;
    server0.shutdown().await;
    server1.shutdown().await;
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn meshctl_stats_reads_the_proxies_the_control_plane_lists_in_host_mode() {
    let echo = meshtest::echo::EchoServer::start("server").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("compose.yaml"), compose(echo.port())).unwrap();
    let base = free_base(2);
    let config = ControlPlaneConfig {
        project: ProjectSpec {
            working_dir: dir.path().to_path_buf(),
            ..ProjectSpec::default()
        },
        api: ApiConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            ..ApiConfig::default()
        },
        placement: PlacementSpec::Host { base_port: base },
        watch: false,
        ..ControlPlaneConfig::default()
    };
    let cp = ControlPlane::start(config).await.unwrap();
    let server = start_proxy(&cp, "server", "server-sa").await;
    let client = start_proxy(&cp, "client", "client-sa").await;
    let vip = client.config.borrow().outbound[0].vip;
    let out = client.bound.outbound(vip).expect("outbound VIP listener");
    request(out, 0).await.expect("a first request");

    // Traffic while `meshctl stats` scrapes twice, a second apart (bounded: 15 s at most).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(15);
            let mut n = 1;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < until {
                let _ = request(out, n).await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let project_dir = dir.path().to_path_buf();
    let stats = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_meshctl-e2e"))
            .arg("--project-directory")
            .arg(&project_dir)
            .args(["stats", "--json", "--window", "1s"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    traffic.await.unwrap();
    let stderr = String::from_utf8_lossy(&stats.stderr);
    assert!(stats.status.success(), "meshctl stats failed: {stderr}");
    let rows: serde_json::Value = serde_json::from_slice(&stats.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&stats.stdout)));
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["service"] == "server")
        .unwrap_or_else(|| panic!("no row for server: {rows} (stderr: {stderr})"));
    assert!(row["requests"].as_f64().unwrap() > 0.0, "{row}");
    assert_eq!(row["success_rate"], 1.0, "{row}");
    // The status API names where each proxy serves its metrics: the host placement's ports.
    let project_dir = dir.path().to_path_buf();
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_meshctl-e2e"))
            .arg("--project-directory")
            .arg(&project_dir)
            .args(["status", "--json"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&status.stderr)));
    for (proxy, p) in [("client/0", &client), ("server/0", &server)] {
        let listed = status["proxies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["proxy"] == proxy)
            .unwrap_or_else(|| panic!("{proxy} not in {status}"));
        assert_eq!(
            listed["stats"],
            p.bound.stats.to_string().as_str(),
            "{listed}"
        );
    }
    client.shutdown().await;
    server.shutdown().await;
    cp.shutdown().await;
}

/// The roots a proxy's admin `/certs` shows in force (subjects) and its own chain's length.
async fn certs_in_force(p: &CpProxy) -> (Vec<String>, usize) {
    let certs: serde_json::Value =
        serde_json::from_str(&admin_get(p.bound.admin, "/certs").await).unwrap();
    let c = &certs["certificates"][0];
    let roots = c["ca_cert"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["subject"].as_str().unwrap().to_string())
        .collect();
    (roots, c["cert_chain"].as_array().unwrap().len())
}

/// Whether `chain_pem`'s leaf chains (with its intermediates) to one of `roots_pem`'s roots.
fn chains_to(chain_pem: &[u8], roots_pem: &str) -> bool {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let chain: Vec<CertificateDer> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .unwrap();
    der_chains_to(&chain, roots_pem)
}

/// [`chains_to`] for DER.
fn der_chains_to(chain: &[rustls::pki_types::CertificateDer<'_>], roots_pem: &str) -> bool {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let anchors: Vec<_> = CertificateDer::pem_slice_iter(roots_pem.as_bytes())
        .map(|c| {
            webpki::anchor_from_trusted_cert(&c.unwrap())
                .unwrap()
                .to_owned()
        })
        .collect();
    let ee = webpki::EndEntityCert::try_from(&chain[0]).unwrap();
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &chain[1..],
        rustls::pki_types::UnixTime::now(),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_root_rotation_under_load_loses_no_request_and_ends_with_only_the_new_root() {
    let echo = meshtest::echo::EchoServer::start("server").await;
    let dir = tempfile::tempdir().unwrap();
    // The client serves no port: the other tests here bind its VIP listener on this host.
    let compose =
        compose(echo.port()).replace("      ports: [{ port: 9999, protocol: http }]\n", "");
    std::fs::write(dir.path().join("compose.yaml"), compose).unwrap();
    std::fs::create_dir(dir.path().join("mesh")).unwrap();
    std::fs::write(dir.path().join("mesh/peer-authentication.yaml"), STRICT).unwrap();
    let config = ControlPlaneConfig {
        project: ProjectSpec {
            working_dir: dir.path().to_path_buf(),
            ..ProjectSpec::default()
        },
        api: ApiConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            ..ApiConfig::default()
        },
        placement: PlacementSpec::Host {
            base_port: free_base(2),
        },
        watch: false,
        ..ControlPlaneConfig::default()
    };
    let cp = ControlPlane::start(config).await.unwrap();
    let server = start_proxy(&cp, "server", "server-sa").await;
    let client = start_proxy(&cp, "client", "client-sa").await;
    let vip = client.config.borrow().outbound[0].vip;
    let out = client.bound.outbound(vip).expect("outbound VIP listener");
    let old_root = cp.ca().root_pem();
    assert_eq!(certs_in_force(&server).await.0.len(), 1);

    // Steady load for the whole rotation: 4 requests at a time, each on a fresh connection
    // (a new mTLS handshake between the proxies whenever the pool needs one).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed, mut n) = (0usize, Vec::new(), 0);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && n < 200_000 {
                let batch: Vec<_> = (0..4).map(|k| tokio::spawn(request(out, n + k))).collect();
                n += 4;
                for b in batch {
                    match b.await.unwrap() {
                        Ok(_) => ok += 1,
                        Err(e) => failed.push(e),
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let t0 = Instant::now();
    let overlap = Duration::from_secs(4);
    let report = cp.rotate_root(overlap).await.unwrap();
    assert!(report.ok, "{report:?}");
    let bundle = cp.ca().root_pem();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);
    // During the overlap every proxy trusts both roots and holds a leaf of the new root
    // (with the cross certificate), renewed at once on the push, not at half its 24 h.
    let deadline = Instant::now() + DEADLINE;
    for p in [&server, &client] {
        loop {
            let c = p.credentials.borrow().clone();
            if c.root_pem == bundle && c.cert_chain_pem.matches("BEGIN CERTIFICATE").count() == 2 {
                assert!(chains_to(c.cert_chain_pem.as_bytes(), &old_root));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not take the new bundle and renew",
                p.handle().identity().current().unwrap().id
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let renewed_in = t0.elapsed();
    assert!(
        renewed_in < overlap,
        "both renewed {renewed_in:?} after the rotation"
    );
    let (roots, chain_len) = certs_in_force(&server).await;
    assert_eq!((roots.len(), chain_len), (2, 2), "{roots:?}");

    // After the overlap the old root is gone from the CA and from every proxy.
    let new_root = loop {
        if cp.ca().retire_at().is_none() {
            break cp.ca().root_pem();
        }
        assert!(t0.elapsed() < overlap + DEADLINE, "never retired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(new_root.matches("BEGIN CERTIFICATE").count(), 1);
    assert!(bundle.contains(new_root.trim()) && !old_root.contains(new_root.trim()));
    let deadline = Instant::now() + DEADLINE;
    for p in [&server, &client] {
        loop {
            let (roots, _) = certs_in_force(p).await;
            if p.credentials.borrow().root_pem == new_root && roots.len() == 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the old root is still in force: {roots:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Requests still flow, now between leaves of the new root alone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the rotation: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok >= 40, "only {ok} requests sent");
    // The server's leaf, served on a fresh handshake, verifies with the new root only and no
    // longer with the old one.
    let leaf = [rustls::pki_types::CertificateDer::from(
        served_leaf(&client, &server, echo.port()).await,
    )];
    assert!(der_chains_to(&leaf, &new_root));
    assert!(!der_chains_to(&leaf, &old_root));
    eprintln!(
        "{ok} requests, 0 failed over a root rotation; both proxies renewed {renewed_in:?} after it started"
    );
    client.shutdown().await;
    server.shutdown().await;
    cp.shutdown().await;
}
