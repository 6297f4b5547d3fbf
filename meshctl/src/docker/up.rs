//! `up`: make the engine match the plan, changing only what changed.
//!
//! 1. load and check the files; connect; make sure every image exists (build when asked or
//!    missing); find or create the network;
//! 2. plan every pod, keeping the addresses of existing sidecars;
//! 3. compare with what runs (config-hash labels): recreate what differs, remove replicas
//!    scaled away (and, with `--remove-orphans`, services no longer in the files);
//! 4. (re)start the control plane when a sidecar needs a bootstrap token or placement changed;
//!    meshdns; volumes;
//! 5. sidecars (in parallel), each waited for until `/healthz/ready` answers 200; then the
//!    apps in `depends_on` order, each after its dependencies reached their condition;
//! 6. with `--wait`, every app running and healthy.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::future::join_all;
use meshapi::diag::Severity;
use meshmodel::compose::DependsCondition;
use meshmodel::load;
use meshmodel::model::Mesh;

use super::cp::{self, PlacementFile};
use super::engine::{Engine, Owned};
use super::image;
use super::network::{self, ProjectNetwork};
use super::plan::{self, Plan, PlanInput, PodPlan};
use super::pod::{self, Ready};
use super::progress::Progress;
use super::{DockerError, LABEL_CONFIG_HASH, LABEL_IP, Role};
use crate::ca::{Ca, CaConfig};
use crate::controlplane::{ControlPlane, ProjectSpec};

/// `up`'s options (the CLI flags).
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// `-d`: leave the control plane running in the background.
    pub detach: bool,
    /// `--build`: build images before starting.
    pub build: bool,
    /// `--wait`: wait until every app is running and healthy.
    pub wait: bool,
    /// `--wait-timeout`.
    pub wait_timeout: Duration,
    /// Only these services (and what they depend on). Empty: all.
    pub services: Vec<String>,
    /// Remove pods of services no longer in the files.
    pub remove_orphans: bool,
    /// Sidecar and meshdns image instead of the built runtime image.
    pub proxy_image: Option<String>,
    /// `--no-build`: a missing image is an error, never built.
    pub no_build: bool,
    /// `--force-recreate`: recreate every planned container.
    pub force_recreate: bool,
    /// `--no-deps`: only the named services, not their dependencies.
    pub no_deps: bool,
}

impl Default for UpOptions {
    fn default() -> Self {
        UpOptions {
            detach: true,
            build: false,
            wait: true,
            wait_timeout: Duration::from_secs(120),
            services: Vec::new(),
            remove_orphans: false,
            proxy_image: None,
            no_build: false,
            force_recreate: false,
            no_deps: false,
        }
    }
}

/// A loaded project.
#[derive(Debug)]
pub struct Project {
    pub spec: ProjectSpec,
    pub mesh: Mesh,
    pub state_dir: PathBuf,
}

impl Project {
    /// Loads and checks the files; any error refuses.
    pub fn load(spec: &ProjectSpec) -> Result<Project, DockerError> {
        let loaded = load::load(&spec.load_options());
        let mut diags = loaded.diagnostics.clone();
        diags.extend(meshmodel::check::analyze(&loaded.mesh));
        let errors: Vec<String> = diags
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(|d| d.render(false))
            .collect();
        if !errors.is_empty() {
            return Err(DockerError::Invalid(errors.join("\n")));
        }
        Ok(Project {
            spec: spec.clone(),
            state_dir: spec.working_dir.join(".mesh"),
            mesh: loaded.mesh,
        })
    }

    /// The project name.
    pub fn name(&self) -> &str {
        &self.mesh.project
    }
}

/// What `up` left running.
#[derive(Debug)]
pub struct UpOutcome {
    pub plan: Plan,
    pub network: ProjectNetwork,
    /// Container name -> ID of every app container.
    pub apps: BTreeMap<String, String>,
    /// The control plane, when it runs in this process (foreground `up`).
    pub control_plane: Option<ControlPlane>,
}

