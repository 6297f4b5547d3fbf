//! The network of process pods, programmed with the `ip` tool (iproute2): namespaces, the
//! project bridge, macvlan or veth links, addresses, routes, and each namespace's
//! `/etc/netns/<ns>/resolv.conf` (bind-mounted over `/etc/resolv.conf` by `ip netns exec`).
//!
//! Two ways to attach a pod, checked on this kernel (bridge-nf-call-iptables=1, FORWARD
//! policy DROP as Docker leaves it):
//! - on meshctl's own bridge: the pod's `eth0` is a macvlan (bridge mode) of a port-less
//!   bridge, and the host's address (`.1`) is one more macvlan of it. Frames between macvlans
//!   are switched by the macvlan driver, so neither pod-to-pod nor pod-to-host traffic crosses
//!   the FORWARD chain (a veth on the bridge would, and be dropped);
//! - on the project's Docker network: a veth whose host end is a port of Docker's bridge, where
//!   Docker's own rules accept traffic within the bridge, like its containers'.

use std::net::Ipv4Addr;
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::ProcessError;
use meshapi::CLUSTER_DOMAIN;

/// How a pod's `eth0` is made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Link {
    /// A macvlan (bridge mode) of meshctl's bridge `parent`.
    Macvlan { parent: String },
    /// A veth whose host end joins the bridge `bridge` (Docker's).
    Veth { bridge: String },
}

/// One pod's network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodNet {
    /// Network namespace name (`/run/netns/<netns>`).
    pub netns: String,
    pub link: Link,
    /// Host-side interface name: the veth's host end, or the macvlan's name before it moves.
    pub host_if: String,
    /// The pod's address in the /24.
    pub ip: Ipv4Addr,
    /// The /24's `.1`: the host, where the control plane listens.
    pub gateway: Ipv4Addr,
    /// meshdns.
    pub dns: Ipv4Addr,
    /// The DNS search list (`<ns>.svc.cluster.local svc.cluster.local cluster.local`).
    pub search: Vec<String>,
}

/// The network process pods attach to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// Network address of the /24.
    pub subnet: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub dns: Ipv4Addr,
    /// Meshctl's bridge (macvlan parent) or Docker's (veth).
    pub attach: Attach,
    /// First host number given to process pods.
    pub first_host: u8,
}

/// Which bridge pods attach to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attach {
    /// Meshctl's own bridge.
    Own(String),
    /// The project's Docker network's bridge.
    Docker(String),
}

impl Network {
    /// `.n` of the subnet.
    pub fn host(&self, n: u8) -> Ipv4Addr {
        let [a, b, c, _] = self.subnet.octets();
        Ipv4Addr::new(a, b, c, n)
    }

    /// True when `ip` is in this /24.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        ip.octets()[..3] == self.subnet.octets()[..3]
    }

    /// The network of one pod.
    pub fn pod(&self, pod: &str, namespace: &str, ip: Ipv4Addr) -> PodNet {
        let h = short_hash(pod);
        let link = match &self.attach {
            Attach::Own(b) => Link::Macvlan { parent: b.clone() },
            Attach::Docker(b) => Link::Veth { bridge: b.clone() },
        };
        PodNet {
            netns: format!("mesh-{pod}"),
            link,
            host_if: format!("mv{}{h}", prefix(pod, 5)),
            ip,
            gateway: self.gateway,
            dns: self.dns,
            search: vec![
                format!("{namespace}.svc.{CLUSTER_DOMAIN}"),
                format!("svc.{CLUSTER_DOMAIN}"),
                CLUSTER_DOMAIN.into(),
            ],
        }
    }
}

/// Six hex digits of a stable hash of `s` (FNV-1a), for interface names (15 bytes at most).
fn short_hash(s: &str) -> String {
    let mut h: u32 = 0x811c9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x01000193);
    }
    format!("{:06x}", h & 0xff_ffff)
}

/// The first `n` characters of `s` usable in an interface name.
fn prefix(s: &str, n: usize) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(n)
        .collect()
}

/// The bridge meshctl creates for a processes-only project: `m<project prefix><hash>`.
pub fn bridge_name(project: &str) -> String {
    format!("m{}{}", prefix(project, 6), short_hash(project))
}

/// The host's macvlan of the bridge, holding the gateway address.
fn gateway_if(bridge: &str) -> String {
    format!("{bridge}g")
}

/// Runs `ip ARGS`; a failure carries its stderr.
fn ip(args: &[&str]) -> Result<(), ProcessError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| ProcessError::Command {
            command: format!("ip {}", args.join(" ")),
            message: format!("{e} (is iproute2 installed?)"),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ProcessError::Command {
            command: format!("ip {}", args.join(" ")),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Runs `ip ARGS` inside the namespace `ns`.
fn ip_in(ns: &str, args: &[&str]) -> Result<(), ProcessError> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ip(&all)
}

/// True when the interface exists on the host.
pub fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// True when the namespace exists.
pub fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

/// Makes meshctl's bridge and the host's gateway address on it (idempotent).
pub fn ensure_bridge(bridge: &str, gateway: Ipv4Addr) -> Result<(), ProcessError> {
    if !link_exists(bridge) {
        ip(&["link", "add", bridge, "type", "bridge"])?;
    }
    ip(&["link", "set", bridge, "up"])?;
    let gw = gateway_if(bridge);
    if !link_exists(&gw) {
        ip(&[
            "link", "add", "link", bridge, "name", &gw, "type", "macvlan", "mode", "bridge",
        ])?;
        ip(&["addr", "add", &format!("{gateway}/24"), "dev", &gw])?;
    }
    ip(&["link", "set", &gw, "up"])
}

/// Removes meshctl's bridge (its macvlans go with it). Absent: nothing to do.
pub fn remove_bridge(bridge: &str) -> Result<(), ProcessError> {
    if link_exists(bridge) {
        ip(&["link", "del", bridge])?;
    }
    Ok(())
}

/// The gateway address of an existing bridge of ours, if it has one.
pub fn bridge_gateway(bridge: &str) -> Option<Ipv4Addr> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", &gateway_if(bridge)])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .and_then(|a| a.parse().ok())
}

