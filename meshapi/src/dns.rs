//! The mesh DNS records file and the VIP allocator.
//!
//! [`Records`] is what `meshdns` serves: the zone settings (cluster domain, default namespace,
//! TTL) and one entry per mesh service with its virtual IP and declared ports. The control plane
//! writes it (allocating VIPs with [`VipAllocator`]); `meshdns --records FILE` reads it, YAML or
//! JSON, and refuses a file that does not pass [`Records::validate`].
//!
//! [`VipAllocator`] hands out one stable VIP per `(namespace, service)` from a range
//! (`127.240.0.0/16` by default: loopback, so mesh traffic never leaves the host). The first
//! choice for a name is derived from a stable hash of the name, so the same service tends to get
//! the same VIP on every host; the table is persisted as JSON and VIPs released by removed
//! services are reused only when no never-used address is left, oldest release first.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::diag::FieldError;

/// Default cluster domain, as in Kubernetes.
pub use crate::CLUSTER_DOMAIN as DEFAULT_CLUSTER_DOMAIN;
/// Default namespace for services that do not name one, and for single-label queries.
pub use crate::DEFAULT_NAMESPACE;
/// Default TTL of mesh answers, in seconds.
pub const DEFAULT_TTL: u32 = 30;
/// Default VIP range (loopback, see DESIGN.md).
pub const DEFAULT_VIP_RANGE: &str = "127.240.0.0/16";

/// The records file served by meshdns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Records {
    /// DNS suffix of mesh names: `<svc>.<ns>.svc.<clusterDomain>`. Default `cluster.local`.
    #[serde(default = "default_cluster_domain")]
    pub cluster_domain: String,
    /// Namespace of services without one, and the one bare names (`backend`) resolve in.
    /// Default `default`.
    #[serde(default = "default_namespace")]
    pub default_namespace: String,
    /// TTL of mesh answers in seconds. Default 30: VIPs are stable, and a short TTL keeps a
    /// removed service from lingering in client caches.
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    /// The mesh services. Default empty.
    #[serde(default)]
    pub services: Vec<ServiceRecord>,
    /// Names outside the cluster domain answered with a VIP: the hosts of ServiceEntries
    /// (`api.example.com`). Exact names only; other names are forwarded. Default empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostRecord>,
}

/// One name answered with a VIP (a ServiceEntry host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HostRecord {
    /// The full DNS name, without the trailing dot. Required.
    pub name: String,
    /// The IPv4 VIP answered for A queries. Required.
    pub vip: Ipv4Addr,
}

/// One mesh service in the records file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceRecord {
    /// Service name, a DNS label (lowercase letters, digits, `-`). Required.
    pub name: String,
    /// Namespace, a DNS label. Default: the file's `defaultNamespace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The IPv4 VIP answered for A queries. Required.
    pub vip: Ipv4Addr,
    /// The IPv6 VIP answered for AAAA queries. Default none (AAAA answers NOERROR, empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip6: Option<Ipv6Addr>,
    /// Declared ports, published as SRV records `_<name>._<protocol>.<service>...`.
    /// Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRecord>,
}

/// One declared port of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortRecord {
    /// Port name, a DNS label (`http`, `grpc-web`). Required: it is the SRV service label.
    pub name: String,
    /// Port number, 1-65535. Required.
    pub port: u16,
    /// Transport protocol. Default `TCP`.
    #[serde(default)]
    pub protocol: PortProtocol,
}

/// Transport protocol of a port; the SRV label is `_tcp`, `_udp` or `_sctp`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PortProtocol {
    #[default]
    #[serde(rename = "TCP", alias = "tcp")]
    Tcp,
    #[serde(rename = "UDP", alias = "udp")]
    Udp,
    #[serde(rename = "SCTP", alias = "sctp")]
    Sctp,
}

impl PortProtocol {
    /// The SRV protocol label without the underscore.
    pub fn srv_label(self) -> &'static str {
        match self {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
            PortProtocol::Sctp => "sctp",
        }
    }
}

