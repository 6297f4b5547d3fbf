//! The SVID checker parses peer certificates: arbitrary DER must be refused, never panic.
//!
//! Shared by the fuzz target `svid` and the regression test replaying its seeds and
//! crash inputs on stable (`tests/fuzz_regressions.rs`, `meshtest::fuzz`).

/// One input: must not panic.
pub fn check(data: &[u8]) {
    let _ = meshproxy::tls::check_svid(data);
}
