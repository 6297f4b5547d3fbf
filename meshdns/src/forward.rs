//! Forwarding of non-mesh names to the host's upstream resolvers.
//!
//! A hickory-resolver with its response cache (TTLs honoured, negative answers cached for the
//! SOA minimum) in front of the configured upstreams. The upstream list is either given
//! (`--upstream ADDR`, repeatable) or read from `/etc/resolv.conf`, skipping meshdns's own
//! address so a host whose resolv.conf points at meshdns does not loop.
//!
//! One query waits at most `timeout` in total for the upstreams (all servers, all attempts);
//! after that it fails, unless a positive answer for the same name and type expired less than
//! the stale window ago: that answer is served stale (RFC 8767), with a 30 s TTL. The stale
//! store is bounded ([`StaleCache`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, Record, RecordType};
use tracing::debug;

/// Why the forwarder could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("cannot read /etc/resolv.conf for upstream resolvers: {0}")]
    SystemConf(NetError),
    #[error("cannot build the upstream resolver: {0}")]
    Build(NetError),
}

/// A positive answer's sections.
#[derive(Debug)]
pub struct Answer {
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
    /// Served from the stale store because the upstreams did not answer in time.
    pub stale: bool,
}

/// The outcome of forwarding one query.
#[derive(Debug)]
pub enum Forwarded {
    /// A positive answer (possibly with a CNAME chain).
    Answer(Answer),
    /// NXDOMAIN or NODATA from upstream, with its SOA (if any) for the authority section.
    Negative {
        code: ResponseCode,
        authority: Vec<Record>,
    },
    /// No usable answer (timeout, SERVFAIL, refused, no upstreams).
    Failed,
}

/// Forwards queries to upstream resolvers, caching answers.
#[derive(Debug, Clone)]
pub struct Forwarder {
    resolver: Option<TokioResolver>,
    /// Total wait for one query, all attempts included.
    deadline: Duration,
    stale: Arc<StaleCache>,
}

/// TTL of an answer served stale (RFC 8767 section 4 recommends 30 s).
pub const STALE_TTL: u32 = 30;
/// Default stale window: how long past its TTL an answer may still be served.
pub const DEFAULT_STALE_WINDOW: Duration = Duration::from_secs(300);
/// Default bound of the stale store, in (name, type) entries.
pub const DEFAULT_STALE_ENTRIES: usize = 10_000;

/// Positive upstream answers kept past their TTL, to serve when the upstreams are down.
///
/// At most `max_entries` entries: inserting into a full store first drops every entry past
/// its window (at most once a second), then, if still full, one arbitrary entry.
#[derive(Debug)]
pub struct StaleCache {
    window: Duration,
    max_entries: usize,
    inner: Mutex<StaleInner>,
}

#[derive(Debug, Default)]
struct StaleInner {
    map: HashMap<(Name, RecordType), StaleEntry>,
    last_purge: Option<Instant>,
}

#[derive(Debug)]
struct StaleEntry {
    answers: Arc<[Record]>,
    authorities: Arc<[Record]>,
    additionals: Arc<[Record]>,
    valid_until: Instant,
}

impl StaleCache {
    /// A store serving answers up to `window` past their TTL, holding at most `max_entries`.
    pub fn new(window: Duration, max_entries: usize) -> StaleCache {
        StaleCache {
            window,
            max_entries,
            inner: Mutex::new(StaleInner::default()),
        }
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |inner| inner.map.len())
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Remembers a fresh answer, valid until `valid_until`.
    pub fn insert(
        &self,
        key: (Name, RecordType),
        answers: &[Record],
        authorities: &[Record],
        additionals: &[Record],
        valid_until: Instant,
    ) {
        if self.max_entries == 0 || self.window.is_zero() || answers.is_empty() {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if let Some(old) = inner.map.get(&key)
            && old.valid_until == valid_until
        {
            return; // the same (resolver-cached) answer again
        }
        if !inner.map.contains_key(&key) && inner.map.len() >= self.max_entries {
            let now = Instant::now();
            if inner
                .last_purge
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
            {
                inner.last_purge = Some(now);
                let window = self.window;
                inner.map.retain(|_, e| e.valid_until + window > now);
            }
            if inner.map.len() >= self.max_entries
                && let Some(victim) = inner.map.keys().next().cloned()
            {
                inner.map.remove(&victim);
            }
        }
        inner.map.insert(
            key,
            StaleEntry {
                answers: answers.into(),
                authorities: authorities.into(),
                additionals: additionals.into(),
                valid_until,
            },
        );
    }

    /// The answer for `key` if it expired less than the window ago, with TTLs set to
    /// [`STALE_TTL`]. A still-valid entry is returned too (the resolver's cache may have
    /// evicted it early).
    pub fn get(&self, key: &(Name, RecordType)) -> Option<Answer> {
        let inner = self.inner.lock().ok()?;
        let entry = inner.map.get(key)?;
        if entry.valid_until + self.window <= Instant::now() {
            return None;
        }
        let restamp = |records: &[Record]| {
            records
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    r.ttl = STALE_TTL;
                    r
                })
                .collect::<Vec<_>>()
        };
        Some(Answer {
            answers: restamp(&entry.answers),
            authorities: restamp(&entry.authorities),
            additionals: restamp(&entry.additionals),
            stale: true,
        })
    }
}

