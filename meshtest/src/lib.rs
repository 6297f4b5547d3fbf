//! Test support shared by the workspace's tests: a test CA, in-process echo servers and
//! `assert_eventually!`.
//!
//! Everything binds 127.0.0.1 port 0 and lives as long as the test's tokio runtime.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)]

pub mod ca;
pub mod echo;

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
