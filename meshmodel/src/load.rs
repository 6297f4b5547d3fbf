//! Loading a mesh from files: which files (compose's lookup rules plus `mesh.yaml` and `mesh/`),
//! what each document is (a compose file or an Istio resource), and every problem placed at
//! its file, line and column with the field path and a hint.
//!
//! Loading never stops at the first problem: every document that loads is kept, every one that
//! does not becomes a [`Diagnostic`], so `meshctl check` reports all of them in one run and the
//! control plane can refuse a broken edit while naming each broken line.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use meshapi::yaml::Value;

use crate::compose::{self, ComposeFile, EnvLookup};
use crate::istio::{IstioResource, KindLookup};
use crate::model::{Mesh, Origin, Resource, ResourceId};
use crate::suggest;

mod compose_refs;
use meshapi::diag::{Diagnostic, FieldError, Location, Severity, join_path};
use meshapi::yaml::{self, Limits, Pos};

/// Compose's own default file names, in its lookup order.
pub const COMPOSE_FILE_NAMES: &[&str] = &[
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];
/// The single policy file looked up beside the compose file.
pub const MESH_FILE_NAME: &str = "mesh.yaml";
/// The policy directory looked up beside the compose file (every YAML file under it).
pub const MESH_DIR_NAME: &str = "mesh";

/// Stable codes of load problems; analysis codes live in [`crate::check`].
pub mod codes {
    pub const YAML_SYNTAX: &str = "MESH0001";
    pub const REFUSED_INPUT: &str = "MESH0002";
    pub const UNKNOWN_FIELD: &str = "MESH0003";
    pub const INVALID_VALUE: &str = "MESH0004";
    pub const NOT_SUPPORTED: &str = "MESH0005";
    pub const UNSERVED_KIND: &str = "MESH0006";
    pub const UNKNOWN_DOCUMENT: &str = "MESH0007";
    pub const UNREADABLE: &str = "MESH0008";
    pub const DUPLICATE_RESOURCE: &str = "MESH0009";
    pub const NO_FILES: &str = "MESH0010";
    pub const INTERPOLATION: &str = "MESH0011";
}

/// What to load and how.
pub struct LoadOptions {
    /// `-f` paths: compose files, YAML files of Istio resources, or directories of them. Empty:
    /// compose's default names plus `mesh.yaml` and `mesh/` in `working_dir`.
    pub files: Vec<PathBuf>,
    /// Where default files are looked up. Default: the current directory.
    pub working_dir: PathBuf,
    /// `-p`: the project name, overriding `COMPOSE_PROJECT_NAME` and the compose `name:`.
    pub project_name: Option<String>,
    /// The environment for interpolation; the project's `.env` file (or the `--env-file`
    /// files) is layered under it.
    pub env: Box<dyn EnvLookup>,
    /// `--profile`: the active profiles. Empty: `COMPOSE_PROFILES` (comma-separated, from the
    /// environment or the `.env` file), as compose does. Services whose `profiles` name none
    /// of them are left out of the mesh.
    pub profiles: Vec<String>,
    /// Services named on the command line (`up SERVICE...`): as in compose v2, their
    /// profiles are added to the active ones.
    pub targets: Vec<String>,
    /// `--env-file`: read these instead of the project directory's `.env` (later files win).
    pub env_files: Vec<PathBuf>,
    /// The ports each service's image EXPOSEs (compose name -> ports), read from the engine
    /// by `meshctl up`: a mesh service that declares no port (`ports`, `expose`,
    /// `x-mesh.ports`) serves these, as docker compose's containers do. Default none.
    pub image_ports: BTreeMap<String, Vec<u16>>,
}

impl fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadOptions")
            .field("files", &self.files)
            .field("working_dir", &self.working_dir)
            .field("project_name", &self.project_name)
            .field("profiles", &self.profiles)
            .field("targets", &self.targets)
            .field("env_files", &self.env_files)
            .field("image_ports", &self.image_ports)
            .finish_non_exhaustive()
    }
}

impl LoadOptions {
    /// Options for `working_dir` with the process environment.
    pub fn new(working_dir: impl Into<PathBuf>) -> Self {
        LoadOptions {
            files: Vec::new(),
            working_dir: working_dir.into(),
            project_name: None,
            env: Box::new(compose::ProcessEnv),
            profiles: Vec::new(),
            targets: Vec::new(),
            env_files: Vec::new(),
            image_ports: BTreeMap::new(),
        }
    }
}