/// Reads upstream resolvers from `/etc/resolv.conf`, skipping `own` (meshdns itself).
pub fn system_upstreams(own: SocketAddr) -> Result<Vec<SocketAddr>, ForwardError> {
    let text = std::fs::read("/etc/resolv.conf")
        .map_err(|e| ForwardError::SystemConf(NetError::from(e)))?;
    upstreams_from_resolv_conf(&text, own)
}

/// The nameservers of a resolv.conf text, minus `own`: a host whose resolv.conf points at
/// meshdns must not forward to itself.
pub fn upstreams_from_resolv_conf(
    text: &[u8],
    own: SocketAddr,
) -> Result<Vec<SocketAddr>, ForwardError> {
    let (config, _) =
        hickory_resolver::system_conf::parse_resolv_conf(text).map_err(ForwardError::SystemConf)?;
    let mut out = Vec::new();
    for ns in config.name_servers() {
        for conn in &ns.connections {
            let addr = SocketAddr::new(ns.ip, conn.port);
            let is_self = addr == own
                || (own.ip().is_unspecified()
                    && addr.port() == own.port()
                    && addr.ip().is_loopback());
            if !is_self && !out.contains(&addr) {
                out.push(addr);
            }
        }
    }
    Ok(out)
}

/// Parses `ADDR` or `ADDR:PORT` (`[v6]:port` for IPv6); the port defaults to 53.
pub fn parse_upstream(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    text.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| {
            format!("{text:?} is not an address like 10.0.0.2, 10.0.0.2:53 or [fd00::2]:53")
        })
}

impl Forwarder {
    /// A forwarder to `upstreams`, tried in order of measured latency, waiting at most
    /// `timeout` in total per query, with the default stale window and store size. No
    /// upstreams: every forwarded query fails with SERVFAIL.
    pub fn new(upstreams: &[SocketAddr], timeout: Duration) -> Result<Forwarder, ForwardError> {
        Forwarder::with_stale(
            upstreams,
            timeout,
            StaleCache::new(DEFAULT_STALE_WINDOW, DEFAULT_STALE_ENTRIES),
        )
    }

    /// As [`Forwarder::new`], with the given stale store.
    pub fn with_stale(
        upstreams: &[SocketAddr],
        timeout: Duration,
        stale: StaleCache,
    ) -> Result<Forwarder, ForwardError> {
        let stale = Arc::new(stale);
        if upstreams.is_empty() {
            return Ok(Forwarder {
                resolver: None,
                deadline: timeout,
                stale,
            });
        }
        let servers = upstreams
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        let config = ResolverConfig::from_parts(None, vec![], servers);
        let mut opts = ResolverOpts::default();
        // Two tries per server inside the total deadline, which `forward` enforces.
        opts.timeout = timeout / 2;
        opts.attempts = 2;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.preserve_intermediates = true;
        opts.ndots = 0;
        let resolver = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(ForwardError::Build)?;
        Ok(Forwarder {
            resolver: Some(resolver),
            deadline: timeout,
            stale,
        })
    }

    /// The stale store (for inspection).
    pub fn stale(&self) -> &StaleCache {
        &self.stale
    }

    /// Resolves `name`/`qtype` upstream (or from the cache), waiting at most the deadline;
    /// on failure, a recently expired answer is served stale if there is one.
    pub async fn forward(&self, name: &Name, qtype: RecordType) -> Forwarded {
        let Some(resolver) = &self.resolver else {
            return Forwarded::Failed;
        };
        let mut fqdn = name.clone();
        fqdn.set_fqdn(true);
        let key = (fqdn.to_lowercase(), qtype);
        let result = tokio::time::timeout(self.deadline, resolver.lookup(fqdn, qtype)).await;
        let result = match result {
            Ok(result) => result,
            Err(_) => {
                debug!(%name, %qtype, deadline = ?self.deadline, "upstream deadline passed");
                return self.stale_or_failed(&key);
            }
        };
        match result {
            Ok(lookup) => {
                self.stale.insert(
                    key,
                    lookup.answers(),
                    lookup.authorities(),
                    lookup.additionals(),
                    lookup.valid_until(),
                );
                Forwarded::Answer(Answer {
                    answers: lookup.answers().to_vec(),
                    authorities: lookup.authorities().to_vec(),
                    additionals: lookup.additionals().to_vec(),
                    stale: false,
                })
            }
            Err(NetError::Dns(DnsError::NoRecordsFound(no))) => {
                let mut authority: Vec<Record> = Vec::new();
                if let Some(soa) = no.soa {
                    authority.push(soa.into_record_of_rdata());
                }
                let code = match no.response_code {
                    ResponseCode::NXDomain => ResponseCode::NXDomain,
                    _ => ResponseCode::NoError,
                };
                Forwarded::Negative { code, authority }
            }
            Err(error) => {
                debug!(%name, %qtype, %error, "upstream lookup failed");
                self.stale_or_failed(&key)
            }
        }
    }