/// A free /24 for a new bridge: one of 10.215.0.0 .. 10.230.255.0 that no host route or
/// address overlaps, searched from a point that depends on the project (two projects started
/// at once rarely try the same one first).
pub fn choose_subnet(project: &str) -> Result<Ipv4Addr, ProcessError> {
    let mut taken: Vec<(u32, u32)> = Vec::new();
    for args in [
        ["-4", "-o", "addr", "show"],
        ["-4", "route", "show", "table"],
    ] {
        let mut cmd = Command::new("ip");
        cmd.args(args);
        if args[1] == "route" {
            cmd.arg("all");
        }
        let out = cmd.output().map_err(|e| ProcessError::Command {
            command: format!("ip {}", args.join(" ")),
            message: e.to_string(),
        })?;
        for word in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Some((a, len)) = word.split_once('/')
                && let (Ok(a), Ok(len)) = (a.parse::<Ipv4Addr>(), len.parse::<u32>())
                && len <= 32
            {
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                taken.push((u32::from(a) & mask, mask));
            }
        }
    }
    let first = u32::from_str_radix(&short_hash(project), 16).unwrap_or(0) % 4096;
    let ours = 0xffff_ff00u32;
    for i in 0..4096u32 {
        let n = (first + i) % 4096;
        let net = u32::from(Ipv4Addr::new(10, 215 + (n / 256) as u8, (n % 256) as u8, 0));
        if taken
            .iter()
            .all(|(t, m)| (net & m) != *t && (t & ours) != net)
        {
            return Ok(Ipv4Addr::from(net));
        }
    }
    Err(ProcessError::NoSubnet)
}

/// Creates the pod's namespace with `lo` and `eth0` up, its address, the default route via the
/// gateway and its resolv.conf. A namespace left by an earlier run is replaced.
pub fn create_pod(p: &PodNet) -> Result<(), ProcessError> {
    delete_pod(p)?;
    ip(&["netns", "add", &p.netns])?;
    let r = (|| {
        match &p.link {
            Link::Macvlan { parent } => {
                ip(&[
                    "link", "add", "link", parent, "name", &p.host_if, "type", "macvlan", "mode",
                    "bridge",
                ])?;
                ip(&["link", "set", &p.host_if, "netns", &p.netns])?;
                ip_in(&p.netns, &["link", "set", &p.host_if, "name", "eth0"])?;
            }
            Link::Veth { bridge } => {
                let peer = format!("{}p", p.host_if);
                ip(&[
                    "link", "add", &p.host_if, "type", "veth", "peer", "name", &peer,
                ])?;
                ip(&["link", "set", &p.host_if, "master", bridge, "up"])?;
                ip(&["link", "set", &peer, "netns", &p.netns])?;
                ip_in(&p.netns, &["link", "set", &peer, "name", "eth0"])?;
            }
        }
        ip_in(&p.netns, &["link", "set", "lo", "up"])?;
        ip_in(
            &p.netns,
            &["addr", "add", &format!("{}/24", p.ip), "dev", "eth0"],
        )?;
        ip_in(&p.netns, &["link", "set", "eth0", "up"])?;
        ip_in(
            &p.netns,
            &["route", "add", "default", "via", &p.gateway.to_string()],
        )?;
        let dir = std::path::Path::new("/etc/netns").join(&p.netns);
        std::fs::create_dir_all(&dir).map_err(ProcessError::io(&dir))?;
        let resolv = dir.join("resolv.conf");
        std::fs::write(
            &resolv,
            format!("nameserver {}\nsearch {}\n", p.dns, p.search.join(" ")),
        )
        .map_err(ProcessError::io(&resolv))?;
        Ok(())
    })();
    if r.is_err() {
        let _ = delete_pod(p);
    }
    r
}

/// Deletes the pod's namespace (its interfaces go with it), a host-side veth end left behind
/// and `/etc/netns/<ns>`. Absent parts are skipped.
pub fn delete_pod(p: &PodNet) -> Result<(), ProcessError> {
    if netns_exists(&p.netns) {
        ip(&["netns", "del", &p.netns])?;
    }
    if link_exists(&p.host_if) {
        ip(&["link", "del", &p.host_if])?;
    }
    let dir = std::path::Path::new("/etc/netns").join(&p.netns);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(ProcessError::io(&dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_fit_the_kernel_limit_and_keep_the_project() {
        let b = bridge_name("h13a-processes-test-project");
        assert!(b.len() <= 15, "{b}");
        assert!(b.starts_with("mh13a-p"), "{b}");
        assert!(gateway_if(&b).len() <= 15);
        let net = Network {
            subnet: Ipv4Addr::new(10, 215, 0, 0),
            gateway: Ipv4Addr::new(10, 215, 0, 1),
            dns: Ipv4Addr::new(10, 215, 0, 1),
            attach: Attach::Own(b),
            first_host: 10,
        };
        let p = net.pod(
            "h13a-processes-test-project-backend-v1-1",
            "default",
            net.host(10),
        );
        assert!(p.host_if.len() < 15, "{} (veth peer adds one)", p.host_if);
        assert_ne!(
            p.host_if,
            net.pod(
                "h13a-processes-test-project-backend-v2-1",
                "default",
                net.host(11)
            )
            .host_if
        );
        assert_eq!(p.search[0], "default.svc.cluster.local");
    }
}
