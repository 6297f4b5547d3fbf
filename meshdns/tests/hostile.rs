//! Malformed and hostile packets: FORMERR or silence, never a crash, never a reply larger
//! than the query for names that are not ours; the next good query is still answered.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use meshdns::handler::{MeshHandler, handle_packet};
use rand::{Rng, SeedableRng};
use support::*;

const QUIET: Duration = Duration::from_millis(200);

/// A 12-byte header: id 0x1234, RD, the given question count.
fn header(qdcount: u16) -> Vec<u8> {
    let mut h = vec![0x12, 0x34, 0x01, 0x00];
    h.extend_from_slice(&qdcount.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    h
}

/// Sends `packet`; the reply, if any, must be small and FORMERR/NOTIMP/REFUSED; then a good
/// query must still be answered.
async fn survives(addr: SocketAddr, what: &str, packet: &[u8]) {
    if let Some(reply) = udp_raw(addr, packet, QUIET).await {
        assert!(
            reply.len() <= packet.len().max(12) + 11,
            "{what}: {} byte reply to {} bytes",
            reply.len(),
            packet.len()
        );
        if let Ok(m) = Message::from_vec(&reply) {
            assert!(
                matches!(
                    m.metadata.response_code,
                    ResponseCode::FormErr | ResponseCode::NotImp | ResponseCode::Refused
                ),
                "{what}: {:?}",
                m.metadata.response_code
            );
        }
    }
    assert_eq!(
        resolve(addr, "backend.").await.1,
        vec!["127.240.0.10"],
        "server still answers after {what}"
    );
}

#[tokio::test]
async fn garbage_gets_formerr_or_silence() {
    let s = start(RECORDS, vec![]).await;
    let addr = s.addr();

    survives(addr, "empty packet", &[]).await;
    survives(addr, "truncated header", &[0x12, 0x34, 0x01]).await;
    survives(addr, "header only, 1 question promised", &header(1)).await;

    // 1,000 questions: FORMERR that echoes none of them.
    let mut many = header(1000);
    for _ in 0..1000 {
        many.extend_from_slice(&[1, b'a', 0, 0, 1, 0, 1]);
    }
    let reply = udp_raw(addr, &many, Duration::from_secs(2))
        .await
        .expect("FORMERR expected");
    let m = Message::from_vec(&reply).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    assert!(reply.len() <= 12 + 11, "{} bytes", reply.len());
    survives(addr, "1000 questions", &many).await;

    // Compression pointer loops: a name pointing at itself, and two names pointing at each other.
    let mut selfloop = header(1);
    selfloop.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
    survives(addr, "self-referencing name", &selfloop).await;
    let mut pingpong = header(1);
    pingpong.extend_from_slice(&[1, b'a', 0xC0, 16, 1, b'b', 0xC0, 12, 0, 1, 0, 1]);
    survives(addr, "pointer ping-pong", &pingpong).await;

    // A label longer than 63 bytes, a name longer than 255, a pointer forward past the end.
    let mut long_label = header(1);
    long_label.push(64);
    long_label.extend(std::iter::repeat_n(b'x', 64));
    long_label.extend_from_slice(&[0, 0, 1, 0, 1]);
    survives(addr, "64-byte label", &long_label).await;
    let mut long_name = header(1);
    for _ in 0..60 {
        long_name.extend_from_slice(&[5, b'a', b'b', b'c', b'd', b'e']);
    }
    long_name.extend_from_slice(&[0, 0, 1, 0, 1]);
    survives(addr, "300-byte name", &long_name).await;
    let mut forward = header(1);
    forward.extend_from_slice(&[0xC0, 0xFF, 0, 1, 0, 1]);
    survives(addr, "pointer past the end", &forward).await;

    // A response (QR=1) is never answered: no reflection loops between servers.
    let mut response = query("backend.", RecordType::A, None).to_vec().unwrap();
    response[2] |= 0x80;
    assert!(
        udp_raw(addr, &response, QUIET).await.is_none(),
        "answered a response"
    );

    // Non-query opcodes (NOTIFY, UPDATE) get NOTIMP.
    let mut update = query("backend.", RecordType::A, None).to_vec().unwrap();
    update[2] = (update[2] & 0x87) | (5 << 3);
    survives(addr, "UPDATE", &update).await;

    // Random bytes, seeded so a failure reproduces.
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    for i in 0..200 {
        let len = rng.random_range(0..600);
        let mut packet: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if packet.len() > 2 {
            packet[2] &= 0x7F; // mostly "queries", so they reach the parser
        }
        if let Some(reply) = udp_raw(addr, &packet, Duration::from_millis(20)).await {
            assert!(
                reply.len() <= packet.len().max(12) + 11,
                "random packet {i}: reply {} > query {}",
                reply.len(),
                packet.len()
            );
        }
    }
    assert_eq!(resolve(addr, "backend.").await.1, vec!["127.240.0.10"]);

    // TCP: a garbage frame and a short frame do not take the server down.
    use tokio::io::AsyncWriteExt;
    let mut t = tokio::net::TcpStream::connect(s.bound.tcp_addr)
        .await
        .unwrap();
    t.write_all(&[0, 5, 1, 2, 3, 4, 5, 0xff, 0xff])
        .await
        .unwrap();
    drop(t);
    assert_eq!(
        tcp(s.bound.tcp_addr, &query("backend.", RecordType::A, None))
            .await
            .answers
            .len(),
        1
    );
}

#[tokio::test]
async fn request_path_never_panics_on_random_input() {
    // The fuzz target's code path, run on a bounded seeded corpus in the normal test suite.
    let records = meshapi::dns::Records::from_yaml(RECORDS, "t").unwrap();
    let handle = meshdns::reload::RecordsHandle::new(records).unwrap();
    let forwarder = meshdns::forward::Forwarder::new(&[], Duration::from_millis(10)).unwrap();
    let handler = MeshHandler::new(handle.zone(), forwarder, 1232);
    let src: SocketAddr = "127.0.0.1:5000".parse().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let good = query(
        "_http._tcp.backend.default.svc.cluster.local.",
        RecordType::SRV,
        Some(1232),
    )
    .to_vec()
    .unwrap();
    for _ in 0..3000 {
        // Mutate a valid query so most inputs get past the header.
        let mut p = good.clone();
        for _ in 0..rng.random_range(1..6) {
            let i = rng.random_range(0..p.len());
            p[i] = rng.random();
        }
        p.truncate(rng.random_range(0..=p.len()));
        for proto in [
            hickory_server::net::xfer::Protocol::Udp,
            hickory_server::net::xfer::Protocol::Tcp,
        ] {
            if let Some(reply) = handle_packet(&handler, &p, src, proto).await {
                Message::from_vec(&reply).expect("every reply decodes");
                if proto == hickory_server::net::xfer::Protocol::Udp {
                    assert!(reply.len() <= 1232);
                }
            }
        }
    }
}
