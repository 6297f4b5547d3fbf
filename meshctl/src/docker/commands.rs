//! The Docker subcommands of the CLI: `up`, `down`, `ps`, `logs`, and the hidden
//! `__control-plane` that `up -d` starts in the background.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bollard::query_parameters::LogsOptionsBuilder;
use clap::Args;
use futures_util::StreamExt;
use serde::Serialize;

use super::engine::Engine;
use super::progress::Progress;
use super::up::{Project, UpOptions};
use super::*;
use crate::controlplane::ProjectSpec;
use crate::project::ProjectArgs;

/// `meshctl up`.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Detached: return when the mesh is up, leave the control plane running in the background.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Build images (compose `build:`, the runtime and demo images) before starting.
    #[arg(long)]
    pub build: bool,
    /// Wait until every service is running and healthy.
    #[arg(long)]
    pub wait: bool,
    /// Seconds `--wait` (and start-up) may take.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub wait_timeout: u64,
    /// Remove containers of services no longer in the files.
    #[arg(long)]
    pub remove_orphans: bool,
    /// Sidecar and meshdns image (default: meshctl/runtime:<version>, built locally when
    /// missing).
    #[arg(long, value_name = "IMAGE")]
    pub proxy_image: Option<String>,
    /// Only these services (and their dependencies).
    pub services: Vec<String>,
}

/// `meshctl down`.
#[derive(Debug, Clone, Args)]
pub struct DownArgs {
    /// Also remove the project's named volumes.
    #[arg(short = 'v', long)]
    pub volumes: bool,
    /// Remove images: `local` removes the images built for services without an `image:` name.
    #[arg(long, value_name = "TYPE", value_parser = ["local", "all"])]
    pub rmi: Option<String>,
}

/// `meshctl ps`.
#[derive(Debug, Clone, Args)]
pub struct PsArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Also list sidecars and meshdns as their own rows.
    #[arg(short = 'a', long)]
    pub all: bool,
}

/// `meshctl logs`.
#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    /// Follow the output.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Compose file, Istio resource file or directory (repeatable; `-f` before `logs` too).
    #[arg(long = "file", value_name = "PATH")]
    pub files: Vec<std::path::PathBuf>,
    /// Lines from the end of each log (`all` for everything).
    #[arg(long, default_value = "all")]
    pub tail: String,
    /// Include the sidecars' (meshproxy) logs.
    #[arg(long)]
    pub proxy: bool,
    /// Only these services.
    pub services: Vec<String>,
}

