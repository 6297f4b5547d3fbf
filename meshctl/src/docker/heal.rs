//! Pods whose sidecar Docker restarted.
//!
//! An app container joins its sidecar's network namespace when it starts (`network_mode:
//! container:<sidecar>`). When Docker restarts the sidecar (`docker restart`, the sidecar's
//! `unless-stopped` policy after a crash, a daemon restart), the sidecar comes back in a new
//! namespace with its old address and the app stays in the old one, which has only loopback:
//! nothing reaches the app and its calls fail. As Kubernetes restarts the containers of a pod
//! whose sandbox changed, meshctl restarts such an app, which then joins the new namespace:
//! the control plane (foreground `up` and the background one of `up -d`) watches the engine's
//! start events of the project's sidecars ([`watch`]), and `up` checks every pod it keeps
//! ([`stale_app`]). The restarted sidecar gets its certificate again with its pod token
//! (`ca::token`).
//!
//! Apps that die are restarted by Docker per compose's `restart:`; [`watch_deaths`] reports
//! each death (exit code, restarts, `keeps dying`) for a foreground `up` and the background
//! control plane's log.

use std::collections::HashMap;
use std::time::Duration;

use bollard::query_parameters::{EventsOptionsBuilder, RestartContainerOptions};
use futures_util::StreamExt;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::engine::Engine;
use super::{DockerError, LABEL_PROJECT, LABEL_ROLE, Role};

