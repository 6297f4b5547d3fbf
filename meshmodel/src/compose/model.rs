//! The typed compose model: the compose specification's common subset plus `x-mesh`.
//!
//! Field names are compose's. Every struct denies unknown fields; `x-*` extension keys are
//! taken out before typing (see `read.rs`) and kept in `extensions`. Serializing prints the
//! normalized long syntax, as `docker compose config` does.

use std::collections::BTreeMap;

use meshapi::yaml::Value;
use serde::{Deserialize, Serialize};

use super::objects::{Extends, FileObject, FileRef, Include};
use super::parts::{Build, Command, EnvFileRef, HealthTest, Port, Restart, Volume};
use super::syntax::{
    ComposeDuration, keyed_map_or_list, labels, map_or_list, opt_bool, opt_text, opt_u32,
    short_or_long, short_or_long_list, string_list,
};

/// One compose file, or the merge of several.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComposeFile {
    /// Obsolete; accepted and ignored with a warning, as compose does.
    #[serde(default, deserialize_with = "opt_text", skip_serializing)]
    pub version: Option<String>,
    /// Project name; see [`super::project_name`] for the precedence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The services, by compose name.
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
    /// Networks; a name with no body uses the defaults.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, Option<NetworkDef>>,
    /// Named volumes; a name with no body uses the defaults.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, Option<VolumeDef>>,
    /// Secrets, each from a file; mounted read-only at `/run/secrets/<name>` in the services
    /// that name them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, FileObject>,
    /// Configs, each from a file; mounted read-only at `/<name>` (or their `target`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub configs: BTreeMap<String, FileObject>,
    /// Other compose files whose services, networks, volumes, secrets and configs join this
    /// one's. Resolved by the loader; not printed by `config` (their content is).
    #[serde(default, deserialize_with = "short_or_long_list", skip_serializing)]
    pub include: Vec<Include>,
    /// Mesh-wide settings (top-level `x-mesh`). Default none: every setting at its default.
    #[serde(rename = "x-mesh", default, skip_serializing_if = "Option::is_none")]
    pub x_mesh: Option<MeshSettings>,
    /// Top-level `x-*` keys, kept as written (after interpolation).
    #[serde(flatten, skip_deserializing)]
    pub extensions: BTreeMap<String, Value>,
}

/// The top-level `x-mesh` extension: mesh-wide settings that Istio keeps in its MeshConfig,
/// under the same names, so a setting can be copied from an Istio installation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshSettings {
    /// How request paths are normalized before AuthorizationPolicy matching, and forwarded to
    /// the application (MeshConfig `pathNormalization`). Default `BASE`, Istio's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_normalization: Option<PathNormalizationSetting>,
    /// The namespace whose PeerAuthentication and AuthorizationPolicy resources apply to every
    /// workload of the mesh (MeshConfig `rootNamespace`); a DNS-1123 label. Default
    /// `istio-system`, Istio's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_namespace: Option<String>,
    /// The mesh's trust domain (MeshConfig `trustDomain`), the `<td>` of the SPIFFE IDs
    /// `spiffe://<td>/ns/<ns>/sa/<sa>`. Default `cluster.local`, Istio's default. Only
    /// `cluster.local` is accepted for now (validation refuses another: meshctl's CA issues
    /// identities in it); migrations use `trustDomainAliases`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
    /// Other trust domains whose workloads count as this mesh's (MeshConfig
    /// `trustDomainAliases`): a proxy accepts mTLS peers whose SVID is in one of them, and a
    /// policy principal `<td>/ns/<ns>/sa/<sa>` in the trust domain, an alias or
    /// `cluster.local` matches that identity in every one of them, as Istio does when a mesh
    /// migrates to another trust domain. Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_domain_aliases: Vec<String>,
    /// Lifetime of the workload certificates the mesh CA issues (Istio's
    /// `DEFAULT_WORKLOAD_CERT_TTL`), a compose duration such as `24h` or `90m`. Default 24 h,
    /// Istio's default; between [`MIN_CERT_LIFETIME`] and [`MAX_CERT_LIFETIME`]. Proxies and
    /// the CLI renew at half of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_lifetime: Option<ComposeDuration>,
    /// What proxies do with outbound traffic to a destination that is neither a mesh
    /// service nor a ServiceEntry (MeshConfig `outboundTrafficPolicy: {mode: ...}`):
    /// `ALLOW_ANY` passes it through, `REGISTRY_ONLY` refuses it (HTTP `502` with the flag
    /// `NR`, other TCP closed). A `Sidecar`'s `outboundTrafficPolicy` overrides it for the
    /// workloads it selects. Default `ALLOW_ANY`, Istio's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<meshapi::proxy::OutboundTrafficPolicy>,
    /// Where proxies write access logs (MeshConfig `accessLogFile`): `/dev/stdout` turns them
    /// on for every proxy, empty or absent leaves them off (Istio's default); no other file.
    /// Telemetry `accessLogging` turns them off or on per workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log_file: Option<String>,
    /// Access log line format (MeshConfig `accessLogEncoding`): `TEXT` (default) or `JSON`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log_encoding: Option<meshapi::telemetry::access_log::AccessLogEncoding>,
    /// MeshConfig `defaultConfig`: only `tracing.sampling` (percentage of new traces sampled,
    /// default 1) is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_config: Option<super::observability::ProxyDefaults>,
    /// MeshConfig `extensionProviders`: `opentelemetry` entries exporting over OTLP/HTTP
    /// (`http:` required). Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extension_providers: Vec<super::observability::ExtensionProvider>,
    /// MeshConfig `defaultProviders`: `tracing` names the extension provider every workload
    /// exports spans to (Telemetry `tracing.providers` overrides). Default none: no export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_providers: Option<super::observability::DefaultProviders>,
}

