//! The command line: argument parsing and one function per subcommand. `main.rs` only calls
//! [`main`] (which parses and calls [`run`]); every command is reachable from tests without
//! spawning a process.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use meshapi::diag::Severity;
use meshmodel::check;
use meshmodel::load::Loaded;

pub use crate::project::ProjectArgs;

/// A service mesh for Docker and bare-VM hosts: mutual TLS, authorization, routing and
/// resilience from Istio-style YAML, without Kubernetes.
#[derive(Debug, Parser)]
// `bin_name`: usage and errors say `meshctl` whatever the executable is called (the e2e
// tests run it as `meshctl-e2e`).
#[command(
    name = "meshctl",
    bin_name = "meshctl",
    version,
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub project: ProjectArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// `-f/--file` given after a subcommand's name (see [`ProjectArgs`]).
#[derive(Debug, Clone, Default, Args)]
pub struct FileArgs {
    /// Compose file, Istio resource file or directory of them (repeatable); same as
    /// `meshctl -f PATH <command>`.
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub files: Vec<PathBuf>,
}

/// `meshctl ca ...`.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Replace the root CA of the running control plane: a new root signs every certificate
    /// from now on (cross-signed by the old one), every proxy, the CLI and the API take the
    /// bundle of both roots and renew at once, and after --overlap the old root is dropped.
    Rotate(crate::controlplane::commands::RotateArgs),
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate every file and analyse the mesh as a whole (like `istioctl analyze`).
    /// Exit 0 when there are no errors, 1 when there are, 2 on usage errors.
    Check {
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        file: FileArgs,
    },
    /// Print the merged, normalized model (like `docker compose config`).
    Config {
        #[command(flatten)]
        args: ConfigArgs,
        #[command(flatten)]
        file: FileArgs,
    },
    /// Run the control plane in the foreground: CA, proxy API, config push, live reload of
    /// the mesh files, meshdns records.
    Serve {
        #[command(flatten)]
        args: crate::controlplane::commands::ServeArgs,
        #[command(flatten)]
        file: FileArgs,
    },
    /// Show the running control plane: config version and ACK/NACK per proxy, the last
    /// reload and its errors, identities and certificate expiry.
    Status {
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        file: FileArgs,
    },
    /// Make the running control plane reload the files now; with --wait, wait for every
    /// connected proxy to ACK (exit 1 if one refuses or does not answer in time).
    Apply {
        #[command(flatten)]
        args: crate::controlplane::commands::ApplyArgs,
        #[command(flatten)]
        file: FileArgs,
    },
    /// The mesh CA: `rotate` replaces the root, with an overlap in which both are trusted.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
        #[command(flatten)]
        file: FileArgs,
    },
    /// Print the config the control plane compiles for one proxy.
    ProxyConfig {
        #[command(flatten)]
        args: crate::controlplane::commands::ProxyConfigArgs,
        #[command(flatten)]
        file: FileArgs,
    },
    /// Explain what the mesh does with one request: the route that matches and why, the
    /// subsets and endpoints, load balancer, timeout and retries, mTLS and the identity
    /// expected, and the authorization verdict with the policy and rule that decided.
    Explain {
        #[command(flatten)]
        args: crate::explain::ExplainArgs,
        #[command(flatten)]
        file: FileArgs,
    },
    /// Serve the web console on 127.0.0.1 (read-only): the live service graph, each
    /// service's endpoints, routes and split, the config and its last reload, explain.
    Dashboard {
        #[command(flatten)]
        args: crate::dashboard::DashboardArgs,
        #[command(flatten)]
        file: FileArgs,
    },
    /// Create or reconcile the mesh on Docker: network, control plane, meshdns, and per replica
    /// a sidecar that owns the network namespace plus the app joined to it.
    Up {
        #[command(flatten)]
        args: crate::docker::commands::UpArgs,
        #[command(flatten)]
        file: FileArgs,
    },
    /// Remove everything the project made on Docker (containers, network, the background
    /// control plane; volumes with -v) and nothing else.
    Down {
        #[command(flatten)]
        args: crate::docker::commands::DownArgs,
        #[command(flatten)]
        file: FileArgs,
    },
    /// List the project's containers: service, mesh service, version, state, health,
    /// identity and certificate expiry, published ports. Works by the project's labels, with
    /// broken files or none (`-p NAME`).
    Ps {
        #[command(flatten)]
        args: crate::docker::ps::PsArgs,
        #[command(flatten)]
        file: FileArgs,
    },
    /// Show the apps' logs (with --proxy, the sidecars' too). `-f` is `--follow` here, as in
    /// docker compose; give files before the subcommand (`meshctl -f a.yaml logs -f`) or
    /// with `--file`.
    Logs(crate::docker::logs::LogsArgs),
    /// Stop the project's containers without removing them (apps, then their sidecars);
    /// `start` starts them again. The control plane keeps running.
    Stop {
        #[command(flatten)]
        args: crate::docker::lifecycle::StopArgs,
        #[command(flatten)]
        file: FileArgs,
    },
    /// Start the project's stopped containers (meshdns, each sidecar until ready, the apps).
    Start {
        #[command(flatten)]
        args: crate::docker::lifecycle::StartArgs,
        #[command(flatten)]
        file: FileArgs,
    },
    /// Stop, then start the project's containers (or those of the named services).
    Restart {
        #[command(flatten)]
        args: crate::docker::lifecycle::RestartArgs,
        #[command(flatten)]
        file: FileArgs,
    },
    /// Run a command in a service's running app container, in its pod (its calls go through
    /// the sidecar); exits with the command's status.
    Exec {
        #[command(flatten)]
        args: crate::docker::exec::ExecArgs,
        #[command(flatten)]
        file: FileArgs,
    },
    /// Stream the project's container events and the mesh's (reloads, ACK/NACK, certificate
    /// renewals, outlier ejections) until interrupted; `--json` as compose.
    Events {
        #[command(flatten)]
        args: crate::docker::events::EventsArgs,
        #[command(flatten)]
        file: FileArgs,
    },
    /// The processes of each running container (docker compose's `top`; `meshctl top` is the
    /// busiest paths).
    Processes {
        #[command(flatten)]
        args: crate::docker::exec::ProcessesArgs,
        #[command(flatten)]
        file: FileArgs,
    },
    /// Build (or rebuild) every image `up` needs: compose `build:`, the sidecar runtime image,
    /// the workspace's demo images.
    Build {
        #[command(flatten)]
        args: crate::docker::commands::BuildArgs,
        #[command(flatten)]
        file: FileArgs,
    },
    /// List the projects on this Docker engine (from the containers' labels).
    Ls(crate::docker::lifecycle::LsArgs),
    /// Show meshctl's version.
    Version(VersionArgs),
    /// Print the shell completion script (bash, zsh, fish, elvish, powershell).
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages: meshctl.1 on stdout, or every page (meshctl-<command>.1) into
    /// --dir.
    Man {
        /// Directory to write every page into.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Print a Prometheus scrape config (or a file_sd target file) listing every proxy's
    /// metrics endpoint: the Docker sidecars, or with --host the proxies of `meshctl serve`.
    PrometheusConfig {
        #[command(flatten)]
        args: crate::observe::PrometheusConfigArgs,
        #[command(flatten)]
        file: FileArgs,
    },
    /// Per mesh service and version: success rate, requests per second, p50/p95/p99 latency
    /// and TCP connections over a window, read from the proxies (like `linkerd viz stat`).
    Stats {
        #[command(flatten)]
        args: crate::observe::stats::StatsArgs,
        #[command(flatten)]
        file: FileArgs,
    },
    /// The busiest paths, live, from the sidecars' access logs: source, destination, method,
    /// path, count, best, worst and last duration, success rate (access logs must be on).
    Top(crate::docker::top::TopArgs),
    /// Join tokens for other machines (`token create --node NAME [--ttl 1h]`).
    #[command(subcommand)]
    Token(crate::node::commands::TokenCommand),
    /// On another machine: join the mesh with a token from `meshctl token create`, run the
    /// proxies of the services placed on this node (`x-mesh: {node: NAME}`) until stopped.
    /// Without a token, rejoin with the node credential kept in `.mesh/node/`.
    Join(crate::node::commands::JoinArgs),
    /// On a joined node: leave the mesh (its certificates are revoked) and stop `meshctl join`.
    Leave,
    /// The joined nodes (`node ls`, `node rm NAME`).
    #[command(subcommand)]
    Node(crate::node::commands::NodeCommand),
    /// The background control plane of `up -d` (internal).
    #[command(name = "__control-plane", hide = true)]
    ControlPlaneDaemon(crate::docker::commands::DaemonArgs),
    /// The supervisor of one process pod (internal; `meshctl up` starts it).
    #[command(name = "__pod", hide = true)]
    Pod {
        /// The pod's spec file (`.mesh/pods/<name>.json`).
        spec: std::path::PathBuf,
    },
    /// The relay of an endpoint pod (internal; its supervisor starts it).
    #[command(name = "__forward", hide = true)]
    Forward {
        /// Where to accept (the pod namespace's loopback).
        listen: std::net::SocketAddr,
        /// The supervisor's Unix socket.
        socket: std::path::PathBuf,
    },
}

