//! The command line: argument parsing and one function per subcommand. `main.rs` only calls
//! [`run`]; every command is reachable from tests without spawning a process.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use meshapi::check;
use meshapi::diag::{Diagnostic, Severity};
use meshapi::load::{self, LoadOptions, Loaded};

/// A service mesh for Docker and bare-VM hosts: mutual TLS, authorization, routing and
/// resilience from Istio-style YAML, without Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "meshctl", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub project: ProjectArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Which files make the mesh; the flags `docker compose` has, with the same meaning.
#[derive(Debug, Clone, Args)]
pub struct ProjectArgs {
    /// Compose file, Istio resource file or directory of them (repeatable). Default:
    /// compose.yaml (or compose.yml, docker-compose.yaml, docker-compose.yml), mesh.yaml and
    /// mesh/ in the project directory.
    #[arg(short = 'f', long = "file", global = true, value_name = "PATH")]
    pub files: Vec<PathBuf>,
    /// Project name (default: the compose `name:`, else the directory name).
    #[arg(short = 'p', long = "project-name", global = true)]
    pub project_name: Option<String>,
    /// Project directory (default: the current directory).
    #[arg(long = "project-directory", global = true, value_name = "DIR")]
    pub project_directory: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate every file and analyse the mesh as a whole (like `istioctl analyze`).
    /// Exit 0 when there are no errors, 1 when there are, 2 on usage errors.
    Check(OutputArgs),
    /// Print the merged, normalized model (like `docker compose config`).
    Config(OutputArgs),
    /// Run the control plane in the foreground: CA, proxy API, config push, live reload of
    /// the mesh files, meshdns records.
    Serve(crate::controlplane::commands::ServeArgs),
    /// Show the running control plane: config version and ACK/NACK per proxy, the last
    /// reload and its errors, identities and certificate expiry.
    Status(OutputArgs),
    /// Make the running control plane reload the files now; with --wait, wait for every
    /// connected proxy to ACK (exit 1 if one refuses or does not answer in time).
    Apply(crate::controlplane::commands::ApplyArgs),
    /// Print the config the control plane compiles for one proxy.
    ProxyConfig(crate::controlplane::commands::ProxyConfigArgs),
    /// Create or reconcile the mesh on Docker: network, control plane, meshdns, and per replica
    /// a sidecar that owns the network namespace plus the app joined to it.
    Up(crate::docker::commands::UpArgs),
    /// Remove everything the project made on Docker (containers, network, the background
    /// control plane; volumes with -v) and nothing else.
    Down(crate::docker::commands::DownArgs),
    /// List the project's containers: service, mesh service, version, state, health,
    /// identity and certificate expiry, published ports.
    Ps(crate::docker::commands::PsArgs),
    /// Show the apps' logs (with --proxy, the sidecars' too).
    Logs(crate::docker::commands::LogsArgs),
    /// The background control plane of `up -d` (internal).
    #[command(name = "__control-plane", hide = true)]
    ControlPlaneDaemon,
}

#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Print JSON for machines instead of text for people.
    #[arg(long)]
    pub json: bool,
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    use crate::controlplane::commands;
    match cli.command {
        Command::Check(out) => check_cmd(load_project(&cli.project)?, &out),
        Command::Config(out) => config_cmd(load_project(&cli.project)?, &out),
        Command::Serve(args) => commands::serve(&cli.project, &args),
        Command::Status(out) => commands::status(&cli.project, out.json),
        Command::Apply(args) => commands::apply(&cli.project, &args),
        Command::ProxyConfig(args) => commands::proxy_config(&cli.project, &args),
        Command::Up(args) => crate::docker::commands::up(&cli.project, &args),
        Command::Down(args) => crate::docker::commands::down(&cli.project, &args),
        Command::Ps(args) => crate::docker::commands::ps(&cli.project, &args),
        Command::Logs(args) => crate::docker::commands::logs(&cli.project, &args),
        Command::ControlPlaneDaemon => crate::docker::commands::control_plane_daemon(&cli.project),
    }
}

/// Loads the project the flags name, with the process environment.
pub fn load_project(args: &ProjectArgs) -> anyhow::Result<Loaded> {
    let working_dir = match &args.project_directory {
        Some(dir) => dir.clone(),
        None => {
            std::env::current_dir().context("cannot read the current directory")?;
            PathBuf::from(".")
        }
    };
    let mut opts = LoadOptions::new(working_dir);
    opts.files = args.files.clone();
    opts.project_name = args.project_name.clone();
    Ok(load::load(&opts))
}

fn check_cmd(loaded: Loaded, out: &OutputArgs) -> anyhow::Result<ExitCode> {
    let mut diagnostics = loaded.diagnostics.clone();
    diagnostics.extend(check::analyze(&loaded.mesh));
    let errors = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let warnings = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Warning)
        .count();
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    if out.json {
        let report = serde_json::json!({
            "project": loaded.mesh.project,
            "files": loaded.mesh.files,
            "errors": errors,
            "warnings": warnings,
            "diagnostics": diagnostics,
        });
        serde_json::to_writer_pretty(&mut w, &report)?;
        writeln!(w)?;
    } else {
        let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        for d in &diagnostics {
            writeln!(w, "{}", render(d, color))?;
        }
        let services = loaded.mesh.compose.as_ref().map_or(0, |c| c.services.len());
        writeln!(
            w,
            "{}: {} file(s), {} service(s), {} resource(s): {} error(s), {} warning(s)",
            if errors == 0 { "ok" } else { "failed" },
            loaded.mesh.files.len(),
            services,
            loaded.mesh.resources.len(),
            errors,
            warnings
        )?;
    }
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One diagnostic as text, coloured on a terminal.
pub fn render(d: &Diagnostic, color: bool) -> String {
    let (on, off) = match (color, d.severity) {
        (false, _) => ("", ""),
        (true, Severity::Error) => ("\x1b[1;31m", "\x1b[0m"),
        (true, Severity::Warning) => ("\x1b[1;33m", "\x1b[0m"),
        (true, Severity::Info) => ("\x1b[1;36m", "\x1b[0m"),
    };
    let mut s = format!("{}: {on}{}[{}]{off}: ", d.location, d.severity, d.code);
    if let Some(r) = &d.resource {
        s.push_str(r);
        s.push_str(": ");
    }
    if !d.path.is_empty() {
        s.push_str(&d.path);
        s.push_str(": ");
    }
    s.push_str(&d.message);
    if let Some(hint) = &d.hint {
        s.push_str("\n    hint: ");
        s.push_str(hint);
    }
    s
}

fn config_cmd(loaded: Loaded, out: &OutputArgs) -> anyhow::Result<ExitCode> {
    if loaded.has_errors() {
        let stderr = std::io::stderr();
        let mut e = stderr.lock();
        let color = stderr.is_terminal();
        for d in loaded
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
        {
            writeln!(e, "{}", render(d, color))?;
        }
        return Ok(ExitCode::from(1));
    }
    let model = meshapi::model::normalized(&loaded.mesh);
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    if out.json {
        serde_json::to_writer_pretty(&mut w, &model)?;
        writeln!(w)?;
    } else {
        w.write_all(meshapi::model::to_yaml(&model)?.as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}
