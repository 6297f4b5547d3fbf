//! Machines in one mesh, for real: network namespaces with their own addresses, reachable
//! only over a bridge (no shared loopback). The control plane (`meshctl serve`) and the
//! frontend run in the first; every machine runs `meshctl join` with a token from `meshctl
//! token create`, which runs the proxies of the services placed on it (`x-mesh.node`); the
//! demo apps run beside them as the machine's existing host services (backend v1 and v2 on
//! machines of their own: in host mode an app's port on `0.0.0.0` would collide with the
//! VIP listener of the same port). The test process (the root namespace) reaches the
//! frontend over a link of its own to the first machine.
//!
//! - a token works once, expires, and a token naming another CA's fingerprint is refused
//!   before the secret is sent (the same secret then still works);
//! - a VirtualService splits 50/50 between backend v1 and v2 (the joined node `n2`) within
//!   ±5 points over 1,000 requests; editing it to 100/0 is ACKed by every proxy on every
//!   node within 2 s, and only v1 answers;
//! - killing the joined node (its `meshctl join` and proxy): the frontend keeps answering
//!   200 from v1 and the endpoint is ejected; `meshctl join` without a token (the node
//!   restarted) rejoins with its node credential and v2 answers again;
//! - `meshctl node rm`: the node's proxy is refused by its peers (403 on a connection it
//!   opened before the removal; new handshakes with its certificates fail).
//!
//! Needs root (`ip netns`) and the static runtime binaries (`MESHCTL_RUNTIME_DIR`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod docker_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use docker_support::{MESHCTL, get_from};

/// Machines: 1 runs the control plane and the frontend, 2 backend v2, 3 backend v1.
const HOSTS: u32 = 3;

const COMPOSE: &str = r#"name: h13b
services:
  frontend:
    image: meshctl-demo/frontend:latest
    labels: {app: frontend, version: v1}
    x-mesh:
      node: n1
      serviceAccount: frontend-sa
      ports: [{port: 3000, protocol: http}]
  backend-v1:
    image: meshctl-demo/backend:latest
    labels: {app: backend, version: v1}
    x-mesh:
      node: n3
      service: backend
      ports: [{port: 8080, protocol: http}]
  backend-v2:
    image: meshctl-demo/backend:latest
    labels: {app: backend, version: v2}
    x-mesh:
      node: n2
      service: backend
      ports: [{port: 8080, protocol: http}]
"#;

const DESTINATION_RULE: &str = r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend}
spec:
  host: backend
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 30s
      maxEjectionPercent: 100
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;

fn virtual_service(v1: u32, v2: u32) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: backend}}
spec:
  hosts: [backend]
  http:
  - route:
    - destination: {{host: backend, subset: v1}}
      weight: {v1}
    - destination: {{host: backend, subset: v2}}
      weight: {v2}
"#
    )
}

/// Runs `ip args`, panicking with its stderr on failure.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces (two machines), and the processes started in them; all removed on drop.
struct Lab {
    tag: String,
    subnet: u32,
    children: Vec<(String, Child)>,
}

