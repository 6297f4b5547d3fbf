//! The control-plane subcommands of the CLI: `serve`, `status`, `apply`, `proxy-config`.
//! The project's state directory is `<project-directory or .>/.mesh`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context, bail};
use clap::Args;
use meshapi::diag::Severity;
use meshapi::wire::{RELOAD_PATH, ROTATE_PATH, ReloadRequest, RotateRequest, STATUS_PATH};

use super::api::{Expiry, ReloadResponse, RotateResponse, StatusReport, rough_duration};
use super::client::{RECONNECT_BUDGET, call_with_backoff};
use super::{ControlPlane, ControlPlaneConfig, ProjectSpec};
use crate::api::ApiConfig;
use crate::project::ProjectArgs;

/// `meshctl serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address of the mTLS API (CSRs, config push, status).
    #[arg(long, default_value = "0.0.0.0:15012")]
    pub listen: SocketAddr,
}

/// `meshctl apply`.
#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    /// Wait until every connected proxy has ACKed (exit 1 if one refuses or times out).
    #[arg(long)]
    pub wait: bool,
    /// Seconds to wait for ACKs.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `meshctl ca rotate`.
#[derive(Debug, Clone, Args)]
pub struct RotateArgs {
    /// How long both roots stay trusted before the old one is dropped (Go/Istio duration:
    /// `1h`, `90s`; at least 10s).
    #[arg(long, default_value = "1h", value_parser = parse_overlap)]
    pub overlap: std::time::Duration,
    /// Seconds to wait for every connected proxy to ACK the new trust bundle.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_overlap(s: &str) -> Result<std::time::Duration, String> {
    let d: std::time::Duration = meshmodel::istio::types::Duration::parse(s)?.into();
    if d < super::api::MIN_OVERLAP {
        return Err(format!(
            "at least {}s, so every proxy can take the new root before the old one retires",
            super::api::MIN_OVERLAP.as_secs()
        ));
    }
    Ok(d)
}

/// POSTs `body` to the running control plane's admin route `path` (retrying while it
/// restarts) and returns its answer.
fn post_admin<B, R>(project: &ProjectArgs, path: &str, body: &B) -> anyhow::Result<R>
where
    B: serde::Serialize + Sync,
    R: serde::de::DeserializeOwned,
{
    let (_, resp) = runtime()?.block_on(call_with_backoff(
        &state_dir(project),
        RECONNECT_BUDGET,
        |c| async move { c.post::<_, R>(path, body).await },
    ))?;
    Ok(resp)
}

/// The proxies that refused, did not answer, or are not connected, one line each.
fn print_ack_problems(
    w: &mut impl Write,
    a: &super::push::AckReport,
    not_connected_note: &str,
) -> std::io::Result<()> {
    for (p, why) in &a.refused {
        writeln!(w, "  {p} REFUSED: {why}")?;
    }
    for p in &a.pending {
        writeln!(w, "  {p} did not answer in time")?;
    }
    if !a.not_connected.is_empty() {
        let sep = if not_connected_note.is_empty() {
            ""
        } else {
            " "
        };
        writeln!(
            w,
            "  not connected{sep}{not_connected_note}: {}",
            a.not_connected.join(", ")
        )?;
    }
    Ok(())
}