/// The mesh and every problem found while loading it.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub mesh: Mesh,
    pub diagnostics: Vec<Diagnostic>,
}

impl Loaded {
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }
}

/// Loads the mesh described by `opts`. Never fails as a whole: problems are diagnostics.
pub fn load(opts: &LoadOptions) -> Loaded {
    let mut out = Loaded::default();
    let inputs = resolve_inputs(opts, &mut out);
    let project_dir = inputs
        .compose_dir
        .clone()
        .unwrap_or_else(|| opts.working_dir.clone());
    let dotenv = if opts.env_files.is_empty() {
        read_dotenv(&project_dir.join(".env"), false, &mut out.diagnostics)
    } else {
        let mut all = BTreeMap::new();
        for f in &opts.env_files {
            all.extend(read_dotenv(f, true, &mut out.diagnostics));
        }
        all
    };
    let env = compose::Layered {
        over: EnvRef(opts.env.as_ref()),
        under: dotenv,
    };

    let mut composes = Vec::new();
    let mut seen: HashMap<ResourceId, Location> = HashMap::new();
    for file in &inputs.files {
        let max = Limits::default().max_bytes;
        if let Ok(meta) = std::fs::metadata(file)
            && meta.len() > max as u64
        {
            let message = format!(
                "refused: file is {} bytes, more than the {max} allowed",
                meta.len()
            );
            out.diagnostics
                .push(file_diag(codes::REFUSED_INPUT, file, message));
            continue;
        }
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                out.diagnostics.push(file_diag(
                    codes::UNREADABLE,
                    file,
                    format!("cannot read: {e}"),
                ));
                continue;
            }
        };
        out.mesh.files.push(file.clone());
        load_text(file, &text, &env, &mut composes, &mut seen, &mut out);
    }

    let mut merged = composes.into_iter().reduce(compose::merge);
    if let Some(compose) = &mut merged {
        let mut active = active_profiles(opts, &env);
        // A service targeted by the command enables its profiles (the compose spec: "its
        // profile is added to the set of active profiles").
        for target in &opts.targets {
            if let Some(s) = compose.services.get(target) {
                active.extend(s.profiles.iter().cloned());
            }
        }
        apply_profiles(compose, &active, &mut out);
        apply_image_ports(compose, &opts.image_ports);
    }
    let name_field = merged.as_ref().and_then(|c| c.name.clone());
    match compose::project_name(
        opts.project_name.as_deref(),
        name_field.as_deref(),
        &project_dir,
        &env,
    ) {
        Ok(name) => out.mesh.project = name,
        Err(e) => out.diagnostics.push(file_diag(
            codes::INVALID_VALUE,
            inputs
                .files
                .first()
                .map(PathBuf::as_path)
                .unwrap_or(&project_dir),
            e.to_string(),
        )),
    }
    if let Some(compose) = &merged {
        report_compose(compose, &mut out);
    }
    out.mesh.compose = merged;
    out.mesh.project_dir = project_dir;
    out.mesh.dirs = inputs.dirs;
    out.diagnostics.sort_by(|a, b| {
        (&a.location.file, a.location.line, a.location.column).cmp(&(
            &b.location.file,
            b.location.line,
            b.location.column,
        ))
    });
    out
}

/// Loads one file's text into `out`.
fn load_text(
    file: &Path,
    text: &str,
    env: &dyn EnvLookup,
    composes: &mut Vec<ComposeFile>,
    seen: &mut HashMap<ResourceId, Location>,
    out: &mut Loaded,
) {
    let docs = match yaml::parse(text, Limits::default()) {
        Ok(d) => d,
        Err(e) => {
            let code = match e {
                yaml::YamlError::Syntax { .. } => codes::YAML_SYNTAX,
                yaml::YamlError::Limit { .. } => codes::REFUSED_INPUT,
            };
            let Pos { line, column } = e.pos();
            out.diagnostics.push(Diagnostic {
                code,
                severity: Severity::Error,
                location: Location {
                    file: file.to_path_buf(),
                    line,
                    column,
                },
                resource: None,
                path: String::new(),
                message: e.to_string(),
                hint: e.hint().map(str::to_string),
            });
            return;
        }
    };
    for doc in docs {
        let origin = Origin {
            file: file.to_path_buf(),
            root: Arc::new(doc.root),
        };
        load_document(origin, env, composes, seen, out);
    }
}

