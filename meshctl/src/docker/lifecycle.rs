//! Commands that act on a project's containers by the engine's labels, as docker compose's
//! do: `stop`, `start`, `restart`, `ls`, and the [`Target`] that `ps`, `logs` and `down` use
//! too. They work from the project name alone (`-p NAME`, `COMPOSE_PROJECT_NAME`, the files'
//! `name:`, the directory), with or without the files, broken files included: a project
//! whose files no longer load must still be listed, read and taken down.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bollard::query_parameters::{
    ListContainersOptionsBuilder, StartContainerOptions, StopContainerOptionsBuilder,
};
use clap::Args;
use futures_util::future::join_all;
use meshapi::diag::Severity;
use serde::Serialize;

use super::engine::{Engine, Owned};
use super::progress::Progress;
use super::up::Project;
use super::*;
use crate::project::ProjectArgs;

/// Label on the meshdns container: the absolute path of the project's state directory
/// (`.mesh/`), so `down -p NAME` from anywhere stops its control plane and revokes its tokens.
pub const LABEL_STATE_DIR: &str = "io.meshctl.state-dir";
/// Label on the meshdns container: the files `up` read (as compose writes it), for `ls`.
pub const LABEL_CONFIG_FILES: &str = "com.docker.compose.project.config_files";

/// The project a label-driven command acts on.
#[derive(Debug)]
pub struct Target {
    /// The project name the engine's labels carry.
    pub name: String,
    /// The project loaded from its files, when they load without errors.
    pub project: Option<Project>,
    /// Where `.mesh/` is expected from the flags (the engine's label may say better).
    pub state_dir: PathBuf,
}

impl Target {
    /// The project the flags name. Broken or missing files are not an error here: the name
    /// still comes from `-p`, `COMPOSE_PROJECT_NAME`, the files' `name:` or the directory,
    /// and a warning says the files were not used.
    pub fn resolve(args: &ProjectArgs) -> anyhow::Result<Target> {
        let spec = args.spec();
        let loaded = meshmodel::load::load(&spec.load_options());
        let mut diags = loaded.diagnostics.clone();
        diags.extend(meshmodel::check::analyze(&loaded.mesh));
        let errors: Vec<_> = diags
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .collect();
        let state_dir = spec.working_dir.join(".mesh");
        let name = loaded.mesh.project.clone();
        if name.is_empty() {
            anyhow::bail!(
                "cannot tell the project name: {}\n  hint: name it with -p NAME (`meshctl ls` lists the projects on this engine)",
                errors
                    .first()
                    .map_or_else(|| "no files".to_string(), |d| d.render(false))
            );
        }
        if errors.is_empty() {
            let project = Project {
                spec,
                state_dir: state_dir.clone(),
                mesh: loaded.mesh,
            };
            return Ok(Target {
                name,
                project: Some(project),
                state_dir,
            });
        }
        if loaded.mesh.compose.is_some() || !loaded.mesh.files.is_empty() {
            eprintln!(
                "warning: the mesh files have {} error(s) (`meshctl check` lists them); acting on project {name} by its labels",
                errors.len()
            );
        }
        Ok(Target {
            name,
            project: None,
            state_dir,
        })
    }

    /// The state directory: the meshdns container's label when it has one, else the flags'.
    pub fn state_dir_on(&self, containers: &[Owned]) -> PathBuf {
        containers
            .iter()
            .find(|c| c.role() == Some(Role::Dns))
            .map(|c| c.label(LABEL_STATE_DIR))
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| self.state_dir.clone())
    }

    /// The project's containers, after printing what its control plane did that the user
    /// has not seen ([`crate::controlplane::news`]).
    pub async fn containers(&self, engine: &Engine) -> Result<Vec<Owned>, DockerError> {
        let containers = engine.containers(&self.name).await?;
        crate::controlplane::news::print_unseen(&self.state_dir_on(&containers)).await;
        Ok(containers)
    }
}

