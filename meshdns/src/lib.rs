//! meshdns: the mesh DNS server.
//!
//! Answers mesh service names (`backend`, `backend.default`, `backend.default.svc`,
//! `backend.default.svc.cluster.local`) with the service VIP, publishes SRV records for
//! declared ports, answers NXDOMAIN for unknown names inside the mesh zones, and forwards
//! everything else to the host's resolvers with caching. Built on hickory-server 0.26.
//!
//! - [`app::build`] starts the whole server on UDP and TCP and returns the bound addresses, a
//!   [`reload::RecordsHandle`] to publish new records, and a shutdown handle.
//! - [`zone`] compiles records into the answer table; [`handler`] decides every response;
//!   [`forward`] talks to upstreams; [`reload`] watches the records file; [`udp`] is the UDP
//!   listener (TCP is hickory-server's `Server`).
#![forbid(unsafe_code)]

pub mod app;
pub mod config;
pub mod forward;
pub mod handler;
pub mod reload;
pub mod udp;
pub mod zone;

pub use app::{Bound, build};
pub use config::{Config, Upstreams};
