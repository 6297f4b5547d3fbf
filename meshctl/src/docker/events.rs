//! `events`: compose's `events` (the engine's events for the project's containers, live) plus
//! the mesh's own: reloads of the files (applied or refused), each proxy's ACK or NACK of a
//! config version, certificate renewals (read from the control plane's status, polled), and
//! outlier ejections (the sidecars' log lines). One line each, or with `--json` one JSON
//! object per line with compose's fields (`time`, `type`, `action`, `id`, `service`,
//! `attributes`); mesh events have `type: "mesh"`.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use bollard::query_parameters::{EventsOptionsBuilder, LogsOptionsBuilder};
use clap::Args;
use futures_util::StreamExt;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::mpsc;

use super::engine::Engine;
use super::lifecycle::Target;
use super::{LABEL_PROJECT, LABEL_SERVICE, Role};
use crate::controlplane::api::StatusReport;
use crate::controlplane::client::AdminClient;
use crate::project::ProjectArgs;

/// `meshctl events`.
#[derive(Debug, Clone, Args)]
pub struct EventsArgs {
    /// One JSON object per line (compose's fields).
    #[arg(long)]
    pub json: bool,
    /// Only these services' container events, ACKs and ejections (mesh-wide events, such as
    /// reloads, always show).
    pub services: Vec<String>,
}

/// One event, container or mesh.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// RFC 3339, UTC.
    pub time: String,
    /// `container` or `mesh`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The engine's action (`start`, `die`, ...) or the mesh's (`reload`, `reload-refused`,
    /// `ack`, `nack`, `cert-renewal`, `ejection`).
    pub action: String,
    /// Container ID, proxy, identity or revision.
    pub id: String,
    /// Compose service, when the event has one.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub service: String,
    pub attributes: BTreeMap<String, String>,
}

impl Event {
    fn mesh(action: &str, id: String, service: &str, attributes: &[(&str, String)]) -> Event {
        Event {
            time: now_rfc3339(),
            kind: "mesh".into(),
            action: action.into(),
            id,
            service: service.into(),
            attributes: attributes
                .iter()
                .map(|(k, v)| ((*k).to_string(), v.clone()))
                .collect(),
        }
    }

    /// compose's text line: `<time> <type> <action> <id> (k=v, ...)`.
    pub fn line(&self) -> String {
        let attrs: Vec<String> = self
            .attributes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "{} {} {} {} ({})",
            self.time,
            self.kind,
            self.action,
            self.id,
            attrs.join(", ")
        )
    }
}

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// The mesh events between two status reports of the control plane: a new reload, a proxy's
/// new ACK or NACK, an identity's new certificate. A new epoch (the control plane restarted)
/// is one event and resets the comparison.
pub fn status_events(before: &StatusReport, after: &StatusReport) -> Vec<Event> {
    let mut out = Vec::new();
    if before.epoch != after.epoch {
        out.push(Event::mesh(
            "control-plane-restart",
            format!("epoch {}", after.epoch),
            "",
            &[("revision", after.revision.to_string())],
        ));
        return out;
    }
    let r = &after.last_reload;
    if r.at_unix_ms != before.last_reload.at_unix_ms {
        let mut attrs = vec![
            ("changed", r.changed.len().to_string()),
            ("warnings", r.warnings.to_string()),
        ];
        if let Some(e) = r.errors.first() {
            attrs.push(("error", e.clone()));
        }
        out.push(Event::mesh(
            if r.ok { "reload" } else { "reload-refused" },
            format!("revision {}", r.revision),
            "",
            &attrs,
        ));
    }
    let old: HashMap<&str, _> = before
        .proxies
        .iter()
        .map(|p| (p.proxy.as_str(), p))
        .collect();
    for p in &after.proxies {
        let was = old.get(p.proxy.as_str());
        let service = p.proxy.split('/').next().unwrap_or_default();
        if p.acked.is_some() && was.is_none_or(|w| w.acked != p.acked) {
            out.push(Event::mesh(
                "ack",
                p.proxy.clone(),
                service,
                &[("version", p.acked.unwrap_or_default().to_string())],
            ));
        }
        if p.nacked.is_some() && was.is_none_or(|w| w.nacked != p.nacked) {
            out.push(Event::mesh(
                "nack",
                p.proxy.clone(),
                service,
                &[
                    ("version", p.nacked.unwrap_or_default().to_string()),
                    ("error", p.nack_error.clone().unwrap_or_default()),
                ],
            ));
        }
    }
    let old: HashMap<&str, &str> = before
        .identities
        .iter()
        .map(|i| (i.identity.as_str(), i.serial.as_str()))
        .collect();
    for i in &after.identities {
        if old.get(i.identity.as_str()).is_some_and(|s| *s != i.serial) {
            let not_after = OffsetDateTime::from_unix_timestamp(i.not_after)
                .ok()
                .and_then(|t| t.format(&Rfc3339).ok())
                .unwrap_or_default();
            out.push(Event::mesh(
                "cert-renewal",
                i.identity.clone(),
                "",
                &[("serial", i.serial.clone()), ("notAfter", not_after)],
            ));
        }
    }
    out
}