/// When the container last started, if it is running.
async fn started_at(engine: &Engine, id: &str) -> Result<Option<OffsetDateTime>, DockerError> {
    let c = engine
        .docker
        .inspect_container(
            id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .map_err(DockerError::api(format!("inspecting container {id}")))?;
    let state = c.state.unwrap_or_default();
    if state.running != Some(true) {
        return Ok(None);
    }
    Ok(state
        .started_at
        .and_then(|s| OffsetDateTime::parse(&s, &Rfc3339).ok()))
}

/// True when the running app `app_id` started before its running sidecar `sidecar_id` last
/// started: it is still in the sidecar's previous network namespace.
pub async fn stale_app(
    engine: &Engine,
    app_id: &str,
    sidecar_id: &str,
) -> Result<bool, DockerError> {
    let (Some(app), Some(sidecar)) = (
        started_at(engine, app_id).await?,
        started_at(engine, sidecar_id).await?,
    ) else {
        return Ok(false);
    };
    Ok(app < sidecar)
}

/// Restarts the app container `app_id` so that it joins its sidecar's current namespace.
pub async fn restart_app(engine: &Engine, name: &str, app_id: &str) -> Result<(), DockerError> {
    engine
        .docker
        .restart_container(app_id, None::<RestartContainerOptions>)
        .await
        .map_err(DockerError::api(format!("restarting {name}")))
}

/// Checks the pod of the sidecar container `sidecar_name` and restarts its app when it is
/// stale. Returns whether it did.
pub async fn rejoin(
    engine: &Engine,
    project: &str,
    sidecar_name: &str,
) -> Result<bool, DockerError> {
    let containers = engine.containers(project).await?;
    let Some(sidecar) = containers
        .iter()
        .find(|c| c.name == sidecar_name && c.role() == Some(Role::Sidecar))
    else {
        return Ok(false);
    };
    let Some(key) = sidecar.pod_key() else {
        return Ok(false);
    };
    let Some(app) = containers
        .iter()
        .find(|c| c.role() == Some(Role::App) && c.pod_key().as_ref() == Some(&key))
    else {
        return Ok(false);
    };
    if !stale_app(engine, &app.id, &sidecar.id).await? {
        return Ok(false);
    }
    restart_app(engine, &app.name, &app.id).await?;
    Ok(true)
}

/// Rejoins the app of every sidecar of the project that needs it; returns how many.
pub async fn rejoin_all(engine: &Engine, project: &str) -> Result<usize, DockerError> {
    let mut n = 0;
    for c in engine.containers(project).await? {
        if c.role() == Some(Role::Sidecar) && rejoin(engine, project, &c.name).await? {
            tracing::info!(sidecar = %c.name, "its app was restarted to join the sidecar's network namespace");
            n += 1;
        }
    }
    Ok(n)
}

/// Watches the engine for (re)starts of the project's sidecars and rejoins their apps, until
/// the task is dropped. Reconnects when the engine goes away (a daemon restart); at each
/// (re)connection every pod is checked once, for starts it did not see.
pub async fn watch(project: String) {
    loop {
        match Engine::connect().await {
            Ok(engine) => {
                if let Err(e) = rejoin_all(&engine, &project).await {
                    tracing::warn!(error = %e, "cannot check the project's pods");
                }
                let filters = HashMap::from([
                    ("type", vec!["container".to_string()]),
                    ("event", vec!["start".to_string()]),
                    (
                        "label",
                        vec![
                            format!("{LABEL_PROJECT}={project}"),
                            format!("{LABEL_ROLE}={}", Role::Sidecar.as_str()),
                        ],
                    ),
                ]);
                let opts = EventsOptionsBuilder::new().filters(&filters).build();
                let mut events = engine.docker.events(Some(opts));
                while let Some(event) = events.next().await {
                    let event = match event {
                        Ok(e) => e,
                        Err(e) => {
                            tracing::warn!(error = %e, "docker events ended");
                            break;
                        }
                    };
                    let Some(name) = event
                        .actor
                        .and_then(|a| a.attributes)
                        .and_then(|a| a.get("name").cloned())
                    else {
                        continue;
                    };
                    match rejoin(&engine, &project, &name).await {
                        Ok(true) => tracing::info!(
                            sidecar = %name,
                            "sidecar restarted: its app was restarted to join the new network namespace"
                        ),
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(sidecar = %name, error = %e, "cannot rejoin the app of a restarted sidecar")
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "docker events: engine unreachable"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Watches the engine for deaths of the project's app containers and calls `report` with one
/// line per death, as compose's foreground `up` prints `<name> exited with code N`: the exit
/// code, and whether its restart policy restarts it (with the count, and `keeps dying` from
/// [`super::pod::KEEPS_DYING`] restarts on). Runs until dropped; reconnects to the engine.
pub async fn watch_deaths(project: String, report: impl Fn(String)) {
    loop {
        if let Ok(engine) = Engine::connect().await {
            let filters = HashMap::from([
                ("type", vec!["container".to_string()]),
                ("event", vec!["die".to_string()]),
                (
                    "label",
                    vec![
                        format!("{LABEL_PROJECT}={project}"),
                        format!("{LABEL_ROLE}={}", Role::App.as_str()),
                    ],
                ),
            ]);
            let opts = EventsOptionsBuilder::new().filters(&filters).build();
            let mut events = engine.docker.events(Some(opts));
            while let Some(Ok(event)) = events.next().await {
                let attrs = event.actor.and_then(|a| a.attributes).unwrap_or_default();
                let (Some(name), Some(code)) = (attrs.get("name"), attrs.get("exitCode")) else {
                    continue;
                };
                report(death_line(&engine, name, code).await);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The line for container `name` that exited with `code`.
async fn death_line(engine: &Engine, name: &str, code: &str) -> String {
    let inspect = engine
        .docker
        .inspect_container(
            name,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .ok();
    let restarts = inspect.as_ref().and_then(|i| i.restart_count).unwrap_or(0);
    let policy = inspect
        .as_ref()
        .and_then(|i| {
            let name = i
                .host_config
                .as_ref()?
                .restart_policy
                .as_ref()?
                .name
                .as_ref()?;
            Some(name.to_string())
        })
        .unwrap_or_default();
    let restarting = inspect
        .as_ref()
        .and_then(|i| i.state.as_ref()?.restarting)
        .unwrap_or(false);
    if !restarting {
        return format!("{name} exited with code {code}");
    }
    if restarts >= super::pod::KEEPS_DYING {
        format!(
            "{name} keeps dying: exited with code {code}, restarted {restarts} times by its restart policy ({policy})"
        )
    } else {
        format!("{name} exited with code {code}; restarting it per its restart policy ({policy})")
    }
}
