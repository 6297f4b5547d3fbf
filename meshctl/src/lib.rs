//! meshctl library.
#![forbid(unsafe_code)]

pub mod api;
pub mod ca;
pub mod cli;
pub mod controlplane;
pub mod dashboard;
pub mod docker;
pub mod explain;
pub mod node;
pub mod observe;
pub mod process;
pub mod project;
pub mod shell;
pub mod term;
