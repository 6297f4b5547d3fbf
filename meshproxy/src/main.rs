//! `meshproxy --config FILE`: run the proxy from a local config file, re-applied on change.
//!
//! Without `--config`, control-plane mode: the certificate comes from the control plane's CA
//! (bootstrap token in `MESH_BOOTSTRAP_TOKEN`, never a flag) and the config from its push API.
//! `--control-plane`, `--identity` and `--ca-roots` default to `MESH_CA_ADDR`, `MESH_IDENTITY`
//! and the file `MESH_CA_ROOTS_FILE` names (read at each start: a sidecar mounts the control
//! plane's current bundle there), else the PEM in `MESH_CA_ROOT_PEM`; `--workload` and `--instance` default to `MESH_WORKLOAD` and
//! `MESH_INSTANCE` (instance 0 when unset).
//!
//! `--capture` (or `MESH_CAPTURE=1`): install the transparent-capture nftables rules before
//! serving and remove them after a clean shutdown; `--capture-remove` only removes them.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Parser;
use meshapi::ca_api::{
    ENV_BOOTSTRAP_TOKEN, ENV_CA_ADDR, ENV_CA_ROOT_PEM, ENV_CA_ROOTS_FILE, ENV_IDENTITY,
    ENV_INSTANCE, ENV_WORKLOAD, SpiffeId,
};
use meshproxy::capture::{self, CaptureSpec};
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
    /// Control-plane mode: PEM file of the trust roots. Default: the file `MESH_CA_ROOTS_FILE`
    /// names, else the PEM in `MESH_CA_ROOT_PEM`.
    #[arg(long, value_name = "FILE")]
    ca_roots: Option<PathBuf>,
    /// Worker threads; 1 runs everything on one thread. Default: one per CPU.
    #[arg(long)]
    threads: Option<usize>,
    /// Initial log filter (tracing EnvFilter syntax). Default `info`, or RUST_LOG.
    #[arg(long)]
    log: Option<String>,
    /// Container mode: install the transparent-capture rules (nftables table `ip meshctl`)
    /// before serving, remove them after a clean shutdown. Needs CAP_NET_ADMIN. Default
    /// `MESH_CAPTURE` (`1` or `true`).
    #[arg(long)]
    capture: bool,
    /// With capture: more destination ports never redirected, comma-separated. Default
    /// `MESH_CAPTURE_EXCLUDE_PORTS`.
    #[arg(long, value_delimiter = ',', value_name = "PORTS")]
    capture_exclude_ports: Vec<u16>,
    /// With capture: published application ports (the project's edge), comma-separated:
    /// reached from outside `--capture-mesh-network` (or from `--capture-edge-sources`) they
    /// go to the edge listener (plaintext, AuthorizationPolicy without a principal); from
    /// inside, to the inbound listener like every port. Default `MESH_CAPTURE_EDGE_PORTS`.
    #[arg(long, value_delimiter = ',', value_name = "PORTS")]
    capture_edge_ports: Vec<u16>,
    /// With capture: the project network (CIDR ranges, comma-separated), whose sources are
    /// mesh-internal. Default `MESH_CAPTURE_MESH_NETWORK`.
    #[arg(long, value_delimiter = ',', value_name = "CIDRS")]
    capture_mesh_network: Vec<capture::Net4>,
    /// With capture: sources inside the project network that reach published ports as the
    /// edge (its gateway: the host). Default `MESH_CAPTURE_EDGE_SOURCES`.
    #[arg(long, value_delimiter = ',', value_name = "CIDRS")]
    capture_edge_sources: Vec<capture::Net4>,
    /// With capture: outbound destinations never redirected (meshdns), comma-separated.
    /// Default `MESH_CAPTURE_EXCLUDE_OUTBOUND`.
    #[arg(long, value_delimiter = ',', value_name = "CIDRS")]
    capture_exclude_outbound: Vec<capture::Net4>,
    /// Remove the capture rules (table `ip meshctl`) and exit.
    #[arg(long, conflicts_with_all = ["config", "capture"])]
    capture_remove: bool,
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
    let roots_file = args
        .ca_roots
        .clone()
        .or_else(|| env(ENV_CA_ROOTS_FILE).map(PathBuf::from));
    if roots_file.is_none() && env(ENV_CA_ROOT_PEM).is_none() {
        missing.push(format!(
            "--ca-roots, {ENV_CA_ROOTS_FILE} or {ENV_CA_ROOT_PEM}"
        ));
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
    let roots_pem = match &roots_file {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("reading the trust roots {}", p.display()))?,
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

/// What the command line and environment add to the capture rules of a config.
#[derive(Debug, Clone, Default)]
struct CaptureArgs {
    exclude_ports: Vec<u16>,
    exclude_outbound: Vec<capture::Net4>,
    edge: capture::Edge,
}

/// A comma-separated list from the environment variable `name`, added to `into`.
fn env_list<T: std::str::FromStr>(name: &str, into: &mut Vec<T>) -> anyhow::Result<()>
where
    T::Err: std::fmt::Display,
{
    if let Some(v) = env(name) {
        for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            into.push(
                p.parse()
                    .map_err(|e| anyhow::anyhow!("{name}: {p:?}: {e}"))?,
            );
        }
    }
    Ok(())
}

