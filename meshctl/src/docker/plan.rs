//! The desired state: one pod (sidecar + app) per replica of each compose service, with its
//! address, the two containers' create bodies and their config hashes. Pure: no engine calls,
//! so the mapping from compose to containers is testable on its own.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HealthConfig, HostConfig, Mount,
    MountType, NetworkingConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use meshapi::CLUSTER_DOMAIN;
use meshapi::ca_api::{
    ENV_BOOTSTRAP_TOKEN, ENV_CA_ADDR, ENV_CA_ROOTS_FILE, ENV_IDENTITY, ENV_INSTANCE, ENV_WORKLOAD,
};
use meshapi::proxy::SpiffeId;

use crate::controlplane::admin::TRUST_FILE;
use meshmodel::compose::{ComposeFile, DependsCondition, Restart, Service};

use super::network::{FIRST_POD_HOST, ProjectNetwork};
use super::*;

/// meshproxy's inbound port (Istio's).
pub const INBOUND_PORT: u16 = 15006;
/// meshproxy's health port (`/healthz/ready`).
pub const HEALTH_PORT: u16 = 15021;

/// Run the sidecar with `MESH_CAPTURE=1`: meshproxy installs the nftables rules that send
/// every inbound TCP connection to its inbound listener (15006), so nothing reaches the app
/// from the network without passing the sidecar (published ports reached from outside the
/// project network go to its edge listener, see `sidecar_body`), and every connection the
/// app opens to the outbound capture listener (15001; the control plane compiles
/// container-mode proxies with it and without per-VIP listeners, which would collide with an
/// app listening on `0.0.0.0` on the same port). Off only for a meshproxy without capture.
pub const SIDECAR_CAPTURE: bool = true;

/// What the plan is made from.
#[derive(Debug)]
pub struct PlanInput<'a> {
    pub project: &'a str,
    pub project_dir: &'a Path,
    pub compose: &'a ComposeFile,
    pub network: &'a ProjectNetwork,
    /// Engine name of each compose network other than `default` (`network::ensure_named`).
    pub networks: &'a BTreeMap<String, String>,
    /// Sidecar image name and ID.
    pub proxy_image: (&'a str, &'a str),
    /// Image name and ID of each compose service.
    pub images: &'a BTreeMap<String, (String, String)>,
    /// Addresses of existing sidecars, kept across runs: (service, instance) -> IP.
    pub existing_ips: &'a BTreeMap<(String, u32), Ipv4Addr>,
    /// The directory holding the mesh trust bundle (`.mesh/trust/`), mounted read-only into
    /// every sidecar: it reads its roots there at each start.
    pub trust_dir: &'a Path,
    /// Trust domain of identities.
    pub trust_domain: &'a str,
}

/// One replica of one compose service.
#[derive(Debug, Clone)]
pub struct PodPlan {
    pub service: String,
    /// In the mesh; false (`x-mesh.enabled: false`): no sidecar, the app alone on the
    /// networks at `ip` (`sidecar*` fields unused).
    pub meshed: bool,
    pub instance: u32,
    pub mesh_service: String,
    /// The sidecar's identity; none when not meshed.
    pub identity: Option<SpiffeId>,
    pub ip: Ipv4Addr,
    pub sidecar_name: String,
    pub app_name: String,
    /// Create body of the sidecar, without its bootstrap token (see [`with_token`]).
    pub sidecar: ContainerCreateBody,
    pub sidecar_hash: String,
    pub app: ContainerCreateBody,
    pub app_hash: String,
    /// The compose networks besides the mesh network, connected before start (engine name,
    /// endpoint with aliases and fixed address): the sidecar's, or the app's when not meshed.
    pub networks: Vec<(String, EndpointSettings)>,
    /// The app has a healthcheck (compose's or the image's is not known here: compose's).
    pub has_healthcheck: bool,
}

/// The whole desired project.
#[derive(Debug, Clone)]
pub struct Plan {
    pub pods: Vec<PodPlan>,
    /// Compose services in start order (dependencies first).
    pub order: Vec<String>,
    /// `depends_on` of each service.
    pub depends: BTreeMap<String, Vec<(String, DependsCondition)>>,
    /// Named volumes to create: full name.
    pub volumes: Vec<String>,
}

