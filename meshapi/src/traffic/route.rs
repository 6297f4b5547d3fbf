//! Compiled HTTP and TCP route rules and what evaluating one yields: weighted destinations,
//! redirects, direct responses, rewrites, header operations, CORS, fault injection and mirrors.
//!
//! Every random choice takes a caller-supplied number (the proxy owns randomness), so a test
//! can drive the same decision deterministically; [`sub_random`] derives independent streams
//! from one number.

use std::borrow::Cow;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::matcher::{RequestMatch, StrCond};
use super::retry::RetryPolicy;

/// Fault and mirror percentages are sampled out of a million, like Envoy's fractional percent.
const MILLION: u64 = 1_000_000;

/// An independent pseudo-random number for `stream` derived from the caller's `random`
/// (splitmix64), so one number can drive weights, faults and mirrors without correlation.
pub fn sub_random(random: u64, stream: u64) -> u64 {
    let mut z = random
        .wrapping_add(stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whether a sample `random` falls in `per_million` of a million.
pub fn sampled(random: u64, per_million: u32) -> bool {
    random % MILLION < u64::from(per_million)
}

/// A percentage as parts per million (Envoy's precision).
pub fn per_million(percent: f64) -> u32 {
    let v = (percent * 10_000.0).round();
    if v <= 0.0 {
        0
    } else if v >= 1_000_000.0 {
        1_000_000
    } else {
        v as u32
    }
}

/// Where traffic goes: a mesh service (FQDN), optionally a subset and a port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRef {
    /// The destination host, normalized (`backend.default.svc.cluster.local`).
    pub host: String,
    /// Subset of the host's DestinationRule. Default none (all endpoints).
    #[serde(default)]
    pub subset: Option<String>,
    /// Port. Default none: the service's only port, else the port the request came in on.
    #[serde(default)]
    pub port: Option<u16>,
}

impl DestinationRef {
    /// The port to use for a request that arrived on `request_port`.
    pub fn port_for(&self, request_port: u16) -> u16 {
        self.port.unwrap_or(request_port)
    }
}

/// Header set/add/remove, names lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HeaderOps {
    /// Overwrite. Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<(String, String)>,
    /// Append. Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<(String, String)>,
    /// Remove. Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// The authority a `set` (else an `add`) of `Host` or `:authority` gives: Istio turns such
    /// an operation into an authority rewrite, not a header.
    pub fn authority(&self) -> Option<&str> {
        self.set
            .iter()
            .chain(&self.add)
            .find(|(k, _)| is_authority_header(k))
            .map(|(_, v)| v.as_str())
    }
}

/// Whether a header operation's name is the request's authority (`Host`, `:authority`).
pub fn is_authority_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case(":authority")
}

/// Request and response header operations.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HeaderRules {
    #[serde(default)]
    pub request: HeaderOps,
    #[serde(default)]
    pub response: HeaderOps,
}

/// A weighted destination of an HTTP route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightedDestination {
    pub destination: DestinationRef,
    /// Relative weight; 0 gets nothing.
    pub weight: u32,
    /// Header operations for this destination (applied before the route's, which win on
    /// conflicts, as Envoy's default order does). Default none.
    #[serde(default)]
    pub headers: HeaderRules,
}

/// Path and authority rewrite before forwarding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rewrite {
    /// Replace the matched prefix (a prefix match), else the whole path. Default none.
    #[serde(default)]
    pub uri: Option<String>,
    /// Regex substitution on the path. Default none.
    #[serde(default)]
    pub uri_regex: Option<super::matcher::RegexRewrite>,
    /// New `:authority`. Default none.
    #[serde(default)]
    pub authority: Option<String>,
}

/// Answer with a redirect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redirect {
    /// New path (whole path). Default: the request's.
    #[serde(default)]
    pub uri: Option<String>,
    /// Replace the matched prefix with this. Default none.
    #[serde(default)]
    pub prefix_rewrite: Option<String>,
    /// New host. Default: the request's.
    #[serde(default)]
    pub authority: Option<String>,
    /// Port rule. Default: keep the authority's port.
    pub port: RedirectPort,
    /// New scheme. Default: the request's.
    #[serde(default)]
    pub scheme: Option<String>,
    /// Status. Default 301.
    pub status: u16,
}

/// The port of a redirect's `Location`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedirectPort {
    /// Keep whatever port the authority carries.
    Keep,
    /// This port.
    Fixed(u16),
    /// The scheme's default (no port written).
    FromProtocolDefault,
    /// The port the request came in on.
    FromRequestPort,
}

/// A fixed response body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Body {
    Text(String),
    /// Decoded from the resource's base64 `bytes`.
    Bytes(Vec<u8>),
}

