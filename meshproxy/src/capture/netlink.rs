//! nf_tables over `NETLINK_NETFILTER`, by hand: the few message and expression encodings the
//! capture rules need, one batch (one kernel transaction) per call, and the kernel's acks read
//! back per message so an error names the rule it belongs to.
//!
//! No C library (libnftnl/libmnl) and no `unsafe`: the socket is socket2's, the bytes are
//! built here. Layouts follow `linux/netlink.h`, `linux/netfilter/nfnetlink.h` and
//! `linux/netfilter/nf_tables.h`: netlink and attribute headers in host byte order, nf_tables
//! numbers (u32 attributes, ports, addresses) in network byte order.

use std::io::Read;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

// linux/netlink.h
const AF_NETLINK: i32 = 16;
const NETLINK_NETFILTER: i32 = 12;
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
// linux/netfilter/nfnetlink.h
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFGENMSG_LEN: usize = 4;
/// `NFPROTO_IPV4`: the `ip` family.
pub const FAMILY_IP: u8 = 2;
pub const FAMILY_IP6: u8 = 10;
// linux/netfilter/nf_tables.h: message types
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
// attributes
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_REDIR_REG_PROTO_MIN: u16 = 1;
const NFTA_REDIR_FLAGS: u16 = 3;
// values
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_RETURN: i32 = -5;
const NFT_CMP_EQ: u32 = 0;
const NFT_META_MARK: u32 = 3;
const NFT_META_IIFNAME: u32 = 6;
const NFT_META_OIFNAME: u32 = 7;
const NFT_META_SKUID: u32 = 10;
const NFT_META_L4PROTO: u32 = 16;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NF_DROP: i32 = 0;
const NF_ACCEPT: u32 = 1;
const NFTA_REJECT_TYPE: u16 = 1;
const NFT_REJECT_TCP_RST: u32 = 1;
/// `NF_NAT_RANGE_PROTO_SPECIFIED` (linux/netfilter/nf_nat.h): the redirect carries a port.
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
const IFNAMSIZ: usize = 16;
const IPPROTO_TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// How long to wait for the kernel's answer to a batch.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// One step of a rule, in the order the kernel evaluates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `meta l4proto tcp`.
    L4ProtoTcp,
    /// `iifname "NAME"`.
    IifName(String),
    /// `oifname "NAME"`.
    OifName(String),
    /// `meta skuid UID`.
    SkUid(u32),
    /// `tcp dport PORT` (needs [`Expr::L4ProtoTcp`] before it).
    TcpDport(u16),
    /// `tcp flags syn / syn,ack`: a connection's first segment (needs [`Expr::L4ProtoTcp`]
    /// before it).
    TcpSyn,
    /// `meta mark MARK` (the socket mark the proxy puts on its own connections).
    Mark(u32),
    /// `ip daddr NET/PREFIX`.
    Ip4Daddr { net: [u8; 4], mask: [u8; 4] },
    /// `ip saddr NET/PREFIX`.
    Ip4Saddr { net: [u8; 4], mask: [u8; 4] },
    /// `return`.
    Return,
    /// `redirect to :PORT`.
    RedirectTo(u16),
    /// `accept` (filter chains).
    Accept,
    /// `drop` (filter chains).
    Drop,
    /// `reject with tcp reset` (needs [`Expr::L4ProtoTcp`] before it; filter chains).
    RejectTcpReset,
}

/// A hook a base chain attaches to (`enum nf_inet_hooks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting = 0,
    Input = 1,
    Output = 3,
}

/// The type of a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainType {
    Nat,
    Filter,
}

/// Why a batch failed, before the caller adds which rule it was.
#[derive(Debug)]
pub enum NlError {
    /// Socket creation, send or receive.
    Io(std::io::Error),
    /// The kernel answered message `index` (0-based, in the order queued) with this errno;
    /// `None` when it refused the batch as a whole (no CAP_NET_ADMIN is answered that way).
    Refused { index: Option<usize>, errno: i32 },
    /// Some messages got no answer within the timeout.
    NoAnswer,
    /// A reply that does not parse.
    Malformed(&'static str),
    /// A message would exceed netlink's 64 KiB attribute limit.
    TooLarge,
}

/// Attribute writer with nesting; lengths are patched when a nest closes.
#[derive(Default)]
struct Attrs {
    buf: Vec<u8>,
    too_large: bool,
}

impl Attrs {
    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn put(&mut self, ty: u16, data: &[u8]) {
        let len = 4 + data.len();
        let Ok(len) = u16::try_from(len) else {
            self.too_large = true;
            return;
        };
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn str(&mut self, ty: u16, s: &str) {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.put(ty, &v);
    }

    fn u32(&mut self, ty: u16, v: u32) {
        self.put(ty, &v.to_be_bytes());
    }

    fn nested(&mut self, ty: u16, f: impl FnOnce(&mut Attrs)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        f(self);
        match u16::try_from(self.buf.len() - start) {
            Ok(len) => self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes()),
            Err(_) => self.too_large = true,
        }
    }