/// `meshctl config`: compose's flags.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// Print JSON (same as `--format json`).
    #[arg(long)]
    pub json: bool,
    /// `yaml` or `json`.
    #[arg(long, value_parser = ["yaml", "json"], default_value = "yaml")]
    pub format: String,
    /// Only the services' names, one per line.
    #[arg(long)]
    pub services: bool,
    /// Only validate: print nothing, exit 1 when there are errors.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// `meshctl version`.
#[derive(Debug, Clone, Args)]
pub struct VersionArgs {
    /// Only the version number.
    #[arg(long)]
    pub short: bool,
    /// `pretty` or `json`.
    #[arg(long, value_parser = ["pretty", "json"], default_value = "pretty")]
    pub format: String,
}

#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Print JSON for machines instead of text for people.
    #[arg(long)]
    pub json: bool,
}

impl Cli {
    /// The project flags with the subcommand's own `-f/--file` appended.
    pub fn project_args(&self) -> ProjectArgs {
        let mut project = self.project.clone();
        project.files.extend(self.command.files().iter().cloned());
        project
    }
}

impl Command {
    /// Files given after the subcommand's name.
    fn files(&self) -> &[PathBuf] {
        match self {
            Command::Check { file, .. }
            | Command::Config { file, .. }
            | Command::Serve { file, .. }
            | Command::Status { file, .. }
            | Command::Apply { file, .. }
            | Command::Ca { file, .. }
            | Command::ProxyConfig { file, .. }
            | Command::Explain { file, .. }
            | Command::Dashboard { file, .. }
            | Command::Up { file, .. }
            | Command::Down { file, .. }
            | Command::Stop { file, .. }
            | Command::Start { file, .. }
            | Command::Restart { file, .. }
            | Command::Build { file, .. }
            | Command::Exec { file, .. }
            | Command::Events { file, .. }
            | Command::Processes { file, .. }
            | Command::Ps { file, .. }
            | Command::PrometheusConfig { file, .. }
            | Command::Stats { file, .. } => &file.files,
            Command::Logs(args) => &args.files,
            Command::Ls(_)
            | Command::Version(_)
            | Command::Completion { .. }
            | Command::Man { .. }
            | Command::ControlPlaneDaemon(_)
            | Command::Token(_)
            | Command::Join(_)
            | Command::Leave
            | Command::Node(_)
            | Command::Pod { .. }
            | Command::Forward { .. } => &[],
            Command::Top(args) => &args.files,
        }
    }
}

