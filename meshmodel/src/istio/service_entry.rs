//! ServiceEntry (networking.istio.io v1alpha3, v1beta1, v1): a destination outside the mesh,
//! given a name (its `hosts`), ports and addresses, so clients reach it through the mesh (a VIP
//! that meshdns answers for its hosts, the DestinationRule's TLS origination, routing).
//!
//! meshctl serves `location: MESH_EXTERNAL` with `resolution: STATIC` (endpoints are IP
//! addresses). Everything else Istio has is read, checked as Istio checks it, and refused by
//! name where meshctl does not serve it yet (`resolution: DNS`, `NONE`, `MESH_INTERNAL`,
//! `exportTo`, `workloadSelector`, `addresses`, ...).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use meshapi::diag::FieldError;

use super::meta::{Ignored, ObjectMeta};
use super::validate::{Report, check_wildcard_domain, is_ip};

/// A ServiceEntry document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntry {
    /// `networking.istio.io/v1`, `v1beta1` or `v1alpha3` (same schema).
    pub api_version: String,
    /// `ServiceEntry`.
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServiceEntrySpec,
    /// Written by a cluster; read and dropped.
    #[serde(default, skip_serializing)]
    pub status: Ignored,
}

/// The `spec` of a ServiceEntry.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntrySpec {
    /// Host names of the service (`api.example.com`); clients use them in DNS and `Host`.
    /// Required, at least one, not `*`.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Virtual IPs of the service. Refused: meshctl gives every entry a VIP of its own range.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// The service's ports. Each has a unique number and name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    /// `MESH_EXTERNAL` (default as meshctl serves it) or `MESH_INTERNAL` (refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// How endpoints are found. Istio's default is `NONE`; meshctl serves `STATIC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
    /// The endpoints (`STATIC`: IP addresses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<WorkloadEntry>,
    /// Selects mesh workloads as endpoints (MESH_INTERNAL only). Refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<EntrySelector>,
    /// Namespaces that see the entry. Refused: every entry is visible mesh-wide.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// Names the server certificate must carry. Refused: set them in the DestinationRule's
    /// `tls.subjectAltNames`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
}

/// One port of a ServiceEntry.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// Port number, 1-65535. Required.
    #[serde(default)]
    pub number: u32,
    /// `HTTP`, `HTTP2`, `GRPC`, `HTTPS`, `TLS`, `TCP`, ... Default: TCP (opaque).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Port name, unique in the entry. Required.
    #[serde(default)]
    pub name: String,
    /// The endpoints' port. Default: `number`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

/// `location`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    MeshExternal,
    MeshInternal,
}

/// `resolution`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    None,
    Static,
    Dns,
    DnsRoundRobin,
    DynamicDns,
}

/// One endpoint (Istio's `WorkloadEntry` shape).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntry {
    /// IP address (STATIC) or host name (DNS), without port. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Per port name, this endpoint's port number (overrides the port's `targetPort`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u32>,
    /// Labels, for DestinationRule subsets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Refused: one network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Refused: no locality-aware balancing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    /// Refused: endpoints weigh the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Refused: endpoints outside the mesh have no mesh identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

/// `workloadSelector` of a ServiceEntry (`labels`, unlike the other kinds' `matchLabels`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EntrySelector {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The protocols a ServiceEntry port may declare (Istio's list).
const PROTOCOLS: &[&str] = &[
    "HTTP", "HTTPS", "HTTP2", "GRPC", "GRPC-WEB", "TCP", "TLS", "MONGO", "REDIS", "MYSQL", "UDP",
];

impl ServicePort {
    /// The endpoints' port.
    pub fn target(&self) -> u32 {
        self.target_port.unwrap_or(self.number)
    }
}

