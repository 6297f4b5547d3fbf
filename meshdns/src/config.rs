//! meshdns configuration: what to serve, where to listen, where to forward.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where non-mesh queries go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Upstreams {
    /// The nameservers of `/etc/resolv.conf`, minus meshdns itself. The default.
    #[default]
    System,
    /// Exactly these resolvers (`--upstream`), tried by measured latency.
    Static(Vec<SocketAddr>),
}

/// Everything [`crate::app::build`] needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Records file to serve and watch for changes. Default none: start with no services and
    /// let the control plane publish through [`crate::app::Bound::records`].
    pub records_file: Option<PathBuf>,
    /// Address for both UDP and TCP. Default `127.0.0.1:53`. Port 0 picks a free port (the same
    /// one for both transports), which tests use.
    pub listen: SocketAddr,
    /// Upstream resolvers. Default [`Upstreams::System`].
    pub upstreams: Upstreams,
    /// Cap on UDP response size whatever the client advertises in EDNS. Default 1232 bytes
    /// (the DNS flag day 2020 value: no IP fragmentation, bounded amplification).
    pub max_udp_payload: u16,
    /// A TCP connection that sends no request for this long is closed. Default 10 s.
    pub tcp_idle_timeout: Duration,
    /// Total time to wait for the upstreams for one query (all servers and attempts); then a
    /// stale answer or SERVFAIL. Default 1.5 s, so a dead upstream is SERVFAIL within 2 s.
    pub upstream_timeout: Duration,
    /// How long past its TTL a forwarded answer may still be served when the upstreams do not
    /// answer (RFC 8767, served with a 30 s TTL). Zero disables serve-stale. Default 5 min.
    pub serve_stale: Duration,
    /// Most (name, type) answers kept for serve-stale. Default 10,000.
    pub stale_entries: usize,
    /// Quiet time after the last change event before the records file is re-read, so an
    /// editor's write-rename-chmod burst causes one reload. Default 100 ms.
    pub reload_debounce: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            records_file: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 53)),
            upstreams: Upstreams::System,
            max_udp_payload: 1232,
            tcp_idle_timeout: Duration::from_secs(10),
            upstream_timeout: Duration::from_millis(1500),
            serve_stale: crate::forward::DEFAULT_STALE_WINDOW,
            stale_entries: crate::forward::DEFAULT_STALE_ENTRIES,
            reload_debounce: Duration::from_millis(100),
        }
    }
}