/// Loads a single text as if it were the only file of a project, with an empty environment
/// (`check::check_text` adds the analysis).
pub fn load_single_text(file_name: &str, text: &str) -> Loaded {
    let file = PathBuf::from(file_name);
    let env = BTreeMap::<String, String>::new();
    let mut out = Loaded::default();
    let mut composes = Vec::new();
    let mut seen = HashMap::new();
    load_text(&file, text, &env, &mut composes, &mut seen, &mut out);
    let merged = composes.into_iter().reduce(compose::merge);
    if let Some(compose) = &merged {
        report_compose(compose, &mut out);
    }
    out.mesh.compose = merged;
    out
}

/// The merged compose model's validation errors and warnings, each placed in the last compose
/// document that has the field.
fn report_compose(compose: &ComposeFile, out: &mut Loaded) {
    let errors = compose.validate().into_iter().map(|e| (e, Severity::Error));
    let warnings = compose
        .warnings()
        .into_iter()
        .map(|e| (e, Severity::Warning));
    for (e, severity) in errors.chain(warnings) {
        let origins = &out.mesh.compose_origins;
        let location = origins
            .last()
            .map(|o| locate_compose(origins, &e.path).unwrap_or_else(|| o.locate(&e.path)));
        if let Some(location) = location {
            let mut d = field_diag(&e, location, service_of(&e.path));
            d.severity = severity;
            out.diagnostics.push(d);
        }
    }
}

/// `service/web` for a path under `services.web`.
fn service_of(path: &str) -> Option<String> {
    let rest = path.strip_prefix("services.")?;
    let name = rest.split(['.', '[']).next()?;
    Some(format!("service/{name}"))
}

/// Places a compose path in the last compose document that has it.
fn locate_compose(origins: &[Origin], path: &str) -> Option<Location> {
    origins
        .iter()
        .rev()
        .find(|o| o.root.locate(path) != o.root.pos)
        .map(|o| o.locate(path))
}

struct EnvRef<'a>(&'a dyn EnvLookup);

impl EnvLookup for EnvRef<'_> {
    fn get(&self, name: &str) -> Option<String> {
        self.0.get(name)
    }
}

fn load_document(
    origin: Origin,
    env: &dyn EnvLookup,
    composes: &mut Vec<ComposeFile>,
    seen: &mut HashMap<ResourceId, Location>,
    out: &mut Loaded,
) {
    let value = origin.root.to_value();
    let Value::Mapping(map) = &value else {
        out.diagnostics.push(doc_diag(
            &origin,
            codes::UNKNOWN_DOCUMENT,
            "a document must be a mapping: a compose file or an Istio resource".into(),
        ));
        return;
    };
    let api_version = map
        .get("apiVersion")
        .and_then(Value::as_str)
        .map(str::to_string);
    let kind = map.get("kind").and_then(Value::as_str).map(str::to_string);
    match (api_version, kind) {
        (Some(api_version), Some(kind)) => {
            load_resource(origin, &api_version, &kind, value, seen, out)
        }
        (None, None)
            if map.contains_key("services")
                || map.keys().any(|k| {
                    k.as_str()
                        .is_some_and(|k| k.starts_with("x-") || k == "name")
                }) =>
        {
            if let Some(mut c) = type_compose(&origin, value, env, out) {
                let includes = compose_refs::resolve(&mut c, &origin, env, out, 0);
                composes.push(c);
                out.mesh.compose_origins.push(origin);
                composes.extend(includes);
            }
        }
        (api, kind) => {
            let message = match (api, kind) {
                (Some(_), None) => "the document has `apiVersion` but no `kind`".to_string(),
                (None, Some(k)) => format!("the document has `kind: {k}` but no `apiVersion`"),
                _ => "this document is neither a compose file (no `services:`) nor a Kubernetes-style resource (no `apiVersion`/`kind`)".to_string(),
            };
            out.diagnostics
                .push(doc_diag(&origin, codes::UNKNOWN_DOCUMENT, message));
        }
    }
}