    /// `NFTA_*_DATA { NFTA_DATA_VALUE bytes }`.
    fn data(&mut self, ty: u16, value: &[u8]) {
        self.nested(ty, |d| d.put(NFTA_DATA_VALUE, value));
    }

    /// One `NFTA_LIST_ELEM { name, data }` of a rule's expression list.
    fn expr(&mut self, name: &str, f: impl FnOnce(&mut Attrs)) {
        self.nested(NFTA_LIST_ELEM, |e| {
            e.str(NFTA_EXPR_NAME, name);
            e.nested(NFTA_EXPR_DATA, f);
        });
    }

    fn meta(&mut self, key: u32) {
        self.expr("meta", |a| {
            a.u32(NFTA_META_DREG, NFT_REG_1);
            a.u32(NFTA_META_KEY, key);
        });
    }

    fn cmp(&mut self, op: u32, value: &[u8]) {
        self.expr("cmp", |a| {
            a.u32(NFTA_CMP_SREG, NFT_REG_1);
            a.u32(NFTA_CMP_OP, op);
            a.data(NFTA_CMP_DATA, value);
        });
    }

    fn payload(&mut self, base: u32, offset: u32, len: u32) {
        self.expr("payload", |a| {
            a.u32(NFTA_PAYLOAD_DREG, NFT_REG_1);
            a.u32(NFTA_PAYLOAD_BASE, base);
            a.u32(NFTA_PAYLOAD_OFFSET, offset);
            a.u32(NFTA_PAYLOAD_LEN, len);
        });
    }

    /// The IPv4 address at `offset` in the network header (12 source, 16 destination)
    /// within `net/mask`; a full mask compares without the bitwise step, as nft does.
    fn ip4_addr(&mut self, offset: u32, net: &[u8; 4], mask: &[u8; 4]) {
        self.payload(NFT_PAYLOAD_NETWORK_HEADER, offset, 4);
        if *mask != [0xff; 4] {
            self.expr("bitwise", |a| {
                a.u32(NFTA_BITWISE_SREG, NFT_REG_1);
                a.u32(NFTA_BITWISE_DREG, NFT_REG_1);
                a.u32(NFTA_BITWISE_LEN, 4);
                a.data(NFTA_BITWISE_MASK, mask);
                a.data(NFTA_BITWISE_XOR, &[0; 4]);
            });
        }
        self.cmp(NFT_CMP_EQ, net);
    }

    fn ifname(&mut self, key: u32, name: &str) {
        self.meta(key);
        let mut v = [0u8; IFNAMSIZ];
        let n = name.len().min(IFNAMSIZ - 1);
        v[..n].copy_from_slice(&name.as_bytes()[..n]);
        self.cmp(NFT_CMP_EQ, &v);
    }

    fn verdict(&mut self, code: i32) {
        self.expr("immediate", |a| {
            a.u32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
            a.nested(NFTA_IMMEDIATE_DATA, |d| {
                d.nested(NFTA_DATA_VERDICT, |v| {
                    v.put(NFTA_VERDICT_CODE, &code.to_be_bytes())
                })
            });
        });
    }

