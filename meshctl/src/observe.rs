//! What a user's Prometheus needs to find every proxy: `meshctl prometheus-config` prints a
//! scrape config (or a `file_sd` target file) listing each proxy's `/stats/prometheus`
//! endpoint, for Docker services (each sidecar's address on the project network, port 15090)
//! and for host-mode process services (the host placement's stats port of each proxy).
//! `meshctl stats` ([`stats`]) reads the same endpoints, found through the running control
//! plane's status API ([`mesh_targets`]), so it reads proxies of any runtime.

pub mod stats;

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::docker::engine::Engine;
use crate::docker::up::Project;
use crate::docker::{LABEL_INSTANCE, LABEL_IP, LABEL_MESH_SERVICE, LABEL_SERVICE, Role};
use crate::project::ProjectArgs;

/// Istio's Prometheus port of a proxy.
pub const STATS_PORT: u16 = 15090;
/// Where the proxies serve their metrics.
pub const METRICS_PATH: &str = "/stats/prometheus";

/// What `prometheus-config` prints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum ConfigFormat {
    /// A `prometheus.yml` with one scrape job (`meshctl-proxies`) and static targets.
    #[default]
    Prometheus,
    /// A `file_sd_configs` target file (JSON); write it where a job's `file_sd_configs`
    /// reads and Prometheus picks up changes by itself.
    FileSd,
}

/// `meshctl prometheus-config`.
#[derive(Debug, Clone, Args)]
pub struct PrometheusConfigArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: ConfigFormat,
    /// Host mode: the proxies of `meshctl serve` on this host (stats port
    /// `base + 3000 + k`) instead of the project's Docker sidecars.
    #[arg(long)]
    pub host: bool,
    /// Host mode's first inbound port (`meshctl serve --base-port`).
    #[arg(long, default_value_t = meshmodel::compile::DEFAULT_HOST_BASE_PORT)]
    pub base_port: u16,
    /// Scrape interval written into the `prometheus` format.
    #[arg(long, default_value = "15s")]
    pub scrape_interval: String,
}

/// One proxy to scrape, with labels naming it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScrapeTarget {
    pub address: SocketAddr,
    /// Compose service (`backend-v1`).
    pub service: String,
    /// Mesh service (`backend`).
    pub mesh_service: String,
    pub instance: u32,
}

/// The Docker sidecars of `project` that are running.
pub async fn docker_targets(project: &Project) -> anyhow::Result<Vec<ScrapeTarget>> {
    let engine = Engine::connect().await?;
    let mut out = Vec::new();
    for c in engine.containers(project.name()).await? {
        if c.role() != Some(Role::Sidecar) || c.state != "running" {
            continue;
        }
        let Ok(ip) = c.label(LABEL_IP).parse::<std::net::IpAddr>() else {
            continue;
        };
        out.push(ScrapeTarget {
            address: SocketAddr::new(ip, STATS_PORT),
            service: c.label(LABEL_SERVICE).to_string(),
            mesh_service: c.label(LABEL_MESH_SERVICE).to_string(),
            instance: c.label(LABEL_INSTANCE).parse().unwrap_or(0),
        });
    }
    out.sort_by(|a, b| (&a.service, a.instance).cmp(&(&b.service, b.instance)));
    Ok(out)
}

/// The proxies the project's running control plane knows, where its status API says they
/// serve `/stats/prometheus` (any runtime: Docker sidecars, `meshctl serve`'s host proxies,
/// process services). `None` when no control plane answers.
pub async fn control_plane_targets(project: &Project) -> Option<Vec<ScrapeTarget>> {
    let client =
        crate::controlplane::client::AdminClient::from_state_dir(&project.state_dir).ok()?;
    let status = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        client.get::<crate::controlplane::api::StatusReport>(meshapi::wire::STATUS_PATH),
    )
    .await
    .ok()?
    .ok()?;
    Some(targets_of_status(project, &status.proxies))
}

