//! Fuzz target `svid`: see `../checks/svid.rs` (also replayed on stable by the
//! regression test over `fuzz/seeds/svid` and `fuzz/regressions/svid`).
#![no_main]

#[path = "../checks/svid.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check(data));