impl ServiceEntry {
    /// Checks the resource as Istio would, plus meshctl's refusals. Paths start at the document
    /// root (`spec.ports[0].number`).
    pub fn validate(&self) -> Vec<FieldError> {
        let mut r = Report::default();
        self.metadata.validate_into(&mut r, false);
        let spec = &self.spec;
        if spec.hosts.is_empty() {
            r.error("spec.hosts", "at least one host is required");
        }
        for (i, h) in spec.hosts.iter().enumerate() {
            let p = format!("spec.hosts[{i}]");
            if h == "*" {
                r.error(p, "hostname cannot be wildcard");
            } else if let Err(e) = check_wildcard_domain(h) {
                r.error(p, e);
            } else if h.starts_with('*') {
                r.unsupported(
                    p,
                    "wildcard ServiceEntry hosts",
                    "a wildcard has no one VIP; name each host",
                );
            }
        }
        let mut numbers = BTreeMap::new();
        let mut names = BTreeMap::new();
        for (i, port) in spec.ports.iter().enumerate() {
            let p = format!("spec.ports[{i}]");
            if !(1..=65535).contains(&port.number) {
                r.error(format!("{p}.number"), "port must be between 1-65535");
            } else if let Some(j) = numbers.insert(port.number, i) {
                r.error(
                    format!("{p}.number"),
                    format!("port number cannot be duplicated (also spec.ports[{j}])"),
                );
            }
            if port.name.is_empty() {
                r.error(format!("{p}.name"), "port name is required");
            } else if names.insert(port.name.as_str(), i).is_some() {
                r.error(format!("{p}.name"), "port name must be unique");
            }
            if let Some(t) = port.target_port
                && !(1..=65535).contains(&t)
            {
                r.error(format!("{p}.targetPort"), "port must be between 1-65535");
            }
            if let Some(proto) = &port.protocol
                && !PROTOCOLS.contains(&proto.to_ascii_uppercase().as_str())
            {
                r.error_hint(
                    format!("{p}.protocol"),
                    format!("unknown protocol {proto:?}"),
                    format!("use one of {}", PROTOCOLS.join(", ")),
                );
            }
        }
        if !spec.addresses.is_empty() {
            r.unsupported(
                "spec.addresses",
                "ServiceEntry addresses",
                "meshctl gives every entry a VIP of its own range, answered by meshdns for its hosts; remove addresses",
            );
        }
        if spec.location == Some(Location::MeshInternal) {
            r.unsupported(
                "spec.location",
                "location MESH_INTERNAL",
                "mesh workloads come from the compose file; an entry names a destination outside the mesh",
            );
        }
        if spec.workload_selector.is_some() {
            if !spec.endpoints.is_empty() {
                r.error(
                    "spec.workloadSelector",
                    "only one of WorkloadSelector or Endpoints can be set",
                );
            }
            r.unsupported(
                "spec.workloadSelector",
                "ServiceEntry workloadSelector",
                "mesh workloads come from the compose file",
            );
        }
        if !spec.export_to.is_empty() {
            r.unsupported(
                "spec.exportTo",
                "ServiceEntry exportTo",
                "every entry is visible to the whole mesh",
            );
        }
        if !spec.subject_alt_names.is_empty() {
            r.unsupported(
                "spec.subjectAltNames",
                "ServiceEntry subjectAltNames",
                "set them in the DestinationRule's trafficPolicy.tls.subjectAltNames",
            );
        }
        let resolution = spec.resolution.unwrap_or(Resolution::None);
        match resolution {
            Resolution::Static => {}
            Resolution::None => {
                if !spec.endpoints.is_empty() {
                    r.error("spec.endpoints", "NONE mode cannot set endpoints");
                }
                r.unsupported(
                    "spec.resolution",
                    "resolution NONE (the default)",
                    "forwarding to the address the client dialled is not served; set resolution: STATIC and list the endpoints' IP addresses",
                );
            }
            Resolution::Dns | Resolution::DnsRoundRobin | Resolution::DynamicDns => {
                if resolution == Resolution::DnsRoundRobin && spec.endpoints.len() > 1 {
                    r.error(
                        "spec.endpoints",
                        "DNS_ROUND_ROBIN mode cannot have multiple endpoints",
                    );
                }
                r.unsupported(
                    "spec.resolution",
                    "DNS resolution of ServiceEntry endpoints",
                    "not served yet; set resolution: STATIC and list the endpoints' IP addresses",
                );
            }
        }
        if resolution == Resolution::Static
            && spec.endpoints.is_empty()
            && spec.workload_selector.is_none()
        {
            r.error_hint(
                "spec.endpoints",
                "STATIC resolution needs endpoints",
                "list the service's IP addresses under endpoints",
            );
        }
        if resolution == Resolution::Static && spec.ports.is_empty() {
            r.error_hint(
                "spec.ports",
                "meshctl needs the ports of a STATIC entry",
                "add ports: [{number: 443, name: https, protocol: TLS}]",
            );
        }
        for (i, e) in spec.endpoints.iter().enumerate() {
            let p = format!("spec.endpoints[{i}]");
            match e.address.as_deref() {
                None | Some("") => r.error(format!("{p}.address"), "Address is required"),
                Some(a) if a.starts_with("unix://") => r.unsupported(
                    format!("{p}.address"),
                    "unix domain socket endpoints",
                    "endpoints are IP addresses",
                ),
                Some(a) if resolution == Resolution::Static && !is_ip(a) => r.error(
                    format!("{p}.address"),
                    format!("{a:?} is not an IP address (STATIC resolution needs IP endpoints)"),
                ),
                Some(_) => {}
            }
            for (name, port) in &e.ports {
                if !names.contains_key(name.as_str()) {
                    r.error_hint(
                        format!("{p}.ports.{name}"),
                        format!("no port named {name:?} in spec.ports"),
                        format!(
                            "name one of {}",
                            names.keys().copied().collect::<Vec<_>>().join(", ")
                        ),
                    );
                }
                if !(1..=65535).contains(port) {
                    r.error(format!("{p}.ports.{name}"), "port must be between 1-65535");
                }
            }
            for (field, set) in [
                ("network", e.network.is_some()),
                ("locality", e.locality.is_some()),
                ("weight", e.weight.is_some()),
                ("serviceAccount", e.service_account.is_some()),
            ] {
                if set {
                    r.unsupported(
                        format!("{p}.{field}"),
                        &format!("ServiceEntry endpoint {field}"),
                        "endpoints outside the mesh are balanced alike and have no mesh identity",
                    );
                }
            }
        }
        r.into_errors()
    }
}
