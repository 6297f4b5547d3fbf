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
//!         ip saddr 172.30.5.1 tcp dport 8080 redirect to :15007    # edge: a published port,
//!         ip saddr 172.30.5.0/24 meta l4proto tcp redirect to :15006  # reached from outside
//!         tcp dport 8080 redirect to :15007                        # the project network
//!         meta l4proto tcp redirect to :15006
//!     }
//!     chain output {                  # outbound: everything this netns opens
//!         type nat hook output priority -100; policy accept;
//!         meta skuid 1337 return       # only when the proxy runs as a non-root user
//!         meta mark 0x00000539 return  # the proxy's own connections (SO_MARK, see [`connect`])
//!         tcp dport 15006 return       # same proxy ports
//!         ip daddr 127.240.0.0/16 meta l4proto tcp redirect to :15001
//!         ip daddr 127.0.0.0/8 return  # the pod's own loopback
//!         ip daddr 172.30.5.2 return   # excluded destinations (meshdns)
//!         meta l4proto tcp redirect to :15001
//!     }
//! }
//! ```
//!
//! The edge rules exist only for published ports ([`Edge`]): a connection to one of them from
//! an edge source (the project network's gateway: the host through Docker's port proxy or
//! hairpin NAT) or from outside the project network (other machines, through Docker's DNAT,
//! source preserved) goes to the edge listener, which accepts plaintext and applies the
//! workload's AuthorizationPolicy without a principal. From inside the project network the
//! same port goes to the inbound listener like every other port (mTLS under STRICT).
//!
//! Outbound, every TCP connection is redirected (so `outboundTrafficPolicy` sees it: passed
//! through or refused), except the proxy's own, which carry the mark [`PROXY_MARK`].
//!
//! [`install`] replaces the table in one nf_tables transaction (create-if-missing, delete,
//! create with every chain and rule), so a restart never duplicates rules and no packet sees a
//! half-built table. [`remove`] deletes only that table (and is a no-op when it is absent).
//! A proxy that is killed leaves the table as it was: redirected connections are refused until
//! it is back, never passed to the application around it.

mod ip6;
mod netlink;

use std::collections::BTreeSet;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpSocket, TcpStream};

use meshapi::dns::VipRange;
use meshapi::proxy::{AdminConfig, ListenerConfig, ProxyConfig};

pub use netlink::Expr;
use netlink::{Batch, ChainType, FAMILY_IP, FAMILY_IP6, Hook, NlError};

/// The table meshproxy owns (family `ip`).
pub const DEFAULT_TABLE: &str = "meshctl";
/// `NF_IP_PRI_NAT_DST`: where `dstnat` chains sit.
const NAT_PRIORITY: i32 = -100;
/// Upper bound on excluded ports and uids (each is one rule per chain).
const MAX_EXCLUSIONS: usize = 256;
/// The socket mark (`SO_MARK`) of the proxy's own outbound connections, which the output
/// chain never redirects (Istio's 1337).
pub const PROXY_MARK: u32 = 0x539;
/// The edge listener's default port, where published ports reached from outside the project
/// network are redirected.
pub const DEFAULT_EDGE_PORT: u16 = 15007;

/// Set once capture rules are installed in this process: from then on [`connect`] marks
/// every socket so the output chain lets it pass.
static MARK_SOCKETS: AtomicBool = AtomicBool::new(false);

/// Opens a TCP connection from the proxy itself: with capture installed, the socket carries
/// [`PROXY_MARK`] so the output chain does not send it back to the proxy. Every outbound
/// connection of the proxy (upstreams, passthrough, control plane) goes through here.
pub async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    if !MARK_SOCKETS.load(Ordering::Relaxed) {
        return TcpStream::connect(addr).await;
    }
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket2::SockRef::from(&socket).set_mark(PROXY_MARK)?;
    socket.connect(addr).await
}

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
    /// Inbound, delivered to this netns (the `ip6` guard, [`ip6`]).
    Input,
    /// Outbound: connections this netns opens.
    Output,
}

