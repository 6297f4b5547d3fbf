//! Transparent capture (container mode): the nftables rules that send a pod's TCP through the
//! proxy, programmed by meshproxy itself over netlink (the sidecar image has no `nft` binary).
//!
//! One table of our own, `ip meshctl`, with two `nat` chains:
//!
//! ```text
//! table ip meshctl {
//!     chain prerouting {              # inbound: from the network to this netns
//!         type nat hook prerouting priority -100; policy accept;
//!         iifname "lo" return          # local traffic (proxy -> app on 127.0.0.1) is never touched
//!         tcp dport 15006 return       # one per proxy port (15006 15001 15000 15021 15090, extras)
//!         meta l4proto tcp redirect to :15006
//!     }
//!     chain output {                  # outbound: from this netns to the mesh VIPs
//!         type nat hook output priority -100; policy accept;
//!         meta skuid 1337 return       # only when the proxy runs as a non-root user
//!         tcp dport 15006 return       # same proxy ports
//!         ip daddr 127.240.0.0/16 meta l4proto tcp redirect to :15001
//!     }
//! }
//! ```
//!
//! [`install`] replaces the table in one nf_tables transaction (create-if-missing, delete,
//! create with every chain and rule), so a restart never duplicates rules and no packet sees a
//! half-built table. [`remove`] deletes only that table (and is a no-op when it is absent).
//! A proxy that is killed leaves the table as it was: redirected connections are refused until
//! it is back, never passed to the application around it.

mod netlink;

use std::collections::BTreeSet;
use std::fmt;

use meshapi::dns::VipRange;
use meshapi::proxy::{AdminConfig, ListenerConfig, ProxyConfig};

pub use netlink::Expr;
use netlink::{Batch, FAMILY_IP, Hook, NlError};

/// The table meshproxy owns (family `ip`).
pub const DEFAULT_TABLE: &str = "meshctl";
/// `NF_IP_PRI_NAT_DST`: where `dstnat` chains sit.
const NAT_PRIORITY: i32 = -100;
/// Upper bound on excluded ports and uids (each is one rule per chain).
const MAX_EXCLUSIONS: usize = 256;

/// Why the capture rules could not be installed or removed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// EPERM from the kernel.
    #[error(
        "capture rules need CAP_NET_ADMIN in this network namespace (the kernel refused {what}: operation not permitted)"
    )]
    NotPermitted { what: String },
    /// Any other errno from the kernel, with the message it answered.
    #[error("the kernel refused {what}: {source}")]
    Refused {
        what: String,
        errno: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("no answer from the kernel to the nf_tables batch")]
    NoAnswer,
    #[error("unreadable netlink reply: {0}")]
    Malformed(&'static str),
    #[error("capture spec: {0}")]
    Invalid(String),
}

/// The base chains of our table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chain {
    /// Inbound: connections arriving from the network.
    Prerouting,
    /// Outbound: connections this netns opens.
    Output,
}

impl Chain {
    pub fn name(self) -> &'static str {
        match self {
            Chain::Prerouting => "prerouting",
            Chain::Output => "output",
        }
    }

    fn hook(self) -> Hook {
        match self {
            Chain::Prerouting => Hook::Prerouting,
            Chain::Output => Hook::Output,
        }
    }
}

/// One rule: its chain and its expressions in evaluation order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: Chain,
    pub exprs: Vec<Expr>,
}