    fn rule_expr(&mut self, e: &Expr) {
        match e {
            Expr::L4ProtoTcp => {
                self.meta(NFT_META_L4PROTO);
                self.cmp(NFT_CMP_EQ, &[IPPROTO_TCP]);
            }
            Expr::IifName(name) => self.ifname(NFT_META_IIFNAME, name),
            Expr::OifName(name) => self.ifname(NFT_META_OIFNAME, name),
            Expr::SkUid(uid) => {
                self.meta(NFT_META_SKUID);
                // skuid is compared in host byte order.
                self.cmp(NFT_CMP_EQ, &uid.to_ne_bytes());
            }
            Expr::TcpDport(port) => {
                self.payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
                self.cmp(NFT_CMP_EQ, &port.to_be_bytes());
            }
            Expr::TcpSyn => {
                self.payload(NFT_PAYLOAD_TRANSPORT_HEADER, 13, 1);
                self.expr("bitwise", |a| {
                    a.u32(NFTA_BITWISE_SREG, NFT_REG_1);
                    a.u32(NFTA_BITWISE_DREG, NFT_REG_1);
                    a.u32(NFTA_BITWISE_LEN, 1);
                    a.data(NFTA_BITWISE_MASK, &[TCP_SYN | TCP_ACK]);
                    a.data(NFTA_BITWISE_XOR, &[0]);
                });
                self.cmp(NFT_CMP_EQ, &[TCP_SYN]);
            }
            Expr::Mark(mark) => {
                self.meta(NFT_META_MARK);
                // The mark is compared in host byte order.
                self.cmp(NFT_CMP_EQ, &mark.to_ne_bytes());
            }
            Expr::Ip4Daddr { net, mask } => self.ip4_addr(16, net, mask),
            Expr::Ip4Saddr { net, mask } => self.ip4_addr(12, net, mask),
            Expr::Return => self.verdict(NFT_RETURN),
            Expr::Accept => self.verdict(NF_ACCEPT as i32),
            Expr::Drop => self.verdict(NF_DROP),
            Expr::RejectTcpReset => self.expr("reject", |a| {
                a.u32(NFTA_REJECT_TYPE, NFT_REJECT_TCP_RST);
            }),
            Expr::RedirectTo(port) => {
                self.expr("immediate", |a| {
                    a.u32(NFTA_IMMEDIATE_DREG, NFT_REG_1);
                    a.data(NFTA_IMMEDIATE_DATA, &port.to_be_bytes());
                });
                self.expr("redir", |a| {
                    a.u32(NFTA_REDIR_REG_PROTO_MIN, NFT_REG_1);
                    a.u32(NFTA_REDIR_FLAGS, NF_NAT_RANGE_PROTO_SPECIFIED);
                });
            }
        }
    }
}

/// One nf_tables transaction: messages queued in order, sent between BATCH_BEGIN and
/// BATCH_END so the kernel applies all or none.
pub struct Batch {
    /// The family of the messages queued next ([`Batch::family`]).
    family: u8,
    msgs: Vec<(u8, u16, u16, Attrs)>,
}

impl Batch {
    pub fn new(family: u8) -> Batch {
        Batch {
            family,
            msgs: Vec::new(),
        }
    }

    /// The address family (`FAMILY_IP`, `FAMILY_IP6`) of the messages queued from now on: one
    /// transaction may hold tables of several families.
    pub fn family(&mut self, family: u8) {
        self.family = family;
    }

    /// Number of messages queued so far; the index the next one gets in [`NlError::Refused`].
    pub fn queued(&self) -> usize {
        self.msgs.len()
    }

    /// Creates the table, or does nothing if it exists (no `NLM_F_EXCL`).
    pub fn new_table(&mut self, table: &str) {
        let mut a = Attrs::default();
        a.str(NFTA_TABLE_NAME, table);
        self.msgs
            .push((self.family, NFT_MSG_NEWTABLE, NLM_F_CREATE, a));
    }

    /// Deletes the table with its chains and rules (ENOENT if it does not exist).
    pub fn del_table(&mut self, table: &str) {
        let mut a = Attrs::default();
        a.str(NFTA_TABLE_NAME, table);
        self.msgs.push((self.family, NFT_MSG_DELTABLE, 0, a));
    }

    /// A `type nat` base chain on `hook` with policy accept.
    pub fn new_nat_chain(&mut self, table: &str, chain: &str, hook: Hook, priority: i32) {
        self.new_base_chain(table, chain, hook, priority, ChainType::Nat);
    }

    /// A base chain of `kind` on `hook` with policy accept.
    pub fn new_base_chain(
        &mut self,
        table: &str,
        chain: &str,
        hook: Hook,
        priority: i32,
        kind: ChainType,
    ) {
        let mut a = Attrs::default();
        a.str(NFTA_CHAIN_TABLE, table);
        a.str(NFTA_CHAIN_NAME, chain);
        a.nested(NFTA_CHAIN_HOOK, |h| {
            h.u32(NFTA_HOOK_HOOKNUM, hook as u32);
            h.put(NFTA_HOOK_PRIORITY, &priority.to_be_bytes());
        });
        a.u32(NFTA_CHAIN_POLICY, NF_ACCEPT);
        a.str(
            NFTA_CHAIN_TYPE,
            match kind {
                ChainType::Nat => "nat",
                ChainType::Filter => "filter",
            },
        );
        self.msgs
            .push((self.family, NFT_MSG_NEWCHAIN, NLM_F_CREATE, a));
    }

