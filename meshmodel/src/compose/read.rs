//! From a parsed YAML document to a [`ComposeFile`]: compose keys meshctl refuses are named
//! first (with the reason), `x-*` extension keys are set aside, then the rest is typed with
//! `serde_path_to_error` so an error carries the field path.

use std::collections::BTreeMap;

use meshapi::yaml::{Mapping, Value};

use super::model::ComposeFile;
use meshapi::diag::{FieldError, join_path};

/// Top-level keys of the compose specification that meshctl does not serve yet, with a hint.
const REFUSED_TOP: &[(&str, &str)] = &[
    (
        "secrets",
        "pass secrets as environment variables or bind-mounted files for now",
    ),
    ("configs", "bind-mount the files with `volumes` for now"),
    ("include", "pass the files with -f instead"),
    ("models", "remove it; meshctl runs containers only"),
];

/// Service keys with a reason of their own.
const REFUSED_SERVICE_REASONED: &[(&str, &str)] = &[
    (
        "dns",
        "the mesh owns DNS: meshdns answers for mesh names and forwards the rest",
    ),
    (
        "dns_search",
        "the mesh owns DNS: meshdns answers for mesh names and forwards the rest",
    ),
    (
        "dns_opt",
        "the mesh owns DNS: meshdns answers for mesh names and forwards the rest",
    ),
    (
        "network_mode",
        "the sidecar owns the service's network namespace; the app container joins it",
    ),
];

/// Service keys of the compose specification that meshctl does not serve yet.
const REFUSED_SERVICE: &[&str] = &[
    "annotations",
    "attach",
    "blkio_config",
    "cgroup",
    "cgroup_parent",
    "configs",
    "cpu_count",
    "cpu_percent",
    "cpu_period",
    "cpu_quota",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpu_shares",
    "cpus",
    "cpuset",
    "credential_spec",
    "develop",
    "device_cgroup_rules",
    "devices",
    "domainname",
    "driver_opts",
    "extends",
    "external_links",
    "gpus",
    "group_add",
    "ipc",
    "isolation",
    "label_file",
    "links",
    "logging",
    "mac_address",
    "mem_limit",
    "mem_reservation",
    "mem_swappiness",
    "memswap_limit",
    "models",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "pids_limit",
    "post_start",
    "pre_stop",
    "privileged",
    "provider",
    "pull_refresh_after",
    "runtime",
    "scale",
    "secrets",
    "security_opt",
    "shm_size",
    "storage_opt",
    "sysctls",
    "tmpfs",
    "ulimits",
    "use_api_socket",
    "userns_mode",
    "uts",
    "volumes_from",
];

/// `deploy` keys meshctl does not serve (only `replicas` and `resources.limits` are).
const REFUSED_DEPLOY: &[&str] = &[
    "mode",
    "endpoint_mode",
    "labels",
    "placement",
    "restart_policy",
    "rollback_config",
    "update_config",
];

/// Types a compose document, merge keys resolved. `value` should already be interpolated.
/// Returns the first
/// problem: a refused key (by path, with the reason) or serde's own error at its path.
pub fn from_value(mut value: Value) -> Result<ComposeFile, FieldError> {
    // YAML merge keys (`<<: *anchor`), which compose files use with `x-` anchors, as
    // docker compose resolves them.
    value
        .apply_merge()
        .map_err(|e| FieldError::new("", format!("YAML merge key (<<): {e}")))?;
    refuse(&value)?;
    let Some(root) = value.as_mapping_mut() else {
        return Err(FieldError::new(
            "",
            "a compose file must be a mapping of top-level keys",
        ));
    };
    let top_ext = take_extensions(root, true);
    let mut service_ext = BTreeMap::new();
    if let Some(Value::Mapping(services)) = root.get_mut("services") {
        for (name, service) in services.iter_mut() {
            if let (Some(name), Value::Mapping(service)) = (name.as_str(), service) {
                service_ext.insert(name.to_string(), take_extensions(service, true));
            }
        }
    }
    for section in ["networks", "volumes"] {
        if let Some(Value::Mapping(defs)) = root.get_mut(section) {
            for (_, def) in defs.iter_mut() {
                if let Value::Mapping(def) = def {
                    take_extensions(def, false);
                }
            }
        }
    }
    let mut file: ComposeFile = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        FieldError::new(path, e.into_inner().to_string())
    })?;
    file.extensions = top_ext;
    for (name, ext) in service_ext {
        if let Some(service) = file.services.get_mut(&name) {
            service.extensions = ext;
        }
    }
    Ok(file)
}

