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

/// The TCP ports image `id` EXPOSEs (its `ExposedPorts`), sorted.
pub async fn exposed_ports(engine: &Engine, id: &str) -> Result<Vec<u16>, DockerError> {
    let i = engine
        .docker
        .inspect_image(id)
        .await
        .map_err(DockerError::api(format!("inspecting image {id}")))?;
    let mut ports: Vec<u16> = i
        .config
        .and_then(|c| c.exposed_ports)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| match p.split_once('/') {
            Some((n, "tcp")) => n.parse().ok(),
            Some(_) => None,
            None => p.parse().ok(),
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
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
    let dockerfile = spec.dockerfile.as_deref().unwrap_or("Dockerfile");
    let bases = std::fs::read_to_string(context.join(dockerfile))
        .map(|text| base_images(&text))
        .unwrap_or_default();
    build(
        engine,
        tag,
        tar,
        dockerfile,
        &args,
        spec.target.as_deref(),
        progress,
    )
    .await
    .map_err(|e| match e {
        DockerError::Build { image, message } if looks_like_pull_failure(&message) => {
            DockerError::Build {
                image,
                message: format!(
                    "{message}\n  hint: the base image {} could not be pulled. Provide it without a registry: on a machine that has it, `docker save IMAGE -o image.tar`, then here `docker load -i image.tar`; or point the engine at a registry mirror (`registry-mirrors` in /etc/docker/daemon.json)",
                    if bases.is_empty() {
                        "(see the FROM lines)".to_string()
                    } else {
                        bases.join(", ")
                    }
                ),
            }
        }
        other => other,
    })
}

/// The images a Dockerfile's `FROM` lines name, without the names of its own stages and
/// `scratch`.
pub fn base_images(dockerfile: &str) -> Vec<String> {
    let mut stages: Vec<String> = Vec::new();
    let mut bases = Vec::new();
    for line in dockerfile.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if !words
            .first()
            .is_some_and(|w| w.eq_ignore_ascii_case("FROM"))
        {
            continue;
        }
        let mut rest = words[1..].iter().filter(|w| !w.starts_with("--"));
        let Some(image) = rest.next() else { continue };
        if let (Some(as_kw), Some(name)) = (rest.next(), rest.next())
            && as_kw.eq_ignore_ascii_case("AS")
        {
            stages.push(name.to_lowercase());
        }
        let image = image.to_string();
        if image != "scratch"
            && !stages[..].contains(&image.to_lowercase())
            && !bases.contains(&image)
        {
            bases.push(image);
        }
    }
    bases
}

/// True when a build failed on pulling an image (no registry, unknown name, no network).
fn looks_like_pull_failure(message: &str) -> bool {
    let m = message.to_lowercase();
    [
        "pull access denied",
        "manifest unknown",
        "manifest for",
        "no such host",
        "dial tcp",
        "i/o timeout",
        "tls handshake timeout",
        "repository does not exist",
        "error pulling image",
        "failed to resolve",
    ]
    .iter()
    .any(|p| m.contains(p))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_images_are_the_from_lines_but_stages_and_scratch() {
        let dockerfile = "\
# syntax
FROM --platform=linux/amd64 rust:1.85 AS build
RUN cargo build
from debian:bookworm-slim as runtime
FROM build AS again
FROM scratch
COPY --from=runtime /x /x
";
        assert_eq!(
            base_images(dockerfile),
            ["rust:1.85", "debian:bookworm-slim"]
        );
    }
}
