//! The Istio resources meshctl reads, typed field by field after Istio's CRD schema
//! (`crd-all.gen.yaml`): VirtualService, DestinationRule, ServiceEntry and Sidecar
//! (networking.istio.io v1alpha3, v1beta1, v1), PeerAuthentication, AuthorizationPolicy and
//! RequestAuthentication
//! (security.istio.io v1beta1, v1), Telemetry (telemetry.istio.io v1, v1alpha1).
//!
//! - Every struct refuses unknown fields, so a typo or a misplaced field is an error with the
//!   field's path, never silently dropped.
//! - Scalars with rules (durations, percentages, ports, labels, principals, IP blocks, `retryOn`)
//!   are newtypes in [`types`] that check themselves while being read.
//! - `validate()` on each kind applies Istio's cross-field rules (oneofs, required fields,
//!   minimums) and refuses by name what meshctl does not serve yet
//!   (`not supported by meshctl: ...`).
//! - [`kind_of`] tells served kinds from known-but-unserved ones (Gateway,
//!   Kubernetes objects, ...) and unknown ones; [`IstioResource::from_value`] reads one document.
//!
//! Istio's defaults are documented on the fields and exposed as consts and accessors, e.g.
//! [`HttpRoute::retry_policy`], [`HttpRetry::DEFAULT_RETRY_ON`], [`HttpRoute::mirror_percentage`].

pub mod authorization_policy;
pub mod destination_rule;
pub mod matchers;
pub mod meta;
pub mod peer_authentication;
pub mod request_authentication;
pub mod service_entry;
pub mod sidecar;
pub mod telemetry;
pub mod types;
mod validate;
mod validate_dr;
mod validate_vs;
pub mod virtual_service;

use serde::Serialize;

use meshapi::diag::FieldError;

pub use authorization_policy::{
    Action, Attribute, AuthorizationPolicy, AuthorizationPolicySpec, Condition, ExtensionProvider,
    Operation, Rule, RuleFrom, RuleTo, Source,
};
pub use destination_rule::{
    ClientTlsSettings, ConnectionPoolSettings, ConsistentHashLb, DestinationRule,
    DestinationRuleSpec, H2UpgradePolicy, HttpSettings, LoadBalancerSettings, OutlierDetection,
    PortTrafficPolicy, SimpleLb, Subset, TcpSettings, TlsMode, TrafficPolicy,
};
pub use meta::{Ignored, ObjectMeta, PolicyTargetReference, WorkloadSelector};
pub use peer_authentication::{Mtls, MtlsMode, PeerAuthentication, PeerAuthenticationSpec};
pub use request_authentication::{RequestAuthentication, RequestAuthenticationSpec};
pub use service_entry::{ServiceEntry, ServiceEntrySpec};
pub use sidecar::{EgressHost, Sidecar, SidecarSpec};
pub use types::{
    Duration, IntPercent, IpBlock, Labels, Percent, Percentage, Port, PortString, Principal,
    RetryCondition, RetryOn, ServiceAccountRef, SpiffeParts, TrustDomain, Wildcard, WildcardMatch,
};
pub use validate_vs::{GRPC_STATUS_NAMES, MESH_GATEWAY};
pub use virtual_service::{
    Destination, FaultAbort, FaultDelay, Headers, HttpFaultInjection, HttpMatchRequest,
    HttpMirrorPolicy, HttpRedirect, HttpRetry, HttpRoute, HttpRouteDestination, RetryPolicy,
    RouteDestination, StringMatch, StringMatcher, TcpRoute, VirtualService, VirtualServiceSpec,
};

/// The API group of VirtualService and DestinationRule.
pub const NETWORKING_GROUP: &str = "networking.istio.io";
/// The API group of PeerAuthentication, AuthorizationPolicy and RequestAuthentication.
pub const SECURITY_GROUP: &str = "security.istio.io";
/// The API group of Telemetry.
pub const TELEMETRY_GROUP: &str = "telemetry.istio.io";

/// The Istio kinds meshctl serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IstioKind {
    VirtualService,
    DestinationRule,
    PeerAuthentication,
    AuthorizationPolicy,
    ServiceEntry,
    Sidecar,
    RequestAuthentication,
    Telemetry,
}

