//! Fuzz target `sniff`: see `../checks/sniff.rs` (also replayed on stable by the
//! regression test over `fuzz/seeds/sniff` and `fuzz/regressions/sniff`).
#![no_main]

#[path = "../checks/sniff.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check(data));
