//! The Docker runner: `meshctl up`, `down`, `ps` and `logs` on a real Docker engine, through
//! bollard.
//!
//! A project on the engine is (every object labelled, ownership by labels only):
//! - one bridge network `<project>_mesh` whose /24 subnet meshctl chooses, so every address is
//!   known before anything starts (`network`);
//! - the control plane on the host (in-process for a foreground `up`, a detached
//!   `meshctl __control-plane` for `up -d`, restarted by its supervisor after a crash:
//!   `supervise`), listening on the network's gateway:15012 (`cp`);
//! - a meshdns container at `.2` (`dns`);
//! - per replica of each compose service a pod: a sidecar container that owns the network
//!   namespace (static IP, hostname, published ports, DNS pointed at meshdns, NET_ADMIN) and
//!   the app container joined to it with `network_mode: container:<sidecar>` (`plan`, `pod`).
//!
//! A sidecar has the `unless-stopped` restart policy and a pod token, so Docker can restart it
//! and it gets its certificate again; its app is then restarted to join the new network
//! namespace (`heal`).
//!
//! Images come from the engine, a compose `build:`, or are built by meshctl from static
//! binaries it finds or builds (`image`, `runtime`). `up` reconciles: a container whose
//! `io.meshctl.config-hash` label differs from the plan is recreated, missing ones created,
//! ones no longer planned removed (`up`).

pub mod commands;
pub mod cp;
pub mod dns;
pub mod engine;
pub mod events;
pub mod exec;
pub mod heal;
pub mod image;
pub mod lifecycle;
pub mod logs;
pub mod network;
pub mod plan;
pub mod pod;
pub mod progress;
pub mod ps;
pub mod runtime;
pub mod supervise;
pub mod top;
pub mod up;

use std::path::PathBuf;

/// Label naming the project (as `docker compose` writes it).
pub const LABEL_COMPOSE_PROJECT: &str = "com.docker.compose.project";
/// Label naming the compose service (as `docker compose` writes it).
pub const LABEL_COMPOSE_SERVICE: &str = "com.docker.compose.service";
/// Label with the 1-based container number (as `docker compose` writes it).
pub const LABEL_COMPOSE_NUMBER: &str = "com.docker.compose.container-number";
/// meshctl's ownership label: the project name.
pub const LABEL_PROJECT: &str = "io.meshctl.project";
/// The compose service of a pod container.
pub const LABEL_SERVICE: &str = "io.meshctl.service";
/// The mesh service of a pod container.
pub const LABEL_MESH_SERVICE: &str = "io.meshctl.mesh-service";
/// The replica index (0-based) of a pod container.
pub const LABEL_INSTANCE: &str = "io.meshctl.instance";
/// `sidecar`, `app` or `dns`.
pub const LABEL_ROLE: &str = "io.meshctl.role";
/// Hash of everything the container was created from; a different hash means recreate.
pub const LABEL_CONFIG_HASH: &str = "io.meshctl.config-hash";
/// The SPIFFE ID of a pod.
pub const LABEL_IDENTITY: &str = "io.meshctl.identity";
/// The pod's address on the project network.
pub const LABEL_IP: &str = "io.meshctl.ip";

/// Role of a container in a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Owns a pod's network namespace and runs meshproxy.
    Sidecar,
    /// The user's container, in its sidecar's namespace.
    App,
    /// The project's meshdns.
    Dns,
}

impl Role {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Sidecar => "sidecar",
            Role::App => "app",
            Role::Dns => "dns",
        }
    }

    /// From the label value.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "sidecar" => Some(Role::Sidecar),
            "app" => Some(Role::App),
            "dns" => Some(Role::Dns),
            _ => None,
        }
    }
}

/// Why the runner could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error(
        "cannot reach the Docker engine at {host}: {reason}\n  is Docker installed and running? (`docker version`; set DOCKER_HOST for a remote engine)"
    )]
    Unreachable { host: String, reason: String },
    #[error("Docker engine: {context}: {source}")]
    Api {
        context: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error(
        "image {image} of service {service} is not on this engine and the service has no `build:`; build or pull it first (no registry is used)"
    )]
    ImageMissing { service: String, image: String },
    #[error(
        "image {image} of service {service} is not on this engine and --no-build forbids building it; run `meshctl build` first, or `up` without --no-build"
    )]
    NotBuilt { service: String, image: String },
    #[error("building image {image}: {message}")]
    Build { image: String, message: String },
    #[error("static runtime binaries: {0}")]
    Runtime(String),
    #[error("no free /24 subnet for the project network in 172.20-31.x.0 or 10.200-254.x.0")]
    NoSubnet,
    #[error("project network {name}: {message}")]
    Network { name: String, message: String },
    #[error("host port {port} of service {service} is already taken: {message}")]
    PortTaken {
        service: String,
        port: String,
        message: String,
    },
    #[error(
        "container {container} exited during start-up (exit code {code}); its last log lines:\n{logs}"
    )]
    Exited {
        container: String,
        code: i64,
        logs: String,
    },
    #[error(
        "container {container} keeps dying: exited with code {code}, restarted {restarts} times by its restart policy; its last log lines:\n{logs}"
    )]
    KeepsDying {
        container: String,
        code: i64,
        restarts: i64,
        logs: String,
    },
    #[error("timed out after {secs} s waiting for {what}")]
    Timeout { what: String, secs: u64 },
    #[error("the mesh files have errors:\n{0}")]
    Invalid(String),
    #[error("process services: {0}")]
    Process(String),
    #[error("control plane: {0}")]
    ControlPlane(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl DockerError {
    /// Wraps a bollard error with what was being done.
    pub fn api(context: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> DockerError {
        let context = context.into();
        move |source| DockerError::Api { context, source }
    }
}

/// True when a bollard error is the engine's 404.
pub fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// True when a bollard error is the engine's 409 (conflict: exists, in use, in progress).
pub fn is_conflict(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 409,
            ..
        }
    )
}
