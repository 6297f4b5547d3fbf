//! The process runner: compose services with `x-mesh.process` run as host processes, each in
//! a pod of its own (docs/hosts.md), the way the Docker runner runs containers.
//!
//! A process pod is, as root:
//! - a network namespace `mesh-<hash>` with one interface `eth0` at a fixed address: on the
//!   project's Docker network when the project has containers too (a veth on its bridge, so
//!   containers and processes share one /24), else on a bridge meshctl creates (`mb<hash>`,
//!   each pod a macvlan of it in bridge mode: pod-to-pod and pod-to-host traffic stays off the
//!   host's FORWARD chain, which Docker sets to DROP);
//! - meshproxy in that namespace, in control-plane mode with a pod token, with `MESH_CAPTURE=1`
//!   (the same nftables redirect rules as a sidecar container), so nothing reaches the app
//!   except through its proxy and every connection the app opens is captured;
//! - the app, started in the namespace with `ip netns exec` (its `/etc/resolv.conf` is
//!   `/etc/netns/<ns>/resolv.conf`: meshdns and the mesh search list), so `http://backend:8080`
//!   resolves to the service VIP as in a container.
//!
//! One supervisor per pod, `meshctl __pod <spec file>` (`shim`), detached in its own process
//! group: it starts the proxy and the app, restarts them by the restart policy, runs the
//! healthcheck, forwards published ports from the host, writes the pod's state
//! (`.mesh/pods/<name>.state.json`) and logs (`<name>.log`, `<name>-proxy.log`), and tears
//! the namespace down when stopped. `up` (`up.rs`) plans and reconciles pods by their spec
//! hash; `ps`, `logs` and `down` read and stop them (`commands.rs`).
//!
//! Entry points: [`up::run`] starts a whole processes-only project (its bridge, control
//! plane, meshdns and the pods a predicate selects); [`up::start_pods`] starts planned pods
//! against a control plane that runs elsewhere (the Docker runner's, or a joined node's).

pub mod commands;
pub mod net;
pub mod shim;
pub mod spec;
pub mod up;

use std::path::PathBuf;

pub use spec::{PodSpec, PodState};
pub use up::{RunOptions, run};

/// The directory under `.mesh/` holding the pods' spec, state and log files.
pub const PODS_DIR: &str = "pods";

/// Why the process runner could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(
        "service {service} is a host process or service (x-mesh.process, x-mesh.endpoint) and its own network namespace needs root; run meshctl as root (sudo)"
    )]
    NeedsRoot { service: String },
    #[error("`{command}` failed: {message}")]
    Command { command: String, message: String },
    #[error("no free /24 for the process network in 10.215-230.x.0")]
    NoSubnet,
    #[error("no free address left on the project network for {0}")]
    NoAddress(String),
    #[error("service {service}: {message}")]
    Service { service: String, message: String },
    #[error("pod {pod}: {message}")]
    Pod { pod: String, message: String },
    #[error("timed out after {secs} s waiting for {what}")]
    Timeout { what: String, secs: u64 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Docker(#[from] crate::docker::DockerError),
}

impl ProcessError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ProcessError {
        let path = path.into();
        move |source| ProcessError::Io { path, source }
    }
}

/// True when this process runs as root (network namespaces, nftables in them).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}
