//! The traffic-management engine: what a client proxy decides per request, with Istio's
//! semantics (and Envoy's where Istio leaves behaviour to Envoy).
//!
//! - A [`RouteTable`] (compiled for one client workload by `meshmodel::compile::routes` from
//!   VirtualServices and DestinationRules) holds per destination service the ordered HTTP and
//!   TCP rules (matchers precompiled, `sourceLabels` and `sourceNamespace` already decided for
//!   this client), and per (service, subset, port) a [`Cluster`] with its resolved
//!   [`ClusterPolicy`]. The table is self-contained and serializable, meant to travel inside
//!   the proxy's config document.
//! - [`RouteTable::route`] decides one request from a borrowed [`RequestView`] without
//!   allocating (a redirect's `Location` is the exception): the rule, the weighted destination,
//!   the drawn fault and mirrors, or a redirect / direct response / CORS preflight answer.
//!   Randomness is the caller's: one `u64` per request.
//! - [`Balancer`] picks an endpoint (ROUND_ROBIN, LEAST_REQUEST, RANDOM, PASSTHROUGH, ring hash,
//!   maglev, slow start), with an exclude set so a retry prefers another endpoint.
//! - [`OutlierDetector`] ejects failing endpoints (time passed in), [`CircuitBreaker`] counts
//!   connection-pool resources, [`backoff`] is Envoy's retry backoff.
//!
//! docs/traffic.md describes the semantics and every choice made where Istio leaves room.

mod lb;
mod matcher;
mod outlier;
mod policy;
mod pool;
mod retry;
mod route;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::authz::HeaderLookup;

pub use lb::{Balancer, EndpointState, HashInput, HashOutcome, Pick, SetCookie, hash_bytes};
pub use matcher::{NamedCond, Pattern, RegexRewrite, RequestMatch, StrCond, query_param};
pub use outlier::{CallResult, EjectionInfo, OutlierDetector};
pub use policy::{
    ClusterPolicy, DEFAULT_MAGLEV_TABLE_SIZE, DEFAULT_MAX_EJECTION_TIME, DEFAULT_MIN_RING_SIZE,
    HashKey, LbAlgorithm, LbPolicy, OutlierConfig, PoolLimits, WarmupConfig,
};
pub use pool::{CircuitBreaker, Overflow, PoolPermit, PoolResource, PoolStats};
pub use retry::{AttemptOutcome, DEFAULT_BASE_BACKOFF, RetryPolicy, backoff};
pub use route::{
    Abort, Action, Body, Cors, DestinationRef, DirectResponse, Fault, FaultDraw, HeaderOps,
    HeaderRules, HttpRule, Mirror, Redirect, RedirectPort, Rewrite, TcpDestination, TcpRule,
    WeightedDestination, is_authority_header, per_million, pick_weighted, sampled, sub_random,
};

use matcher::MatchInput;
use route::RedirectInput;

/// The version of the [`RouteTable`] format; bumped on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;
/// Response flag of a request no route matched (404).
pub const FLAG_NO_ROUTE: &str = "NR";
/// Response flag of a circuit-breaker overflow (503).
pub const FLAG_OVERFLOW: &str = "UO";
/// Response flag of an injected abort.
pub const FLAG_FAULT_ABORT: &str = "FI";
/// Response flag of an injected delay.
pub const FLAG_FAULT_DELAY: &str = "DI";

/// Everything one client proxy needs to route its outbound traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteTable {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// The client workload (compose service name) the table was compiled for.
    pub client: String,
    /// Per destination service, sorted by host.
    pub services: Vec<ServiceRoutes>,
    /// Per (host, subset, port), sorted so.
    pub clusters: Vec<Cluster>,
}

/// The rules for one destination host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRoutes {
    /// FQDN (`backend.default.svc.cluster.local`).
    pub host: String,
    /// The service's ports.
    pub ports: Vec<u16>,
    /// `namespace/name` of the VirtualService in force. Default none (default route).
    #[serde(default)]
    pub virtual_service: Option<String>,
    /// `namespace/name` of the DestinationRule in force. Default none.
    #[serde(default)]
    pub destination_rule: Option<String>,
    /// Ordered HTTP rules; the first match wins.
    pub http: Vec<HttpRule>,
    /// Ordered TCP rules; the first match wins.
    pub tcp: Vec<TcpRule>,
}

