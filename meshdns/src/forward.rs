//! Forwarding of non-mesh names to the host's upstream resolvers.
//!
//! A hickory-resolver with its response cache (TTLs honoured, negative answers cached for the
//! SOA minimum) in front of the configured upstreams. The upstream list is either given
//! (`--upstream ADDR`, repeatable) or read from `/etc/resolv.conf`, skipping meshdns's own
//! address so a host whose resolv.conf points at meshdns does not loop.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::lookup::Lookup;
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

/// The outcome of forwarding one query.
#[derive(Debug)]
pub enum Forwarded {
    /// A positive answer (possibly with a CNAME chain).
    Answer(Lookup),
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
    /// A forwarder to `upstreams`, tried in order of measured latency. No upstreams: every
    /// forwarded query fails with SERVFAIL.
    pub fn new(upstreams: &[SocketAddr], timeout: Duration) -> Result<Forwarder, ForwardError> {
        if upstreams.is_empty() {
            return Ok(Forwarder { resolver: None });
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
        opts.timeout = timeout;
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
        })
    }

    /// Resolves `name`/`qtype` upstream (or from the cache).
    pub async fn forward(&self, name: &Name, qtype: RecordType) -> Forwarded {
        let Some(resolver) = &self.resolver else {
            return Forwarded::Failed;
        };
        let mut fqdn = name.clone();
        fqdn.set_fqdn(true);
        match resolver.lookup(fqdn, qtype).await {
            Ok(lookup) => Forwarded::Answer(lookup),
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
                Forwarded::Failed
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
