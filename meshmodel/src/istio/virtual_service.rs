//! VirtualService (networking.istio.io v1alpha3, v1beta1, v1): how requests to a host are
//! matched and routed — weights, subsets, rewrites, redirects, fault injection, mirroring,
//! timeouts, retries, CORS and header manipulation.
//!
//! Field names, types and oneofs follow Istio's CRD schema. Istio's defaults that meshctl
//! applies are documented on the fields and available as accessors (see [`HttpRoute::retry_policy`],
//! [`HttpRoute::mirror_percentage`], [`FaultDelay::percentage`], [`HttpRoute::destination_weights`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::meta::{Ignored, ObjectMeta};
use super::types::{
    Duration, IntPercent, Labels, Percent, Percentage, Port, RetryCondition, RetryOn,
};

/// A VirtualService document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualService {
    /// `networking.istio.io/v1`, `v1beta1` or `v1alpha3` (same schema).
    pub api_version: String,
    /// `VirtualService`.
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: VirtualServiceSpec,
    /// Written by a cluster; read and dropped.
    #[serde(default, skip_serializing)]
    pub status: Ignored,
}

/// The `spec` of a VirtualService.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceSpec {
    /// The hosts these rules apply to: mesh service names (`reviews`), FQDNs
    /// (`reviews.default.svc.cluster.local`) or `*.`-wildcard names. Required by meshctl (a
    /// VirtualService without hosts is an Istio delegate, not supported).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Gateways and sidecars the routes apply to. Default (and the only value meshctl serves):
    /// `mesh`, all sidecars.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Ordered HTTP route rules; the first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRoute>,
    /// Ordered SNI route rules for TLS passthrough traffic. Not supported by meshctl.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<TlsRoute>,
    /// Ordered route rules for opaque TCP traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<TcpRoute>,
    /// Namespaces that see this VirtualService: `.` (own), `*` (all, the default) or names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
}

/// One HTTP route rule: conditions (`match`) and what to do (`route`, `redirect` or
/// `directResponse`), plus the resilience settings applied on the way.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    /// Name for debugging and statistics; appears in access logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Conditions, ORed: the rule applies when any one matches. Empty: always applies.
    #[serde(rename = "match", default, skip_serializing_if = "Vec::is_empty")]
    pub r#match: Vec<HttpMatchRequest>,
    /// Weighted destinations. Exactly one of `route`, `redirect`, `directResponse`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<HttpRouteDestination>,
    /// Answer with a redirect instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<HttpRedirect>,
    /// Answer with a fixed response instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<HttpDirectResponse>,
    /// Hand the rule to another VirtualService. Not supported by meshctl.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegate: Option<Delegate>,
    /// Rewrite the path and/or authority before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<HttpRewrite>,
    /// Whole-request timeout, retries included. Default: none (disabled). At least 1ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Retry policy. Absent: Istio's default policy (see [`HttpRoute::retry_policy`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<HttpRetry>,
    /// Fault injection (delays, aborts) on the client side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<HttpFaultInjection>,
    /// Mirror traffic to one more destination (fire and forget). Exclusive with `mirrors`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Destination>,
    /// Mirror traffic to several destinations, each with its own percentage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<HttpMirrorPolicy>,
    /// Deprecated integer percentage of `mirror`; use `mirrorPercentage`. Also read as
    /// `mirror_percent`.
    #[serde(
        default,
        alias = "mirror_percent",
        skip_serializing_if = "Option::is_none"
    )]
    pub mirror_percent: Option<IntPercent>,
    /// Share of traffic mirrored by `mirror`. Default 100%.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_percentage: Option<Percentage>,
    /// Cross-Origin Resource Sharing policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors_policy: Option<CorsPolicy>,
    /// Header manipulation for requests and responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

/// Match conditions of an HTTP rule; all conditions given must hold (AND).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatchRequest {
    /// Name of the match, prefixed to the route name in logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The request path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    /// The URI scheme.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<StringMatch>,
    /// The HTTP method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    /// The authority (Host header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<StringMatch>,
    /// Request headers, keyed by lowercase name. An empty match (`{}`) means "present".
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
    /// The port of the host being addressed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
    /// Labels of the calling workload.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub source_labels: Labels,
    /// Gateways this match applies to; only `mesh` is served.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Query parameters. An empty match (`{}`) means "present".
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query_params: BTreeMap<String, StringMatch>,
    /// Match `uri` case-insensitively (exact and prefix only). Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_uri_case: Option<bool>,
    /// Headers that must not match. `regex: "*"` means "absent".
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub without_headers: BTreeMap<String, StringMatch>,
    /// Namespace of the calling workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
    /// Prefix of the statistics emitted for this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stat_prefix: Option<String>,
}