fn default_cluster_domain() -> String {
    DEFAULT_CLUSTER_DOMAIN.to_string()
}
fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_string()
}
fn default_ttl() -> u32 {
    DEFAULT_TTL
}

impl Default for Records {
    fn default() -> Self {
        Records {
            cluster_domain: default_cluster_domain(),
            default_namespace: default_namespace(),
            ttl: DEFAULT_TTL,
            services: Vec::new(),
            hosts: Vec::new(),
        }
    }
}

/// Why a records file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}:{line}:{column}: {path}: {message}")]
    Syntax {
        origin: String,
        line: usize,
        column: usize,
        /// Field path where parsing stopped (`services[1].vip`), empty at the top.
        path: String,
        message: String,
    },
    #[error("{origin}: invalid records: {}", join_errors(.errors))]
    Invalid {
        origin: String,
        errors: Vec<FieldError>,
    },
}

fn join_errors(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Records {
    /// Reads, parses and validates a records file; JSON if the name ends in `.json`, else YAML.
    pub fn load(path: &Path) -> Result<Records, RecordsError> {
        let text = std::fs::read_to_string(path).map_err(|source| RecordsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let origin = path.display().to_string();
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        {
            Records::from_json(&text, &origin)
        } else {
            Records::from_yaml(&text, &origin)
        }
    }

    /// Parses and validates YAML text; `origin` names the source in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Records, RecordsError> {
        if text.trim().is_empty() {
            return Err(syntax(origin, 1, 1, "", "the file is empty"));
        }
        let records: Records = crate::yaml::from_str(text)
            .map_err(|e| syntax(origin, e.pos.line, e.pos.column, &e.path, &e.message))?;
        records.checked(origin)
    }

    /// Parses and validates JSON text; `origin` names the source in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Records, RecordsError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let records: Records = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            syntax(
                origin,
                inner.line(),
                inner.column(),
                &path,
                &inner.to_string(),
            )
        })?;
        records.checked(origin)
    }

    fn checked(self, origin: &str) -> Result<Records, RecordsError> {
        let errors = self.validate();
        if errors.is_empty() {
            Ok(self)
        } else {
            Err(RecordsError::Invalid {
                origin: origin.to_string(),
                errors,
            })
        }
    }

    /// The namespace of a service, after defaulting.
    pub fn namespace_of<'a>(&'a self, service: &'a ServiceRecord) -> &'a str {
        service
            .namespace
            .as_deref()
            .unwrap_or(&self.default_namespace)
    }

    /// Checks everything serde cannot: names are DNS labels, no duplicate services, VIPs or
    /// ports. Returns every problem found, empty when valid.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Err(message) = check_domain(&self.cluster_domain) {
            errors.push(FieldError::new("clusterDomain", message));
        }
        if let Err(message) = check_label(&self.default_namespace) {
            errors.push(FieldError::new("defaultNamespace", message));
        }
        let mut seen = BTreeMap::new();
        let mut vips = BTreeMap::new();
        let mut vip6s = BTreeMap::new();
        for (i, svc) in self.services.iter().enumerate() {
            let at = format!("services[{i}]");
            if let Err(message) = check_label(&svc.name) {
                errors.push(FieldError::new(format!("{at}.name"), message));
            }
            if let Some(ns) = &svc.namespace
                && let Err(message) = check_label(ns)
            {
                errors.push(FieldError::new(format!("{at}.namespace"), message));
            }
            let key = (self.namespace_of(svc).to_string(), svc.name.clone());
            if let Some(first) = seen.insert(key, i) {
                errors.push(FieldError::new(
                    format!("{at}.name"),
                    format!(
                        "service {}.{} is already declared at services[{first}]",
                        svc.name,
                        self.namespace_of(svc)
                    ),
                ));
            }
            let v4 = svc.vip;
            if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() {
                errors.push(FieldError::new(
                    format!("{at}.vip"),
                    format!("{v4} cannot be a service VIP"),
                ));
            } else if let Some(first) = vips.insert(v4, i) {
                errors.push(FieldError::new(
                    format!("{at}.vip"),
                    format!("VIP {v4} is already used by services[{first}]"),
                ));
            }
            if let Some(v6) = svc.vip6 {
                if v6.is_unspecified() || v6.is_multicast() {
                    errors.push(FieldError::new(
                        format!("{at}.vip6"),
                        format!("{v6} cannot be a service VIP"),
                    ));
                } else if let Some(first) = vip6s.insert(v6, i) {
                    errors.push(FieldError::new(
                        format!("{at}.vip6"),
                        format!("VIP {v6} is already used by services[{first}]"),
                    ));
                }
            }
            let mut names = HashSet::new();
            let mut numbers = HashSet::new();
            for (j, port) in svc.ports.iter().enumerate() {
                let pat = format!("{at}.ports[{j}]");
                if let Err(message) = check_label(&port.name) {
                    errors.push(FieldError::new(format!("{pat}.name"), message));
                }
                if port.port == 0 {
                    errors.push(FieldError::new(
                        format!("{pat}.port"),
                        "port 0 is not a port",
                    ));
                }
                if !names.insert(port.name.as_str()) {
                    errors.push(FieldError::new(
                        format!("{pat}.name"),
                        format!("port name {} is declared twice", port.name),
                    ));
                }
                if !numbers.insert((port.port, port.protocol)) {
                    errors.push(FieldError::new(
                        format!("{pat}.port"),
                        format!(
                            "port {}/{} is declared twice",
                            port.port,
                            port.protocol.srv_label()
                        ),
                    ));
                }
            }
        }
        let mut names = BTreeMap::new();
        for (i, h) in self.hosts.iter().enumerate() {
            let at = format!("hosts[{i}]");
            if let Err(message) = check_domain(&h.name) {
                errors.push(FieldError::new(format!("{at}.name"), message));
            }
            if let Some(first) = names.insert(h.name.to_ascii_lowercase(), i) {
                errors.push(FieldError::new(
                    format!("{at}.name"),
                    format!("{} is already declared at hosts[{first}]", h.name),
                ));
            }
            if h.vip.is_unspecified() || h.vip.is_broadcast() || h.vip.is_multicast() {
                errors.push(FieldError::new(
                    format!("{at}.vip"),
                    format!("{} cannot be a VIP", h.vip),
                ));
            }
        }
        errors
    }
}