impl fmt::Display for Rule {
    /// The rule as `nft list` prints it (`tcp dport 15006 return`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut words = Vec::new();
        for (i, e) in self.exprs.iter().enumerate() {
            let next = self.exprs.get(i + 1);
            words.push(match e {
                // nft folds the protocol dependency into `tcp dport`.
                Expr::L4ProtoTcp if matches!(next, Some(Expr::TcpDport(_))) => continue,
                Expr::L4ProtoTcp => "meta l4proto tcp".to_string(),
                Expr::IifName(name) => format!("iifname \"{name}\""),
                Expr::SkUid(uid) => format!("meta skuid {uid}"),
                Expr::TcpDport(p) => format!("tcp dport {p}"),
                Expr::Ip4Daddr { net, mask } => {
                    let prefix: u32 = mask.iter().map(|b| b.count_ones()).sum();
                    let [a, b, c, d] = net;
                    format!("ip daddr {a}.{b}.{c}.{d}/{prefix}")
                }
                Expr::Return => "return".to_string(),
                Expr::RedirectTo(p) => format!("redirect to :{p}"),
            });
        }
        f.write_str(&words.join(" "))
    }
}

/// What to capture and where to send it. Build with [`CaptureSpec::from_config`] (file mode)
/// or [`CaptureSpec::control_plane_defaults`], then [`install`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureSpec {
    /// Our table's name (family `ip`). Default `meshctl`.
    pub table: String,
    /// Outbound TCP to these ranges goes to `outbound_port`. Default `127.240.0.0/16`.
    pub vip_ranges: Vec<VipRange>,
    /// Outbound capture listener port; `None`: no outbound redirect (host mode binds VIPs).
    pub outbound_port: Option<u16>,
    /// Inbound listener port; `None`: no inbound redirect.
    pub inbound_port: Option<u16>,
    /// Destination ports never redirected, in either direction: the proxy's own listeners
    /// and whatever the operator adds (`--capture-exclude-ports`).
    pub excluded_ports: BTreeSet<u16>,
    /// Outbound traffic of these users is never redirected (the proxy's own user when it
    /// is not root, Istio's 1337 convention).
    pub excluded_uids: BTreeSet<u32>,
}

impl CaptureSpec {
    /// Capture for a proxy with these listeners: inbound to the inbound listener's port,
    /// outbound to the capture listener's port, and every listener port excluded.
    pub fn for_listeners(listeners: &ListenerConfig, admin: &AdminConfig) -> CaptureSpec {
        let inbound = listeners.inbound.port();
        let outbound = listeners.outbound_capture.map(|a| a.port());
        let excluded = [
            Some(inbound),
            outbound,
            Some(admin.admin.port()),
            Some(admin.health.port()),
            Some(admin.stats.port()),
        ]
        .into_iter()
        .flatten()
        .collect();
        if listeners.inbound.ip().is_loopback() {
            tracing::warn!(
                inbound = %listeners.inbound,
                "the inbound listener is on loopback: connections redirected from the network cannot reach it"
            );
        }
        CaptureSpec {
            table: DEFAULT_TABLE.to_string(),
            vip_ranges: vec![VipRange::default()],
            outbound_port: outbound,
            inbound_port: Some(inbound),
            excluded_ports: excluded,
            excluded_uids: BTreeSet::new(),
        }
    }

    /// Capture for the effective config of a proxy. Outbound VIPs outside the captured
    /// ranges are logged: connections to them are not redirected.
    pub fn from_config(cfg: &ProxyConfig) -> CaptureSpec {
        let spec = CaptureSpec::for_listeners(&cfg.listeners, &cfg.admin);
        if spec.outbound_port.is_some() {
            for o in &cfg.outbound {
                let captured = match o.vip.ip() {
                    std::net::IpAddr::V4(ip) => spec.vip_ranges.iter().any(|r| r.contains(ip)),
                    std::net::IpAddr::V6(_) => false,
                };
                if !captured {
                    tracing::warn!(vip = %o.vip, service = %o.service, "outbound VIP outside the captured ranges: not redirected");
                }
            }
        }
        spec
    }

    /// Capture for control-plane mode before the first config arrives: inbound to the
    /// default ports, so nothing reaches the application around the proxy while it starts.
    /// No outbound redirect yet: whether the pushed config has a capture listener or binds
    /// VIPs is not known; `main` re-installs from the first config ([`Self::from_config`]).
    pub fn control_plane_defaults() -> CaptureSpec {
        CaptureSpec::for_listeners(&ListenerConfig::default(), &AdminConfig::default())
    }

