//! Issue 16: amplification and dead upstreams. Answers for names that are not ours stay
//! within 3x the query over UDP (RFC 8482 ANY, TC beyond), a silent upstream is SERVFAIL
//! within 2 s, and a name answered before is served stale when the upstream stops answering.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use meshdns::Config;
use support::*;
use tokio::net::UdpSocket;

/// A scripted upstream on 127.0.0.1: A queries get 10.9.8.7 with `ttl`, SRV on `wide.example.`
/// gets 30 records (one UDP datagram), `gone.*` NXDOMAIN with a long SOA, anything else
/// NOERROR with no answer. While `alive` is false it reads
/// and ignores every query (a dead or blackholed resolver).
struct Upstream {
    addr: SocketAddr,
    alive: Arc<AtomicBool>,
    seen: Arc<AtomicUsize>,
}

async fn upstream(ttl: u32, alive: bool) -> Upstream {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let alive = Arc::new(AtomicBool::new(alive));
    let seen = Arc::new(AtomicUsize::new(0));
    let (a, n) = (alive.clone(), seen.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((len, src)) = sock.recv_from(&mut buf).await else {
                continue;
            };
            n.fetch_add(1, Ordering::SeqCst);
            if !a.load(Ordering::SeqCst) {
                continue;
            }
            let Ok(q) = Message::from_vec(&buf[..len]) else {
                continue;
            };
            let mut r = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
            r.metadata.recursion_desired = true;
            r.metadata.recursion_available = true;
            r.queries = q.queries.clone();
            if let Some(query) = q.queries.first() {
                let name = query.name().clone();
                match query.query_type() {
                    _ if name.to_ascii().starts_with("gone.") => {
                        // NXDOMAIN with a long SOA, as real zones have.
                        r.metadata.response_code = ResponseCode::NXDomain;
                        let apex = Name::from_ascii("example.").unwrap();
                        let soa = SOA::new(
                            Name::from_ascii("primary-nameserver.hosting-provider.example.")
                                .unwrap(),
                            Name::from_ascii("dns-administrators.hosting-provider.example.")
                                .unwrap(),
                            2026120701,
                            7200,
                            1800,
                            86400,
                            300,
                        );
                        r.authorities
                            .push(Record::from_rdata(apex, 300, RData::SOA(soa)));
                    }
                    RecordType::A => r.answers.push(Record::from_rdata(
                        name,
                        ttl,
                        RData::A(A(Ipv4Addr::new(10, 9, 8, 7))),
                    )),
                    RecordType::SRV if name == Name::from_ascii("wide.example.").unwrap() => {
                        for i in 0..30u16 {
                            let target = Name::from_ascii(format!("t{i}.example.")).unwrap();
                            r.answers.push(Record::from_rdata(
                                name.clone(),
                                ttl,
                                RData::SRV(SRV::new(0, 100, 10_000 + i, target)),
                            ));
                        }
                    }
                    _ => {}
                }
            }
            let _ = sock.send_to(&r.to_vec().unwrap(), src).await;
        }
    });
    Upstream { addr, alive, seen }
}

fn wire_len(m: &Message) -> usize {
    m.to_vec().unwrap().len()
}

#[tokio::test]
async fn any_for_outside_names_is_rfc8482_hinfo_within_3x_and_never_forwarded() {
    let up = upstream(300, true).await;
    let s = start(RECORDS, vec![up.addr]).await;
    for edns in [None, Some(1232), Some(4096)] {
        let q = query("example.", RecordType::ANY, edns);
        let (m, size) = udp(s.addr(), &q).await;
        assert!(
            size <= 3 * wire_len(&q),
            "ANY: {size} bytes for a {}-byte query",
            wire_len(&q)
        );
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(!m.metadata.authoritative);
        assert!(
            matches!(&m.answers[..], [r] if matches!(&r.data, RData::HINFO(h) if &*h.cpu == b"RFC8482" && h.os.is_empty())),
            "{:?}",
            m.answers
        );
    }
    // The replies above came back without a single packet to the upstream.
    assert_eq!(up.seen.load(Ordering::SeqCst), 0, "ANY was forwarded");
}

#[tokio::test]
async fn any_for_mesh_names_is_one_rrset() {
    let s = start(RECORDS, vec![]).await;
    for name in ["backend.", "backend.default.svc.cluster.local."] {
        let q = query(name, RecordType::ANY, None);
        let (m, size) = udp(s.addr(), &q).await;
        assert!(size <= 3 * wire_len(&q), "{name}: {size} bytes");
        assert!(m.metadata.authoritative);
        assert_eq!(ips(&m), vec!["127.240.0.10"], "{name}: the A RRset only");
        assert_eq!(m.answers.len(), 1, "{name}");
    }
}