/// Default of `x-mesh.certificateLifetime`: 24 h, Istio's.
pub const DEFAULT_CERT_LIFETIME: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// Shortest `x-mesh.certificateLifetime`: 1 minute.
pub const MIN_CERT_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);
/// Longest `x-mesh.certificateLifetime`: 90 days.
pub const MAX_CERT_LIFETIME: std::time::Duration = std::time::Duration::from_secs(90 * 24 * 3600);

/// MeshConfig's `pathNormalization: {normalization: ...}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathNormalizationSetting {
    /// `NONE`, `BASE` (or `DEFAULT`), `MERGE_SLASHES` or `DECODE_AND_MERGE_SLASHES`.
    /// Default `BASE`.
    #[serde(default)]
    pub normalization: meshapi::authz::PathNormalization,
}

impl ComposeFile {
    /// The mesh-wide path normalization option (`x-mesh.pathNormalization.normalization`),
    /// `BASE` when not set.
    pub fn path_normalization(&self) -> meshapi::authz::PathNormalization {
        self.x_mesh
            .as_ref()
            .and_then(|m| m.path_normalization)
            .map(|p| p.normalization)
            .unwrap_or_default()
    }

    /// The mesh's root namespace (`x-mesh.rootNamespace`), `istio-system` when not set.
    pub fn root_namespace(&self) -> &str {
        self.x_mesh
            .as_ref()
            .and_then(|m| m.root_namespace.as_deref())
            .unwrap_or(crate::model::ROOT_NAMESPACE)
    }

    /// The mesh's trust domain (`x-mesh.trustDomain`), `cluster.local` when not set.
    pub fn trust_domain(&self) -> &str {
        self.x_mesh
            .as_ref()
            .and_then(|m| m.trust_domain.as_deref())
            .unwrap_or(crate::model::DEFAULT_TRUST_DOMAIN)
    }

    /// The workload certificate lifetime set by `x-mesh.certificateLifetime`, `None` when not
    /// set (the CA's own setting, 24 h by default, applies).
    pub fn certificate_lifetime(&self) -> Option<std::time::Duration> {
        self.x_mesh
            .as_ref()
            .and_then(|m| m.certificate_lifetime)
            .map(|d| d.0)
    }

    /// The mesh-wide `x-mesh.outboundTrafficPolicy`, `ALLOW_ANY` when not set.
    pub fn outbound_traffic_policy(&self) -> meshapi::proxy::OutboundTrafficPolicy {
        self.x_mesh
            .as_ref()
            .and_then(|m| m.outbound_traffic_policy)
            .unwrap_or_default()
    }

    /// The trust domain aliases (`x-mesh.trustDomainAliases`), none when not set.
    pub fn trust_domain_aliases(&self) -> &[String] {
        self.x_mesh
            .as_ref()
            .map_or(&[], |m| m.trust_domain_aliases.as_slice())
    }
}

