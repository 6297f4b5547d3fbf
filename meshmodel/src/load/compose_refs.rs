//! Compose's references to other definitions: a service's `extends` (in the same file or
//! another) and the top-level `include`, resolved as the compose specification says. A
//! service extending another is the other overridden by what it writes itself (as a later
//! `-f` file overrides); an included file's services, networks, volumes, secrets and configs
//! join the project, and one defined on both sides is an error. Relative paths in another
//! file are relative to that file's directory (made absolute here). Every file read is
//! watched like the `-f` files, and its problems are placed in it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use meshapi::diag::{FieldError, Location};
use meshapi::yaml::{self, Limits};

use super::{Loaded, codes, field_diag, file_diag, service_of, type_compose};
use crate::compose::{ComposeFile, EnvLookup, Service};
use crate::model::Origin;

/// How deep `include` and `extends: {file}` may nest (a loop ends here with an error).
const MAX_DEPTH: usize = 8;

/// Resolves `c`'s `extends` and returns the compose files it includes (their own includes
/// resolved too), in order.
pub(super) fn resolve(
    c: &mut ComposeFile,
    origin: &Origin,
    env: &dyn EnvLookup,
    out: &mut Loaded,
    depth: usize,
) -> Vec<ComposeFile> {
    let names: Vec<String> = c.services.keys().cloned().collect();
    for name in names {
        extend(c, &name, origin, env, out, depth, &mut Vec::new());
    }
    let includes = std::mem::take(&mut c.include);
    let dir = parent(&origin.file);
    let mut found: Vec<ComposeFile> = Vec::new();
    for (i, inc) in includes.iter().enumerate() {
        let at = format!("include[{i}]");
        if !inc.env_file.is_empty() {
            error(
                out,
                origin,
                &format!("{at}.env_file"),
                "not supported by meshctl yet: include.env_file",
                "remove it: included files are interpolated with the project's environment and .env",
            );
        }
        if depth >= MAX_DEPTH {
            error(
                out,
                origin,
                &at,
                &format!("include nested more than {MAX_DEPTH} deep (a file including itself?)"),
                "remove the include that loops back",
            );
            continue;
        }
        let mut merged: Option<ComposeFile> = None;
        for p in &inc.path {
            let path = dir.join(p);
            let Some((mut other, other_origin)) = read_compose(&path, origin, &at, env, out) else {
                continue;
            };
            let nested = resolve(&mut other, &other_origin, env, out, depth + 1);
            let base = inc
                .project_directory
                .as_ref()
                .map(|d| dir.join(d))
                .unwrap_or_else(|| parent(&path));
            for mut n in std::iter::once(other).chain(nested) {
                // An included file's `name:` does not name the project.
                n.name = None;
                n.resolve_paths(&base, None);
                merged = Some(match merged {
                    Some(m) => crate::compose::merge(m, n),
                    None => n,
                });
            }
            out.mesh.compose_origins.push(other_origin);
        }
        let Some(merged) = merged else { continue };
        for clash in clashes(c, &merged).chain(found.iter().flat_map(|f| clashes(f, &merged))) {
            error(
                out,
                origin,
                &at,
                &format!("{clash} is defined both here and in the included file"),
                "rename one of them or remove the copy (compose refuses a conflicting include too)",
            );
        }
        found.push(merged);
    }
    found
}