/// `meshctl stop`.
#[derive(Debug, Clone, Args)]
pub struct StopArgs {
    /// Seconds each container gets after SIGTERM before SIGKILL.
    #[arg(short = 't', long = "timeout", value_name = "SECONDS", default_value_t = STOP_GRACE_SECS)]
    pub timeout: i32,
    /// Only these services (default: all). meshdns stops only with the whole project.
    pub services: Vec<String>,
}

/// `meshctl start`.
#[derive(Debug, Clone, Args)]
pub struct StartArgs {
    /// Seconds a sidecar may take to be ready again.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub wait_timeout: u64,
    /// Only these services (default: all).
    pub services: Vec<String>,
}

/// `meshctl restart`.
#[derive(Debug, Clone, Args)]
pub struct RestartArgs {
    /// Seconds each container gets after SIGTERM before SIGKILL.
    #[arg(short = 't', long = "timeout", value_name = "SECONDS", default_value_t = STOP_GRACE_SECS)]
    pub timeout: i32,
    /// Only these services (default: all).
    pub services: Vec<String>,
}

/// `meshctl ls`.
#[derive(Debug, Clone, Args)]
pub struct LsArgs {
    /// Also projects with no running container.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only the names.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// `table` or `json`.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// `--format` of `ps`, `ls` and `config`-like listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// JSON for machines.
    Json,
}

/// Seconds a container gets to stop after SIGTERM before SIGKILL (compose's default).
pub const STOP_GRACE_SECS: i32 = 10;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// True when `c` belongs to one of `services` (compose or mesh service name); all when empty.
pub fn selected(c: &Owned, services: &[String]) -> bool {
    services.is_empty()
        || services
            .iter()
            .any(|s| c.label(LABEL_SERVICE) == s || c.label(LABEL_MESH_SERVICE) == s)
}

/// Refuses a service name no container of the project carries (compose: "no such service").
fn check_services(project: &str, containers: &[Owned], services: &[String]) -> anyhow::Result<()> {
    for s in services {
        if !containers
            .iter()
            .any(|c| selected(c, std::slice::from_ref(s)))
        {
            anyhow::bail!("no such service: {s} (project {project} has no container of it)");
        }
    }
    Ok(())
}

/// Stops the running containers of `services` (all when empty): apps first, in parallel, then
/// their sidecars (and meshdns when the whole project stops), as a pod stops.
pub async fn stop_containers(
    engine: &Engine,
    project: &str,
    services: &[String],
    grace: i32,
    progress: &Progress,
) -> Result<(), DockerError> {
    // A second look: a start request already on its way (an interrupted `up`) may land after
    // the first listing.
    for _ in 0..3 {
        let containers = engine.containers(project).await?;
        let running = |c: &&Owned| {
            c.state == "running"
                && match c.role() {
                    Some(Role::Dns) => services.is_empty(),
                    _ => selected(c, services),
                }
        };
        if !containers.iter().any(|c| running(&c)) {
            break;
        }
        for apps in [true, false] {
            let stops = containers
                .iter()
                .filter(running)
                .filter(|c| (c.role() == Some(Role::App)) == apps)
                .map(|c| async move {
                    let label = format!("Container {}", c.name);
                    progress.line(&label, "Stopping");
                    let opts = StopContainerOptionsBuilder::new().t(grace).build();
                    match engine.docker.stop_container(&c.id, Some(opts)).await {
                        Ok(()) => {
                            progress.line(&label, "Stopped");
                            Ok(())
                        }
                        // 304: already stopped; 404: gone meanwhile.
                        Err(e) if is_not_found(&e) => Ok(()),
                        Err(bollard::errors::Error::DockerResponseServerError {
                            status_code: 304,
                            ..
                        }) => Ok(()),
                        Err(e) => Err(DockerError::api(format!("stopping {}", c.name))(e)),
                    }
                });
            for r in join_all(stops).await {
                r?;
            }
        }
    }
    Ok(())
}

