//! The project's meshdns container: the runtime image running `/meshdns` at `.2` of the
//! project network, reading `.mesh/dns-records.json` through a read-only bind mount of `.mesh/`
//! (a directory mount, so the control plane's atomic rename is seen), forwarding everything
//! else to Docker's embedded DNS (127.0.0.11 in its own namespace), so containers still
//! resolve Docker names and the outside world.

use std::collections::HashMap;
use std::path::Path;

use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HostConfig, NetworkingConfig,
};

use super::network::ProjectNetwork;
use super::*;

/// The meshdns container's name.
pub fn name(project: &str) -> String {
    format!("{project}-meshdns")
}

/// The create body and its config hash. Its labels also say where the project lives (the
/// state directory and the files, absolute), so commands given only the project name find it;
/// they are not part of the hash.
pub fn body(
    project: &str,
    network: &ProjectNetwork,
    image: (&str, &str),
    state_dir: &Path,
    files: &[std::path::PathBuf],
) -> (ContainerCreateBody, String) {
    let ip = network.dns_ip();
    let mut body = ContainerCreateBody {
        hostname: Some("meshdns".into()),
        // meshdns shuts down on SIGINT; as PID 1 it would ignore Docker's default SIGTERM
        // and `docker stop` would wait out the whole grace period.
        stop_signal: Some("SIGINT".into()),
        entrypoint: Some(vec!["/meshdns".into()]),
        cmd: Some(vec![
            "--records".into(),
            "/mesh/dns-records.json".into(),
            "--listen".into(),
            "0.0.0.0:53".into(),
            "--upstream".into(),
            "127.0.0.11:53".into(),
        ]),
        host_config: Some(HostConfig {
            network_mode: Some(network.name.clone()),
            binds: Some(vec![format!("{}:/mesh:ro", state_dir.display())]),
            restart_policy: Some(bollard::models::RestartPolicy {
                name: Some(bollard::models::RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            ..HostConfig::default()
        }),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                network.name.clone(),
                EndpointSettings {
                    ipam_config: Some(EndpointIpamConfig {
                        ipv4_address: Some(ip.to_string()),
                        ..EndpointIpamConfig::default()
                    }),
                    ..EndpointSettings::default()
                },
            )])),
        }),
        ..ContainerCreateBody::default()
    };
    let hash = plan::hash(
        &[&serde_json::to_value(&body).unwrap_or_default()],
        &[image.1],
    );
    body.image = Some(image.0.to_string());
    body.labels = Some(HashMap::from([
        (LABEL_PROJECT.into(), project.into()),
        (LABEL_COMPOSE_PROJECT.into(), project.into()),
        (LABEL_COMPOSE_SERVICE.into(), "meshdns".into()),
        (LABEL_ROLE.into(), Role::Dns.as_str().into()),
        (LABEL_IP.into(), ip.to_string()),
        (LABEL_CONFIG_HASH.into(), hash.clone()),
        (
            lifecycle::LABEL_STATE_DIR.into(),
            state_dir.display().to_string(),
        ),
        (
            lifecycle::LABEL_CONFIG_FILES.into(),
            files
                .iter()
                .map(|f| std::path::absolute(f).unwrap_or_else(|_| f.clone()))
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(","),
        ),
    ]));
    (body, hash)
}