/// A string condition: at most one of `exact`, `prefix`, `regex` (RE2 syntax, full match).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// The match a [`StringMatch`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringMatcher<'a> {
    Exact(&'a str),
    Prefix(&'a str),
    Regex(&'a str),
    /// No condition given (`{}`): for headers and query parameters, "present".
    Any,
}

impl StringMatch {
    pub fn exact(s: impl Into<String>) -> Self {
        StringMatch {
            exact: Some(s.into()),
            ..Default::default()
        }
    }

    pub fn prefix(s: impl Into<String>) -> Self {
        StringMatch {
            prefix: Some(s.into()),
            ..Default::default()
        }
    }

    pub fn regex(s: impl Into<String>) -> Self {
        StringMatch {
            regex: Some(s.into()),
            ..Default::default()
        }
    }

    /// The condition. `validate()` guarantees at most one is set; were several set, exact wins
    /// over prefix over regex.
    pub fn matcher(&self) -> StringMatcher<'_> {
        match (&self.exact, &self.prefix, &self.regex) {
            (Some(e), _, _) => StringMatcher::Exact(e),
            (None, Some(p), _) => StringMatcher::Prefix(p),
            (None, None, Some(r)) => StringMatcher::Regex(r),
            (None, None, None) => StringMatcher::Any,
        }
    }

    pub(crate) fn set_count(&self) -> usize {
        [
            self.exact.is_some(),
            self.prefix.is_some(),
            self.regex.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count()
    }
}

/// A weighted destination of an HTTP rule, with its own header manipulation.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteDestination {
    /// Where to send the request. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
    /// Relative share of traffic. With one destination it gets everything; otherwise
    /// `weight / sum(weights)`, and an unset weight is 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
    /// Header manipulation for requests sent to, and responses from, this destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

/// A weighted destination of a TCP or TLS rule.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteDestination {
    /// Where to send the connection. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
    /// Relative share of connections, as for HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
}

/// A service (and optionally a subset and port) to send traffic to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    /// Mesh service name or FQDN. Required.
    pub host: String,
    /// A subset defined in the host's DestinationRule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Port on the host; may be left out when the service has exactly one port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
}

/// A port of a destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    /// The port number. Required when `port` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<Port>,
}

/// Header manipulation for requests and responses.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Headers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HeaderOperations>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<HeaderOperations>,
}

/// Set, append and remove headers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOperations {
    /// Overwrite these headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Append these headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Remove these headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// Answer with an HTTP redirect.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRedirect {
    /// Replace the whole path with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Replace the authority (host) with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// Replace the port with this. Exclusive with `derivePort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
    /// Set the port from the scheme or the request. Exclusive with `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derive_port: Option<RedirectPortSelection>,
    /// Replace the scheme: `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Status code of the redirect, 3xx. Default 301.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_code: Option<u32>,
    /// Replace the matched prefix of the path with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
}

impl HttpRedirect {
    /// Istio's default redirect status.
    pub const DEFAULT_REDIRECT_CODE: u32 = 301;
}

/// `derivePort` of a redirect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RedirectPortSelection {
    /// 80 for http, 443 for https.
    FromProtocolDefault,
    /// The port of the request.
    FromRequestPort,
}

/// Answer with a fixed status and body.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpDirectResponse {
    /// HTTP status, 200..=599. Required.
    pub status: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<HttpBody>,
}

/// A response body: exactly one of `string` or base64 `bytes`. At most 1 MiB.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string: Option<String>,
    /// Standard base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<String>,
}

/// Another VirtualService that holds the routes. Not supported by meshctl.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delegate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Rewrite the request before forwarding.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRewrite {
    /// Replace the matched part of the path (the prefix for a prefix match, else the whole path).
    /// Exclusive with `uriRegexRewrite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Replace the authority (Host header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// Regex substitution on the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// A regex substitution: every match of `match` in the path is replaced by `rewrite` (`\1` for
/// capture groups).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegexRewrite {
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub r#match: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<String>,
}

/// Retry policy of an HTTP rule.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRetry {
    /// Retries allowed per request (not counting the first try). When `retries` is given,
    /// 0 or unset disables retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,
    /// Timeout of each try, first included. At least 1ms. Default: the route timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Conditions to retry on. Default [`HttpRetry::DEFAULT_RETRY_ON`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<RetryOn>,
    /// Retry in other localities. meshctl has one locality; accepted and kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_remote_localities: Option<bool>,
    /// Avoid endpoints already tried. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_ignore_previous_hosts: Option<bool>,
    /// Base interval between retries (exponential with jitter). At least 1ms. Default 25ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Duration>,
}