/// Starts the stopped containers of `services`: meshdns, then each sidecar (waited for until
/// ready, so its app joins the new network namespace with the proxy in place), then the apps.
pub async fn start_containers(
    engine: &Engine,
    project: &str,
    services: &[String],
    wait: Duration,
    progress: &Progress,
) -> Result<(), DockerError> {
    let containers = engine.containers(project).await?;
    let stopped = |c: &&Owned| c.state != "running" && c.state != "restarting";
    for role in [Role::Dns, Role::Sidecar, Role::App] {
        let starts = containers
            .iter()
            .filter(|c| c.role() == Some(role))
            .filter(|c| role == Role::Dns || selected(c, services))
            .filter(stopped)
            .map(|c| async move {
                let label = format!("Container {}", c.name);
                progress.line(&label, "Starting");
                engine
                    .docker
                    .start_container(&c.id, None::<StartContainerOptions>)
                    .await
                    .map_err(DockerError::api(format!("starting {}", c.name)))?;
                if role == Role::Sidecar
                    && let Ok(ip) = c.label(LABEL_IP).parse()
                {
                    progress.line(&label, "Waiting for the proxy");
                    super::pod::wait_sidecar(engine, &c.name, &c.id, ip, wait).await?;
                }
                progress.line(&label, "Started");
                Ok::<(), DockerError>(())
            });
        for r in join_all(starts).await {
            r?;
        }
    }
    Ok(())
}

/// Makes sure the background control plane runs before sidecars start (they need it for
/// their certificates); `stop` leaves it running, a reboot does not.
fn ensure_control_plane(target: &Target, state_dir: &std::path::Path, progress: &Progress) {
    if super::cp::running(state_dir).is_some() {
        return;
    }
    let placement = super::cp::PlacementFile::read(state_dir);
    match (&target.project, placement) {
        (Some(project), Some(placement)) => {
            match super::cp::spawn_background(&project.spec, &placement) {
                Ok(pid) => progress.line(
                    "Control plane",
                    &format!("Started (pid {pid}, {})", placement.listen),
                ),
                Err(e) => eprintln!("warning: the control plane did not start: {e}"),
            }
        }
        _ => eprintln!(
            "warning: the control plane of {} is not running and cannot be started without loadable files; sidecars will not get certificates until `meshctl up -d`",
            target.name
        ),
    }
}