/// The `key=value` fields of a sidecar's "outlier detection ejected an endpoint" log line.
pub fn ejection(line: &str) -> Option<Vec<(String, String)>> {
    let (_, rest) = line.split_once("outlier detection ejected an endpoint")?;
    Some(
        rest.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect(),
    )
}

/// The engine's events for the project's containers, as compose shows them.
async fn engine_events(engine: Engine, project: String, tx: mpsc::Sender<Event>) {
    let filters = HashMap::from([
        ("label", vec![format!("{LABEL_PROJECT}={project}")]),
        ("type", vec!["container".to_string()]),
    ]);
    let opts = EventsOptionsBuilder::new().filters(&filters).build();
    let mut events = engine.docker.events(Some(opts));
    while let Some(Ok(e)) = events.next().await {
        let actor = e.actor.unwrap_or_default();
        let mut attributes: BTreeMap<String, String> =
            actor.attributes.unwrap_or_default().into_iter().collect();
        let service = attributes.get(LABEL_SERVICE).cloned().unwrap_or_default();
        // compose shows the image and name; the labels are the project's own bookkeeping.
        attributes.retain(|k, _| k == "image" || k == "name" || k == "exitCode");
        let time = e
            .time_nano
            .and_then(|n| OffsetDateTime::from_unix_timestamp_nanos(i128::from(n)).ok())
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_else(now_rfc3339);
        let event = Event {
            time,
            kind: "container".into(),
            action: e.action.unwrap_or_default(),
            id: actor.id.unwrap_or_default(),
            service,
            attributes,
        };
        if tx.send(event).await.is_err() {
            return;
        }
    }
}

