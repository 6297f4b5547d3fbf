//! The control plane end to end on loopback: real CA, real mTLS API, real file watcher, and
//! meshproxy's real config client as the proxy. Every wait polls with a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshapi::proxy::{PeerAuthMode, ProxyConfig, SpiffeId};
use meshapi::wire::{RELOAD_PATH, ReloadRequest, STATUS_PATH};
use meshctl::api::ApiConfig;
use meshctl::controlplane::api::{ReloadResponse, StatusReport};
use meshctl::controlplane::client::AdminClient;
use meshctl::controlplane::{ControlPlane, ControlPlaneConfig, ProjectSpec, ProxyStatus};
use meshmodel::compile::ProxyKey;
use meshproxy::ca_client::{CaClient, Credentials};
use meshproxy::config_client::{ConfigClient, ConfigClientSettings, Outcome};
use tokio::sync::watch;

const DEADLINE: Duration = Duration::from_secs(10);

const COMPOSE: &str = r#"
name: cptest
services:
  frontend:
    image: demo/frontend
    labels: { app: frontend, version: v1 }
    x-mesh:
      serviceAccount: frontend-sa
      ports: [{ port: 3000, protocol: http }]
  backend-v1:
    image: demo/backend
    labels: { app: backend, version: v1 }
    x-mesh:
      service: backend
      ports: [{ port: 8080, protocol: http }]
"#;

fn peer_auth(mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: default\nspec:\n  mtls:\n    mode: {mode}\n"
    )
}

fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("compose.yaml"), COMPOSE).unwrap();
    std::fs::create_dir(dir.path().join("mesh")).unwrap();
    std::fs::write(pa_path(dir.path()), peer_auth("STRICT")).unwrap();
    dir
}

fn pa_path(dir: &Path) -> PathBuf {
    dir.join("mesh/peer-authentication.yaml")
}

async fn start(dir: &Path, port: u16) -> ControlPlane {
    let config = ControlPlaneConfig {
        project: ProjectSpec {
            working_dir: dir.to_path_buf(),
            ..ProjectSpec::default()
        },
        api: ApiConfig {
            listen: ([127, 0, 0, 1], port).into(),
            ..ApiConfig::default()
        },
        ..ControlPlaneConfig::default()
    };
    ControlPlane::start(config).await.unwrap()
}

fn frontend_id() -> SpiffeId {
    "spiffe://cluster.local/ns/default/sa/frontend-sa"
        .parse()
        .unwrap()
}

/// A proxy: credentials from the CA, then the config client.
struct Proxy {
    config: watch::Receiver<Arc<ProxyConfig>>,
    outcomes: watch::Receiver<Option<Outcome>>,
    _creds: watch::Sender<Credentials>,
    stop: watch::Sender<bool>,
}

async fn connect_proxy(cp: &ControlPlane, addr: &str) -> Proxy {
    let id = frontend_id();
    let token = cp.ca().issue_token(&id).unwrap();
    let ca = CaClient::new(addr, Some(token.as_str().into()), id, &cp.ca().root_pem()).unwrap();
    let creds = ca.fetch(None).await.unwrap();
    let (creds_tx, creds_rx) = watch::channel(creds);
    let mut settings = ConfigClientSettings::new(addr, "frontend", 0);
    settings.backoff_initial = Duration::from_millis(50);
    settings.backoff_max = Duration::from_millis(300);
    let client = ConfigClient::new(settings, &cp.ca().root_pem(), "cluster.local").unwrap();
    let outcomes = client.outcomes();
    let (first, client) = tokio::time::timeout(DEADLINE, client.first(&creds_rx))
        .await
        .unwrap()
        .unwrap();
    let (tx, rx) = watch::channel(first);
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(client.run(creds_rx, tx, stop_rx));
    Proxy {
        config: rx,
        outcomes,
        _creds: creds_tx,
        stop,
    }
}

async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn frontend_status(cp: &ControlPlane) -> ProxyStatus {
    cp.push_state()
        .status()
        .into_iter()
        .find(|p| p.proxy == "frontend/0")
        .unwrap()
}