impl Lab {
    /// Hosts 1 to 3 are joined by a bridge (10.213.N.0/24: the "network" between the
    /// machines) that lives in a namespace of its own (its traffic never crosses this host's
    /// FORWARD chain, which Docker sets to DROP); the test's own namespace reaches host 1 over
    /// a veth pair (10.214.N.0/24) and a route to host 1's address.
    fn new() -> Lab {
        let n = std::process::id() % 200 + 20;
        let lab = Lab {
            tag: format!("h13b{n}"),
            subnet: n,
            children: Vec::new(),
        };
        let sw = lab.ns(0);
        ip(&["netns", "add", &sw]);
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        for host in 1..=HOSTS {
            let ns = lab.ns(host);
            let (inner, outer) = (format!("{}h{host}", lab.tag), format!("{}s{host}", lab.tag));
            ip(&["netns", "add", &ns]);
            ip(&[
                "link", "add", &inner, "netns", &ns, "type", "veth", "peer", "name", &outer,
                "netns", &sw,
            ]);
            ip(&["-n", &sw, "link", "set", &outer, "master", "br0"]);
            ip(&["-n", &sw, "link", "set", &outer, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", lab.addr(host)),
                "dev",
                &inner,
            ]);
            ip(&["-n", &ns, "link", "set", &inner, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        let (ra, ar) = (lab.outer_link(), format!("{}ar", lab.tag));
        let a = lab.ns(1);
        ip(&[
            "link", "add", &ra, "type", "veth", "peer", "name", &ar, "netns", &a,
        ]);
        ip(&["addr", "add", &format!("10.214.{n}.254/24"), "dev", &ra]);
        ip(&[
            "-n",
            &a,
            "addr",
            "add",
            &format!("10.214.{n}.1/24"),
            "dev",
            &ar,
        ]);
        ip(&["-n", &a, "link", "set", &ar, "up"]);
        ip(&["link", "set", &ra, "up"]);
        ip(&[
            "route",
            "add",
            &format!("10.213.{n}.0/24"),
            "via",
            &format!("10.214.{n}.1"),
        ]);
        lab
    }

    /// The test namespace's end of its link to host 1.
    fn outer_link(&self) -> String {
        format!("{}ra", self.tag)
    }

    /// Namespace of host 1 to 3 (0: the bridge's).
    fn ns(&self, host: u32) -> String {
        format!("{}-n{host}", self.tag)
    }

    fn addr(&self, host: u32) -> String {
        format!("10.213.{}.{host}", self.subnet)
    }

    /// `program args` inside host `host`'s namespace, output appended to `log`.
    fn command(&self, host: u32, program: &Path, args: &[&str], log: &Path) -> Command {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(host)])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        cmd
    }

    /// Starts a long-running process (killed on drop); returns its pid.
    fn spawn(&mut self, name: &str, mut cmd: Command) -> u32 {
        let child = cmd.spawn().unwrap();
        let pid = child.id();
        self.children.push((name.to_string(), child));
        pid
    }

    /// Runs `cmd` to completion in host `host`'s namespace.
    fn run(&self, host: u32, program: &Path, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(host)])
            .arg(program)
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, c) in self.children.iter_mut().rev() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(8);
        for (_, c) in self.children.iter_mut().rev() {
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // Deleting a veth end deletes its peer (and the route through it).
        let _ = Command::new("ip")
            .args(["link", "del", &self.outer_link()])
            .status();
        for host in 0..=HOSTS {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(host)])
                .status();
        }
    }
}