/// Interpolates and types one compose document, its problems reported at their places.
fn type_compose(
    origin: &Origin,
    mut value: Value,
    env: &dyn EnvLookup,
    out: &mut Loaded,
) -> Option<ComposeFile> {
    let found = compose::interpolate(&mut value, env);
    for e in &found.errors {
        let mut d = field_diag(e, origin.locate(&e.path), None);
        d.code = codes::INTERPOLATION;
        out.diagnostics.push(d);
    }
    for e in &found.warnings {
        let mut d = field_diag(e, origin.locate(&e.path), None);
        d.code = codes::INTERPOLATION;
        d.severity = Severity::Warning;
        out.diagnostics.push(d);
    }
    if !found.errors.is_empty() {
        return None;
    }
    let (file, errors) = compose::from_value_all(value);
    for e in &errors {
        out.diagnostics
            .push(serde_diag(e, origin, service_of(&e.path)));
    }
    file
}

fn load_resource(
    origin: Origin,
    api_version: &str,
    kind: &str,
    value: Value,
    seen: &mut HashMap<ResourceId, Location>,
    out: &mut Loaded,
) {
    let meta = value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or(crate::model::DEFAULT_NAMESPACE)
        .to_string();
    let label = format!(
        "{kind}/{}",
        if name.is_empty() { "<unnamed>" } else { &name }
    );
    let static_kind = match crate::istio::kind_of(api_version, kind) {
        KindLookup::Served(k) => k.name(),
        other => {
            let message = other.message().unwrap_or("not served").to_string();
            let mut d = doc_diag(&origin, codes::UNSERVED_KIND, message);
            d.resource = Some(label);
            d.location = origin.locate("kind");
            out.diagnostics.push(d);
            return;
        }
    };
    if name.is_empty() {
        let mut d = doc_diag(
            &origin,
            codes::INVALID_VALUE,
            "`metadata.name` is required".into(),
        );
        d.resource = Some(label.clone());
        d.path = "metadata.name".into();
        d.location = origin.locate("metadata");
        out.diagnostics.push(d);
        return;
    }
    let resource = match IstioResource::from_value(api_version, kind, value) {
        Ok(r) => r,
        Err(e) => {
            out.diagnostics.push(serde_diag(&e, &origin, Some(label)));
            return;
        }
    };
    let errors = resource.validate();
    let failed = !errors.is_empty();
    for e in errors {
        out.diagnostics
            .push(field_diag(&e, origin.locate(&e.path), Some(label.clone())));
    }
    if failed {
        return;
    }
    let id = ResourceId {
        kind: static_kind,
        namespace,
        name,
    };
    let here = origin.locate("metadata.name");
    if let Some(first) = seen.get(&id) {
        out.diagnostics.push(Diagnostic {
            code: codes::DUPLICATE_RESOURCE,
            severity: Severity::Error,
            location: here,
            resource: Some(label),
            path: "metadata.name".into(),
            message: format!("{} is defined twice; the first is at {first}", id),
            hint: Some("rename one of them or delete the copy".into()),
        });
        return;
    }
    seen.insert(id.clone(), here);
    out.mesh.resources.push(Resource {
        id,
        resource,
        origin,
    });
}

/// A diagnostic for a typed-deserialization error: unknown fields get advice, unsupported
/// fields their own code.
fn serde_diag(e: &FieldError, origin: &Origin, resource: Option<String>) -> Diagnostic {
    if let Some(unknown) = suggest::parse_unknown_field(&e.message) {
        // serde_path_to_error's path already ends with the unknown key.
        let parent = e
            .path
            .strip_suffix(unknown.name.as_str())
            .map(|p| p.trim_end_matches('.'))
            .unwrap_or(&e.path);
        let field_path = join_path(parent, &unknown.name);
        let hint = suggest::advise(&unknown, parent);
        return Diagnostic {
            code: codes::UNKNOWN_FIELD,
            severity: Severity::Error,
            location: origin.locate(&field_path),
            resource,
            path: field_path,
            message: format!("unknown field `{}`", unknown.name),
            hint,
        };
    }
    field_diag(e, origin.locate(&e.path), resource)
}

