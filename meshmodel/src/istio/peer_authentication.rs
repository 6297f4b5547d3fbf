//! PeerAuthentication (security.istio.io v1beta1, v1): whether a workload accepts plaintext,
//! mutual TLS or both, overall and per port.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use meshapi::diag::FieldError;

use super::meta::{Ignored, ObjectMeta, WorkloadSelector};
use super::types::PortString;
use super::validate::Report;

/// A PeerAuthentication document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthentication {
    /// `security.istio.io/v1` or `v1beta1` (same schema).
    pub api_version: String,
    /// `PeerAuthentication`.
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PeerAuthenticationSpec,
    /// Written by a cluster; read and dropped.
    #[serde(default, skip_serializing)]
    pub status: Ignored,
}

/// The `spec` of a PeerAuthentication.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    /// The workloads this applies to. Absent: the whole namespace (or the whole mesh when in the
    /// root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// mTLS mode for the workload. Absent: inherited from the parent (namespace, then mesh), whose
    /// default is `PERMISSIVE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<Mtls>,
    /// Per-port modes, keyed by the workload's port (`8080` or `"8080"`). Needs a `selector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_level_mtls: Option<BTreeMap<PortString, Mtls>>,
}

/// An mTLS setting.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mtls {
    /// Absent or `UNSET`: inherit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<MtlsMode>,
}

/// `mtls.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent; `PERMISSIVE` at the top.
    Unset,
    /// Plaintext only.
    Disable,
    /// Plaintext and mutual TLS.
    Permissive,
    /// Mutual TLS only.
    Strict,
}

impl MtlsMode {
    /// The mesh-wide mode when nothing is set.
    pub const DEFAULT: MtlsMode = MtlsMode::Permissive;
}

impl Mtls {
    /// The mode, `None` when it inherits (absent or `UNSET`).
    pub fn effective(&self) -> Option<MtlsMode> {
        match self.mode {
            None | Some(MtlsMode::Unset) => None,
            m => m,
        }
    }
}

impl PeerAuthenticationSpec {
    /// The mode this policy sets for `port`: the port-level mode if one is set, else the
    /// workload-level mode; `None` when this policy leaves it to its parent.
    pub fn mode_for_port(&self, port: u16) -> Option<MtlsMode> {
        let port_level = self
            .port_level_mtls
            .as_ref()
            .and_then(|m| m.iter().find(|(k, _)| k.port().get() == port))
            .and_then(|(_, v)| v.effective());
        port_level.or_else(|| self.mtls.as_ref().and_then(Mtls::effective))
    }
}

impl PeerAuthentication {
    /// Checks the resource as Istio would. Paths start at the document root.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut r = Report::default();
        self.metadata.validate_into(&mut r, false);
        let spec = &self.spec;
        if let Some(sel) = &spec.selector {
            sel.validate_into(&mut r, "spec.selector");
        }
        if let Some(ports) = &spec.port_level_mtls {
            let has_selector = spec
                .selector
                .as_ref()
                .is_some_and(|s| !s.match_labels.is_empty());
            if !has_selector {
                r.error_hint(
                    "spec.portLevelMtls",
                    "portLevelMtls requires selector: a namespace- or mesh-wide PeerAuthentication cannot set per-port modes",
                    "add `selector: {matchLabels: {app: <service>}}`, or move the mode to mtls.mode",
                );
            }
            if ports.is_empty() {
                r.error(
                    "spec.portLevelMtls",
                    "portLevelMtls, if given, must have at least one port",
                );
            }
        }
        r.into_errors()
    }
}