#[tokio::test]
async fn forwarded_srv_is_within_3x_with_tc_and_whole_over_tcp() {
    let up = upstream(300, true).await;
    let s = start(RECORDS, vec![up.addr]).await;
    for edns in [None, Some(1232), Some(4096)] {
        let q = query("wide.example.", RecordType::SRV, edns);
        let (m, size) = udp(s.addr(), &q).await;
        assert!(
            size <= 3 * wire_len(&q),
            "SRV {edns:?}: {size} bytes for a {}-byte query",
            wire_len(&q)
        );
        assert!(m.metadata.truncation, "SRV {edns:?}: TC");
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        if edns.is_some() {
            assert!(m.edns.is_some(), "the OPT record survives truncation");
        }
    }
    let q = query("wide.example.", RecordType::SRV, None);
    let m = tcp(s.bound.tcp_addr, &q).await;
    assert!(!m.metadata.truncation);
    assert_eq!(srvs(&m).len(), 30, "TCP carries the whole answer");
    // A forwarded NXDOMAIN whose SOA would pass 3x loses the SOA, not its meaning: no TC.
    let q = query("gone.example.", RecordType::A, None);
    let (m, size) = udp(s.addr(), &q).await;
    assert!(size <= 3 * wire_len(&q), "{size} bytes");
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(!m.metadata.truncation);
    let m = tcp(s.bound.tcp_addr, &q).await;
    assert!(
        matches!(m.authorities.first().map(|r| &r.data), Some(RData::SOA(_))),
        "the SOA is there over TCP"
    );
    // A small forwarded answer is whole over UDP.
    let q = query("small.example.", RecordType::A, None);
    let (m, size) = udp(s.addr(), &q).await;
    assert!(size <= 3 * wire_len(&q));
    assert!(!m.metadata.truncation);
    assert_eq!(ips(&m), vec!["10.9.8.7"]);
}

#[tokio::test]
async fn a_silent_upstream_is_servfail_within_2_s() {
    let up = upstream(300, false).await;
    // The default deadline, not the test support's shorter one.
    let s = start_with(RECORDS, vec![up.addr], |cfg| {
        cfg.upstream_timeout = Config::default().upstream_timeout;
    })
    .await;
    let started = Instant::now();
    let (m, _) = udp(s.addr(), &query("dead.example.", RecordType::A, None)).await;
    let took = started.elapsed();
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(
        took < Duration::from_millis(2500),
        "SERVFAIL after {took:?}"
    );
    assert!(up.seen.load(Ordering::SeqCst) > 0, "the upstream was asked");
    // Mesh names do not depend on the upstream.
    assert_eq!(
        resolve(s.addr(), "backend.").await,
        (ResponseCode::NoError, vec!["127.240.0.10".to_string()])
    );
}

#[tokio::test]
async fn a_name_answered_before_is_served_stale_when_the_upstream_dies() {
    let up = upstream(1, true).await;
    let s = start(RECORDS, vec![up.addr]).await;
    assert_eq!(
        resolve(s.addr(), "web.example.").await,
        (ResponseCode::NoError, vec!["10.9.8.7".to_string()])
    );
    up.alive.store(false, Ordering::SeqCst);
    // Until the 1 s TTL runs out the resolver's cache answers; after it the upstream is asked,
    // does not answer, and the stale copy is served with a 30 s TTL. Never SERVFAIL.
    eventually(
        "a stale answer (TTL 30)",
        Duration::from_secs(20),
        || async {
            let (m, _) = udp(s.addr(), &query("web.example.", RecordType::A, None)).await;
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
            assert_eq!(ips(&m), vec!["10.9.8.7"]);
            m.answers[0].ttl == meshdns::forward::STALE_TTL
        },
    )
    .await;
    // A name never answered has nothing stale to serve.
    let (m, _) = udp(s.addr(), &query("never.example.", RecordType::A, None)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
}

#[tokio::test]
async fn mesh_replies_are_whole_and_small() {
    // The policy for our own names: a reply of one record (A, AAAA, SOA, or NXDOMAIN/NODATA
    // with the SOA) is never cut, and is the query plus one record of ours (at most ~80 bytes: the SOA with cluster.local); anything
    // larger (several SRV records, glue) obeys the same 3x bound as forwarded answers.
    let s = start(RECORDS, vec![]).await;
    let cases = [
        ("backend.", RecordType::A, 1),
        ("backend.default.svc.cluster.local.", RecordType::AAAA, 1),
        ("cluster.local.", RecordType::SOA, 1),
        ("nope.data.svc.", RecordType::A, 0),
        ("x.data.svc.", RecordType::A, 0),
        ("x.cluster.local.", RecordType::A, 0),
        ("frontend.", RecordType::AAAA, 0),
        ("_pg._tcp.db.data.", RecordType::SRV, 1),
    ];
    for (name, qtype, answers) in cases {
        for edns in [None, Some(1232)] {
            let q = query(name, qtype, edns);
            let (m, size) = udp(s.addr(), &q).await;
            let qlen = wire_len(&q);
            assert!(!m.metadata.truncation, "{name} {qtype}");
            assert_eq!(m.answers.len(), answers, "{name} {qtype}");
            if answers == 0 {
                assert!(
                    matches!(m.authorities.first().map(|r| &r.data), Some(RData::SOA(_))),
                    "{name} {qtype}: SOA kept"
                );
            }
            assert!(
                size <= 3 * qlen || size <= qlen + 80,
                "{name} {qtype} {edns:?}: {size} bytes for {qlen}"
            );
        }
    }
}
