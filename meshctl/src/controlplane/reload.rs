//! One reload: load every file, check (the same code as `meshctl check`), compile every
//! proxy, publish the ones whose content changed, write meshdns's records and the VIP table.
//! An invalid mesh publishes nothing: the errors (file:line:column) go into the report that
//! `meshctl status` shows, and the last good snapshot keeps serving. Warnings (what Istio's
//! API server accepts and `istioctl analyze` flags) never block: the mesh is applied and the
//! findings are in the report, the reload output and `meshctl status`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use meshapi::diag::Severity;
use meshapi::dns::{Records, VipAllocator, VipRange};
use meshapi::proxy::ProxyConfig;
use meshmodel::check;
use meshmodel::compile::{self, CompileInput, HostPlacement, Placement, ProxyKey};
use meshmodel::load;
use meshmodel::model::Inventory;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::push::PushState;
use super::watch::Rewatch;
use super::{ControlPlaneConfig, ControlPlaneError, PlacementSpec, ProjectSpec, ReloadCmd, diff};
use crate::ca::Ca;

/// The outcome of one reload.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReloadReport {
    /// The revision in force after it (unchanged when invalid or nothing changed).
    pub revision: u64,
    /// False: the files are invalid and nothing was pushed.
    pub ok: bool,
    /// When it ran, Unix ms.
    pub at_unix_ms: u64,
    /// Every error, as `file:line:column: error[CODE]: ...`.
    pub errors: Vec<String>,
    /// Number of warnings.
    pub warnings: usize,
    /// Every warning (what Istio accepts and `istioctl analyze` flags: applied all the same),
    /// as `file:line:column: warning[CODE]: ...`, as `meshctl check` prints it.
    #[serde(default)]
    pub findings: Vec<String>,
    /// What changed in the model (`+`, `-`, `~` lines).
    pub diff: Vec<String>,
    /// Proxies whose config changed.
    pub changed: Vec<String>,
    /// Time from the first file event (or the request) to publish, ms.
    pub duration_ms: f64,
    /// Time of load + check alone, ms.
    pub load_check_ms: f64,
    /// Files read (for the watcher).
    #[serde(skip)]
    pub watched_files: Vec<PathBuf>,
    /// Directories read (for the watcher).
    #[serde(skip)]
    pub watched_dirs: Vec<PathBuf>,
}

/// What the reload task owns between reloads.
pub(crate) struct ReloadCtx {
    project: ProjectSpec,
    placement: PlacementSpec,
    trust_domain: String,
    vips: VipAllocator,
    vips_path: PathBuf,
    records_path: PathBuf,
    last_records: Option<Records>,
    compiled: BTreeMap<ProxyKey, ProxyConfig>,
    model: diff::Model,
    push: Arc<PushState>,
    ca: Arc<Ca>,
}

impl ReloadCtx {
    pub(crate) fn new(
        config: &ControlPlaneConfig,
        push: Arc<PushState>,
        ca: Arc<Ca>,
    ) -> Result<Self, ControlPlaneError> {
        let state = config.state_dir();
        let vips_path = state.join("vips.json");
        let vips = VipAllocator::load_or_new(&vips_path, VipRange::default())?;
        Ok(ReloadCtx {
            project: config.project.clone(),
            placement: config.placement.clone(),
            trust_domain: config.ca.trust_domain.clone(),
            vips,
            vips_path,
            records_path: config
                .records_file
                .clone()
                .unwrap_or_else(|| state.join("dns-records.json")),
            last_records: None,
            compiled: BTreeMap::new(),
            model: diff::Model::default(),
            push,
            ca,
        })
    }

    /// Runs one reload and stores its report as the last one.
    pub(crate) fn reload(&mut self, trigger: Option<Instant>) -> ReloadReport {
        let mut report = self.try_reload(trigger);
        if !report.ok {
            // The files are broken, but a new trust bundle must still reach every proxy
            // (a root rotation does not wait for a fixed file): the last good configs with it.
            if let Some(revision) = self.push_trust_only() {
                report.revision = revision;
            }
        }
        self.push.set_last_reload(report.clone());
        report
    }