/// Removes `x-*` keys (except `x-mesh` at the top and in a service, which are typed) and
/// returns them.
fn take_extensions(map: &mut Mapping, keep_x_mesh: bool) -> BTreeMap<String, Value> {
    let keys: Vec<String> = map
        .keys()
        .filter_map(Value::as_str)
        .filter(|k| k.starts_with("x-") && !(keep_x_mesh && *k == "x-mesh"))
        .map(str::to_string)
        .collect();
    keys.into_iter()
        .filter_map(|k| map.remove(k.as_str()).map(|v| (k, v)))
        .collect()
}

/// A key meshctl refuses for a reason of its own (the mesh owns what the key would set).
fn refused(path: &str, reason: &str) -> FieldError {
    FieldError::new(path, format!("not supported by meshctl: {path}: {reason}"))
}

/// A compose key meshctl does not serve yet.
fn not_yet(path: &str, hint: &str) -> FieldError {
    let e = FieldError::new(path, format!("not supported by meshctl yet: {path}"));
    if hint.is_empty() {
        e
    } else {
        e.with_hint(hint)
    }
}

/// The first refused key, by path.
fn refuse(value: &Value) -> Result<(), FieldError> {
    let Some(root) = value.as_mapping() else {
        return Ok(());
    };
    for (key, reason) in REFUSED_TOP {
        if root.contains_key(*key) {
            return Err(not_yet(key, reason));
        }
    }
    let Some(Value::Mapping(services)) = root.get("services") else {
        return Ok(());
    };
    for (name, service) in services {
        let (Some(name), Value::Mapping(service)) = (name.as_str(), service) else {
            continue;
        };
        let base = join_path("services", name);
        for key in service.keys().filter_map(Value::as_str) {
            let path = join_path(&base, key);
            if let Some((_, reason)) = REFUSED_SERVICE_REASONED.iter().find(|(k, _)| *k == key) {
                return Err(refused(&path, reason));
            }
            if REFUSED_SERVICE.contains(&key) {
                return Err(not_yet(&path, ""));
            }
        }
        let Some(Value::Mapping(deploy)) = service.get("deploy") else {
            continue;
        };
        let deploy_path = join_path(&base, "deploy");
        for key in deploy.keys().filter_map(Value::as_str) {
            if REFUSED_DEPLOY.contains(&key) {
                let path = join_path(&deploy_path, key);
                return Err(not_yet(
                    &path,
                    "only deploy.replicas and deploy.resources.limits are served",
                ));
            }
        }
        let Some(Value::Mapping(resources)) = deploy.get("resources") else {
            continue;
        };
        for key in resources.keys().filter_map(Value::as_str) {
            if key == "reservations" {
                let path = join_path(&deploy_path, "resources.reservations");
                return Err(not_yet(
                    &path,
                    "only resources.limits.memory and resources.limits.cpus are served",
                ));
            }
        }
        if let Some(Value::Mapping(limits)) = resources.get("limits") {
            for key in limits.keys().filter_map(Value::as_str) {
                if key == "pids" || key == "devices" {
                    let path = join_path(&deploy_path, &format!("resources.limits.{key}"));
                    return Err(not_yet(
                        &path,
                        "only resources.limits.memory and resources.limits.cpus are served",
                    ));
                }
            }
        }
    }
    Ok(())
}