/// Asks the running control plane to rotate its root: a new root signs from now on, both
/// are trusted for `--overlap`, every proxy takes the new bundle and renews at once.
pub fn ca_rotate(project: &ProjectArgs, args: &RotateArgs) -> anyhow::Result<ExitCode> {
    let body = RotateRequest {
        overlap_ms: u64::try_from(args.overlap.as_millis()).unwrap_or(u64::MAX),
        timeout_ms: Some(args.timeout.saturating_mul(1000)),
    };
    let resp: RotateResponse = post_admin(project, ROTATE_PATH, &body)?;
    let ok = resp.reload.ok && resp.acks.as_ref().is_none_or(|a| a.all_acked());
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    if args.json {
        serde_json::to_writer_pretty(&mut w, &resp)?;
        writeln!(w)?;
    } else {
        let now = crate::ca::unix_secs(SystemTime::now());
        for c in &resp.ca_certificates {
            match (c.role.as_str(), c.retires_at) {
                ("root", _) => writeln!(
                    w,
                    "new root: {} (expires in {}); it signs every certificate from now on",
                    c.subject,
                    rough_duration(c.not_after - now)
                )?,
                ("retiring-root", Some(t)) => writeln!(
                    w,
                    "old root: {} trusted for {} more, then dropped from every proxy's bundle",
                    c.subject,
                    rough_duration(t - now)
                )?,
                _ => {}
            }
        }
        if let Some(a) = &resp.acks {
            writeln!(
                w,
                "{} proxy(ies) took the new trust bundle in {:.1} ms and renew their certificates now",
                a.acked.len(),
                a.elapsed_ms
            )?;
            print_ack_problems(&mut w, a, "(they take it when they reconnect)")?;
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `meshctl proxy-config`.
#[derive(Debug, Clone, Args)]
pub struct ProxyConfigArgs {
    /// Compose service (`backend-v1`) or mesh service (`backend`: its first workload).
    pub service: String,
    /// Replica index.
    #[arg(long, default_value_t = 0)]
    pub instance: u32,
    /// Print JSON instead of YAML.
    #[arg(long)]
    pub json: bool,
}

fn project_spec(args: &ProjectArgs) -> ProjectSpec {
    args.spec()
}

fn state_dir(args: &ProjectArgs) -> PathBuf {
    project_spec(args).working_dir.join(".mesh")
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs the control plane until Ctrl-C (SIGINT) or SIGTERM.
pub fn serve(project: &ProjectArgs, args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let config = ControlPlaneConfig {
        project: project_spec(project),
        api: ApiConfig {
            listen: args.listen,
            ..ApiConfig::default()
        },
        print: true,
        ..ControlPlaneConfig::default()
    };
    runtime()?.block_on(async {
        let cp = ControlPlane::start(config).await?;
        println!("control plane listening on {}", cp.local_addr());
        // SIGTERM (`kill`, `docker stop`, systemd) stops as cleanly as Ctrl-C: the state file
        // goes, so the CLI does not try a control plane that is gone.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
            _ = term.recv() => {}
        }
        println!("control plane stopping");
        cp.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// Prints the running control plane's status.
pub fn status(project: &ProjectArgs, json: bool) -> anyhow::Result<ExitCode> {
    let (client, report) = runtime()?.block_on(call_with_backoff(
        &state_dir(project),
        RECONNECT_BUDGET,
        |c| async move { c.get::<StatusReport>(STATUS_PATH).await },
    ))?;
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    if json {
        serde_json::to_writer_pretty(&mut w, &report)?;
        writeln!(w)?;
        drop(w);
        print_warnings(&report.warnings);
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        w,
        "control plane {}  revision {}",
        client.address(),
        report.revision
    )?;
    let r = &report.last_reload;
    writeln!(
        w,
        "last reload: {}{}",
        if r.ok { "ok" } else { "REFUSED" },
        if r.ok {
            String::new()
        } else {
            format!(
                " ({} error(s); serving revision {})",
                r.errors.len(),
                r.revision
            )
        }
    )?;
    for e in &r.errors {
        writeln!(w, "  {e}")?;
    }
    for f in &r.findings {
        writeln!(w, "  {f}")?;
    }
    writeln!(
        w,
        "\n{:<28} {:<8} {:<8} {:<10} STATE",
        "PROXY", "VERSION", "ACKED", "CONNECTED"
    )?;
    for p in &report.proxies {
        let state = match (&p.nacked, &p.nack_error) {
            (Some(v), Some(why)) if p.acked.is_none_or(|a| a < *v) => format!("NACK v{v}: {why}"),
            _ if p.acked == Some(p.version) => "SYNCED".into(),
            _ if p.connected => "PENDING".into(),
            _ => "-".into(),
        };
        writeln!(
            w,
            "{:<28} {:<8} {:<8} {:<10} {state}",
            p.proxy,
            p.version,
            p.acked.map_or("-".into(), |a| a.to_string()),
            if p.connected { "yes" } else { "no" },
        )?;
    }
    let now = crate::ca::unix_secs(SystemTime::now());
    let state = |e: Expiry| match e {
        Expiry::Ok => "ok",
        Expiry::Expiring => "EXPIRING",
        Expiry::Expired => "EXPIRED",
    };
    if !report.identities.is_empty() {
        writeln!(w, "\n{:<56} {:<11} STATE", "IDENTITY", "EXPIRES IN")?;
        for i in &report.identities {
            writeln!(
                w,
                "{:<56} {:<11} {}",
                i.identity,
                rough_duration(i.not_after - now),
                state(i.expiry)
            )?;
        }
    }
    for c in &report.ca_certificates {
        let retires = c
            .retires_at
            .map(|t| format!(", trusted for {} more", rough_duration(t - now)))
            .unwrap_or_default();
        writeln!(
            w,
            "CA {} certificate ({}): expires in {} ({}){retires}",
            c.role,
            c.subject,
            rough_duration(c.not_after - now),
            state(c.expiry)
        )?;
    }
    drop(w);
    print_warnings(&report.warnings);
    Ok(ExitCode::SUCCESS)
}

/// Prints `warning: ...` lines on stderr.
fn print_warnings(warnings: &[String]) {
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
}

/// Asks the running control plane to reload now, optionally waiting for ACKs.
pub fn apply(project: &ProjectArgs, args: &ApplyArgs) -> anyhow::Result<ExitCode> {
    let body = ReloadRequest {
        wait: args.wait,
        timeout_ms: Some(args.timeout.saturating_mul(1000)),
    };
    let resp: ReloadResponse = post_admin(project, RELOAD_PATH, &body)?;
    let ok = resp.reload.ok && resp.acks.as_ref().is_none_or(|a| a.all_acked());
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    if args.json {
        serde_json::to_writer_pretty(&mut w, &resp)?;
        writeln!(w)?;
    } else {
        super::reload::print_report(&resp.reload);
        if let Some(a) = &resp.acks {
            writeln!(
                w,
                "{} proxy(ies) ACKed revision {} in {:.1} ms",
                a.acked.len(),
                a.revision,
                a.elapsed_ms
            )?;
            print_ack_problems(&mut w, a, "")?;
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Prints the compiled config of one proxy (host-mode placement, VIPs from `.mesh/vips.json`
/// when it exists, else allocated in memory the same way the control plane would).
pub fn proxy_config(project: &ProjectArgs, args: &ProxyConfigArgs) -> anyhow::Result<ExitCode> {
    let loaded = project.load()?;
    let mut diags = loaded.diagnostics.clone();
    diags.extend(meshmodel::check::analyze(&loaded.mesh));
    let errors: Vec<_> = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    if !errors.is_empty() {
        for d in errors {
            eprintln!("{}", d.render(false));
        }
        return Ok(ExitCode::from(1));
    }
    let offline = crate::explain::Offline::new(&loaded, &state_dir(project))?;
    let Some(workload) = offline.workload(&args.service) else {
        bail!(
            "no compose service or mesh service named {:?}",
            args.service
        );
    };
    let cfg = offline.compile(&workload, args.instance)?;
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    if args.json {
        serde_json::to_writer_pretty(&mut w, &cfg)?;
        writeln!(w)?;
    } else {
        // Enums print as one-key maps, so the YAML reads back exactly as the JSON the proxy
        // receives.
        w.write_all(meshapi::yaml::to_string(&cfg)?.as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}
