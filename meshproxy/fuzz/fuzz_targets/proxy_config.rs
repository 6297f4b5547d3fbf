//! The config loader must refuse, never panic, whatever the file holds.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(cfg) = meshapi::proxy::ProxyConfig::from_str_checked(s) {
            let _ = cfg.redacted();
        }
    }
});