fn syntax(origin: &str, line: usize, column: usize, path: &str, message: &str) -> RecordsError {
    RecordsError::Syntax {
        origin: origin.to_string(),
        line,
        column,
        path: if path == "." {
            String::new()
        } else {
            path.to_string()
        },
        message: message.to_string(),
    }
}

/// A DNS label as Kubernetes names are: 1-63 of `[a-z0-9-]`, not starting or ending with `-`.
/// The SRV forms `_http._tcp` need labels that do not start with `_`, so this also keeps
/// service names and SRV labels apart.
pub fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() || label.len() > 63 {
        return Err(format!("{label:?} must be 1 to 63 characters long"));
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!(
            "{label:?} may contain only lowercase letters, digits and '-'"
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("{label:?} must not start or end with '-'"));
    }
    Ok(())
}

fn check_domain(domain: &str) -> Result<(), String> {
    let trimmed = domain.strip_suffix('.').unwrap_or(domain);
    if trimmed.is_empty() || trimmed.len() > 200 {
        return Err(format!(
            "{domain:?} must be a domain name of 1 to 200 characters"
        ));
    }
    trimmed.split('.').try_for_each(check_label)
}

/// An IPv4 range in CIDR form (`127.240.0.0/16`), prefix length 8 to 30.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VipRange {
    base: Ipv4Addr,
    prefix: u8,
}