/// Capture additions when capture is on (`--capture` or `MESH_CAPTURE`), else `None`.
fn capture_settings(args: &Args) -> anyhow::Result<Option<CaptureArgs>> {
    let on = args.capture
        || env("MESH_CAPTURE").is_some_and(|v| matches!(v.trim(), "1" | "true" | "yes"));
    if !on {
        return Ok(None);
    }
    let mut c = CaptureArgs {
        exclude_ports: args.capture_exclude_ports.clone(),
        exclude_outbound: args.capture_exclude_outbound.clone(),
        edge: capture::Edge {
            ports: args.capture_edge_ports.iter().copied().collect(),
            mesh_network: args.capture_mesh_network.clone(),
            sources: args.capture_edge_sources.clone(),
        },
    };
    env_list("MESH_CAPTURE_EXCLUDE_PORTS", &mut c.exclude_ports)?;
    env_list("MESH_CAPTURE_EXCLUDE_OUTBOUND", &mut c.exclude_outbound)?;
    let mut edge_ports: Vec<u16> = Vec::new();
    env_list("MESH_CAPTURE_EDGE_PORTS", &mut edge_ports)?;
    c.edge.ports.extend(edge_ports);
    env_list("MESH_CAPTURE_MESH_NETWORK", &mut c.edge.mesh_network)?;
    env_list("MESH_CAPTURE_EDGE_SOURCES", &mut c.edge.sources)?;
    Ok(Some(c))
}

fn install_capture(spec: CaptureSpec, extra: &CaptureArgs) -> anyhow::Result<()> {
    let spec = spec
        .exclude_ports(extra.exclude_ports.iter().copied())
        .exclude_outbound(extra.exclude_outbound.iter().copied())
        .with_edge(extra.edge.clone())
        .exclude_own_uid();
    capture::install(&spec).context("installing the capture rules")
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let capture = capture_settings(&args)?;
    // Check control-plane settings before starting anything, so a bad command line fails fast.
    let cp = match &args.config {
        Some(_) => None,
        None if args.capture_remove => None,
        None => Some(cp_settings(&args)?),
    };
    let filter = match &args.log {
        Some(l) => EnvFilter::try_new(l).context("--log")?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let (filter, reload) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        // Diagnostics on stderr: stdout carries the access log (as Envoy's), and a stalled
        // stdout must only cost access log lines, never block a log call in the data path.
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi_logs()),
        )
        .init();
    let log_control: meshproxy::app::LogControl = Arc::new(move |level: &str| {
        let f = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        reload.modify(|cur| *cur = f).map_err(|e| e.to_string())
    });
    if args.capture_remove {
        return capture::remove(capture::DEFAULT_TABLE).context("removing the capture rules");
    }
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
        ..Default::default()
    };
    rt.block_on(async {
        match (args.config, cp) {
            (Some(path), _) => {
                let cfg = meshapi::proxy::ProxyConfig::load_file(&path)
                    .with_context(|| format!("loading {}", path.display()))?;
                if let Some(exclude) = &capture {
                    install_capture(CaptureSpec::from_config(&cfg), exclude)?;
                }
                let bound = meshproxy::build_with(cfg, opts).await?;
                let _watcher = meshproxy::watch::spawn(path.clone(), bound.handle.clone())
                    .context("watching the config file")?;
                bound.wait_termination().await?;
            }
            (None, Some(settings)) => {
                if let Some(exclude) = &capture {
                    install_capture(CaptureSpec::control_plane_defaults(), exclude)?;
                }
                let proxy = meshproxy::cp_mode::run_with_control_plane(settings, opts)
                    .await
                    .context("control-plane mode")?;
                if let Some(exclude) = &capture {
                    // Listener changes apply at restart, so the first config's ports hold.
                    let spec = CaptureSpec::from_config(&proxy.config.borrow());
                    install_capture(spec, exclude)?;
                }
                proxy.wait_termination().await?;
            }
            (None, None) => bail!("no --config and no control-plane settings"),
        }
        // Only after the drain: removing earlier would let new connections reach the
        // application around the proxy.
        if capture.is_some() {
            capture::remove(capture::DEFAULT_TABLE).context("removing the capture rules")?;
        }
        Ok(())
    })
}

/// Colour in diagnostics (stderr) only on a terminal and without `NO_COLOR`: in a container
/// (no TTY), under `docker logs`, or redirected to a file, lines stay plain text.
fn ansi_logs() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}
