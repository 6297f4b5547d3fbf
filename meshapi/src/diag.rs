//! Errors and findings a person can act on: where (file, line, column, field path), what, and
//! how to fix it.
//!
//! Model types never know which file they came from. Their `validate()` methods return
//! [`FieldError`]s carrying a field path (`http[0].retries.perTryTimeout`); the loader turns a
//! path into a file position and wraps it into a [`Diagnostic`].

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// A problem found in one field of one resource, before it is placed in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path from the resource root, with `[i]` for sequence items, e.g.
    /// `spec.http[0].retries.attempts`. Empty for the resource as a whole.
    pub path: String,
    /// What is wrong, in one sentence.
    pub message: String,
    /// How to fix it, when there is something better to say than the message.
    pub hint: Option<String>,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Prefixes the path, for a parent validating its children.
    pub fn under(mut self, prefix: &str) -> Self {
        self.path = join_path(prefix, &self.path);
        self
    }
}

/// Joins two field paths: `join_path("spec", "http[0]")` is `spec.http[0]`, and an index
/// segment attaches without a dot.
pub fn join_path(prefix: &str, rest: &str) -> String {
    match (prefix.is_empty(), rest.is_empty()) {
        (true, _) => rest.to_string(),
        (_, true) => prefix.to_string(),
        _ if rest.starts_with('[') => format!("{prefix}{rest}"),
        _ => format!("{prefix}.{rest}"),
    }
}

/// How bad a finding is. Errors stop `meshctl check` (exit 1) and are never pushed to proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// A position in a file, 1-based as editors show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// One finding: a load error or an analysis result, with a stable code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Stable code, e.g. `MESH0101`; documented in docs/check-codes.md.
    pub code: &'static str,
    pub severity: Severity,
    pub location: Location,
    /// `Kind/name` of the resource, or `service/name` for compose services, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// The field path inside the resource, when the finding is about one field.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}[{}]: ", self.location, self.severity, self.code)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl Diagnostic {
    /// The diagnostic as text (`file:line:column: severity[code]: resource: path: message`,
    /// then the hint), with ANSI colours when `color`.
    pub fn render(&self, color: bool) -> String {
        let (on, off) = match (color, self.severity) {
            (false, _) => ("", ""),
            (true, Severity::Error) => ("\x1b[1;31m", "\x1b[0m"),
            (true, Severity::Warning) => ("\x1b[1;33m", "\x1b[0m"),
            (true, Severity::Info) => ("\x1b[1;36m", "\x1b[0m"),
        };
        let mut s = format!(
            "{}: {on}{}[{}]{off}: ",
            self.location, self.severity, self.code
        );
        if let Some(r) = &self.resource {
            s.push_str(r);
            s.push_str(": ");
        }
        if !self.path.is_empty() {
            s.push_str(&self.path);
            s.push_str(": ");
        }
        s.push_str(&self.message);
        if let Some(hint) = &self.hint {
            s.push_str("\n    hint: ");
            s.push_str(hint);
        }
        s
    }
}
