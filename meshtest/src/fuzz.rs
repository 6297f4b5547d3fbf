//! Fuzz inputs replayed as plain `#[test]`s on stable Rust. Each fuzz crate (`*/fuzz`, its own
//! workspace, run with nightly `cargo fuzz`) keeps, per target:
//!
//! - `fuzz/seeds/<target>/`: the seed corpus, small meaningful inputs, committed;
//! - `fuzz/regressions/<target>/`: every input that ever crashed the target (copied from
//!   `fuzz/artifacts/<target>/` with its fix, named after what it broke), committed.
//!
//! The target's body lives in `fuzz/checks/<target>.rs` as `pub fn check(data: &[u8])`; the
//! fuzz target and the fuzzed crate's `tests/fuzz_regressions.rs` both include that file, so
//! the regression test runs exactly what the fuzzer runs. `fuzz/corpus/` (what a fuzzing run
//! grows) and `fuzz/artifacts/` are not committed.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

/// Runs `check` on every file of `<fuzz_dir>/seeds/<target>/` and
/// `<fuzz_dir>/regressions/<target>/`; returns how many inputs ran. Panics when there is no
/// seed (an empty corpus tests nothing) or when any input made `check` panic, naming each
/// such file.
pub fn replay(fuzz_dir: &Path, target: &str, check: impl Fn(&[u8])) -> usize {
    let mut inputs = Vec::new();
    for kind in ["seeds", "regressions"] {
        let dir = fuzz_dir.join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            assert!(kind != "seeds", "no seed corpus at {}", dir.display());
            continue;
        };
        let mut files: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(
            kind != "seeds" || !files.is_empty(),
            "the seed corpus {} is empty",
            dir.display()
        );
        inputs.extend(files);
    }
    let mut failed = Vec::new();
    for path in &inputs {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(&data))) {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failed.push(format!("{}: {why}", path.display()));
        }
    }
    assert!(
        failed.is_empty(),
        "fuzz target {target}: {} of {} inputs fail:\n{}",
        failed.len(),
        inputs.len(),
        failed.join("\n")
    );
    inputs.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_runs_and_a_crashing_one_is_named() {
        let dir = std::env::temp_dir().join(format!("meshtest-fuzz-{}", std::process::id()));
        let write = |kind: &str, name: &str, data: &[u8]| {
            let d = dir.join(kind).join("t");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(name), data).unwrap();
        };
        write("seeds", "a", b"fine");
        write("seeds", "b", b"also fine");
        assert_eq!(
            replay(&dir, "t", |_| {}),
            2,
            "no regressions folder is fine"
        );
        write("regressions", "crash-1", b"boom");
        let seen = std::sync::Mutex::new(Vec::new());
        let err = catch_unwind(AssertUnwindSafe(|| {
            replay(&dir, "t", |d| {
                seen.lock().unwrap().push(d.to_vec());
                assert!(d != b"boom", "exploded");
            })
        }))
        .unwrap_err();
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("1 of 3 inputs fail"), "{msg}");
        assert!(msg.contains("crash-1: exploded"), "{msg}");
        assert_eq!(seen.lock().unwrap().len(), 3);
        let empty = catch_unwind(|| replay(&dir, "none", |_| {}));
        assert!(empty.is_err(), "a target without seeds fails");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