impl VipRange {
    /// Builds a range; `base` must have no host bits set.
    pub fn new(base: Ipv4Addr, prefix: u8) -> Result<VipRange, VipError> {
        if !(8..=30).contains(&prefix) {
            return Err(VipError::BadRange(format!(
                "{base}/{prefix}: prefix length must be 8 to 30"
            )));
        }
        let host_mask = u32::MAX >> prefix;
        if u32::from(base) & host_mask != 0 {
            return Err(VipError::BadRange(format!(
                "{base}/{prefix}: host bits are set"
            )));
        }
        Ok(VipRange { base, prefix })
    }

    /// The network address (`127.240.0.0` in `127.240.0.0/16`).
    pub fn base(&self) -> Ipv4Addr {
        self.base
    }

    /// The prefix length (`16` in `127.240.0.0/16`).
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Number of usable VIPs (the first and last address are never handed out).
    pub fn capacity(&self) -> u32 {
        (1u32 << (32 - self.prefix)) - 2
    }

    /// Whether `ip` is a usable address of this range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let offset = u32::from(ip).wrapping_sub(u32::from(self.base));
        (1..=self.capacity()).contains(&offset)
    }

    fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + 1 + n)
    }
}

impl Default for VipRange {
    fn default() -> Self {
        VipRange {
            base: Ipv4Addr::new(127, 240, 0, 0),
            prefix: 16,
        }
    }
}

impl fmt::Display for VipRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl FromStr for VipRange {
    type Err = VipError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            VipError::BadRange(format!(
                "{s:?} is not an IPv4 CIDR range like 127.240.0.0/16"
            ))
        };
        let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
        let base = ip.parse().map_err(|_| bad())?;
        let prefix = prefix.parse().map_err(|_| bad())?;
        VipRange::new(base, prefix)
    }
}

impl Serialize for VipRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for VipRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a VIP could not be allocated, loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum VipError {
    #[error("bad VIP range: {0}")]
    BadRange(String),
    #[error("VIP range {range} is exhausted ({capacity} addresses in use)")]
    Exhausted { range: VipRange, capacity: u32 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a VIP allocation table: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
}

/// One persisted allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Allocation {
    namespace: String,
    name: String,
    vip: Ipv4Addr,
}

/// The JSON form of the allocation table.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    version: u32,
    range: VipRange,
    allocations: Vec<Allocation>,
    /// Released VIPs, oldest first.
    #[serde(default)]
    released: Vec<Ipv4Addr>,
}

/// Allocates one stable VIP per `(namespace, service)`; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipAllocator {
    range: VipRange,
    by_name: BTreeMap<(String, String), Ipv4Addr>,
    in_use: BTreeSet<Ipv4Addr>,
    /// Released addresses, oldest first; reused only when no never-used address is left.
    released: VecDeque<Ipv4Addr>,
}

impl VipAllocator {
    /// An empty allocator over `range`.
    pub fn new(range: VipRange) -> VipAllocator {
        VipAllocator {
            range,
            by_name: BTreeMap::new(),
            in_use: BTreeSet::new(),
            released: VecDeque::new(),
        }
    }

    /// The range VIPs come from.
    pub fn range(&self) -> VipRange {
        self.range
    }

