//! meshproxy: the mesh's sidecar / node proxy, organised by component (as ztunnel and
//! linkerd2-proxy are).
//!
//! - Wiring: [`app`] validates a config, builds the shared [`context::Context`], binds every
//!   listener and starts the components; it is what tests and `main` call ([`build`],
//!   [`Bound`], [`ProxyHandle`]). [`listener`] is what every listener shares: binding, the
//!   accept loop with drain, and the HTTP server of one downstream connection.
//! - Components, each owning its listeners and accept loop: [`inbound`] (15006:
//!   PeerAuthentication, mTLS termination, authorization, forwarding to the application),
//!   [`outbound`] (15001 capture and VIP listeners: the route table, TCP and tunnels),
//!   [`admin`] (admin, health and Prometheus endpoints, with [`metrics`]).
//! - What the data path reads: [`runtime`], one immutable value per config and trust state
//!   (config snapshot, effective route table, cluster state, [`tls::Trust`]) published with
//!   one store; [`authz`] evaluates the compiled authorization policy.
//! - Outbound requests: [`traffic`] carries out VirtualService and DestinationRule per
//!   request (`traffic/forward.rs` the request, `traffic/retry.rs` the retry loop,
//!   `traffic/cluster.rs` load balancing, outlier detection and circuit breaking); [`pool`]
//!   keeps connections to endpoints, [`upstream`] opens them. [`egress`] handles captured
//!   connections to destinations outside the registry (`outboundTrafficPolicy`).
//! - Every response the proxy makes itself: [`reply`] (one typed [`reply::LocalReply`],
//!   rendered in one place). [`http`], [`body`] and [`framing`] are HTTP plumbing.
//! - Identity: [`tls`] (mTLS, SVID checks, TLS origination); [`ca_client`], [`config_client`]
//!   and [`cp_mode`] talk to the control plane, through one TLS setup ([`cp_tls`]); [`watch`]
//!   reloads the config file; [`drain`]
//!   is graceful shutdown; [`capture`] installs the transparent-capture nftables rules
//!   (container mode).
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod authn;
pub mod authz;
pub mod body;
pub mod ca_client;
pub mod capture;
pub mod config_client;
pub mod context;
pub mod cp_mode;
pub mod cp_tls;
pub mod drain;
pub mod egress;
pub mod framing;
pub mod http;
pub mod inbound;
pub mod listener;
pub mod metrics;
pub mod outbound;
pub mod pool;
pub mod reply;
pub mod runtime;
pub mod telemetry;
pub mod tls;
pub mod traffic;
pub mod upstream;
pub mod watch;

pub use app::{Bound, ProxyHandle, build, build_with};
