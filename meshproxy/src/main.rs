//! `meshproxy --config FILE`: run the proxy from a local config file, re-applied on change.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

/// The meshctl sidecar / node proxy.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Proxy config file (YAML or JSON, `apiVersion: meshproxy/v1`); watched for changes.
    #[arg(long)]
    config: PathBuf,
    /// Worker threads; 1 runs everything on one thread. Default: one per CPU.
    #[arg(long)]
    threads: Option<usize>,
    /// Initial log filter (tracing EnvFilter syntax). Default `info`, or RUST_LOG.
    #[arg(long)]
    log: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = match &args.log {
        Some(l) => EnvFilter::try_new(l).context("--log")?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let (filter, reload) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer())
        .init();
    let log_control: meshproxy::app::LogControl = Arc::new(move |level: &str| {
        let f = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        reload.modify(|cur| *cur = f).map_err(|e| e.to_string())
    });
    let rt = match args.threads {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
    };
    rt.block_on(async {
        let cfg = meshapi::proxy::ProxyConfig::load_file(&args.config)
            .with_context(|| format!("loading {}", args.config.display()))?;
        let opts = meshproxy::app::Options {
            log_control: Some(log_control),
        };
        let bound = meshproxy::build_with(cfg, opts).await?;
        let _watcher = meshproxy::watch::spawn(args.config.clone(), bound.handle.clone())
            .context("watching the config file")?;
        bound.wait_termination().await?;
        Ok(())
    })
}
