//! What the data path reads: one immutable [`Runtime`] per published config or trust change,
//! loaded once per connection or request from one `ArcSwap` ([`crate::context::Context::runtime`]):
//!
//! - a [`Snapshot`] of the config: the lookups by VIP and port, the effective route table (the
//!   config's `traffic`, plus the compiler's default entry for every service it does not
//!   name), the runtime state of its clusters, and the authorize step
//!   ([`Snapshot::authorize`]);
//! - the [`Trust`] (credentials, roots, trust domain aliases, generation) that outbound
//!   connections are opened under; pooled connections are tagged with its generation, so a
//!   request never rides a connection verified under other roots.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use meshapi::proxy::{Endpoint, InboundPort, OutboundService, ProxyConfig, SpiffeId};
use meshapi::traffic::RouteTable;

use crate::reply::ProxyError;
use crate::tls::Trust;

/// One config and one trust state, published together with one store.
#[derive(Debug)]
pub struct Runtime {
    pub snapshot: Arc<Snapshot>,
    pub trust: Arc<Trust>,
}

impl std::ops::Deref for Runtime {
    type Target = Snapshot;

    fn deref(&self) -> &Snapshot {
        &self.snapshot
    }
}

/// One config, indexed for the data path. Never mutated after build (cluster state has its
/// own counters); a new config gives a new snapshot.
#[derive(Debug)]
pub struct Snapshot {
    pub cfg: Arc<ProxyConfig>,
    outbound_by_vip: HashMap<SocketAddr, usize>,
    outbound_by_port: HashMap<u16, Vec<usize>>,
    inbound_by_port: HashMap<u16, InboundPort>,
    /// `cfg.traffic` with a default entry for every service it does not route.
    table: RouteTable,
    /// The host in `table` of each service of `cfg.services`.
    hosts: HashMap<String, String>,
    /// Runtime state per cluster of `table`, in the table's cluster order.
    clusters: Vec<Arc<crate::traffic::ClusterState>>,
    /// The config's RequestAuthentication rules with their keys and token caches; `None`
    /// without rules.
    pub authn: Option<Arc<meshapi::authn::Authenticator>>,
    /// This proxy's party and the metric shapes (`telemetry.metrics`).
    pub telemetry: crate::metrics::TelemetryState,
    /// `destination_service*` of each service of `cfg.services`, by its key.
    service_labels: HashMap<String, Arc<crate::telemetry::ServiceLabels>>,
}

/// Where a request or connection goes: one endpoint and the application port on it.
#[derive(Debug, Clone)]
pub struct Target {
    pub service: Arc<str>,
    pub endpoint: Arc<Endpoint>,
    pub target_port: u16,
    /// The endpoint's pool key, built with the cluster (also says how to connect: its `tls`).
    pub key: Arc<crate::pool::PoolKey>,
    /// Connection settings from the cluster's `connectionPool` (Istio's defaults when no
    /// DestinationRule sets them).
    pub connect: ConnectSettings,
    /// The cluster and the endpoint's index in it (TCP connections take a connection slot and
    /// report connect failures there).
    pub cluster: (Arc<crate::traffic::ClusterState>, usize),
}

impl Target {
    /// Whether connections to this target reach a verified peer proxy: mutual TLS with the
    /// endpoint's mesh identity checked (ISTIO_MUTUAL). Only such a peer's reserved response
    /// headers ([`meshapi::headers`]) are believed.
    pub fn is_verified_peer(&self) -> bool {
        self.key.tls.mode == meshapi::proxy::UpstreamTlsMode::IstioMutual
            && self.key.identity.is_some()
    }
}

/// How to open a connection to an endpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnectSettings {
    /// `connectTimeout`. Default: the config's `limits.connectTimeout`.
    pub timeout: Option<std::time::Duration>,
    /// `tcpKeepalive` as (time, interval, probes); `None` fields keep the OS's values.
    pub keepalive: Option<(
        Option<std::time::Duration>,
        Option<std::time::Duration>,
        Option<u32>,
    )>,
    /// The upstream speaks HTTP/2 (`http2`/`grpc` ports, `h2UpgradePolicy: UPGRADE`): requests
    /// multiplex, as opposed to HTTP/1.1's one request per connection at a time. Between mesh
    /// proxies the wire is HTTP/2 either way ([`crate::pool`]).
    pub http2: bool,
    /// `maxRequestsPerConnection`: a pooled connection is retired after this many requests;
    /// 0 is unlimited.
    pub max_requests_per_connection: u32,
    /// `idleTimeout`: a pooled connection without requests for this long is closed. Default
    /// 1 h (Istio's).
    pub idle_timeout: Option<std::time::Duration>,
}

/// The HTTP facts the authorize step looks at (none for TCP).
#[derive(Debug, Clone, Copy)]
pub struct HttpFacts<'a> {
    pub method: &'a http::Method,
    /// The request target as received (path and query, or absolute form).
    pub uri: &'a http::Uri,
    pub headers: &'a http::HeaderMap,
    /// The token request authentication verified, if any.
    pub auth: Option<&'a meshapi::authn::Verified>,
}

/// What the authorize step knows about the downstream peer.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// Verified SPIFFE ID, when the peer came over mTLS.
    pub identity: Option<SpiffeId>,
    /// The peer's socket address.
    pub remote: SocketAddr,
    /// The application port requested.
    pub port: u16,
    /// The address the connection was accepted on (`destination.ip`).
    pub local_ip: std::net::IpAddr,
    /// The TLS server name the peer asked for (`connection.sni`); `None` for plaintext.
    pub sni: Option<Arc<str>>,
    /// The authorization rules that can still match on this connection, per policy revision.
    pub authz_filter: crate::authz::FilterCache,
}

