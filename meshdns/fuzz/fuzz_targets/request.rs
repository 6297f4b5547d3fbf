//! Fuzz target `request`: see `../checks/request.rs` (also replayed on stable by the
//! regression test over `fuzz/seeds/request` and `fuzz/regressions/request`).
#![no_main]

#[path = "../checks/request.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check(data));
