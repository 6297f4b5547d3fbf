//! The runtime view of one config: an immutable [`Snapshot`] built from a validated
//! `ProxyConfig`, read once per connection or request, plus the two per-request extension
//! points: [`Snapshot::route`] (the route decision; traffic management extends it) and
//! [`Snapshot::authorize`] (authorization policy extends it).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use meshapi::proxy::{Endpoint, InboundPort, OutboundService, Protocol, ProxyConfig, SpiffeId};

use crate::rescue::ProxyError;

/// One config, indexed for the data path. Never mutated after build (except round-robin
/// cursors); a new config gives a new snapshot.
#[derive(Debug)]
pub struct Snapshot {
    pub cfg: Arc<ProxyConfig>,
    outbound_by_vip: HashMap<SocketAddr, usize>,
    outbound_by_port: HashMap<u16, Vec<usize>>,
    inbound_by_port: HashMap<u16, InboundPort>,
    rr: HashMap<String, AtomicUsize>,
    /// Runtime state per cluster of `cfg.traffic`, in the table's cluster order.
    clusters: Vec<Arc<crate::traffic::ClusterState>>,
}

/// Where a request or connection goes: one endpoint and the application port on it.
#[derive(Debug, Clone)]
pub struct Target {
    pub service: String,
    pub endpoint: Arc<Endpoint>,
    pub target_port: u16,
    /// Connection settings from the DestinationRule's `connectionPool.tcp` (none: the config's
    /// `limits.connectTimeout`, no keepalive).
    pub connect: ConnectSettings,
    /// The traffic-management cluster and the endpoint's index in it, when the route table
    /// chose it (TCP connections take a connection slot and report connect failures there).
    pub cluster: Option<(Arc<crate::traffic::ClusterState>, usize)>,
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

/// The HTTP facts a route decision may look at (none for TCP).
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub method: &'a http::Method,
    pub uri: &'a http::Uri,
    pub path: &'a str,
    pub headers: &'a http::HeaderMap,
}

/// The HTTP facts the authorize step looks at (none for TCP).
#[derive(Debug, Clone, Copy)]
pub struct HttpFacts<'a> {
    pub method: &'a http::Method,
    /// The request target as received (path and query, or absolute form).
    pub uri: &'a http::Uri,
    pub headers: &'a http::HeaderMap,
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
        let clusters = crate::traffic::build_clusters(&cfg, prev.map(|p| p.clusters.as_slice()));
        let mut outbound_by_vip = HashMap::new();
        let mut outbound_by_port: HashMap<u16, Vec<usize>> = HashMap::new();
        for (i, o) in cfg.outbound.iter().enumerate() {
            outbound_by_vip.insert(o.vip, i);
            outbound_by_port.entry(o.vip.port()).or_default().push(i);
        }
        let inbound_by_port = cfg.inbound.iter().map(|p| (p.port, p.clone())).collect();
        let rr = cfg
            .services
            .keys()
            .map(|k| (k.clone(), AtomicUsize::new(0)))
            .collect();
        Snapshot {
            cfg,
            outbound_by_vip,
            outbound_by_port,
            inbound_by_port,
            rr,
            clusters,
        }
    }

    /// The runtime state of the cluster `dest` resolves to for a request on `request_port`.
    pub fn cluster(
        &self,
        table: &meshapi::traffic::RouteTable,
        dest: &meshapi::traffic::DestinationRef,
        request_port: u16,
    ) -> Option<&Arc<crate::traffic::ClusterState>> {
        self.clusters.get(table.cluster_index(dest, request_port)?)
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

    /// The route decision: picks the endpoint for a request (or a TCP connection when `req`
    /// is `None`). Today: the first route whose path prefix matches selects endpoints by
    /// label (no routes: all endpoints), then round robin. Traffic management replaces the
    /// body of this function, not its callers.
    pub fn route(
        &self,
        out: &OutboundService,
        req: Option<RequestFacts<'_>>,
    ) -> Result<Target, ProxyError> {
        if let Some((table, host)) = crate::traffic::table_for(self, out) {
            return crate::traffic::route_connection(
                self,
                table,
                host,
                out.target_port(),
                req.map(|r| (r.method, r.uri, r.headers)),
            );
        }
        let svc = self
            .cfg
            .services
            .get(&out.service)
            .ok_or_else(|| ProxyError::NoRoute {
                target: out.service.clone(),
            })?;
        let selected: Vec<&Endpoint> = if svc.routes.is_empty() {
            svc.endpoints.iter().collect()
        } else {
            let path = req.map(|r| r.path).unwrap_or("/");
            let route = svc
                .routes
                .iter()
                .find(|r| r.path_prefix.as_deref().is_none_or(|p| path.starts_with(p)))
                .ok_or_else(|| ProxyError::NoRoute {
                    target: format!("{}{path}", out.service),
                })?;
            svc.endpoints
                .iter()
                .filter(|e| {
                    route
                        .endpoint_labels
                        .iter()
                        .all(|(k, v)| e.labels.get(k) == Some(v))
                })
                .collect()
        };
        if selected.is_empty() {
            return Err(ProxyError::NoHealthyUpstream {
                service: out.service.clone(),
            });
        }
        let n = self
            .rr
            .get(&out.service)
            .map(|c| c.fetch_add(1, Ordering::Relaxed))
            .unwrap_or(0);
        Ok(Target {
            service: out.service.clone(),
            endpoint: Arc::new(selected[n % selected.len()].clone()),
            target_port: out.target_port(),
            connect: ConnectSettings {
                http2: matches!(out.protocol, Protocol::Http2 | Protocol::Grpc),
                ..ConnectSettings::default()
            },
            cluster: None,
        })
    }

    /// The authorize step for inbound requests and connections, after PeerAuthentication:
    /// evaluates the config's compiled authorization policy (none: allow everything) for a
    /// request (`req` set) or a TCP connection, logs and counts the decision. A denial is
    /// [`ProxyError::Denied`]; a path the normalization refuses is a bad request. An allowed
    /// request carries the normalized path to forward.
    pub fn authorize(
        &self,
        peer: &PeerInfo,
        req: Option<HttpFacts<'_>>,
        counters: &crate::authz::AuthzCounters,
    ) -> Result<crate::authz::Authorized, ProxyError> {
        match &self.cfg.authorization {
            None => Ok(crate::authz::Authorized::default()),
            Some(policy) => crate::authz::check(&self.cfg, policy, peer, req, counters),
        }
    }
}
