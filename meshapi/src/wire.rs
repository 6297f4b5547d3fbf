//! Wire types of config push on the control plane's API (port 15012, mTLS only), shared by
//! meshctl (server) and meshproxy's config client so both sides agree on the format.
//!
//! A proxy long-polls `GET /v1/config?workload=W&instance=I&epoch=E&version=V&waitMs=T`: the
//! answer comes as soon as the control plane's version of that proxy's config differs from
//! `V` (or `E` is not the control plane's epoch: it restarted), else `204 No Content` after
//! `T` ms. The proxy then reports `POST /v1/config/ack` with an [`AckRequest`] (xDS's
//! ACK/NACK): a NACKed version is not sent again, the next one is. Every request must carry
//! the client certificate of the workload's identity.
//!
//! Once the proxy serves (listeners bound, first config applied) its polls also carry
//! `proxyEpoch=P` ([`PROXY_EPOCH_PARAM`]), a random number drawn at each proxy start: that is
//! its readiness report. The control plane puts `P` into the proxy's endpoint in every client's
//! config ([`crate::proxy::Endpoint::epoch`]); a new `P` (the proxy restarted) makes every
//! client take the endpoint back from outlier ejection.

use serde::{Deserialize, Serialize};

/// Long-poll for the next config (GET).
pub const CONFIG_PATH: &str = "/v1/config";
/// ACK or NACK of a received config (POST, JSON [`AckRequest`]).
pub const ACK_PATH: &str = "/v1/config/ack";
/// Control-plane status for `meshctl status` (GET, admin identity only).
pub const STATUS_PATH: &str = "/v1/status";
/// Reload the mesh files now, optionally waiting for ACKs (POST, admin identity only).
pub const RELOAD_PATH: &str = "/v1/reload";
/// Start a root rotation (`meshctl ca rotate`; POST, JSON [`RotateRequest`], admin identity
/// only).
pub const ROTATE_PATH: &str = "/v1/ca/rotate";
/// The poll parameter of a proxy that serves: its start epoch (see the module doc).
pub const PROXY_EPOCH_PARAM: &str = "proxyEpoch";
/// Longest long-poll the server holds, in milliseconds.
pub const MAX_WAIT_MS: u64 = 60_000;

/// Answer of [`CONFIG_PATH`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigResponse {
    /// Random number chosen at each control-plane start.
    pub epoch: u64,
    /// Version of this proxy's config (the revision at which its content last changed).
    pub version: u64,
    /// The [`crate::proxy::ProxyConfig`], kept raw so a client can NACK one it cannot parse.
    pub config: serde_json::Value,
}

/// Body of [`ACK_PATH`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AckRequest {
    /// Compose service name of the proxy.
    pub workload: String,
    /// Replica index.
    pub instance: u32,
    /// Epoch of the answer being acknowledged.
    pub epoch: u64,
    /// Version being acknowledged.
    pub version: u64,
    /// True: applied (ACK). False: refused (NACK), the proxy keeps its previous config.
    pub accepted: bool,
    /// Why it was refused. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Body of [`ROTATE_PATH`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RotateRequest {
    /// How long both roots stay trusted, ms.
    pub overlap_ms: u64,
    /// How long to wait for every connected proxy to ACK the new trust bundle, ms. Default
    /// 30000.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// Body of [`RELOAD_PATH`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReloadRequest {
    /// Wait until every connected proxy ACKed or NACKed. Default false.
    #[serde(default)]
    pub wait: bool,
    /// How long to wait, ms. Default 30000.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}