impl Chain {
    pub fn name(self) -> &'static str {
        match self {
            Chain::Prerouting => "prerouting",
            Chain::Input => "input",
            Chain::Output => "output",
        }
    }

    fn hook(self) -> Hook {
        match self {
            Chain::Prerouting => Hook::Prerouting,
            Chain::Input => Hook::Input,
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
                // nft folds the protocol dependency into `tcp ...` and `reject with tcp reset`.
                Expr::L4ProtoTcp
                    if matches!(
                        next,
                        Some(Expr::TcpDport(_) | Expr::TcpSyn | Expr::RejectTcpReset)
                    ) =>
                {
                    continue;
                }
                Expr::L4ProtoTcp => "meta l4proto tcp".to_string(),
                Expr::IifName(name) => format!("iifname \"{name}\""),
                Expr::OifName(name) => format!("oifname \"{name}\""),
                Expr::Accept => "accept".to_string(),
                Expr::Drop => "drop".to_string(),
                Expr::RejectTcpReset => "reject with tcp reset".to_string(),
                Expr::SkUid(uid) => format!("meta skuid {uid}"),
                Expr::TcpDport(p) => format!("tcp dport {p}"),
                Expr::TcpSyn => "tcp flags syn / syn,ack".to_string(),
                Expr::Mark(m) => format!("meta mark 0x{m:08x}"),
                Expr::Ip4Daddr { net, mask } => format!("ip daddr {}", cidr(net, mask)),
                Expr::Ip4Saddr { net, mask } => format!("ip saddr {}", cidr(net, mask)),
                Expr::Return => "return".to_string(),
                Expr::RedirectTo(p) => format!("redirect to :{p}"),
            });
        }
        f.write_str(&words.join(" "))
    }
}

/// `a.b.c.d/prefix` as nft prints it (no prefix for a single address).
fn cidr(net: &[u8; 4], mask: &[u8; 4]) -> String {
    let prefix: u32 = mask.iter().map(|b| b.count_ones()).sum();
    let [a, b, c, d] = net;
    if prefix == 32 {
        format!("{a}.{b}.{c}.{d}")
    } else {
        format!("{a}.{b}.{c}.{d}/{prefix}")
    }
}

/// `(net, mask)` of a prefix, for the address expressions.
fn net_mask(base: Ipv4Addr, prefix: u8) -> ([u8; 4], [u8; 4]) {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    ((u32::from(base) & mask).to_be_bytes(), mask.to_be_bytes())
}

/// An IPv4 address or CIDR range in a capture rule (`172.30.5.1`, `172.30.5.0/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net4 {
    pub base: Ipv4Addr,
    /// 0 to 32.
    pub prefix: u8,
}

impl Net4 {
    fn net_mask(&self) -> ([u8; 4], [u8; 4]) {
        net_mask(self.base, self.prefix)
    }
}

impl fmt::Display for Net4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl std::str::FromStr for Net4 {
    type Err = String;
    fn from_str(s: &str) -> Result<Net4, String> {
        let bad = || format!("{s:?} is not an IPv4 address or CIDR range (172.30.5.0/24)");
        let (ip, prefix) = s.split_once('/').unwrap_or((s, "32"));
        let base = ip.trim().parse().map_err(|_| bad())?;
        let prefix = prefix.trim().parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        Ok(Net4 { base, prefix })
    }
}

/// Published ports: the project's edge. See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Edge {
    /// The application ports compose publishes (container ports).
    pub ports: BTreeSet<u16>,
    /// The project network: sources in it are mesh-internal (their connections go to the
    /// inbound listener), except `sources`.
    pub mesh_network: Vec<Net4>,
    /// Sources inside `mesh_network` that are the edge nevertheless (the network's gateway,
    /// which is how the host and Docker's port proxy reach a pod).
    pub sources: Vec<Net4>,
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
    /// Outbound: every TCP connection is redirected, not only the VIP ranges (container
    /// mode, so `outboundTrafficPolicy` applies to everything the application opens).
    /// Default: true when there is an outbound port.
    pub capture_all_outbound: bool,
    /// Outbound destinations never redirected (meshdns, `--capture-exclude-outbound`).
    pub excluded_outbound: Vec<Net4>,
    /// The edge listener's port (`listeners.edge`, else [`DEFAULT_EDGE_PORT`]).
    pub edge_port: u16,
    /// Published ports and who reaches them as the edge. Default none: every port goes to
    /// the inbound listener.
    pub edge: Option<Edge>,
}

