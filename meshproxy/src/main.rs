//! `meshproxy --config FILE`: run the proxy from a local config file, re-applied on change.
//!
//! Without `--config`, control-plane mode: the certificate comes from the control plane's CA
//! (bootstrap token in `MESH_BOOTSTRAP_TOKEN`, never a flag) and the config from its push API.
//! `--control-plane`, `--identity` and `--ca-roots` default to `MESH_CA_ADDR`, `MESH_IDENTITY`
//! and `MESH_CA_ROOT_PEM`; `--workload` and `--instance` default to `MESH_WORKLOAD` and
//! `MESH_INSTANCE` (instance 0 when unset).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Parser;
use meshapi::ca_api::{
    ENV_BOOTSTRAP_TOKEN, ENV_CA_ADDR, ENV_CA_ROOT_PEM, ENV_IDENTITY, ENV_INSTANCE, ENV_WORKLOAD,
    SpiffeId,
};
use meshproxy::cp_mode::ControlPlaneSettings;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

/// The meshctl sidecar / node proxy.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Proxy config file (YAML or JSON, `apiVersion: meshproxy/v1`); watched for changes.
    /// Without it the proxy runs in control-plane mode.
    #[arg(long, conflicts_with_all = ["control_plane", "identity", "workload", "instance", "ca_roots"])]
    config: Option<PathBuf>,
    /// Control-plane mode: the control plane's API address `host:port`. Default `MESH_CA_ADDR`.
    #[arg(long, value_name = "ADDR")]
    control_plane: Option<String>,
    /// Control-plane mode: this proxy's SPIFFE ID (the token is bound to it). Default
    /// `MESH_IDENTITY`.
    #[arg(long, value_name = "SPIFFE_ID")]
    identity: Option<String>,
    /// Control-plane mode: compose service name of this proxy. Default `MESH_WORKLOAD`.
    #[arg(long, value_name = "W")]
    workload: Option<String>,
    /// Control-plane mode: replica index. Default `MESH_INSTANCE`, else 0.
    #[arg(long, value_name = "N")]
    instance: Option<u32>,
    /// Control-plane mode: PEM file of the trust roots. Default: the PEM in `MESH_CA_ROOT_PEM`.
    #[arg(long, value_name = "FILE")]
    ca_roots: Option<PathBuf>,
    /// Worker threads; 1 runs everything on one thread. Default: one per CPU.
    #[arg(long)]
    threads: Option<usize>,
    /// Initial log filter (tracing EnvFilter syntax). Default `info`, or RUST_LOG.
    #[arg(long)]
    log: Option<String>,
}

/// A non-empty environment variable.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Control-plane settings from flags and environment, or a message naming what is missing.
fn cp_settings(args: &Args) -> anyhow::Result<ControlPlaneSettings> {
    let endpoint = args.control_plane.clone().or_else(|| env(ENV_CA_ADDR));
    let identity = args.identity.clone().or_else(|| env(ENV_IDENTITY));
    let workload = args.workload.clone().or_else(|| env(ENV_WORKLOAD));
    let token = env(ENV_BOOTSTRAP_TOKEN);
    let mut missing = Vec::new();
    if endpoint.is_none() {
        missing.push(format!("--control-plane or {ENV_CA_ADDR}"));
    }
    if identity.is_none() {
        missing.push(format!("--identity or {ENV_IDENTITY}"));
    }
    if workload.is_none() {
        missing.push(format!("--workload or {ENV_WORKLOAD}"));
    }
    if token.is_none() {
        missing.push(ENV_BOOTSTRAP_TOKEN.to_string());
    }
    if args.ca_roots.is_none() && env(ENV_CA_ROOT_PEM).is_none() {
        missing.push(format!("--ca-roots or {ENV_CA_ROOT_PEM}"));
    }
    let (Some(endpoint), Some(identity), Some(workload), Some(token)) =
        (endpoint, identity, workload, token)
    else {
        bail!(
            "no --config given, and control-plane mode is missing: {}",
            missing.join(", ")
        );
    };
    if !missing.is_empty() {
        bail!(
            "no --config given, and control-plane mode is missing: {}",
            missing.join(", ")
        );
    }
    let roots_pem = match &args.ca_roots {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("reading --ca-roots {}", p.display()))?,
        None => env(ENV_CA_ROOT_PEM).unwrap_or_default(),
    };
    let identity: SpiffeId = identity
        .parse()
        .map_err(|e| anyhow::anyhow!("bad identity {identity:?}: {e}"))?;
    let instance = match (args.instance, env(ENV_INSTANCE)) {
        (Some(n), _) => n,
        (None, Some(v)) => v
            .trim()
            .parse()
            .with_context(|| format!("{ENV_INSTANCE}={v:?} is not a replica index"))?,
        (None, None) => 0,
    };
    Ok(ControlPlaneSettings::new(
        endpoint, token, identity, roots_pem, workload, instance,
    ))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Check control-plane settings before starting anything, so a bad command line fails fast.
    let cp = match &args.config {
        Some(_) => None,
        None => Some(cp_settings(&args)?),
    };
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
    let opts = meshproxy::app::Options {
        log_control: Some(log_control),
    };
    rt.block_on(async {
        match (args.config, cp) {
            (Some(path), _) => {
                let cfg = meshapi::proxy::ProxyConfig::load_file(&path)
                    .with_context(|| format!("loading {}", path.display()))?;
                let bound = meshproxy::build_with(cfg, opts).await?;
                let _watcher = meshproxy::watch::spawn(path.clone(), bound.handle.clone())
                    .context("watching the config file")?;
                bound.wait_termination().await?;
            }
            (None, Some(settings)) => {
                let proxy = meshproxy::cp_mode::run_with_control_plane(settings, opts)
                    .await
                    .context("control-plane mode")?;
                proxy.wait_termination().await?;
            }
            (None, None) => bail!("no --config and no control-plane settings"),
        }
        Ok(())
    })
}
