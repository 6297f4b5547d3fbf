//! Test support shared by the workspace's tests: a test CA, in-process echo servers and
//! `assert_eventually!`.
#![forbid(unsafe_code)]
