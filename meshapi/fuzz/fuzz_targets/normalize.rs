//! Fuzz target `normalize`: see `../checks/normalize.rs` (also replayed on stable by the
//! regression test over `fuzz/seeds/normalize` and `fuzz/regressions/normalize`).
#![no_main]

#[path = "../checks/normalize.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check(data));