/// Polls the control plane's status and sends what changed. Quiet while none answers.
async fn mesh_events(state_dir: std::path::PathBuf, tx: mpsc::Sender<Event>) {
    let mut last: Option<StatusReport> = None;
    loop {
        let status = match AdminClient::from_state_dir(&state_dir) {
            Ok(client) => tokio::time::timeout(
                Duration::from_secs(2),
                client.get::<StatusReport>(meshapi::wire::STATUS_PATH),
            )
            .await
            .ok()
            .and_then(Result::ok),
            Err(_) => None,
        };
        if let Some(status) = status {
            if let Some(before) = &last {
                for e in status_events(before, &status) {
                    if tx.send(e).await.is_err() {
                        return;
                    }
                }
            }
            last = Some(status);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Follows one sidecar's log from now on for outlier ejections.
async fn ejections(engine: Engine, sidecar: String, service: String, tx: mpsc::Sender<Event>) {
    let since = OffsetDateTime::now_utc().unix_timestamp();
    let opts = LogsOptionsBuilder::new()
        .follow(true)
        .stdout(true)
        .stderr(true)
        .since(i32::try_from(since).unwrap_or(i32::MAX))
        .build();
    let mut logs = engine.docker.logs(&sidecar, Some(opts));
    while let Some(Ok(chunk)) = logs.next().await {
        let text = chunk.to_string();
        for line in text.lines() {
            let Some(fields) = ejection(line) else {
                continue;
            };
            let attrs: Vec<(&str, String)> = fields
                .iter()
                .map(|(k, v)| (k.as_str(), v.clone()))
                .collect();
            if tx
                .send(Event::mesh("ejection", sidecar.clone(), &service, &attrs))
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// `meshctl events`: streams until interrupted (or stdout closes).
pub fn events(args: &ProjectArgs, ev: &EventsArgs) -> anyhow::Result<ExitCode> {
    let target = Target::resolve(args)?;
    super::commands::runtime()?.block_on(async {
        let engine = Engine::connect().await?;
        let containers = target.containers(&engine).await?;
        let (tx, mut rx) = mpsc::channel::<Event>(256);
        tokio::spawn(engine_events(
            engine.clone(),
            target.name.clone(),
            tx.clone(),
        ));
        tokio::spawn(mesh_events(target.state_dir_on(&containers), tx.clone()));
        for c in containers
            .iter()
            .filter(|c| c.role() == Some(Role::Sidecar) && c.state == "running")
        {
            tokio::spawn(ejections(
                engine.clone(),
                c.name.clone(),
                c.label(LABEL_SERVICE).to_string(),
                tx.clone(),
            ));
        }
        drop(tx);
        let wanted = |e: &Event| {
            e.service.is_empty() || ev.services.is_empty() || ev.services.contains(&e.service)
        };
        let mut out = std::io::stdout();
        loop {
            let event = tokio::select! {
                e = rx.recv() => e,
                _ = tokio::signal::ctrl_c() => None,
            };
            let Some(event) = event else { break };
            if !wanted(&event) {
                continue;
            }
            if ev.json {
                writeln!(out, "{}", serde_json::to_string(&event)?)?;
            } else {
                writeln!(out, "{}", event.line())?;
            }
            out.flush()?;
        }
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controlplane::api::IdentityStatus;
    use crate::controlplane::push::ProxyStatus;

    fn proxy(name: &str, acked: Option<u64>, nacked: Option<u64>) -> ProxyStatus {
        ProxyStatus {
            proxy: name.into(),
            identity: String::new(),
            version: 1,
            sent: acked,
            acked,
            nacked,
            nack_error: nacked.map(|_| "bad route".into()),
            connected: true,
            connected_since_ms: None,
            remote: None,
            proxy_epoch: None,
            ready_since_ms: None,
            stats: None,
        }
    }

    fn status(
        epoch: u64,
        reload_at: u64,
        ok: bool,
        proxies: Vec<ProxyStatus>,
        serial: &str,
    ) -> StatusReport {
        StatusReport {
            epoch,
            revision: 3,
            proxies,
            last_reload: crate::controlplane::ReloadReport {
                revision: 3,
                ok,
                at_unix_ms: reload_at,
                errors: if ok {
                    vec![]
                } else {
                    vec!["mesh/vs.yaml:4:3: error[E001]: unknown field".into()]
                },
                ..Default::default()
            },
            identities: vec![IdentityStatus {
                identity: "spiffe://cluster.local/ns/default/sa/backend".into(),
                not_after: 86_400,
                serial: serial.into(),
                issued_at: 0,
                expiry: Default::default(),
            }],
            ca_certificates: vec![],
            warnings: vec![],
        }
    }

    fn actions(events: &[Event]) -> Vec<(String, String)> {
        events
            .iter()
            .map(|e| (e.action.clone(), e.id.clone()))
            .collect()
    }

    #[test]
    fn status_changes_become_mesh_events() {
        let a = status(
            1,
            10,
            true,
            vec![proxy("backend-v1/0", Some(1), None)],
            "01",
        );
        assert!(status_events(&a, &a).is_empty(), "nothing changed");

        // A refused reload; a NACK; an ACK of a new version; a renewed certificate.
        let b = status(
            1,
            20,
            false,
            vec![
                proxy("backend-v1/0", Some(2), None),
                proxy("frontend/0", Some(1), Some(2)),
            ],
            "02",
        );
        let events = status_events(&a, &b);
        assert_eq!(
            actions(&events),
            [
                ("reload-refused".into(), "revision 3".into()),
                ("ack".into(), "backend-v1/0".into()),
                ("ack".into(), "frontend/0".into()),
                ("nack".into(), "frontend/0".into()),
                (
                    "cert-renewal".into(),
                    "spiffe://cluster.local/ns/default/sa/backend".into()
                ),
            ]
        );
        assert_eq!(
            events[0].attributes["error"],
            "mesh/vs.yaml:4:3: error[E001]: unknown field"
        );
        assert_eq!(events[1].service, "backend-v1");
        assert_eq!(events[3].attributes["error"], "bad route");
        assert!(events.iter().all(|e| e.kind == "mesh"));

        // A new epoch is the control plane restarting, nothing else.
        let c = status(2, 30, true, vec![], "03");
        assert_eq!(
            actions(&status_events(&b, &c)),
            [("control-plane-restart".into(), "epoch 2".into())]
        );
    }

    #[test]
    fn ejection_lines_are_read_from_the_sidecar_log() {
        let line = "2026-12-07T23:00:00.1Z  WARN meshproxy::traffic::cluster: outlier detection ejected an endpoint cluster=outbound|8080|v1|backend.default.svc.cluster.local endpoint=10.213.0.11:15006";
        assert_eq!(
            ejection(line).unwrap(),
            [
                (
                    "cluster".to_string(),
                    "outbound|8080|v1|backend.default.svc.cluster.local".to_string()
                ),
                ("endpoint".into(), "10.213.0.11:15006".into())
            ]
        );
        assert_eq!(ejection("GET / 200"), None);
    }

    #[test]
    fn text_lines_are_composes() {
        let e = Event {
            time: "2026-12-07T23:00:00Z".into(),
            kind: "container".into(),
            action: "start".into(),
            id: "abc".into(),
            service: "web".into(),
            attributes: BTreeMap::from([
                ("image".into(), "nginx".into()),
                ("name".into(), "p-web-1".into()),
            ]),
        };
        assert_eq!(
            e.line(),
            "2026-12-07T23:00:00Z container start abc (image=nginx, name=p-web-1)"
        );
    }
}