    /// Adds ports that must never be redirected.
    pub fn exclude_ports(mut self, ports: impl IntoIterator<Item = u16>) -> CaptureSpec {
        self.excluded_ports.extend(ports);
        self
    }

    /// Excludes the outbound traffic of the current user when it is not root (a root proxy
    /// cannot be told apart from a root application by user, so nothing is excluded then).
    pub fn exclude_own_uid(mut self) -> CaptureSpec {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata("/proc/self").map(|m| m.uid()) {
            Ok(0) | Err(_) => {}
            Ok(uid) => {
                self.excluded_uids.insert(uid);
            }
        }
        self
    }

    /// Refuses specs the kernel would take but that cannot work.
    pub fn validate(&self) -> Result<(), CaptureError> {
        let bad = |m: String| Err(CaptureError::Invalid(m));
        if self.table.is_empty() || self.table.len() > 255 || self.table.contains('\0') {
            return bad(format!("table name {:?} is not usable", self.table));
        }
        for (what, port) in [
            ("inbound", self.inbound_port),
            ("outbound", self.outbound_port),
        ] {
            if port == Some(0) {
                return bad(format!(
                    "the {what} listener is on port 0; capture needs a fixed port"
                ));
            }
        }
        if self.excluded_ports.len() + self.excluded_uids.len() > MAX_EXCLUSIONS {
            return bad(format!(
                "at most {MAX_EXCLUSIONS} excluded ports and users (one rule each)"
            ));
        }
        Ok(())
    }

    /// Every rule, in chain order.
    pub fn rules(&self) -> Vec<Rule> {
        let mut rules = Vec::new();
        let port_returns = |chain| {
            self.excluded_ports
                .iter()
                .filter(|p| **p != 0)
                .map(move |p| Rule {
                    chain,
                    exprs: vec![Expr::L4ProtoTcp, Expr::TcpDport(*p), Expr::Return],
                })
        };
        if let Some(inbound) = self.inbound_port {
            rules.push(Rule {
                chain: Chain::Prerouting,
                exprs: vec![Expr::IifName("lo".to_string()), Expr::Return],
            });
            rules.extend(port_returns(Chain::Prerouting));
            rules.push(Rule {
                chain: Chain::Prerouting,
                exprs: vec![Expr::L4ProtoTcp, Expr::RedirectTo(inbound)],
            });
        }
        if let Some(outbound) = self.outbound_port {
            rules.extend(self.excluded_uids.iter().map(|u| Rule {
                chain: Chain::Output,
                exprs: vec![Expr::SkUid(*u), Expr::Return],
            }));
            rules.extend(port_returns(Chain::Output));
            for range in &self.vip_ranges {
                let mask = (u32::MAX << (32 - u32::from(range.prefix()))).to_be_bytes();
                rules.push(Rule {
                    chain: Chain::Output,
                    exprs: vec![
                        Expr::Ip4Daddr {
                            net: range.base().octets(),
                            mask,
                        },
                        Expr::L4ProtoTcp,
                        Expr::RedirectTo(outbound),
                    ],
                });
            }
        }
        rules
    }

    fn chains(&self) -> Vec<Chain> {
        let mut chains = Vec::new();
        if self.inbound_port.is_some() {
            chains.push(Chain::Prerouting);
        }
        if self.outbound_port.is_some() {
            chains.push(Chain::Output);
        }
        chains
    }

    /// The whole table in `nft -f` syntax (for logs and docs; what [`install`] programs).
    pub fn to_nft(&self) -> String {
        let rules = self.rules();
        let mut s = format!("table ip {} {{\n", self.table);
        for chain in self.chains() {
            let hook = match chain {
                Chain::Prerouting => "prerouting",
                Chain::Output => "output",
            };
            s.push_str(&format!(
                "\tchain {} {{\n\t\ttype nat hook {hook} priority {NAT_PRIORITY}; policy accept;\n",
                chain.name()
            ));
            for r in rules.iter().filter(|r| r.chain == chain) {
                s.push_str(&format!("\t\t{r}\n"));
            }
            s.push_str("\t}\n");
        }
        s.push_str("}\n");
        s
    }
}

