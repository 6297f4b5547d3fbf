//! Merging compose files as `docker compose -f a -f b` does: later files override earlier
//! ones. Scalars set in the later file replace; maps merge key by key; `ports`, `expose`,
//! `env_file`, `cap_add`, `cap_drop`, `profiles` and `extra_hosts` append without duplicates;
//! `volumes` merge by mount target; `command`, `entrypoint` and `healthcheck.test` replace.

use std::collections::BTreeMap;

use super::model::{ComposeFile, Deploy, Healthcheck, Service, XMesh};
use super::objects::FileRef;
use super::parts::Build;

/// `base` overridden by `over`.
pub fn merge(base: ComposeFile, over: ComposeFile) -> ComposeFile {
    let mut out = base;
    set(&mut out.version, over.version);
    set(&mut out.name, over.name);
    for (name, service) in over.services {
        let merged = match out.services.remove(&name) {
            Some(b) => merge_service(b, service),
            None => service,
        };
        out.services.insert(name, merged);
    }
    out.networks.extend(over.networks);
    out.volumes.extend(over.volumes);
    out.secrets.extend(over.secrets);
    out.configs.extend(over.configs);
    out.include.extend(over.include);
    if let Some(over_mesh) = over.x_mesh {
        let base_mesh = out.x_mesh.get_or_insert_with(Default::default);
        set(
            &mut base_mesh.path_normalization,
            over_mesh.path_normalization,
        );
        set(&mut base_mesh.root_namespace, over_mesh.root_namespace);
        set(&mut base_mesh.trust_domain, over_mesh.trust_domain);
        set(
            &mut base_mesh.certificate_lifetime,
            over_mesh.certificate_lifetime,
        );
        set(
            &mut base_mesh.outbound_traffic_policy,
            over_mesh.outbound_traffic_policy,
        );
        set(&mut base_mesh.access_log_file, over_mesh.access_log_file);
        set(
            &mut base_mesh.access_log_encoding,
            over_mesh.access_log_encoding,
        );
        set(&mut base_mesh.default_config, over_mesh.default_config);
        set(
            &mut base_mesh.default_providers,
            over_mesh.default_providers,
        );
        // A list set in the later file replaces the earlier one, as Istio's MeshConfig
        // overlays do.
        if !over_mesh.trust_domain_aliases.is_empty() {
            base_mesh.trust_domain_aliases = over_mesh.trust_domain_aliases;
        }
        if !over_mesh.extension_providers.is_empty() {
            base_mesh.extension_providers = over_mesh.extension_providers;
        }
    }
    out.extensions.extend(over.extensions);
    out
}

fn set<T>(into: &mut Option<T>, over: Option<T>) {
    if over.is_some() {
        *into = over;
    }
}

fn append<T: PartialEq>(into: &mut Vec<T>, over: Vec<T>) {
    for item in over {
        if !into.contains(&item) {
            into.push(item);
        }
    }
}

/// Secrets and configs merge by source, the later reference replacing the earlier.
fn merge_refs(into: &mut Vec<FileRef>, over: Vec<FileRef>) {
    for r in over {
        match into.iter_mut().find(|e| e.source == r.source) {
            Some(existing) => *existing = r,
            None => into.push(r),
        }
    }
}

