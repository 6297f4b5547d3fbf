//! The protocol sniffer and SNI port parser must never panic on peer-controlled bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(first) = data.first() {
        let _ = meshproxy::inbound::classify(*first);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = meshproxy::tls::port_from_sni(s);
    }
});