fn field_diag(e: &FieldError, location: Location, resource: Option<String>) -> Diagnostic {
    let code = if e.message.starts_with("not supported by meshctl") {
        codes::NOT_SUPPORTED
    } else {
        codes::INVALID_VALUE
    };
    Diagnostic {
        code,
        severity: Severity::Error,
        location,
        resource,
        path: e.path.clone(),
        message: e.message.clone(),
        hint: e.hint.clone(),
    }
}

fn doc_diag(origin: &Origin, code: &'static str, message: String) -> Diagnostic {
    Diagnostic {
        code,
        severity: Severity::Error,
        location: origin.locate(""),
        resource: None,
        path: String::new(),
        message,
        hint: None,
    }
}

fn file_diag(code: &'static str, file: &Path, message: String) -> Diagnostic {
    Diagnostic {
        code,
        severity: Severity::Error,
        location: Location {
            file: file.to_path_buf(),
            line: 1,
            column: 1,
        },
        resource: None,
        path: String::new(),
        message,
        hint: None,
    }
}

struct Inputs {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    /// The directory of the first compose file, compose's project directory.
    compose_dir: Option<PathBuf>,
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

fn resolve_inputs(opts: &LoadOptions, out: &mut Loaded) -> Inputs {
    let mut inputs = Inputs {
        files: Vec::new(),
        dirs: Vec::new(),
        compose_dir: None,
    };
    let add_dir = |dir: &Path, inputs: &mut Inputs, out: &mut Loaded| {
        let mut found = Vec::new();
        collect_yaml(dir, &mut found, &mut inputs.dirs, 0);
        if found.is_empty() {
            let mut d = file_diag(
                codes::NO_FILES,
                dir,
                "no YAML files in this directory".into(),
            );
            d.severity = Severity::Warning;
            out.diagnostics.push(d);
        }
        inputs.files.extend(found);
    };
    if opts.files.is_empty() {
        let dir = &opts.working_dir;
        let under = |name: &str| {
            if dir.as_os_str() == "." {
                PathBuf::from(name)
            } else {
                dir.join(name)
            }
        };
        if let Some(compose) = COMPOSE_FILE_NAMES
            .iter()
            .map(|n| under(n))
            .find(|p| p.is_file())
        {
            inputs.compose_dir = Some(dir.clone());
            inputs.files.push(compose);
        }
        let mesh_file = under(MESH_FILE_NAME);
        if mesh_file.is_file() {
            inputs.files.push(mesh_file);
        }
        let mesh_dir = under(MESH_DIR_NAME);
        if mesh_dir.is_dir() {
            add_dir(&mesh_dir, &mut inputs, out);
        }
        if inputs.files.is_empty() {
            out.diagnostics.push(file_diag(
                codes::NO_FILES,
                dir,
                format!("no configuration file provided: none of {} found, nor {MESH_FILE_NAME} or {MESH_DIR_NAME}/", COMPOSE_FILE_NAMES.join(", ")),
            ));
        }
        return inputs;
    }
    for path in &opts.files {
        // As compose does, `-f` paths are relative to the current directory, and kept as the
        // user wrote them so messages show them the same way.
        let path = path.clone();
        if path.is_dir() {
            if inputs.compose_dir.is_none()
                && COMPOSE_FILE_NAMES.iter().any(|n| path.join(n).is_file())
            {
                inputs.compose_dir = Some(path.clone());
            }
            add_dir(&path, &mut inputs, out);
        } else if path.exists() {
            if inputs.compose_dir.is_none() && looks_like_compose(&path) {
                inputs.compose_dir = path.parent().map(Path::to_path_buf);
            }
            inputs.files.push(path);
        } else {
            // `exists()` is false for a dangling link or a link loop too: say which, from the
            // error the file system gives (ELOOP: "Too many levels of symbolic links").
            let why = match std::fs::metadata(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => e.to_string(),
                _ if std::fs::symlink_metadata(&path).is_ok() => {
                    "a symbolic link to a file that does not exist".to_string()
                }
                _ => "no such file or directory".to_string(),
            };
            out.diagnostics
                .push(file_diag(codes::UNREADABLE, &path, why));
        }
    }
    inputs
}

fn looks_like_compose(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    COMPOSE_FILE_NAMES.contains(&name)
        || name.contains("compose")
        || std::fs::read_to_string(path)
            .is_ok_and(|t| t.lines().any(|l| l.starts_with("services:")))
}

/// Every YAML file under `dir`, sorted so the load order is stable; hidden entries skipped.
fn collect_yaml(dir: &Path, files: &mut Vec<PathBuf>, dirs: &mut Vec<PathBuf>, depth: usize) {
    dirs.push(dir.to_path_buf());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'))
        {
            continue;
        }
        if path.is_dir() && depth < 8 {
            collect_yaml(&path, files, dirs, depth + 1);
        } else if path.is_file() && is_yaml(&path) {
            files.push(path);
        }
    }
}

