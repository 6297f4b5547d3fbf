//! The project network: one bridge per project with a /24 that meshctl chooses, so the gateway
//! (where the control plane listens), meshdns (`.2`) and every sidecar (`.10` up) have
//! addresses known before anything starts.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest};
use meshmodel::compose::{ComposeFile, NetworkDef};

use super::engine::Engine;
use super::{DockerError, LABEL_COMPOSE_PROJECT, LABEL_PROJECT};

/// The project network as the runner uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectNetwork {
    pub name: String,
    /// Network address of the /24.
    pub subnet: Ipv4Addr,
    /// `.1`: the host side, where the control plane listens.
    pub gateway: Ipv4Addr,
}

/// First host number given to sidecars.
pub const FIRST_POD_HOST: u8 = 10;

impl ProjectNetwork {
    /// `.n` of the subnet.
    pub fn host(&self, n: u8) -> Ipv4Addr {
        let [a, b, c, _] = self.subnet.octets();
        Ipv4Addr::new(a, b, c, n)
    }

    /// meshdns's address.
    pub fn dns_ip(&self) -> Ipv4Addr {
        self.host(2)
    }

    /// True when `ip` is in this /24.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        ip.octets()[..3] == self.subnet.octets()[..3]
    }
}

/// The Linux bridge behind a Docker network (`br-<id prefix>` unless the network names one),
/// where the process runner attaches process pods.
pub async fn bridge_name(engine: &Engine, network: &str) -> Result<String, DockerError> {
    let n = engine
        .docker
        .inspect_network(
            network,
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
        .map_err(DockerError::api(format!("inspecting network {network}")))?;
    if let Some(name) = n
        .options
        .as_ref()
        .and_then(|o| o.get("com.docker.network.bridge.name"))
    {
        return Ok(name.clone());
    }
    let id = n.id.unwrap_or_default();
    Ok(format!("br-{}", id.chars().take(12).collect::<String>()))
}

/// The network's name for a project (compose names its default one `<project>_default`).
pub fn network_name(project: &str) -> String {
    format!("{project}_mesh")
}

/// Finds the project's network, or creates it on a free /24.
pub async fn ensure(engine: &Engine, project: &str) -> Result<(ProjectNetwork, bool), DockerError> {
    let name = network_name(project);
    for n in engine.networks(project).await? {
        if n.name.as_deref() == Some(name.as_str()) {
            return from_ipam(&name, n.ipam.as_ref()).map(|pn| (pn, false));
        }
    }
    let taken = taken_subnets(engine).await?;
    let mut tried = 0;
    for subnet in candidates(project) {
        if taken.iter().any(|t| overlaps(*t, subnet)) {
            continue;
        }
        tried += 1;
        if tried > 20 {
            break;
        }
        let net = ProjectNetwork {
            name: name.clone(),
            subnet,
            gateway: {
                let [a, b, c, _] = subnet.octets();
                Ipv4Addr::new(a, b, c, 1)
            },
        };
        let labels = HashMap::from([
            (LABEL_PROJECT.to_string(), project.to_string()),
            (LABEL_COMPOSE_PROJECT.to_string(), project.to_string()),
            ("com.docker.compose.network".to_string(), "mesh".to_string()),
        ]);
        let req = NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".into()),
            ipam: Some(Ipam {
                driver: Some("default".into()),
                config: Some(vec![IpamConfig {
                    subnet: Some(format!("{subnet}/24")),
                    gateway: Some(net.gateway.to_string()),
                    ..IpamConfig::default()
                }]),
                options: None,
            }),
            labels: Some(labels),
            ..NetworkCreateRequest::default()
        };
        match engine.docker.create_network(req).await {
            Ok(_) => return Ok((net, true)),
            // Another project took this subnet between our scan and now: next one.
            Err(e) if e.to_string().contains("overlap") => continue,
            Err(e) if super::is_conflict(&e) => {
                // Created concurrently under the same name: use it.
                return Box::pin(ensure(engine, project)).await;
            }
            Err(e) => return Err(DockerError::api(format!("creating network {name}"))(e)),
        }
    }
    Err(DockerError::NoSubnet)
}

/// The engine name of compose network `key`: its `name:`, else `<project>_<key>` (an
/// external network: `<key>`), as compose names them.
pub fn named_network_name(project: &str, key: &str, def: Option<&NetworkDef>) -> String {
    match def {
        Some(d) if d.name.is_some() => d.name.clone().unwrap_or_default(),
        Some(d) if d.external == Some(true) => key.to_string(),
        _ => format!("{project}_{key}"),
    }
}