/// Resolves one service's `extends` (depth-first, so a chain of them works), in place.
fn extend(
    c: &mut ComposeFile,
    name: &str,
    origin: &Origin,
    env: &dyn EnvLookup,
    out: &mut Loaded,
    depth: usize,
    stack: &mut Vec<String>,
) -> Option<Service> {
    let service = c.services.get(name)?.clone();
    let Some(ext) = service.extends.clone() else {
        return Some(service);
    };
    let at = format!("services.{name}.extends");
    let base = match &ext.file {
        None if stack.iter().any(|s| s == name) => {
            error(
                out,
                origin,
                &at,
                &format!("extends cycle: {} -> {name}", stack.join(" -> ")),
                "break the cycle: a service cannot extend itself, even through others",
            );
            None
        }
        None => {
            stack.push(name.to_string());
            let base = extend(c, &ext.service, origin, env, out, depth, stack);
            stack.pop();
            if base.is_none() {
                error(
                    out,
                    origin,
                    &at,
                    &format!("extends undefined service {:?}", ext.service),
                    "name a service of this file, or add `file:` naming the file it is in",
                );
            }
            base
        }
        Some(_) if depth >= MAX_DEPTH => {
            error(
                out,
                origin,
                &at,
                &format!("extends nested more than {MAX_DEPTH} files deep"),
                "remove the extends that loops back",
            );
            None
        }
        Some(file) => {
            let path = parent(&origin.file).join(file);
            let (mut other, other_origin) = read_compose(&path, origin, &at, env, out)?;
            // Its own extends and includes first, then its paths made absolute.
            let nested = resolve(&mut other, &other_origin, env, out, depth + 1);
            let other = nested.into_iter().fold(other, crate::compose::merge);
            let mut other = other;
            other.resolve_paths(&parent(&path), None);
            let base = other.services.remove(&ext.service);
            if base.is_none() {
                error(
                    out,
                    origin,
                    &at,
                    &format!("no service {:?} in {}", ext.service, path.display()),
                    "name a service defined in that file",
                );
            }
            base
        }
    };
    let mut own = service;
    own.extends = None;
    let merged = match base {
        Some(mut b) => {
            b.extends = None;
            crate::compose::merge_service(b, own)
        }
        None => own,
    };
    c.services.insert(name.to_string(), merged.clone());
    Some(merged)
}

/// The first compose document of another file, typed; its problems are reported in it, and
/// an unreadable file at `at` in the file that names it.
fn read_compose(
    path: &Path,
    from: &Origin,
    at: &str,
    env: &dyn EnvLookup,
    out: &mut Loaded,
) -> Option<(ComposeFile, Origin)> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            error(
                out,
                from,
                at,
                &format!("cannot read {}: {e}", path.display()),
                "give a path relative to this file's directory",
            );
            return None;
        }
    };
    if !out.mesh.files.iter().any(|f| f == path) {
        out.mesh.files.push(path.to_path_buf());
    }
    let docs = match yaml::parse(&text, Limits::default()) {
        Ok(d) => d,
        Err(e) => {
            let pos = e.pos();
            let mut d = file_diag(codes::YAML_SYNTAX, path, e.to_string());
            d.location.line = pos.line;
            d.location.column = pos.column;
            out.diagnostics.push(d);
            return None;
        }
    };
    let Some(doc) = docs.into_iter().next() else {
        error(
            out,
            from,
            at,
            &format!("{} is empty", path.display()),
            "name a compose file",
        );
        return None;
    };
    let origin = Origin {
        file: path.to_path_buf(),
        root: Arc::new(doc.root),
    };
    let c = type_compose(&origin, origin.root.to_value(), env, out)?;
    Some((c, origin))
}

/// Names defined in both `a` and `b` (`service "db"`, `network "back"`, ...).
fn clashes<'a>(a: &'a ComposeFile, b: &'a ComposeFile) -> impl Iterator<Item = String> + 'a {
    let both = |what: &'static str, x: Vec<&'a String>, y: Vec<&'a String>| {
        x.into_iter()
            .filter(move |k| y.contains(k))
            .map(move |k| format!("{what} {k:?}"))
    };
    both(
        "service",
        a.services.keys().collect(),
        b.services.keys().collect(),
    )
    .chain(both(
        "network",
        a.networks.keys().collect(),
        b.networks.keys().collect(),
    ))
    .chain(both(
        "volume",
        a.volumes.keys().collect(),
        b.volumes.keys().collect(),
    ))
    .chain(both(
        "secret",
        a.secrets.keys().collect(),
        b.secrets.keys().collect(),
    ))
    .chain(both(
        "config",
        a.configs.keys().collect(),
        b.configs.keys().collect(),
    ))
}

fn parent(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn error(out: &mut Loaded, origin: &Origin, path: &str, message: &str, hint: &str) {
    let e = FieldError::new(path, message).with_hint(hint);
    let location: Location = origin.locate(path);
    out.diagnostics
        .push(field_diag(&e, location, service_of(path)));
}
