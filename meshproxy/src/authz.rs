//! The authorize step's data-path half: turns a connection or request into
//! `meshapi::authz::RequestAttributes`, normalizes the path with the policy's option, evaluates
//! the config's compiled [`WorkloadPolicy`], logs the decision (dry-run and audit findings
//! included, never enforced) and counts it by policy on `/stats/prometheus`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use http::HeaderMap;
use meshapi::authz::Action;
use meshapi::authz::{
    ConnectionFilter, Decision, HeaderLookup, HttpAttributes, MatchedPolicy, NormalizeError,
    NormalizedPath, PathNormalization, RequestAttributes, WorkloadPolicy, check_method,
    normalize_path,
};
use meshapi::proxy::ProxyConfig;

use crate::reply::ProxyError;
use crate::runtime::{HttpFacts, PeerInfo};

/// Request headers as the engine looks them up: repeated headers joined with `,`; values that
/// are not visible ASCII match nothing.
pub(crate) struct Headers<'a> {
    map: &'a HeaderMap,
    joined: Vec<(&'a str, String)>,
}

impl<'a> Headers<'a> {
    pub(crate) fn new(map: &'a HeaderMap) -> Self {
        if map.len() == map.keys_len() {
            // No header is repeated (the usual case): nothing to join, nothing allocated.
            return Headers {
                map,
                joined: Vec::new(),
            };
        }
        let joined = map
            .keys()
            .filter(|k| map.get_all(*k).iter().nth(1).is_some())
            .map(|k| {
                let all: Vec<&str> = map
                    .get_all(k)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                (k.as_str(), all.join(","))
            })
            .collect();
        Headers { map, joined }
    }
}

impl HeaderLookup for Headers<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        if let Some((_, v)) = self.joined.iter().find(|(k, _)| *k == name) {
            return Some(v);
        }
        self.map.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What an allowed request may need rewritten.
#[derive(Debug, Default)]
pub struct Authorized {
    /// The normalized path and query that was authorized, when it differs from the request's;
    /// the proxy forwards exactly this.
    pub path_and_query: Option<String>,
}

fn bad_path(e: &NormalizeError) -> ProxyError {
    ProxyError::BadRequest(match e {
        NormalizeError::EncodedNul => "path contains %00",
        NormalizeError::MalformedEscape { .. } => "malformed percent-encoding in the path",
        NormalizeError::InvalidByte { .. } => "invalid character in the path",
        NormalizeError::NotAbsolute => "path must start with '/'",
        NormalizeError::LowercaseMethod(_) => "method is not in upper case",
    })
}

/// What one connection keeps for authorization: the peer's principal as the engine reads it,
/// and the [`ConnectionFilter`] for the policy in force, rebuilt when a new config brings
/// another policy. With many policies most rules fail on the peer identity, address or port
/// alone, which is decided once per connection instead of once per request.
#[derive(Debug, Clone, Default)]
pub struct FilterCache(Arc<ConnCache>);

#[derive(Debug, Default)]
struct ConnCache {
    principal: OnceLock<Option<Box<str>>>,
    filter: Mutex<Option<CachedFilter>>,
}

/// The filter and the config whose policy it was built from.
type CachedFilter = (Weak<ProxyConfig>, Arc<ConnectionFilter>);

impl FilterCache {
    /// The verified peer's SPIFFE ID as text, formatted once per connection.
    fn principal(&self, peer: &PeerInfo) -> Option<&str> {
        self.0
            .principal
            .get_or_init(|| peer.identity.as_ref().map(|id| id.to_string().into()))
            .as_deref()
    }

    fn get(
        &self,
        cfg: &Arc<ProxyConfig>,
        policy: &WorkloadPolicy,
        conn: &RequestAttributes<'_>,
    ) -> Arc<ConnectionFilter> {
        let mut slot = self.0.filter.lock().unwrap_or_else(|p| p.into_inner());
        // A live `Weak` keeps the config's allocation, so its address cannot be reused.
        if let Some((seen, filter)) = slot.as_ref()
            && std::ptr::eq(seen.as_ptr(), Arc::as_ptr(cfg))
        {
            return filter.clone();
        }
        let filter = Arc::new(policy.connection_filter(conn));
        *slot = Some((Arc::downgrade(cfg), filter.clone()));
        filter
    }
}

