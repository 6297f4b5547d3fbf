//! Sidecar (networking.istio.io v1alpha3, v1beta1, v1): what the proxies of some workloads
//! may reach. meshctl serves `workloadSelector`, `egress[].hosts` (which services and
//! ServiceEntries a proxy receives: `namespace/host` with `.`, `*` and `~` as Istio reads
//! them) and `outboundTrafficPolicy.mode`. Everything else Istio has is refused by name
//! (`ingress`, `inboundConnectionPool`, `egress[].port`, `bind`, `captureMode`,
//! `outboundTrafficPolicy.egressProxy`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use meshapi::diag::FieldError;
use meshapi::proxy::OutboundMode;

use super::destination_rule::ConnectionPoolSettings;
use super::matchers::{Labels, is_dns1123_label};
use super::meta::{Ignored, ObjectMeta};
use super::validate::{Report, check_wildcard_domain};
use super::virtual_service::Destination;

/// A Sidecar document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sidecar {
    /// `networking.istio.io/v1`, `v1beta1` or `v1alpha3` (same schema).
    pub api_version: String,
    /// `Sidecar`.
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: SidecarSpec,
    /// Written by a cluster; read and dropped.
    #[serde(default, skip_serializing)]
    pub status: Ignored,
}

/// The `spec` of a Sidecar.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarSpec {
    /// The workloads this applies to (`labels`). Absent: every workload of the namespace
    /// without a selecting Sidecar of its own (in the root namespace: of the mesh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<SidecarSelector>,
    /// Inbound listeners. Refused: the inbound side comes from the compose ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<IngressListener>>,
    /// What the proxy may reach. meshctl serves one listener without `port` (its `hosts`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressListener>,
    /// The mode for destinations outside the registry; overrides the mesh's
    /// (`x-mesh.outboundTrafficPolicy`) for the selected workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<SidecarOutboundPolicy>,
    /// Inbound connection pool settings. Refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_connection_pool: Option<ConnectionPoolSettings>,
}

/// Sidecar's `workloadSelector` (networking's selector: `labels`, not `matchLabels`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarSelector {
    /// Labels a workload must all carry. Required, at least one.
    #[serde(default)]
    pub labels: Labels,
}

/// One `egress` listener.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressListener {
    /// The port of this listener. Refused: one listener for every port is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<SidecarPort>,
    /// The address to bind. Refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    /// `IPTABLES`, `NONE` or `DEFAULT`. Refused: capture is the runner's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_mode: Option<String>,
    /// `namespace/dnsName` entries: `./` the Sidecar's namespace, `*/` any, `~/` none; the
    /// name is `*`, a `*.suffix` or an FQDN. Required, at least one.
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// Sidecar's `outboundTrafficPolicy`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarOutboundPolicy {
    /// `ALLOW_ANY` (Istio's default) or `REGISTRY_ONLY`.
    #[serde(default)]
    pub mode: OutboundMode,
    /// Where `ALLOW_ANY` traffic goes instead of its destination. Refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_proxy: Option<Destination>,
}

/// A Sidecar listener's `port` (Istio's `SidecarPort`). Read so that it is refused by name.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

/// One `ingress` listener (Istio's `IstioIngressListener`). Read after Istio's schema so
/// that a typo in it is still an unknown field; the whole of `ingress` is refused by name.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressListener {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<SidecarPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
}

/// Istio's `ServerTLSSettings`, as an `ingress` listener carries it (refused with it).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTlsSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_redirect: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_crl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert_credential_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_names: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_certificates: Option<Vec<TlsCertificate>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_alt_names: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_certificate_spki: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_certificate_hash: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_protocol_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_protocol_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cipher_suites: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecdh_curves: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
}

/// One of `tls.tlsCertificates`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsCertificate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
}

/// The namespace part of an egress host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostNamespace {
    /// `*`: every namespace.
    Any,
    /// `~`: no namespace (imports nothing).
    None,
    /// `.` (the Sidecar's own namespace, resolved) or a name.
    Named(String),
}

/// One parsed `egress[].hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressHost {
    pub namespace: HostNamespace,
    /// `*`, `*.suffix` or an exact lower-case name.
    pub host: String,
}

impl EgressHost {
    /// Parses `ns/host` for a Sidecar in namespace `own`.
    pub fn parse(entry: &str, own: &str) -> Result<EgressHost, String> {
        let Some((ns, host)) = entry.split_once('/') else {
            return Err(format!(
                "egress host {entry:?} must be namespace/dnsName (`./{entry}`, `*/{entry}`)"
            ));
        };
        let namespace = match ns {
            "*" => HostNamespace::Any,
            "~" => HostNamespace::None,
            "." => HostNamespace::Named(own.to_string()),
            n if is_dns1123_label(n) => HostNamespace::Named(n.to_string()),
            n => return Err(format!("{n:?} is not a namespace, `.`, `*` or `~`")),
        };
        if namespace == HostNamespace::None && host != "*" {
            return Err(format!(
                "egress host {entry:?}: `~/` takes only `*` (`~/*` imports nothing)"
            ));
        }
        if host != "*" {
            check_wildcard_domain(host)?;
        }
        Ok(EgressHost {
            namespace,
            host: host.to_ascii_lowercase(),
        })
    }