    /// The VIP of a service, if it has one.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Ipv4Addr> {
        self.by_name
            .get(&(namespace.to_string(), name.to_string()))
            .copied()
    }

    /// Every allocation as `((namespace, name), vip)`, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&(String, String), &Ipv4Addr)> {
        self.by_name.iter()
    }

    /// Returns the service's VIP, allocating one if it has none. Idempotent.
    pub fn allocate(&mut self, namespace: &str, name: &str) -> Result<Ipv4Addr, VipError> {
        if let Some(vip) = self.get(namespace, name) {
            return Ok(vip);
        }
        let capacity = self.range.capacity();
        if self.in_use.len() as u64 >= u64::from(capacity) {
            return Err(VipError::Exhausted {
                range: self.range,
                capacity,
            });
        }
        let released: HashSet<Ipv4Addr> = self.released.iter().copied().collect();
        let start = fnv1a(namespace, name) % capacity;
        let fresh = (0..capacity)
            .map(|i| self.range.nth((start + i) % capacity))
            .find(|ip| !self.in_use.contains(ip) && !released.contains(ip));
        let vip = match fresh {
            Some(ip) => ip,
            None => {
                // Every address has been used once: reuse the one released longest ago.
                let pos = self
                    .released
                    .iter()
                    .position(|ip| !self.in_use.contains(ip));
                match pos.and_then(|p| self.released.remove(p)) {
                    Some(ip) => ip,
                    None => {
                        return Err(VipError::Exhausted {
                            range: self.range,
                            capacity,
                        });
                    }
                }
            }
        };
        self.released.retain(|ip| *ip != vip);
        self.in_use.insert(vip);
        self.by_name
            .insert((namespace.to_string(), name.to_string()), vip);
        Ok(vip)
    }

    /// Releases a service's VIP; it goes to the back of the reuse queue.
    pub fn release(&mut self, namespace: &str, name: &str) -> Option<Ipv4Addr> {
        let vip = self
            .by_name
            .remove(&(namespace.to_string(), name.to_string()))?;
        self.in_use.remove(&vip);
        self.released.push_back(vip);
        Some(vip)
    }

    /// Makes the table match exactly the given services: releases the others (in name order,
    /// so the result is deterministic) and allocates the new ones.
    pub fn sync<'a>(
        &mut self,
        services: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<(), VipError> {
        let wanted: BTreeSet<(String, String)> = services
            .into_iter()
            .map(|(ns, n)| (ns.to_string(), n.to_string()))
            .collect();
        let gone: Vec<_> = self
            .by_name
            .keys()
            .filter(|k| !wanted.contains(*k))
            .cloned()
            .collect();
        for (ns, name) in gone {
            self.release(&ns, &name);
        }
        for (ns, name) in &wanted {
            self.allocate(ns, name)?;
        }
        Ok(())
    }

    /// Loads a table saved by [`VipAllocator::save`].
    pub fn load(path: &Path) -> Result<VipAllocator, VipError> {
        let text = std::fs::read_to_string(path).map_err(|source| VipError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let table: Table = serde_json::from_str(&text).map_err(|source| VipError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        let corrupt = |message: String| VipError::Corrupt {
            path: path.to_path_buf(),
            message,
        };
        if table.version != 1 {
            return Err(corrupt(format!(
                "unsupported table version {}",
                table.version
            )));
        }
        let mut alloc = VipAllocator::new(table.range);
        for a in table.allocations {
            if !alloc.range.contains(a.vip) {
                return Err(corrupt(format!(
                    "{} of {}/{} is outside {}",
                    a.vip, a.namespace, a.name, alloc.range
                )));
            }
            if !alloc.in_use.insert(a.vip) {
                return Err(corrupt(format!("{} is allocated twice", a.vip)));
            }
            if alloc
                .by_name
                .insert((a.namespace.clone(), a.name.clone()), a.vip)
                .is_some()
            {
                return Err(corrupt(format!(
                    "{}/{} is listed twice",
                    a.namespace, a.name
                )));
            }
        }
        alloc.released = table
            .released
            .into_iter()
            .filter(|ip| !alloc.in_use.contains(ip))
            .collect();
        Ok(alloc)
    }

    /// Loads the table at `path`, or starts an empty one over `range` if there is no file.
    /// A saved table over a different range is an error: moving VIPs would break clients.
    pub fn load_or_new(path: &Path, range: VipRange) -> Result<VipAllocator, VipError> {
        if !path.exists() {
            return Ok(VipAllocator::new(range));
        }
        let alloc = VipAllocator::load(path)?;
        if alloc.range != range {
            return Err(VipError::Corrupt {
                path: path.to_path_buf(),
                message: format!(
                    "the table was allocated from {}, not {range}; remove it to reallocate",
                    alloc.range
                ),
            });
        }
        Ok(alloc)
    }

    /// Saves the table as JSON, atomically (temporary file + rename in the same directory).
    pub fn save(&self, path: &Path) -> Result<(), VipError> {
        let io = |source| VipError::Io {
            path: path.to_path_buf(),
            source,
        };
        let table = Table {
            version: 1,
            range: self.range,
            allocations: self
                .by_name
                .iter()
                .map(|((ns, n), vip)| Allocation {
                    namespace: ns.clone(),
                    name: n.clone(),
                    vip: *vip,
                })
                .collect(),
            released: self.released.iter().copied().collect(),
        };
        let json = serde_json::to_vec_pretty(&table).map_err(|e| io(std::io::Error::other(e)))?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, json).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

/// FNV-1a over `namespace/name`: stable across Rust versions and platforms, unlike std's hasher.
fn fnv1a(namespace: &str, name: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in namespace
        .bytes()
        .chain(std::iter::once(b'/'))
        .chain(name.bytes())
    {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
clusterDomain: cluster.local
services:
  - name: backend
    vip: 127.240.0.10
    vip6: fd00::10
    ports:
      - { name: http, port: 8080 }
      - { name: dns, port: 53, protocol: UDP }
  - name: db
    namespace: data
    vip: 127.240.0.11
"#;

    #[test]
    fn parses_yaml_with_defaults() {
        let r = Records::from_yaml(GOOD, "t.yaml").unwrap();
        assert_eq!(r.default_namespace, "default");
        assert_eq!(r.ttl, DEFAULT_TTL);
        assert_eq!(r.namespace_of(&r.services[0]), "default");
        assert_eq!(r.namespace_of(&r.services[1]), "data");
        assert_eq!(r.services[0].ports[1].protocol, PortProtocol::Udp);
        assert_eq!(r.services[0].ports[0].protocol, PortProtocol::Tcp);
    }

    #[test]
    fn json_round_trip() {
        let r = Records::from_yaml(GOOD, "t.yaml").unwrap();
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(Records::from_json(&json, "t.json").unwrap(), r);
    }

    #[test]
    fn rejects_bad_input_with_position() {
        let cases: &[(&str, &str)] = &[
            (
                "services:\n  - name: a\n    vip: 127.240.0.1\n    colour: red\n",
                "colour",
            ),
            (
                "services:\n  - name: a\n    vip: not-an-ip\n",
                "services[0].vip",
            ),
            ("", "empty"),
            (
                "services:\n  - name: a\n    vip: 127.240.0.1\n  - name: b\n    vip: 127.2",
                "services[1].vip",
            ),
        ];
        for (text, needle) in cases {
            let err = Records::from_yaml(text, "r.yaml").unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
            assert!(err.starts_with("r.yaml:"), "{err:?}");
        }
    }

    #[test]
    fn wrong_types_are_placed_at_their_line_and_column() {
        let text = "services:\n  - name: a\n    vip: 127.240.0.1\n    ports:\n      - { name: http, port: high }\n";
        let err = Records::from_yaml(text, "r.yaml").unwrap_err();
        let RecordsError::Syntax {
            line, column, path, ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(path, "services[0].ports[0].port");
        assert_eq!((*line, *column), (5, 23), "{err}");
        assert!(err.to_string().starts_with("r.yaml:5:23: "), "{err}");
    }

    #[test]
    fn validate_finds_every_problem() {
        let text = r#"
clusterDomain: "bad_domain"
services:
  - { name: Backend, vip: 127.240.0.1 }
  - { name: a, vip: 127.240.0.1 }
  - { name: a, vip: 0.0.0.0, ports: [{ name: http, port: 80 }, { name: http, port: 80 }, { name: x, port: 0 }] }
"#;
        let Err(RecordsError::Invalid { errors, .. }) = Records::from_yaml(text, "r") else {
            panic!()
        };
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "clusterDomain",
            "services[0].name",
            "services[1].vip",
            "services[2].name",
            "services[2].vip",
            "services[2].ports[1].name",
            "services[2].ports[1].port",
            "services[2].ports[2].port",
        ] {
            assert!(paths.contains(&want), "{want} missing from {paths:?}");
        }
    }

    #[test]
    fn range_parsing() {
        assert_eq!(
            "127.240.0.0/16".parse::<VipRange>().unwrap(),
            VipRange::default()
        );
        assert!("240.240.0.0/16".parse::<VipRange>().is_ok());
        for bad in [
            "127.240.0.1/16",
            "127.240.0.0",
            "10.0.0.0/31",
            "x/16",
            "10.0.0.0/4",
        ] {
            assert!(bad.parse::<VipRange>().is_err(), "{bad}");
        }
        let r: VipRange = "10.0.0.0/30".parse().unwrap();
        assert_eq!(r.capacity(), 2);
        assert!(r.contains(Ipv4Addr::new(10, 0, 0, 1)) && r.contains(Ipv4Addr::new(10, 0, 0, 2)));
        assert!(!r.contains(Ipv4Addr::new(10, 0, 0, 0)) && !r.contains(Ipv4Addr::new(10, 0, 0, 3)));
    }

    #[test]
    fn allocation_is_stable_deterministic_and_unique() {
        let mut a = VipAllocator::new(VipRange::default());
        let mut b = VipAllocator::new(VipRange::default());
        let v1 = a.allocate("default", "backend").unwrap();
        assert_eq!(a.allocate("default", "backend").unwrap(), v1);
        assert_eq!(
            b.allocate("default", "backend").unwrap(),
            v1,
            "same name, same VIP on another host"
        );
        assert!(VipRange::default().contains(v1));
        let mut seen = HashSet::new();
        for i in 0..500 {
            assert!(seen.insert(a.allocate("ns", &format!("svc{i}")).unwrap()));
        }
        assert!(!seen.contains(&v1));
    }

    #[test]
    fn released_vips_are_not_reused_until_the_range_runs_out() {
        let range: VipRange = "10.0.0.0/29".parse().unwrap(); // 6 usable
        let mut a = VipAllocator::new(range);
        let first = a.allocate("d", "one").unwrap();
        assert_eq!(a.release("d", "one"), Some(first));
        let mut got = Vec::new();
        for i in 0..5 {
            got.push(a.allocate("d", &format!("s{i}")).unwrap());
        }
        assert!(
            !got.contains(&first),
            "released VIP reused while fresh ones remained"
        );
        assert_eq!(
            a.allocate("d", "late").unwrap(),
            first,
            "oldest released VIP reused last"
        );
        assert!(matches!(
            a.allocate("d", "more"),
            Err(VipError::Exhausted { .. })
        ));
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vips.json");
        let mut a = VipAllocator::new("240.240.0.0/16".parse().unwrap());
        a.sync([
            ("default", "backend"),
            ("default", "frontend"),
            ("data", "db"),
        ])
        .unwrap();
        a.sync([("default", "backend"), ("data", "db")]).unwrap();
        assert_eq!(a.get("default", "frontend"), None);
        a.save(&path).unwrap();
        let b = VipAllocator::load(&path).unwrap();
        assert_eq!(a, b);
        assert!(VipAllocator::load_or_new(&path, VipRange::default()).is_err());
        let fresh =
            VipAllocator::load_or_new(&dir.path().join("none.json"), VipRange::default()).unwrap();
        assert_eq!(fresh.iter().count(), 0);
        std::fs::write(&path, b"{\"version\":1,").unwrap();
        assert!(matches!(
            VipAllocator::load(&path),
            Err(VipError::Parse { .. })
        ));
    }
}
