//! meshdns against real DNS clients on loopback: name forms, SRV, NXDOMAIN, forwarding to a
//! second meshdns, TCP, truncation, hickory-resolver and `dig`.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use support::*;

#[tokio::test]
async fn every_name_form_resolves_to_the_vip() {
    let s = start(RECORDS, vec![]).await;
    let cases = [
        ("backend.", "127.240.0.10"),
        ("backend.default.", "127.240.0.10"),
        ("backend.default.svc.", "127.240.0.10"),
        ("backend.default.svc.cluster.local.", "127.240.0.10"),
        ("BackEnd.Default.SVC.cluster.local.", "127.240.0.10"),
        ("frontend.", "127.240.0.11"),
        ("db.data.", "127.240.0.12"),
        ("db.data.svc.cluster.local.", "127.240.0.12"),
    ];
    for (name, vip) in cases {
        let (m, _) = udp(s.addr(), &query(name, RecordType::A, None)).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        assert!(m.metadata.authoritative, "{name}");
        assert_eq!(ips(&m), vec![vip.to_string()], "{name}");
    }
    // AAAA: the v6 VIP when declared, else NOERROR with no answer and the SOA.
    let (m, _) = udp(s.addr(), &query("backend.", RecordType::AAAA, None)).await;
    assert_eq!(ips(&m), vec!["fd00::10".to_string()]);
    let (m, _) = udp(
        s.addr(),
        &query(
            "frontend.default.svc.cluster.local.",
            RecordType::AAAA,
            None,
        ),
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert!(matches!(m.authorities[0].data, RData::SOA(_)));
}

#[tokio::test]
async fn srv_records_for_declared_ports() {
    let s = start(RECORDS, vec![]).await;
    let http = "_http._tcp.backend.default.svc.cluster.local.";
    let (m, _) = udp(s.addr(), &query(http, RecordType::SRV, Some(1232))).await;
    assert_eq!(
        srvs(&m),
        vec![(8080, "backend.default.svc.cluster.local.".to_string())]
    );
    let glue = |m: &hickory_proto::op::Message| -> Vec<String> {
        m.additionals
            .iter()
            .filter_map(|r| r.data.ip_addr())
            .map(|i| i.to_string())
            .collect()
    };
    assert_eq!(glue(&m), vec!["127.240.0.10", "fd00::10"]);
    // Without EDNS the query is smaller and the glue would take the answer past 3x the
    // query: the glue is left out (optional data, no TC), the SRV stays.
    let q = query(http, RecordType::SRV, None);
    let (m, size) = udp(s.addr(), &q).await;
    assert!(size <= 3 * q.to_vec().unwrap().len(), "{size} bytes");
    assert!(!m.metadata.truncation);
    assert_eq!(srvs(&m).len(), 1);
    assert!(glue(&m).is_empty());
    let (m, _) = udp(s.addr(), &query("_pg._tcp.db.data.", RecordType::SRV, None)).await;
    assert_eq!(
        srvs(&m),
        vec![(5432, "db.data.svc.cluster.local.".to_string())]
    );
    // All ports on the service name itself, as Kubernetes does.
    let name = "backend.default.svc.cluster.local.";
    let (m, _) = udp(s.addr(), &query(name, RecordType::SRV, Some(1232))).await;
    let mut ports: Vec<u16> = srvs(&m).into_iter().map(|(p, _)| p).collect();
    ports.sort();
    assert_eq!(ports, vec![8080, 9090]);
    assert!(!m.metadata.truncation);
    // Without EDNS two SRV records (targets are never compressed) are more than 3x the
    // query: TC over UDP, the whole answer over TCP.
    let q = query(name, RecordType::SRV, None);
    let (m, size) = udp(s.addr(), &q).await;
    assert!(size <= 3 * q.to_vec().unwrap().len(), "{size} bytes");
    assert!(m.metadata.truncation);
    assert_eq!(srvs(&tcp(s.bound.tcp_addr, &q).await).len(), 2);
    // An undeclared port of a mesh service is NXDOMAIN.
    let (m, _) = udp(
        s.addr(),
        &query(
            "_grpc._tcp.backend.default.svc.cluster.local.",
            RecordType::SRV,
            None,
        ),
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn unknown_mesh_names_are_nxdomain_with_soa() {
    let s = start(RECORDS, vec![]).await;
    for name in [
        "nope.default.svc.cluster.local.",
        "x.y.cluster.local.",
        "nope.data.svc.",
        "nope.default.svc.",
    ] {
        let (m, _) = udp(s.addr(), &query(name, RecordType::A, None)).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert!(m.metadata.authoritative, "{name}");
        assert!(
            matches!(m.authorities.first().map(|r| &r.data), Some(RData::SOA(_))),
            "{name}: SOA in authority"
        );
    }
    // Apex and empty non-terminals exist: NOERROR, no answer.
    let (m, _) = udp(s.addr(), &query("svc.cluster.local.", RecordType::A, None)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    let (m, _) = udp(s.addr(), &query("cluster.local.", RecordType::SOA, None)).await;
    assert!(matches!(
        m.answers.first().map(|r| &r.data),
        Some(RData::SOA(_))
    ));
}

const UPSTREAM_RECORDS: &str = r#"
clusterDomain: upstream.test
services:
  - { name: web, vip: 10.1.2.3 }
  - name: wide
    vip: 10.1.2.4
    ports:
"#;

fn upstream_records() -> String {
    let mut text = UPSTREAM_RECORDS.to_string();
    for i in 0..100 {
        text.push_str(&format!("      - {{ name: p{i}, port: {} }}\n", 10000 + i));
    }
    text
}

#[tokio::test]
async fn other_names_are_forwarded_upstream_and_cached() {
    let upstream = start(&upstream_records(), vec![]).await;
    let s = start(RECORDS, vec![upstream.addr()]).await;
    assert_eq!(
        resolve(s.addr(), "web.default.svc.upstream.test.").await,
        (ResponseCode::NoError, vec!["10.1.2.3".to_string()])
    );
    let (m, _) = udp(
        s.addr(),
        &query("nope.default.svc.upstream.test.", RecordType::A, None),
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(!m.metadata.authoritative);
    // Unknown single-label names are not ours (they may be Docker container names).
    let (m, _) = udp(s.addr(), &query("nosuchcontainer.", RecordType::A, None)).await;
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::ServFail,
        "upstream has no upstream"
    );
    // ANY for a forwarded name is answered locally with RFC 8482's HINFO, never forwarded.
    let (m, _) = udp(
        s.addr(),
        &query("web.default.svc.upstream.test.", RecordType::ANY, None),
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(
        matches!(&m.answers[..], [r] if matches!(&r.data, RData::HINFO(h) if &*h.cpu == b"RFC8482")),
        "{:?}",
        m.answers
    );

    // The answer is cached: it survives the upstream going away.
    upstream.bound.stop().await.unwrap();
    assert_eq!(
        resolve(s.addr(), "web.default.svc.upstream.test.").await,
        (ResponseCode::NoError, vec!["10.1.2.3".to_string()])
    );
}

#[tokio::test]
async fn forwarded_udp_answers_respect_the_client_size_and_set_tc() {
    let upstream = start(&upstream_records(), vec![]).await;
    let s = start(RECORDS, vec![upstream.addr()]).await;
    let name = "wide.default.svc.upstream.test.";
    let q = query(name, RecordType::SRV, None);
    let (m, size) = udp(s.addr(), &q).await;
    assert!(size <= 512, "{size} bytes to a client without EDNS");
    assert!(m.metadata.truncation);
    let (m, size) = udp(s.addr(), &query(name, RecordType::SRV, Some(4096))).await;
    assert!(
        size <= 1232,
        "{size} bytes: capped at 1232 whatever the client advertises"
    );
    assert!(m.metadata.truncation);
    assert_eq!(
        srvs(&tcp(s.tcp_addr(), &q).await).len(),
        100,
        "TCP carries the whole answer"
    );
}

trait TcpAddr {
    fn tcp_addr(&self) -> SocketAddr;
}
impl TcpAddr for Server {
    fn tcp_addr(&self) -> SocketAddr {
        self.bound.tcp_addr
    }
}

#[tokio::test]
async fn tcp_and_truncation_of_mesh_answers() {
    let mut yaml = String::from("services:\n  - name: big\n    vip: 127.240.1.1\n    ports:\n");
    for i in 0..60 {
        yaml.push_str(&format!(
            "      - {{ name: port{i}, port: {} }}\n",
            20000 + i
        ));
    }
    let s = start(&yaml, vec![]).await;
    let m = tcp(s.tcp_addr(), &query("big.", RecordType::A, None)).await;
    assert_eq!(ips(&m), vec!["127.240.1.1"]);
    let q = query("big.default.svc.cluster.local.", RecordType::SRV, None);
    let (m, size) = udp(s.addr(), &q).await;
    assert!(
        m.metadata.truncation && size <= 512,
        "TC={} size={size}",
        m.metadata.truncation
    );
    let m = tcp(s.tcp_addr(), &q).await;
    assert!(!m.metadata.truncation);
    assert_eq!(srvs(&m).len(), 60);
}

fn resolver_for(server: SocketAddr) -> TokioResolver {
    let mut udp = ConnectionConfig::udp();
    udp.port = server.port();
    let ns = NameServerConfig::new(server.ip(), true, vec![udp]);
    let config = ResolverConfig::from_parts(None, vec![], vec![ns]);
    let mut opts = ResolverOpts::default();
    opts.cache_size = 0;
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(opts)
        .build()
        .unwrap()
}

#[tokio::test]
async fn hickory_resolver_as_a_client() {
    let s = start(RECORDS, vec![]).await;
    let r = resolver_for(s.addr());
    for name in [
        "backend",
        "backend.default",
        "backend.default.svc.cluster.local.",
    ] {
        let ips: Vec<String> = r
            .lookup_ip(name)
            .await
            .unwrap()
            .iter()
            .map(|i| i.to_string())
            .collect();
        assert!(ips.contains(&"127.240.0.10".to_string()), "{name}: {ips:?}");
    }
    let srv = r
        .lookup(
            "_http._tcp.backend.default.svc.cluster.local.",
            RecordType::SRV,
        )
        .await
        .unwrap();
    assert_eq!(srv.answers().len(), 1);
    assert!(
        r.lookup_ip("nope.default.svc.cluster.local.")
            .await
            .is_err()
    );
}

fn run_dig(server: SocketAddr, args: &[&str]) -> String {
    let out = std::process::Command::new("dig")
        .args([
            &format!("@{}", server.ip()),
            "-p",
            &server.port().to_string(),
            "+time=2",
            "+tries=1",
        ])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn dig_as_a_client() {
    if support::dig().is_none() {
        return;
    }
    let s = start(RECORDS, vec![]).await;
    let addr = s.addr();
    let out = tokio::task::spawn_blocking(move || {
        [
            run_dig(addr, &["+short", "backend"]),
            run_dig(
                addr,
                &["+short", "+tcp", "backend.default.svc.cluster.local", "A"],
            ),
            run_dig(
                addr,
                &[
                    "+short",
                    "_http._tcp.backend.default.svc.cluster.local",
                    "SRV",
                ],
            ),
            run_dig(addr, &["nope.default.svc.cluster.local"]),
            run_dig(addr, &["+short", "backend.default", "AAAA"]),
        ]
    })
    .await
    .unwrap();
    assert_eq!(out[0].trim(), "127.240.0.10");
    assert_eq!(out[1].trim(), "127.240.0.10");
    assert_eq!(
        out[2].trim(),
        "0 100 8080 backend.default.svc.cluster.local."
    );
    assert!(
        out[3].contains("status: NXDOMAIN") && out[3].contains("SOA"),
        "{}",
        out[3]
    );
    assert_eq!(out[4].trim(), "fd00::10");
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let s = start(RECORDS, vec![]).await;
    let addr = s.addr();
    assert_eq!(resolve(addr, "backend.").await.1, vec!["127.240.0.10"]);
    s.bound.stop().await.unwrap();
    let packet = query("backend.", RecordType::A, None).to_vec().unwrap();
    assert!(
        udp_raw(addr, &packet, Duration::from_millis(300))
            .await
            .is_none()
    );
}