    /// Whether a service named `host` (FQDN or ServiceEntry host) in namespace `ns` is
    /// imported by this entry.
    pub fn imports(&self, ns: &str, host: &str) -> bool {
        let ns_ok = match &self.namespace {
            HostNamespace::Any => true,
            HostNamespace::None => false,
            HostNamespace::Named(n) => n == ns,
        };
        let host = host.to_ascii_lowercase();
        ns_ok
            && (self.host == "*"
                || match self.host.strip_prefix('*') {
                    Some(suffix) => host.ends_with(suffix),
                    None => self.host == host,
                })
    }
}

impl Sidecar {
    /// Checks the resource as Istio would. Paths start at the document root.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut r = Report::default();
        self.metadata.validate_into(&mut r, false);
        let spec = &self.spec;
        let own = self.metadata.namespace.as_deref().unwrap_or("default");
        if spec.egress.is_empty()
            && spec.ingress.is_none()
            && spec.outbound_traffic_policy.is_none()
            && spec.inbound_connection_pool.is_none()
        {
            r.error_hint(
                "spec",
                "sidecar: empty configuration provided",
                "add `egress: [{hosts: [\"./*\"]}]` or `outboundTrafficPolicy: {mode: REGISTRY_ONLY}`",
            );
        }
        if let Some(sel) = &spec.workload_selector
            && sel.labels.is_empty()
        {
            r.error(
                "spec.workloadSelector.labels",
                "sidecar: workloadSelector must have at least one label",
            );
        }
        if spec.ingress.is_some() {
            r.unsupported(
                "spec.ingress",
                "Sidecar ingress",
                "the inbound side is the compose service's ports",
            );
        }
        if spec.inbound_connection_pool.is_some() {
            r.unsupported(
                "spec.inboundConnectionPool",
                "Sidecar inboundConnectionPool",
                "inbound connection limits are not served",
            );
        }
        if let Some(p) = &spec.outbound_traffic_policy
            && p.egress_proxy.is_some()
        {
            r.unsupported(
                "spec.outboundTrafficPolicy.egressProxy",
                "outboundTrafficPolicy egressProxy",
                "ALLOW_ANY traffic goes to its own destination",
            );
        }
        if spec.egress.len() > 1 {
            r.unsupported(
                "spec.egress[1]",
                "more than one egress listener",
                "one listener without `port` covers every port; list every host in it",
            );
        }
        for (i, e) in spec.egress.iter().enumerate() {
            let at = format!("spec.egress[{i}]");
            for (what, set) in [
                ("port", e.port.is_some()),
                ("bind", e.bind.is_some()),
                ("captureMode", e.capture_mode.is_some()),
            ] {
                if set {
                    r.unsupported(
                        format!("{at}.{what}"),
                        &format!("egress {what}"),
                        "one listener without `port` covers every port",
                    );
                }
            }
            if e.hosts.is_empty() {
                r.error(
                    format!("{at}.hosts"),
                    "sidecar: egress listener must contain at least one host",
                );
            }
            for (j, h) in e.hosts.iter().enumerate() {
                if let Err(m) = EgressHost::parse(h, own) {
                    r.error(format!("{at}.hosts[{j}]"), m);
                }
            }
        }
        r.into_errors()
    }

    /// The parsed `egress[].hosts` (those that parse), `None` when there is no egress
    /// listener (everything is imported, as without a Sidecar).
    pub fn egress_hosts(&self, own_namespace: &str) -> Option<Vec<EgressHost>> {
        if self.spec.egress.is_empty() {
            return None;
        }
        Some(
            self.spec
                .egress
                .iter()
                .flat_map(|e| &e.hosts)
                .filter_map(|h| EgressHost::parse(h, own_namespace).ok())
                .collect(),
        )
    }

    /// The selector's labels, empty without a selector.
    pub fn selector_labels(&self) -> BTreeMap<String, String> {
        self.spec
            .workload_selector
            .as_ref()
            .map(|s| {
                s.labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_hosts_read_namespace_and_name_as_istio_does() {
        let cases = [
            (
                "./*",
                "shop",
                "shop",
                "backend.shop.svc.cluster.local",
                true,
            ),
            (
                "./*",
                "shop",
                "other",
                "backend.other.svc.cluster.local",
                false,
            ),
            ("*/*", "shop", "other", "api.example.com", true),
            (
                "~/*",
                "shop",
                "shop",
                "backend.shop.svc.cluster.local",
                false,
            ),
            ("*/api.example.com", "shop", "x", "API.example.com", true),
            ("*/*.example.com", "shop", "x", "api.example.com", true),
            ("*/*.example.com", "shop", "x", "example.org", false),
            (
                "other/*",
                "shop",
                "other",
                "db.other.svc.cluster.local",
                true,
            ),
        ];
        for (entry, own, ns, host, want) in cases {
            let h = EgressHost::parse(entry, own).unwrap();
            assert_eq!(h.imports(ns, host), want, "{entry} {ns}/{host}");
        }
        for bad in ["backend", "~/backend.default.svc.cluster.local", "Bad_NS/*"] {
            assert!(EgressHost::parse(bad, "default").is_err(), "{bad}");
        }
    }
}