impl Plan {
    /// The inbound address of every pod, for the control plane's placement.
    pub fn placement(&self) -> meshmodel::compile::FixedPlacement {
        meshmodel::compile::FixedPlacement(
            self.pods
                .iter()
                .filter(|p| p.meshed)
                .map(|p| {
                    (
                        (p.service.clone(), p.instance),
                        SocketAddr::from((p.ip, INBOUND_PORT)),
                    )
                })
                .collect(),
        )
    }
}

/// Why a plan cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("no free address left on the project network for {0}")]
    NoAddress(String),
    #[error("service {service}: {message}")]
    Service { service: String, message: String },
    #[error("depends_on cycle through {0}")]
    Cycle(String),
}

/// Container name of replica `instance` (0-based) of `service`: compose's `<project>-<service>-<n>`.
pub fn app_name(project: &str, service: &str, instance: u32) -> String {
    format!("{project}-{service}-{}", instance + 1)
}

/// The sidecar's container name.
pub fn sidecar_name(project: &str, service: &str, instance: u32) -> String {
    format!("{}-proxy", app_name(project, service, instance))
}

/// The next free address on the mesh network for `(service, instance)`, the one it had when
/// it is still there.
fn address(
    input: &PlanInput<'_>,
    used: &mut Vec<Ipv4Addr>,
    service: &str,
    instance: u32,
) -> Result<Ipv4Addr, PlanError> {
    match input.existing_ips.get(&(service.to_string(), instance)) {
        Some(ip) if input.network.contains(*ip) => Ok(*ip),
        _ => {
            let ip = (FIRST_POD_HOST..=254)
                .map(|n| input.network.host(n))
                .find(|ip| !used.contains(ip))
                .ok_or_else(|| PlanError::NoAddress(service.to_string()))?;
            used.push(ip);
            Ok(ip)
        }
    }
}

/// The compose networks a service joins besides the mesh network, in `priority` order
/// (highest first, as compose connects them), with its aliases (`implicit` first) and fixed
/// address.
fn endpoints(
    input: &PlanInput<'_>,
    svc: &Service,
    implicit: &[&str],
) -> Result<Vec<(String, EndpointSettings)>, String> {
    let mut nets: Vec<_> = svc
        .networks
        .iter()
        .filter(|(k, _)| *k != "default")
        .collect();
    nets.sort_by_key(|(k, n)| (std::cmp::Reverse(n.priority.unwrap_or(0)), k.as_str()));
    nets.into_iter()
        .map(|(key, n)| {
            let name = input
                .networks
                .get(key)
                .ok_or_else(|| format!("network {key:?} is not defined"))?;
            let mut aliases: Vec<String> = implicit.iter().map(|a| a.to_string()).collect();
            aliases.extend(n.aliases.iter().cloned());
            let endpoint = EndpointSettings {
                aliases: (!aliases.is_empty()).then_some(aliases),
                ipam_config: n.ipv4_address.as_ref().map(|ip| EndpointIpamConfig {
                    ipv4_address: Some(ip.clone()),
                    ..EndpointIpamConfig::default()
                }),
                ..EndpointSettings::default()
            };
            Ok((name.clone(), endpoint))
        })
        .collect()
}

/// The labels every container of a pod carries.
fn pod_labels(
    input: &PlanInput<'_>,
    (service, mesh_service): (&str, &str),
    instance: u32,
    role: Role,
    identity: &str,
    ip: Ipv4Addr,
) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_PROJECT.into(), input.project.into()),
        (LABEL_COMPOSE_PROJECT.into(), input.project.into()),
        (LABEL_COMPOSE_SERVICE.into(), service.into()),
        (LABEL_COMPOSE_NUMBER.into(), (instance + 1).to_string()),
        (LABEL_SERVICE.into(), service.into()),
        (LABEL_MESH_SERVICE.into(), mesh_service.into()),
        (LABEL_INSTANCE.into(), instance.to_string()),
        (LABEL_ROLE.into(), role.as_str().into()),
        (LABEL_IDENTITY.into(), identity.into()),
        (LABEL_IP.into(), ip.to_string()),
    ])
}

