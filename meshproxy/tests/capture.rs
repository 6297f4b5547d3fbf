//! The outbound capture listener (15001) in a network namespace the test creates: an nftables
//! rule redirects the VIP range to 15001, meshproxy reads the original destination with
//! SO_ORIGINAL_DST and carries the request over mTLS to the backend proxy.
//!
//! Needs root, `ip`, `nft`, `curl` and `python3` (the app); skipped (with a note) otherwise.
//! The rule is installed by the test here; meshproxy programming it over netlink itself is
//! not built yet.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Netns {
    name: String,
    children: Vec<Child>,
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

impl Netns {
    fn exec(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    fn spawn(&mut self, args: &[&str]) {
        let child = self
            .exec(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.children.push(child);
    }
}

fn available() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    root && ["ip", "nft", "curl", "python3"].iter().all(|b| {
        Command::new("sh")
            .args(["-c", &format!("command -v {b}")])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn captured_connection_reaches_backend_through_original_dst() {
    if !available() {
        eprintln!("skipped: needs root, ip, nft, curl, python3");
        return;
    }
    let mesh = Mesh::new();
    let name = format!("mptest{}", std::process::id());
    assert!(
        Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success()
    );
    let mut ns = Netns {
        name,
        children: Vec::new(),
    };
    assert!(
        ns.exec(&["ip", "link", "set", "lo", "up"])
            .status()
            .unwrap()
            .success()
    );
    let rules = "table ip meshtest {\n chain output {\n  type nat hook output priority -100;\n  \
                 ip daddr 127.240.0.0/16 meta l4proto tcp redirect to :15001\n }\n}\n";
    let rules_path = write_file(mesh.path(), "rules.nft", rules);
    assert!(
        ns.exec(&["nft", "-f", rules_path.to_str().unwrap()])
            .status()
            .unwrap()
            .success()
    );

    let admin = |a: u16| {
        format!(
            "admin:\n  admin: 127.0.0.1:{a}\n  health: 127.0.0.1:{}\n  stats: 127.0.0.1:{}\n",
            a + 1,
            a + 2
        )
    };
    let b = format!(
        "apiVersion: meshproxy/v1\n{}listeners:\n  inbound: 127.0.0.1:15106\ninbound:\n  - {{ port: 8080, protocol: http, mode: STRICT }}\n{}",
        mesh.identity_yaml("backend"),
        admin(15100)
    );
    let a = format!(
        "apiVersion: meshproxy/v1\n{}listeners:\n  inbound: 127.0.0.1:15006\n  outboundCapture: 127.0.0.1:15001\n  bindVips: false\n\
         outbound:\n  - {{ service: backend, vip: \"127.240.0.2:80\", protocol: http, targetPort: 8080 }}\n\
         services:\n  backend:\n    endpoints:\n      - {{ address: \"127.0.0.1:15106\", identity: \"{}\" }}\n{}",
        mesh.identity_yaml("frontend"),
        spiffe("backend"),
        admin(15200)
    );
    let (bp, ap) = (
        write_file(mesh.path(), "b.yaml", &b),
        write_file(mesh.path(), "a.yaml", &a),
    );
    let bin = env!("CARGO_BIN_EXE_meshproxy");
    ns.spawn(&[
        "python3",
        "-m",
        "http.server",
        "8080",
        "--bind",
        "127.0.0.1",
    ]);
    ns.spawn(&[bin, "--config", bp.to_str().unwrap()]);
    ns.spawn(&[bin, "--config", ap.to_str().unwrap()]);

    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        let out = ns
            .exec(&[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "2",
                "http://127.240.0.2/",
            ])
            .output()
            .unwrap();
        let code = String::from_utf8_lossy(&out.stdout).into_owned();
        if code == "200" || Instant::now() > deadline {
            break code;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(code, "200", "captured request did not get through");
    let stats = ns
        .exec(&["curl", "-s", "http://127.0.0.1:15202/stats/prometheus"])
        .output()
        .unwrap();
    let stats = String::from_utf8_lossy(&stats.stdout);
    assert!(
        stats.contains("meshproxy_requests_total{direction=\"outbound\"}"),
        "{stats}"
    );
    let b_stats = ns
        .exec(&["curl", "-s", "http://127.0.0.1:15102/stats/prometheus"])
        .output()
        .unwrap();
    let b_stats = String::from_utf8_lossy(&b_stats.stdout).into_owned();
    let inbound: u64 = b_stats
        .lines()
        .find_map(|l| l.strip_prefix("meshproxy_requests_total{direction=\"inbound\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(inbound >= 1, "backend proxy saw no request: {b_stats}");
}
