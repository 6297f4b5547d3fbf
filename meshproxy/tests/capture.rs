//! Transparent capture in network namespaces the test creates: `meshproxy --capture` programs
//! its nftables table over netlink in a "pod" netns; a "client" netns reaches the pod over a
//! veth pair. Real connections show what is redirected and what is not:
//! (a) outbound to a VIP lands on 15001 with its original destination; (b) plaintext from the
//! network to a STRICT port is refused and the app never sees it; (c) a PERMISSIVE port works
//! end to end (the proxy -> 127.0.0.1 hop is not redirected again); (d) a restart (after
//! SIGKILL) gives the identical table; (e) SIGTERM removes it; `--capture-remove` removes a
//! table left behind; without CAP_NET_ADMIN the error says so; (f) a published port is the
//! edge only from outside the project network (plaintext, AuthorizationPolicy without a
//! principal) and the app's own calls on its number stay captured; (g) egress to an outside
//! address: REGISTRY_ONLY answers `502 NR` or closes, ALLOW_ANY passes it through; (h) IPv6
//! TCP in either direction is refused by the `ip6` guard table, not a way around the proxy.
//!
//! Needs root, `ip`, `nft`, `curl` and `python3` (the app); skipped loudly otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::*;
use meshproxy::capture::CaptureSpec;
use meshtest::assert_eventually;

const CLIENT_IP: &str = "169.254.213.1";
const POD_IP: &str = "169.254.213.2";
const BIN: &str = env!("CARGO_BIN_EXE_meshproxy");

/// The application: HTTP on 0.0.0.0:8080 and :8081, logging every accepted connection and
/// request (`conn PORT PEER`, `req PORT PEER PATH`) to the file named by argv[1].
const APP: &str = r#"
import http.server, sys, threading
log = open(sys.argv[1], "a", buffering=1)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        port = self.server.server_address[1]
        log.write(f"req {port} {self.client_address[0]} {self.path}\n")
        body = f"app {port} {self.path}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    allow_reuse_address = True
    def verify_request(self, request, addr):
        log.write(f"conn {self.server_address[1]} {addr[0]}\n")
        return True
for p in (8080, 8081):
    s = S(("0.0.0.0", p), H)
    threading.Thread(target=s.serve_forever, daemon=True).start()
threading.Event().wait()
"#;