impl HttpRetry {
    /// Istio's default number of retries.
    pub const DEFAULT_ATTEMPTS: u32 = 2;
    /// Istio's default retry conditions.
    pub const DEFAULT_RETRY_ON: &'static str =
        "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";
    /// Istio's default retriable status codes (for `retriable-status-codes`): none. Since Istio
    /// 1.24 a 503 from the application is no longer retried by default (retrying it is unsafe:
    /// the request may have been processed); connection failures and refused streams still are.
    pub const DEFAULT_RETRIABLE_STATUS_CODES: &'static [u16] = &[];
    /// Envoy's default base backoff interval, which Istio keeps.
    pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);

    /// [`HttpRetry::DEFAULT_RETRY_ON`], parsed.
    pub fn default_retry_on() -> RetryOn {
        RetryOn::new(vec![
            RetryCondition::ConnectFailure,
            RetryCondition::RefusedStream,
            RetryCondition::Unavailable,
            RetryCondition::Cancelled,
            RetryCondition::RetriableStatusCodes,
        ])
    }

    /// `attempts` with Istio's meaning: when a retry policy is written, unset is 0 (disabled).
    pub fn attempts(&self) -> u32 {
        self.attempts.map_or(0, |a| u32::try_from(a).unwrap_or(0))
    }
}

/// The retry policy in force for a route, Istio's defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries per request (not counting the first try).
    pub attempts: u32,
    /// Conditions to retry on.
    pub retry_on: RetryOn,
    /// Statuses retried under `retriable-status-codes`.
    pub retriable_status_codes: Vec<u16>,
    /// Timeout of each try; `None`: bounded only by the route timeout.
    pub per_try_timeout: Option<Duration>,
    /// Skip endpoints already tried.
    pub ignore_previous_hosts: bool,
    /// Base backoff interval.
    pub backoff: Duration,
}

impl RetryPolicy {
    /// The policy Istio applies to a route without `retries`.
    pub fn istio_default() -> RetryPolicy {
        RetryPolicy {
            attempts: HttpRetry::DEFAULT_ATTEMPTS,
            retry_on: HttpRetry::default_retry_on(),
            retriable_status_codes: HttpRetry::DEFAULT_RETRIABLE_STATUS_CODES.to_vec(),
            per_try_timeout: None,
            ignore_previous_hosts: true,
            backoff: HttpRetry::DEFAULT_BACKOFF,
        }
    }
}

/// CORS policy of an HTTP rule.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsPolicy {
    /// Deprecated exact origins; use `allowOrigins`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origin: Vec<String>,
    /// Origins allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origins: Vec<StringMatch>,
    /// `Access-Control-Allow-Methods`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    /// `Access-Control-Allow-Headers`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    /// `Access-Control-Expose-Headers`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// `Access-Control-Max-Age`, whole seconds, at least 1ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
    /// `Access-Control-Allow-Credentials`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
    /// What to do with preflights from origins not allowed. Default `FORWARD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmatched_preflights: Option<UnmatchedPreflights>,
}

/// `corsPolicy.unmatchedPreflights`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnmatchedPreflights {
    /// Default: `FORWARD`.
    Unspecified,
    /// Forward to the upstream.
    Forward,
    /// Answer without CORS headers.
    Ignore,
}

/// Fault injection: delay and/or abort a share of requests.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpFaultInjection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// Delay a share of requests.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    /// Delay before forwarding. At least 1ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_delay: Option<Duration>,
    /// Not implemented by Istio; refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exponential_delay: Option<Duration>,
    /// Share of requests delayed. Default 0 (none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percentage>,
    /// Deprecated integer share; use `percentage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<IntPercent>,
}

impl FaultDelay {
    /// The share of requests delayed: `percentage`, else the deprecated `percent`, else 0.
    pub fn percentage(&self) -> Percent {
        match (&self.percentage, self.percent) {
            (Some(p), _) => p.value,
            (None, Some(p)) => p.as_percent(),
            (None, None) => Percent::ZERO,
        }
    }
}

/// Abort a share of requests with an error.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    /// HTTP status to answer with, 200..=599. One of `httpStatus`, `grpcStatus`, `http2Error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i32>,
    /// gRPC status name to answer with, e.g. `UNAVAILABLE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<String>,
    /// Not implemented by Istio; refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_error: Option<String>,
    /// Share of requests aborted. Default 0 (none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percentage>,
}