/// A top-level network.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkDef {
    /// Driver; default `bridge`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Driver options.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
    /// Created outside compose. Default false.
    #[serde(
        default,
        deserialize_with = "opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub external: Option<bool>,
    /// Name on the engine; default `<project>_<key>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// No route outside. Default false.
    #[serde(
        default,
        deserialize_with = "opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub internal: Option<bool>,
    /// Standalone containers may attach. Default false.
    #[serde(
        default,
        deserialize_with = "opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub attachable: Option<bool>,
    /// IPv6 enabled. Default false.
    #[serde(
        default,
        deserialize_with = "opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub enable_ipv6: Option<bool>,
    /// IP address management: the subnets of the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<NetworkIpam>,
    /// Labels (map or list).
    #[serde(
        default,
        deserialize_with = "labels",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
}

/// A network's `ipam`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkIpam {
    /// IPAM driver; only `default` is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Address pools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config: Vec<IpamPool>,
    /// Driver options.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

/// One `ipam.config` pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpamPool {
    /// The subnet (`172.28.0.0/16`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// Addresses given to containers without a fixed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<String>,
    /// The gateway (the host side). Default: the subnet's first address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Addresses the IPAM driver must not give out.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aux_addresses: BTreeMap<String, String>,
}

/// A top-level named volume.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeDef {
    /// Driver; default `local`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Driver options.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
    /// Created outside compose. Default false.
    #[serde(
        default,
        deserialize_with = "opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub external: Option<bool>,
    /// Name on the engine; default `<project>_<key>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Labels (map or list).
    #[serde(
        default,
        deserialize_with = "labels",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
}

/// One compose service. Every field is optional; defaults are compose's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Image to run; required unless `build` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Build instructions (`build: ./dir` is `{context: ./dir}`).
    #[serde(
        default,
        deserialize_with = "short_or_long",
        skip_serializing_if = "Option::is_none"
    )]
    pub build: Option<Build>,
    /// Overrides the image's CMD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Command>,
    /// Overrides the image's ENTRYPOINT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Command>,
    /// Environment (map or `K=V` list); `None` takes the value from the environment.
    #[serde(
        default,
        deserialize_with = "map_or_list",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub environment: BTreeMap<String, Option<String>>,
    /// Env files read before `environment` (which wins).
    #[serde(
        default,
        deserialize_with = "short_or_long_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub env_file: Vec<EnvFileRef>,
    /// Ports (short syntax normalized to long; ranges expanded).
    #[serde(
        default,
        deserialize_with = "short_or_long_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ports: Vec<Port>,
    /// Ports reachable by other services but not published (`"8080"`, `"8000-8010/tcp"`).
    #[serde(
        default,
        deserialize_with = "string_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub expose: Vec<String>,
    /// Mounts (short syntax normalized to long).
    #[serde(
        default,
        deserialize_with = "short_or_long_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub volumes: Vec<Volume>,
    /// Services started first (list or map with conditions).
    #[serde(
        default,
        deserialize_with = "keyed_map_or_list",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub depends_on: BTreeMap<String, DependsOn>,
    /// Container health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    /// Restart policy. Default `no`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<Restart>,
    /// Labels (map or list); `app` and `version` are what Istio selectors and subsets match.
    #[serde(
        default,
        deserialize_with = "labels",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    /// `replicas` and `resources.limits`; other deploy keys are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<Deploy>,
    /// Networks joined (list or map with aliases). Default: the project's `default` network.
    #[serde(
        default,
        deserialize_with = "keyed_map_or_list",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub networks: BTreeMap<String, ServiceNetwork>,
    /// Profiles enabling this service; empty: always enabled.
    #[serde(
        default,
        deserialize_with = "string_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub profiles: Vec<String>,
    /// Container hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Working directory inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// User (`uid[:gid]` or name).
    #[serde(
        default,
        deserialize_with = "opt_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub user: Option<String>,
    /// Signal to stop the container. Default `SIGTERM`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Wait before SIGKILL. Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_period: Option<ComposeDuration>,
    /// Capabilities added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Capabilities dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// Read-only root filesystem. Default false.
    #[serde(
        default,
        deserialize_with = "opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub read_only: Option<bool>,
    /// Allocate a TTY. Default false.
    #[serde(
        default,
        deserialize_with = "opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub tty: Option<bool>,
    /// Keep stdin open. Default false.
    #[serde(
        default,
        deserialize_with = "opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub stdin_open: Option<bool>,
    /// Run an init process as PID 1. Default false.
    #[serde(
        default,
        deserialize_with = "opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub init: Option<bool>,
    /// Image platform (`linux/amd64`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Extra `/etc/hosts` entries, normalized to `host=ip` items.
    #[serde(
        default,
        deserialize_with = "extra_hosts",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub extra_hosts: Vec<String>,
    /// `always`, `never`, `missing`, `build`, ... Default `missing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<String>,
    /// Fixed container name; refused with more than one replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    /// Secrets mounted at `/run/secrets/<name>` (or their target).
    #[serde(
        default,
        deserialize_with = "short_or_long_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub secrets: Vec<FileRef>,
    /// Configs mounted at `/<name>` (or their target).
    #[serde(
        default,
        deserialize_with = "short_or_long_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub configs: Vec<FileRef>,
    /// The service this one is based on; resolved by the loader (the merged service is what
    /// `config` prints).
    #[serde(default, deserialize_with = "short_or_long", skip_serializing)]
    pub extends: Option<Extends>,
    /// The mesh view of this service.
    #[serde(rename = "x-mesh", default, skip_serializing_if = "Option::is_none")]
    pub x_mesh: Option<XMesh>,
    /// Other `x-*` keys, kept as written.
    #[serde(flatten, skip_deserializing)]
    pub extensions: BTreeMap<String, Value>,
}