fn available() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    root && ["ip", "nft", "curl", "python3"].iter().all(|b| {
        Command::new("sh")
            .args(["-c", &format!("command -v {b}")])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn skip() -> bool {
    meshtest::skip_unless(
        "root",
        available(),
        "capture test: needs root and ip, nft, curl, python3 (CI has them; run as root)",
    )
}

/// A client netns and a pod netns joined by a veth pair, and every process started in them;
/// all killed and deleted on drop, also when the test fails.
struct Pair {
    client: String,
    pod: String,
    children: Vec<Child>,
}

impl Drop for Pair {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.client, &self.pod] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Pair {
    fn new() -> Pair {
        static N: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let (client, pod) = (format!("mpcap{id}c"), format!("mpcap{id}p"));
        let pair = Pair {
            client: client.clone(),
            pod: pod.clone(),
            children: Vec::new(),
        };
        for ns in [&client, &pod] {
            run(Command::new("ip").args(["netns", "add", ns]));
        }
        run(&mut pair.exec(
            &client,
            &[
                "ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns",
                &pod,
            ],
        ));
        for (ns, dev, ip) in [(&client, "veth0", CLIENT_IP), (&pod, "veth1", POD_IP)] {
            run(&mut pair.exec(ns, &["ip", "addr", "add", &format!("{ip}/30"), "dev", dev]));
            run(&mut pair.exec(ns, &["ip", "link", "set", dev, "up"]));
            run(&mut pair.exec(ns, &["ip", "link", "set", "lo", "up"]));
        }
        pair
    }

    fn exec(&self, ns: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).args(args);
        c
    }

    fn spawn_in_pod(&mut self, args: &[&str]) -> usize {
        let pod = self.pod.clone();
        self.spawn_in(&pod, args)
    }

    fn spawn_in(&mut self, ns: &str, args: &[&str]) -> usize {
        let child = self
            .exec(ns, args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.children.push(child);
        self.children.len() - 1
    }

    /// `curl` from a netns: (HTTP code, "000" when no response, body).
    fn curl(&self, ns: &str, url: &str) -> (String, String) {
        self.curl_args(ns, &[url])
    }

    /// [`Pair::curl`] with more arguments (`-D -` puts the response head before the body).
    fn curl_args(&self, ns: &str, args: &[&str]) -> (String, String) {
        let mut all = vec!["curl", "-s", "-m", "3", "-w", "\n%{http_code}"];
        all.extend_from_slice(args);
        let out = self.exec(ns, &all).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.to_string(), body.to_string())
    }

    /// `nft list table ip meshctl` in the pod, or `None` when there is no such table.
    fn table(&self) -> Option<String> {
        let out = self
            .exec(&self.pod, &["nft", "list", "table", "ip", "meshctl"])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn ready(&self) -> bool {
        self.curl(&self.pod, "http://127.0.0.1:15021/healthz/ready")
            .0
            == "200"
    }

    /// Starts `meshproxy --config FILE --capture` in the pod and waits until it is ready.
    async fn start_proxy(&mut self, config: &str) -> usize {
        self.start_proxy_with(config, &[]).await
    }

    /// [`Pair::start_proxy`] with more arguments.
    async fn start_proxy_with(&mut self, config: &str, extra: &[&str]) -> usize {
        let mut args = vec![BIN, "--config", config, "--capture", "--threads", "1"];
        args.extend_from_slice(extra);
        let i = self.spawn_in_pod(&args);
        assert_eventually!(
            self.ready(),
            timeout = Duration::from_secs(15),
            "proxy never became ready"
        );
        i
    }

    fn signal(&self, child: usize, sig: &str) {
        let pid = self.children[child].id().to_string();
        run(Command::new("kill").args([sig, &pid]));
    }

    async fn wait_exit(&mut self, child: usize) -> std::process::ExitStatus {
        assert_eventually!(
            self.children[child].try_wait().unwrap().is_some(),
            timeout = Duration::from_secs(10),
            "proxy did not exit"
        );
        self.children[child].wait().unwrap()
    }
}

fn stat(stats: &str, name: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn capture_redirects_pod_traffic_through_the_proxy_and_is_removed_on_sigterm() {
    if skip() {
        return;
    }
    let mesh = Mesh::new();
    let mut pair = Pair::new();
    let log = mesh.path().join("app.log");
    std::fs::write(&log, "").unwrap();
    let app = write_file(mesh.path(), "app.py", APP);
    pair.spawn_in_pod(&["python3", app.to_str().unwrap(), log.to_str().unwrap()]);
    let app_log = || std::fs::read_to_string(&log).unwrap();

    // Before any capture the app is reachable from the network: what (b) must prevent.
    assert_eventually!(
        pair.curl(&pair.client, &format!("http://{POD_IP}:8080/direct"))
            .0
            == "200",
        timeout = Duration::from_secs(10),
        "the app never answered directly; log: {}",
        app_log()
    );

    let yaml = format!(
        "apiVersion: meshproxy/v1\n{}listeners:\n  inbound: 0.0.0.0:15006\n  outboundCapture: 127.0.0.1:15001\n  bindVips: false\n\
         inbound:\n  - {{ port: 8080, protocol: http, mode: STRICT }}\n  - {{ port: 8081, protocol: http, mode: PERMISSIVE }}\n\
         outbound:\n  - {{ service: pod, vip: \"127.240.0.7:8080\", protocol: http, targetPort: 8081 }}\n\
         services:\n  pod:\n    endpoints:\n      - {{ address: \"127.0.0.1:15006\", identity: \"{}\" }}\n\
         drainDeadline: 1s\n",
        mesh.identity_yaml("pod"),
        spiffe("pod"),
    );
    let config = write_file(mesh.path(), "pod.yaml", &yaml);
    let config = config.to_str().unwrap();
    let spec = CaptureSpec::from_config(&parse(&yaml));

    // The first start installs the table; every rule of the spec reads back from the kernel.
    let first = pair.start_proxy(config).await;
    let installed = pair.table().expect("no table ip meshctl after start");
    for rule in spec.rules() {
        assert!(
            installed.contains(&format!("\t\t{rule}\n")),
            "rule `{rule}` missing from:\n{installed}"
        );
    }
    // (d) Killed: the table stays as it was. Restarted: the same table, nothing duplicated.
    pair.signal(first, "-KILL");
    pair.wait_exit(first).await;
    assert_eq!(pair.table().as_deref(), Some(installed.as_str()));
    let proxy = pair.start_proxy(config).await;
    assert_eq!(pair.table().as_deref(), Some(installed.as_str()));
    assert_eq!(installed.matches("redirect to :15006").count(), 1);

    // (a) A pod process calls a VIP: captured on 15001 with the original destination, routed
    // to the `pod` service (mTLS to its own inbound), which forwards to app port 8081.
    let (code, body) = pair.curl(&pair.pod, "http://127.240.0.7:8080/via-vip");
    assert_eq!((code.as_str(), body.as_str()), ("200", "app 8081 /via-vip"));
    let stats = pair
        .curl(&pair.pod, "http://127.0.0.1:15090/stats/prometheus")
        .1;
    assert!(
        stat(
            &stats,
            "meshproxy_connections_total{direction=\"outbound\"}"
        ) >= 1,
        "{stats}"
    );

    // (b) Plaintext from the network to a STRICT port: refused, and the app never sees it.
    let (code, _) = pair.curl(&pair.client, &format!("http://{POD_IP}:8080/strict-probe"));
    assert_eq!(code, "000", "a plaintext request got an HTTP answer");
    let stats = pair
        .curl(&pair.pod, "http://127.0.0.1:15090/stats/prometheus")
        .1;
    assert!(
        stat(&stats, "meshproxy_peer_auth_rejected_total") >= 1,
        "{stats}"
    );
    let seen = app_log();
    assert!(!seen.contains("/strict-probe"), "{seen}");

    // (c) PERMISSIVE: client -> podIP:8081 -> 15006 -> 127.0.0.1:8081, not redirected again.
    let (code, body) = pair.curl(&pair.client, &format!("http://{POD_IP}:8081/permissive"));
    assert_eq!(
        (code.as_str(), body.as_str()),
        ("200", "app 8081 /permissive")
    );
    let seen = app_log();
    assert!(seen.contains("req 8081 127.0.0.1 /permissive"), "{seen}");
    // Since the first proxy started, every connection the app accepted came from the proxy.
    let from_network: Vec<&str> = seen
        .lines()
        .skip_while(|l| !l.ends_with("/direct"))
        .skip(1)
        .filter(|l| l.contains(CLIENT_IP))
        .collect();
    assert!(
        from_network.is_empty(),
        "app reached around the proxy: {from_network:?}"
    );

    // The proxy's own ports are not redirected: health answers from the network.
    assert_eq!(
        pair.curl(
            &pair.client,
            &format!("http://{POD_IP}:15021/healthz/ready")
        )
        .0,
        "200"
    );

    // (e) SIGTERM: drained, clean exit, table gone; the app is exposed again.
    pair.signal(proxy, "-TERM");
    let status = pair.wait_exit(proxy).await;
    assert!(status.success(), "{status}");
    assert_eq!(pair.table(), None);
    assert_eq!(
        pair.curl(&pair.client, &format!("http://{POD_IP}:8080/after"))
            .0,
        "200"
    );
}

#[tokio::test]
async fn capture_remove_cleans_up_and_missing_cap_net_admin_is_named() {
    if skip() {
        return;
    }
    let mesh = Mesh::new();
    let mut pair = Pair::new();
    let yaml = format!(
        "apiVersion: meshproxy/v1\n{}listeners:\n  inbound: 0.0.0.0:15006\n",
        mesh.identity_yaml("pod")
    );
    let config = write_file(mesh.path(), "pod.yaml", &yaml);
    let proxy = pair.start_proxy(config.to_str().unwrap()).await;
    // No outboundCapture listener: inbound rules only.
    let table = pair.table().unwrap();
    assert!(table.contains("chain prerouting"), "{table}");
    assert!(!table.contains("chain output"), "{table}");
    pair.signal(proxy, "-KILL");
    pair.wait_exit(proxy).await;
    assert!(
        pair.table().is_some(),
        "a killed proxy must leave its table"
    );

    if Command::new("sh")
        .args(["-c", "command -v setpriv"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let out = pair
            .exec(
                &pair.pod,
                &[
                    "setpriv",
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    BIN,
                    "--capture-remove",
                ],
            )
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("CAP_NET_ADMIN"), "{err}");
        assert!(
            pair.table().is_some(),
            "an unprivileged remove changed the table"
        );
    } else {
        meshtest::skip_unless("setpriv", false, "the CAP_NET_ADMIN check needs setpriv");
    }

    for _ in 0..2 {
        // Twice: removing an absent table is not an error.
        run(&mut pair.exec(&pair.pod, &[BIN, "--capture-remove"]));
        assert_eq!(pair.table(), None);
    }
}

/// A server outside the pod (in the client netns): HTTP on 0.0.0.0:9090 answering
/// `outside PATH`; a raw TCP connection that sends anything else gets Python's error page.
const OUTSIDE: &str = r#"
import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = f"outside {self.path}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 9090), H).serve_forever()
"#;

/// Opens TCP to argv[1]:argv[2], sends bytes that are not HTTP, prints what comes back
/// (`closed` when the peer closes or resets without a byte).
const RAW_TCP: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
try:
    s.sendall(b"\x00\x01 not http\r\n\r\n")
    data = s.recv(100)
except ConnectionResetError:
    data = b""
print("closed" if not data else "data " + data.decode("latin-1").split("\r\n")[0])
"#;

/// The pod's config: app port 8080 (HTTP, STRICT, published), an AuthorizationPolicy that
/// denies `/admin` to callers without a principal (compiled by the real compiler), the
/// `pod` service on the VIP 127.240.0.7:8080 (the app calling a mesh service on the same
/// port number as the published one), and the given outbound mode.
fn edge_config(mesh: &Mesh, mode: &str) -> String {
    let policy: meshmodel::istio::AuthorizationPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": { "name": "admin-needs-identity", "namespace": "default" },
        "spec": {
            "selector": { "matchLabels": { "app": "pod" } },
            "action": "DENY",
            "rules": [{
                "from": [{ "source": { "notPrincipals": ["*"] } }],
                "to": [{ "operation": { "paths": ["/admin"] } }],
            }],
        }
    }))
    .unwrap();
    let workload = meshmodel::model::Workload {
        compose_name: "pod".into(),
        service: "pod".into(),
        namespace: "default".into(),
        service_account: "pod".into(),
        labels: [("app".to_string(), "pod".to_string())].into(),
        replicas: 1,
        ports: vec![8080],
    };
    let authz = meshmodel::compile::authz::compile_for_workload(
        &[&policy],
        &workload,
        &meshapi::authz::MeshSecurity::default(),
    )
    .unwrap();
    let yaml = format!(
        "apiVersion: meshproxy/v1\n{}listeners:\n  inbound: 0.0.0.0:15006\n  outboundCapture: 127.0.0.1:15001\n  edge: 0.0.0.0:15007\n  bindVips: false\n\
         inbound:\n  - {{ port: 8080, protocol: http, mode: STRICT }}\n\
         outbound:\n  - {{ service: pod, vip: \"127.240.0.7:8080\", protocol: http }}\n\
         services:\n  pod:\n    endpoints:\n      - {{ address: \"127.0.0.1:15006\", identity: \"{}\" }}\n\
         outboundTrafficPolicy: {{ mode: {mode} }}\n\
         drainDeadline: 1s\n",
        mesh.identity_yaml("pod"),
        spiffe("pod"),
    );
    let mut cfg = parse(&yaml);
    cfg.authorization = Some(authz);
    assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
    meshapi::yaml::to_string(&cfg).unwrap()
}

