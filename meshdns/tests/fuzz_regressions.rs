//! The fuzz target of `meshdns/fuzz` (`request`) replayed on stable Rust: every seed and every
//! crash input ever found runs through the same check the target runs (`meshtest::fuzz`).

use std::path::PathBuf;

#[path = "../fuzz/checks/request.rs"]
mod request;

#[test]
fn request_seeds_and_regressions_pass() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    meshtest::fuzz::replay(&dir, "request", request::check);
}
