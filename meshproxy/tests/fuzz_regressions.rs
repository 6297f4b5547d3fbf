//! The fuzz targets of `meshproxy/fuzz` replayed on stable Rust: every seed and every crash
//! input ever found runs through the same check the target runs (`meshtest::fuzz`).

use std::path::PathBuf;

#[path = "../fuzz/checks/proxy_config.rs"]
mod proxy_config;
#[path = "../fuzz/checks/sniff.rs"]
mod sniff;
#[path = "../fuzz/checks/svid.rs"]
mod svid;

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

#[test]
fn proxy_config_seeds_and_regressions_pass() {
    meshtest::fuzz::replay(&fuzz_dir(), "proxy_config", proxy_config::check);
}

#[test]
fn sniff_seeds_and_regressions_pass() {
    meshtest::fuzz::replay(&fuzz_dir(), "sniff", sniff::check);
}

#[test]
fn svid_seeds_and_regressions_pass() {
    meshtest::fuzz::replay(&fuzz_dir(), "svid", svid::check);
}
