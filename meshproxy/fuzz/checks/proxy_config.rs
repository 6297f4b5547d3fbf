//! The config loader must refuse, never panic, whatever the file holds.
//!
//! Shared by the fuzz target `proxy_config` and the regression test replaying its seeds and
//! crash inputs on stable (`tests/fuzz_regressions.rs`, `meshtest::fuzz`).

/// One input: must not panic.
pub fn check(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(cfg) = meshapi::proxy::ProxyConfig::from_str_checked(s)
    {
        let _ = cfg.redacted();
    }
}