pub(super) fn spec(args: &ProjectArgs) -> ProjectSpec {
    ProjectSpec {
        files: args.files.clone(),
        working_dir: args
            .project_directory
            .clone()
            .unwrap_or_else(|| PathBuf::from(".")),
        project_name: args.project_name.clone(),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Seconds a container gets to stop after SIGTERM before SIGKILL (compose's default).
const STOP_GRACE_SECS: i32 = 10;

/// `meshctl up`.
pub fn up(project: &ProjectArgs, args: &UpArgs) -> anyhow::Result<ExitCode> {
    let project = Project::load(&spec(project))?;
    let opts = UpOptions {
        detach: args.detach,
        build: args.build,
        wait: args.wait,
        wait_timeout: Duration::from_secs(args.wait_timeout),
        services: args.services.clone(),
        remove_orphans: args.remove_orphans,
        proxy_image: args.proxy_image.clone(),
    };
    let progress = Progress::new();
    runtime()?.block_on(async {
        let started = std::time::Instant::now();
        if args.detach {
            let outcome = super::up::up(&project, &opts, &progress).await?;
            eprintln!(
                "mesh {} up in {:.1} s: {} pod(s) on {} ({}/24)",
                project.name(),
                started.elapsed().as_secs_f64(),
                outcome.plan.pods.len(),
                outcome.network.name,
                outcome.network.subnet
            );
            return Ok(ExitCode::SUCCESS);
        }
        // Foreground: Ctrl-C or SIGTERM from the start on (during start-up too, as compose:
        // what was started is stopped), then stream the apps' logs until one arrives.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let interrupted = async {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        tokio::pin!(interrupted);
        let outcome = tokio::select! {
            r = super::up::up(&project, &opts, &progress) => Some(r?),
            _ = &mut interrupted => None,
        };
        let engine = Engine::connect().await?;
        let Some(outcome) = outcome else {
            eprintln!("\ninterrupted during start-up");
            stop_project(&engine, project.name(), &progress).await?;
            return Ok(ExitCode::from(130));
        };
        let heal = tokio::spawn(super::heal::watch(project.name().to_string()));
        let deaths = tokio::spawn(super::heal::watch_deaths(
            project.name().to_string(),
            |line| eprintln!("{line}"),
        ));
        tokio::select! {
            _ = follow_logs(&engine, &outcome.apps, "all") => {}
            _ = &mut interrupted => {}
        }
        deaths.abort();
        stop_project(&engine, project.name(), &progress).await?;
        heal.abort();
        if let Some(cp) = outcome.control_plane {
            cp.shutdown().await;
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Stops every running container of the project: apps first, in parallel with compose's 10 s
/// grace each (in-flight requests finish through their sidecars), then sidecars (meshproxy
/// drains within its config's `drainDeadline`, 5 s) and meshdns, in parallel.
async fn stop_project(engine: &Engine, project: &str, progress: &Progress) -> anyhow::Result<()> {
    let stopping = std::time::Instant::now();
    eprintln!("\nstopping {project}");
    // A second look: a start request already on its way when start-up was interrupted may
    // land after the first listing.
    for _ in 0..3 {
        let containers = engine.containers(project).await?;
        if !containers.iter().any(|c| c.state == "running") {
            break;
        }
        for wave in [true, false] {
            let stops = containers
                .iter()
                .filter(|c| c.state == "running" && (c.role() == Some(Role::App)) == wave)
                .map(|c| async move {
                    let label = format!("Container {}", c.name);
                    progress.line(&label, "Stopping");
                    let opts = bollard::query_parameters::StopContainerOptionsBuilder::new()
                        .t(STOP_GRACE_SECS)
                        .build();
                    match engine.docker.stop_container(&c.id, Some(opts)).await {
                        Ok(()) => progress.line(&label, "Stopped"),
                        Err(e) => progress.line(&label, &format!("not stopped: {e}")),
                    }
                });
            futures_util::future::join_all(stops).await;
        }
    }
    eprintln!(
        "stopped {project} in {:.1} s",
        stopping.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Streams the logs of `containers` (name -> ID), each line prefixed with the name.
async fn follow_logs(engine: &Engine, containers: &BTreeMap<String, String>, tail: &str) {
    let width = containers.keys().map(String::len).max().unwrap_or(0);
    let streams = containers.iter().map(|(name, id)| {
        let opts = LogsOptionsBuilder::new()
            .follow(true)
            .stdout(true)
            .stderr(true)
            .tail(tail)
            .build();
        let prefix = format!("{name:<width$} | ");
        engine
            .docker
            .logs(id, Some(opts))
            .map(move |chunk| (prefix.clone(), chunk))
            .boxed()
    });
    let mut all = futures_util::stream::select_all(streams);
    let mut partial: BTreeMap<String, String> = BTreeMap::new();
    while let Some((prefix, chunk)) = all.next().await {
        let Ok(chunk) = chunk else { continue };
        let text = String::from_utf8_lossy(&chunk.into_bytes()).to_string();
        let buf = partial.entry(prefix.clone()).or_default();
        buf.push_str(&text);
        let mut out = std::io::stdout().lock();
        while let Some(i) = buf.find('\n') {
            let line: String = buf.drain(..=i).collect();
            let _ = write!(out, "{prefix}{line}");
        }
        let _ = out.flush();
    }
}

/// `meshctl down`.
pub fn down(project: &ProjectArgs, args: &DownArgs) -> anyhow::Result<ExitCode> {
    let spec = spec(project);
    let project = Project::load(&spec)?;
    let name = project.name().to_string();
    let progress = Progress::new();
    if super::cp::stop(&project.state_dir) {
        progress.line("Control plane", "Stopped");
    }
    // Every pod token dies with its container.
    let tokens = project.state_dir.join("tokens.json");
    if tokens.exists() {
        crate::ca::token::TokenStore::open(&tokens)
            .and_then(|t| t.revoke_holders(|_| true, std::time::SystemTime::now()))
            .with_context(|| format!("revoking the pod tokens in {}", tokens.display()))?;
    }
    let _ = std::fs::remove_file(project.state_dir.join(super::cp::PLACEMENT_FILE));
    runtime()?.block_on(async {
        let engine = Engine::connect().await?;
        let mut containers = engine.containers(&name).await?;
        containers.sort_by_key(|c| c.role() != Some(Role::App));
        for c in &containers {
            progress.line(&format!("Container {}", c.name), "Removing");
            engine.remove_container(&c.id).await?;
            progress.line(&format!("Container {}", c.name), "Removed");
        }
        for n in engine.networks(&name).await? {
            let Some(id) = n.id.or(n.name.clone()) else {
                continue;
            };
            let label = format!("Network {}", n.name.unwrap_or_default());
            match engine.docker.remove_network(&id).await {
                Ok(()) => progress.line(&label, "Removed"),
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(DockerError::api(format!("removing {label}"))(e).into()),
            }
        }
        if args.volumes {
            for v in engine.volumes(&name).await? {
                match engine
                    .docker
                    .remove_volume(&v, None::<bollard::query_parameters::RemoveVolumeOptions>)
                    .await
                {
                    Ok(()) => progress.line(&format!("Volume {v}"), "Removed"),
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => {
                        return Err(DockerError::api(format!("removing volume {v}"))(e).into());
                    }
                }
            }
        }
        if let Some(kind) = &args.rmi
            && let Some(compose) = &project.mesh.compose
        {
            for (svc_name, svc) in &compose.services {
                let image = match (&svc.image, kind.as_str()) {
                    (None, _) if svc.build.is_some() => format!("{name}-{svc_name}"),
                    (Some(i), "all") => i.clone(),
                    _ => continue,
                };
                if engine
                    .docker
                    .remove_image(
                        &image,
                        None::<bollard::query_parameters::RemoveImageOptions>,
                        None,
                    )
                    .await
                    .is_ok()
                {
                    progress.line(&format!("Image {image}"), "Removed");
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// One row of `ps`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PsRow {
    pub name: String,
    pub id: String,
    /// `app`, `sidecar` or `dns`.
    pub role: String,
    pub service: String,
    pub mesh_service: String,
    pub instance: Option<u32>,
    pub version: String,
    pub state: String,
    /// Times Docker restarted the container by its restart policy (compose's `restart:`).
    pub restarts: i64,
    /// Exit code of its last run, while it is not running (exited, or waiting to be restarted:
    /// Docker resets it at each start).
    pub exit_code: Option<i64>,
    /// `healthy`, `unhealthy`, `starting` or empty (no healthcheck).
    pub health: String,
    pub status: String,
    pub image: String,
    pub ip: String,
    pub identity: String,
    /// Expiry of the pod's current certificate (RFC 3339), when the control plane answers.
    pub cert_expires: Option<String>,
    /// Where that certificate stands against its lifetime (`expiring` means its renewal is
    /// overdue), when the control plane answers.
    pub cert_expiry: Option<crate::controlplane::api::Expiry>,
    pub ports: Vec<String>,
}

/// `meshctl ps`.
pub fn ps(project: &ProjectArgs, args: &PsArgs) -> anyhow::Result<ExitCode> {
    let spec = spec(project);
    let project = Project::load(&spec)?;
    let (rows, ca_warnings) = runtime()?.block_on(ps_rows(&project, args.all || args.json))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
        for w in &ca_warnings {
            eprintln!("warning: {w}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<30} {:<12} {:<10} {:<8} {:<10} {:<8} {:<10} {:<46} {:<10} PORTS",
        "NAME", "SERVICE", "MESH", "VERSION", "STATE", "RESTARTS", "HEALTH", "IDENTITY", "CERT"
    )?;
    for r in &rows {
        writeln!(
            out,
            "{:<30} {:<12} {:<10} {:<8} {:<10} {:<8} {:<10} {:<46} {:<10} {}",
            r.name,
            r.service,
            r.mesh_service,
            r.version,
            r.state,
            r.restarts,
            if r.health.is_empty() { "-" } else { &r.health },
            r.identity,
            cert_cell(r),
            r.ports.join(", ")
        )?;
    }
    for w in &ca_warnings {
        eprintln!("warning: {w}");
    }
    for r in &rows {
        if r.state == "restarting" || (r.restarts > 0 && r.state != "running") {
            eprintln!(
                "warning: {} keeps dying: exited with code {}, restarted {} times by its restart policy (`meshctl logs {}`)",
                r.name,
                r.exit_code.map_or("?".to_string(), |c| c.to_string()),
                r.restarts,
                r.service
            );
        } else if r.restarts > 0 {
            eprintln!(
                "warning: {} died and was restarted by its restart policy ({} restart{})",
                r.name,
                r.restarts,
                if r.restarts == 1 { "" } else { "s" }
            );
        }
        use crate::controlplane::api::Expiry;
        match (r.cert_expiry, &r.cert_expires) {
            (Some(Expiry::Expiring), Some(at)) => eprintln!(
                "warning: the certificate of {} ({}) expires at {at}: its renewal is overdue",
                r.name, r.identity
            ),
            (Some(Expiry::Expired), Some(at)) => eprintln!(
                "warning: the certificate of {} ({}) expired at {at}",
                r.name, r.identity
            ),
            _ => {}
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The CERT column: the expiry's `HH:MM`, with `!` when it is near, `EXPIRED` when past.
fn cert_cell(r: &PsRow) -> String {
    use crate::controlplane::api::Expiry;
    let at = r
        .cert_expires
        .as_deref()
        .map(|e| e.get(11..16).unwrap_or(e))
        .unwrap_or("-");
    match r.cert_expiry {
        Some(Expiry::Expiring) => format!("{at}!"),
        Some(Expiry::Expired) => "EXPIRED".into(),
        _ => at.to_string(),
    }
}

/// The rows of `ps`: app containers (and with `all`, sidecars and meshdns); and a warning per
/// CA certificate near or past expiry.
pub async fn ps_rows(project: &Project, all: bool) -> anyhow::Result<(Vec<PsRow>, Vec<String>)> {
    let engine = Engine::connect().await?;
    let containers = engine.containers(project.name()).await?;
    let expiry = cert_expiry(&project.state_dir).await;
    let sidecar_ports: BTreeMap<String, Vec<String>> = {
        let mut m = BTreeMap::new();
        for c in containers
            .iter()
            .filter(|c| c.role() == Some(Role::Sidecar))
        {
            m.insert(
                c.label(LABEL_IDENTITY).to_string() + c.label(LABEL_IP),
                ports_of(&engine, &c.id).await,
            );
        }
        m
    };
    let mut rows = Vec::new();
    for c in &containers {
        let role = c.role();
        if !all && role != Some(Role::App) {
            continue;
        }
        let inspect = engine
            .docker
            .inspect_container(
                &c.id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .ok();
        let health = inspect
            .as_ref()
            .and_then(|i| i.state.as_ref()?.health.as_ref()?.status)
            .map(|h| h.to_string())
            .filter(|h| h != "none" && !h.is_empty())
            .unwrap_or_default();
        let restarts = inspect.as_ref().and_then(|i| i.restart_count).unwrap_or(0);
        // Docker resets the exit code when it starts the container again, so it is known
        // only while the container is not running (exited, or waiting to be restarted).
        let exit_code = inspect.as_ref().and_then(|i| {
            let st = i.state.as_ref()?;
            (st.running != Some(true) || st.restarting == Some(true)).then_some(st.exit_code?)
        });
        let identity = c.label(LABEL_IDENTITY).to_string();
        let ports = match role {
            Some(Role::App) => sidecar_ports
                .get(&(identity.clone() + c.label(LABEL_IP)))
                .cloned()
                .unwrap_or_default(),
            _ => ports_of(&engine, &c.id).await,
        };
        rows.push(PsRow {
            name: c.name.clone(),
            id: c.id.chars().take(12).collect(),
            role: c.label(LABEL_ROLE).to_string(),
            service: c.label(LABEL_COMPOSE_SERVICE).to_string(),
            mesh_service: c.label(LABEL_MESH_SERVICE).to_string(),
            instance: c.label(LABEL_INSTANCE).parse().ok(),
            version: c.label("version").to_string(),
            state: c.state.clone(),
            restarts,
            exit_code,
            health,
            status: c.status.clone(),
            image: c.image.clone(),
            ip: c.label(LABEL_IP).to_string(),
            cert_expires: expiry.identities.get(&identity).map(|e| e.0.clone()),
            cert_expiry: expiry.identities.get(&identity).map(|e| e.1),
            identity,
            ports,
        });
    }
    Ok((rows, expiry.ca_warnings))
}

async fn ports_of(engine: &Engine, id: &str) -> Vec<String> {
    let Ok(i) = engine
        .docker
        .inspect_container(
            id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(ports) = i.network_settings.and_then(|n| n.ports) {
        for (port, bindings) in ports {
            for b in bindings.into_iter().flatten() {
                out.push(format!(
                    "{}:{}->{port}",
                    b.host_ip.unwrap_or_default(),
                    b.host_port.unwrap_or_default()
                ));
            }
        }
    }
    out.sort();
    out
}

/// What `ps` shows of the running control plane's certificates: expiry per identity, and a
/// warning per CA certificate near or past expiry (empty when it does not answer).
#[derive(Debug, Default)]
struct CertReport {
    identities: BTreeMap<String, (String, crate::controlplane::api::Expiry)>,
    ca_warnings: Vec<String>,
}

/// The certificates of the running control plane, for `ps`.
async fn cert_expiry(state_dir: &std::path::Path) -> CertReport {
    let Ok(client) = crate::controlplane::client::AdminClient::from_state_dir(state_dir) else {
        return CertReport::default();
    };
    let asked = tokio::time::timeout(
        Duration::from_secs(3),
        client.get::<crate::controlplane::api::StatusReport>(meshapi::wire::STATUS_PATH),
    )
    .await;
    let Ok(Ok(status)) = asked else {
        return CertReport::default();
    };
    let now = crate::ca::unix_secs(std::time::SystemTime::now());
    CertReport {
        ca_warnings: crate::controlplane::api::ca_warnings(&status.ca_certificates, now),
        identities: status
            .identities
            .into_iter()
            .filter_map(|i| {
                let t = time::OffsetDateTime::from_unix_timestamp(i.not_after).ok()?;
                let s = t
                    .format(&time::format_description::well_known::Rfc3339)
                    .ok()?;
                Some((i.identity, (s, i.expiry)))
            })
            .collect(),
    }
}

/// `meshctl logs`.
pub fn logs(project: &ProjectArgs, args: &LogsArgs) -> anyhow::Result<ExitCode> {
    let spec = spec(project);
    let project = Project::load(&spec)?;
    runtime()?.block_on(async {
        let engine = Engine::connect().await?;
        let containers = engine.containers(project.name()).await?;
        let chosen: BTreeMap<String, String> = containers
            .iter()
            .filter(|c| match c.role() {
                Some(Role::App) => true,
                Some(Role::Sidecar) => args.proxy,
                _ => false,
            })
            .filter(|c| {
                args.services.is_empty()
                    || args
                        .services
                        .iter()
                        .any(|s| c.label(LABEL_SERVICE) == s || c.label(LABEL_MESH_SERVICE) == s)
            })
            .map(|c| (c.name.clone(), c.id.clone()))
            .collect();
        if args.follow {
            follow_logs(&engine, &chosen, &args.tail).await;
        } else {
            let width = chosen.keys().map(String::len).max().unwrap_or(0);
            let mut out = std::io::stdout().lock();
            for (name, id) in &chosen {
                let opts = LogsOptionsBuilder::new()
                    .stdout(true)
                    .stderr(true)
                    .tail(&args.tail)
                    .build();
                let mut s = engine.docker.logs(id, Some(opts));
                let mut text = String::new();
                while let Some(chunk) = s.next().await {
                    match chunk {
                        Ok(c) => text.push_str(&String::from_utf8_lossy(&c.into_bytes())),
                        Err(e) => {
                            text.push_str(&format!("(logs unavailable: {e})\n"));
                            break;
                        }
                    }
                }
                for line in text.lines() {
                    writeln!(out, "{name:<width$} | {line}")?;
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `meshctl __control-plane` (started by `up -d`).
#[derive(Debug, Clone, Args)]
pub struct DaemonArgs {
    /// Serve the control plane in this process (the supervisor's child); without it, supervise.
    #[arg(long)]
    pub serve: bool,
}

/// `meshctl __control-plane` (started by `up -d`).
pub fn control_plane_daemon(project: &ProjectArgs, args: &DaemonArgs) -> anyhow::Result<ExitCode> {
    super::cp::daemon(&spec(project), args.serve)
}