fn mode(cfg: &ProxyConfig) -> PeerAuthMode {
    cfg.inbound[0].mode
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_pushes_a_new_version_and_bad_edits_push_nothing() {
    let dir = project();
    let cp = start(dir.path(), 0).await;
    let addr = cp.local_addr().to_string();
    let proxy = connect_proxy(&cp, &addr).await;
    {
        let cfg = proxy.config.borrow();
        assert_eq!(cfg.revision, 1);
        assert_eq!(mode(&cfg), PeerAuthMode::Strict);
        assert_eq!(cfg.outbound[0].service, "backend.default");
    }
    eventually("ACK of version 1", || {
        (frontend_status(&cp).acked == Some(1)).then_some(())
    })
    .await;
    // Serving, the proxy reported its start epoch: revision 2 carries it to its clients
    // (backend-v1), not to the frontend itself.
    eventually("revision 2 with the frontend's epoch", || {
        (frontend_status(&cp).proxy_epoch.is_some() && cp.revision() == 2).then_some(())
    })
    .await;
    assert_eq!(proxy.config.borrow().revision, 1);

    // An edit: version 3 reaches the proxy and its ACK shows in status (over the admin API).
    std::fs::write(pa_path(dir.path()), peer_auth("PERMISSIVE")).unwrap();
    let cfg_rx = proxy.config.clone();
    eventually("version 3 at the proxy", || {
        let c = cfg_rx.borrow();
        (c.revision == 3 && mode(&c) == PeerAuthMode::Permissive).then_some(())
    })
    .await;
    let admin = AdminClient::from_state_dir(&dir.path().join(".mesh")).unwrap();
    let mut acked = false;
    for _ in 0..200 {
        let status: StatusReport = admin.get(STATUS_PATH).await.unwrap();
        let p = status
            .proxies
            .iter()
            .find(|p| p.proxy == "frontend/0")
            .unwrap();
        if p.acked == Some(3) && p.connected {
            acked = true;
            assert!(status.last_reload.ok);
            assert!(
                status
                    .last_reload
                    .diff
                    .iter()
                    .any(|l| l.contains("PeerAuthentication/default.default")),
                "{:?}",
                status.last_reload.diff
            );
            assert!(
                status
                    .identities
                    .iter()
                    .any(|i| i.identity == frontend_id().to_string())
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(acked, "ACK of version 3 never showed in status");

    // An invalid edit: nothing is pushed, the error is placed at file:line:column.
    std::fs::write(
        pa_path(dir.path()),
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\nspec:\n  mtls:\n    mode: STRICTEST\n",
    )
    .unwrap();
    let errors = eventually("refused reload", || {
        let r = cp.last_reload();
        (!r.ok).then_some(r.errors)
    })
    .await;
    assert!(
        errors
            .iter()
            .any(|e| e.contains("peer-authentication.yaml:7:")),
        "{errors:?}"
    );
    assert_eq!(cp.revision(), 3);
    assert_eq!(proxy.config.borrow().revision, 3);

    // A save landing half-written is refused; the completed save applies.
    let refused_at = cp.last_reload().at_unix_ms;
    std::fs::write(
        pa_path(dir.path()),
        "apiVersion: security.istio.io/v1\nkind: PeerAuth",
    )
    .unwrap();
    eventually("the half-written save's reload, refused", || {
        let r = cp.last_reload();
        (r.at_unix_ms > refused_at && !r.ok).then_some(())
    })
    .await;
    assert_eq!(cp.revision(), 3);
    assert_eq!(proxy.config.borrow().revision, 3);
    std::fs::write(pa_path(dir.path()), peer_auth("STRICT")).unwrap();
    eventually("version 4 after the completed save", || {
        let c = cfg_rx.borrow();
        (c.revision == 4 && mode(&c) == PeerAuthMode::Strict).then_some(())
    })
    .await;

    // apply --wait: nothing changed, every connected proxy is on the revision in force.
    let resp: ReloadResponse = admin
        .post(
            RELOAD_PATH,
            &ReloadRequest {
                wait: true,
                timeout_ms: Some(5000),
            },
        )
        .await
        .unwrap();
    assert!(resp.reload.ok);
    let acks = resp.acks.unwrap();
    assert!(acks.all_acked(), "{acks:?}");
    assert_eq!(acks.acked, ["frontend/0"]);
    assert_eq!(acks.not_connected, ["backend-v1/0"]);
    proxy.stop.send_replace(true);
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_config_is_nacked_and_the_old_one_kept() {
    let dir = project();
    let cp = start(dir.path(), 0).await;
    let addr = cp.local_addr().to_string();
    let proxy = connect_proxy(&cp, &addr).await;
    let good = proxy.config.borrow().clone();
    let mut bad = serde_json::to_value(&*good).unwrap();
    bad["apiVersion"] = "meshproxy/v9".into();
    let key = ProxyKey {
        workload: "frontend".into(),
        instance: 0,
    };
    let version = cp.push_override(&key, bad).unwrap();
    let mut outcomes = proxy.outcomes.clone();
    eventually("NACK in status", || {
        let s = frontend_status(&cp);
        (s.nacked == Some(version)).then_some(())
    })
    .await;
    let s = frontend_status(&cp);
    assert!(s.nack_error.unwrap().contains("apiVersion"));
    assert!(matches!(
        outcomes.borrow_and_update().clone(),
        Some(Outcome::Refused(v, _)) if v == version
    ));
    assert_eq!(*proxy.config.borrow(), good, "the old config stays");
    let report = cp
        .push_state()
        .wait_acks(version, Duration::from_millis(10))
        .await;
    assert_eq!(report.refused.len(), 1, "{report:?}");

    // The next good version is applied (the NACKed one is not resent in a loop).
    std::fs::write(pa_path(dir.path()), peer_auth("DISABLE")).unwrap();
    let rx = proxy.config.clone();
    eventually("the next version", || {
        (mode(&rx.borrow()) == PeerAuthMode::Disable).then_some(())
    })
    .await;
    proxy.stop.send_replace(true);
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_keep_their_config_while_the_control_plane_restarts_then_resync() {
    let dir = project();
    let cp = start(dir.path(), 0).await;
    let port = cp.local_addr().port();
    let addr = cp.local_addr().to_string();
    let proxy = connect_proxy(&cp, &addr).await;
    let mut watched = proxy.config.clone();
    let before = watched.borrow_and_update().clone();
    cp.shutdown().await;

    let cp = start(dir.path(), port).await;
    eventually("resync with the new control plane", || {
        (frontend_status(&cp).acked == Some(1)).then_some(())
    })
    .await;
    // The last good config was kept through the outage and, with the same content after the
    // restart, never republished: the watch saw no new value at all.
    assert!(
        !watched.has_changed().unwrap(),
        "the config was replaced while the control plane was away"
    );
    assert_eq!(*proxy.config.borrow(), before);
    assert!(matches!(
        proxy.outcomes.borrow().clone(),
        Some(Outcome::Unchanged(1))
    ));
    // And pushes work again.
    std::fs::write(pa_path(dir.path()), peer_auth("PERMISSIVE")).unwrap();
    let rx = proxy.config.clone();
    eventually("push after restart", || {
        (mode(&rx.borrow()) == PeerAuthMode::Permissive).then_some(())
    })
    .await;
    proxy.stop.send_replace(true);
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_replaced_new_and_deleted_files_are_picked_up() {
    let dir = project();
    let cp = start(dir.path(), 0).await;
    let addr = cp.local_addr().to_string();
    let proxy = connect_proxy(&cp, &addr).await;
    let rx = proxy.config.clone();

    // An editor's save: write a temporary file, rename it over the original.
    let tmp = dir.path().join("mesh/.peer-authentication.yaml.swp");
    std::fs::write(&tmp, peer_auth("PERMISSIVE")).unwrap();
    std::fs::rename(&tmp, pa_path(dir.path())).unwrap();
    eventually("rename-replaced file", || {
        (mode(&rx.borrow()) == PeerAuthMode::Permissive).then_some(())
    })
    .await;

    // A new file in the watched directory: workload-level DISABLE for the frontend.
    let extra = dir.path().join("mesh/frontend-pa.yaml");
    std::fs::write(
        &extra,
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: frontend\n  namespace: default\nspec:\n  selector:\n    matchLabels:\n      app: frontend\n  mtls:\n    mode: DISABLE\n",
    )
    .unwrap();
    eventually("new file", || {
        (mode(&rx.borrow()) == PeerAuthMode::Disable).then_some(())
    })
    .await;

    // Deleted while watched: its policy goes away.
    std::fs::remove_file(&extra).unwrap();
    eventually("deleted file", || {
        (mode(&rx.borrow()) == PeerAuthMode::Permissive).then_some(())
    })
    .await;
    let records = meshapi::dns::Records::load(&dir.path().join(".mesh/dns-records.json")).unwrap();
    assert_eq!(records.services.len(), 2);
    proxy.stop.send_replace(true);
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_strangers_and_other_identities() {
    let dir = project();
    let cp = start(dir.path(), 0).await;
    let addr = cp.local_addr().to_string();
    // A backend proxy asking for the frontend's config is refused (403), and NACKs nothing.
    let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/backend"
        .parse()
        .unwrap();
    let token = cp.ca().issue_token(&id).unwrap();
    let ca = CaClient::new(&addr, Some(token.as_str().into()), id, &cp.ca().root_pem()).unwrap();
    let creds = ca.fetch(None).await.unwrap();
    let (_tx, creds_rx) = watch::channel(creds);
    let mut settings = ConfigClientSettings::new(&addr, "frontend", 0);
    settings.backoff_initial = Duration::from_millis(10);
    let client = ConfigClient::new(settings, &cp.ca().root_pem(), "cluster.local").unwrap();
    let r = tokio::time::timeout(DEADLINE, client.first(&creds_rx))
        .await
        .unwrap();
    match r {
        Err(meshproxy::config_client::ConfigClientError::Refused { status: 403, .. }) => {}
        other => panic!("a foreign identity was not refused: {other:?}"),
    }
    assert_eq!(frontend_status(&cp).sent, None);
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_directory_replaced_by_a_symlink_swap_is_picked_up() {
    let dir = project();
    let root = dir.path();
    std::fs::rename(root.join("mesh"), root.join("mesh-a")).unwrap();
    std::fs::create_dir(root.join("mesh-b")).unwrap();
    std::fs::write(
        root.join("mesh-b/peer-authentication.yaml"),
        peer_auth("PERMISSIVE"),
    )
    .unwrap();
    std::os::unix::fs::symlink("mesh-a", root.join("mesh")).unwrap();
    let cp = start(root, 0).await;
    let addr = cp.local_addr().to_string();
    let proxy = connect_proxy(&cp, &addr).await;
    assert_eq!(mode(&proxy.config.borrow()), PeerAuthMode::Strict);

    std::os::unix::fs::symlink("mesh-b", root.join("mesh.new")).unwrap();
    std::fs::rename(root.join("mesh.new"), root.join("mesh")).unwrap();
    let rx = proxy.config.clone();
    eventually("symlink swap", || {
        (mode(&rx.borrow()) == PeerAuthMode::Permissive).then_some(())
    })
    .await;
    // The new target is watched from now on.
    std::fs::write(
        root.join("mesh-b/peer-authentication.yaml"),
        peer_auth("DISABLE"),
    )
    .unwrap();
    eventually("edit in the new target", || {
        (mode(&rx.borrow()) == PeerAuthMode::Disable).then_some(())
    })
    .await;
    proxy.stop.send_replace(true);
    cp.shutdown().await;
}

fn meshctl(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshctl-e2e"))
        .arg("--project-directory")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_status_and_apply_wait_exit_codes() {
    let dir = project();
    let cp = start(dir.path(), 0).await;
    let addr = cp.local_addr().to_string();
    let proxy = connect_proxy(&cp, &addr).await;
    eventually("ACK of version 1", || {
        (frontend_status(&cp).acked == Some(1)).then_some(())
    })
    .await;
    let d = dir.path().to_path_buf();
    let (code, out) = tokio::task::spawn_blocking(move || meshctl(&d, &["status"]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("frontend/0") && out.contains("SYNCED"),
        "{out}"
    );
    assert!(out.contains("frontend-sa"), "{out}");

    let d = dir.path().to_path_buf();
    let (code, out) = tokio::task::spawn_blocking(move || meshctl(&d, &["apply", "--wait"]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 proxy(ies) ACKed"), "{out}");

    // The proxy refuses the config in force: apply --wait exits 1 and names it.
    let mut bad = serde_json::to_value(&**proxy.config.borrow()).unwrap();
    bad["limits"]["maxHeaderBytes"] = 10.into();
    let key = ProxyKey {
        workload: "frontend".into(),
        instance: 0,
    };
    let version = cp.push_override(&key, bad).unwrap();
    eventually("NACK", || {
        (frontend_status(&cp).nacked == Some(version)).then_some(())
    })
    .await;
    let d = dir.path().to_path_buf();
    let (code, out) =
        tokio::task::spawn_blocking(move || meshctl(&d, &["apply", "--wait", "--timeout", "2"]))
            .await
            .unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("frontend/0 REFUSED") && out.contains("maxHeaderBytes"),
        "{out}"
    );
    let d = dir.path().to_path_buf();
    let (_, out) = tokio::task::spawn_blocking(move || meshctl(&d, &["status", "--json"]))
        .await
        .unwrap();
    let status: StatusReport = serde_json::from_str(&out).unwrap();
    assert_eq!(status.proxies[1].nacked, Some(version));
    proxy.stop.send_replace(true);
    cp.shutdown().await;
    // Without a running control plane the CLI says how to start one (a failure: exit 1).
    let d = dir.path().to_path_buf();
    let (code, out) = tokio::task::spawn_blocking(move || meshctl(&d, &["status"]))
        .await
        .unwrap();
    assert_eq!(code, 1);
    assert!(out.contains("meshctl serve"), "{out}");
}

/// Issue 15's reload rule: what Istio's API server rejects is refused (the last good config
/// keeps serving); what Istio accepts and `istioctl analyze` flags is applied, with the
/// finding in the reload report, `meshctl status`, `meshctl apply` and `meshctl check`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyzer_findings_are_applied_and_shown_api_server_rejections_are_refused() {
    let dir = project();
    let cp = start(dir.path(), 0).await;
    let addr = cp.local_addr().to_string();
    let proxy = connect_proxy(&cp, &addr).await;
    eventually("ACK of version 1", || {
        (frontend_status(&cp).acked == Some(1)).then_some(())
    })
    .await;
    // Serving, the proxy reported its start epoch: revision 2 (its clients' configs).
    eventually("revision 2 with the frontend's epoch", || {
        (frontend_status(&cp).proxy_epoch.is_some() && cp.revision() == 2).then_some(())
    })
    .await;
    let flagged = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: backend}\n\
                   spec:\n  hosts: [backend]\n  http:\n  - route:\n    - destination: {host: backend, subset: v3}\n\
                   ---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
                   metadata: {name: deny-nothing}\nspec:\n  selector: {matchLabels: {app: backend}}\n  action: DENY\n";
    std::fs::write(dir.path().join("mesh/flagged.yaml"), flagged).unwrap();
    // The reload the watcher runs, asked for explicitly: the file event alone was seen lost
    // when it landed during another reload.
    let report = cp.reload().await.unwrap();
    assert!(report.ok, "{report:?}");
    let revision = report.revision;
    let cfg_rx = proxy.config.clone();
    eventually("the flagged files applied", || {
        let c = cfg_rx.borrow();
        let routed = c.traffic.as_ref().is_some_and(|t| {
            t.services.iter().any(|s| {
                s.http.iter().any(|r| match &r.action {
                    meshapi::traffic::Action::Route(ds) => ds
                        .iter()
                        .any(|d| d.destination.subset.as_deref() == Some("v3")),
                    _ => false,
                })
            })
        });
        (c.revision == revision && routed).then_some(())
    })
    .await;
    assert_eq!(report.warnings, 2, "{:?}", report.findings);
    for code in ["MESH0102", "MESH0205"] {
        assert!(
            report
                .findings
                .iter()
                .any(|f| f.contains(code) && f.contains("flagged.yaml:")),
            "{code}: {:?}",
            report.findings
        );
    }
    // Shown where a user looks: status, apply (the reload output) and check.
    for args in [&["status"][..], &["apply"], &["check"]] {
        let d = dir.path().to_path_buf();
        let (code, out) = tokio::task::spawn_blocking(move || meshctl(&d, args))
            .await
            .unwrap();
        assert_eq!(code, 0, "{args:?}: {out}");
        assert!(
            out.contains("MESH0102") && out.contains("MESH0205"),
            "{args:?}: {out}"
        );
    }

    // What the API server rejects (a weight out of range) is refused; the revision in force
    // keeps serving.
    std::fs::write(
        dir.path().join("mesh/flagged.yaml"),
        flagged.replace("subset: v3}\n", "subset: v3}\n      weight: -5\n"),
    )
    .unwrap();
    let refused = cp.reload().await.unwrap();
    assert!(!refused.ok, "{refused:?}");
    let errors = refused.errors;
    assert!(
        errors
            .iter()
            .any(|e| e.contains("flagged.yaml:9:") && e.contains("MESH0004")),
        "{errors:?}"
    );
    assert_eq!(cp.revision(), revision);
    assert_eq!(proxy.config.borrow().revision, revision);
    proxy.stop.send_replace(true);
    cp.shutdown().await;
}