/// The endpoints behind one (host, subset, port) and the policy for them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    pub host: String,
    /// Default none: every endpoint of the host.
    #[serde(default)]
    pub subset: Option<String>,
    pub port: u16,
    /// Labels an endpoint must carry to belong here (the subset's). Default none.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Compose services whose instances belong here.
    pub workloads: Vec<String>,
    pub policy: ClusterPolicy,
}

/// A request as the router sees it, borrowed from the proxy's request.
#[derive(Clone, Copy)]
pub struct RequestView<'a> {
    /// The destination service's FQDN (what the VIP the client dialled maps to).
    pub host: &'a str,
    /// The destination port the client dialled.
    pub port: u16,
    /// `:method`.
    pub method: &'a str,
    /// `:scheme` (`http` for plain HTTP/1).
    pub scheme: &'a str,
    /// `:authority` / `Host` as received.
    pub authority: &'a str,
    /// Path without the query.
    pub path: &'a str,
    /// Query without `?`; empty when none.
    pub query: &'a str,
    /// Request headers by lower-case name (repeated headers joined with `,`).
    pub headers: &'a dyn HeaderLookup,
    /// A uniformly random number for this request (weights, faults, mirrors).
    pub random: u64,
}

impl<'a> RequestView<'a> {
    /// A `GET` of `path` on `host:port` with no headers, for tests and tools.
    pub fn get(host: &'a str, port: u16, path: &'a str) -> RequestView<'a> {
        RequestView {
            host,
            port,
            method: "GET",
            scheme: "http",
            authority: host,
            path,
            query: "",
            headers: &(),
            random: 0,
        }
    }

    fn match_input(&self) -> MatchInput<'a> {
        MatchInput {
            method: self.method,
            scheme: self.scheme,
            authority: self.authority,
            path: self.path,
            query: self.query,
            headers: self.headers,
            port: self.port,
        }
    }
}

/// What to do with one request.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteDecision<'a> {
    /// Forward upstream.
    Forward(Forward<'a>),
    /// Answer with a redirect.
    Redirect {
        rule: &'a HttpRule,
        status: u16,
        location: String,
    },
    /// Answer with a fixed response.
    Direct {
        rule: &'a HttpRule,
        response: &'a DirectResponse,
    },
    /// A CORS preflight the proxy answers itself: 200 with the policy's headers when
    /// `allowed`, without CORS headers otherwise.
    CorsPreflight {
        rule: &'a HttpRule,
        cors: &'a Cors,
        allowed: bool,
    },
    /// No rule matched: 404 with flag `NR` (as Envoy).
    NoRoute,
    /// The host is not in the table (not a mesh service this client knows).
    UnknownHost,
}

/// A request to forward.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward<'a> {
    pub rule: &'a HttpRule,
    /// Index of the rule in the service's list (for stats).
    pub rule_index: usize,
    /// The match block that matched; `None` for a rule without `match`.
    pub matched: Option<&'a RequestMatch>,
    pub destination: &'a WeightedDestination,
    /// Fault drawn for this request (delay, then abort). With a fault, the route's timeout and
    /// retries do not apply to the injected delay or abort.
    pub fault: FaultDraw,
    /// Bit `i` set: mirror `rule.mirrors[i]` (fire and forget).
    pub mirror_mask: u64,
}

impl<'a> Forward<'a> {
    /// The route timeout (retries included); `None` is no timeout.
    pub fn timeout(&self) -> Option<std::time::Duration> {
        self.rule.timeout
    }

