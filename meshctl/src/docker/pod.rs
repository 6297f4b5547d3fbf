//! Creating, starting and watching the containers of a pod.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use bollard::models::{
    ContainerCreateBody, EndpointSettings, HealthStatusEnum, NetworkConnectRequest,
};
use bollard::query_parameters::CreateContainerOptionsBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::engine::Engine;
use super::{DockerError, is_conflict};

/// Creates container `name` from `body` (an existing one of that name is removed first: it
/// was left by an interrupted run) and starts it. Returns its ID.
pub async fn create_and_start(
    engine: &Engine,
    name: &str,
    service: &str,
    body: ContainerCreateBody,
) -> Result<String, DockerError> {
    create_and_start_on(engine, name, service, body, &[]).await
}

/// [`create_and_start`], connected to more networks (engine name, endpoint: aliases, fixed
/// address) between create and start: engines before API 1.44 connect a container to one
/// network only at create.
pub async fn create_and_start_on(
    engine: &Engine,
    name: &str,
    service: &str,
    body: ContainerCreateBody,
    networks: &[(String, EndpointSettings)],
) -> Result<String, DockerError> {
    let opts = CreateContainerOptionsBuilder::new().name(name).build();
    let created = match engine
        .docker
        .create_container(Some(opts.clone()), body.clone())
        .await
    {
        Ok(c) => c,
        Err(e) if is_conflict(&e) => {
            engine.remove_container(name).await?;
            engine
                .docker
                .create_container(Some(opts), body)
                .await
                .map_err(DockerError::api(format!("creating container {name}")))?
        }
        Err(e) => return Err(DockerError::api(format!("creating container {name}"))(e)),
    };
    for (network, endpoint) in networks {
        let req = NetworkConnectRequest {
            container: created.id.clone(),
            endpoint_config: Some(endpoint.clone()),
        };
        if let Err(e) = engine.docker.connect_network(network, req).await {
            let _ = engine.remove_container(&created.id).await;
            return Err(DockerError::api(format!(
                "connecting container {name} to network {network}"
            ))(e));
        }
    }
    if let Err(e) = engine
        .docker
        .start_container(
            &created.id,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await
    {
        let text = e.to_string();
        // Leave nothing half-made behind.
        let _ = engine.remove_container(&created.id).await;
        if text.contains("port is already allocated") || text.contains("address already in use") {
            let port = text
                .split("0.0.0.0:")
                .nth(1)
                .map(|s| s.chars().take_while(char::is_ascii_digit).collect())
                .unwrap_or_else(|| "?".to_string());
            return Err(DockerError::PortTaken {
                service: service.to_string(),
                port,
                message: text,
            });
        }
        return Err(DockerError::api(format!("starting container {name}"))(e));
    }
    Ok(created.id)
}

/// Restarts by its restart policy after which an app that still dies is reported as dying
/// (`up` fails instead of waiting out its timeout).
pub const KEEPS_DYING: i64 = 3;

/// State of a container as start-up cares about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Life {
    Running {
        health: Option<HealthStatusEnum>,
    },
    /// Exited with `code` and about to be started again by its restart policy, which has
    /// done so `restarts` times.
    Restarting {
        code: i64,
        restarts: i64,
    },
    Exited(i64),
    Other(String),
}

/// The container's state.
pub async fn life(engine: &Engine, id: &str) -> Result<Life, DockerError> {
    let c = engine
        .docker
        .inspect_container(
            id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .map_err(DockerError::api(format!("inspecting container {id}")))?;
    let state = c.state.unwrap_or_default();
    if state.restarting == Some(true) {
        return Ok(Life::Restarting {
            code: state.exit_code.unwrap_or(-1),
            restarts: c.restart_count.unwrap_or(0),
        });
    }
    if state.running == Some(true) {
        return Ok(Life::Running {
            health: state.health.and_then(|h| h.status),
        });
    }
    match state.status.map(|s| s.to_string()) {
        Some(s) if s == "exited" || s == "dead" => Ok(Life::Exited(state.exit_code.unwrap_or(-1))),
        Some(s) => Ok(Life::Other(s)),
        None => Ok(Life::Other("unknown".into())),
    }
}

/// An error for a container that exited during start-up, with its last log lines.
pub async fn exited(engine: &Engine, name: &str, id: &str, code: i64) -> DockerError {
    DockerError::Exited {
        container: name.to_string(),
        code,
        logs: engine.tail_logs(id, 20).await,
    }
}

/// One `GET` of the sidecar's `/healthz/ready` from the host; true on 200.
pub async fn sidecar_ready(ip: Ipv4Addr) -> bool {
    let probe = async {
        let mut s = tokio::net::TcpStream::connect((ip, super::plan::HEALTH_PORT)).await?;
        s.write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: sidecar\r\nConnection: close\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<bool, std::io::Error>(buf.starts_with(b"HTTP/1.1 200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Ok(true))
    )
}

/// Waits until the sidecar at `ip` is ready; fails fast when its container exits.
pub async fn wait_sidecar(
    engine: &Engine,
    name: &str,
    id: &str,
    ip: Ipv4Addr,
    timeout: Duration,
) -> Result<(), DockerError> {
    let deadline = Instant::now() + timeout;
    let mut n = 0u32;
    loop {
        if sidecar_ready(ip).await {
            return Ok(());
        }
        n += 1;
        if n.is_multiple_of(5)
            && let Life::Exited(code) = life(engine, id).await?
        {
            return Err(exited(engine, name, id, code).await);
        }
        if Instant::now() > deadline {
            return Err(DockerError::Timeout {
                what: format!(
                    "sidecar {name} to be ready ({ip}:15021/healthz/ready); its last log lines:\n{}",
                    engine.tail_logs(id, 15).await
                ),
                secs: timeout.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What "ready" means when waiting for an app container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// Running.
    Started,
    /// Running and healthy (running when it has no healthcheck).
    Healthy,
    /// Exited with code 0.
    Completed,
}

/// Waits until the container reaches `want`; an exit (other than a wanted completion) is an
/// error with its last log lines, and so is an app its restart policy has restarted
/// [`KEEPS_DYING`] times and that died again (exit code and restart count).
pub async fn wait_app(
    engine: &Engine,
    name: &str,
    id: &str,
    want: Ready,
    timeout: Duration,
) -> Result<(), DockerError> {
    let deadline = Instant::now() + timeout;
    loop {
        match (life(engine, id).await?, want) {
            (Life::Exited(0), Ready::Completed) => return Ok(()),
            (Life::Exited(code), _) => return Err(exited(engine, name, id, code).await),
            (Life::Restarting { code, restarts }, _) if restarts >= KEEPS_DYING => {
                return Err(DockerError::KeepsDying {
                    container: name.to_string(),
                    code,
                    restarts,
                    logs: engine.tail_logs(id, 20).await,
                });
            }
            (Life::Running { .. }, Ready::Started) => return Ok(()),
            (Life::Running { health: None }, Ready::Healthy)
            | (
                Life::Running {
                    health: Some(HealthStatusEnum::HEALTHY | HealthStatusEnum::NONE),
                },
                Ready::Healthy,
            ) => return Ok(()),
            (
                Life::Running {
                    health: Some(HealthStatusEnum::UNHEALTHY),
                },
                Ready::Healthy,
            ) => {
                return Err(DockerError::Exited {
                    container: format!("{name} (unhealthy)"),
                    code: 0,
                    logs: engine.tail_logs(id, 20).await,
                });
            }
            _ => {}
        }
        if Instant::now() > deadline {
            return Err(DockerError::Timeout {
                what: format!("{name} to be {want:?}"),
                secs: timeout.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
