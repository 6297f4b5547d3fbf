//! The SVID checker parses peer certificates: arbitrary DER must be refused, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = meshproxy::tls::check_svid(data);
});
