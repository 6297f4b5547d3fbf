//! The fuzz targets of `meshapi/fuzz` (`load`, `normalize`: they fuzz this crate's loader and
//! authorization compiler with meshapi's normalizer) replayed on stable Rust: every seed and
//! every crash input ever found runs through the same check the target runs
//! (`meshtest::fuzz`).

use std::path::PathBuf;

#[path = "../../meshapi/fuzz/checks/load.rs"]
mod load;
#[path = "../../meshapi/fuzz/checks/normalize.rs"]
mod normalize;

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../meshapi/fuzz")
}

#[test]
fn load_seeds_and_regressions_pass() {
    meshtest::fuzz::replay(&fuzz_dir(), "load", load::check);
}

#[test]
fn normalize_seeds_and_regressions_pass() {
    meshtest::fuzz::replay(&fuzz_dir(), "normalize", normalize::check);
}
