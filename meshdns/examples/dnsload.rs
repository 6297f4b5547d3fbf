//! A bounded DNS load generator and a trivial UDP echo server, for `bench/dns/run`.
//!
//! - `dnsload records N`: prints a records file with N services (`svc0`..`svcN-1`).
//! - `dnsload echo ADDR`: a one-thread UDP server that sends every datagram back with the QR
//!   bit set; the baseline a DNS server is compared against.
//! - `dnsload load ADDR SECONDS INFLIGHT N`: keeps INFLIGHT queries outstanding for SECONDS
//!   against ADDR, cycling through the four name forms of N services, and prints one line:
//!   `qps=... p50_us=... p99_us=... sent=... answered=... lost=... bad=...`.
//!
//! Closed loop on one thread: each reply releases one new query, so the client measures the
//! server's capacity rather than queueing in the socket buffer; a 200 ms silence counts the
//! outstanding queries as lost and refills the window.
#![forbid(unsafe_code)]

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_else(|| usage());
    match arg(0) {
        "records" => records(arg(1).parse().unwrap_or_else(|_| usage())),
        "echo" => echo(arg(1).parse().unwrap_or_else(|_| usage())),
        "load" => load(
            arg(1).parse().unwrap_or_else(|_| usage()),
            Duration::from_secs(arg(2).parse().unwrap_or_else(|_| usage())),
            arg(3).parse().unwrap_or_else(|_| usage()),
            arg(4).parse().unwrap_or_else(|_| usage()),
        ),
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!("usage: dnsload records N | echo ADDR | load ADDR SECONDS INFLIGHT N");
    std::process::exit(2)
}

fn records(n: u32) {
    println!("services:");
    for i in 0..n {
        println!(
            "  - {{ name: svc{i}, vip: 127.240.{}.{}, ports: [{{ name: http, port: 8080 }}] }}",
            (i + 1) / 250,
            (i + 1) % 250 + 1
        );
    }
}

fn echo(addr: SocketAddr) {
    let sock = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    let mut buf = [0u8; 4096];
    loop {
        if let Ok((n, peer)) = sock.recv_from(&mut buf) {
            if n > 2 {
                buf[2] |= 0x80;
            }
            let _ = sock.send_to(&buf[..n], peer);
        }
    }
}

fn queries(n: u32) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for i in 0..n.max(1) {
        for form in [
            format!("svc{i}."),
            format!("svc{i}.default."),
            format!("svc{i}.default.svc."),
            format!("svc{i}.default.svc.cluster.local."),
        ] {
            let mut m = Message::new(0, MessageType::Query, OpCode::Query);
            m.metadata.recursion_desired = true;
            m.add_query(Query::query(
                Name::from_ascii(&form).unwrap_or_else(|_| usage()),
                RecordType::A,
            ));
            out.push(m.to_vec().unwrap_or_else(|e| panic!("encode: {e}")));
        }
    }
    out
}

fn load(addr: SocketAddr, duration: Duration, inflight: usize, n: u32) {
    let packets = queries(n);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    sock.connect(addr)
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap_or_else(|e| panic!("{e}"));
    let inflight = inflight.clamp(1, 4096);
    let mut sent_at: Vec<Option<Instant>> = vec![None; 65536];
    let mut latencies_us: Vec<u32> = Vec::with_capacity(1 << 20);
    let (mut next_id, mut outstanding, mut sent, mut answered, mut lost, mut bad) =
        (0u16, 0usize, 0u64, 0u64, 0u64, 0u64);
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    let end = start + duration;
    let send = |sock: &UdpSocket, sent_at: &mut Vec<Option<Instant>>, next_id: &mut u16| {
        let mut p = packets[(*next_id as usize) % packets.len()].clone();
        p[..2].copy_from_slice(&next_id.to_be_bytes());
        sent_at[*next_id as usize] = Some(Instant::now());
        let ok = sock.send(&p).is_ok();
        *next_id = next_id.wrapping_add(1);
        ok
    };
    while Instant::now() < end {
        while outstanding < inflight {
            if send(&sock, &mut sent_at, &mut next_id) {
                outstanding += 1;
                sent += 1;
            }
        }
        match sock.recv(&mut buf) {
            Ok(len) if len >= 12 => {
                let id = u16::from_be_bytes([buf[0], buf[1]]);
                let Some(t) = sent_at[id as usize].take() else {
                    continue;
                };
                outstanding -= 1;
                answered += 1;
                latencies_us.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                let rcode_ok = buf[3] & 0x0F == 0 && buf[2] & 0x02 == 0; // NOERROR, not truncated
                if !rcode_ok {
                    bad += 1;
                }
            }
            Ok(_) => bad += 1,
            Err(_) => {
                lost += outstanding as u64;
                outstanding = 0;
                sent_at.iter_mut().for_each(|s| *s = None);
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies_us.sort_unstable();
    let pct = |p: f64| {
        latencies_us
            .get(
                ((latencies_us.len() as f64 * p) as usize)
                    .min(latencies_us.len().saturating_sub(1)),
            )
            .copied()
            .unwrap_or(0)
    };
    println!(
        "qps={:.0} p50_us={} p99_us={} sent={sent} answered={answered} lost={lost} bad={bad}",
        answered as f64 / elapsed,
        pct(0.50),
        pct(0.99)
    );
}
