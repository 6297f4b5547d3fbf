//! The shared inputs of every path, one per proxy: the published [`Runtime`] (config and
//! trust, read once per connection or request), the live identity and inbound TLS config,
//! metrics, the drain, the upstream connection pool and the clients to local applications.
//! Components ([`crate::inbound`], [`crate::outbound`], [`crate::admin`]) take an
//! `Arc<Context>`; only [`crate::app`] builds one.

use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use meshapi::proxy::Limits;

use crate::drain::Drain;
use crate::http::Body;
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::runtime::Runtime;
use crate::telemetry::Telemetry;
use crate::tls::Identity;

/// Sets the log filter (`/logging?level=`); installed by `main`.
pub type LogControl = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Everything the data path shares; one per proxy.
pub struct Context {
    /// The config and trust being served ([`Runtime`]); read once per connection or request,
    /// published with one store.
    pub runtime: ArcSwap<Runtime>,
    /// The live trust state inbound handshakes verify peers with.
    pub identity: Arc<Identity>,
    pub server_tls: Arc<rustls::ServerConfig>,
    pub metrics: Metrics,
    /// Access logs and trace spans ([`Telemetry::complete`], the one completion hook).
    pub telemetry: Telemetry,
    pub drain: Drain,
    pub pool: Pool,
    /// Pooled HTTP/1.1 client to local applications.
    pub app_h1: Client<HttpConnector, Body>,
    /// Pooled h2c client to local applications (http2/grpc ports).
    pub app_h2: Client<HttpConnector, Body>,
    pub log_control: Option<LogControl>,
    /// The JWKS fetchers of the config's RequestAuthentication rules.
    pub jwks: crate::authn::JwksStore,
}

impl Context {
    /// Limits of the current config.
    pub fn limits(&self) -> Limits {
        self.runtime.load().cfg.limits.clone()
    }
}
