//! `meshctl ps`: the project's containers from the engine's labels, with what the mesh adds
//! (mesh service, identity, certificate expiry), and docker compose's flags with their
//! meanings: `-a` (stopped ones too), `-q`, `--services`, `--status`, `--format table|json`.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use super::engine::Engine;
use super::lifecycle::{Format, Target, write_table};
use super::*;
use crate::controlplane::api::Expiry;
use crate::project::ProjectArgs;

/// `meshctl ps`.
#[derive(Debug, Clone, Args)]
pub struct PsArgs {
    /// Stopped containers too (default: running ones only, as compose).
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only container IDs.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Only the services' names, one per line.
    #[arg(long)]
    pub services: bool,
    /// Only containers in this state (repeatable): running, exited, created, paused,
    /// restarting, removing, dead.
    #[arg(long, value_name = "STATE", value_parser = ["paused", "restarting", "removing", "running", "dead", "created", "exited"])]
    pub status: Vec<String>,
    /// `table` or `json`.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// The sidecars and meshdns as rows of their own too.
    #[arg(long)]
    pub proxy: bool,
    /// Shorthand for `--format json -a --proxy` (every container of the project).
    #[arg(long)]
    pub json: bool,
    /// Only these services.
    #[arg(value_name = "SERVICE")]
    pub names: Vec<String>,
}

/// One row of `ps`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PsRow {
    pub name: String,
    pub id: String,
    /// `app`, `sidecar` or `dns`.
    pub role: String,
    pub service: String,
    pub mesh_service: String,
    pub instance: Option<u32>,
    pub version: String,
    pub state: String,
    /// Times Docker restarted the container by its restart policy (compose's `restart:`).
    pub restarts: i64,
    /// Exit code of its last run, while it is not running (exited, or waiting to be restarted:
    /// Docker resets it at each start).
    pub exit_code: Option<i64>,
    /// `healthy`, `unhealthy`, `starting` or empty (no healthcheck).
    pub health: String,
    pub status: String,
    pub image: String,
    pub ip: String,
    pub identity: String,
    /// Expiry of the pod's current certificate (RFC 3339), when the control plane answers.
    pub cert_expires: Option<String>,
    /// The same as seconds since the Unix epoch.
    #[serde(skip)]
    pub cert_not_after: Option<i64>,
    /// Where that certificate stands against its lifetime (`expiring` means its renewal is
    /// overdue), when the control plane answers.
    pub cert_expiry: Option<Expiry>,
    pub ports: Vec<String>,
}

/// The warning `ps` prints for an app its restart policy restarted, if any.
fn restart_warning(r: &PsRow) -> Option<String> {
    // Docker clears the exit code whenever it starts the container again, so whether a dying
    // app shows one depends on the instant: the restart count decides instead.
    if r.state == "restarting"
        || (r.restarts > 0 && r.state != "running")
        || r.restarts >= super::pod::KEEPS_DYING
    {
        let exit = r
            .exit_code
            .map_or(String::new(), |c| format!(", last exit code {c}"));
        Some(format!(
            "warning: {} keeps dying: restarted {} times by its restart policy{exit} (`meshctl logs {}`)",
            r.name, r.restarts, r.service
        ))
    } else if r.restarts > 0 {
        Some(format!(
            "warning: {} died and was restarted by its restart policy ({} restart{})",
            r.name,
            r.restarts,
            if r.restarts == 1 { "" } else { "s" }
        ))
    } else {
        None
    }
}

