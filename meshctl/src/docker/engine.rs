//! The engine connection and the project's objects on it, found by label.

use std::collections::HashMap;

use bollard::Docker;
use bollard::models::{ContainerSummary, Network};
use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, ListVolumesOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures_util::StreamExt;

use super::{DockerError, LABEL_PROJECT, Role, is_not_found};

/// A connected engine, its API version negotiated down to what it speaks.
#[derive(Debug, Clone)]
pub struct Engine {
    /// The bollard client.
    pub docker: Docker,
}

/// One container of the project, from the engine's list.
#[derive(Debug, Clone)]
pub struct Owned {
    pub id: String,
    /// Name without the leading `/`.
    pub name: String,
    pub labels: HashMap<String, String>,
    /// `running`, `exited`, `created`, ...
    pub state: String,
    /// The engine's status text (`Up 3 seconds (healthy)`).
    pub status: String,
    pub image: String,
}

impl Owned {
    /// The `io.meshctl.role` label.
    pub fn role(&self) -> Option<Role> {
        self.labels
            .get(super::LABEL_ROLE)
            .and_then(|r| Role::parse(r))
    }

    /// A label's value or "".
    pub fn label(&self, key: &str) -> &str {
        self.labels.get(key).map_or("", String::as_str)
    }

    /// `(compose service, instance)` of a pod container.
    pub fn pod_key(&self) -> Option<(String, u32)> {
        let service = self.labels.get(super::LABEL_SERVICE)?;
        let instance = self.labels.get(super::LABEL_INSTANCE)?.parse().ok()?;
        Some((service.clone(), instance))
    }
}

impl Engine {
    /// Connects through `DOCKER_HOST` or the local socket and negotiates the API version.
    pub async fn connect() -> Result<Engine, DockerError> {
        let host = std::env::var("DOCKER_HOST")
            .unwrap_or_else(|_| "unix:///var/run/docker.sock".to_string());
        let unreachable = |reason: String| DockerError::Unreachable {
            host: host.clone(),
            reason,
        };
        let docker = Docker::connect_with_defaults().map_err(|e| unreachable(e.to_string()))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        docker
            .ping()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(Engine { docker })
    }

    fn project_filter(project: &str) -> HashMap<String, Vec<String>> {
        HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_PROJECT}={project}")],
        )])
    }

    /// Every container (running or not) labelled with `project`.
    pub async fn containers(&self, project: &str) -> Result<Vec<Owned>, DockerError> {
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&Self::project_filter(project))
            .build();
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(DockerError::api("listing containers"))?;
        let mut out: Vec<Owned> = list.into_iter().filter_map(owned).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Every network labelled with `project`.
    pub async fn networks(&self, project: &str) -> Result<Vec<Network>, DockerError> {
        let opts = ListNetworksOptionsBuilder::new()
            .filters(&Self::project_filter(project))
            .build();
        self.docker
            .list_networks(Some(opts))
            .await
            .map_err(DockerError::api("listing networks"))
    }

    /// Names of every volume labelled with `project`.
    pub async fn volumes(&self, project: &str) -> Result<Vec<String>, DockerError> {
        let opts = ListVolumesOptionsBuilder::new()
            .filters(&Self::project_filter(project))
            .build();
        let resp = self
            .docker
            .list_volumes(Some(opts))
            .await
            .map_err(DockerError::api("listing volumes"))?;
        Ok(resp
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect())
    }

    /// Removes a container, stopping it first; a container already gone is fine.
    pub async fn remove_container(&self, id: &str) -> Result<(), DockerError> {
        let opts = RemoveContainerOptionsBuilder::new().force(true).build();
        match self.docker.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            // 409: removal already in progress.
            Err(e) if super::is_conflict(&e) => Ok(()),
            Err(e) => Err(DockerError::api(format!("removing container {id}"))(e)),
        }
    }

    /// The last `n` log lines of a container (stdout and stderr), for error messages.
    pub async fn tail_logs(&self, id: &str, n: usize) -> String {
        let opts = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail(&n.to_string())
            .build();
        let mut stream = self.docker.logs(id, Some(opts));
        let mut out = String::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => out.push_str(&String::from_utf8_lossy(&c.into_bytes())),
                Err(e) => {
                    out.push_str(&format!("(logs unavailable: {e})"));
                    break;
                }
            }
        }
        out.lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn owned(c: ContainerSummary) -> Option<Owned> {
    let id = c.id?;
    let name = c
        .names
        .unwrap_or_default()
        .first()
        .map(|n| n.trim_start_matches('/').to_string())
        .unwrap_or_else(|| id.chars().take(12).collect());
    Some(Owned {
        id,
        name,
        labels: c.labels.unwrap_or_default(),
        state: c.state.map(|s| s.to_string()).unwrap_or_default(),
        status: c.status.unwrap_or_default(),
        image: c.image.unwrap_or_default(),
    })
}