    fn try_reload(&mut self, trigger: Option<Instant>) -> ReloadReport {
        let t0 = Instant::now();
        let start = trigger.unwrap_or(t0);
        let mut report = ReloadReport {
            revision: self.push.revision(),
            at_unix_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(0))
                .unwrap_or(0),
            ..ReloadReport::default()
        };
        let loaded = load::load(&self.project.load_options());
        let mut diags = loaded.diagnostics.clone();
        diags.extend(check::analyze(&loaded.mesh));
        report.load_check_ms = t0.elapsed().as_secs_f64() * 1000.0;
        report.watched_files = loaded.mesh.files.clone();
        report.watched_dirs = loaded.mesh.dirs.clone();
        report.findings = diags
            .iter()
            .filter(|d| d.severity == Severity::Warning)
            .map(|d| d.render(false))
            .collect();
        report.warnings = report.findings.len();
        report.errors = diags
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(|d| d.render(false))
            .collect();
        if !report.errors.is_empty() {
            report.duration_ms = start.elapsed().as_secs_f64() * 1000.0;
            return report;
        }
        let mesh = loaded.mesh;
        // `x-mesh.certificateLifetime` applies to every certificate issued from now on.
        self.ca
            .set_cert_lifetime(mesh.compose.as_ref().and_then(|c| c.certificate_lifetime()));
        let inventory = Inventory::from_compose(mesh.compose.as_ref());
        let before = self.vips.clone();
        if let Err(e) = self.vips.sync(
            meshmodel::compile::vip_services(&mesh, &inventory)
                .iter()
                .map(|(ns, n)| (ns.as_str(), n.as_str())),
        ) {
            report.errors.push(format!("VIP allocation: {e}"));
            self.vips = before;
            return report;
        }
        if self.vips != before
            && let Err(e) = self.vips.save(&self.vips_path)
        {
            tracing::warn!(error = %e, "cannot save the VIP table");
        }
        let placement: Box<dyn Placement> = match &self.placement {
            PlacementSpec::Host { base_port } => {
                Box::new(HostPlacement::new(&inventory, *base_port))
            }
            PlacementSpec::Fixed(f) => Box::new(f.clone()),
            PlacementSpec::Container(f) => Box::new(super::ContainerPlacement(f.clone())),
        };
        let epochs = self.push.epochs();
        let input = CompileInput {
            mesh: &mesh,
            inventory: &inventory,
            vips: &self.vips,
            placement: placement.as_ref(),
            revision: self.push.revision() + 1,
            trust_domain: &self.trust_domain,
            epochs: &epochs,
        };
        let compiled = match compile::compile_all(&input) {
            // Every proxy follows the CA's trust bundle: a root rotation (its start and its
            // end) changes every config, so the push tells every proxy at once.
            Ok(mut c) => {
                let bundle = self.ca.root_pem();
                for cfg in c.values_mut() {
                    cfg.identity.trust_bundle = Some(bundle.clone());
                }
                c
            }
            Err(e) => {
                report.errors.push(format!("compile: {e}"));
                return report;
            }
        };
        let model = diff::Model::of(&mesh);
        report.diff = diff::diff(&self.model, &model);
        self.model = model;
        self.write_records(compile::records(&mesh, &inventory, &self.vips));

        let mut changed = Vec::new();
        for (key, cfg) in &compiled {
            let same = self
                .compiled
                .get(key)
                .is_some_and(|old| old.same_content(cfg));
            if same {
                continue;
            }
            match serde_json::to_vec(cfg) {
                Ok(json) => changed.push((key.clone(), cfg.identity.spiffe_id.clone(), json)),
                Err(e) => report.errors.push(format!("serialize {key}: {e}")),
            }
        }
        let removed: Vec<ProxyKey> = self
            .compiled
            .keys()
            .filter(|k| !compiled.contains_key(*k))
            .cloned()
            .collect();
        report.ok = report.errors.is_empty();
        if !report.ok {
            return report;
        }
        report.changed = changed.iter().map(|(k, _, _)| k.to_string()).collect();
        report
            .changed
            .extend(removed.iter().map(|k| format!("{k} (removed)")));
        if !changed.is_empty() || !removed.is_empty() {
            report.revision = self.push.publish(changed, &removed);
        }
        self.compiled = compiled;
        report.duration_ms = start.elapsed().as_secs_f64() * 1000.0;
        tracing::info!(
            revision = report.revision,
            changed = report.changed.len(),
            ms = report.duration_ms,
            "mesh reloaded"
        );
        report
    }

    /// Publishes the last good configs again with the CA's current trust bundle where it
    /// differs; the revision, or `None` when every config already has it.
    fn push_trust_only(&mut self) -> Option<u64> {
        let bundle = self.ca.root_pem();
        let revision = self.push.revision() + 1;
        let mut changed = Vec::new();
        for (key, cfg) in &mut self.compiled {
            if cfg.identity.trust_bundle.as_deref() == Some(bundle.as_str()) {
                continue;
            }
            cfg.identity.trust_bundle = Some(bundle.clone());
            cfg.revision = revision;
            match serde_json::to_vec(&*cfg) {
                Ok(json) => changed.push((key.clone(), cfg.identity.spiffe_id.clone(), json)),
                Err(e) => tracing::error!(proxy = %key, error = %e, "cannot serialize a config"),
            }
        }
        if changed.is_empty() {
            return None;
        }
        tracing::info!(
            proxies = changed.len(),
            "the files have errors: pushed the new trust bundle with the last good configs"
        );
        Some(self.push.publish(changed, &[]))
    }

    fn write_records(&mut self, records: Records) {
        if self.last_records.as_ref() == Some(&records) && self.records_path.exists() {
            return;
        }
        match write_atomic(&self.records_path, &records) {
            Ok(()) => self.last_records = Some(records),
            Err(e) => tracing::warn!(
                path = %self.records_path.display(),
                error = %e,
                "cannot write the meshdns records file"
            ),
        }
    }
}