/// `meshctl stop`.
pub fn stop(args: &ProjectArgs, stop: &StopArgs) -> anyhow::Result<ExitCode> {
    let target = Target::resolve(args)?;
    let progress = Progress::new();
    runtime()?.block_on(async {
        let engine = Engine::connect().await?;
        let containers = target.containers(&engine).await?;
        check_services(&target.name, &containers, &stop.services)?;
        stop_containers(
            &engine,
            &target.name,
            &stop.services,
            stop.timeout,
            &progress,
        )
        .await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `meshctl start`.
pub fn start(args: &ProjectArgs, start: &StartArgs) -> anyhow::Result<ExitCode> {
    let target = Target::resolve(args)?;
    let progress = Progress::new();
    runtime()?.block_on(async {
        let engine = Engine::connect().await?;
        let containers = target.containers(&engine).await?;
        if containers.is_empty() {
            anyhow::bail!(
                "project {} has no containers on this engine; `meshctl up` creates them",
                target.name
            );
        }
        check_services(&target.name, &containers, &start.services)?;
        let state_dir = target.state_dir_on(&containers);
        ensure_control_plane(&target, &state_dir, &progress);
        let wait = Duration::from_secs(start.wait_timeout);
        start_containers(&engine, &target.name, &start.services, wait, &progress).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `meshctl restart`: stop, then start, pod by pod order (apps, sidecars; sidecars, apps).
pub fn restart(args: &ProjectArgs, restart: &RestartArgs) -> anyhow::Result<ExitCode> {
    let target = Target::resolve(args)?;
    let progress = Progress::new();
    runtime()?.block_on(async {
        let engine = Engine::connect().await?;
        let containers = target.containers(&engine).await?;
        check_services(&target.name, &containers, &restart.services)?;
        stop_containers(
            &engine,
            &target.name,
            &restart.services,
            restart.timeout,
            &progress,
        )
        .await?;
        let state_dir = target.state_dir_on(&containers);
        ensure_control_plane(&target, &state_dir, &progress);
        start_containers(
            &engine,
            &target.name,
            &restart.services,
            Duration::from_secs(60),
            &progress,
        )
        .await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// One row of `ls`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct LsRow {
    pub name: String,
    /// Compose's summary: `running(3)`, `running(2), exited(1)`.
    pub status: String,
    #[serde(rename = "ConfigFiles")]
    pub config_files: String,
}

/// The projects on the engine, from the containers' `io.meshctl.project` labels.
pub async fn ls_rows(engine: &Engine, all: bool) -> Result<Vec<LsRow>, DockerError> {
    let filters =
        std::collections::HashMap::from([("label".to_string(), vec![LABEL_PROJECT.to_string()])]);
    let opts = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let list = engine
        .docker
        .list_containers(Some(opts))
        .await
        .map_err(DockerError::api("listing containers"))?;
    let mut projects: BTreeMap<String, (BTreeMap<String, usize>, String)> = BTreeMap::new();
    for c in list {
        let labels = c.labels.unwrap_or_default();
        let Some(project) = labels.get(LABEL_PROJECT) else {
            continue;
        };
        let entry = projects.entry(project.clone()).or_default();
        let state = c.state.map(|s| s.to_string()).unwrap_or_default();
        *entry.0.entry(state).or_default() += 1;
        if let Some(files) = labels.get(LABEL_CONFIG_FILES) {
            entry.1 = files.clone();
        }
    }
    Ok(projects
        .into_iter()
        .filter(|(_, (states, _))| all || states.contains_key("running"))
        .map(|(name, (states, config_files))| LsRow {
            name,
            status: states
                .iter()
                .map(|(s, n)| format!("{s}({n})"))
                .collect::<Vec<_>>()
                .join(", "),
            config_files,
        })
        .collect())
}

/// `meshctl ls`.
pub fn ls(args: &LsArgs) -> anyhow::Result<ExitCode> {
    let rows = runtime()?.block_on(async {
        let engine = Engine::connect().await?;
        ls_rows(&engine, args.all).await
    })?;
    let mut out = std::io::stdout().lock();
    if args.quiet {
        for r in &rows {
            writeln!(out, "{}", r.name)?;
        }
    } else if args.format == Format::Json {
        serde_json::to_writer(&mut out, &rows)?;
        writeln!(out)?;
    } else {
        let table: Vec<Vec<String>> = rows
            .iter()
            .map(|r| vec![r.name.clone(), r.status.clone(), r.config_files.clone()])
            .collect();
        write_table(&mut out, &["NAME", "STATUS", "CONFIG FILES"], &table)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes rows under a header in columns as wide as their widest cell (three spaces apart,
/// as docker compose aligns its tables); the last column is not padded.
pub fn write_table(
    out: &mut impl Write,
    header: &[&str],
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let last = cells.len().saturating_sub(1);
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                s.push_str(cell);
            } else {
                s.push_str(cell);
                s.push_str(&" ".repeat(w - cell.chars().count() + 3));
            }
        }
        s.trim_end().to_string()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for r in rows {
        writeln!(out, "{}", line(r.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_on_the_widest_cell() {
        let mut out = Vec::new();
        let rows = vec![
            vec!["a-very-long-name".to_string(), "x".into(), "last".into()],
            vec!["b".to_string(), "yyyy".into(), "".into()],
        ];
        write_table(&mut out, &["NAME", "S", "FILES"], &rows).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "NAME               S      FILES");
        assert_eq!(lines[1], "a-very-long-name   x      last");
        assert_eq!(lines[2], "b                  yyyy");
        // Every column starts at the same offset on every line.
        let col = |l: &str, word: &str| l.find(word).unwrap();
        assert_eq!(col(lines[0], "S "), col(lines[1], "x "));
    }
}