/// Decides one request (`req` set) or TCP connection under `policy`, the authorization
/// section of `cfg`.
pub fn check(
    cfg: &Arc<ProxyConfig>,
    policy: &WorkloadPolicy,
    peer: &PeerInfo,
    req: Option<HttpFacts<'_>>,
    counters: &AuthzCounters,
) -> Result<Authorized, ProxyError> {
    // Only an mTLS-verified SPIFFE ID is a principal.
    let mut attrs = RequestAttributes {
        peer_principal: peer.authz_filter.principal(peer),
        source_ip: peer.remote.ip(),
        remote_ip: None,
        destination_ip: peer.local_ip,
        destination_port: peer.port,
        sni: peer.sni.as_deref(),
        http: None,
    };
    let Some(req) = req else {
        let d = policy.evaluate(&attrs);
        record(&d, peer, None, counters);
        return if d.allowed {
            Ok(Authorized::default())
        } else {
            Err(denied(&d, peer))
        };
    };
    let method = req.method.as_str();
    let normalized = normalized(peer, &req, policy.path_normalization)?;
    let host = req
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            req.headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("");
    let filter = peer.authz_filter.get(cfg, policy, &attrs);
    let headers = Headers::new(req.headers);
    attrs.remote_ip = remote_ip(req.headers);
    attrs.http = Some(HttpAttributes {
        method,
        host,
        path: normalized.as_str(),
        headers: &headers,
        auth: req.auth,
    });
    let d = policy.evaluate_on(&attrs, &filter);
    record(&d, peer, Some((method, normalized.as_str())), counters);
    if !d.allowed {
        return Err(denied(&d, peer));
    }
    Ok(Authorized {
        path_and_query: normalized
            .is_changed()
            .then(|| normalized.as_str().to_string()),
    })
}

/// What every inbound HTTP request gets, whether or not a policy selects the workload: the
/// method check and path normalization with `mode` (a config without `authorization` has
/// Istio's default, `BASE`). A refused path is a bad request.
fn normalized<'r>(
    peer: &PeerInfo,
    req: &HttpFacts<'r>,
    mode: PathNormalization,
) -> Result<NormalizedPath<'r>, ProxyError> {
    check_method(req.method.as_str()).map_err(|e| bad_path(&e))?;
    let raw = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    normalize_path(raw, mode).map_err(|e| {
        tracing::info!(remote = %peer.remote, port = peer.port, error = %e, "request path refused");
        bad_path(&e)
    })
}

/// An inbound HTTP request on a workload no policy selects: allowed, its path normalized
/// with Istio's default (`BASE`).
pub fn normalize_only(peer: &PeerInfo, req: &HttpFacts<'_>) -> Result<Authorized, ProxyError> {
    let n = normalized(peer, req, PathNormalization::Base)?;
    Ok(Authorized {
        path_and_query: n.is_changed().then(|| n.as_str().to_string()),
    })
}

/// `remote.ip` as Envoy derives it at an Istio sidecar (`use_remote_address: false`, no trusted
/// hops): the last address of `x-forwarded-for` (repeated headers joined) when it is a valid IP,
/// else `None`, meaning the connection's peer address. The caller controls this header, so
/// `remoteIpBlocks` is no stronger than the caller's honesty, exactly as in Istio; `ipBlocks`
/// (`source.ip`) is the peer address and cannot be forged this way.
pub fn remote_ip(headers: &HeaderMap) -> Option<IpAddr> {
    let last_header = headers.get_all("x-forwarded-for").iter().next_back()?;
    meshapi::authz::forwarded_for(last_header.to_str().ok()?)
}

fn denied(d: &Decision<'_>, peer: &PeerInfo) -> ProxyError {
    ProxyError::Denied {
        target: format!(
            "inbound|{} {}[{}]",
            peer.port,
            Decision::DETAILS_PREFIX,
            d.policy.map_or("none", |p| p.id)
        ),
    }
}

/// A policy as metrics and logs name it, `<name>.<namespace>` or `none`, escaped for a
/// Prometheus label value; written on demand, so a disabled log line costs nothing.
struct Label<'a>(Option<(&'a str, &'a str)>);

