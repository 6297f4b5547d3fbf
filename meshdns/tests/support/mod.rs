//! Shared fixtures for the meshdns integration tests: start a server from YAML, and a raw
//! DNS client (hickory-proto messages over real UDP/TCP sockets) that shows every header bit.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use meshdns::{Bound, Config, Upstreams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

pub const RECORDS: &str = r#"
services:
  - name: backend
    vip: 127.240.0.10
    vip6: fd00::10
    ports:
      - { name: http, port: 8080 }
      - { name: metrics, port: 9090 }
  - { name: frontend, vip: 127.240.0.11 }
  - { name: db, namespace: data, vip: 127.240.0.12, ports: [{ name: pg, port: 5432 }] }
"#;

/// A running server with its records file.
pub struct Server {
    pub bound: Bound,
    pub dir: tempfile::TempDir,
    pub file: PathBuf,
}

impl Server {
    pub fn addr(&self) -> SocketAddr {
        self.bound.udp_addr
    }
}

/// Starts meshdns on 127.0.0.1:0 serving `yaml`, forwarding to `upstreams` (none: SERVFAIL).
pub async fn start(yaml: &str, upstreams: Vec<SocketAddr>) -> Server {
    start_with(yaml, upstreams, |_| {}).await
}

/// As [`start`], with `tweak` applied to the test configuration (500 ms upstream deadline,
/// 50 ms reload debounce, the rest default).
pub async fn start_with(
    yaml: &str,
    upstreams: Vec<SocketAddr>,
    tweak: impl FnOnce(&mut Config),
) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("records.yaml");
    std::fs::write(&file, yaml).unwrap();
    let cfg = Config {
        records_file: Some(file.clone()),
        listen: "127.0.0.1:0".parse().unwrap(),
        upstreams: Upstreams::Static(upstreams),
        upstream_timeout: Duration::from_millis(500),
        reload_debounce: Duration::from_millis(50),
        ..Config::default()
    };
    let mut cfg = cfg;
    tweak(&mut cfg);
    let bound = meshdns::build(cfg).await.unwrap();
    Server { bound, dir, file }
}

/// Replaces `path` the way editors do: write a sibling, then rename over it.
pub fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A query message; `edns` is the advertised UDP payload, `None` for no EDNS.
pub fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Message {
    let mut m = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m
}

/// Sends raw bytes over UDP and returns the raw reply, or `None` after `wait`.
pub async fn udp_raw(server: SocketAddr, packet: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(packet, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(wait, sock.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

/// One UDP exchange; returns the reply and its size on the wire.
pub async fn udp(server: SocketAddr, msg: &Message) -> (Message, usize) {
    let raw = udp_raw(server, &msg.to_vec().unwrap(), Duration::from_secs(5))
        .await
        .expect("no UDP reply");
    let reply = Message::from_vec(&raw).unwrap();
    assert_eq!(reply.metadata.id, msg.metadata.id);
    (reply, raw.len())
}

/// One TCP exchange (2-byte length framing).
pub async fn tcp(server: SocketAddr, msg: &Message) -> Message {
    let mut s = TcpStream::connect(server).await.unwrap();
    let bytes = msg.to_vec().unwrap();
    s.write_all(&(bytes.len() as u16).to_be_bytes())
        .await
        .unwrap();
    s.write_all(&bytes).await.unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.unwrap();
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

/// The IPs in the answer section.
pub fn ips(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| r.data.ip_addr())
        .map(|ip| ip.to_string())
        .collect()
}

/// Resolves `name` A over UDP and returns (rcode, ips).
pub async fn resolve(server: SocketAddr, name: &str) -> (ResponseCode, Vec<String>) {
    let (m, _) = udp(server, &query(name, RecordType::A, Some(1232))).await;
    (m.metadata.response_code, ips(&m))
}

/// SRV answers as (port, target).
pub fn srvs(m: &Message) -> Vec<(u16, String)> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.port, s.target.to_string())),
            _ => None,
        })
        .collect()
}

/// Polls `check` every 20 ms until it returns true, failing after `deadline`.
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `dig`'s path, or `None` with a loud note (CI installs dnsutils).
pub fn dig() -> Option<&'static str> {
    let found = std::process::Command::new("dig").arg("-v").output().is_ok();
    let skip = meshtest::skip_unless(
        "dig",
        found,
        "dig checks: `dig` is not installed (apt-get install dnsutils)",
    );
    (!skip).then_some("dig")
}
