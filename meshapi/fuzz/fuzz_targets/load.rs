//! Fuzz target `load`: see `../checks/load.rs` (also replayed on stable by the
//! regression test over `fuzz/seeds/load` and `fuzz/regressions/load`).
#![no_main]

#[path = "../checks/load.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check(data));