fn extra_hosts<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    // A map (`host: ip`) or a list of `host:ip` / `host=ip`.
    let map = map_or_list(d)?;
    let mut out = Vec::new();
    for (k, v) in map {
        match v {
            Some(ip) => out.push(format!("{k}={ip}")),
            None => match k.split_once(':') {
                Some((h, ip)) => out.push(format!("{h}={ip}")),
                None => {
                    return Err(serde::de::Error::custom(format!(
                        "invalid extra_hosts entry {k:?}: expected host:ip or host=ip"
                    )));
                }
            },
        }
    }
    Ok(out)
}

/// A `depends_on` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DependsOn {
    /// When the dependency counts as ready. Default `service_started`.
    #[serde(default)]
    pub condition: DependsCondition,
    /// Restart this service when the dependency is updated. Default false.
    #[serde(default, deserialize_with = "false_default")]
    pub restart: bool,
    /// A missing dependency is an error (false: a warning). Default true.
    #[serde(default = "yes", deserialize_with = "true_default")]
    pub required: bool,
}

impl Default for DependsOn {
    fn default() -> Self {
        DependsOn {
            condition: DependsCondition::default(),
            restart: false,
            required: true,
        }
    }
}

fn yes() -> bool {
    true
}

fn false_default<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(opt_bool(d)?.unwrap_or(false))
}

fn true_default<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(opt_bool(d)?.unwrap_or(true))
}

/// `depends_on` condition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DependsCondition {
    /// The dependency's container was started.
    #[default]
    ServiceStarted,
    /// The dependency's healthcheck passes.
    ServiceHealthy,
    /// The dependency ran to completion with exit code 0.
    ServiceCompletedSuccessfully,
}

/// A container health check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Healthcheck {
    /// The check; none: the image's HEALTHCHECK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<HealthTest>,
    /// Between checks. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<ComposeDuration>,
    /// One check's limit. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<ComposeDuration>,
    /// Failures before unhealthy. Default 3.
    #[serde(
        default,
        deserialize_with = "opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub retries: Option<u32>,
    /// Grace period after start. Default 0s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<ComposeDuration>,
    /// Interval during the start period. Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<ComposeDuration>,
    /// Disable the image's check. Default false.
    #[serde(
        default,
        deserialize_with = "opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub disable: Option<bool>,
}

/// `deploy`, reduced to what meshctl serves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deploy {
    /// Number of containers. Default 1.
    #[serde(
        default,
        deserialize_with = "opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub replicas: Option<u32>,
    /// Resource limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

/// `deploy.resources`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Hard limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
}

/// `deploy.resources.limits`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Memory (`512m`, `1g`, bytes). None: unlimited.
    #[serde(
        default,
        deserialize_with = "opt_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub memory: Option<String>,
    /// CPUs (`0.5`). None: unlimited.
    #[serde(
        default,
        deserialize_with = "opt_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub cpus: Option<String>,
}

/// A service's attachment to a network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceNetwork {
    /// Extra names on this network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Fixed IPv4 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<String>,
    /// Fixed IPv6 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_address: Option<String>,
    /// Connection order preference. Default 0.
    #[serde(
        default,
        deserialize_with = "opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub priority: Option<u32>,
}

