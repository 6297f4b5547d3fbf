//! Test support shared by the workspace's tests: a test CA, in-process echo servers, replay of
//! fuzz inputs (`fuzz`) and `assert_eventually!`.
//!
//! Everything binds 127.0.0.1 port 0 and lives as long as the test's tokio runtime.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)]

pub mod ca;
pub mod echo;
pub mod fuzz;

pub use ca::{LeafOptions, TestCa, Workload};
pub use echo::{EchoServer, TcpEcho};

/// Polls a condition until it holds or a deadline (default 5 s) passes, then panics with the
/// message. Use it inside async tests instead of sleeping and hoping.
///
/// ```ignore
/// assert_eventually!(server.requests() == 1, "request never arrived");
/// assert_eventually!(n() == 1, timeout = std::time::Duration::from_secs(1), "n is {}", n());
/// ```
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, timeout = $timeout:expr, $($msg:tt)+) => {{
        let deadline = ::std::time::Instant::now() + $timeout;
        loop {
            if $cond {
                break;
            }
            if ::std::time::Instant::now() > deadline {
                panic!("assert_eventually failed after {:?}: {}", $timeout, format!($($msg)+));
            }
            ::tokio::time::sleep(::std::time::Duration::from_millis(10)).await;
        }
    }};
    ($cond:expr, $($msg:tt)+) => {
        $crate::assert_eventually!($cond, timeout = ::std::time::Duration::from_secs(5), $($msg)+)
    };
}

/// The environment variable naming the dependencies that must be present (comma-separated:
/// `docker`, `root`, `dig`, `conformance`, ...; `all` names every one). `.ci/run` sets it, so a
/// test whose dependency is missing fails in CI instead of skipping.
pub const REQUIRE_ENV: &str = "MESHCTL_REQUIRE";

/// The environment variable pointing at Istio's conformance corpus, which is not part of the
/// repository; `.ci/run` sets it. Tests never read outside the repository otherwise.
pub const CONFORMANCE_ENV: &str = "MESHCTL_CONFORMANCE_DIR";

/// Whether `dependency` is named in [`REQUIRE_ENV`].
pub fn required(dependency: &str) -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| {
        v.split(',')
            .map(str::trim)
            .any(|d| d == dependency || d == "all")
    })
}

/// Decides what a test does when its real dependency is missing: returns `true` (the caller
/// returns at once) after a loud note on stderr, or panics when [`REQUIRE_ENV`] names
/// `dependency`, so a skip never turns CI green. Returns `false` when `present`.
pub fn skip_unless(dependency: &str, present: bool, why: &str) -> bool {
    if present {
        return false;
    }
    if required(dependency) {
        panic!("{REQUIRE_ENV} names {dependency:?} but it is missing: {why}");
    }
    // Written to the process's stderr directly: libtest captures `eprintln!` of a passing
    // test, and a skip must be seen.
    use std::io::Write;
    let note = format!("\n*** SKIPPED ({dependency} missing): {why} ***\n");
    let _ = std::io::stderr().write_all(note.as_bytes());
    true
}

/// Istio's conformance corpus (`$MESHCTL_CONFORMANCE_DIR/istio`), or `None` after a loud skip
/// note when the variable is not set (a failure when [`REQUIRE_ENV`] names `conformance`).
pub fn conformance_dir() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os(CONFORMANCE_ENV).map(std::path::PathBuf::from);
    let present = dir.as_ref().is_some_and(|d| d.join("istio").is_dir());
    let why = format!(
        "set {CONFORMANCE_ENV} to the folder holding the Istio corpus (its istio/ folder) to run \
         the Istio corpus tests"
    );
    if skip_unless("conformance", present, &why) {
        return None;
    }
    dir.map(|d| d.join("istio"))
}