/// Runs `up`.
pub async fn up(
    project: &Project,
    opts: &UpOptions,
    progress: &Progress,
) -> Result<UpOutcome, DockerError> {
    let name = project.name().to_string();
    let compose = project
        .mesh
        .compose
        .clone()
        .ok_or_else(|| DockerError::Invalid("no compose file found".into()))?;
    let engine = Engine::connect().await?;

    let (proxy_image, images) = ensure_images(&engine, project, opts, progress).await?;

    // Network.
    let (network, created) = network::ensure(&engine, &name).await?;
    progress.line(
        &format!("Network {}", network.name),
        if created { "Created" } else { "Running" },
    );

    let (networks, created) = network::ensure_named(&engine, &name, &compose).await?;
    for n in created {
        progress.line(&format!("Network {n}"), "Created");
    }
    let ports_from_images = image_ports(&engine, &compose, &images, progress).await?;

    // Plan.
    let existing = engine.containers(&name).await?;
    // A pod's address is on its sidecar, or on its app when it is kept out of the mesh.
    let existing_ips: BTreeMap<(String, u32), Ipv4Addr> = existing
        .iter()
        .filter(|c| matches!(c.role(), Some(Role::Sidecar | Role::App)))
        .filter_map(|c| Some((c.pod_key()?, c.label(LABEL_IP).parse().ok()?)))
        .collect();
    std::fs::create_dir_all(&project.state_dir).map_err(|source| DockerError::Io {
        path: project.state_dir.clone(),
        source,
    })?;
    // The control plane applies `x-mesh.certificateLifetime` at each reload; the same value
    // here keeps this CA (tokens, roots) configured as the one that signs.
    let ca_config = CaConfig {
        cert_lifetime: compose
            .certificate_lifetime()
            .unwrap_or(CaConfig::default().cert_lifetime),
        ..CaConfig::default()
    };
    let ca = Ca::open(&project.spec.working_dir, ca_config.clone())
        .map_err(|e| DockerError::ControlPlane(format!("CA: {e}")))?;
    // Sidecars read their trust roots from this directory at each start (the control plane
    // keeps it current through a root rotation).
    crate::controlplane::admin::write_trust_bundle(&project.state_dir, &ca)
        .map_err(|e| DockerError::ControlPlane(format!("trust bundle: {e}")))?;
    let trust_dir = std::path::absolute(&project.state_dir)
        .map_err(|source| DockerError::Io {
            path: project.state_dir.clone(),
            source,
        })?
        .join(crate::controlplane::admin::TRUST_DIR);
    let mut plan = plan::plan(&PlanInput {
        project: &name,
        project_dir: &project.mesh.project_dir,
        compose: &compose,
        network: &network,
        networks: &networks,
        proxy_image: (&proxy_image.0, &proxy_image.1),
        images: &images,
        existing_ips: &existing_ips,
        trust_dir: &trust_dir,
        trust_domain: &ca_config.trust_domain,
    })
    .map_err(|e| DockerError::Invalid(e.to_string()))?;
    if !opts.services.is_empty() {
        restrict(&mut plan, &opts.services, !opts.no_deps)?;
    }
    let mut procs = plan_processes(&engine, project, &network, &plan, &existing_ips, opts).await?;

    // Compare with what runs.
    let by_name: BTreeMap<&str, &Owned> = existing.iter().map(|c| (c.name.as_str(), c)).collect();
    let mut new_sidecars: Vec<&PodPlan> = Vec::new();
    // Sidecars that `stop` left as they were planned: started again (their pod token is
    // still valid while the container exists), not recreated, as compose starts a stopped
    // container whose configuration did not change.
    let mut start_sidecars: Vec<(&PodPlan, String)> = Vec::new();
    let mut new_apps: BTreeSet<String> = BTreeSet::new();
    let mut start_apps: BTreeMap<String, String> = BTreeMap::new();
    // Running apps kept as they are: (app name, app ID, sidecar ID), checked for a sidecar
    // that Docker restarted under them (`heal`).
    let mut kept_apps: Vec<(String, String, String)> = Vec::new();
    let mut remove: Vec<&Owned> = Vec::new();
    for p in &plan.pods {
        if !p.meshed {
            // No sidecar: the app alone, kept while its config is the same.
            match by_name.get(p.app_name.as_str()) {
                Some(c) if !opts.force_recreate && c.label(LABEL_CONFIG_HASH) == p.app_hash => {
                    if c.state != "running" {
                        start_apps.insert(p.app_name.clone(), c.id.clone());
                    }
                }
                app => {
                    remove.extend(app.copied());
                    new_apps.insert(p.app_name.clone());
                }
            }
            continue;
        }
        let sc = by_name.get(p.sidecar_name.as_str());
        // Running, or stopped (`stop`, a crash Docker gave up on): kept. Restarting, paused
        // or dead: recreated, as before.
        let sidecar_ok = !opts.force_recreate
            && sc.is_some_and(|c| {
                c.label(LABEL_CONFIG_HASH) == p.sidecar_hash
                    && matches!(c.state.as_str(), "running" | "exited" | "created")
            });
        if sidecar_ok
            && let Some(c) = sc
            && c.state != "running"
        {
            start_sidecars.push((p, c.id.clone()));
        }
        let app = by_name.get(p.app_name.as_str());
        if !sidecar_ok {
            if let Some(c) = sc {
                remove.push(c);
            }
            if let Some(c) = app {
                remove.push(c);
            }
            new_sidecars.push(p);
            new_apps.insert(p.app_name.clone());
            continue;
        }
        match app {
            Some(c) if c.label(LABEL_CONFIG_HASH) == p.app_hash => {
                if c.state != "running" {
                    start_apps.insert(p.app_name.clone(), c.id.clone());
                } else if let Some(sc) = sc
                    && sc.state == "running"
                {
                    kept_apps.push((p.app_name.clone(), c.id.clone(), sc.id.clone()));
                }
            }
            Some(c) => {
                remove.push(c);
                new_apps.insert(p.app_name.clone());
            }
            None => {
                new_apps.insert(p.app_name.clone());
            }
        }
    }
    let planned: BTreeSet<(String, u32)> = plan
        .pods
        .iter()
        .map(|p| (p.service.clone(), p.instance))
        .collect();
    let in_files: BTreeSet<String> = compose.services.keys().cloned().collect();
    for c in &existing {
        let Some(key) = c.pod_key() else { continue };
        if planned.contains(&key) {
            continue;
        }
        if !opts.services.is_empty() && !opts.services.contains(&key.0) && in_files.contains(&key.0)
        {
            continue; // not asked about
        }
        if in_files.contains(&key.0) || opts.remove_orphans {
            remove.push(c);
        } else if c.role() == Some(Role::App) {
            progress.note(&format!(
                "warning: found orphan container {} of service {} (not in the files); `meshctl up --remove-orphans` removes it",
                c.name, key.0
            ));
        }
    }

    // Remove first (apps before their sidecars).
    remove.sort_by_key(|c| c.role() != Some(Role::App));
    for c in &remove {
        progress.line(&format!("Container {}", c.name), "Removing");
        engine.remove_container(&c.id).await?;
        progress.line(&format!("Container {}", c.name), "Removed");
    }

    // Control plane.
    let mut fixed = full_placement(&plan, &existing);
    fixed.0.extend(process_placement(project, &procs));
    let mut placement = PlacementFile::new(cp::listen_addr(network.gateway), &fixed);
    placement.image_ports = ports_from_images;
    let running = cp::running(&project.state_dir);
    let same_placement = PlacementFile::read(&project.state_dir).as_ref() == Some(&placement);
    let restart_cp = running.is_none()
        || !same_placement
        || !new_sidecars.is_empty()
        || !procs.create.is_empty()
        || !opts.detach;
    let mut control_plane = None;
    let mut tokens = BTreeMap::new();
    if restart_cp {
        if running.is_some() {
            progress.line("Control plane", "Restarting");
            let dir = project.state_dir.clone();
            let _ = tokio::task::spawn_blocking(move || cp::stop(&dir)).await;
        }
        let ca = Ca::open(&project.spec.working_dir, ca_config.clone())
            .map_err(|e| DockerError::ControlPlane(format!("CA: {e}")))?;
        // The pod tokens of the sidecars removed above die with them; a recreated sidecar
        // gets a new one.
        let removed: BTreeSet<&str> = remove
            .iter()
            .filter(|c| c.role() == Some(Role::Sidecar))
            .map(|c| c.name.as_str())
            .collect();
        ca.revoke_pod_tokens(|holder| removed.contains(holder))
            .map_err(|e| DockerError::ControlPlane(format!("revoking pod tokens: {e}")))?;
        for p in &new_sidecars {
            let Some(identity) = &p.identity else {
                continue;
            };
            let t = ca
                .issue_pod_token(identity, &p.sidecar_name)
                .map_err(|e| DockerError::ControlPlane(format!("pod token: {e}")))?;
            tokens.insert(p.sidecar_name.clone(), t.as_str().to_string());
        }
        drop(ca);
        crate::process::up::issue_tokens(project, &mut procs)
            .map_err(|e| DockerError::Process(e.to_string()))?;
        placement.write(&project.state_dir)?;
        if opts.detach {
            let spec = project.spec.clone();
            let pl = placement.clone();
            let pid = tokio::task::spawn_blocking(move || cp::spawn_background(&spec, &pl))
                .await
                .map_err(|e| DockerError::ControlPlane(e.to_string()))??;
            progress.line(
                "Control plane",
                &format!("Started (pid {pid}, {})", placement.listen),
            );
        } else {
            let cp = cp::start_in_process(&project.spec, &placement).await?;
            progress.line("Control plane", &format!("Started ({})", cp.local_addr()));
            control_plane = Some(cp);
        }
    } else {
        progress.line("Control plane", "Running");
    }

    // meshdns.
    let dns_name = super::dns::name(&name);
    let state_abs = std::path::absolute(&project.state_dir).map_err(|source| DockerError::Io {
        path: project.state_dir.clone(),
        source,
    })?;
    let (dns_body, dns_hash) = super::dns::body(
        &name,
        &network,
        (&proxy_image.0, &proxy_image.1),
        &state_abs,
        &project.mesh.files,
    );
    let dns = by_name
        .get(dns_name.as_str())
        .filter(|c| c.label(LABEL_CONFIG_HASH) == dns_hash);
    if let Some(c) = dns.filter(|c| c.state != "running") {
        progress.line(&format!("Container {dns_name}"), "Starting");
        engine
            .docker
            .start_container(
                &c.id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(DockerError::api(format!("starting {dns_name}")))?;
        progress.line(&format!("Container {dns_name}"), "Started");
    } else if dns.is_none() {
        if let Some(c) = by_name.get(dns_name.as_str()) {
            engine.remove_container(&c.id).await?;
        }
        progress.line(&format!("Container {dns_name}"), "Starting");
        pod::create_and_start(&engine, &dns_name, "meshdns", dns_body).await?;
        progress.line(&format!("Container {dns_name}"), "Started");
    } else {
        progress.line(&format!("Container {dns_name}"), "Running");
    }

    // Volumes.
    for v in &plan.volumes {
        let labels = std::collections::HashMap::from([
            (super::LABEL_PROJECT.to_string(), name.clone()),
            (super::LABEL_COMPOSE_PROJECT.to_string(), name.clone()),
        ]);
        let req = bollard::models::VolumeCreateRequest {
            name: Some(v.clone()),
            labels: Some(labels),
            ..Default::default()
        };
        engine
            .docker
            .create_volume(req)
            .await
            .map_err(DockerError::api(format!("creating volume {v}")))?;
    }

    // Sidecars, in parallel.
    let sidecar_timeout = Duration::from_secs(60);
    let started = join_all(new_sidecars.iter().map(|p| {
        let engine = &engine;
        let token = tokens.get(&p.sidecar_name).cloned().unwrap_or_default();
        async move {
            let label = format!("Container {}", p.sidecar_name);
            progress.line(&label, "Starting");
            let body = plan::with_token(&p.sidecar, &token);
            let id =
                pod::create_and_start_on(engine, &p.sidecar_name, &p.service, body, &p.networks)
                    .await?;
            progress.line(&label, "Waiting for the proxy");
            pod::wait_sidecar(engine, &p.sidecar_name, &id, p.ip, sidecar_timeout).await?;
            progress.line(&label, "Ready");
            Ok::<(), DockerError>(())
        }
    }))
    .await;
    for r in started {
        r?;
    }
    let restarted = join_all(start_sidecars.iter().map(|(p, id)| {
        let engine = &engine;
        async move {
            let label = format!("Container {}", p.sidecar_name);
            progress.line(&label, "Starting");
            engine
                .docker
                .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
                .await
                .map_err(DockerError::api(format!("starting {}", p.sidecar_name)))?;
            progress.line(&label, "Waiting for the proxy");
            pod::wait_sidecar(engine, &p.sidecar_name, id, p.ip, sidecar_timeout).await?;
            progress.line(&label, "Ready");
            Ok::<(), DockerError>(())
        }
    }))
    .await;
    for r in restarted {
        r?;
    }

    // Kept apps whose sidecar Docker restarted: restart them into its namespace.
    for (app, app_id, sidecar_id) in &kept_apps {
        if super::heal::stale_app(&engine, app_id, sidecar_id).await? {
            super::heal::restart_app(&engine, app, app_id).await?;
            progress.line(
                &format!("Container {app}"),
                "Restarted (its sidecar had restarted)",
            );
        }
    }

    // Process pods (x-mesh.process) on the project network, before the container apps (which
    // may depend on them).
    if !procs.keep.is_empty() || !procs.create.is_empty() || !procs.remove.is_empty() {
        crate::process::up::start_pods(project, &procs, opts.wait, opts.wait_timeout, progress)
            .await
            .map_err(|e| DockerError::Process(e.to_string()))?;
    }

    // Apps, in depends_on order.
    let mut app_ids: BTreeMap<String, String> = existing
        .iter()
        .filter(|c| c.role() == Some(Role::App) && !remove.iter().any(|r| r.id == c.id))
        .map(|c| (c.name.clone(), c.id.clone()))
        .collect();
    for service in plan.order.clone() {
        let pods: Vec<&PodPlan> = plan.pods.iter().filter(|p| p.service == service).collect();
        if pods.is_empty() {
            continue;
        }
        for (dep, cond) in plan.depends.get(&service).cloned().unwrap_or_default() {
            let want = match cond {
                DependsCondition::ServiceStarted => Ready::Started,
                DependsCondition::ServiceHealthy => Ready::Healthy,
                DependsCondition::ServiceCompletedSuccessfully => Ready::Completed,
            };
            for p in plan.pods.iter().filter(|p| p.service == dep) {
                if let Some(id) = app_ids.get(&p.app_name) {
                    pod::wait_app(&engine, &p.app_name, id, want, opts.wait_timeout).await?;
                }
            }
            // A process service it depends on (started above) reaches the same condition.
            crate::process::up::wait_service(project, &procs, &dep, cond, opts.wait_timeout)
                .await
                .map_err(|e| DockerError::Process(e.to_string()))?;
        }
        let results = join_all(pods.iter().map(|p| {
            let engine = &engine;
            let create = new_apps.contains(&p.app_name);
            let restart = start_apps.get(&p.app_name).cloned();
            async move {
                let label = format!("Container {}", p.app_name);
                if create {
                    progress.line(&label, "Starting");
                    // A pod kept out of the mesh joins the compose networks itself.
                    let networks: &[_] = if p.meshed { &[] } else { &p.networks };
                    let id = pod::create_and_start_on(
                        engine,
                        &p.app_name,
                        &p.service,
                        p.app.clone(),
                        networks,
                    )
                    .await?;
                    progress.line(&label, "Started");
                    Ok::<_, DockerError>(Some(id))
                } else if let Some(id) = restart {
                    engine
                        .docker
                        .start_container(
                            &id,
                            None::<bollard::query_parameters::StartContainerOptions>,
                        )
                        .await
                        .map_err(DockerError::api(format!("starting {}", p.app_name)))?;
                    progress.line(&label, "Started");
                    Ok(Some(id))
                } else {
                    progress.line(&label, "Running");
                    Ok(None)
                }
            }
        }))
        .await;
        for (p, r) in pods.iter().zip(results) {
            if let Some(id) = r? {
                app_ids.insert(p.app_name.clone(), id);
            }
        }
    }

    if opts.wait {
        let waits = join_all(plan.pods.iter().filter_map(|p| {
            let id = app_ids.get(&p.app_name)?.clone();
            let engine = &engine;
            Some(async move {
                let label = format!("Container {}", p.app_name);
                pod::wait_app(engine, &p.app_name, &id, Ready::Healthy, opts.wait_timeout).await?;
                progress.line(
                    &label,
                    if p.has_healthcheck {
                        "Healthy"
                    } else {
                        "Running"
                    },
                );
                Ok::<(), DockerError>(())
            })
        }))
        .await;
        for r in waits {
            r?;
        }
    }
    let apps = plan
        .pods
        .iter()
        .filter_map(|p| Some((p.app_name.clone(), app_ids.get(&p.app_name)?.clone())))
        .collect();
    Ok(UpOutcome {
        plan,
        network,
        apps,
        control_plane,
    })
}

/// The sidecar image and each service's image (tag, ID): found on the engine, built from a
/// compose `build:` (always with `opts.build`, else when missing), or built from the
/// workspace's static binaries. `up` and `build` share it.
pub async fn ensure_images(
    engine: &Engine,
    project: &Project,
    opts: &UpOptions,
    progress: &Progress,
) -> Result<((String, String), BTreeMap<String, (String, String)>), DockerError> {
    let proxy_image = proxy_image(engine, opts, progress).await?;
    let images = service_images(engine, project, opts, &[], progress).await?;
    Ok((proxy_image, images))
}

/// The sidecar and meshdns image (tag, ID): `--proxy-image`, or the runtime image built from
/// the workspace's static binaries when missing (or with `--build`).
pub async fn proxy_image(
    engine: &Engine,
    opts: &UpOptions,
    progress: &Progress,
) -> Result<(String, String), DockerError> {
    Ok(match &opts.proxy_image {
        Some(img) => {
            let id =
                image::image_id(engine, img)
                    .await?
                    .ok_or_else(|| DockerError::ImageMissing {
                        service: "(--proxy-image)".into(),
                        image: img.clone(),
                    })?;
            (img.clone(), id)
        }
        None => {
            let tag = image::runtime_image();
            if opts.no_build && image::image_id(engine, &tag).await?.is_none() {
                return Err(DockerError::NotBuilt {
                    service: "(sidecars and meshdns)".into(),
                    image: tag,
                });
            }
            let id = image::ensure_static_image(
                engine,
                &tag,
                &["meshproxy", "meshdns"],
                opts.build,
                progress,
            )
            .await?;
            (tag, id)
        }
    })
}

/// Each service's image (tag, ID), or only those of `only` when it names some (`build
/// SERVICE...`; a name not in the files is an error).
pub async fn service_images(
    engine: &Engine,
    project: &Project,
    opts: &UpOptions,
    only: &[String],
    progress: &Progress,
) -> Result<BTreeMap<String, (String, String)>, DockerError> {
    let name = project.name();
    let compose = project
        .mesh
        .compose
        .as_ref()
        .ok_or_else(|| DockerError::Invalid("no compose file found".into()))?;
    if let Some(unknown) = only.iter().find(|s| !compose.services.contains_key(*s)) {
        return Err(DockerError::Invalid(format!(
            "no service {unknown:?} in the files (services: {})",
            compose
                .services
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut images = BTreeMap::new();
    // Process services (`x-mesh.process`, `x-mesh.endpoint`) have no image.
    for (service, svc) in compose.services.iter().filter(|(_, s)| s.is_container()) {
        if !only.is_empty() && !only.contains(service) {
            continue;
        }
        let tag = svc
            .image
            .clone()
            .unwrap_or_else(|| format!("{name}-{service}"));
        let existing = image::image_id(engine, &tag).await?;
        if opts.no_build && existing.is_none() {
            return Err(DockerError::NotBuilt {
                service: service.clone(),
                image: tag,
            });
        }
        let id = match (&svc.build, existing) {
            (Some(_), Some(id)) if !opts.build => id,
            (Some(b), _) => {
                image::build_context(engine, &tag, b, &project.mesh.project_dir, progress).await?
            }
            (None, existing) => match (image::workspace_image(&tag), existing) {
                (Some(bin), _) => {
                    image::ensure_static_image(engine, &tag, &[bin], opts.build, progress).await?
                }
                (None, Some(id)) => id,
                (None, None) => {
                    return Err(DockerError::ImageMissing {
                        service: service.clone(),
                        image: tag,
                    });
                }
            },
        };
        images.insert(service.clone(), (tag, id));
    }
    Ok(images)
}

/// First host number of process pods on a Docker project network (sidecars take `.10` up).
const PROCESS_FIRST_HOST: u8 = 128;

/// The process services of a mixed project, planned on its Docker network (a veth on its
/// bridge per pod) and compared with what runs.
async fn plan_processes(
    engine: &Engine,
    project: &Project,
    network: &ProjectNetwork,
    plan: &Plan,
    existing_ips: &BTreeMap<(String, u32), Ipv4Addr>,
    opts: &UpOptions,
) -> Result<crate::process::up::Reconciled, DockerError> {
    use crate::process::commands::{has_pods, has_processes, selection};
    if !has_processes(project) && !has_pods(&project.state_dir) {
        return Ok(Default::default());
    }
    let bridge = network::bridge_name(engine, &network.name).await?;
    let pnet = crate::process::net::Network {
        subnet: network.subnet,
        gateway: network.gateway,
        dns: network.dns_ip(),
        attach: crate::process::net::Attach::Docker(bridge),
        first_host: PROCESS_FIRST_HOST,
    };
    let chosen = selection(project, &opts.services, !opts.no_deps);
    let taken: Vec<Ipv4Addr> = plan
        .pods
        .iter()
        .map(|p| p.ip)
        .chain(existing_ips.values().copied())
        .collect();
    let planned = crate::process::up::plan_on(project, &pnet, &taken, &|s| chosen.contains(s))
        .map_err(|e| DockerError::Process(e.to_string()))?;
    Ok(crate::process::up::reconcile(
        &project.state_dir,
        planned,
        &crate::process::commands::process_services(project),
        opts.force_recreate,
    ))
}

/// The inbound addresses of the process pods: the planned ones and those of other services
/// in the files left running (a partial `up SERVICE...`).
fn process_placement(
    project: &Project,
    procs: &crate::process::up::Reconciled,
) -> BTreeMap<(String, u32), std::net::SocketAddr> {
    let planned: BTreeSet<&str> = procs
        .keep
        .iter()
        .chain(&procs.create)
        .map(|p| p.name.as_str())
        .collect();
    let processes = crate::process::commands::process_services(project);
    let others: Vec<crate::process::PodSpec> = crate::process::PodSpec::all(&project.state_dir)
        .into_values()
        .filter(|p| !planned.contains(p.name.as_str()) && processes.contains(&p.service))
        .collect();
    crate::process::up::placement_of(procs.keep.iter().chain(&procs.create).chain(&others))
}

/// The ports the images EXPOSE of the mesh services that declare none, so callers get
/// routes to them (a `postgres` image serves 5432 without a line of compose saying so); one
/// whose image EXPOSEs nothing either is named in a warning.
async fn image_ports(
    engine: &Engine,
    compose: &meshmodel::compose::ComposeFile,
    images: &BTreeMap<String, (String, String)>,
    progress: &Progress,
) -> Result<BTreeMap<String, Vec<u16>>, DockerError> {
    let mut out = BTreeMap::new();
    for w in compose
        .workloads()
        .into_iter()
        .filter(|w| w.ports.is_empty())
    {
        let Some((tag, id)) = images.get(w.name) else {
            continue;
        };
        let ports = image::exposed_ports(engine, id).await?;
        if ports.is_empty() {
            progress.note(&format!(
                "warning: service {:?} declares no port (ports, expose or x-mesh.ports) and its image {tag} EXPOSEs none: callers get no route to it; declare the ports it serves with `expose:`",
                w.name
            ));
        } else {
            out.insert(w.name.to_string(), ports);
        }
    }
    Ok(out)
}

/// The placement of the planned pods plus, for a partial `up SERVICE...`, the pods left alone.
fn full_placement(plan: &Plan, existing: &[Owned]) -> meshmodel::compile::FixedPlacement {
    let mut p = plan.placement();
    for c in existing.iter().filter(|c| c.role() == Some(Role::Sidecar)) {
        if let (Some(key), Ok(ip)) = (c.pod_key(), c.label(LABEL_IP).parse::<Ipv4Addr>()) {
            p.0.entry(key)
                .or_insert_with(|| std::net::SocketAddr::from((ip, plan::INBOUND_PORT)));
        }
    }
    p
}

/// Keeps only the named services and (with `deps`) what they depend on.
fn restrict(plan: &mut Plan, services: &[String], deps: bool) -> Result<(), DockerError> {
    let mut keep: BTreeSet<String> = BTreeSet::new();
    let mut todo: Vec<String> = services.to_vec();
    while let Some(s) = todo.pop() {
        if !plan.depends.contains_key(&s) {
            return Err(DockerError::Invalid(format!(
                "no service {s:?} in the files"
            )));
        }
        if keep.insert(s.clone()) && deps {
            for (d, _) in plan.depends.get(&s).into_iter().flatten() {
                todo.push(d.clone());
            }
        }
    }
    plan.pods.retain(|p| keep.contains(&p.service));
    plan.order.retain(|s| keep.contains(s));
    Ok(())
}