impl<'a> Label<'a> {
    fn of(p: Option<MatchedPolicy<'a>>) -> Self {
        Label(p.map(|p| (p.name, p.namespace)))
    }
}

impl std::fmt::Display for Label<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some((name, namespace)) = self.0 else {
            return f.write_str("none");
        };
        escape_into(f, name)?;
        f.write_str(".")?;
        escape_into(f, namespace)
    }
}

fn escape_into(f: &mut std::fmt::Formatter<'_>, v: &str) -> std::fmt::Result {
    if !v.contains(['\\', '"', '\n']) {
        return f.write_str(v);
    }
    for c in v.chars() {
        match c {
            '\\' => f.write_str("\\\\")?,
            '"' => f.write_str("\\\"")?,
            '\n' => f.write_str("\\n")?,
            c => f.write_char(c)?,
        }
    }
    Ok(())
}

fn action_name(a: Option<Action>) -> &'static str {
    match a {
        Some(Action::Allow) => "ALLOW",
        Some(Action::Deny) => "DENY",
        Some(Action::Audit) => "AUDIT",
        Some(Action::Custom) => "CUSTOM",
        None => "NONE",
    }
}

/// Logs and counts one decision: one counter update per finding, nothing formatted or
/// allocated for a series seen before, log fields formatted only when the line is enabled.
fn record(d: &Decision<'_>, peer: &PeerInfo, http: Option<(&str, &str)>, counters: &AuthzCounters) {
    let policy = Label::of(d.policy);
    let action = action_name(d.action);
    let result = if d.allowed { "allowed" } else { "denied" };
    let principal = peer.identity.as_ref().map(tracing::field::display);
    let (method, path) = http.unwrap_or(("", ""));
    if d.allowed {
        tracing::debug!(target: "meshproxy::authz", remote = %peer.remote, port = peer.port,
            principal, method, path, policy = %policy, action, reason = ?d.reason,
            "authz allowed");
    } else {
        tracing::info!(target: "meshproxy::authz", remote = %peer.remote, port = peer.port,
            principal, method, path, policy = %policy, action, reason = ?d.reason,
            rule = d.policy.map(|p| p.id), "authz denied");
    }
    counters.bump(Family::Decisions, d.policy, action, result);
    if let Some(a) = d.audit {
        let p = Label::of(Some(a));
        tracing::info!(target: "meshproxy::authz", remote = %peer.remote, port = peer.port,
            principal, method, path, policy = %p, action = "AUDIT",
            rule = a.id, result, "authz audit");
        counters.bump(Family::Audit, Some(a), "", result);
    }
    for (kind, shadow) in [("DENY", d.dry_run.deny), ("ALLOW", d.dry_run.allow)] {
        let Some(s) = shadow else { continue };
        let shadow_result = if s.allowed { "allowed" } else { "denied" };
        let p = Label::of(s.policy);
        tracing::info!(target: "meshproxy::authz", dry_run = true, remote = %peer.remote,
            port = peer.port, principal, method, path,
            action = kind, policy = %p, result = shadow_result, enforced = result,
            "authz dry-run");
        counters.bump(Family::DryRun, s.policy, kind, shadow_result);
    }
}

/// The counter families, in the order they are rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Family {
    Decisions,
    DryRun,
    Audit,
}

impl Family {
    const ALL: [Family; 3] = [Family::Decisions, Family::DryRun, Family::Audit];

    fn name(self) -> &'static str {
        match self {
            Family::Decisions => "meshproxy_authz_decisions_total",
            Family::DryRun => "meshproxy_authz_dry_run_total",
            Family::Audit => "meshproxy_authz_audit_total",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Family::Decisions => {
                "Authorization decisions by deciding policy (name.namespace, or none)."
            }
            Family::DryRun => {
                "What dry-run authorization policies would have decided (not enforced)."
            }
            Family::Audit => {
                "Requests and connections an AUDIT policy matched, by the enforced result."
            }
        }
    }
}

/// One counter: its labels (the policy as name and namespace; `action` empty for AUDIT,
/// which has no action label) and its count.
#[derive(Debug)]
struct Series {
    family: Family,
    policy: Option<(Box<str>, Box<str>)>,
    action: &'static str,
    result: &'static str,
    count: u64,
}

