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