/// Builds the plan.
pub fn plan(input: &PlanInput<'_>) -> Result<Plan, PlanError> {
    let mut used: Vec<Ipv4Addr> = input.existing_ips.values().copied().collect();
    let mut pods = Vec::new();
    let mut volumes = Vec::new();
    let mut workloads = input.compose.workloads();
    workloads.sort_by(|a, b| a.name.cmp(b.name));
    // What a container kept out of the mesh resolves mesh services to: their pods (no
    // sidecar of its own to route a VIP).
    let mut mesh_hosts: Vec<String> = Vec::new();
    // Process services (`x-mesh.process`, `x-mesh.endpoint`) are the process runner's
    // (`crate::process`).
    for w in workloads.iter().filter(|w| w.service.is_container()) {
        let svc_err = |message: String| PlanError::Service {
            service: w.name.to_string(),
            message,
        };
        let identity = SpiffeId::new(input.trust_domain, w.namespace, w.service_account)
            .map_err(|e| svc_err(e.to_string()))?;
        let (image, image_id) = input
            .images
            .get(w.name)
            .cloned()
            .ok_or_else(|| svc_err("no image".into()))?;
        let networks = endpoints(input, w.service, &[]).map_err(svc_err)?;
        let networks_json = serde_json::to_value(&networks).unwrap_or_default();
        for instance in 0..w.replicas {
            let ip = address(input, &mut used, w.name, instance)?;
            for host in [
                w.mesh_service.to_string(),
                format!("{}.{}.svc.{CLUSTER_DOMAIN}", w.mesh_service, w.namespace),
            ] {
                mesh_hosts.push(format!("{host}:{ip}"));
            }
            let id = identity.to_string();
            let labels =
                |role| pod_labels(input, (w.name, w.mesh_service), instance, role, &id, ip);
            let sname = sidecar_name(input.project, w.name, instance);
            let aname = app_name(input.project, w.name, instance);
            let mut sidecar =
                sidecar_body(input, w.service, w.name, instance, ip, &identity).map_err(svc_err)?;
            let mut sl = labels(Role::Sidecar);
            let sidecar_hash = hash(
                &[
                    &serde_json::to_value(&sidecar).unwrap_or_default(),
                    &networks_json,
                ],
                &[input.proxy_image.1],
            );
            sl.insert(LABEL_CONFIG_HASH.into(), sidecar_hash.clone());
            sidecar.labels = Some(sl);
            sidecar.image = Some(input.proxy_image.0.to_string());

            let (mut app, vols) =
                app_body(input, w.service, w.name, Some(&sname)).map_err(svc_err)?;
            for v in vols {
                if !volumes.contains(&v) {
                    volumes.push(v);
                }
            }
            let mut al = labels(Role::App);
            al.extend(w.service.labels.clone());
            app.labels = Some(al.clone());
            let app_hash = hash(
                &[&serde_json::to_value(&app).unwrap_or_default()],
                &[&image_id, &sidecar_hash],
            );
            al.insert(LABEL_CONFIG_HASH.into(), app_hash.clone());
            app.labels = Some(al);
            app.image = Some(image.clone());
            pods.push(PodPlan {
                service: w.name.to_string(),
                meshed: true,
                instance,
                mesh_service: w.mesh_service.to_string(),
                identity: Some(identity.clone()),
                ip,
                sidecar_name: sname,
                app_name: aname,
                sidecar,
                sidecar_hash,
                app,
                app_hash,
                networks: networks.clone(),
                has_healthcheck: has_healthcheck(w.service),
            });
        }
    }
    for (name, svc) in input.compose.unmeshed() {
        let svc_err = |message: String| PlanError::Service {
            service: name.to_string(),
            message,
        };
        let (image, image_id) = input
            .images
            .get(name)
            .cloned()
            .ok_or_else(|| svc_err("no image".into()))?;
        let networks = endpoints(input, svc, &[name]).map_err(svc_err)?;
        let networks_json = serde_json::to_value(&networks).unwrap_or_default();
        for instance in 0..svc.replicas() {
            let ip = address(input, &mut used, name, instance)?;
            let aname = app_name(input.project, name, instance);
            let (mut app, vols) = app_body(input, svc, name, None).map_err(svc_err)?;
            for v in vols {
                if !volumes.contains(&v) {
                    volumes.push(v);
                }
            }
            // On the mesh network at its own address, reached by its compose name through
            // Docker's DNS; mesh services resolve to their pods.
            app.hostname = Some(
                svc.hostname
                    .clone()
                    .unwrap_or_else(|| format!("{name}-{}", instance + 1)),
            );
            if let Some(hc) = app.host_config.as_mut() {
                hc.network_mode = Some(input.network.name.clone());
                let mut hosts: Vec<String> = svc
                    .extra_hosts
                    .iter()
                    .map(|h| h.replacen('=', ":", 1))
                    .collect();
                hosts.extend(mesh_hosts.iter().cloned());
                hc.extra_hosts = Some(hosts);
                hc.port_bindings = Some(published_ports(svc).1);
            }
            app.exposed_ports = Some(published_ports(svc).0);
            app.networking_config = Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    input.network.name.clone(),
                    EndpointSettings {
                        aliases: Some(vec![name.to_string()]),
                        ipam_config: Some(EndpointIpamConfig {
                            ipv4_address: Some(ip.to_string()),
                            ..EndpointIpamConfig::default()
                        }),
                        ..EndpointSettings::default()
                    },
                )])),
            });
            let mut al = pod_labels(input, (name, ""), instance, Role::App, "", ip);
            al.extend(svc.labels.clone());
            let app_hash = hash(
                &[
                    &serde_json::to_value(&app).unwrap_or_default(),
                    &networks_json,
                ],
                &[&image_id],
            );
            al.insert(LABEL_CONFIG_HASH.into(), app_hash.clone());
            app.labels = Some(al);
            app.image = Some(image.clone());
            pods.push(PodPlan {
                service: name.to_string(),
                meshed: false,
                instance,
                mesh_service: String::new(),
                identity: None,
                ip,
                sidecar_name: String::new(),
                app_name: aname,
                sidecar: ContainerCreateBody::default(),
                sidecar_hash: String::new(),
                app,
                app_hash,
                networks: networks.clone(),
                has_healthcheck: has_healthcheck(svc),
            });
        }
    }
    let depends: BTreeMap<String, Vec<(String, DependsCondition)>> = input
        .compose
        .services
        .iter()
        .map(|(name, s)| {
            (
                name.clone(),
                s.depends_on
                    .iter()
                    .map(|(d, c)| (d.clone(), c.condition))
                    .collect(),
            )
        })
        .collect();
    let order = topo_order(&depends)?;
    Ok(Plan {
        pods,
        order,
        depends,
        volumes,
    })
}