impl Body {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Body::Text(s) => s.as_bytes(),
            Body::Bytes(b) => b,
        }
    }
}

/// Answer with a fixed status and body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectResponse {
    pub status: u16,
    /// Default none (empty body).
    #[serde(default)]
    pub body: Option<Body>,
}

/// A CORS policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cors {
    /// Allowed origins. Empty: no origin is allowed.
    pub allow_origins: Vec<StrCond>,
    /// `Access-Control-Allow-Methods`, joined. Default none.
    #[serde(default)]
    pub allow_methods: Option<String>,
    /// `Access-Control-Allow-Headers`, joined. Default none.
    #[serde(default)]
    pub allow_headers: Option<String>,
    /// `Access-Control-Expose-Headers`, joined. Default none.
    #[serde(default)]
    pub expose_headers: Option<String>,
    /// `Access-Control-Max-Age`, seconds. Default none.
    #[serde(default)]
    pub max_age_secs: Option<u64>,
    /// `Access-Control-Allow-Credentials: true`. Default false.
    #[serde(default)]
    pub allow_credentials: bool,
    /// A preflight from an origin not allowed is answered without CORS headers instead of
    /// forwarded. Default false (Istio's `FORWARD`).
    #[serde(default)]
    pub ignore_unmatched_preflights: bool,
}

impl Cors {
    /// Whether `origin` is allowed.
    pub fn allows(&self, origin: &str) -> bool {
        self.allow_origins.iter().any(|o| o.matches(origin))
    }
}

/// Injected faults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    /// `(delay, parts per million delayed)`. Default none.
    #[serde(default)]
    pub delay: Option<(Duration, u32)>,
    /// `(abort, parts per million aborted)`. Default none.
    #[serde(default)]
    pub abort: Option<(Abort, u32)>,
}

/// What an abort answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Abort {
    /// This HTTP status.
    Http(u16),
    /// HTTP 200 with this `grpc-status` (numeric code).
    Grpc(u32),
}

/// One mirror target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mirror {
    pub destination: DestinationRef,
    /// Share mirrored, parts per million. Default 100%.
    pub per_million: u32,
}

/// What a matching route does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Forward to one of these (weighted).
    Route(Vec<WeightedDestination>),
    Redirect(Redirect),
    DirectResponse(DirectResponse),
}

/// One compiled HTTP route rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpRule {
    /// `name` of the rule. Default none.
    #[serde(default)]
    pub name: Option<String>,
    /// Match blocks, ORed; empty matches everything. Blocks whose `sourceLabels` or
    /// `sourceNamespace` exclude this client were dropped at compile time.
    #[serde(default)]
    pub matches: Vec<RequestMatch>,
    pub action: Action,
    /// Path/authority rewrite. Default none.
    #[serde(default)]
    pub rewrite: Option<Rewrite>,
    /// Route timeout, retries included. Default none (disabled, as in Istio).
    #[serde(default)]
    pub timeout: Option<Duration>,
    /// Retries; `None` when disabled. Default: Istio's default policy.
    #[serde(default)]
    pub retries: Option<RetryPolicy>,
    /// Fault injection. Default none.
    #[serde(default)]
    pub fault: Option<Fault>,
    /// Mirrors. Default none.
    #[serde(default)]
    pub mirrors: Vec<Mirror>,
    /// CORS. Default none.
    #[serde(default)]
    pub cors: Option<Cors>,
    /// Route-level header operations. Default none.
    #[serde(default)]
    pub headers: HeaderRules,
}

/// A weighted destination of a TCP route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpDestination {
    pub destination: DestinationRef,
    pub weight: u32,
}

/// One compiled TCP route rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpRule {
    /// Ports matched (blocks ORed); empty matches every port. Blocks excluding this client by
    /// `sourceLabels`/`sourceNamespace` were dropped at compile time.
    #[serde(default)]
    pub ports: Vec<Option<u16>>,
    pub route: Vec<TcpDestination>,
}

impl HttpRule {
    /// The rule for a host no VirtualService routes: everything to `dest`, with Istio's
    /// default retry policy.
    pub fn default_to(dest: &DestinationRef) -> HttpRule {
        HttpRule {
            name: Some("default".to_string()),
            matches: Vec::new(),
            action: Action::Route(vec![WeightedDestination {
                destination: dest.clone(),
                weight: 100,
                headers: HeaderRules::default(),
            }]),
            rewrite: None,
            timeout: None,
            retries: Some(RetryPolicy::istio_default()),
            fault: None,
            mirrors: Vec::new(),
            cors: None,
            headers: HeaderRules::default(),
        }
    }
}

