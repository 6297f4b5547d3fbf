//! The IPv6 guard: a second table of our own, `ip6 meshctl`, so that IPv6 cannot carry TCP
//! around the proxy. Capture redirects IPv4 only (the listeners are IPv4); IPv6 TCP is
//! refused with a reset instead, in both directions, while the proxy's own connections
//! ([`super::PROXY_MARK`]), loopback and the excluded ports and users pass. Only a
//! connection's first segment (SYN without ACK) is refused, so the resets the rules send and
//! the answers to the proxy's own IPv6 connections go through:
//!
//! ```text
//! table ip6 meshctl {
//!     chain input {                   # the app's ports over IPv6 would skip the inbound listener
//!         type filter hook input priority 0; policy accept;
//!         iifname "lo" accept
//!         tcp dport 15006 accept       # one per excluded port, as in `ip meshctl`
//!         tcp flags syn / syn,ack reject with tcp reset   # a new TCP connection
//!     }
//!     chain output {                  # container mode: outbound IPv6 is never a bypass
//!         type filter hook output priority 0; policy accept;
//!         meta skuid 1337 accept       # only when the proxy runs as a non-root user
//!         meta mark 0x00000539 accept
//!         oifname "lo" accept
//!         tcp dport 15006 accept
//!         tcp flags syn / syn,ack reject with tcp reset
//!     }
//! }
//! ```
//!
//! UDP is not captured in either family (DNS goes to meshdns over IPv4).

use super::netlink::Expr;
use super::{CaptureSpec, Chain, PROXY_MARK, Rule};

/// Filter chains sit at the default filter priority.
pub(super) const FILTER_PRIORITY: i32 = 0;

/// Whether this kernel has IPv6 at all; without it there is nothing to guard (and no `ip6`
/// family to program).
pub(super) fn kernel_has_ipv6() -> bool {
    std::path::Path::new("/proc/sys/net/ipv6").exists()
}

/// The base chains of the `ip6` table for `spec`.
pub(super) fn chains(spec: &CaptureSpec) -> Vec<Chain> {
    let mut chains = Vec::new();
    if spec.inbound_port.is_some() {
        chains.push(Chain::Input);
    }
    if spec.outbound_port.is_some() && spec.capture_all_outbound {
        chains.push(Chain::Output);
    }
    chains
}

/// Every rule of the `ip6` table, in chain order.
pub(super) fn rules(spec: &CaptureSpec) -> Vec<Rule> {
    let mut rules = Vec::new();
    // Only a connection's first segment is refused: the reset this sends, and the answers
    // to the proxy's own connections, pass.
    let reject = |chain| Rule {
        chain,
        exprs: vec![Expr::L4ProtoTcp, Expr::TcpSyn, Expr::RejectTcpReset],
    };
    for chain in chains(spec) {
        let rule = |exprs| Rule { chain, exprs };
        match chain {
            Chain::Input => rules.push(rule(vec![Expr::IifName("lo".into()), Expr::Accept])),
            _ => {
                rules.extend(
                    spec.excluded_uids
                        .iter()
                        .map(|u| rule(vec![Expr::SkUid(*u), Expr::Accept])),
                );
                rules.push(rule(vec![Expr::Mark(PROXY_MARK), Expr::Accept]));
                rules.push(rule(vec![Expr::OifName("lo".into()), Expr::Accept]));
            }
        }
        rules.extend(spec.excluded_port_rules(chain, Expr::Accept));
        rules.push(reject(chain));
    }
    rules
}
