//! The mesh model shared by every meshctl component.
//!
//! What a user writes (compose services and Istio resources) is parsed, validated and analysed
//! here; what a proxy receives (the compiled per-proxy config) is defined here too, so the
//! control plane and the data plane can never disagree on a format. All YAML parsing in the
//! workspace lives in this crate.
#![forbid(unsafe_code)]

pub mod authz;
pub mod ca_api;
pub mod check;
pub mod compile;
pub mod compose;
pub mod diag;
pub mod dns;
pub mod istio;
pub mod load;
pub mod model;
pub mod proxy;
pub mod suggest;
pub mod traffic;
pub mod yaml;