fn has_healthcheck(svc: &Service) -> bool {
    svc.healthcheck
        .as_ref()
        .is_some_and(|h| h.disable != Some(true) && h.test.is_some())
}

/// The exposed `target/protocol` of every compose port, and the host bindings of the
/// published ones.
fn published_ports(svc: &Service) -> (Vec<String>, HashMap<String, Option<Vec<PortBinding>>>) {
    let mut exposed = Vec::new();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &svc.ports {
        let key = format!("{}/{}", p.target, p.protocol);
        exposed.push(key.clone());
        if let Some(published) = &p.published {
            bindings
                .entry(key)
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_with(Vec::new)
                .push(PortBinding {
                    host_ip: p.host_ip.clone(),
                    host_port: Some(published.clone()),
                });
        }
    }
    (exposed, bindings)
}

/// The sidecar's body with its pod token (never part of the hash: it changes each time the
/// sidecar is created; it stays valid across Docker's restarts of that container).
pub fn with_token(body: &ContainerCreateBody, token: &str) -> ContainerCreateBody {
    let mut b = body.clone();
    let env = b.env.get_or_insert_with(Vec::new);
    env.push(format!("{ENV_BOOTSTRAP_TOKEN}={token}"));
    b
}

/// Where a sidecar sees the project's `.mesh/trust/` (read-only).
pub const SIDECAR_TRUST_DIR: &str = "/etc/mesh/trust";

