//! Fuzz target `proxy_config`: see `../checks/proxy_config.rs` (also replayed on stable by the
//! regression test over `fuzz/seeds/proxy_config` and `fuzz/regressions/proxy_config`).
#![no_main]

#[path = "../checks/proxy_config.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check(data));