impl CaptureSpec {
    /// Capture for a proxy with these listeners: inbound to the inbound listener's port,
    /// outbound to the capture listener's port, and every listener port excluded.
    pub fn for_listeners(listeners: &ListenerConfig, admin: &AdminConfig) -> CaptureSpec {
        let inbound = listeners.inbound.port();
        let outbound = listeners.outbound_capture.map(|a| a.port());
        let edge_port = listeners.edge.map_or(DEFAULT_EDGE_PORT, |a| a.port());
        // The edge listener is not excluded: it may only be reached through the edge rules'
        // redirect (a direct connection to it from the network goes to the inbound listener,
        // which has no such port).
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
            capture_all_outbound: outbound.is_some(),
            excluded_outbound: Vec::new(),
            edge_port,
            edge: None,
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

    /// Sends `edge.ports` (published ports) from outside `edge.mesh_network` (or from
    /// `edge.sources`) to the edge listener. No ports: no edge rules.
    pub fn with_edge(mut self, edge: Edge) -> CaptureSpec {
        self.edge = (!edge.ports.is_empty()).then_some(edge);
        self
    }

    /// Adds outbound destinations that must never be redirected.
    pub fn exclude_outbound(mut self, ranges: impl IntoIterator<Item = Net4>) -> CaptureSpec {
        self.excluded_outbound.extend(ranges);
        self
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
        if let Some(e) = &self.edge {
            if self.edge_port == 0 {
                return bad("the edge listener is on port 0; capture needs a fixed port".into());
            }
            if let Some(p) = e.ports.iter().find(|p| self.excluded_ports.contains(p)) {
                return bad(format!(
                    "port {p} is both published (edge) and excluded from capture"
                ));
            }
        }
        let edge_rules = self.edge.as_ref().map_or(0, |e| {
            e.ports.len() * (e.sources.len() + 1) + e.mesh_network.len()
        });
        if self.excluded_ports.len()
            + self.excluded_uids.len()
            + self.excluded_outbound.len()
            + edge_rules
            > MAX_EXCLUSIONS
        {
            return bad(format!(
                "at most {MAX_EXCLUSIONS} excluded ports and users (one rule each)"
            ));
        }
        Ok(())
    }

    /// One rule per excluded port in `chain`, ending in `verdict` (`return`, `accept`).
    fn excluded_port_rules(&self, chain: Chain, verdict: Expr) -> impl Iterator<Item = Rule> {
        self.excluded_ports
            .iter()
            .filter(|p| **p != 0)
            .map(move |p| Rule {
                chain,
                exprs: vec![Expr::L4ProtoTcp, Expr::TcpDport(*p), verdict.clone()],
            })
    }

    /// Every rule, in chain order.
    pub fn rules(&self) -> Vec<Rule> {
        let mut rules = Vec::new();
        let port_returns = |chain| self.excluded_port_rules(chain, Expr::Return);
        if let Some(inbound) = self.inbound_port {
            let pre = |exprs| Rule {
                chain: Chain::Prerouting,
                exprs,
            };
            rules.push(pre(vec![Expr::IifName("lo".to_string()), Expr::Return]));
            rules.extend(port_returns(Chain::Prerouting));
            if let Some(edge) = &self.edge {
                let to_edge = |from: Option<&Net4>, port: u16| {
                    let mut exprs = Vec::new();
                    if let Some(r) = from {
                        let (net, mask) = r.net_mask();
                        exprs.push(Expr::Ip4Saddr { net, mask });
                    }
                    exprs.extend([
                        Expr::L4ProtoTcp,
                        Expr::TcpDport(port),
                        Expr::RedirectTo(self.edge_port),
                    ]);
                    pre(exprs)
                };
                for port in &edge.ports {
                    for src in &edge.sources {
                        rules.push(to_edge(Some(src), *port));
                    }
                }
                for r in &edge.mesh_network {
                    let (net, mask) = r.net_mask();
                    rules.push(pre(vec![
                        Expr::Ip4Saddr { net, mask },
                        Expr::L4ProtoTcp,
                        Expr::RedirectTo(inbound),
                    ]));
                }
                for port in &edge.ports {
                    rules.push(to_edge(None, *port));
                }
            }
            rules.push(pre(vec![Expr::L4ProtoTcp, Expr::RedirectTo(inbound)]));
        }
        if let Some(outbound) = self.outbound_port {
            let out = |exprs| Rule {
                chain: Chain::Output,
                exprs,
            };
            rules.extend(
                self.excluded_uids
                    .iter()
                    .map(|u| out(vec![Expr::SkUid(*u), Expr::Return])),
            );
            if self.capture_all_outbound {
                rules.push(out(vec![Expr::Mark(PROXY_MARK), Expr::Return]));
            }
            rules.extend(port_returns(Chain::Output));
            for range in &self.vip_ranges {
                let (net, mask) = net_mask(range.base(), range.prefix());
                rules.push(out(vec![
                    Expr::Ip4Daddr { net, mask },
                    Expr::L4ProtoTcp,
                    Expr::RedirectTo(outbound),
                ]));
            }
            if self.capture_all_outbound {
                let loopback = Net4 {
                    base: Ipv4Addr::new(127, 0, 0, 0),
                    prefix: 8,
                };
                for range in std::iter::once(&loopback).chain(&self.excluded_outbound) {
                    let (net, mask) = range.net_mask();
                    rules.push(out(vec![Expr::Ip4Daddr { net, mask }, Expr::Return]));
                }
                rules.push(out(vec![Expr::L4ProtoTcp, Expr::RedirectTo(outbound)]));
            }
        }
        rules
    }

    /// Every rule of the `ip6` guard table ([`ip6`]), in chain order.
    pub fn ip6_rules(&self) -> Vec<Rule> {
        ip6::rules(self)
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
        let table = |family: &str,
                     kind: &str,
                     priority: i32,
                     chains: Vec<Chain>,
                     rules: Vec<Rule>| {
            let mut s = format!("table {family} {} {{\n", self.table);
            for chain in chains {
                s.push_str(&format!(
                    "\tchain {0} {{\n\t\ttype {kind} hook {0} priority {priority}; policy accept;\n",
                    chain.name()
                ));
                for r in rules.iter().filter(|r| r.chain == chain) {
                    s.push_str(&format!("\t\t{r}\n"));
                }
                s.push_str("\t}\n");
            }
            s.push_str("}\n");
            s
        };
        let mut s = table("ip", "nat", NAT_PRIORITY, self.chains(), self.rules());
        let chains6 = ip6::chains(self);
        if !chains6.is_empty() {
            s.push_str(&table(
                "ip6",
                "filter",
                ip6::FILTER_PRIORITY,
                chains6,
                ip6::rules(self),
            ));
        }
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
    // The IPv6 guard, in the same transaction.
    let chains6 = ip6::chains(spec);
    let has_ipv6 = ip6::kernel_has_ipv6();
    let guard6 = !chains6.is_empty() && has_ipv6;
    if has_ipv6 {
        tx.batch.family(FAMILY_IP6);
        tx.batch.new_table(table);
        tx.note(format!("creating table ip6 {table}"));
        tx.batch.del_table(table);
        tx.note(format!("deleting the previous table ip6 {table}"));
    }
    if guard6 {
        tx.batch.new_table(table);
        tx.note(format!("creating table ip6 {table}"));
        for chain in chains6 {
            tx.batch.new_base_chain(
                table,
                chain.name(),
                chain.hook(),
                ip6::FILTER_PRIORITY,
                ChainType::Filter,
            );
            tx.note(format!(
                "filter chain {} in table ip6 {table}",
                chain.name()
            ));
        }
        for r in ip6::rules(spec) {
            tx.batch.new_rule(table, r.chain.name(), &r.exprs);
            tx.note(format!(
                "rule `{r}` in chain {} of table ip6",
                r.chain.name()
            ));
        }
    }
    tx.commit()?;
    MARK_SOCKETS.store(spec.capture_all_outbound, Ordering::Relaxed);
    tracing::info!(
        table = %format!("ip {table}"),
        rules = rules.len(),
        inbound = ?spec.inbound_port,
        outbound = ?spec.outbound_port,
        excluded_ports = ?spec.excluded_ports,
        ipv6_guard = guard6,
        "capture rules installed"
    );
    tracing::debug!(nft = %spec.to_nft(), "capture rules");
    Ok(())
}

/// Deletes the tables `ip <table>` and `ip6 <table>` if they exist; other tables are left
/// alone.
pub fn remove(table: &str) -> Result<(), CaptureError> {
    let mut tx = Transaction::new();
    // Creating first makes the delete succeed whether or not the table was there.
    tx.batch.new_table(table);
    tx.note(format!("creating table ip {table}"));
    tx.batch.del_table(table);
    tx.note(format!("deleting table ip {table}"));
    if ip6::kernel_has_ipv6() {
        tx.batch.family(FAMILY_IP6);
        tx.batch.new_table(table);
        tx.note(format!("creating table ip6 {table}"));
        tx.batch.del_table(table);
        tx.note(format!("deleting table ip6 {table}"));
    }
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
                "meta mark 0x00000539 return",
                "tcp dport 15000 return",
                "tcp dport 15001 return",
                "tcp dport 15006 return",
                "tcp dport 15021 return",
                "tcp dport 15090 return",
                "ip daddr 127.240.0.0/16 meta l4proto tcp redirect to :15001",
                "ip daddr 127.0.0.0/8 return",
                "meta l4proto tcp redirect to :15001",
            ]
        );
        let nft = spec.to_nft();
        assert!(
            nft.starts_with("table ip meshctl {\n\tchain prerouting {\n"),
            "{nft}"
        );
        assert!(nft.contains("type nat hook output priority -100; policy accept;"));
        // The IPv6 guard: refuse new TCP both ways, the proxy's own and loopback pass.
        let text6: Vec<String> = spec.ip6_rules().iter().map(|r| r.to_string()).collect();
        let ports = [15000, 15001, 15006, 15021, 15090].map(|p| format!("tcp dport {p} accept"));
        let reject = "tcp flags syn / syn,ack reject with tcp reset".to_string();
        let mut want = vec!["iifname \"lo\" accept".to_string()];
        want.extend(ports.clone());
        want.push(reject.clone());
        want.extend([
            "meta mark 0x00000539 accept".to_string(),
            "oifname \"lo\" accept".to_string(),
        ]);
        want.extend(ports);
        want.push(reject);
        assert_eq!(text6, want);
        assert!(
            nft.contains("table ip6 meshctl {\n\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n"),
            "{nft}"
        );
        // Without an outbound capture listener there is no output chain in either table.
        let inbound_only = CaptureSpec::control_plane_defaults();
        assert!(
            inbound_only
                .ip6_rules()
                .iter()
                .all(|r| r.chain == Chain::Input)
        );
    }

    #[test]
    fn published_ports_from_outside_the_network_go_to_the_edge_listener() {
        let c = cfg(&format!(
            "{BASE}listeners:\n  outboundCapture: 127.0.0.1:15001\n  edge: 0.0.0.0:15007\n"
        ));
        let spec = CaptureSpec::from_config(&c)
            .with_edge(Edge {
                ports: [8080].into(),
                mesh_network: vec!["172.30.5.0/24".parse().unwrap()],
                sources: vec!["172.30.5.1".parse().unwrap()],
            })
            .exclude_outbound(["172.30.5.2".parse().unwrap()]);
        spec.validate().unwrap();
        let text: Vec<String> = spec.rules().iter().map(|r| r.to_string()).collect();
        let pre: Vec<&str> = text[6..10].iter().map(String::as_str).collect();
        assert_eq!(
            pre,
            vec![
                "ip saddr 172.30.5.1 tcp dport 8080 redirect to :15007",
                "ip saddr 172.30.5.0/24 meta l4proto tcp redirect to :15006",
                "tcp dport 8080 redirect to :15007",
                "meta l4proto tcp redirect to :15006",
            ]
        );
        let out = &text[text.len() - 3..];
        assert_eq!(
            out,
            [
                "ip daddr 127.0.0.0/8 return",
                "ip daddr 172.30.5.2 return",
                "meta l4proto tcp redirect to :15001",
            ]
        );
        // The edge listener itself is not a passage around capture.
        assert!(!spec.excluded_ports.contains(&15007));
        // A port both published and excluded is a contradiction, refused.
        let both = spec.clone().exclude_ports([8080]);
        assert!(matches!(both.validate(), Err(CaptureError::Invalid(_))));
        // No published ports: no edge rules at all.
        let none = CaptureSpec::from_config(&c).with_edge(Edge::default());
        assert_eq!(none.edge, None);
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