/// Messages of one batch with what each one was, for error reports.
struct Transaction {
    batch: Batch,
    what: Vec<String>,
}

impl Transaction {
    fn new() -> Transaction {
        Transaction {
            batch: Batch::new(FAMILY_IP),
            what: Vec::new(),
        }
    }

    fn note(&mut self, what: String) {
        while self.what.len() < self.batch.queued() {
            self.what.push(what.clone());
        }
    }

    fn commit(self) -> Result<(), CaptureError> {
        self.batch.commit().map_err(|e| match e {
            NlError::Refused { index, errno } => {
                let what = match index {
                    Some(i) => self
                        .what
                        .get(i)
                        .cloned()
                        .unwrap_or_else(|| format!("message {i}")),
                    None => "the nf_tables batch".to_string(),
                };
                if errno == 1 {
                    CaptureError::NotPermitted { what }
                } else {
                    CaptureError::Refused {
                        what,
                        errno,
                        source: std::io::Error::from_raw_os_error(errno),
                    }
                }
            }
            NlError::Io(e) => CaptureError::Socket(e),
            NlError::NoAnswer => CaptureError::NoAnswer,
            NlError::Malformed(m) => CaptureError::Malformed(m),
            NlError::TooLarge => CaptureError::Invalid("a rule is too large to encode".into()),
        })
    }
}

/// Installs (or atomically replaces) the capture table described by `spec`.
pub fn install(spec: &CaptureSpec) -> Result<(), CaptureError> {
    spec.validate()?;
    let table = spec.table.as_str();
    let mut tx = Transaction::new();
    tx.batch.new_table(table);
    tx.note(format!("creating table ip {table}"));
    tx.batch.del_table(table);
    tx.note(format!("deleting the previous table ip {table}"));
    tx.batch.new_table(table);
    tx.note(format!("creating table ip {table}"));
    for chain in spec.chains() {
        tx.batch
            .new_nat_chain(table, chain.name(), chain.hook(), NAT_PRIORITY);
        tx.note(format!(
            "nat chain {} in table ip {table} (nf_nat / nft_chain_nat missing?)",
            chain.name()
        ));
    }
    let rules = spec.rules();
    for r in &rules {
        tx.batch.new_rule(table, r.chain.name(), &r.exprs);
        tx.note(format!("rule `{r}` in chain {}", r.chain.name()));
    }
    tx.commit()?;
    tracing::info!(
        table = %format!("ip {table}"),
        rules = rules.len(),
        inbound = ?spec.inbound_port,
        outbound = ?spec.outbound_port,
        excluded_ports = ?spec.excluded_ports,
        "capture rules installed"
    );
    tracing::debug!(nft = %spec.to_nft(), "capture rules");
    Ok(())
}

