//! Images: what is on the engine, compose `build:` through the API (tar context in memory),
//! and the `FROM scratch` images meshctl makes from static binaries: the runtime image
//! (meshproxy + meshdns) and the seed example's demo images.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bollard::query_parameters::BuildImageOptionsBuilder;
use futures_util::StreamExt;
use http_body_util::{Either, Full};

use super::engine::Engine;
use super::progress::Progress;
use super::{DockerError, LABEL_PROJECT, is_not_found, runtime};

/// The default sidecar/meshdns image: `MESHCTL_RUNTIME_IMAGE` when set (so two checkouts
/// with different binaries can share one engine without retagging each other's image), else
/// this meshctl's version.
pub fn runtime_image() -> String {
    std::env::var("MESHCTL_RUNTIME_IMAGE")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("meshctl/runtime:{}", env!("CARGO_PKG_VERSION")))
}

/// Label on images meshctl builds from static binaries: hash of the binaries inside.
const LABEL_CONTENT: &str = "io.meshctl.content-hash";

/// Images meshctl can make from workspace binaries when they are missing: image -> binary.
/// The seed example uses them so it runs on a machine with no registry.
pub fn workspace_image(image: &str) -> Option<&'static str> {
    match image {
        "meshctl-demo/frontend:latest" | "meshctl-demo/frontend" => Some("frontend"),
        "meshctl-demo/backend:latest" | "meshctl-demo/backend" => Some("backend"),
        _ => None,
    }
}

/// The image's ID, or `None` when the engine does not have it.
pub async fn image_id(engine: &Engine, name: &str) -> Result<Option<String>, DockerError> {
    match engine.docker.inspect_image(name).await {
        Ok(i) => Ok(i.id),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(DockerError::api(format!("inspecting image {name}"))(e)),
    }
}

async fn image_label(engine: &Engine, name: &str, key: &str) -> Option<String> {
    let i = engine.docker.inspect_image(name).await.ok()?;
    i.config?.labels?.get(key).cloned()
}

/// Makes sure the `FROM scratch` image `tag` holds the static binaries `bins` (first one is
/// the entrypoint); builds it when missing, or with `rebuild` when its binaries changed.
pub async fn ensure_static_image(
    engine: &Engine,
    tag: &str,
    bins: &[&str],
    rebuild: bool,
    progress: &Progress,
) -> Result<String, DockerError> {
    let existing = image_id(engine, tag).await?;
    if let (Some(id), false) = (&existing, rebuild) {
        return Ok(id.clone());
    }
    progress.line(tag, "finding static binaries");
    let names: Vec<String> = bins.iter().map(|b| b.to_string()).collect();
    let paths = tokio::task::spawn_blocking(move || {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        runtime::find(&names)
    })
    .await
    .map_err(|e| DockerError::Runtime(e.to_string()))??;
    let mut files = Vec::new();
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    for (name, path) in &paths {
        let bytes = std::fs::read(path).map_err(|source| DockerError::Io {
            path: path.clone(),
            source,
        })?;
        if !runtime::is_static(path) {
            return Err(DockerError::Runtime(format!(
                "{} is not statically linked; it cannot run in a FROM scratch image",
                path.display()
            )));
        }
        hash.update(name.as_bytes());
        hash.update(&bytes);
        files.push((name.clone(), bytes));
    }
    let content = hex(hash.finish().as_ref());
    if let Some(id) = &existing
        && image_label(engine, tag, LABEL_CONTENT).await.as_deref() == Some(content.as_str())
    {
        progress.line(tag, "up to date");
        return Ok(id.clone());
    }
    let entry = bins.first().copied().unwrap_or("meshproxy");
    let mut dockerfile = String::from("FROM scratch\n");
    for (name, _) in &files {
        dockerfile.push_str(&format!("COPY {name} /{name}\n"));
    }
    dockerfile.push_str(&format!(
        "LABEL {LABEL_CONTENT}=\"{content}\"\nENTRYPOINT [\"/{entry}\"]\n"
    ));
    files.push(("Dockerfile".to_string(), dockerfile.into_bytes()));
    let tar = tar_files(&files).map_err(|e| DockerError::Build {
        image: tag.to_string(),
        message: e.to_string(),
    })?;
    build(
        engine,
        tag,
        tar,
        "Dockerfile",
        &HashMap::new(),
        None,
        progress,
    )
    .await
}

/// Builds a compose `build:` section (context relative to `project_dir`) into `tag`.
pub async fn build_context(
    engine: &Engine,
    tag: &str,
    spec: &meshmodel::compose::Build,
    project_dir: &Path,
    progress: &Progress,
) -> Result<String, DockerError> {
    let context = project_dir.join(&spec.context);
    let ctx = context.clone();
    let tar = tokio::task::spawn_blocking(move || tar_dir(&ctx))
        .await
        .map_err(|e| DockerError::Runtime(e.to_string()))?
        .map_err(|source| DockerError::Io {
            path: context.clone(),
            source,
        })?;
    let args: HashMap<String, String> = spec
        .args
        .iter()
        .filter_map(|(k, v)| {
            v.clone()
                .or_else(|| std::env::var(k).ok())
                .map(|v| (k.clone(), v))
        })
        .collect();
    build(
        engine,
        tag,
        tar,
        spec.dockerfile.as_deref().unwrap_or("Dockerfile"),
        &args,
        spec.target.as_deref(),
        progress,
    )
    .await
}

async fn build(
    engine: &Engine,
    tag: &str,
    tar: Vec<u8>,
    dockerfile: &str,
    args: &HashMap<String, String>,
    target: Option<&str>,
    progress: &Progress,
) -> Result<String, DockerError> {
    progress.line(tag, "building");
    let mut opts = BuildImageOptionsBuilder::new()
        .dockerfile(dockerfile)
        .t(tag)
        .rm(true)
        .forcerm(true)
        .buildargs(args)
        .labels(&HashMap::from([(LABEL_PROJECT, "meshctl-built")]));
    if let Some(t) = target {
        opts = opts.target(t);
    }
    let mut stream = engine.docker.build_image(
        opts.build(),
        None,
        Some(Either::Left(Full::new(bytes::Bytes::from(tar)))),
    );
    let mut last = String::new();
    while let Some(msg) = stream.next().await {
        let info = msg.map_err(|e| DockerError::Build {
            image: tag.to_string(),
            message: e.to_string(),
        })?;
        if let Some(err) = info.error_detail.and_then(|d| d.message) {
            return Err(DockerError::Build {
                image: tag.to_string(),
                message: format!("{err}\n{last}"),
            });
        }
        if let Some(s) = info.stream {
            let s = s.trim();
            if !s.is_empty() {
                progress.detail(tag, s);
                last = s.to_string();
            }
        }
    }
    let id = image_id(engine, tag)
        .await?
        .ok_or_else(|| DockerError::Build {
            image: tag.to_string(),
            message: "the engine reported success but has no such image".into(),
        })?;
    progress.line(tag, "built");
    Ok(id)
}

fn tar_files(files: &[(String, Vec<u8>)]) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, bytes) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(if name == "Dockerfile" { 0o644 } else { 0o755 });
        h.set_cksum();
        b.append_data(&mut h, name, bytes.as_slice())?;
    }
    b.into_inner()
}

fn tar_dir(dir: &PathBuf) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(true);
    b.append_dir_all(".", dir)?;
    b.into_inner()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