/// (f) A published port: from inside the project network it stays mTLS-only (STRICT refuses
/// plaintext); from an edge source it reaches the app in plaintext through the edge listener,
/// with the AuthorizationPolicy applied (no principal: `/admin` is 403). The app's own call
/// to a mesh service on that same port number is captured (the VIP answers). (g) Egress:
/// REGISTRY_ONLY answers HTTP to an outside address `502 NR` naming it and closes other TCP;
/// ALLOW_ANY (after a live config change) passes both through.
#[tokio::test]
async fn published_ports_enter_through_the_edge_and_egress_follows_the_outbound_policy() {
    if skip() {
        return;
    }
    let mesh = Mesh::new();
    let mut pair = Pair::new();
    let log = mesh.path().join("app.log");
    std::fs::write(&log, "").unwrap();
    let app = write_file(mesh.path(), "app.py", APP);
    pair.spawn_in_pod(&["python3", app.to_str().unwrap(), log.to_str().unwrap()]);
    let outside = write_file(mesh.path(), "outside.py", OUTSIDE);
    let client = pair.client.clone();
    pair.spawn_in(&client, &["python3", outside.to_str().unwrap()]);
    let raw = write_file(mesh.path(), "raw.py", RAW_TCP);
    let app_log = || std::fs::read_to_string(&log).unwrap();
    assert_eventually!(
        pair.curl(&pair.client, "http://127.0.0.1:9090/up").0 == "200",
        timeout = Duration::from_secs(10),
        "the outside server never answered"
    );
    let config = write_file(
        mesh.path(),
        "pod.yaml",
        &edge_config(&mesh, "REGISTRY_ONLY"),
    );
    let config = config.to_str().unwrap();
    let network = "--capture-mesh-network=169.254.213.0/30";

    // The client is inside the project network and not an edge source: a mesh peer.
    let proxy = pair
        .start_proxy_with(config, &["--capture-edge-ports=8080", network])
        .await;
    let (code, _) = pair.curl(&pair.client, &format!("http://{POD_IP}:8080/inside-probe"));
    assert_eq!(
        code, "000",
        "plaintext from the project network got an answer"
    );
    assert!(!app_log().contains("/inside-probe"), "{}", app_log());

    // (g) REGISTRY_ONLY: HTTP to an outside address is answered by the proxy, flagged.
    let outside_url = format!("http://{CLIENT_IP}:9090/blocked");
    let (code, text) = pair.curl_args(&pair.pod, &["-D", "-", &outside_url]);
    assert_eq!(code, "502", "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("x-meshctl-response-flags: nr"),
        "{text}"
    );
    assert!(text.contains(&format!("{CLIENT_IP}:9090")), "{text}");
    let tcp = |pair: &Pair| {
        let out = pair
            .exec(
                &pair.pod,
                &["python3", raw.to_str().unwrap(), CLIENT_IP, "9090"],
            )
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(tcp(&pair), "closed");
    let stats = pair
        .curl(&pair.pod, "http://127.0.0.1:15090/stats/prometheus")
        .1;
    assert!(
        stat(&stats, "meshproxy_outbound_registry_blocked_total") >= 2,
        "{stats}"
    );
    // The app's own call on port 8080 (the published port's number) to a mesh VIP is captured.
    let (code, body) = pair.curl(&pair.pod, "http://127.240.0.7:8080/via-vip");
    assert_eq!((code.as_str(), body.as_str()), ("200", "app 8080 /via-vip"));

    pair.signal(proxy, "-TERM");
    assert!(pair.wait_exit(proxy).await.success());

    // (f) The client is now the network's gateway (how the host and Docker's port proxy
    // arrive): the published port is the edge.
    let edge_source = format!("--capture-edge-sources={CLIENT_IP}");
    pair.start_proxy_with(
        config,
        &["--capture-edge-ports=8080", network, &edge_source],
    )
    .await;
    let (code, body) = pair.curl(&pair.client, &format!("http://{POD_IP}:8080/hello"));
    assert_eq!((code.as_str(), body.as_str()), ("200", "app 8080 /hello"));
    let (code, body) = pair.curl(&pair.client, &format!("http://{POD_IP}:8080/admin"));
    assert_eq!(
        (code.as_str(), body.as_str()),
        ("403", "RBAC: access denied")
    );
    assert!(!app_log().contains("/admin"), "{}", app_log());
    // The edge listener cannot be reached directly, around the published port.
    let (code, _) = pair.curl(&pair.client, &format!("http://{POD_IP}:15007/direct-edge"));
    assert_eq!(code, "000");
    let stats = pair
        .curl(&pair.pod, "http://127.0.0.1:15090/stats/prometheus")
        .1;
    assert!(
        stat(&stats, "meshproxy_edge_connections_total") >= 2,
        "{stats}"
    );
    // Every request the app saw came from the proxy.
    assert!(!app_log().contains(CLIENT_IP), "{}", app_log());

    // (g) ALLOW_ANY, applied live: outside HTTP and TCP pass through the proxy.
    std::fs::write(config, edge_config(&mesh, "ALLOW_ANY")).unwrap();
    assert_eventually!(
        pair.curl(&pair.pod, &format!("http://{CLIENT_IP}:9090/passed"))
            .1
            == "outside /passed",
        timeout = Duration::from_secs(10),
        "ALLOW_ANY never passed the request through"
    );
    // The outside server's own answer (an error page for bytes that are not HTTP) came back.
    let answer = tcp(&pair);
    assert!(
        answer.starts_with("data ") && answer.contains("Error"),
        "{answer}"
    );
    let stats = pair
        .curl(&pair.pod, "http://127.0.0.1:15090/stats/prometheus")
        .1;
    assert!(
        stat(&stats, "meshproxy_outbound_passthrough_total") >= 2,
        "{stats}"
    );
}

const CLIENT_IP6: &str = "fd00:213::1";
const POD_IP6: &str = "fd00:213::2";

/// `curl`'s exit code from a netns: 0 answered, 7 connection refused, 28 timed out.
fn curl_exit(pair: &Pair, ns: &str, url: &str) -> i32 {
    let out = pair
        .exec(ns, &["curl", "-s", "-o", "/dev/null", "-m", "3", url])
        .output()
        .unwrap();
    out.status.code().unwrap_or(-1)
}

/// (h) IPv6 is never a way around the proxy: with capture installed, TCP over IPv6 from the
/// app to the network and from the network to the app's ports is refused at once (a reset,
/// not a hang), the proxy's health port and loopback keep working, and the `ip6` table
/// reads back as the spec says; SIGTERM removes it with the `ip` one.
#[tokio::test]
async fn ipv6_cannot_bypass_capture_in_either_direction() {
    if skip() {
        return;
    }
    let mesh = Mesh::new();
    let mut pair = Pair::new();
    let (client, pod) = (pair.client.clone(), pair.pod.clone());
    for (ns, dev, ip) in [(&client, "veth0", CLIENT_IP6), (&pod, "veth1", POD_IP6)] {
        run(&mut pair.exec(ns, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0"]));
        run(&mut pair.exec(
            ns,
            &[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{ip}/64"),
                "dev",
                dev,
                "nodad",
            ],
        ));
    }
    // An app port in the pod and an outside server, both on IPv6 only.
    pair.spawn_in(
        &pod,
        &["python3", "-m", "http.server", "--bind", "::", "8082"],
    );
    pair.spawn_in(
        &client,
        &["python3", "-m", "http.server", "--bind", "::", "9091"],
    );
    let inbound6 = format!("http://[{POD_IP6}]:8082/");
    let outbound6 = format!("http://[{CLIENT_IP6}]:9091/");
    // Without capture both directions work: what the guard must prevent.
    assert_eventually!(
        curl_exit(&pair, &client, &inbound6) == 0 && curl_exit(&pair, &pod, &outbound6) == 0,
        timeout = Duration::from_secs(10),
        "the IPv6 servers never answered before capture"
    );

    let config = write_file(mesh.path(), "pod.yaml", &edge_config(&mesh, "ALLOW_ANY"));
    let config = config.to_str().unwrap();
    let spec = CaptureSpec::from_config(&parse(&std::fs::read_to_string(config).unwrap()));
    let proxy = pair.start_proxy(config).await;
    let out = pair
        .exec(&pod, &["nft", "list", "table", "ip6", "meshctl"])
        .output()
        .unwrap();
    let table6 = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!spec.ip6_rules().is_empty());
    for rule in spec.ip6_rules() {
        assert!(
            table6.contains(&format!("\t\t{rule}\n")),
            "rule `{rule}` missing from:\n{table6}"
        );
    }
    // (url, from, what) -> refused (curl 7), never answered and never a timeout.
    for (url, ns, what) in [
        (&inbound6, &client, "the network to the app over IPv6"),
        (&outbound6, &pod, "the app to the network over IPv6"),
    ] {
        assert_eq!(curl_exit(&pair, ns, url), 7, "{what}: not refused");
    }
    // IPv4 and the pod's own loopback are untouched: health answers in the pod and from the
    // network.
    assert!(pair.ready());
    assert_eq!(
        curl_exit(
            &pair,
            &client,
            &format!("http://{POD_IP}:15021/healthz/ready")
        ),
        0
    );

    pair.signal(proxy, "-TERM");
    assert!(pair.wait_exit(proxy).await.success());
    let out = pair
        .exec(&pod, &["nft", "list", "table", "ip6", "meshctl"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the ip6 table outlived the proxy");
    assert_eq!(curl_exit(&pair, &pod, &outbound6), 0);
}

/// The pod's proxy in container mode, as the control plane places it.
struct PodPlacement;

impl meshmodel::compile::Placement for PodPlacement {
    fn inbound(&self, _: &str, _: u32) -> Option<std::net::SocketAddr> {
        Some("0.0.0.0:15006".parse().unwrap())
    }
    fn outbound_capture(&self, _: &str, _: u32) -> Option<std::net::SocketAddr> {
        Some("127.0.0.1:15001".parse().unwrap())
    }
}

/// The `default` Sidecar importing only its own namespace under REGISTRY_ONLY, and two
/// ServiceEntries for the outside server (namespaces `default` and `ext`), each with a
/// VirtualService.
fn narrowed() -> String {
    let entry = |name: &str, ns: &str| {
        format!(
            "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: {name}, namespace: {ns} }}
spec:
  hosts: [{name}.outside.test]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [ {{ number: 9090, name: http, protocol: HTTP }} ]
  endpoints: [ {{ address: {CLIENT_IP} }} ]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: {name}, namespace: {ns} }}
spec:
  hosts: [{name}.outside.test]
  http: [ {{ route: [ {{ destination: {{ host: {name}.outside.test }} }} ], timeout: 5s }} ]
"
        )
    };
    format!(
        "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{ name: default, namespace: default }}
spec:
  egress: [ {{ hosts: [\"./*\"] }} ]
  outboundTrafficPolicy: {{ mode: REGISTRY_ONLY }}
{}{}",
        entry("near", "default"),
        entry("far", "ext")
    )
}

/// (i) A Sidecar that narrows `egress` narrows what the proxy serves: the config compiled by
/// meshmodel for the pod has the imported ServiceEntry (outbound entry, service, route table
/// host with its VirtualService) and nothing of the other namespace's, so through the real
/// proxy a call to the imported host reaches the outside server and one to the other host's
/// VIP is an unknown destination: `502 NR` under REGISTRY_ONLY.
#[tokio::test]
async fn a_narrowing_sidecar_leaves_other_hosts_to_the_outbound_policy() {
    if skip() {
        return;
    }
    use meshmodel::compile::{CompileInput, ProxyKey, compile_proxy, vip_services};
    let mesh = Mesh::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("compose.yaml"),
        "name: narrow\nservices:\n  pod:\n    image: p\n    labels: { app: pod }\n    x-mesh: { serviceAccount: pod, ports: [ { port: 8080, protocol: http } ] }\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), narrowed()).unwrap();
    let loaded = meshmodel::load::load(&meshmodel::load::LoadOptions::new(dir.path()));
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    let inv = meshmodel::model::Inventory::from_compose(loaded.mesh.compose.as_ref());
    let mut vips = meshapi::dns::VipAllocator::new(meshapi::dns::VipRange::default());
    let wanted = vip_services(&loaded.mesh, &inv);
    vips.sync(wanted.iter().map(|(ns, n)| (ns.as_str(), n.as_str())))
        .unwrap();
    let input = CompileInput::new(&loaded.mesh, &inv, &vips, &PodPlacement, 1);
    let key = ProxyKey {
        workload: "pod".into(),
        instance: 0,
    };
    let mut cfg = compile_proxy(&input, &key).unwrap();
    // The far entry's VIP, allocated mesh-wide, is not in this proxy's config.
    let far_vip = vips
        .get("ext", "far.outside.test")
        .expect("a VIP for the far entry");
    let near = cfg
        .outbound
        .iter()
        .find(|o| o.service.starts_with("near.outside.test"))
        .expect("the near entry is imported")
        .vip;
    assert!(
        cfg.outbound.iter().all(|o| o.vip.ip() != far_vip),
        "{:?}",
        cfg.outbound
    );
    let routes: Vec<(&str, Option<&str>)> = cfg
        .traffic
        .as_ref()
        .unwrap()
        .services
        .iter()
        .map(|s| (s.host.as_str(), s.virtual_service.as_deref()))
        .collect();
    assert!(
        routes.contains(&("near.outside.test", Some("default/near"))),
        "{routes:?}"
    );
    assert!(
        routes.iter().all(|(h, _)| *h != "far.outside.test"),
        "{routes:?}"
    );
    // The test's identity files.
    let (cert, key_file) = mesh.ca.issue(&spiffe("pod")).write(mesh.path(), "pod");
    cfg.identity.cert_file = Some(cert);
    cfg.identity.key_file = Some(key_file);
    cfg.identity.roots_file = Some(mesh.path().join("roots.pem"));
    assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
    let config = write_file(
        mesh.path(),
        "pod.yaml",
        &meshapi::yaml::to_string(&cfg).unwrap(),
    );

    let mut pair = Pair::new();
    let outside = write_file(mesh.path(), "outside.py", OUTSIDE);
    let client = pair.client.clone();
    pair.spawn_in(&client, &["python3", outside.to_str().unwrap()]);
    assert_eventually!(
        pair.curl(&pair.client, "http://127.0.0.1:9090/up").0 == "200",
        timeout = Duration::from_secs(10),
        "the outside server never answered"
    );
    pair.start_proxy(config.to_str().unwrap()).await;
    // (url, status, body or flag the caller must see)
    // (url, Host, status, body or flag the caller must see); the app names the host, as an
    // app resolving it through meshdns would.
    let cases = [
        (
            format!("http://{near}/hello"),
            "near.outside.test:9090",
            "200",
            "outside /hello",
        ),
        (
            format!("http://{far_vip}:9090/hello"),
            "far.outside.test:9090",
            "502",
            "x-meshctl-response-flags: nr",
        ),
    ];
    for (url, host, status, want) in &cases {
        let host = format!("host: {host}");
        let (code, text) = pair.curl_args(&pair.pod, &["-D", "-", "-H", &host, url]);
        assert_eq!(code, *status, "{url}: {text}");
        assert!(text.to_ascii_lowercase().contains(want), "{url}: {text}");
    }
}