/// `b` overridden by `o`, as a later `-f` file's service overrides an earlier one's (and as
/// a service overrides the one it `extends`).
pub(crate) fn merge_service(b: Service, o: Service) -> Service {
    let mut s = b;
    set(&mut s.image, o.image);
    s.build = match (s.build.take(), o.build) {
        (Some(b), Some(o)) => Some(merge_build(b, o)),
        (b, o) => o.or(b),
    };
    set(&mut s.command, o.command);
    set(&mut s.entrypoint, o.entrypoint);
    s.environment.extend(o.environment);
    append(&mut s.env_file, o.env_file);
    append(&mut s.ports, o.ports);
    append(&mut s.expose, o.expose);
    for v in o.volumes {
        match s.volumes.iter_mut().find(|e| e.target == v.target) {
            Some(existing) => *existing = v,
            None => s.volumes.push(v),
        }
    }
    s.depends_on.extend(o.depends_on);
    s.healthcheck = match (s.healthcheck.take(), o.healthcheck) {
        (Some(b), Some(o)) => Some(merge_healthcheck(b, o)),
        (b, o) => o.or(b),
    };
    set(&mut s.restart, o.restart);
    s.labels.extend(o.labels);
    s.deploy = match (s.deploy.take(), o.deploy) {
        (Some(b), Some(o)) => Some(merge_deploy(b, o)),
        (b, o) => o.or(b),
    };
    s.networks.extend(o.networks);
    append(&mut s.profiles, o.profiles);
    set(&mut s.hostname, o.hostname);
    set(&mut s.working_dir, o.working_dir);
    set(&mut s.user, o.user);
    set(&mut s.stop_signal, o.stop_signal);
    set(&mut s.stop_grace_period, o.stop_grace_period);
    append(&mut s.cap_add, o.cap_add);
    append(&mut s.cap_drop, o.cap_drop);
    set(&mut s.read_only, o.read_only);
    set(&mut s.tty, o.tty);
    set(&mut s.stdin_open, o.stdin_open);
    set(&mut s.init, o.init);
    set(&mut s.platform, o.platform);
    append(&mut s.extra_hosts, o.extra_hosts);
    set(&mut s.pull_policy, o.pull_policy);
    set(&mut s.container_name, o.container_name);
    merge_refs(&mut s.secrets, o.secrets);
    merge_refs(&mut s.configs, o.configs);
    set(&mut s.extends, o.extends);
    s.x_mesh = match (s.x_mesh.take(), o.x_mesh) {
        (Some(b), Some(o)) => Some(merge_x_mesh(b, o)),
        (b, o) => o.or(b),
    };
    s.extensions.extend(o.extensions);
    s
}

fn merge_build(b: Build, o: Build) -> Build {
    let mut out = b;
    out.context = o.context;
    set(&mut out.dockerfile, o.dockerfile);
    out.args.extend(o.args);
    set(&mut out.target, o.target);
    out.labels.extend(o.labels);
    out
}

fn merge_healthcheck(b: Healthcheck, o: Healthcheck) -> Healthcheck {
    let mut out = b;
    set(&mut out.test, o.test);
    set(&mut out.interval, o.interval);
    set(&mut out.timeout, o.timeout);
    set(&mut out.retries, o.retries);
    set(&mut out.start_period, o.start_period);
    set(&mut out.start_interval, o.start_interval);
    set(&mut out.disable, o.disable);
    out
}

fn merge_deploy(b: Deploy, o: Deploy) -> Deploy {
    let mut out = b;
    set(&mut out.replicas, o.replicas);
    out.resources = match (out.resources.take(), o.resources) {
        (Some(mut b), Some(o)) => {
            b.limits = match (b.limits.take(), o.limits) {
                (Some(mut bl), Some(ol)) => {
                    set(&mut bl.memory, ol.memory);
                    set(&mut bl.cpus, ol.cpus);
                    Some(bl)
                }
                (bl, ol) => ol.or(bl),
            };
            Some(b)
        }
        (b, o) => o.or(b),
    };
    out
}

fn merge_x_mesh(b: XMesh, o: XMesh) -> XMesh {
    let mut out = b;
    set(&mut out.enabled, o.enabled);
    set(&mut out.service, o.service);
    set(&mut out.service_account, o.service_account);
    set(&mut out.namespace, o.namespace);
    set(&mut out.node, o.node);
    let mut ports: BTreeMap<u16, _> = out.ports.drain(..).map(|p| (p.port, p)).collect();
    ports.extend(o.ports.into_iter().map(|p| (p.port, p)));
    out.ports = ports.into_values().collect();
    set(&mut out.process, o.process);
    set(&mut out.endpoint, o.endpoint);
    out
}
