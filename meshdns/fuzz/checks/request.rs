//! Fuzzes meshdns's request path: raw bytes -> parse -> handler -> encoded reply, over both
//! UDP and TCP framing rules. Invariants: no panic, every reply decodes, UDP replies stay
//! within the 1232-byte cap.
//!
//! Run: `cd meshdns/fuzz && cargo +nightly fuzz run request -- -max_total_time=60`
//!
//! Shared by the fuzz target `request` and the regression test replaying its seeds and
//! crash inputs on stable (`tests/fuzz_regressions.rs`, `meshtest::fuzz`).

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use hickory_proto::op::Message;
use hickory_server::net::xfer::Protocol;
use meshdns::forward::Forwarder;
use meshdns::handler::{MeshHandler, handle_packet};
use meshdns::reload::RecordsHandle;

const RECORDS: &str = r#"
services:
  - { name: backend, vip: 127.240.0.10, vip6: "fd00::10", ports: [{ name: http, port: 8080 }] }
  - { name: db, namespace: data, vip: 127.240.0.12, ports: [{ name: pg, port: 5432 }] }
"#;

struct State {
    runtime: tokio::runtime::Runtime,
    handler: MeshHandler,
}

fn state() -> &'static State {
    static STATE: OnceLock<State> = OnceLock::new();
    STATE.get_or_init(|| {
        let records = meshapi::dns::Records::from_yaml(RECORDS, "fuzz").expect("fixture parses");
        let handle = RecordsHandle::new(records).expect("fixture compiles");
        // No upstreams: forwarded names fail fast with SERVFAIL instead of touching the network.
        let forwarder = Forwarder::new(&[], Duration::from_millis(1)).expect("forwarder");
        State {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            handler: MeshHandler::new(handle.zone(), forwarder, 1232),
        }
    })
}

/// One input: must not panic.
pub fn check(data: &[u8]) {
    let s = state();
    let src: SocketAddr = ([127, 0, 0, 1], 5353).into();
    for protocol in [Protocol::Udp, Protocol::Tcp] {
        if let Some(reply) = s
            .runtime
            .block_on(handle_packet(&s.handler, data, src, protocol))
        {
            Message::from_vec(&reply).expect("meshdns produced a reply that does not decode");
            if protocol == Protocol::Udp {
                assert!(reply.len() <= 1232, "UDP reply of {} bytes", reply.len());
            }
        }
    }
}