    /// The retry policy; `None` when retries are disabled.
    pub fn retries(&self) -> Option<&'a RetryPolicy> {
        self.rule.retries.as_ref()
    }

    /// The mirror targets drawn for this request.
    pub fn mirrors(&self) -> impl Iterator<Item = &'a Mirror> + '_ {
        let mask = self.mirror_mask;
        self.rule
            .mirrors
            .iter()
            .enumerate()
            .filter(move |(i, _)| *i < 64 && mask & (1 << i) != 0)
            .map(|(_, m)| m)
    }

    /// The path to send upstream (rewritten when the rule says so).
    pub fn upstream_path<'p>(&self, path: &'p str) -> std::borrow::Cow<'p, str> {
        match &self.rule.rewrite {
            Some(rw) => rw.path(path, self.matched.and_then(|m| m.uri_prefix())),
            None => std::borrow::Cow::Borrowed(path),
        }
    }

    /// The authority to send upstream, when rewritten: a `Host` / `:authority` header
    /// operation of the route, else of the destination (the route level wins, as in Istio),
    /// else the rule's `rewrite.authority` (validation allows only one of rewrite and headers).
    pub fn upstream_authority(&self) -> Option<&'a str> {
        self.rule
            .headers
            .request
            .authority()
            .or_else(|| self.destination.headers.request.authority())
            .or_else(|| self.rule.rewrite.as_ref()?.authority.as_deref())
    }

    /// Request header operations, in application order (destination, then route, so the
    /// route's win on conflicts).
    pub fn request_headers(&self) -> [&'a HeaderOps; 2] {
        [
            &self.destination.headers.request,
            &self.rule.headers.request,
        ]
    }

    /// Response header operations, in application order.
    pub fn response_headers(&self) -> [&'a HeaderOps; 2] {
        [
            &self.destination.headers.response,
            &self.rule.headers.response,
        ]
    }

    /// The CORS policy to apply to the response (add `Access-Control-Allow-Origin` etc. when
    /// the request's `Origin` is allowed).
    pub fn cors(&self) -> Option<&'a Cors> {
        self.rule.cors.as_ref()
    }
}

impl RouteTable {
    /// The rules for `host` (a normalized FQDN).
    pub fn service(&self, host: &str) -> Option<&ServiceRoutes> {
        self.services
            .binary_search_by(|s| s.host.as_str().cmp(host))
            .ok()
            .and_then(|i| self.services.get(i))
    }

    /// Decides one request.
    pub fn route<'a>(&'a self, req: &RequestView<'_>) -> RouteDecision<'a> {
        match self.service(req.host) {
            Some(s) => s.route(req),
            None => RouteDecision::UnknownHost,
        }
    }

    /// The cluster a destination resolves to for a request that came in on `request_port`.
    pub fn cluster(&self, dest: &DestinationRef, request_port: u16) -> Option<&Cluster> {
        self.cluster_index(dest, request_port)
            .and_then(|i| self.clusters.get(i))
    }

    /// The position in `clusters` of [`RouteTable::cluster`]'s answer (runtime state of a
    /// proxy is kept per position).
    pub fn cluster_index(&self, dest: &DestinationRef, request_port: u16) -> Option<usize> {
        let key = (
            dest.host.as_str(),
            dest.subset.as_deref(),
            dest.port_for(request_port),
        );
        self.clusters
            .binary_search_by(|c| (c.host.as_str(), c.subset.as_deref(), c.port).cmp(&key))
            .ok()
    }

    /// Picks the destination of a TCP connection to `host:port`.
    pub fn route_tcp(&self, host: &str, port: u16, random: u64) -> Option<&DestinationRef> {
        self.service(host)?.route_tcp(port, random)
    }
}

impl RouteTable {
    /// A table with no hosts, for `client`.
    pub fn empty(client: &str) -> RouteTable {
        RouteTable {
            version: FORMAT_VERSION,
            client: client.to_string(),
            services: Vec::new(),
            clusters: Vec::new(),
        }
    }

    /// Adds, for each `(host, ports)` not in the table yet, what `meshmodel`'s `compile_routes` emits for
    /// a service no VirtualService or DestinationRule names: one HTTP and one TCP rule to all
    /// of its endpoints with Istio's default retry policy ([`HttpRule::default_to`],
    /// [`TcpRule::default_to`]), and per port a cluster with Istio's default policy and no
    /// workload filter. Keeps the table sorted.
    pub fn with_defaults(mut self, hosts: impl IntoIterator<Item = (String, Vec<u16>)>) -> Self {
        for (host, ports) in hosts {
            if self.service(&host).is_some() {
                continue;
            }
            let dest = DestinationRef {
                host: host.clone(),
                subset: None,
                port: (ports.len() == 1).then(|| ports[0]),
            };
            for port in &ports {
                self.clusters.push(Cluster {
                    host: host.clone(),
                    subset: None,
                    port: *port,
                    labels: BTreeMap::new(),
                    workloads: Vec::new(),
                    policy: ClusterPolicy::default(),
                });
            }
            self.services.push(ServiceRoutes {
                host,
                ports,
                virtual_service: None,
                destination_rule: None,
                http: vec![HttpRule::default_to(&dest)],
                tcp: vec![TcpRule::default_to(&dest)],
            });
        }
        self.services.sort_by(|a, b| a.host.cmp(&b.host));
        self.clusters.sort_by(|a, b| {
            (a.host.as_str(), a.subset.as_deref(), a.port).cmp(&(
                b.host.as_str(),
                b.subset.as_deref(),
                b.port,
            ))
        });
        self.clusters
            .dedup_by(|a, b| a.host == b.host && a.subset == b.subset && a.port == b.port);
        self
    }
}