/// An env file as compose reads `.env`: a missing project `.env` is fine, a missing
/// `--env-file` (`required`) is an error, as in compose.
fn read_dotenv(
    path: &Path,
    required: bool,
    diagnostics: &mut Vec<Diagnostic>,
) -> BTreeMap<String, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if required => {
            let mut d = file_diag(codes::UNREADABLE, path, format!("--env-file: {e}"));
            d.hint = Some(
                "give the path of an existing file (relative to the current directory)".into(),
            );
            diagnostics.push(d);
            return BTreeMap::new();
        }
        Err(_) => return BTreeMap::new(),
    };
    match compose::parse_env_file(&text) {
        Ok(entries) => entries
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect(),
        Err(e) => {
            let mut d = file_diag(codes::INVALID_VALUE, path, e.to_string());
            d.location.line = e.line;
            diagnostics.push(d);
            BTreeMap::new()
        }
    }
}

/// A mesh service that declares no port serves the ports its image EXPOSEs (as `expose:`).
fn apply_image_ports(compose: &mut ComposeFile, image_ports: &BTreeMap<String, Vec<u16>>) {
    for (name, ports) in image_ports {
        if let Some(s) = compose.services.get_mut(name)
            && s.meshed()
            && s.ports_with_protocol().is_empty()
        {
            s.expose = ports.iter().map(u16::to_string).collect();
        }
    }
}

/// `--profile`, else `COMPOSE_PROFILES` (comma-separated; the environment over `.env`).
fn active_profiles(opts: &LoadOptions, env: &dyn EnvLookup) -> Vec<String> {
    if !opts.profiles.is_empty() {
        return opts.profiles.clone();
    }
    env.get("COMPOSE_PROFILES")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect()
}

/// Leaves out the services no active profile enables, as compose does: they are not created,
/// not compiled and not shown by `config`. An enabled service that requires one of them is
/// an error naming the profile to activate (compose refuses the same).
fn apply_profiles(compose: &mut ComposeFile, active: &[String], out: &mut Loaded) {
    let active: Vec<&str> = active.iter().map(String::as_str).collect();
    let enabled: std::collections::BTreeSet<String> = compose
        .enabled_services(&active)
        .into_iter()
        .map(String::from)
        .collect();
    let disabled: BTreeMap<String, Vec<String>> = compose
        .services
        .iter()
        .filter(|(name, _)| !enabled.contains(*name))
        .map(|(name, s)| (name.clone(), s.profiles.clone()))
        .collect();
    if disabled.is_empty() {
        return;
    }
    compose.services.retain(|name, _| enabled.contains(name));
    for (name, service) in &mut compose.services {
        service.depends_on.retain(|dep, d| {
            let Some(profiles) = disabled.get(dep) else {
                return true;
            };
            if d.required {
                let path = format!("services.{name}.depends_on.{dep}");
                let origins = &out.mesh.compose_origins;
                if let Some(location) = locate_compose(origins, &path) {
                    let e = FieldError::new(
                        path.clone(),
                        format!(
                            "depends on service {dep:?}, which no active profile enables (its profiles: {})",
                            profiles.join(", ")
                        ),
                    );
                    let mut diag = field_diag(&e, location, service_of(&path));
                    diag.hint = Some(format!(
                        "activate one with `--profile {}` or COMPOSE_PROFILES, or add `required: false` to the dependency",
                        profiles.first().map_or("NAME", String::as_str)
                    ));
                    out.diagnostics.push(diag);
                }
            }
            false
        });
    }
}
