//! Compose's project name rules: `-p` > `COMPOSE_PROJECT_NAME` > the file's `name:` > the
//! project directory's name. A name given explicitly must already be valid; the directory
//! name is normalized (lowercased, other characters dropped).

use std::path::Path;

use super::EnvLookup;

/// Why no project name could be decided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProjectNameError {
    /// An explicit name (`-p`, `COMPOSE_PROJECT_NAME`, `name:`) breaks compose's rules.
    #[error(
        "{name:?} from {source_name} is not a valid project name: use only lowercase letters, digits, '_' and '-', starting with a letter or digit{}",
        suggestion.as_ref().map(|s| format!(" (e.g. {s:?})")).unwrap_or_default()
    )]
    Invalid {
        /// The name as given.
        name: String,
        /// Where it came from (`-p`, `COMPOSE_PROJECT_NAME`, `name:`).
        source_name: &'static str,
        /// Its normalized form, when that is not empty.
        suggestion: Option<String>,
    },
    /// The directory name has no usable character.
    #[error("cannot derive a project name from directory {0:?}; pass -p or set name:")]
    FromDirectory(String),
}

/// Lowercases and keeps `[a-z0-9_-]`, dropping leading `_`/`-` (compose's normalization).
pub fn normalize_project_name(name: &str) -> String {
    let kept: String = name
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
        .collect();
    kept.trim_start_matches(['_', '-']).to_string()
}

/// The project name, by compose's precedence. `explicit` is `-p`; `file_name_field` is the
/// merged file's `name:`; `env` supplies `COMPOSE_PROJECT_NAME` (an empty value is ignored).
pub fn project_name(
    explicit: Option<&str>,
    file_name_field: Option<&str>,
    project_dir: &Path,
    env: &dyn EnvLookup,
) -> Result<String, ProjectNameError> {
    let from_env = env.get("COMPOSE_PROJECT_NAME").filter(|v| !v.is_empty());
    let given = explicit
        .map(|n| (n.to_string(), "-p"))
        .or_else(|| from_env.map(|n| (n, "COMPOSE_PROJECT_NAME")))
        .or_else(|| {
            file_name_field
                .filter(|n| !n.is_empty())
                .map(|n| (n.to_string(), "name:"))
        });
    if let Some((name, source_name)) = given {
        let normalized = normalize_project_name(&name);
        if normalized != name {
            return Err(ProjectNameError::Invalid {
                name,
                source_name,
                suggestion: Some(normalized).filter(|s| !s.is_empty()),
            });
        }
        return Ok(name);
    }
    let dir = project_dir
        .canonicalize()
        .unwrap_or_else(|_| project_dir.to_path_buf())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let normalized = normalize_project_name(&dir);
    if normalized.is_empty() {
        return Err(ProjectNameError::FromDirectory(dir));
    }
    Ok(normalized)
}

impl super::ComposeFile {
    /// Makes relative paths absolute against `project_dir`, as `docker compose config` prints
    /// them: `build.context` (unless a URL), bind-mount sources starting with `.` (and `~`
    /// against `home`, when given), `env_file` paths and the files of secrets and configs.
    pub fn resolve_paths(&mut self, project_dir: &Path, home: Option<&Path>) {
        let abs = |p: &str| -> String {
            if let (Some(rest), Some(home)) = (p.strip_prefix('~'), home)
                && (rest.is_empty() || rest.starts_with('/'))
            {
                return join(home, rest.trim_start_matches('/'));
            }
            if Path::new(p).is_absolute() || p.starts_with('~') {
                p.to_string()
            } else {
                join(project_dir, p)
            }
        };
        for object in self.secrets.values_mut().chain(self.configs.values_mut()) {
            if let Some(file) = &mut object.file {
                *file = abs(file);
            }
        }
        for service in self.services.values_mut() {
            if let Some(build) = &mut service.build
                && !build.context.contains("://")
                && !build.context.starts_with("git@")
            {
                build.context = abs(&build.context);
            }
            for v in &mut service.volumes {
                if v.kind == "bind"
                    && let Some(src) = &mut v.source
                {
                    *src = abs(src);
                }
            }
            for f in &mut service.env_file {
                f.path = abs(&f.path);
            }
        }
    }
}

/// `base/rel` with `.` and `..` segments folded, as text.
fn join(base: &Path, rel: &str) -> String {
    let mut out = base.to_path_buf();
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            p => out.push(p),
        }
    }
    out.to_string_lossy().into_owned()
}
