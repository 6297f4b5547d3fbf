//! meshproxy: the mesh's sidecar / node proxy.
//!
//! Module map (one concern each): [`app`] wires everything and is what tests and `main` call;
//! [`tls`] is identity and mTLS; [`inbound`] and [`outbound`] are the two listener paths;
//! [`state`] holds the per-config snapshot with the route-decision and authorize extension
//! points ([`authz`] evaluates the compiled authorization policy); [`traffic`] carries out
//! VirtualService and DestinationRule per request (retries, timeouts, faults, mirrors, load
//! balancing, outlier detection, circuit breaking); [`pool`] connects to peer proxies; [`http`] is shared HTTP plumbing; [`rescue`]
//! maps every proxy error to a response; [`drain`] is graceful shutdown; [`admin`] and
//! [`metrics`] are the admin, health and Prometheus endpoints; [`watch`] reloads the config
//! file; [`capture`] installs the transparent-capture nftables rules (container mode).
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod authz;
pub mod body;
pub mod ca_client;
pub mod capture;
pub mod config_client;
pub mod cp_mode;
pub mod drain;
pub mod framing;
pub mod http;
pub mod inbound;
pub mod metrics;
pub mod outbound;
pub mod pool;
pub mod reply;
pub mod runtime;
pub mod tls;
pub mod traffic;
pub mod upstream;
pub mod watch;

pub use app::{Bound, ProxyHandle, build, build_with};
