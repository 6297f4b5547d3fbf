//! Compose services: the model of what a user writes in `compose.yaml`, and the rules compose
//! applies to it (interpolation, `.env`, project names, merging `-f a -f b`).
//!
//! The loader (`crate::load`) owns files and YAML syntax; this module works on parsed
//! `yaml::Value`s and reports problems as [`FieldError`](meshapi::diag::FieldError)s with
//! paths relative to the compose document root. The order is:
//! [`interpolate`] the document, [`from_value`] to type it, [`merge`] several files,
//! [`ComposeFile::validate`], then read services through the accessors in [`mesh`].
//!
//! Labels are the selectors Istio resources match: a DestinationRule subset
//! `labels: {version: v2}` selects the compose services whose `labels` have `version: v2`.

mod attach;
mod env_file;
mod interpolate;
mod merge;
pub mod mesh;
mod model;
mod objects;
pub mod observability;
mod parts;
mod project;
mod read;
mod syntax;
mod validate;

pub use attach::{cidr_contains, parse_ipv4_cidr};
pub use env_file::{EnvFileError, parse_env_file, parse_env_file_with, resolve_env_entries};
pub use interpolate::{EnvLookup, Interpolation, Layered, ProcessEnv, interpolate, substitute};
pub use merge::merge;
pub(crate) use merge::merge_service;
pub use mesh::{PortProtocol, Workload};
pub use model::{
    ComposeFile, DEFAULT_CERT_LIFETIME, DependsCondition, DependsOn, Deploy, Healthcheck, IpamPool,
    Limits, MAX_CERT_LIFETIME, MIN_CERT_LIFETIME, MeshPort, MeshSettings, NetworkDef, NetworkIpam,
    PathNormalizationSetting, ProcessSpec, Protocol, Resources, Service, ServiceNetwork, VolumeDef,
    XMesh,
};
pub use objects::{Extends, FileObject, FileRef, Include, config_target, secret_target};
pub use parts::{Build, Command, EnvFileRef, HealthTest, Port, Restart, Volume};
pub use project::{ProjectNameError, normalize_project_name, project_name};
pub use read::{from_value, from_value_all};
pub use syntax::ComposeDuration;