    fn stale_or_failed(&self, key: &(Name, RecordType)) -> Forwarded {
        match self.stale.get(key) {
            Some(answer) => {
                debug!(name = %key.0, qtype = %key.1, "serving stale answer");
                Forwarded::Answer(answer)
            }
            None => Forwarded::Failed,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use hickory_resolver::proto::rr::RData;
    use hickory_resolver::proto::rr::rdata::A;

    fn a(name: &str) -> (Name, RecordType, Vec<Record>) {
        let name = Name::from_ascii(name).unwrap();
        let record = Record::from_rdata(name.clone(), 300, RData::A(A::new(10, 0, 0, 1)));
        (name, RecordType::A, vec![record])
    }

    #[test]
    fn stale_store_serves_within_the_window_with_a_30s_ttl() {
        let cache = StaleCache::new(Duration::from_secs(60), 10);
        let now = Instant::now();
        let (name, qtype, records) = a("recent.example.");
        let expired_recently = now.checked_sub(Duration::from_secs(30)).unwrap();
        cache.insert((name.clone(), qtype), &records, &[], &[], expired_recently);
        let got = cache.get(&(name, qtype)).unwrap();
        assert!(got.stale);
        assert_eq!(got.answers.len(), 1);
        assert_eq!(got.answers[0].ttl, STALE_TTL);

        let (name, qtype, records) = a("old.example.");
        let expired_long_ago = now.checked_sub(Duration::from_secs(61)).unwrap();
        cache.insert((name.clone(), qtype), &records, &[], &[], expired_long_ago);
        assert!(cache.get(&(name, qtype)).is_none(), "past the window");

        // Disabled: nothing is kept.
        let off = StaleCache::new(Duration::ZERO, 10);
        let (name, qtype, records) = a("x.example.");
        off.insert((name, qtype), &records, &[], &[], now);
        assert!(off.is_empty());
    }

    #[test]
    fn stale_store_is_bounded() {
        let cache = StaleCache::new(Duration::from_secs(60), 100);
        let valid = Instant::now() + Duration::from_secs(300);
        for i in 0..1_000 {
            let (name, qtype, records) = a(&format!("n{i}.example."));
            cache.insert((name, qtype), &records, &[], &[], valid);
            assert!(cache.len() <= 100);
        }
        assert_eq!(cache.len(), 100);
        // The newest entry is always kept.
        let (name, qtype, _) = a("n999.example.");
        assert!(cache.get(&(name, qtype)).is_some());
    }

    #[test]
    fn resolv_conf_upstreams_skip_meshdns_itself() {
        let conf =
            b"search example.com\nnameserver 127.0.0.1\nnameserver 10.0.0.2\noptions ndots:2\n";
        let own: SocketAddr = "127.0.0.1:53".parse().unwrap();
        assert_eq!(
            upstreams_from_resolv_conf(conf, own).unwrap(),
            vec!["10.0.0.2:53".parse().unwrap()]
        );
        let any: SocketAddr = "0.0.0.0:53".parse().unwrap();
        assert_eq!(
            upstreams_from_resolv_conf(conf, any).unwrap(),
            vec!["10.0.0.2:53".parse().unwrap()]
        );
        let other_port: SocketAddr = "127.0.0.1:5353".parse().unwrap();
        assert_eq!(
            upstreams_from_resolv_conf(conf, other_port).unwrap().len(),
            2
        );
    }

    #[test]
    fn upstream_addresses() {
        assert_eq!(
            parse_upstream("10.0.0.2").unwrap(),
            "10.0.0.2:53".parse().unwrap()
        );
        assert_eq!(
            parse_upstream("127.0.0.1:5353").unwrap(),
            "127.0.0.1:5353".parse().unwrap()
        );
        assert_eq!(
            parse_upstream("[fd00::2]:53").unwrap(),
            "[fd00::2]:53".parse().unwrap()
        );
        assert_eq!(
            parse_upstream("fd00::2").unwrap(),
            "[fd00::2]:53".parse().unwrap()
        );
        assert!(parse_upstream("dns.google").is_err());
    }
}