/// What a pod's proxy is told through its environment.
#[derive(Debug, Clone)]
pub struct ProxyEnv<'a> {
    /// The /24's `.1`: where the control plane listens.
    pub gateway: Ipv4Addr,
    /// The /24 (network address).
    pub subnet: Ipv4Addr,
    /// meshdns, never captured.
    pub dns: Ipv4Addr,
    pub identity: &'a SpiffeId,
    pub workload: &'a str,
    pub instance: u32,
    /// The trust bundle file as the proxy sees it (`MESH_CA_ROOTS_FILE`).
    pub roots_file: &'a str,
    /// Published application ports: the project's edge.
    pub edge_ports: &'a [u16],
}

/// The environment of a pod's meshproxy (container or process), without its bootstrap token
/// (see [`with_token`]): control-plane mode, identity, and with [`SIDECAR_CAPTURE`] the
/// capture settings.
pub fn proxy_env(p: &ProxyEnv<'_>) -> Vec<String> {
    let mut env = vec![
        format!("{ENV_CA_ADDR}={}:15012", p.gateway),
        format!("{ENV_IDENTITY}={}", p.identity),
        format!("{ENV_WORKLOAD}={}", p.workload),
        format!("{ENV_INSTANCE}={}", p.instance),
        format!("{ENV_CA_ROOTS_FILE}={}", p.roots_file),
        // Plain log lines: `meshctl logs --proxy` is read in terminals and files alike.
        "NO_COLOR=1".into(),
    ];
    if SIDECAR_CAPTURE {
        env.push("MESH_CAPTURE=1".into());
        // Published ports are the project's edge (as an ingress gateway would be): reached
        // from the host (through the network's gateway) or from other machines (Docker's
        // DNAT keeps their address), they go to the sidecar's edge listener: plaintext, the
        // workload's AuthorizationPolicy without a principal. From inside the project
        // network the same port is an mTLS port like any other.
        let mut edge: Vec<String> = p.edge_ports.iter().map(u16::to_string).collect();
        edge.sort();
        edge.dedup();
        if !edge.is_empty() {
            env.push(format!("MESH_CAPTURE_EDGE_PORTS={}", edge.join(",")));
            env.push(format!("MESH_CAPTURE_MESH_NETWORK={}/24", p.subnet));
            env.push(format!("MESH_CAPTURE_EDGE_SOURCES={}", p.gateway));
        }
        // The app's every outbound connection is captured (outboundTrafficPolicy), except
        // DNS to meshdns.
        env.push(format!("MESH_CAPTURE_EXCLUDE_OUTBOUND={}", p.dns));
    }
    env
}

