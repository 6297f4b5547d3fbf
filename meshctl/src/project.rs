//! The project the command line names: which files make the mesh, its name and directory (the
//! flags `docker compose` has, with the same meaning), and loading it.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use meshmodel::load::{self, Loaded};

use crate::controlplane::ProjectSpec;
use crate::term::{Ansi, ProgressMode};

/// Which files make the mesh; the flags `docker compose` has, with the same meaning.
///
/// `-f/--file` is not global: as in docker compose it belongs before the subcommand
/// (`meshctl -f a.yaml up`), and `meshctl logs -f` means follow. Every subcommand but `logs`
/// also takes `-f/--file` after its name ([`FileArgs`]; `logs` takes `--file`), so
/// `meshctl up -f a.yaml` keeps working; both places add to one list, top-level first.
///
/// [`FileArgs`]: crate::cli::FileArgs
#[derive(Debug, Clone, Args)]
pub struct ProjectArgs {
    /// Compose file, Istio resource file or directory of them (repeatable). Default:
    /// COMPOSE_FILE (`:`-separated), else compose.yaml (or compose.yml, docker-compose.yaml,
    /// docker-compose.yml), mesh.yaml and mesh/ in the project directory.
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub files: Vec<PathBuf>,
    /// Project name (default: COMPOSE_PROJECT_NAME, else the compose `name:`, else the
    /// directory name).
    #[arg(short = 'p', long = "project-name", global = true)]
    pub project_name: Option<String>,
    /// Project directory (default: the current directory).
    #[arg(long = "project-directory", global = true, value_name = "DIR")]
    pub project_directory: Option<PathBuf>,
    /// Activate a compose profile (repeatable; default: COMPOSE_PROFILES, comma-separated).
    #[arg(long = "profile", global = true, value_name = "NAME")]
    pub profiles: Vec<String>,
    /// Read variables from this file instead of the project directory's `.env` (repeatable).
    #[arg(long = "env-file", global = true, value_name = "PATH")]
    pub env_files: Vec<PathBuf>,
    /// Services `up SERVICE...` named, whose profiles are active (internal: how `up -d`
    /// tells its background control plane).
    #[arg(
        long = "target-service",
        global = true,
        hide = true,
        value_name = "SERVICE"
    )]
    pub targets: Vec<String>,
    /// Escape codes (colour, live progress): auto (terminals without NO_COLOR), never, always.
    #[arg(long, global = true, value_enum, default_value_t = Ansi::Auto)]
    pub ansi: Ansi,
    /// Progress display on stderr: auto, tty, plain or quiet.
    #[arg(long, global = true, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

impl ProjectArgs {
    /// The files, name and directory these flags name. Without `-f`, `COMPOSE_FILE` (paths
    /// separated by `COMPOSE_PATH_SEPARATOR`, default `:`) as compose reads it.
    pub fn spec(&self) -> ProjectSpec {
        let mut files = self.files.clone();
        if files.is_empty()
            && let Some(list) = std::env::var_os("COMPOSE_FILE")
        {
            let sep = std::env::var("COMPOSE_PATH_SEPARATOR").unwrap_or_else(|_| ":".into());
            files = list
                .to_string_lossy()
                .split(sep.as_str())
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect();
        }
        ProjectSpec {
            files,
            working_dir: self
                .project_directory
                .clone()
                .unwrap_or_else(|| PathBuf::from(".")),
            project_name: self.project_name.clone(),
            profiles: self.profiles.clone(),
            targets: self.targets.clone(),
            env_files: self.env_files.clone(),
            image_ports: Default::default(),
        }
    }

    /// Loads the project the flags name, with the process environment.
    pub fn load(&self) -> anyhow::Result<Loaded> {
        if self.project_directory.is_none() {
            std::env::current_dir().context("cannot read the current directory")?;
        }
        Ok(load::load(&self.spec().load_options()))
    }
}
