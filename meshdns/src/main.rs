//! `meshdns`: serve a records file, forward the rest.
//!
//! `meshdns --records FILE --listen ADDR --upstream ADDR [--upstream ADDR...]`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use meshdns::forward::parse_upstream;
use meshdns::{Config, Upstreams};
use tracing_subscriber::EnvFilter;

/// The mesh DNS server: mesh service names -> VIPs, everything else forwarded upstream.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Records file (YAML or JSON) to serve; reloaded when it changes.
    #[arg(long)]
    records: Option<PathBuf>,
    /// UDP and TCP listen address.
    #[arg(long, default_value = "127.0.0.1:53")]
    listen: SocketAddr,
    /// Upstream resolver (ADDR or ADDR:PORT), repeatable. Default: /etc/resolv.conf.
    #[arg(long = "upstream", value_parser = parse_upstream)]
    upstreams: Vec<SocketAddr>,
    /// Largest UDP response whatever the client advertises.
    #[arg(long, default_value_t = 1232)]
    max_udp_payload: u16,
    /// Total wait for the upstreams per query, in milliseconds; then stale answer or SERVFAIL.
    #[arg(long, default_value_t = 1500)]
    upstream_timeout_ms: u64,
    /// Serve a forwarded answer up to this many seconds past its TTL when the upstreams do
    /// not answer (RFC 8767); 0 disables.
    #[arg(long, default_value_t = 300)]
    serve_stale_secs: u64,
    /// Most answers kept for serve-stale.
    #[arg(long, default_value_t = 10_000)]
    stale_entries: usize,
    /// Runtime worker threads; 1 runs everything on one current-thread runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_ansi(ansi_logs())
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            EnvFilter::new("info,hickory_server=warn,hickory_net=warn,hickory_resolver=warn")
        }))
        .init();
    let cfg = Config {
        records_file: args.records,
        listen: args.listen,
        upstreams: if args.upstreams.is_empty() {
            Upstreams::System
        } else {
            Upstreams::Static(args.upstreams)
        },
        max_udp_payload: args.max_udp_payload,
        upstream_timeout: Duration::from_millis(args.upstream_timeout_ms),
        serve_stale: Duration::from_secs(args.serve_stale_secs),
        stale_entries: args.stale_entries,
        ..Config::default()
    };
    tracing::info!(?cfg, "starting meshdns");
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    }
    .context("cannot start the tokio runtime")?;
    runtime.block_on(async {
        let bound = meshdns::build(cfg).await?;
        let shutdown = bound.shutdown.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                tracing::info!("interrupted, shutting down");
                shutdown.trigger();
            }
        });
        bound.wait_termination().await?;
        Ok(())
    })
}

/// Colour in log lines only on a terminal and without `NO_COLOR`: in a container (no TTY),
/// under `docker logs`, or redirected to a file, lines stay plain text.
fn ansi_logs() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}