    /// Appends a rule to `chain`.
    pub fn new_rule(&mut self, table: &str, chain: &str, exprs: &[Expr]) {
        let mut a = Attrs::default();
        a.str(NFTA_RULE_TABLE, table);
        a.str(NFTA_RULE_CHAIN, chain);
        a.nested(NFTA_RULE_EXPRESSIONS, |l| {
            for e in exprs {
                l.rule_expr(e);
            }
        });
        self.msgs
            .push((self.family, NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, a));
    }

    /// The datagram: BATCH_BEGIN, each message with `NLM_F_ACK` and sequence `first_seq + i`,
    /// BATCH_END.
    pub fn encode(&self, first_seq: u32) -> Result<Vec<u8>, NlError> {
        let mut out = Vec::new();
        let end_seq = first_seq.wrapping_add(self.msgs.len() as u32);
        header(
            &mut out,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            first_seq.wrapping_sub(1),
            0,
            NFNL_SUBSYS_NFTABLES,
            &[],
        )?;
        for (i, (family, ty, flags, attrs)) in self.msgs.iter().enumerate() {
            if attrs.too_large {
                return Err(NlError::TooLarge);
            }
            header(
                &mut out,
                (NFNL_SUBSYS_NFTABLES << 8) | ty,
                NLM_F_REQUEST | NLM_F_ACK | flags,
                first_seq.wrapping_add(i as u32),
                *family,
                0,
                &attrs.buf,
            )?;
        }
        header(
            &mut out,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            end_seq,
            0,
            NFNL_SUBSYS_NFTABLES,
            &[],
        )?;
        Ok(out)
    }

    /// Sends the batch and waits for every message's answer. `Ok` only when the kernel
    /// acknowledged all of them (then the transaction is committed).
    pub fn commit(&self) -> Result<(), NlError> {
        if self.msgs.is_empty() {
            return Ok(());
        }
        let sock = Socket::new(
            Domain::from(AF_NETLINK),
            Type::RAW,
            Some(Protocol::from(NETLINK_NETFILTER)),
        )
        .map_err(NlError::Io)?;
        sock.set_read_timeout(Some(ACK_TIMEOUT))
            .map_err(NlError::Io)?;
        // Sequence numbers only need to be unique on this socket, which is ours alone.
        let first_seq = 1;
        let bytes = self.encode(first_seq)?;
        sock.send(&bytes).map_err(NlError::Io)?;
        let mut answered = vec![false; self.msgs.len()];
        let mut first_error: Option<(Option<usize>, i32)> = None;
        let mut buf = vec![0u8; 64 * 1024];
        while answered.iter().any(|a| !a) {
            let n = match (&sock).read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(e) => return Err(NlError::Io(e)),
            };
            for (seq, errno) in parse_acks(&buf[..n])? {
                if seq == first_seq.wrapping_sub(1) && errno != 0 {
                    // The batch header itself was refused: nothing else will be answered.
                    return Err(NlError::Refused { index: None, errno });
                }
                let Some(i) = seq.checked_sub(first_seq).map(|i| i as usize) else {
                    continue;
                };
                let Some(slot) = answered.get_mut(i) else {
                    continue;
                };
                *slot = true;
                if errno != 0 && first_error.is_none_or(|(j, _)| Some(i) < j) {
                    first_error = Some((Some(i), errno));
                }
            }
        }
        if let Some((index, errno)) = first_error {
            return Err(NlError::Refused { index, errno });
        }
        if answered.iter().any(|a| !a) {
            return Err(NlError::NoAnswer);
        }
        Ok(())
    }
}

fn header(
    out: &mut Vec<u8>,
    ty: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[u8],
) -> Result<(), NlError> {
    let len =
        u32::try_from(NLMSG_HDRLEN + NFGENMSG_LEN + attrs.len()).map_err(|_| NlError::TooLarge)?;
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    // struct nfgenmsg: family, version (NFNETLINK_V0), res_id (big endian).
    out.push(family);
    out.push(0);
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(attrs);
    Ok(())
}

