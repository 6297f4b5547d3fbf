//! The Docker subcommands of the CLI: `up`, `down`, `ps`, `logs`, and the hidden
//! `__control-plane` that `up -d` starts in the background.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

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
    #[arg(long, conflicts_with = "no_build")]
    pub build: bool,
    /// Never build: a missing image is an error naming it.
    #[arg(long)]
    pub no_build: bool,
    /// Recreate every container, even those whose configuration did not change.
    #[arg(long)]
    pub force_recreate: bool,
    /// Only the named services, not what they depend on.
    #[arg(long, requires = "services")]
    pub no_deps: bool,
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
    /// Stop containers with this grace (seconds after SIGTERM) before removing them (default:
    /// remove at once).
    #[arg(short = 't', long = "timeout", value_name = "SECONDS")]
    pub timeout: Option<i32>,
    /// Accepted for compose's habit: `down` removes every container with the project's
    /// label, orphans included.
    #[arg(long)]
    pub remove_orphans: bool,
}

pub(crate) fn spec(args: &ProjectArgs) -> ProjectSpec {
    args.spec()
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `meshctl up`.
/// `x-mesh.node` places a service on a joined machine, which `meshctl serve --listen` and
/// `meshctl join` serve (docs/hosts.md); `up` would run it here instead, so it refuses the
/// file rather than ignore the key.
fn refuse_node_placement(project: &Project) -> anyhow::Result<()> {
    let placed: Vec<String> = project
        .mesh
        .compose
        .iter()
        .flat_map(|c| &c.services)
        .filter_map(|(name, s)| {
            let node = s.x_mesh.as_ref()?.node.as_ref()?;
            Some(format!("{name} (x-mesh.node: {node})"))
        })
        .collect();
    if placed.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "x-mesh.node is not served by `meshctl up` yet: {}; run the control plane with \
         `meshctl serve --listen <address>` and start each node with `meshctl join` \
         (docs/hosts.md, \"Two machines\"), or remove x-mesh.node to run the service here",
        placed.join(", ")
    )
}