impl Cluster {
    /// Whether endpoint `e` belongs here: one of the cluster's workloads (when both say),
    /// carrying the subset's labels.
    pub fn holds(&self, e: &crate::proxy::Endpoint) -> bool {
        let workload_ok = match (&e.workload, self.workloads.is_empty()) {
            (Some(w), false) => self.workloads.iter().any(|cw| cw == w),
            _ => true,
        };
        workload_ok && (self.labels.iter()).all(|(k, v)| e.labels.get(k) == Some(v))
    }

    /// How a client connects to endpoint `e` of this cluster: the DestinationRule's `tls`
    /// when it sets one, else the endpoint's own setting for the cluster's port.
    pub fn tls_for(&self, e: &crate::proxy::Endpoint) -> crate::proxy::UpstreamTls {
        (self.policy.tls.clone()).unwrap_or_else(|| e.tls_for(self.port))
    }
}

impl ServiceRoutes {
    /// Decides one request against this host's rules.
    pub fn route<'a>(&'a self, req: &RequestView<'_>) -> RouteDecision<'a> {
        let input = req.match_input();
        for (i, rule) in self.http.iter().enumerate() {
            let matched = if rule.matches.is_empty() {
                None
            } else {
                match rule.matches.iter().find(|m| m.matches(&input)) {
                    Some(m) => Some(m),
                    None => continue,
                }
            };
            return decide(rule, i, matched, req);
        }
        RouteDecision::NoRoute
    }

    /// Picks the destination of a TCP connection on `port`.
    pub fn route_tcp(&self, port: u16, random: u64) -> Option<&DestinationRef> {
        let rule = self.tcp.iter().find(|r| r.matches(port))?;
        pick_weighted(&rule.route, |d| d.weight, sub_random(random, 1)).map(|d| &d.destination)
    }
}

fn is_preflight(req: &RequestView<'_>) -> bool {
    req.method == "OPTIONS"
        && req.headers.get("origin").is_some()
        && req.headers.get("access-control-request-method").is_some()
}

fn decide<'a>(
    rule: &'a HttpRule,
    rule_index: usize,
    matched: Option<&'a RequestMatch>,
    req: &RequestView<'_>,
) -> RouteDecision<'a> {
    if let Some(cors) = &rule.cors
        && is_preflight(req)
    {
        let allowed = req.headers.get("origin").is_some_and(|o| cors.allows(o));
        if allowed || cors.ignore_unmatched_preflights {
            return RouteDecision::CorsPreflight {
                rule,
                cors,
                allowed,
            };
        }
    }
    let dests = match &rule.action {
        Action::Route(d) => d,
        Action::Redirect(r) => {
            let input = RedirectInput {
                scheme: req.scheme,
                authority: req.authority,
                path: req.path,
                query: req.query,
                port: req.port,
            };
            return RouteDecision::Redirect {
                rule,
                status: r.status,
                location: r.location(&input, matched.and_then(|m| m.uri_prefix())),
            };
        }
        Action::DirectResponse(response) => return RouteDecision::Direct { rule, response },
    };
    let Some(destination) = pick_weighted(dests, |d| d.weight, sub_random(req.random, 1)) else {
        return RouteDecision::NoRoute;
    };
    let fault = rule.fault.as_ref().map_or(FaultDraw::default(), |f| {
        f.draw(sub_random(req.random, 2), sub_random(req.random, 3))
    });
    let mut mirror_mask = 0u64;
    for (i, m) in rule.mirrors.iter().enumerate().take(64) {
        if sampled(sub_random(req.random, 4 + i as u64), m.per_million) {
            mirror_mask |= 1 << i;
        }
    }
    RouteDecision::Forward(Forward {
        rule,
        rule_index,
        matched,
        destination,
        fault,
        mirror_mask,
    })
}
