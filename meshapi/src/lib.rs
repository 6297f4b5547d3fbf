//! The contract between meshctl's control plane and the proxies, and the pure deciders the
//! proxy runs on every request.
//!
//! - [`proxy`]: the compiled per-proxy config document (`apiVersion: meshproxy/v1`) and SPIFFE
//!   identities; [`wire`]: the config push and ACK messages; [`ca_api`]: the certificate API;
//!   [`dns`]: meshdns's records file and the VIP allocator.
//! - [`traffic`]: the compiled route table and its matcher, load balancers, outlier detection,
//!   retry and circuit-breaker logic; [`authz`]: compiled authorization policies and their
//!   evaluation. Both are pure data plus functions, with no clock or I/O.
//! - [`headers`]: the HTTP header names the proxies reserve for themselves.
//! - [`telemetry`]: what a proxy reports (metrics, access logs, tracing).
//! - [`yaml`]: the one YAML reader of the workspace (positions on every node), [`diag`]: the
//!   field errors it reports; [`values`]: value types shared with the Istio model.
//!
//! This crate knows no compose or Istio resource types: `meshmodel` holds the user's model and
//! compiles it into the types here; `meshproxy` and `meshdns` depend on this crate only.
#![forbid(unsafe_code)]

pub mod authn;
pub mod authz;
pub mod ca_api;
pub mod diag;
pub mod dns;
pub mod headers;
pub mod proxy;
pub mod telemetry;
pub mod traffic;
pub mod values;
pub mod wire;
pub mod yaml;

/// The DNS suffix of mesh names, as in Kubernetes (`backend.default.svc.cluster.local`).
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// The namespace of resources and workloads that name none (Istio's `default`).
pub const DEFAULT_NAMESPACE: &str = "default";
/// The root namespace: policies there apply mesh-wide (Istio's `istio-system` convention).
pub const ROOT_NAMESPACE: &str = "istio-system";
/// The trust domain of SPIFFE identities unless configured otherwise.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