impl Snapshot {
    pub fn new(cfg: Arc<ProxyConfig>) -> Snapshot {
        Snapshot::build(cfg, None)
    }

    /// A snapshot of `cfg` that keeps `prev`'s cluster state (ejections, active requests,
    /// circuit-breaker counts) for clusters whose endpoints and policy are unchanged.
    pub fn build(cfg: Arc<ProxyConfig>, prev: Option<&Snapshot>) -> Snapshot {
        let (table, hosts) = cfg.effective_routes();
        let clusters =
            crate::traffic::build_clusters(&cfg, &table, prev.map(|p| p.clusters.as_slice()));
        let mut outbound_by_vip = HashMap::new();
        let mut outbound_by_port: HashMap<u16, Vec<usize>> = HashMap::new();
        for (i, o) in cfg.outbound.iter().enumerate() {
            outbound_by_vip.insert(o.vip, i);
            outbound_by_port.entry(o.vip.port()).or_default().push(i);
        }
        let inbound_by_port = cfg.inbound.iter().map(|p| (p.port, p.clone())).collect();
        let service_labels = cfg
            .services
            .keys()
            .map(|k| {
                let host = hosts.get(k).map_or(k.as_str(), String::as_str);
                (
                    k.clone(),
                    Arc::new(crate::telemetry::ServiceLabels::of_host(host)),
                )
            })
            .collect();
        Snapshot {
            telemetry: crate::metrics::TelemetryState::new(&cfg),
            service_labels,
            cfg,
            outbound_by_vip,
            outbound_by_port,
            inbound_by_port,
            table,
            hosts,
            clusters,
            authn: None,
        }
    }

    /// This snapshot with the request authentication built for its config.
    pub fn with_authn(mut self, authn: Option<Arc<meshapi::authn::Authenticator>>) -> Snapshot {
        self.authn = authn;
        self
    }

    /// The runtime state of the cluster `dest` resolves to for a request on `request_port`.
    pub fn cluster(
        &self,
        dest: &meshapi::traffic::DestinationRef,
        request_port: u16,
    ) -> Option<&Arc<crate::traffic::ClusterState>> {
        self.clusters
            .get(self.table.cluster_index(dest, request_port)?)
    }

    /// `destination_service*` of the service `key` of `cfg.services`.
    pub fn service_labels(&self, key: &str) -> Arc<crate::telemetry::ServiceLabels> {
        self.service_labels
            .get(key)
            .cloned()
            .unwrap_or_else(crate::telemetry::ServiceLabels::unknown)
    }

    /// The route table in force: `traffic` plus the default entries.
    pub fn table(&self) -> &RouteTable {
        &self.table
    }

    /// The route-table host of an outbound service.
    pub fn host_of(&self, out: &OutboundService) -> Option<&str> {
        self.hosts.get(&out.service).map(String::as_str)
    }

    /// Every cluster's state, for `/config_dump`.
    pub fn cluster_status(&self) -> Vec<crate::traffic::ClusterStatus> {
        self.clusters.iter().map(|c| c.status()).collect()
    }

    /// The outbound service bound to exactly this VIP:port.
    pub fn outbound_for(&self, vip: SocketAddr) -> Option<&OutboundService> {
        self.outbound_by_vip
            .get(&vip)
            .map(|i| &self.cfg.outbound[*i])
    }

    /// The outbound service for a captured original destination: exact VIP:port, else the
    /// only service on that port whose VIP is unspecified (0.0.0.0).
    pub fn outbound_for_original_dst(&self, dst: SocketAddr) -> Option<&OutboundService> {
        self.outbound_for(dst).or_else(|| {
            self.outbound_by_port
                .get(&dst.port())?
                .iter()
                .map(|i| &self.cfg.outbound[*i])
                .find(|o| o.vip.ip().is_unspecified())
        })
    }

    /// The inbound port config for an application port.
    pub fn inbound_port(&self, port: u16) -> Option<&InboundPort> {
        self.inbound_by_port.get(&port)
    }

    /// Whether any inbound port accepts plaintext (then the listener sniffs first bytes).
    pub fn any_plaintext(&self) -> bool {
        self.cfg
            .inbound
            .iter()
            .any(|p| p.mode != meshapi::proxy::PeerAuthMode::Strict)
    }

    /// The port plaintext goes to when nothing else names one: the first inbound port.
    pub fn default_inbound_port(&self) -> Option<u16> {
        self.cfg.inbound.first().map(|p| p.port)
    }

    /// The authorize step for inbound requests and connections, after PeerAuthentication:
    /// evaluates the config's compiled authorization policy (none: allow everything) for a
    /// request (`req` set) or a TCP connection, logs and counts the decision. A denial is
    /// [`ProxyError::Denied`]; a path the normalization refuses is a bad request. An allowed
    /// request carries the normalized path to forward: every HTTP request is normalized,
    /// with Istio's default (`BASE`) when no policy section is given.
    pub fn authorize(
        &self,
        peer: &PeerInfo,
        req: Option<HttpFacts<'_>>,
        counters: &crate::authz::AuthzCounters,
    ) -> Result<crate::authz::Authorized, ProxyError> {
        match (&self.cfg.authorization, req) {
            (None, None) => Ok(crate::authz::Authorized::default()),
            (None, Some(req)) => crate::authz::normalize_only(peer, &req),
            (Some(policy), req) => crate::authz::check(&self.cfg, policy, peer, req, counters),
        }
    }
}