pub fn up(project: &ProjectArgs, args: &UpArgs) -> anyhow::Result<ExitCode> {
    let mut spec = spec(project);
    spec.targets.extend(args.services.iter().cloned());
    let project = Project::load(&spec)?;
    refuse_node_placement(&project)?;
    // Only processes: no Docker engine is needed (or touched).
    if crate::process::commands::processes_only(&project) {
        return crate::process::commands::up(&project, args);
    }
    let opts = UpOptions {
        detach: args.detach,
        build: args.build,
        wait: args.wait,
        wait_timeout: Duration::from_secs(args.wait_timeout),
        services: args.services.clone(),
        remove_orphans: args.remove_orphans,
        proxy_image: args.proxy_image.clone(),
        no_build: args.no_build,
        force_recreate: args.force_recreate,
        no_deps: args.no_deps,
    };
    let progress = Progress::new();
    runtime()?.block_on(async {
        let started = std::time::Instant::now();
        if args.detach {
            let outcome = super::up::up(&project, &opts, &progress).await?;
            crate::controlplane::news::print_unseen(&project.state_dir).await;
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
        eprintln!(
            "mesh {} ready in {:.1} s: {} pod(s) on {}; Ctrl-C stops it",
            project.name(),
            started.elapsed().as_secs_f64(),
            outcome.plan.pods.len(),
            outcome.network.name
        );
        let heal = tokio::spawn(super::heal::watch(project.name().to_string()));
        let style = super::logs::LogStyle::follow_all();
        let deaths = tokio::spawn(super::heal::watch_deaths(
            project.name().to_string(),
            |line| eprintln!("{line}"),
        ));
        tokio::select! {
            // A closed stdout ends the stream; the project is stopped as on Ctrl-C.
            _ = super::logs::stream(&engine, &outcome.apps, &style) => {}
            _ = &mut interrupted => {}
        }
        deaths.abort();
        stop_project(&engine, project.name(), &progress).await?;
        // Process pods have no stopped state to keep: they go as on `down`.
        let dir = project.state_dir.clone();
        let gone =
            tokio::task::spawn_blocking(move || crate::process::commands::down(&dir)).await??;
        crate::process::commands::report_down(&progress, &gone);
        heal.abort();
        if let Some(cp) = outcome.control_plane {
            cp.shutdown().await;
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Stops every running container of the project (apps, then sidecars and meshdns), with
/// a line for the start and the total.
async fn stop_project(engine: &Engine, project: &str, progress: &Progress) -> anyhow::Result<()> {
    let stopping = std::time::Instant::now();
    eprintln!("\nstopping {project}");
    super::lifecycle::stop_containers(
        engine,
        project,
        &[],
        super::lifecycle::STOP_GRACE_SECS,
        progress,
    )
    .await?;
    eprintln!(
        "stopped {project} in {:.1} s",
        stopping.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `meshctl down`: by the engine's labels, so it works with broken files or none (`-p`).
pub fn down(project: &ProjectArgs, args: &DownArgs) -> anyhow::Result<ExitCode> {
    let target = super::lifecycle::Target::resolve(project)?;
    let name = target.name.clone();
    let progress = Progress::new();
    runtime()?.block_on(async {
        // A project of processes only needs no engine: its pods are found under `.mesh/pods/`.
        let processes_only = target
            .project
            .as_ref()
            .is_some_and(crate::process::commands::processes_only);
        let engine = match Engine::connect().await {
            Ok(e) => Some(e),
            Err(_) if processes_only || crate::process::commands::has_pods(&target.state_dir) => {
                None
            }
            Err(e) => return Err(e.into()),
        };
        let state_dir = match &engine {
            Some(e) => target.state_dir_on(&e.containers(&name).await?),
            None => target.state_dir.clone(),
        };
        // Process pods first (their veths may be on the project's Docker network).
        let dir = state_dir.clone();
        let stopped =
            tokio::task::spawn_blocking(move || crate::process::commands::down(&dir)).await??;
        crate::process::commands::report_down(&progress, &stopped);
        if super::cp::stop(&state_dir) {
            progress.line("Control plane", "Stopped");
        }
        // Every pod token dies with its container.
        let tokens = state_dir.join("tokens.json");
        if tokens.exists() {
            crate::ca::token::TokenStore::open(&tokens)
                .and_then(|t| t.revoke_holders(|_| true, std::time::SystemTime::now()))
                .with_context(|| format!("revoking the pod tokens in {}", tokens.display()))?;
        }
        let _ = std::fs::remove_file(state_dir.join(super::cp::PLACEMENT_FILE));
        let Some(engine) = engine else {
            return Ok(ExitCode::SUCCESS);
        };
        if let Some(grace) = args.timeout {
            super::lifecycle::stop_containers(&engine, &name, &[], grace, &progress).await?;
        }
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
        if args.rmi.is_some() && target.project.is_none() {
            eprintln!("warning: --rmi needs loadable files (it removes the images they name); no image removed");
        }
        if let Some(kind) = &args.rmi
            && let Some(compose) = target.project.as_ref().and_then(|p| p.mesh.compose.as_ref())
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
        if args.volumes && state_dir.join("ca").exists() {
            eprintln!(
                "kept {}: the project's CA and its key (certificates stay valid for the next `up`); delete the directory to start over with a new CA",
                state_dir.display()
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `meshctl build [SERVICE...]`.
#[derive(Debug, Clone, Args)]
pub struct BuildArgs {
    /// Only these services' images (default: every image `up` needs, the sidecar runtime
    /// image included).
    pub services: Vec<String>,
}

/// `meshctl build`: builds every image `up` would build (compose `build:`, the sidecar
/// runtime image and the workspace's demo images), whether or not they exist; with service
/// names, only theirs (as compose).
pub fn build(project: &ProjectArgs, args: &BuildArgs) -> anyhow::Result<ExitCode> {
    let mut spec = spec(project);
    spec.targets.extend(args.services.iter().cloned());
    let project = Project::load(&spec)?;
    let opts = UpOptions {
        build: true,
        ..UpOptions::default()
    };
    let progress = Progress::new();
    runtime()?.block_on(async {
        let engine = Engine::connect().await?;
        if args.services.is_empty() {
            super::up::proxy_image(&engine, &opts, &progress).await?;
        }
        super::up::service_images(&engine, &project, &opts, &args.services, &progress).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `meshctl __control-plane` (started by `up -d`).
#[derive(Debug, Clone, Args)]
pub struct DaemonArgs {
    /// Serve the control plane in this process (the supervisor's child); without it, supervise.
    #[arg(long)]
    pub serve: bool,
    /// Supervise this already running control plane (whose supervisor died) instead of
    /// starting one; started by the control plane itself.
    #[arg(long, value_name = "PID", conflicts_with = "serve")]
    pub adopt: Option<u32>,
}

/// `meshctl __control-plane` (started by `up -d`).
pub fn control_plane_daemon(project: &ProjectArgs, args: &DaemonArgs) -> anyhow::Result<ExitCode> {
    super::cp::daemon(&spec(project), args.serve, args.adopt)
}