fn ne_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn ne_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// `(sequence, errno)` for every `NLMSG_ERROR` in a datagram (errno 0 is an ACK). Other
/// message types (`NLMSG_DONE`, notifications) are skipped.
pub fn parse_acks(mut b: &[u8]) -> Result<Vec<(u32, i32)>, NlError> {
    let mut acks = Vec::new();
    while b.len() >= NLMSG_HDRLEN {
        let len = ne_u32(b, 0).ok_or(NlError::Malformed("short header"))? as usize;
        if len < NLMSG_HDRLEN || len > b.len() {
            return Err(NlError::Malformed("message length out of bounds"));
        }
        let ty = ne_u16(b, 4).ok_or(NlError::Malformed("short header"))?;
        let seq = ne_u32(b, 8).ok_or(NlError::Malformed("short header"))?;
        if ty == NLMSG_ERROR {
            // struct nlmsgerr { int error; struct nlmsghdr msg; ... }
            let code = ne_u32(b, NLMSG_HDRLEN).ok_or(NlError::Malformed("short error"))?;
            acks.push((seq, (code as i32).saturating_neg()));
        }
        let step = len.div_ceil(4) * 4;
        b = b.get(step..).unwrap_or_default();
    }
    Ok(acks)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attribute walker the kernel would run: (type without flags, payload) pairs.
    fn attrs(mut b: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        while b.len() >= 4 {
            let len = ne_u16(b, 0).unwrap() as usize;
            let ty = ne_u16(b, 2).unwrap() & !NLA_F_NESTED;
            out.push((ty, b[4..len].to_vec()));
            b = &b[len.div_ceil(4) * 4..];
        }
        out
    }

    #[test]
    fn batch_frames_every_message_with_acks_and_sequence() {
        let mut batch = Batch::new(FAMILY_IP);
        batch.new_table("meshctl");
        batch.del_table("meshctl");
        let bytes = batch.encode(7).unwrap();
        // begin (20) + 2 * (20 + 12: "meshctl\0" attribute) + end (20)
        assert_eq!(bytes.len(), 20 + 2 * 32 + 20);
        let begin_res_id = u16::from_be_bytes([bytes[18], bytes[19]]);
        assert_eq!(begin_res_id, NFNL_SUBSYS_NFTABLES);
        let ty = ne_u16(&bytes, 20 + 4).unwrap();
        assert_eq!(ty, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE);
        let flags = ne_u16(&bytes, 20 + 6).unwrap();
        assert_eq!(flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE);
        assert_eq!(ne_u32(&bytes, 20 + 8), Some(7));
        assert_eq!(ne_u32(&bytes, 52 + 8), Some(8));
        assert_eq!(bytes[20 + 16], FAMILY_IP);
        assert_eq!(
            attrs(&bytes[20 + 20..52]),
            vec![(NFTA_TABLE_NAME, b"meshctl\0".to_vec())]
        );
        assert_eq!(ne_u16(&bytes, 84 + 4), Some(NFNL_MSG_BATCH_END));
    }

    #[test]
    fn redirect_encodes_port_in_network_order_and_proto_flag() {
        let mut a = Attrs::default();
        a.rule_expr(&Expr::RedirectTo(15001));
        let elems = attrs(&a.buf);
        assert_eq!(elems.len(), 2);
        let imm = attrs(&elems[0].1);
        assert_eq!(imm[0], (NFTA_EXPR_NAME, b"immediate\0".to_vec()));
        let data = attrs(&imm[1].1);
        assert_eq!(
            data[0],
            (NFTA_IMMEDIATE_DREG, NFT_REG_1.to_be_bytes().to_vec())
        );
        assert_eq!(attrs(&data[1].1), vec![(NFTA_DATA_VALUE, vec![0x3a, 0x99])]);
        let redir = attrs(&elems[1].1);
        assert_eq!(redir[0], (NFTA_EXPR_NAME, b"redir\0".to_vec()));
        assert_eq!(
            attrs(&redir[1].1)[1],
            (NFTA_REDIR_FLAGS, 2u32.to_be_bytes().to_vec())
        );
    }

    /// A kernel answer: `struct nlmsgerr` with the echoed request header.
    fn nlmsgerr(seq: u32, error: i32) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(16u32 + 4 + 16).to_ne_bytes());
        raw.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        raw.extend_from_slice(&0u16.to_ne_bytes());
        raw.extend_from_slice(&seq.to_ne_bytes());
        raw.extend_from_slice(&0u32.to_ne_bytes());
        raw.extend_from_slice(&error.to_ne_bytes());
        raw.extend_from_slice(&[0; 16]);
        raw
    }

    #[test]
    fn acks_parse_and_bad_replies_are_errors_not_panics() {
        let mut both = nlmsgerr(3, 0);
        both.extend_from_slice(&nlmsgerr(4, -1));
        assert_eq!(parse_acks(&both).unwrap(), vec![(3, 0), (4, 1)]);
        for cut in 0..both.len() {
            let _ = parse_acks(&both[..cut]);
        }
        let mut lying = nlmsgerr(5, 0);
        lying[0..4].copy_from_slice(&9999u32.to_ne_bytes());
        assert!(matches!(parse_acks(&lying), Err(NlError::Malformed(_))));
        let mut tiny = nlmsgerr(5, 0);
        tiny[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(matches!(parse_acks(&tiny), Err(NlError::Malformed(_))));
    }
}