fn sidecar_body(
    input: &PlanInput<'_>,
    svc: &Service,
    name: &str,
    instance: u32,
    ip: Ipv4Addr,
    identity: &SpiffeId,
) -> Result<ContainerCreateBody, String> {
    let env = proxy_env(&ProxyEnv {
        gateway: input.network.gateway,
        subnet: input.network.subnet,
        dns: input.network.dns_ip(),
        identity,
        workload: name,
        instance,
        roots_file: &format!("{SIDECAR_TRUST_DIR}/{TRUST_FILE}"),
        edge_ports: &svc
            .ports
            .iter()
            .filter(|p| p.published.is_some())
            .map(|p| p.target)
            .collect::<Vec<_>>(),
    });
    let (exposed, bindings) = published_ports(svc);
    let ns = svc
        .x_mesh
        .as_ref()
        .and_then(|x| x.namespace.clone())
        .unwrap_or_else(|| "default".into());
    let hostname = svc
        .hostname
        .clone()
        .unwrap_or_else(|| format!("{name}-{}", instance + 1));
    Ok(ContainerCreateBody {
        hostname: Some(hostname),
        env: Some(env),
        entrypoint: Some(vec!["/meshproxy".into()]),
        cmd: Some(Vec::new()),
        exposed_ports: Some(exposed),
        host_config: Some(HostConfig {
            network_mode: Some(input.network.name.clone()),
            port_bindings: Some(bindings),
            // The mesh's own piece comes back after a crash or a daemon restart (`heal`
            // rejoins its app); `docker stop` and `meshctl down` stop it for good.
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            cap_add: Some(vec!["NET_ADMIN".into()]),
            binds: Some(vec![format!(
                "{}:{SIDECAR_TRUST_DIR}:ro",
                input.trust_dir.display()
            )]),
            dns: Some(vec![input.network.dns_ip().to_string()]),
            dns_search: Some(vec![
                format!("{ns}.svc.{CLUSTER_DOMAIN}"),
                format!("svc.{CLUSTER_DOMAIN}"),
                CLUSTER_DOMAIN.into(),
            ]),
            extra_hosts: Some(
                svc.extra_hosts
                    .iter()
                    .map(|h| h.replacen('=', ":", 1))
                    .collect(),
            ),
            ..HostConfig::default()
        }),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                input.network.name.clone(),
                EndpointSettings {
                    ipam_config: Some(EndpointIpamConfig {
                        ipv4_address: Some(ip.to_string()),
                        ..EndpointIpamConfig::default()
                    }),
                    ..EndpointSettings::default()
                },
            )])),
        }),
        ..ContainerCreateBody::default()
    })
}

fn command(c: &meshmodel::compose::Command) -> Result<Vec<String>, String> {
    match c {
        meshmodel::compose::Command::Exec(v) => Ok(v.clone()),
        meshmodel::compose::Command::Shell(s) => shell_split(s),
    }
}

/// Splits a command line as a POSIX shell would (quotes and backslashes; no expansion).
pub fn shell_split(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut has = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                has = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(format!("unclosed ' in {s:?}")),
                    }
                }
            }
            '"' => {
                has = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err(format!("unclosed \" in {s:?}")),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(format!("unclosed \" in {s:?}")),
                    }
                }
            }
            '\\' => {
                has = true;
                if let Some(c) = chars.next() {
                    cur.push(c);
                }
            }
            c if c.is_whitespace() => {
                if has {
                    out.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            c => {
                has = true;
                cur.push(c);
            }
        }
    }
    if has {
        out.push(cur);
    }
    Ok(out)
}

fn nanos(d: &Option<meshmodel::compose::ComposeDuration>) -> Option<i64> {
    d.as_ref()
        .map(|d| i64::try_from(d.0.as_nanos()).unwrap_or(i64::MAX))
}

fn environment(input: &PlanInput<'_>, svc: &Service) -> Result<Vec<String>, String> {
    Ok(service_env(input.project_dir, svc)?
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect())
}

/// A service's environment: its `env_file`s, then `environment` (a name without a value takes
/// it from meshctl's environment, as compose does).
pub fn service_env(project_dir: &Path, svc: &Service) -> Result<BTreeMap<String, String>, String> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for f in &svc.env_file {
        let path = project_dir.join(&f.path);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(_) if !f.required => continue,
            Err(e) => return Err(format!("env_file {}: {e}", path.display())),
        };
        let entries = meshmodel::compose::parse_env_file(&text)
            .map_err(|e| format!("env_file {}: {e}", path.display()))?;
        env.extend(meshmodel::compose::resolve_env_entries(
            entries,
            &meshmodel::compose::ProcessEnv,
        ));
    }
    add_env(&mut env, &svc.environment);
    Ok(env)
}

/// Adds compose-style variables to `env`: a name without a value takes it from meshctl's
/// environment (and is left out when that has none).
pub fn add_env(env: &mut BTreeMap<String, String>, vars: &BTreeMap<String, Option<String>>) {
    for (k, v) in vars {
        match v {
            Some(v) => {
                env.insert(k.clone(), v.clone());
            }
            None => {
                if let Ok(v) = std::env::var(k) {
                    env.insert(k.clone(), v);
                }
            }
        }
    }
}

