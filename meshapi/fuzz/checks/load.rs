//! Fuzz the whole loader on one file: YAML parsing with limits, document classification,
//! compose interpolation and typed deserialization, validation, then the mesh analysis. Any
//! input must give diagnostics, never a panic, and finish quickly with bounded memory.
//!
//! Shared by the fuzz target `load` and the regression test replaying its seeds and
//! crash inputs on stable (`tests/fuzz_regressions.rs`, `meshtest::fuzz`).

/// One input: must not panic.
pub fn check(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = meshmodel::check::check_text("fuzz.yaml", text);
    }
}
