//! Traffic management in the request path: the client side of VirtualService and
//! DestinationRule. The decisions are `meshapi::traffic`'s (the snapshot's route table: the
//! config's `traffic` plus default entries); this module carries them out per request:
//!
//! - [`forward`](mod@forward): one request: route decision, local replies, faults, mirrors,
//!   header operations, the route timeout;
//! - [`retry`]: the retry loop and request-body buffering;
//! - [`cluster`]: per cluster (host, subset, port) runtime state: the load balancer, active
//!   requests, outlier detection, the connection-pool circuit breaker (overflow answers 503
//!   `UO` at once, never queues without bound), status and metrics.
//!
//! Cluster state survives a config reload when the cluster's endpoints and policy are unchanged
//! (as Envoy keeps a cluster that an update does not change), so ejections and counters are not
//! reset by unrelated edits.

pub mod cluster;
pub mod forward;
pub mod retry;

pub use cluster::{ClusterState, ClusterStatus, EndpointStatus, build_clusters};
pub use forward::{forward, route_connection};
pub use retry::RETRY_BUFFER_LIMIT;