/// Writes JSON through a temporary file and a rename, so readers never see half a file.
pub(crate) fn write_atomic(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path)
}

/// Prints a report the way the control plane's console shows it.
pub fn print_report(r: &ReloadReport) {
    if !r.ok {
        println!("reload refused: the mesh keeps revision {}", r.revision);
        for e in &r.errors {
            println!("  {e}");
        }
        return;
    }
    for line in &r.diff {
        println!("{line}");
    }
    // Applied, as Istio applies them; shown so nobody mistakes them for enforced intent.
    for f in &r.findings {
        println!("  {f}");
    }
    if r.changed.is_empty() {
        println!("revision {}: no proxy config changed", r.revision);
    } else {
        println!(
            "revision {}: {} proxy config(s) changed in {:.1} ms",
            r.revision,
            r.changed.len(),
            r.duration_ms
        );
    }
}

/// Runs one reload on a blocking thread; `None` if it panicked.
async fn reload_blocking(
    mut ctx: ReloadCtx,
    trigger: Option<Instant>,
) -> Option<(ReloadCtx, ReloadReport)> {
    let joined = tokio::task::spawn_blocking(move || {
        let report = ctx.reload(trigger);
        (ctx, report)
    })
    .await;
    match joined {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(error = %e, "reload panicked; the control plane stops reloading");
            None
        }
    }
}

/// The reload task: one reload at a time, in a blocking thread (loading is file I/O and CPU).
pub(crate) async fn run(
    mut ctx: ReloadCtx,
    mut rx: mpsc::Receiver<ReloadCmd>,
    rewatch: Option<Rewatch>,
) {
    while let Some(cmd) = rx.recv().await {
        let Some((back, mut report)) = reload_blocking(ctx, cmd.trigger).await else {
            return;
        };
        ctx = back;
        let push = ctx.push.clone();
        if push.print {
            if let Some(note) = &cmd.note {
                println!("{note}");
            }
            print_report(&report);
        }
        // Newly watched paths (a new directory, a symlink swap): anything written there
        // between the load and the watch would be missed, so load once more.
        if let Some(w) = &rewatch
            && w.update(&report.watched_files, &report.watched_dirs)
        {
            let Some((back, again)) = reload_blocking(ctx, None).await else {
                return;
            };
            ctx = back;
            if push.print && (!again.ok || !again.changed.is_empty()) {
                print_report(&again);
            }
            if again.revision != report.revision || !again.ok {
                report = again;
            }
        }
        if report.ok && !report.changed.is_empty() && cmd.reply.is_none() {
            // A file edit: say when every affected proxy has the new config.
            let revision = report.revision;
            tokio::spawn(async move {
                let acks = push
                    .wait_acks(revision, std::time::Duration::from_secs(30))
                    .await;
                log_acks(&acks, push.print);
            });
        }
        if let Some(reply) = cmd.reply {
            let _ = reply.send(report);
        }
    }
}

fn log_acks(acks: &super::AckReport, print: bool) {
    tracing::info!(
        revision = acks.revision,
        acked = acks.acked.len(),
        refused = acks.refused.len(),
        pending = acks.pending.len(),
        ms = acks.elapsed_ms,
        "push acknowledged"
    );
    if !print {
        return;
    }
    println!(
        "revision {}: {} proxy(ies) ACKed in {:.1} ms",
        acks.revision,
        acks.acked.len(),
        acks.elapsed_ms
    );
    for (p, why) in &acks.refused {
        println!("  {p} REFUSED: {why}");
    }
    for p in &acks.pending {
        println!("  {p} has not answered");
    }
}
