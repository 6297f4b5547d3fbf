//! The user's mesh: what a person writes (compose services and Istio resources), read with
//! positions, validated and analysed, and compiled into what each proxy and meshdns receive.
//!
//! - [`compose`] and [`istio`]: the two input formats, typed field by field (unknown fields
//!   refused with a suggestion, [`suggest`]).
//! - [`load`]: files and directories to a [`model::Mesh`] plus diagnostics at
//!   `file:line:column`; [`model`]: the mesh, its workloads and services.
//! - [`check`]: `meshctl check`'s analysis (what `istioctl analyze` flags).
//! - [`compile`]: per-proxy configs, route tables, authorization policies and meshdns records,
//!   in the contract types of the `meshapi` crate, which the proxies depend on alone.
#![forbid(unsafe_code)]

pub mod check;
pub mod compile;
pub mod compose;
pub mod istio;
pub mod load;
pub mod model;
pub mod suggest;