/// Secrets (at `/run/secrets/<name>`) and configs (at `/<name>`) as read-only bind mounts of
/// their files.
fn file_mounts(input: &PlanInput<'_>, svc: &Service) -> Vec<Mount> {
    use meshmodel::compose::{config_target, secret_target};
    let secrets = svc
        .secrets
        .iter()
        .map(|r| (r, &input.compose.secrets, secret_target(r)));
    let configs = svc
        .configs
        .iter()
        .map(|r| (r, &input.compose.configs, config_target(r)));
    secrets
        .chain(configs)
        .filter_map(|(r, defined, target)| {
            let file = defined.get(&r.source)?.file.as_ref()?;
            let path = input.project_dir.join(file);
            let path = std::path::absolute(&path).unwrap_or(path);
            Some(Mount {
                target: Some(target),
                source: Some(path.to_string_lossy().into_owned()),
                typ: Some(MountType::BIND),
                read_only: Some(true),
                ..Mount::default()
            })
        })
        .collect()
}

fn app_body(
    input: &PlanInput<'_>,
    svc: &Service,
    name: &str,
    sidecar: Option<&str>,
) -> Result<(ContainerCreateBody, Vec<String>), String> {
    let mut mounts = file_mounts(input, svc);
    let mut volumes = Vec::new();
    for v in &svc.volumes {
        let kind = match v.kind.as_str() {
            "bind" => MountType::BIND,
            "volume" => MountType::VOLUME,
            "tmpfs" => MountType::TMPFS,
            other => return Err(format!("volume type {other:?} is not supported")),
        };
        let source = match (&kind, &v.source) {
            (MountType::VOLUME, Some(src)) => {
                let external = input
                    .compose
                    .volumes
                    .get(src)
                    .and_then(|d| d.as_ref())
                    .is_some_and(|d| d.external == Some(true));
                let explicit = input
                    .compose
                    .volumes
                    .get(src)
                    .and_then(|d| d.as_ref())
                    .and_then(|d| d.name.clone());
                let full = explicit.unwrap_or_else(|| format!("{}_{src}", input.project));
                if !external {
                    volumes.push(full.clone());
                }
                Some(full)
            }
            (_, s) => s.clone(),
        };
        mounts.push(Mount {
            target: Some(v.target.clone()),
            source,
            typ: Some(kind),
            read_only: v.read_only,
            ..Mount::default()
        });
    }
    let healthcheck = svc.healthcheck.as_ref().map(|h| {
        if h.disable == Some(true) {
            HealthConfig {
                test: Some(vec!["NONE".into()]),
                ..HealthConfig::default()
            }
        } else {
            HealthConfig {
                test: h.test.as_ref().map(|t| t.0.clone()),
                interval: nanos(&h.interval),
                timeout: nanos(&h.timeout),
                retries: h.retries.map(i64::from),
                start_period: nanos(&h.start_period),
                start_interval: nanos(&h.start_interval),
            }
        }
    });
    let restart = svc.restart.as_ref().map(|r| match r {
        Restart::No => RestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        },
        Restart::Always => RestartPolicy {
            name: Some(RestartPolicyNameEnum::ALWAYS),
            maximum_retry_count: None,
        },
        Restart::UnlessStopped => RestartPolicy {
            name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
            maximum_retry_count: None,
        },
        Restart::OnFailure(n) => RestartPolicy {
            name: Some(RestartPolicyNameEnum::ON_FAILURE),
            maximum_retry_count: n.map(i64::from),
        },
    });
    let _ = name;
    let body = ContainerCreateBody {
        env: Some(environment(input, svc)?),
        cmd: svc.command.as_ref().map(command).transpose()?,
        entrypoint: svc.entrypoint.as_ref().map(command).transpose()?,
        working_dir: svc.working_dir.clone(),
        user: svc.user.clone(),
        stop_signal: svc.stop_signal.clone(),
        stop_timeout: svc
            .stop_grace_period
            .as_ref()
            .map(|d| i64::try_from(d.0.as_secs()).unwrap_or(i64::MAX)),
        tty: svc.tty,
        open_stdin: svc.stdin_open,
        healthcheck,
        host_config: Some(HostConfig {
            network_mode: sidecar.map(|s| format!("container:{s}")),
            mounts: Some(mounts),
            restart_policy: restart,
            cap_add: (!svc.cap_add.is_empty()).then(|| svc.cap_add.clone()),
            cap_drop: (!svc.cap_drop.is_empty()).then(|| svc.cap_drop.clone()),
            readonly_rootfs: svc.read_only,
            init: svc.init,
            ..HostConfig::default()
        }),
        ..ContainerCreateBody::default()
    };
    Ok((body, volumes))
}