impl TcpRule {
    /// The rule for a host no VirtualService routes: every connection to `dest`.
    pub fn default_to(dest: &DestinationRef) -> TcpRule {
        TcpRule {
            ports: Vec::new(),
            route: vec![TcpDestination {
                destination: dest.clone(),
                weight: 100,
            }],
        }
    }

    pub(crate) fn matches(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.iter().any(|p| p.is_none_or(|p| p == port))
    }
}

/// Picks by relative weight with `random`; entries of weight 0 never win. `None` when the
/// list is empty; the first entry when every weight is 0.
pub fn pick_weighted<T>(items: &[T], weight: impl Fn(&T) -> u32, random: u64) -> Option<&T> {
    let total: u64 = items.iter().map(|i| u64::from(weight(i))).sum();
    if total == 0 {
        return items.first();
    }
    let mut x = random % total;
    for i in items {
        let w = u64::from(weight(i));
        if x < w {
            return Some(i);
        }
        x -= w;
    }
    items.last()
}

/// The fault drawn for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultDraw {
    /// Delay the request this long before going on.
    pub delay: Option<Duration>,
    /// Answer with this instead of forwarding.
    pub abort: Option<Abort>,
}

impl Fault {
    /// Draws this request's fault with two independent samples.
    pub fn draw(&self, random_delay: u64, random_abort: u64) -> FaultDraw {
        FaultDraw {
            delay: self
                .delay
                .filter(|(_, p)| sampled(random_delay, *p))
                .map(|(d, _)| d),
            abort: self
                .abort
                .filter(|(_, p)| sampled(random_abort, *p))
                .map(|(a, _)| a),
        }
    }
}

impl Rewrite {
    /// The path to forward, given the request path and the prefix the route matched on.
    pub fn path<'p>(&self, path: &'p str, matched_prefix: Option<&str>) -> Cow<'p, str> {
        if let Some(new) = &self.uri {
            return Cow::Owned(replace_prefix(path, matched_prefix, new));
        }
        if let Some(rx) = &self.uri_regex {
            return rx.apply(path);
        }
        Cow::Borrowed(path)
    }
}

/// Envoy's `prefix_rewrite` for a prefix match, else the whole path replaced.
fn replace_prefix(path: &str, prefix: Option<&str>, new: &str) -> String {
    match prefix {
        Some(p) if path.len() >= p.len() && path.is_char_boundary(p.len()) => {
            format!("{new}{}", &path[p.len()..])
        }
        _ => new.to_string(),
    }
}

/// The request fields a redirect is built from.
pub struct RedirectInput<'a> {
    pub scheme: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub port: u16,
}

impl Redirect {
    /// The `Location` of the redirect, as Envoy builds it (default ports omitted, query kept).
    pub fn location(&self, r: &RedirectInput<'_>, matched_prefix: Option<&str>) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(r.scheme);
        let authority = self.authority.as_deref().unwrap_or(r.authority);
        let (host, kept_port) = split_port(authority);
        let port = match self.port {
            RedirectPort::Keep => kept_port,
            RedirectPort::Fixed(p) => Some(p),
            RedirectPort::FromProtocolDefault => None,
            RedirectPort::FromRequestPort => Some(r.port),
        };
        // `FROM_REQUEST_PORT` is Envoy's `port_redirect` with the port the request came in on:
        // written as is, even a scheme's default port.
        let default_port = match (scheme, &self.port) {
            (_, RedirectPort::FromRequestPort) => None,
            ("https", _) => Some(443),
            ("http", _) => Some(80),
            _ => None,
        };
        let path: Cow<'_, str> = match (&self.uri, &self.prefix_rewrite) {
            (Some(u), _) => Cow::Borrowed(u),
            (None, Some(p)) => Cow::Owned(replace_prefix(r.path, matched_prefix, p)),
            (None, None) => Cow::Borrowed(r.path),
        };
        let mut out = format!("{scheme}://{host}");
        if let Some(p) = port.filter(|p| Some(*p) != default_port) {
            out.push_str(&format!(":{p}"));
        }
        out.push_str(&path);
        if !r.query.is_empty() && !path.contains('?') {
            out.push('?');
            out.push_str(r.query);
        }
        out
    }
}

/// `host:port` into host and numeric port (IPv6 brackets respected).
fn split_port(authority: &str) -> (&str, Option<u16>) {
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && (!h.contains(':') || h.ends_with(']')) => {
            match p.parse() {
                Ok(port) => (h, Some(port)),
                Err(_) => (authority, None),
            }
        }
        _ => (authority, None),
    }
}