impl Series {
    fn is(&self, family: Family, policy: Option<(&str, &str)>, action: &str, result: &str) -> bool {
        self.family == family
            && self.policy.as_ref().map(|(n, ns)| (&**n, &**ns)) == policy
            && self.action == action
            && self.result == result
    }

    /// The series as Prometheus names it, e.g.
    /// `meshproxy_authz_decisions_total{policy="a.default",action="ALLOW",result="allowed"}`.
    fn name(&self) -> String {
        let policy = Label(self.policy.as_ref().map(|(n, ns)| (&**n, &**ns)));
        let (family, result) = (self.family.name(), self.result);
        if self.family == Family::Audit {
            format!("{family}{{policy=\"{policy}\",result=\"{result}\"}}")
        } else {
            let action = self.action;
            format!("{family}{{policy=\"{policy}\",action=\"{action}\",result=\"{result}\"}}")
        }
    }
}

/// Authorization decisions by series (policy, action, result), for `/stats/prometheus`.
/// Series are found by a hash of their labels, so counting allocates only for a new series.
#[derive(Debug, Default)]
pub struct AuthzCounters {
    series: Mutex<HashMap<u64, Vec<Series>>>,
}

impl AuthzCounters {
    fn bump(
        &self,
        family: Family,
        policy: Option<MatchedPolicy<'_>>,
        action: &'static str,
        result: &'static str,
    ) {
        let policy = policy.map(|p| (p.name, p.namespace));
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (family, policy, action, result).hash(&mut h);
        let mut m = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = m.entry(h.finish()).or_default();
        match bucket
            .iter_mut()
            .find(|s| s.is(family, policy, action, result))
        {
            Some(s) => s.count += 1,
            None => bucket.push(Series {
                family,
                policy: policy.map(|(n, ns)| (n.into(), ns.into())),
                action,
                result,
                count: 1,
            }),
        }
    }

    /// Every series by name, sorted.
    fn by_name(&self) -> BTreeMap<String, (Family, u64)> {
        let m = self.series.lock().unwrap_or_else(|p| p.into_inner());
        m.values()
            .flatten()
            .map(|s| (s.name(), (s.family, s.count)))
            .collect()
    }

    /// The count of one series, e.g.
    /// `meshproxy_authz_decisions_total{policy="allow-frontend.default",action="ALLOW",result="allowed"}`.
    pub fn get(&self, series: &str) -> u64 {
        self.by_name().get(series).map_or(0, |(_, n)| *n)
    }

    /// Encodes every series seen so far, one counter family each (`/stats/prometheus`).
    pub(crate) fn encode(
        &self,
        enc: &mut prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let rows: Vec<(Family, String, &'static str, &'static str, u64)> = {
            let m = self.series.lock().unwrap_or_else(|p| p.into_inner());
            let mut rows: Vec<_> = m
                .values()
                .flatten()
                .map(|s| {
                    let policy = Label(s.policy.as_ref().map(|(n, ns)| (&**n, &**ns)));
                    (s.family, policy.to_string(), s.action, s.result, s.count)
                })
                .collect();
            rows.sort_by(|a, b| (&a.1, a.2, a.3).cmp(&(&b.1, b.2, b.3)));
            rows
        };
        for family in Family::ALL {
            let labels: Vec<(Vec<(&str, &str)>, u64)> = rows
                .iter()
                .filter(|r| r.0 == family)
                .map(|(_, policy, action, result, n)| {
                    let mut l = vec![("policy", policy.as_str())];
                    // AUDIT has no action label.
                    if family != Family::Audit {
                        l.push(("action", *action));
                    }
                    l.push(("result", *result));
                    (l, *n)
                })
                .collect();
            let series: Vec<(crate::metrics::Kv<'_>, u64)> = labels
                .iter()
                .map(|(l, n)| (crate::metrics::Kv(l), *n))
                .collect();
            let name = family.name().trim_end_matches("_total");
            crate::metrics::counter_series(enc, name, family.help(), &series)?;
        }
        Ok(())
    }
}

/// A connection's local address: its `destination.ip`.
pub fn local_ip(stream: &tokio::net::TcpStream) -> IpAddr {
    stream
        .local_addr()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
}