/// The program: parses the process's arguments (a usage error exits 2, clap's way), runs
/// them, reports a failure with its causes (exit 1). A closed stdout (`meshctl ps | head -1`)
/// ends it quietly with 141, the status of a process SIGPIPE killed, as other tools do.
/// Every binary that is meshctl calls this and nothing else.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::term::init(cli.project.ansi, cli.project.progress);
    match run(cli) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::from(141),
        Err(e) => {
            eprintln!("meshctl: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// True when `e` comes from writing to a closed pipe.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    use crate::controlplane::commands;
    use crate::docker::commands as docker;
    use crate::docker::lifecycle;
    let project = cli.project_args();
    match cli.command {
        Command::Check { out, .. } => check_cmd(project.load()?, &out),
        Command::Config { args, .. } => config_cmd(project.load()?, &args),
        Command::Serve { args, .. } => commands::serve(&project, &args),
        Command::Status { out, .. } => commands::status(&project, out.json),
        Command::Apply { args, .. } => commands::apply(&project, &args),
        Command::Ca {
            command: CaCommand::Rotate(args),
            ..
        } => commands::ca_rotate(&project, &args),
        Command::ProxyConfig { args, .. } => commands::proxy_config(&project, &args),
        Command::Explain { args, .. } => crate::explain::explain_cmd(&project, &args),
        Command::Dashboard { args, .. } => crate::dashboard::dashboard(&project, &args),
        Command::Up { args, .. } => docker::up(&project, &args),
        Command::Down { args, .. } => docker::down(&project, &args),
        Command::Ps { args, .. } => crate::docker::ps::ps(&project, &args),
        Command::Logs(args) => crate::docker::logs::logs(&project, &args),
        Command::Stop { args, .. } => lifecycle::stop(&project, &args),
        Command::Start { args, .. } => lifecycle::start(&project, &args),
        Command::Restart { args, .. } => lifecycle::restart(&project, &args),
        Command::Ls(args) => lifecycle::ls(&args),
        Command::Events { args, .. } => crate::docker::events::events(&project, &args),
        Command::Exec { args, .. } => crate::docker::exec::exec(&project, &args),
        Command::Processes { args, .. } => crate::docker::exec::processes(&project, &args),
        Command::Build { args, .. } => docker::build(&project, &args),
        Command::Version(args) => version_cmd(&args),
        Command::Completion { shell } => {
            std::io::stdout()
                .lock()
                .write_all(&crate::shell::completion(shell))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => crate::shell::man(dir.as_deref()).map(|()| ExitCode::SUCCESS),
        Command::PrometheusConfig { args, .. } => {
            crate::observe::prometheus_config(&project, &args)
        }
        Command::Stats { args, .. } => crate::observe::stats::stats(&project, &args),
        Command::Top(args) => crate::docker::top::top(&project, &args),
        Command::ControlPlaneDaemon(args) => docker::control_plane_daemon(&project, &args),
        Command::Token(crate::node::commands::TokenCommand::Create(args)) => {
            crate::node::commands::token_create(&project, &args)
        }
        Command::Join(args) => crate::node::commands::join_cmd(&project, &args),
        Command::Leave => crate::node::commands::leave(&project),
        Command::Node(crate::node::commands::NodeCommand::Ls { json }) => {
            crate::node::commands::node_ls(&project, json)
        }
        Command::Node(crate::node::commands::NodeCommand::Rm { name }) => {
            crate::node::commands::node_rm(&project, &name)
        }
        Command::Pod { spec } => crate::process::shim::main(&spec),
        Command::Forward { listen, socket } => crate::process::shim::relay_main(listen, &socket),
    }
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
        let color = crate::term::color(std::io::stdout().is_terminal());
        for d in &diagnostics {
            writeln!(w, "{}", d.render(color))?;
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

fn config_cmd(loaded: Loaded, args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    if loaded.has_errors() {
        let stderr = std::io::stderr();
        let mut e = stderr.lock();
        let color = crate::term::color(stderr.is_terminal());
        for d in loaded
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
        {
            writeln!(e, "{}", d.render(color))?;
        }
        return Ok(ExitCode::from(1));
    }
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    if args.quiet {
        return Ok(ExitCode::SUCCESS);
    }
    if args.services {
        for name in loaded.mesh.compose.iter().flat_map(|c| c.services.keys()) {
            writeln!(w, "{name}")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let model = meshmodel::model::normalized(&loaded.mesh);
    if args.json || args.format == "json" {
        serde_json::to_writer_pretty(&mut w, &model)?;
        writeln!(w)?;
    } else {
        w.write_all(meshmodel::model::to_yaml(&model)?.as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn version_cmd(args: &VersionArgs) -> anyhow::Result<ExitCode> {
    let version = env!("CARGO_PKG_VERSION");
    let mut w = std::io::stdout().lock();
    if args.short {
        writeln!(w, "{version}")?;
    } else if args.format == "json" {
        let v = serde_json::json!({
            "version": version,
            "runtimeImage": crate::docker::image::runtime_image(),
        });
        writeln!(w, "{v}")?;
    } else {
        writeln!(w, "meshctl version {version}")?;
        writeln!(w, "sidecar image {}", crate::docker::image::runtime_image())?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("meshctl").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn files(cli: &Cli) -> Vec<String> {
        cli.project_args()
            .files
            .iter()
            .map(|p| p.display().to_string())
            .collect()
    }

    #[test]
    fn dash_f_is_a_file_everywhere_but_follow_after_logs() {
        // docker compose's habit: files before the subcommand, `logs -f` follows.
        let cli = parse(&["-f", "a.yaml", "logs", "-f", "--tail", "5"]);
        assert_eq!(files(&cli), ["a.yaml"]);
        assert!(matches!(&cli.command, Command::Logs(l) if l.follow && l.tail == "5"));
        let cli = parse(&["logs", "--file", "a.yaml", "--follow", "backend"]);
        assert_eq!(files(&cli), ["a.yaml"]);
        assert!(matches!(&cli.command, Command::Logs(l) if l.follow && l.services == ["backend"]));
        let cli = parse(&["logs"]);
        assert!(matches!(&cli.command, Command::Logs(l) if !l.follow));
        // After any other subcommand -f is still a file; both places add up, top-level first.
        let cli = parse(&["-f", "a.yaml", "up", "-d", "-f", "b.yaml", "--wait"]);
        assert_eq!(files(&cli), ["a.yaml", "b.yaml"]);
        assert!(matches!(&cli.command, Command::Up { args, .. } if args.detach && args.wait));
        let cli = parse(&["check", "-f", "x", "--json"]);
        assert_eq!(files(&cli), ["x"]);
        // -p and --project-directory stay global.
        let cli = parse(&["ps", "-p", "demo", "--project-directory", "d", "--json"]);
        assert_eq!(cli.project_args().project_name.as_deref(), Some("demo"));
        assert_eq!(
            cli.project_args().project_directory,
            Some(PathBuf::from("d"))
        );
    }
}