/// Deletes the table `ip <table>` if it exists; other tables are left alone.
pub fn remove(table: &str) -> Result<(), CaptureError> {
    let mut tx = Transaction::new();
    // Creating first makes the delete succeed whether or not the table was there.
    tx.batch.new_table(table);
    tx.note(format!("creating table ip {table}"));
    tx.batch.del_table(table);
    tx.note(format!("deleting table ip {table}"));
    tx.commit()?;
    tracing::info!(table = %format!("ip {table}"), "capture rules removed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml: &str) -> ProxyConfig {
        ProxyConfig::from_str_checked(yaml).unwrap()
    }

    const BASE: &str =
        "apiVersion: meshproxy/v1\nidentity:\n  spiffeId: spiffe://cluster.local/ns/default/sa/a\n";

    #[test]
    fn spec_from_config_excludes_every_listener_port() {
        let c = cfg(&format!(
            "{BASE}listeners:\n  inbound: 0.0.0.0:16006\n  outboundCapture: 127.0.0.1:16001\n\
             admin:\n  admin: 127.0.0.1:16000\n  health: 0.0.0.0:16021\n  stats: 0.0.0.0:16090\n"
        ));
        let spec = CaptureSpec::from_config(&c).exclude_ports([22]);
        assert_eq!(spec.inbound_port, Some(16006));
        assert_eq!(spec.outbound_port, Some(16001));
        assert_eq!(
            spec.excluded_ports.iter().copied().collect::<Vec<_>>(),
            vec![22, 16000, 16001, 16006, 16021, 16090]
        );
        spec.validate().unwrap();
    }

    #[test]
    fn control_plane_defaults_capture_inbound_only() {
        let spec = CaptureSpec::control_plane_defaults();
        assert_eq!(spec.inbound_port, Some(15006));
        assert_eq!(spec.outbound_port, None);
        assert_eq!(spec.chains(), vec![Chain::Prerouting]);
    }

    #[test]
    fn default_rules_read_like_nft() {
        let spec = CaptureSpec::from_config(&cfg(&format!(
            "{BASE}listeners:\n  outboundCapture: 127.0.0.1:15001\n"
        )));
        let text: Vec<String> = spec.rules().iter().map(|r| r.to_string()).collect();
        assert_eq!(
            text,
            vec![
                "iifname \"lo\" return",
                "tcp dport 15000 return",
                "tcp dport 15001 return",
                "tcp dport 15006 return",
                "tcp dport 15021 return",
                "tcp dport 15090 return",
                "meta l4proto tcp redirect to :15006",
                "tcp dport 15000 return",
                "tcp dport 15001 return",
                "tcp dport 15006 return",
                "tcp dport 15021 return",
                "tcp dport 15090 return",
                "ip daddr 127.240.0.0/16 meta l4proto tcp redirect to :15001",
            ]
        );
        let nft = spec.to_nft();
        assert!(
            nft.starts_with("table ip meshctl {\n\tchain prerouting {\n"),
            "{nft}"
        );
        assert!(nft.contains("type nat hook output priority -100; policy accept;"));
    }

    #[test]
    fn file_mode_without_capture_listener_redirects_inbound_only() {
        let spec = CaptureSpec::from_config(&cfg(BASE));
        assert_eq!(spec.outbound_port, None);
        assert!(spec.rules().iter().all(|r| r.chain == Chain::Prerouting));
        assert_eq!(spec.chains(), vec![Chain::Prerouting]);
    }

    #[test]
    fn uid_exclusion_and_odd_prefixes_render() {
        let mut spec = CaptureSpec::from_config(&cfg(&format!(
            "{BASE}listeners:\n  outboundCapture: 127.0.0.1:15001\n"
        )));
        spec.excluded_uids.insert(1337);
        spec.vip_ranges = vec!["10.96.0.0/12".parse().unwrap()];
        let text: Vec<String> = spec.rules().iter().map(|r| r.to_string()).collect();
        assert!(text.contains(&"meta skuid 1337 return".to_string()));
        assert!(
            text.contains(&"ip daddr 10.96.0.0/12 meta l4proto tcp redirect to :15001".to_string())
        );
    }

    #[test]
    fn port_zero_and_bad_names_are_refused_before_the_kernel() {
        let c = cfg(&format!("{BASE}listeners:\n  inbound: 0.0.0.0:0\n"));
        let err = CaptureSpec::from_config(&c).validate().unwrap_err();
        assert!(err.to_string().contains("port 0"), "{err}");
        let mut spec = CaptureSpec::control_plane_defaults();
        spec.table = String::new();
        assert!(matches!(spec.validate(), Err(CaptureError::Invalid(_))));
        let spec = CaptureSpec::control_plane_defaults().exclude_ports(1..=300);
        assert!(matches!(spec.validate(), Err(CaptureError::Invalid(_))));
    }
}