/// `meshctl ps`.
pub fn ps(project: &ProjectArgs, args: &PsArgs) -> anyhow::Result<ExitCode> {
    let target = Target::resolve(project)?;
    let (all, proxy, format) = if args.json {
        (true, true, Format::Json)
    } else {
        (args.all, args.proxy, args.format)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (rows, ca_warnings) = rt.block_on(ps_rows(&target, proxy))?;
    // Apps that died are warned about whatever the filters show (a restarting app is not
    // `running`, so plain `ps` would hide exactly the one that needs attention).
    let restart_warnings: Vec<String> = rows.iter().filter_map(restart_warning).collect();
    let rows: Vec<PsRow> = rows
        .into_iter()
        .filter(|r| all || r.state == "running" || !args.status.is_empty())
        .filter(|r| args.status.is_empty() || args.status.contains(&r.state))
        .filter(|r| {
            args.names.is_empty()
                || args
                    .names
                    .iter()
                    .any(|n| &r.service == n || &r.mesh_service == n)
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if args.quiet {
        for r in &rows {
            writeln!(out, "{}", r.id)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.services {
        let mut seen = std::collections::BTreeSet::new();
        for r in rows.iter().filter(|r| r.role == Role::App.as_str()) {
            if seen.insert(&r.service) {
                writeln!(out, "{}", r.service)?;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if format == Format::Json {
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
        for w in &ca_warnings {
            eprintln!("warning: {w}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.service.clone(),
                r.mesh_service.clone(),
                or_dash(&r.version),
                r.state.clone(),
                r.restarts.to_string(),
                or_dash(&r.health),
                or_dash(&r.identity),
                cert_cell(r, now),
                r.ports.join(", "),
            ]
        })
        .collect();
    write_table(
        &mut out,
        &[
            "NAME", "SERVICE", "MESH", "VERSION", "STATE", "RESTARTS", "HEALTH", "IDENTITY",
            "CERT", "PORTS",
        ],
        &table,
    )?;
    for w in &ca_warnings {
        eprintln!("warning: {w}");
    }
    for w in &restart_warnings {
        eprintln!("{w}");
    }
    for r in &rows {
        match (r.cert_expiry, &r.cert_expires) {
            (Some(Expiry::Expiring), Some(at)) => eprintln!(
                "warning: the certificate of {} ({}) expires at {at}: its renewal is overdue",
                r.name, r.identity
            ),
            (Some(Expiry::Expired), Some(at)) => eprintln!(
                "warning: the certificate of {} ({}) expired at {at}",
                r.name, r.identity
            ),
            _ => {}
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn or_dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.into() }
}

/// The CERT column: the expiry relative to now (`in 23h59m`, `expired 5m ago`), with `!`
/// when its renewal is overdue; `-` when the control plane does not answer.
fn cert_cell(r: &PsRow, now: i64) -> String {
    let Some(at) = r.cert_not_after else {
        return "-".into();
    };
    let rel = relative(at - now);
    match r.cert_expiry {
        Some(Expiry::Expiring) => format!("{rel}!"),
        _ => rel,
    }
}

/// `in 2d3h`, `in 23h59m`, `in 4m`, `in 12s`, `expired 5m ago`.
pub fn relative(secs: i64) -> String {
    let n = secs.unsigned_abs();
    let span = match n {
        0..=59 => format!("{n}s"),
        60..=3599 => format!("{}m", n / 60),
        3600..=86_399 => format!("{}h{:02}m", n / 3600, n % 3600 / 60),
        _ => format!("{}d{}h", n / 86_400, n % 86_400 / 3600),
    };
    if secs < 0 {
        format!("expired {span} ago")
    } else {
        format!("in {span}")
    }
}

/// The rows of `ps`: app containers (and with `proxy`, sidecars and meshdns), every state;
/// and a warning per CA certificate near or past expiry.
pub async fn ps_rows(target: &Target, proxy: bool) -> anyhow::Result<(Vec<PsRow>, Vec<String>)> {
    // Process pods (`.mesh/pods/`), then containers; a project of processes only needs no
    // engine.
    let mut process_rows = crate::process::commands::ps_rows(&target.state_dir, proxy);
    let engine = match Engine::connect().await {
        Ok(e) => e,
        Err(_) if crate::process::commands::has_pods(&target.state_dir) => {
            crate::controlplane::news::print_unseen(&target.state_dir).await;
            let expiry = cert_expiry(&target.state_dir).await;
            for r in &mut process_rows {
                expiry.fill(r);
            }
            return Ok((process_rows, expiry.ca_warnings));
        }
        Err(e) => return Err(e.into()),
    };
    let containers = target.containers(&engine).await?;
    let expiry = cert_expiry(&target.state_dir_on(&containers)).await;
    for r in &mut process_rows {
        expiry.fill(r);
    }
    let mut sidecar_ports: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in containers
        .iter()
        .filter(|c| c.role() == Some(Role::Sidecar))
    {
        sidecar_ports.insert(
            c.label(LABEL_IDENTITY).to_string() + c.label(LABEL_IP),
            ports_of(&engine, &c.id).await,
        );
    }
    let mut rows = process_rows;
    for c in &containers {
        let role = c.role();
        if !proxy && role != Some(Role::App) {
            continue;
        }
        let inspect = engine
            .docker
            .inspect_container(
                &c.id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .ok();
        let health = inspect
            .as_ref()
            .and_then(|i| i.state.as_ref()?.health.as_ref()?.status)
            .map(|h| h.to_string())
            .filter(|h| h != "none" && !h.is_empty())
            .unwrap_or_default();
        let restarts = inspect.as_ref().and_then(|i| i.restart_count).unwrap_or(0);
        // Docker resets the exit code when it starts the container again, so it is known
        // only while the container is not running (exited, or waiting to be restarted).
        let exit_code = inspect.as_ref().and_then(|i| {
            let st = i.state.as_ref()?;
            (st.running != Some(true) || st.restarting == Some(true)).then_some(st.exit_code?)
        });
        let identity = c.label(LABEL_IDENTITY).to_string();
        let ports = match role {
            Some(Role::App) => sidecar_ports
                .get(&(identity.clone() + c.label(LABEL_IP)))
                .cloned()
                .unwrap_or_default(),
            _ => ports_of(&engine, &c.id).await,
        };
        let cert = expiry.identities.get(&identity);
        rows.push(PsRow {
            name: c.name.clone(),
            id: c.id.chars().take(12).collect(),
            role: c.label(LABEL_ROLE).to_string(),
            service: c.label(LABEL_COMPOSE_SERVICE).to_string(),
            mesh_service: c.label(LABEL_MESH_SERVICE).to_string(),
            instance: c.label(LABEL_INSTANCE).parse().ok(),
            version: c.label("version").to_string(),
            state: c.state.clone(),
            restarts,
            exit_code,
            health,
            status: c.status.clone(),
            image: c.image.clone(),
            ip: c.label(LABEL_IP).to_string(),
            cert_expires: cert.map(|e| e.0.clone()),
            cert_not_after: cert.map(|e| e.1),
            cert_expiry: cert.map(|e| e.2),
            identity,
            ports,
        });
    }
    Ok((rows, expiry.ca_warnings))
}

async fn ports_of(engine: &Engine, id: &str) -> Vec<String> {
    let Ok(i) = engine
        .docker
        .inspect_container(
            id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(ports) = i.network_settings.and_then(|n| n.ports) {
        for (port, bindings) in ports {
            for b in bindings.into_iter().flatten() {
                out.push(format!(
                    "{}:{}->{port}",
                    b.host_ip.unwrap_or_default(),
                    b.host_port.unwrap_or_default()
                ));
            }
        }
    }
    out.sort();
    out
}

/// What `ps` shows of the running control plane's certificates: expiry per identity (RFC
/// 3339, Unix seconds, where it stands), and a warning per CA certificate near or past expiry
/// (empty when it does not answer).
#[derive(Debug, Default)]
struct CertReport {
    identities: BTreeMap<String, (String, i64, Expiry)>,
    ca_warnings: Vec<String>,
}

impl CertReport {
    /// Sets the CERT columns of a row from its identity.
    fn fill(&self, r: &mut PsRow) {
        if let Some(cert) = self.identities.get(&r.identity) {
            r.cert_expires = Some(cert.0.clone());
            r.cert_not_after = Some(cert.1);
            r.cert_expiry = Some(cert.2);
        }
    }
}

/// The certificates of the running control plane, for `ps`.
async fn cert_expiry(state_dir: &std::path::Path) -> CertReport {
    let Ok(client) = crate::controlplane::client::AdminClient::from_state_dir(state_dir) else {
        return CertReport::default();
    };
    let asked = tokio::time::timeout(
        Duration::from_secs(3),
        client.get::<crate::controlplane::api::StatusReport>(meshapi::wire::STATUS_PATH),
    )
    .await;
    let Ok(Ok(status)) = asked else {
        return CertReport::default();
    };
    let now = crate::ca::unix_secs(std::time::SystemTime::now());
    CertReport {
        ca_warnings: crate::controlplane::api::ca_warnings(&status.ca_certificates, now),
        identities: status
            .identities
            .into_iter()
            .filter_map(|i| {
                let t = time::OffsetDateTime::from_unix_timestamp(i.not_after).ok()?;
                let s = t
                    .format(&time::format_description::well_known::Rfc3339)
                    .ok()?;
                Some((i.identity, (s, i.not_after, i.expiry)))
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_expiry_reads_as_a_relative_time() {
        assert_eq!(relative(12), "in 12s");
        assert_eq!(relative(4 * 60 + 59), "in 4m");
        assert_eq!(relative(23 * 3600 + 59 * 60 + 30), "in 23h59m");
        assert_eq!(relative(2 * 86_400 + 3 * 3600), "in 2d3h");
        assert_eq!(relative(-300), "expired 5m ago");
    }
}
