//! The project the command line names: which files make the mesh, its name and directory (the
//! flags `docker compose` has, with the same meaning), and loading it.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use meshmodel::load::{self, LoadOptions, Loaded};

/// Which files make the mesh; the flags `docker compose` has, with the same meaning.
///
/// `-f/--file` is not global: as in docker compose it belongs before the subcommand
/// (`meshctl -f a.yaml up`), and `meshctl logs -f` means follow. Every subcommand but `logs`
/// also takes `-f/--file` after its name ([`FileArgs`]; `logs` takes `--file`), so
/// `meshctl up -f a.yaml` keeps working; both places add to one list, top-level first.
#[derive(Debug, Clone, Args)]
pub struct ProjectArgs {
    /// Compose file, Istio resource file or directory of them (repeatable). Default:
    /// compose.yaml (or compose.yml, docker-compose.yaml, docker-compose.yml), mesh.yaml and
    /// mesh/ in the project directory.
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub files: Vec<PathBuf>,
    /// Project name (default: the compose `name:`, else the directory name).
    #[arg(short = 'p', long = "project-name", global = true)]
    pub project_name: Option<String>,
    /// Project directory (default: the current directory).
    #[arg(long = "project-directory", global = true, value_name = "DIR")]
    pub project_directory: Option<PathBuf>,
}

impl ProjectArgs {
    /// Loads the project the flags name, with the process environment.
    pub fn load(&self) -> anyhow::Result<Loaded> {
        let working_dir = match &self.project_directory {
            Some(dir) => dir.clone(),
            None => {
                std::env::current_dir().context("cannot read the current directory")?;
                PathBuf::from(".")
            }
        };
        let mut opts = LoadOptions::new(working_dir);
        opts.files = self.files.clone();
        opts.project_name = self.project_name.clone();
        Ok(load::load(&opts))
    }
}