/// Services in an order where each comes after what it depends on.
pub fn topo_order(
    depends: &BTreeMap<String, Vec<(String, DependsCondition)>>,
) -> Result<Vec<String>, PlanError> {
    let mut order = Vec::new();
    let mut state: BTreeMap<&str, u8> = BTreeMap::new(); // 1 visiting, 2 done
    fn visit<'a>(
        n: &'a str,
        depends: &'a BTreeMap<String, Vec<(String, DependsCondition)>>,
        state: &mut BTreeMap<&'a str, u8>,
        order: &mut Vec<String>,
    ) -> Result<(), PlanError> {
        match state.get(n) {
            Some(2) => return Ok(()),
            Some(1) => return Err(PlanError::Cycle(n.to_string())),
            _ => {}
        }
        state.insert(n, 1);
        for (d, _) in depends.get(n).into_iter().flatten() {
            if depends.contains_key(d) {
                visit(d, depends, state, order)?;
            }
        }
        state.insert(n, 2);
        order.push(n.to_string());
        Ok(())
    }
    for n in depends.keys() {
        visit(n, depends, &mut state, &mut order)?;
    }
    Ok(order)
}

/// A stable hash of JSON values (object keys sorted) and extra strings.
pub fn hash(values: &[&serde_json::Value], extra: &[&str]) -> String {
    fn canon(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for k in keys {
                    out.push_str(&serde_json::to_string(k).unwrap_or_default());
                    out.push(':');
                    if let Some(v) = m.get(k) {
                        canon(v, out);
                    }
                    out.push(',');
                }
                out.push('}');
            }
            serde_json::Value::Array(a) => {
                out.push('[');
                for v in a {
                    canon(v, out);
                    out.push(',');
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut text = String::new();
    for v in values {
        canon(v, &mut text);
        text.push('\n');
    }
    for e in extra {
        text.push_str(e);
        text.push('\n');
    }
    let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    d.as_ref()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_split_handles_quotes() {
        assert_eq!(
            shell_split(r#"sh -c 'echo "hi there"' a\ b "x\"y""#).unwrap(),
            vec!["sh", "-c", "echo \"hi there\"", "a b", "x\"y"]
        );
        assert!(shell_split("echo 'oops").is_err());
        assert_eq!(shell_split("  ").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn hash_ignores_key_order() {
        let a = serde_json::json!({"a": 1, "b": [1, {"y": 2, "x": 1}]});
        let b = serde_json::json!({"b": [1, {"x": 1, "y": 2}], "a": 1});
        assert_eq!(hash(&[&a], &["i"]), hash(&[&b], &["i"]));
        assert_ne!(hash(&[&a], &["i"]), hash(&[&a], &["j"]));
    }

    #[test]
    fn topo_order_puts_dependencies_first_and_finds_cycles() {
        let d = |v: &[(&str, &[&str])]| -> BTreeMap<String, Vec<(String, DependsCondition)>> {
            v.iter()
                .map(|(k, ds)| {
                    (
                        k.to_string(),
                        ds.iter()
                            .map(|d| (d.to_string(), DependsCondition::ServiceStarted))
                            .collect(),
                    )
                })
                .collect()
        };
        let order = topo_order(&d(&[("a", &["b"]), ("b", &["c"]), ("c", &[])])).unwrap();
        assert_eq!(order, vec!["c", "b", "a"]);
        assert!(topo_order(&d(&[("a", &["b"]), ("b", &["a"])])).is_err());
    }
}
