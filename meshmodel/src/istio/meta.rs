//! Kubernetes object metadata and the selectors shared by several Istio kinds.

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer, Serialize};

use super::types::{Labels, is_dns1123_label, is_dns1123_subdomain};
use super::validate::Report;

/// The annotation that puts an AuthorizationPolicy in dry-run (shadow) mode.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// A field that is read whatever it holds and then dropped: a resource's `status`, which a
/// cluster writes and meshctl has no use for. Every value compares equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ignored;

impl<'de> Deserialize<'de> for Ignored {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(d)?;
        Ok(Ignored)
    }
}

/// Kubernetes `ObjectMeta`: what meshctl reads (`name`, `namespace`, `labels`, `annotations`)
/// and, so that `kubectl get -o yaml` output loads unchanged, the fields the API server fills in.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    /// Name of the resource, unique per kind and namespace. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Namespace. Absent means the project's default namespace (`default`), applied by the loader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Accepted and kept; meshctl does not generate names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// RFC 3339 timestamp, as written by the API server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_grace_period_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_link: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_references: Vec<OwnerReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
    /// Server-side-apply bookkeeping; kept verbatim.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managed_fields: Vec<meshapi::yaml::Value>,
}

/// Kubernetes `OwnerReference`, accepted so exported objects load.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OwnerReference {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_owner_deletion: Option<bool>,
}

impl ObjectMeta {
    /// Checks what Kubernetes would: a name is present and is a DNS subdomain, the namespace is a
    /// DNS label. The dry-run annotation is only meaningful on an AuthorizationPolicy
    /// (`allow_dry_run`), as in Istio.
    pub(crate) fn validate_into(&self, r: &mut Report, allow_dry_run: bool) {
        match &self.name {
            None => r.error("metadata.name", "name is required"),
            Some(n) if !is_dns1123_subdomain(n) => r.error(
                "metadata.name",
                format!(
                    "invalid name {n:?}: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters"
                ),
            ),
            Some(_) => {}
        }
        if let Some(ns) = &self.namespace
            && !is_dns1123_label(ns)
        {
            r.error(
                "metadata.namespace",
                format!(
                    "invalid namespace {ns:?}: lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters"
                ),
            );
        }
        if !allow_dry_run && self.annotations.contains_key(DRY_RUN_ANNOTATION) {
            r.error(
                format!("metadata.annotations.{DRY_RUN_ANNOTATION}"),
                format!("the {DRY_RUN_ANNOTATION} annotation is only supported on AuthorizationPolicy; remove it"),
            );
        }
    }
}

/// Istio's `WorkloadSelector`: the workloads (compose services, by their labels) a policy
/// applies to.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Labels a workload must all carry. Keys and values follow Kubernetes' label syntax; no
    /// wildcards. At most 4096 entries.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub match_labels: Labels,
}

impl WorkloadSelector {
    /// The maximum number of `matchLabels` entries Istio's schema allows.
    pub const MAX_LABELS: usize = 4096;

    pub(crate) fn validate_into(&self, r: &mut Report, path: &str) {
        if self.match_labels.len() > Self::MAX_LABELS {
            r.error(
                format!("{path}.matchLabels"),
                format!("at most {} labels are allowed", Self::MAX_LABELS),
            );
        }
    }
}

/// Istio's `PolicyTargetReference`: a policy attached to a Service, ServiceEntry or Gateway by
/// name instead of by workload labels.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    /// API group of the target; empty for the core group (Service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kind of the target: `Service`, `ServiceEntry`, `Gateway` or `GatewayClass`.
    pub kind: String,
    /// Name of the target.
    pub name: String,
    /// Must be empty: cross-namespace references are not supported (by Istio either).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl PolicyTargetReference {
    /// The (group, kind) pairs Istio accepts as policy targets.
    pub const ALLOWED: &'static [(&'static str, &'static str)] = &[
        ("", "Service"),
        ("networking.istio.io", "ServiceEntry"),
        ("gateway.networking.k8s.io", "Gateway"),
        ("gateway.networking.k8s.io", "GatewayClass"),
    ];

    pub(crate) fn validate_into(&self, r: &mut Report, path: &str) {
        if self.name.is_empty() {
            r.error(format!("{path}.name"), "targetRef name must be set");
        }
        if self.namespace.as_deref().is_some_and(|ns| !ns.is_empty()) {
            r.error(
                format!("{path}.namespace"),
                "cross namespace referencing is not supported; remove targetRef namespace",
            );
        }
        let group = self.group.as_deref().unwrap_or("");
        let group = if group == "core" { "" } else { group };
        if !Self::ALLOWED
            .iter()
            .any(|(g, k)| *g == group && *k == self.kind)
        {
            r.error(
                format!("{path}.kind"),
                format!(
                    "targetRef must be a Service, ServiceEntry (networking.istio.io), Gateway or GatewayClass (gateway.networking.k8s.io), got {}{}",
                    if group.is_empty() { String::new() } else { format!("{group}/") },
                    self.kind
                ),
            );
        }
    }
}