/// The `x-mesh` extension of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct XMesh {
    /// `false` keeps the service out of the mesh: no sidecar, no identity, no VIP. It reaches
    /// PERMISSIVE ports of mesh services in plaintext (STRICT ones refuse it), and mesh
    /// services reach it by its compose name through Docker's DNS. Default true.
    #[serde(
        default,
        deserialize_with = "opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub enabled: Option<bool>,
    /// Logical mesh service name. Default: the compose service name, so `backend-v1` and
    /// `backend-v2` can both be `backend`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Service account in the SPIFFE identity. Default: the mesh service name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Namespace in the SPIFFE identity and mesh names. Default `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Port protocols (list of `{port, protocol, name}`, or a map `port: protocol`).
    #[serde(
        default,
        deserialize_with = "mesh_ports",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ports: Vec<MeshPort>,
    /// The node (a machine joined with `meshctl join`) this service runs on. Default none:
    /// the machine of the control plane (`meshctl up`). Its proxies' endpoints carry the
    /// node's address once it has joined; until then they are left out of endpoint lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Run this service as a host process instead of a container: meshctl starts the command
    /// with a meshproxy beside it (docs/hosts.md). Default none: a container. `image` and
    /// `build` are refused beside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSpec>,
    /// A service that already runs on this host at `ip:port` (a database, a process the
    /// user's IDE started): meshctl runs only its proxy, which forwards to it. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// `x-mesh.process`: the command meshctl runs as the service, on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProcessSpec {
    /// Program and arguments, run without a shell (`["python3", "-m", "http.server"]`); a
    /// string is split shell-style. A relative program path is taken from `workingDir`, a bare
    /// name from `PATH`. Required.
    pub command: Command,
    /// Working directory, relative to the project directory. Default the project directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Environment added to the service's `environment` (which it overrides). Default none.
    #[serde(
        default,
        deserialize_with = "map_or_list",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub env: BTreeMap<String, Option<String>>,
}

/// A port's protocol in `x-mesh`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshPort {
    /// Container port.
    #[serde(deserialize_with = "super::syntax::port")]
    pub port: u16,
    /// Protocol the proxy speaks on it.
    pub protocol: Protocol,
    /// Port name, as in a Kubernetes Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Protocols the mesh understands (Istio's names; case-insensitive on input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 (and h2c upgrade).
    #[serde(alias = "HTTP", alias = "Http")]
    Http,
    /// HTTP/2 cleartext.
    #[serde(alias = "HTTP2", alias = "Http2")]
    Http2,
    /// gRPC (HTTP/2).
    #[serde(alias = "GRPC", alias = "Grpc")]
    Grpc,
    /// Opaque TCP.
    #[serde(alias = "TCP", alias = "Tcp")]
    Tcp,
    /// TLS passed through (SNI routing).
    #[serde(alias = "TLS", alias = "Tls")]
    Tls,
    /// HTTPS from the app, passed through as TLS.
    #[serde(alias = "HTTPS", alias = "Https")]
    Https,
}

impl Protocol {
    /// Istio's reading of a protocol name (`http`, `HTTP2`, `grpc-web` is gRPC-ish HTTP).
    pub fn from_istio_name(name: &str) -> Option<Protocol> {
        match name.to_ascii_lowercase().as_str() {
            "http" | "grpc-web" => Some(Protocol::Http),
            "http2" => Some(Protocol::Http2),
            "grpc" => Some(Protocol::Grpc),
            "tcp" | "mongo" | "mysql" | "redis" => Some(Protocol::Tcp),
            "tls" => Some(Protocol::Tls),
            "https" => Some(Protocol::Https),
            _ => None,
        }
    }
}

fn mesh_ports<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<MeshPort>, D::Error> {
    use serde::de::{MapAccess, SeqAccess, Visitor};
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<MeshPort>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of {port, protocol, name} or a map port: protocol")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(p) = seq.next_element::<MeshPort>()? {
                out.push(p);
            }
            Ok(out)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(port) = map.next_key::<PortKey>()? {
                let protocol = map.next_value::<Protocol>()?;
                out.push(MeshPort {
                    port: port.0,
                    protocol,
                    name: None,
                });
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

/// A port number as a map key (YAML reads `8080:` as a number, `"8080":` as a string).
struct PortKey(u16);

impl<'de> Deserialize<'de> for PortKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        super::syntax::port(d).map(PortKey)
    }
}