fn meshctl(dir: &Path, args: &[&str]) -> Output {
    Command::new(MESHCTL)
        .arg("--project-directory")
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn token(dir: &Path, node: &str, ttl: &str) -> String {
    let out = meshctl(dir, &["token", "create", "--node", node, "--ttl", ttl]);
    assert!(out.status.success(), "token create: {}", stderr(&out));
    stdout(&out).trim().to_string()
}

fn runtime_dir() -> Option<PathBuf> {
    std::env::var_os("MESHCTL_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| {
            ["meshproxy", "frontend", "backend"]
                .iter()
                .all(|b| d.join(b).is_file())
        })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The last lines of each file, for a failure message.
fn tails(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(15);
            format!("--- {}\n{}", p.display(), lines[from..].join("\n"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads a log until `pattern` appears in it (bounded); returns the log.
async fn wait_log(path: &Path, pattern: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(pattern) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never said {pattern:?}:\n{text}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `(versions, failures)` of `n` GETs of the frontend.
async fn sample(host: &str, n: usize) -> (std::collections::BTreeMap<String, usize>, Vec<String>) {
    let mut versions = std::collections::BTreeMap::new();
    let mut failures = Vec::new();
    for _ in 0..n {
        match get_from(host, 3000, "/").await {
            Ok((200, Some(v), _)) => *versions.entry(v).or_insert(0) += 1,
            other => failures.push(format!("{other:?}")),
        }
    }
    (versions, failures)
}

/// Whether every proxy ACKed the version the control plane holds for it.
fn all_acked(dir: &Path) -> bool {
    let out = meshctl(dir, &["status", "--json"]);
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return false;
    };
    let proxies = v["proxies"].as_array().cloned().unwrap_or_default();
    proxies.len() == 3
        && proxies
            .iter()
            .all(|p| p["acked"].as_u64().is_some() && p["acked"] == p["version"])
}

/// The frontend proxy's view of the backend cluster (`/config_dump` on its admin port).
fn backend_endpoints(lab: &Lab, admin_port: u16) -> Vec<serde_json::Value> {
    let out = lab.run(
        1,
        Path::new("curl"),
        &["-s", &format!("http://127.0.0.1:{admin_port}/config_dump")],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["name"].as_str().is_some_and(|n| n.contains("backend")))
        .flat_map(|c| c["endpoints"].as_array().cloned().unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_join_split_fail_over_and_are_removed() {
    if meshtest::skip_unless(
        "root",
        is_root(),
        "network namespaces need root; the two-node test did not run",
    ) {
        return;
    }
    let Some(bin) = runtime_dir() else {
        assert!(
            !meshtest::skip_unless(
                "runtime",
                false,
                "MESHCTL_RUNTIME_DIR with meshproxy, frontend and backend is not set"
            ),
            "unreachable"
        );
        return;
    };
    let mut lab = Lab::new();
    let project = tempfile::tempdir().unwrap();
    let p = project.path();
    std::fs::write(p.join("compose.yaml"), COMPOSE).unwrap();
    std::fs::create_dir(p.join("mesh")).unwrap();
    std::fs::write(p.join("mesh/destination-rule.yaml"), DESTINATION_RULE).unwrap();
    std::fs::write(p.join("mesh/virtual-service.yaml"), virtual_service(50, 50)).unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = |n: &str| logs.path().join(format!("{n}.log"));

    // The control plane on host 1, listening on its address on the link to host 2.
    let cp = format!("{}:15012", lab.addr(1));
    let serve = lab.command(
        1,
        Path::new(MESHCTL),
        &[
            "--project-directory",
            p.to_str().unwrap(),
            "serve",
            "--listen",
            &cp,
        ],
        &log("serve"),
    );
    lab.spawn("serve", serve);
    wait_log(
        &log("serve"),
        "control plane listening",
        Duration::from_secs(30),
    )
    .await;

    // Tokens: another CA's fingerprint is refused before the secret is sent.
    let node1 = tempfile::tempdir().unwrap();
    let node2 = tempfile::tempdir().unwrap();
    let n2_token = token(p, "n2", "10m");
    let mut parts: Vec<&str> = n2_token.split('/').collect();
    let foreign = "ab".repeat(32);
    parts[3] = &foreign;
    let forged = parts.join("/");
    let refused = lab.run(
        2,
        Path::new(MESHCTL),
        &[
            "--project-directory",
            node2.path().to_str().unwrap(),
            "join",
            &forged,
        ],
    );
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("is not the one the token was made for")
            && stderr(&refused).contains("the token was not sent"),
        "{}",
        stderr(&refused)
    );
    // An expired token.
    let short = token(p, "n3", "1s");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let late = lab.run(
        2,
        Path::new(MESHCTL),
        &[
            "--project-directory",
            node2.path().to_str().unwrap(),
            "join",
            &short,
        ],
    );
    assert_eq!(late.status.code(), Some(1), "{}", stderr(&late));
    assert!(stderr(&late).contains("expired"), "{}", stderr(&late));

    // Node 1 joins (frontend and backend v1), then node 2 (backend v2) with the token whose
    // secret the forged one carried: it was never sent, so it still works.
    let proxy_bin = bin.join("meshproxy");
    let join = |lab: &Lab, host: u32, dir: &Path, token: &str, name: &str| {
        lab.command(
            host,
            Path::new(MESHCTL),
            &[
                "--project-directory",
                dir.to_str().unwrap(),
                "join",
                token,
                "--proxy-bin",
                proxy_bin.to_str().unwrap(),
            ],
            &log(name),
        )
    };
    let node3 = tempfile::tempdir().unwrap();
    for (host, node, dir, proxy) in [
        (1, "n1", node1.path(), "frontend-0"),
        (3, "n3", node3.path(), "backend-v1-0"),
    ] {
        let t = token(p, node, "10m");
        let name = format!("join-{node}");
        let cmd = join(&lab, host, dir, &t, &name);
        lab.spawn(&name, cmd);
        wait_log(
            &log(&name),
            &format!("{proxy} started"),
            Duration::from_secs(30),
        )
        .await;
    }
    let records: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.join(".mesh/dns-records.json")).unwrap()).unwrap();
    let vip_of = |name: &str| {
        records["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["vip"].as_str().unwrap().to_string())
            .unwrap()
    };
    let vip = vip_of("backend");
    let frontend_vip = vip_of("frontend");
    let frontend = bin.join("frontend");
    let backend = bin.join("backend");
    let mut app = lab.command(1, &frontend, &[], &log("frontend"));
    app.env("PORT", "3000")
        .env("BACKEND_URL", format!("http://{vip}:8080"));
    lab.spawn("frontend", app);
    let mut app = lab.command(3, &backend, &[], &log("backend-v1"));
    app.env("PORT", "8080").env("VERSION", "v1");
    lab.spawn("backend-v1", app);
    let mut app = lab.command(2, &backend, &[], &log("backend-v2"));
    app.env("PORT", "8080").env("VERSION", "v2");
    lab.spawn("backend-v2", app);

    let t_join = Instant::now();
    let cmd = join(&lab, 2, node2.path(), &n2_token, "join-n2");
    let join_pid = lab.spawn("join-n2", cmd);
    let front = lab.addr(1);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = get_from(&front, 3000, "/").await;
        if let Ok((200, Some(v), _)) = &last
            && v == "v2"
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "v2 on the joined node never answered (last: {last:?}; node 1 to node 2: {}):\n{}",
            stdout(&lab.run(
                1,
                Path::new("curl"),
                &[
                    "-s",
                    "-m",
                    "2",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    &format!("http://{}:8080/", lab.addr(2))
                ]
            )),
            tails(&[
                log("join-n2"),
                node2.path().join(".mesh/node/logs/backend-v2-0.log"),
                node1.path().join(".mesh/node/logs/frontend-0.log"),
                log("serve"),
            ])
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "BENCH join -> first request served by the joined node: {} ms",
        t_join.elapsed().as_millis()
    );
    // Single use: the same token again is refused.
    let again = lab.run(
        2,
        Path::new(MESHCTL),
        &[
            "--project-directory",
            logs.path().to_str().unwrap(),
            "join",
            &n2_token,
        ],
    );
    assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("already used"),
        "{}",
        stderr(&again)
    );

    // 50/50 across the two machines, within ±5 points over 1,000 requests.
    let (versions, failures) = sample(&front, 1000).await;
    assert!(failures.is_empty(), "failures: {failures:?}");
    let v2 = versions.get("v2").copied().unwrap_or(0);
    assert!(
        (450..=550).contains(&v2),
        "v2 got {v2} of 1000: {versions:?}"
    );

    // Edit live to 100/0: every proxy on both nodes ACKs within 2 s, then only v1 answers.
    let before = meshctl(p, &["status", "--json"]);
    let revision = serde_json::from_slice::<serde_json::Value>(&before.stdout).unwrap()["revision"]
        .as_u64()
        .unwrap();
    std::fs::write(p.join("mesh/virtual-service.yaml"), virtual_service(100, 0)).unwrap();
    let saved = Instant::now();
    loop {
        let out = meshctl(p, &["status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if v["revision"].as_u64().is_some_and(|r| r > revision) && all_acked(p) {
            break;
        }
        assert!(
            saved.elapsed() < Duration::from_secs(2),
            "the edit was not ACKed by every proxy within 2 s: {}",
            stdout(&out)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "edit -> ACKed on both nodes: {} ms",
        saved.elapsed().as_millis()
    );
    let (versions, failures) = sample(&front, 100).await;
    assert!(failures.is_empty(), "failures: {failures:?}");
    assert_eq!(versions.get("v1"), Some(&100), "{versions:?}");

    // One service across the nodes (no VirtualService: both endpoints); kill the joined
    // node's proxy: the frontend keeps answering 200 from v1, the endpoint is ejected.
    std::fs::remove_file(p.join("mesh/virtual-service.yaml")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (versions, _) = sample(&front, 20).await;
        if versions.contains_key("v2") {
            break;
        }
        assert!(Instant::now() < deadline, "v2 never answered again");
    }
    // Node 2 disappears: its `meshctl join` and its proxy are killed (SIGKILL, nothing
    // restarts the proxy).
    let join_log = std::fs::read_to_string(log("join-n2")).unwrap();
    let pid = join_log
        .lines()
        .find_map(|l| l.trim().strip_prefix("backend-v2-0 started (pid "))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap()
        .to_string();
    for pid in [join_pid.to_string(), pid] {
        let killed = Command::new("kill").args(["-KILL", &pid]).status().unwrap();
        assert!(killed.success());
    }
    let (versions, failures) = sample(&front, 200).await;
    assert!(
        failures.len() <= 1,
        "more than the in-flight request lost: {failures:?}"
    );
    assert_eq!(
        versions.get("v1").copied().unwrap_or(0) + failures.len(),
        200,
        "{versions:?}"
    );
    // proxy number 0 is backend-v1, 1 backend-v2, 2 frontend (compose-name order).
    let admin = 16_102;
    let endpoints = backend_endpoints(&lab, admin);
    let v2_addr = format!("{}:15101", lab.addr(2));
    assert!(
        endpoints
            .iter()
            .any(|e| e["address"] == v2_addr.as_str() && e["ejected"] == true),
        "the joined node's endpoint was not ejected: {endpoints:?}"
    );

    // Node 2 comes back: `meshctl join` without a token rejoins with its node credential,
    // and v2 answers again.
    let rejoin = lab.command(
        2,
        Path::new(MESHCTL),
        &[
            "--project-directory",
            node2.path().to_str().unwrap(),
            "join",
            "--proxy-bin",
            proxy_bin.to_str().unwrap(),
        ],
        &log("rejoin-n2"),
    );
    lab.spawn("rejoin-n2", rejoin);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (versions, _) = sample(&front, 20).await;
        if versions.contains_key("v2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "v2 never answered after the node rejoined:\n{}",
            tails(&[log("rejoin-n2")])
        );
    }

    // `node rm`: the joined node's certificates are refused by its peers. Its proxy first
    // reaches the frontend on node 1 over mTLS, through its own VIP listener, as any caller
    // on that node would.
    let via_node2 = |lab: &Lab| {
        let url = format!("http://{frontend_vip}:3000/");
        let out = lab.run(
            2,
            Path::new("curl"),
            &["-s", "-o", "/dev/null", "-w", "%{http_code}", &url],
        );
        stdout(&out)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while via_node2(&lab) != "200" {
        assert!(
            Instant::now() < deadline,
            "node 2's proxy never reached the frontend"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rm = meshctl(p, &["node", "rm", "n2"]);
    assert!(rm.status.success(), "{}", stderr(&rm));
    assert!(stdout(&rm).contains("node n2 removed"), "{}", stdout(&rm));
    // Its proxy's pooled connection to the frontend's proxy was opened before the removal:
    // each further request on it is denied by the frontend's proxy (403), as a new handshake
    // presenting a revoked serial is refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let code = via_node2(&lab);
        if code == "403" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the removed node's proxy still reaches its peers (last answer {code})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