impl FaultAbort {
    /// The share of requests aborted: `percentage`, else 0.
    pub fn percentage(&self) -> Percent {
        self.percentage.map_or(Percent::ZERO, |p| p.value)
    }
}

/// One mirror destination.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMirrorPolicy {
    /// Where copies go. Required.
    pub destination: Destination,
    /// Share of traffic copied. Default 100%.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percentage>,
}

impl HttpMirrorPolicy {
    /// The share of traffic mirrored: `percentage`, else 100%.
    pub fn percentage(&self) -> Percent {
        self.percentage.map_or(Percent::HUNDRED, |p| p.value)
    }
}

/// A TCP route rule.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRoute {
    /// Conditions, ORed. Empty: always applies.
    #[serde(rename = "match", default, skip_serializing_if = "Vec::is_empty")]
    pub r#match: Vec<L4MatchAttributes>,
    /// Weighted destinations. Required.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteDestination>,
}

/// Conditions of a TCP rule; all given must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4MatchAttributes {
    /// Destination IPs or CIDR blocks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<String>,
    /// Port of the host being addressed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
    /// Labels of the calling workload.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub source_labels: Labels,
    /// Only `mesh` is served.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Namespace of the calling workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
    /// Source IP or CIDR block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_subnet: Option<String>,
}

/// A TLS (SNI) route rule. Not supported by meshctl; kept so it can be reported.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsRoute {
    #[serde(rename = "match", default, skip_serializing_if = "Vec::is_empty")]
    pub r#match: Vec<TlsMatchAttributes>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteDestination>,
}

/// Conditions of a TLS rule.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsMatchAttributes {
    /// SNI names to match. Required.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni_hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub source_labels: Labels,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
}

impl HttpRoute {
    /// The retry policy in force, Istio's defaults filled in; `None` when retries are disabled.
    ///
    /// As in Istio: no `retries` means the default policy (2 attempts on
    /// [`HttpRetry::DEFAULT_RETRY_ON`], no status code retriable since Istio 1.24); a `retries` with `attempts` 0 or
    /// unset disables retries; status codes in `retryOn` imply `retriable-status-codes`.
    pub fn retry_policy(&self) -> Option<RetryPolicy> {
        let Some(r) = &self.retries else {
            return Some(RetryPolicy::istio_default());
        };
        if r.attempts() == 0 {
            return None;
        }
        let mut out = RetryPolicy::istio_default();
        out.attempts = r.attempts();
        if let Some(on) = &r.retry_on {
            let codes: Vec<u16> = on.status_codes().collect();
            let mut conditions: Vec<RetryCondition> = on
                .conditions()
                .iter()
                .copied()
                .filter(|c| !matches!(c, RetryCondition::Status(_)))
                .collect();
            if !codes.is_empty() && !conditions.contains(&RetryCondition::RetriableStatusCodes) {
                conditions.push(RetryCondition::RetriableStatusCodes);
            }
            out.retry_on = RetryOn::new(conditions);
            if !codes.is_empty() {
                out.retriable_status_codes = codes;
            }
        }
        out.per_try_timeout = r.per_try_timeout;
        if let Some(ignore) = r.retry_ignore_previous_hosts {
            out.ignore_previous_hosts = ignore;
        }
        if let Some(b) = r.backoff {
            out.backoff = b;
        }
        Some(out)
    }

    /// The share of traffic copied by `mirror`: `mirrorPercentage`, else the deprecated
    /// `mirrorPercent`, else 100%.
    pub fn mirror_percentage(&self) -> Percent {
        match (&self.mirror_percentage, self.mirror_percent) {
            (Some(p), _) => p.value,
            (None, Some(p)) => p.as_percent(),
            (None, None) => Percent::HUNDRED,
        }
    }

    /// The effective weight of each entry of `route`, in order: a single destination gets 100
    /// whatever its weight; otherwise the written weight, unset being 0 (negative weights are
    /// refused by `validate()`).
    pub fn destination_weights(&self) -> Vec<u32> {
        weights(self.route.iter().map(|d| d.weight))
    }
}

impl TcpRoute {
    /// As [`HttpRoute::destination_weights`].
    pub fn destination_weights(&self) -> Vec<u32> {
        weights(self.route.iter().map(|d| d.weight))
    }
}

fn weights(ws: impl ExactSizeIterator<Item = Option<i32>>) -> Vec<u32> {
    if ws.len() == 1 {
        return vec![100];
    }
    ws.map(|w| w.map_or(0, |w| u32::try_from(w).unwrap_or(0)))
        .collect()
}