/// Scrape targets from the control plane's proxy list (those whose stats address is known).
pub fn targets_of_status(
    project: &Project,
    proxies: &[crate::controlplane::push::ProxyStatus],
) -> Vec<ScrapeTarget> {
    let inv = meshmodel::model::Inventory::from_compose(project.mesh.compose.as_ref());
    let mut out: Vec<ScrapeTarget> = proxies
        .iter()
        .filter_map(|p| {
            let address = p.stats.as_deref()?.parse().ok()?;
            let (workload, instance) = p.proxy.rsplit_once('/')?;
            let mesh_service = inv
                .workloads
                .iter()
                .find(|w| w.compose_name == workload)
                .map_or(workload, |w| w.service.as_str());
            Some(ScrapeTarget {
                address,
                service: workload.to_string(),
                mesh_service: mesh_service.to_string(),
                instance: instance.parse().ok()?,
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.service, a.instance).cmp(&(&b.service, b.instance)));
    out
}

/// Every proxy of the project, whatever runs it: the control plane's list, where a running
/// Docker sidecar of the same service and replica keeps Docker's address (its address on the
/// project network); the Docker sidecars alone when no control plane answers.
pub async fn mesh_targets(project: &Project) -> anyhow::Result<Vec<ScrapeTarget>> {
    let from_cp = control_plane_targets(project).await;
    let docker = docker_targets(project).await;
    let (mut out, docker) = match (from_cp, docker) {
        (None, docker) => return docker,
        (Some(cp), Ok(docker)) => (cp, docker),
        (Some(cp), Err(e)) => {
            tracing::debug!(error = %e, "no Docker sidecars read");
            (cp, Vec::new())
        }
    };
    for d in docker {
        match out
            .iter_mut()
            .find(|t| t.service == d.service && t.instance == d.instance)
        {
            Some(t) => *t = d,
            None => out.push(d),
        }
    }
    out.sort_by(|a, b| (&a.service, a.instance).cmp(&(&b.service, b.instance)));
    Ok(out)
}

/// Every proxy of `project` in host mode, where [`meshmodel::compile::HostPlacement`] puts it.
pub fn host_targets(project: &Project, base_port: u16) -> Vec<ScrapeTarget> {
    use meshmodel::compile::{HostPlacement, Placement};
    let inv = meshmodel::model::Inventory::from_compose(project.mesh.compose.as_ref());
    let placement = HostPlacement::new(&inv, base_port);
    let mut out = Vec::new();
    for w in &inv.workloads {
        for i in 0..w.replicas {
            out.push(ScrapeTarget {
                address: placement.admin(&w.compose_name, i).stats,
                service: w.compose_name.clone(),
                mesh_service: w.service.clone(),
                instance: i,
            });
        }
    }
    out.sort_by(|a, b| (&a.service, a.instance).cmp(&(&b.service, b.instance)));
    out
}

/// The `file_sd` document: one group per proxy, with the metrics path as a label so any job
/// reading it scrapes the right path.
pub fn file_sd(project: &str, targets: &[ScrapeTarget]) -> serde_json::Value {
    serde_json::Value::Array(
        targets
            .iter()
            .map(|t| {
                serde_json::json!({
                    "targets": [t.address.to_string()],
                    "labels": {
                        "__metrics_path__": METRICS_PATH,
                        "mesh_project": project,
                        "service": t.service,
                        "mesh_service": t.mesh_service,
                        "replica": t.instance.to_string(),
                    }
                })
            })
            .collect(),
    )
}

/// A whole `prometheus.yml` scraping `targets` (strings are JSON-quoted: valid YAML).
pub fn prometheus_yaml(project: &str, targets: &[ScrapeTarget], interval: &str) -> String {
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let mut y = format!(
        "# Written by `meshctl prometheus-config` for project {project}: every proxy's\n\
         # {METRICS_PATH}. Regenerate after `meshctl up` changes the services.\n\
         global:\n  scrape_interval: {interval}\n\
         scrape_configs:\n  - job_name: meshctl-proxies\n    metrics_path: {METRICS_PATH}\n    static_configs:\n"
    );
    if targets.is_empty() {
        y.push_str("      []\n");
    }
    for t in targets {
        y.push_str(&format!(
            "      - targets: [{}]\n        labels: {{ mesh_project: {}, service: {}, mesh_service: {}, replica: {} }}\n",
            q(&t.address.to_string()),
            q(project),
            q(&t.service),
            q(&t.mesh_service),
            q(&t.instance.to_string()),
        ));
    }
    y
}

/// `meshctl prometheus-config`.
pub fn prometheus_config(
    project: &ProjectArgs,
    args: &PrometheusConfigArgs,
) -> anyhow::Result<ExitCode> {
    let project = Project::load(&crate::docker::commands::spec(project))?;
    let targets = if args.host {
        host_targets(&project, args.base_port)
    } else {
        crate::docker::commands::runtime()?.block_on(docker_targets(&project))?
    };
    if targets.is_empty() {
        eprintln!(
            "warning: no running proxy found for project {} ({})",
            project.name(),
            if args.host {
                "host mode"
            } else {
                "run `meshctl up` first, or pass --host for `meshctl serve`"
            }
        );
    }
    let mut out = std::io::stdout().lock();
    match args.format {
        ConfigFormat::Prometheus => out.write_all(
            prometheus_yaml(project.name(), &targets, &args.scrape_interval).as_bytes(),
        )?,
        ConfigFormat::FileSd => {
            serde_json::to_writer_pretty(&mut out, &file_sd(project.name(), &targets))?;
            writeln!(out)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(addr: &str, svc: &str) -> ScrapeTarget {
        ScrapeTarget {
            address: addr.parse().expect("addr"),
            service: svc.into(),
            mesh_service: "backend".into(),
            instance: 0,
        }
    }

    #[test]
    fn both_formats_name_every_target_and_the_path() {
        let ts = [
            t("10.1.0.3:15090", "backend-v1"),
            t("10.1.0.4:15090", "backend-v2"),
        ];
        let y = prometheus_yaml("seed", &ts, "5s");
        assert!(y.contains("metrics_path: /stats/prometheus"), "{y}");
        assert!(y.contains("targets: [\"10.1.0.4:15090\"]"), "{y}");
        assert!(y.contains("service: \"backend-v2\""), "{y}");
        let j = file_sd("seed", &ts);
        assert_eq!(j[1]["targets"][0], "10.1.0.4:15090");
        assert_eq!(j[0]["labels"]["__metrics_path__"], "/stats/prometheus");
    }
}