impl IstioKind {
    pub const ALL: [IstioKind; 8] = [
        IstioKind::VirtualService,
        IstioKind::DestinationRule,
        IstioKind::PeerAuthentication,
        IstioKind::AuthorizationPolicy,
        IstioKind::ServiceEntry,
        IstioKind::Sidecar,
        IstioKind::RequestAuthentication,
        IstioKind::Telemetry,
    ];

    /// The `kind:` value.
    pub fn name(self) -> &'static str {
        match self {
            IstioKind::VirtualService => "VirtualService",
            IstioKind::DestinationRule => "DestinationRule",
            IstioKind::PeerAuthentication => "PeerAuthentication",
            IstioKind::AuthorizationPolicy => "AuthorizationPolicy",
            IstioKind::ServiceEntry => "ServiceEntry",
            IstioKind::Sidecar => "Sidecar",
            IstioKind::RequestAuthentication => "RequestAuthentication",
            IstioKind::Telemetry => "Telemetry",
        }
    }

    pub fn group(self) -> &'static str {
        match self {
            IstioKind::VirtualService
            | IstioKind::DestinationRule
            | IstioKind::ServiceEntry
            | IstioKind::Sidecar => NETWORKING_GROUP,
            IstioKind::PeerAuthentication
            | IstioKind::AuthorizationPolicy
            | IstioKind::RequestAuthentication => SECURITY_GROUP,
            IstioKind::Telemetry => TELEMETRY_GROUP,
        }
    }

    /// The versions served, newest first; all have the same schema.
    pub fn versions(self) -> &'static [&'static str] {
        match self {
            IstioKind::VirtualService
            | IstioKind::DestinationRule
            | IstioKind::ServiceEntry
            | IstioKind::Sidecar => &["v1", "v1beta1", "v1alpha3"],
            IstioKind::PeerAuthentication
            | IstioKind::AuthorizationPolicy
            | IstioKind::RequestAuthentication => &["v1", "v1beta1"],
            IstioKind::Telemetry => &["v1", "v1alpha1"],
        }
    }

    fn from_name(kind: &str) -> Option<IstioKind> {
        IstioKind::ALL.into_iter().find(|k| k.name() == kind)
    }
}

