//! The protocol sniffer and SNI port parser must never panic on peer-controlled bytes.
//!
//! Shared by the fuzz target `sniff` and the regression test replaying its seeds and
//! crash inputs on stable (`tests/fuzz_regressions.rs`, `meshtest::fuzz`).

/// One input: must not panic.
pub fn check(data: &[u8]) {
    if let Some(first) = data.first() {
        let _ = meshproxy::inbound::classify(*first);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = meshproxy::tls::port_from_sni(s);
    }
}
