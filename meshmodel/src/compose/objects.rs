//! Compose's file-backed objects and references between files: top-level `secrets` and
//! `configs` (served from files, mounted read-only into the app), a service's references to
//! them, `extends` and `include`. `extends` and `include` are resolved by the loader
//! (`crate::load`), which reads the other files; what is typed here is what a user writes.

use serde::{Deserialize, Serialize};

use super::syntax::{ShortForm, opt_bool, opt_text};

/// A top-level `secrets:` or `configs:` entry. meshctl serves `file:` (bind-mounted
/// read-only); the other sources are typed so they can be refused by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileObject {
    /// Path of the file, relative to the project directory (absolute after `include` or
    /// `extends` from another directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Content from an environment variable: refused (meshctl mounts files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Inline content (configs): refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Managed outside compose (Swarm): refused.
    #[serde(
        default,
        deserialize_with = "opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub external: Option<bool>,
    /// Name on the platform; ignored for files, as compose ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Swarm template driver: refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_driver: Option<String>,
}

/// A service's reference to a secret or config (`- name` or `{source, target, ...}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    /// The top-level secret or config.
    pub source: String,
    /// Where it is mounted: for a secret `/run/secrets/<target>` (a relative name) or the
    /// absolute path; for a config the absolute path. Default: the source's name
    /// (`/run/secrets/<source>`, `/<source>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Owner and mode: refused (a bind-mounted file keeps its own).
    #[serde(
        default,
        deserialize_with = "opt_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub uid: Option<String>,
    /// See `uid`.
    #[serde(
        default,
        deserialize_with = "opt_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub gid: Option<String>,
    /// See `uid`.
    #[serde(
        default,
        deserialize_with = "opt_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub mode: Option<String>,
}

impl ShortForm for FileRef {
    fn from_short(text: &str) -> Result<Vec<Self>, String> {
        Ok(vec![FileRef {
            source: text.to_string(),
            ..FileRef::default()
        }])
    }
}

/// Where a secret is mounted in the container.
pub fn secret_target(r: &FileRef) -> String {
    match r.target.as_deref() {
        Some(t) if t.starts_with('/') => t.to_string(),
        Some(t) => format!("/run/secrets/{t}"),
        None => format!("/run/secrets/{}", r.source),
    }
}

/// Where a config is mounted in the container.
pub fn config_target(r: &FileRef) -> String {
    match r.target.as_deref() {
        Some(t) if t.starts_with('/') => t.to_string(),
        Some(t) => format!("/{t}"),
        None => format!("/{}", r.source),
    }
}

/// A service's `extends` (`extends: base` or `{service: base, file: other.yaml}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extends {
    /// The service extended.
    pub service: String,
    /// The file it is in, relative to the file that names it. Default: the same file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

impl ShortForm for Extends {
    fn from_short(text: &str) -> Result<Vec<Self>, String> {
        Ok(vec![Extends {
            service: text.to_string(),
            file: None,
        }])
    }
}

/// A top-level `include` entry (`- path.yaml` or `{path, project_directory, env_file}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Include {
    /// The compose file(s) included, relative to the including file; several are merged as
    /// `-f a -f b` would.
    #[serde(deserialize_with = "super::syntax::string_list")]
    pub path: Vec<String>,
    /// Base of the included files' relative paths. Default: the first file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_directory: Option<String>,
    /// Env files for the included files' interpolation: refused (they use the project's).
    #[serde(
        default,
        deserialize_with = "super::syntax::string_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub env_file: Vec<String>,
}

impl ShortForm for Include {
    fn from_short(text: &str) -> Result<Vec<Self>, String> {
        Ok(vec![Include {
            path: vec![text.to_string()],
            ..Include::default()
        }])
    }
}