impl std::fmt::Display for IstioKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What meshctl makes of an `apiVersion` and `kind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KindLookup {
    /// A kind meshctl reads.
    Served(IstioKind),
    /// A served kind under an apiVersion that does not serve it (e.g. `v1alpha1`).
    UnservedVersion { kind: IstioKind, message: String },
    /// A kind meshctl knows and does not serve (Gateway, ServiceEntry, Kubernetes objects, ...).
    Unserved { message: String },
    /// Not a kind meshctl knows.
    Unknown { message: String },
}

impl KindLookup {
    /// The one-line explanation, `None` for a served kind.
    pub fn message(&self) -> Option<&str> {
        match self {
            KindLookup::Served(_) => None,
            KindLookup::UnservedVersion { message, .. }
            | KindLookup::Unserved { message }
            | KindLookup::Unknown { message } => Some(message),
        }
    }
}

/// Kinds meshctl knows and does not serve, by API group, with why and what to do instead.
const UNSERVED: &[(&str, &str, &str)] = &[
    (
        NETWORKING_GROUP,
        "Gateway",
        "meshctl has no ingress/egress gateways yet; publish a service with compose `ports:`",
    ),
    (
        NETWORKING_GROUP,
        "WorkloadEntry",
        "workloads come from the compose file and `meshctl join`",
    ),
    (
        NETWORKING_GROUP,
        "WorkloadGroup",
        "workloads come from the compose file and `meshctl join`",
    ),
    (
        NETWORKING_GROUP,
        "EnvoyFilter",
        "the meshctl proxy is not Envoy",
    ),
    (
        NETWORKING_GROUP,
        "ProxyConfig",
        "proxy settings come from meshctl itself",
    ),
    (
        "extensions.istio.io",
        "WasmPlugin",
        "the meshctl proxy does not run Wasm plugins",
    ),
    (
        "extensions.istio.io",
        "TrafficExtension",
        "the meshctl proxy does not run proxy extensions",
    ),
    (
        "gateway.networking.k8s.io",
        "*",
        "Kubernetes Gateway API resources are not served; use VirtualService",
    ),
    ("", "Service", "services come from the compose file"),
    ("", "Pod", "workloads come from the compose file"),
    (
        "",
        "Namespace",
        "namespaces are set per service with `x-mesh.namespace`",
    ),
    (
        "",
        "ServiceAccount",
        "service accounts are set per service with `x-mesh.serviceAccount`",
    ),
    ("", "ConfigMap", "configuration belongs in the compose file"),
    ("", "Secret", "secrets belong in the compose file"),
    ("", "Endpoints", "endpoints come from running services"),
    ("", "Node", "hosts are managed by meshctl"),
    ("", "List", "write one resource per YAML document"),
    ("apps", "Deployment", "workloads come from the compose file"),
    (
        "apps",
        "StatefulSet",
        "workloads come from the compose file",
    ),
    ("apps", "DaemonSet", "workloads come from the compose file"),
    ("apps", "ReplicaSet", "workloads come from the compose file"),
    ("batch", "Job", "workloads come from the compose file"),
    ("batch", "CronJob", "workloads come from the compose file"),
    (
        "networking.k8s.io",
        "Ingress",
        "publish a service with compose `ports:`",
    ),
    (
        "networking.k8s.io",
        "NetworkPolicy",
        "use an AuthorizationPolicy",
    ),
    (
        "discovery.k8s.io",
        "EndpointSlice",
        "endpoints come from running services",
    ),
    (
        "apiextensions.k8s.io",
        "CustomResourceDefinition",
        "meshctl has Istio's definitions built in",
    ),
    (
        "rbac.authorization.k8s.io",
        "*",
        "Kubernetes RBAC does not apply to a meshctl mesh",
    ),
    (
        "policy",
        "PodDisruptionBudget",
        "there is no Kubernetes scheduler here",
    ),
    (
        "autoscaling",
        "HorizontalPodAutoscaler",
        "scale with compose `deploy.replicas`",
    ),
];

/// Classifies an `apiVersion` and `kind`.
pub fn kind_of(api_version: &str, kind: &str) -> KindLookup {
    let (group, version) = match api_version.rsplit_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    if let Some(k) = IstioKind::from_name(kind) {
        if group == k.group() && k.versions().contains(&version) {
            return KindLookup::Served(k);
        }
        if group == k.group() || group.ends_with("istio.io") {
            let versions: Vec<String> = k
                .versions()
                .iter()
                .map(|v| format!("{}/{v}", k.group()))
                .collect();
            return KindLookup::UnservedVersion {
                kind: k,
                message: format!(
                    "{kind} is served as apiVersion {}, not {api_version}",
                    versions.join(", ")
                ),
            };
        }
    }
    if let Some((_, _, why)) = UNSERVED
        .iter()
        .find(|(g, k, _)| *g == group && (*k == kind || *k == "*"))
    {
        let what = if group.is_empty() {
            format!("Kubernetes {kind}")
        } else {
            format!("{kind} ({group})")
        };
        return KindLookup::Unserved {
            message: format!("{what} is not served by meshctl: {why}"),
        };
    }
    let served: Vec<&str> = IstioKind::ALL.iter().map(|k| k.name()).collect();
    let message = if kind.is_empty() || api_version.is_empty() {
        "a resource needs apiVersion and kind".to_string()
    } else if group.ends_with("istio.io") {
        format!(
            "{kind} ({api_version}) is not an Istio kind meshctl knows; meshctl serves {}",
            served.join(", ")
        )
    } else {
        format!(
            "unknown kind {kind} ({api_version}); meshctl serves {}",
            served.join(", ")
        )
    };
    KindLookup::Unknown { message }
}

/// One served Istio resource.
// Resources are read once and kept by the thousand at most; boxing would only cost clarity.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum IstioResource {
    VirtualService(VirtualService),
    DestinationRule(DestinationRule),
    PeerAuthentication(PeerAuthentication),
    AuthorizationPolicy(AuthorizationPolicy),
    ServiceEntry(ServiceEntry),
    Sidecar(Sidecar),
    RequestAuthentication(RequestAuthentication),
    Telemetry(telemetry::Telemetry),
}

impl IstioResource {
    /// Reads one whole document (`apiVersion`, `kind`, `metadata`, `spec`, `status`).
    ///
    /// On a kind that is not served the error's path is `kind` (or `apiVersion` for an unserved
    /// version) and its message is [`KindLookup::message`]. On a bad field the path is the
    /// field's path (`spec.http[0].retries.timeout`) and the message is serde's, e.g.
    /// ``unknown field `timeout`, expected one of `attempts`, ...``.
    pub fn from_value(
        api_version: &str,
        kind: &str,
        value: meshapi::yaml::Value,
    ) -> Result<Self, FieldError> {
        let k = match kind_of(api_version, kind) {
            KindLookup::Served(k) => k,
            KindLookup::UnservedVersion { message, .. } => {
                return Err(FieldError::new("apiVersion", message));
            }
            KindLookup::Unserved { message } | KindLookup::Unknown { message } => {
                return Err(FieldError::new("kind", message));
            }
        };
        match k {
            IstioKind::VirtualService => deserialize(value).map(IstioResource::VirtualService),
            IstioKind::DestinationRule => deserialize(value).map(IstioResource::DestinationRule),
            IstioKind::PeerAuthentication => {
                deserialize(value).map(IstioResource::PeerAuthentication)
            }
            IstioKind::AuthorizationPolicy => {
                deserialize(value).map(IstioResource::AuthorizationPolicy)
            }
            IstioKind::ServiceEntry => deserialize(value).map(IstioResource::ServiceEntry),
            IstioKind::Sidecar => deserialize(value).map(IstioResource::Sidecar),
            IstioKind::RequestAuthentication => {
                deserialize(value).map(IstioResource::RequestAuthentication)
            }
            IstioKind::Telemetry => deserialize(value).map(IstioResource::Telemetry),
        }
    }

    pub fn kind(&self) -> IstioKind {
        match self {
            IstioResource::VirtualService(_) => IstioKind::VirtualService,
            IstioResource::DestinationRule(_) => IstioKind::DestinationRule,
            IstioResource::PeerAuthentication(_) => IstioKind::PeerAuthentication,
            IstioResource::AuthorizationPolicy(_) => IstioKind::AuthorizationPolicy,
            IstioResource::ServiceEntry(_) => IstioKind::ServiceEntry,
            IstioResource::Sidecar(_) => IstioKind::Sidecar,
            IstioResource::RequestAuthentication(_) => IstioKind::RequestAuthentication,
            IstioResource::Telemetry(_) => IstioKind::Telemetry,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            IstioResource::VirtualService(r) => &r.metadata,
            IstioResource::DestinationRule(r) => &r.metadata,
            IstioResource::PeerAuthentication(r) => &r.metadata,
            IstioResource::AuthorizationPolicy(r) => &r.metadata,
            IstioResource::ServiceEntry(r) => &r.metadata,
            IstioResource::Sidecar(r) => &r.metadata,
            IstioResource::RequestAuthentication(r) => &r.metadata,
            IstioResource::Telemetry(r) => &r.metadata,
        }
    }

    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            IstioResource::VirtualService(r) => &mut r.metadata,
            IstioResource::DestinationRule(r) => &mut r.metadata,
            IstioResource::PeerAuthentication(r) => &mut r.metadata,
            IstioResource::AuthorizationPolicy(r) => &mut r.metadata,
            IstioResource::ServiceEntry(r) => &mut r.metadata,
            IstioResource::Sidecar(r) => &mut r.metadata,
            IstioResource::RequestAuthentication(r) => &mut r.metadata,
            IstioResource::Telemetry(r) => &mut r.metadata,
        }
    }

    /// `metadata.name`, empty when missing (which `validate()` reports).
    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or("")
    }

    /// `metadata.namespace` as written; the loader applies the default.
    pub fn namespace(&self) -> Option<&str> {
        self.metadata().namespace.as_deref()
    }

    pub fn validate(&self) -> Vec<FieldError> {
        match self {
            IstioResource::VirtualService(r) => r.validate(),
            IstioResource::DestinationRule(r) => r.validate(),
            IstioResource::PeerAuthentication(r) => r.validate(),
            IstioResource::AuthorizationPolicy(r) => r.validate(),
            IstioResource::ServiceEntry(r) => r.validate(),
            IstioResource::Sidecar(r) => r.validate(),
            IstioResource::RequestAuthentication(r) => r.validate(),
            IstioResource::Telemetry(r) => r.validate(),
        }
    }
}

fn deserialize<T: serde::de::DeserializeOwned>(
    value: meshapi::yaml::Value,
) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        FieldError::new(path, e.into_inner().to_string())
    })
}