/// Finds or creates every compose network other than `default` (bridges with the `ipam`
/// subnets written, else one the engine picks), labelled with the project so `down` removes
/// them; an external network must exist and is left alone. Returns compose key -> engine
/// name, and the networks created.
pub async fn ensure_named(
    engine: &Engine,
    project: &str,
    compose: &ComposeFile,
) -> Result<(BTreeMap<String, String>, Vec<String>), DockerError> {
    let mut names = BTreeMap::new();
    let mut created = Vec::new();
    let existing: Vec<String> = engine
        .networks(project)
        .await?
        .into_iter()
        .filter_map(|n| n.name)
        .collect();
    for (key, def) in compose.networks.iter().filter(|(k, _)| *k != "default") {
        let name = named_network_name(project, key, def.as_ref());
        names.insert(key.clone(), name.clone());
        let def = def.clone().unwrap_or_default();
        if def.external == Some(true) {
            engine
                .docker
                .inspect_network(&name, None::<bollard::query_parameters::InspectNetworkOptions>)
                .await
                .map_err(|e| DockerError::Network {
                    name: name.clone(),
                    message: format!(
                        "is declared external but cannot be used ({e}); create it with `docker network create {name}`"
                    ),
                })?;
            continue;
        }
        if existing.contains(&name) {
            continue;
        }
        let mut labels: HashMap<String, String> = def.labels.clone().into_iter().collect();
        labels.extend([
            (LABEL_PROJECT.to_string(), project.to_string()),
            (LABEL_COMPOSE_PROJECT.to_string(), project.to_string()),
            ("com.docker.compose.network".to_string(), key.clone()),
        ]);
        let ipam = def.ipam.as_ref().map(|i| Ipam {
            driver: Some(i.driver.clone().unwrap_or_else(|| "default".into())),
            config: Some(
                i.config
                    .iter()
                    .map(|c| IpamConfig {
                        subnet: c.subnet.clone(),
                        ip_range: c.ip_range.clone(),
                        gateway: c.gateway.clone(),
                        auxiliary_addresses: (!c.aux_addresses.is_empty())
                            .then(|| c.aux_addresses.clone().into_iter().collect()),
                    })
                    .collect(),
            ),
            options: (!i.options.is_empty()).then(|| i.options.clone().into_iter().collect()),
        });
        let req = NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".into()),
            internal: def.internal,
            attachable: def.attachable,
            ipam,
            options: (!def.driver_opts.is_empty())
                .then(|| def.driver_opts.clone().into_iter().collect()),
            labels: Some(labels),
            ..NetworkCreateRequest::default()
        };
        match engine.docker.create_network(req).await {
            Ok(_) => created.push(name),
            Err(e) if super::is_conflict(&e) => {}
            Err(e) => return Err(DockerError::api(format!("creating network {name}"))(e)),
        }
    }
    Ok((names, created))
}

fn from_ipam(name: &str, ipam: Option<&Ipam>) -> Result<ProjectNetwork, DockerError> {
    let bad = |message: &str| DockerError::Network {
        name: name.to_string(),
        message: message.to_string(),
    };
    let cfg = ipam
        .and_then(|i| i.config.as_ref())
        .and_then(|c| c.first())
        .ok_or_else(|| {
            bad("has no IPAM config (not made by meshctl? remove it with `meshctl down`)")
        })?;
    let subnet = cfg
        .subnet
        .as_deref()
        .and_then(|s| s.strip_suffix("/24"))
        .and_then(|s| s.parse::<Ipv4Addr>().ok())
        .ok_or_else(|| bad("is not an IPv4 /24"))?;
    let gateway = cfg
        .gateway
        .as_deref()
        .and_then(|g| g.parse().ok())
        .ok_or_else(|| bad("has no gateway"))?;
    Ok(ProjectNetwork {
        name: name.to_string(),
        subnet,
        gateway,
    })
}

/// `(network, prefix length)` of every IPv4 subnet in use by the engine's networks and the
/// host's routes.
async fn taken_subnets(engine: &Engine) -> Result<Vec<(Ipv4Addr, u8)>, DockerError> {
    let nets = engine
        .docker
        .list_networks(None::<bollard::query_parameters::ListNetworksOptions>)
        .await
        .map_err(DockerError::api("listing networks"))?;
    let mut out: Vec<(Ipv4Addr, u8)> = nets
        .iter()
        .filter_map(|n| n.ipam.as_ref()?.config.as_ref())
        .flatten()
        .filter_map(|c| parse_cidr(c.subnet.as_deref()?))
        .collect();
    out.extend(host_routes());
    Ok(out)
}

/// IPv4 routes of the host (`/proc/net/route`), so a chosen subnet never shadows a LAN or VPN.
fn host_routes() -> Vec<(Ipv4Addr, u8)> {
    let Ok(text) = std::fs::read_to_string("/proc/net/route") else {
        return Vec::new();
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let dest = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
            if mask == 0 {
                return None; // the default route overlaps everything
            }
            let prefix = u8::try_from(mask.count_ones()).ok()?;
            Some((Ipv4Addr::from(dest.swap_bytes()), prefix))
        })
        .collect()
}

fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, len) = s.split_once('/')?;
    Some((ip.parse().ok()?, len.parse().ok()?))
}

fn overlaps((net, len): (Ipv4Addr, u8), candidate: Ipv4Addr) -> bool {
    let len = u32::from(len.min(32)).min(24);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    (u32::from(net) & mask) == (u32::from(candidate) & mask)
}

/// Candidate /24s, starting at a place derived from the project name so that parallel
/// projects rarely race for the same one: 10.213.0-255.0, then 172.29.0-255.0.
fn candidates(project: &str) -> impl Iterator<Item = Ipv4Addr> {
    let start = project
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
        % 256;
    let ring = move |a: u8, b: u8| {
        (0..256u32).map(move |i| {
            let c = u8::try_from((start + i) % 256).unwrap_or(0);
            Ipv4Addr::new(a, b, c, 0)
        })
    };
    ring(10, 213).chain(ring(172, 29))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_checks_the_shorter_prefix() {
        let c = Ipv4Addr::new(10, 213, 7, 0);
        assert!(overlaps((Ipv4Addr::new(10, 0, 0, 0), 8), c));
        assert!(overlaps((Ipv4Addr::new(10, 213, 7, 0), 24), c));
        assert!(overlaps((Ipv4Addr::new(10, 213, 7, 128), 25), c));
        assert!(!overlaps((Ipv4Addr::new(10, 213, 8, 0), 24), c));
        assert!(!overlaps((Ipv4Addr::new(172, 17, 0, 0), 16), c));
    }

    #[test]
    fn candidates_are_distinct_24s() {
        let all: std::collections::BTreeSet<_> = candidates("seed").collect();
        assert_eq!(all.len(), 512);
        assert!(all.iter().all(|ip| ip.octets()[3] == 0));
    }
}
