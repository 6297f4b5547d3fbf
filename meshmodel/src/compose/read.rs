//! From a parsed YAML document to a [`ComposeFile`]: compose keys meshctl refuses are named
//! first (with the reason), `x-*` extension keys are set aside, then the rest is typed with
//! `serde_path_to_error` so an error carries the field path.

use std::collections::BTreeMap;

use meshapi::yaml::{Mapping, Value};

use super::model::ComposeFile;
use meshapi::diag::{FieldError, join_path};

/// Top-level keys of the compose specification that meshctl does not serve yet, with a hint.
const REFUSED_TOP: &[(&str, &str)] = &[("models", "remove it; meshctl runs containers only")];

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

/// Types a compose document, merge keys resolved; the first problem of
/// [`from_value_all`].
pub fn from_value(value: Value) -> Result<ComposeFile, FieldError> {
    match from_value_all(value) {
        (Some(file), errors) if errors.is_empty() => Ok(file),
        (_, mut errors) if !errors.is_empty() => Err(errors.swap_remove(0)),
        _ => Err(FieldError::new("", "the compose file could not be typed")),
    }
}

/// Types a compose document, merge keys resolved. `value` should already be interpolated.
/// Returns every refused key (by path, with the reason and what to do instead) and serde's
/// first error on the rest at its path, so one run reports them all; and the file typed
/// without the refused keys when the rest types (so its validation can be reported too).
pub fn from_value_all(mut value: Value) -> (Option<ComposeFile>, Vec<FieldError>) {
    // YAML merge keys (`<<: *anchor`), which compose files use with `x-` anchors, as
    // docker compose resolves them.
    if let Err(e) = value.apply_merge() {
        let e = FieldError::new("", format!("YAML merge key (<<): {e}"));
        return (None, vec![e]);
    }
    let mut errors = refuse(&mut value);
    let Some(root) = value.as_mapping_mut() else {
        let e = FieldError::new("", "a compose file must be a mapping of top-level keys");
        return (None, vec![e]);
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
    let typed: Result<ComposeFile, _> = serde_path_to_error::deserialize(value);
    let mut file = match typed {
        Ok(file) => file,
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            errors.push(FieldError::new(path, e.into_inner().to_string()));
            return (None, errors);
        }
    };
    file.extensions = top_ext;
    for (name, ext) in service_ext {
        if let Some(service) = file.services.get_mut(&name) {
            service.extensions = ext;
        }
    }
    (Some(file), errors)
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
        .with_hint("remove it: the mesh sets it for every service")
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

/// Every refused key, by path; each is taken out of `value` so the rest can still be typed
/// (and its own problems reported in the same run).
fn refuse(value: &mut Value) -> Vec<FieldError> {
    let mut out = Vec::new();
    let Some(root) = value.as_mapping_mut() else {
        return out;
    };
    for (key, reason) in REFUSED_TOP {
        if root.remove(*key).is_some() {
            out.push(not_yet(key, reason));
        }
    }
    let Some(Value::Mapping(services)) = root.get_mut("services") else {
        return out;
    };
    for (name, service) in services.iter_mut() {
        let (Some(name), Value::Mapping(service)) = (name.as_str(), service) else {
            continue;
        };
        let base = join_path("services", name);
        let keys: Vec<String> = service
            .keys()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect();
        for key in &keys {
            let path = join_path(&base, key);
            if let Some((_, reason)) = REFUSED_SERVICE_REASONED.iter().find(|(k, _)| k == key) {
                out.push(refused(&path, reason));
            } else if REFUSED_SERVICE.contains(&key.as_str()) {
                out.push(not_yet(
                    &path,
                    "remove it: meshctl refuses a key it does not serve rather than ignore it",
                ));
            } else {
                continue;
            }
            service.remove(key.as_str());
        }
        let Some(Value::Mapping(deploy)) = service.get_mut("deploy") else {
            continue;
        };
        let deploy_path = join_path(&base, "deploy");
        let keys: Vec<String> = deploy
            .keys()
            .filter_map(Value::as_str)
            .filter(|k| REFUSED_DEPLOY.contains(k))
            .map(str::to_string)
            .collect();
        for key in keys {
            out.push(not_yet(
                &join_path(&deploy_path, &key),
                "only deploy.replicas and deploy.resources.limits are served",
            ));
            deploy.remove(key.as_str());
        }
        let Some(Value::Mapping(resources)) = deploy.get_mut("resources") else {
            continue;
        };
        let limits_hint = "only resources.limits.memory and resources.limits.cpus are served";
        if resources.remove("reservations").is_some() {
            out.push(not_yet(
                &join_path(&deploy_path, "resources.reservations"),
                limits_hint,
            ));
        }
        if let Some(Value::Mapping(limits)) = resources.get_mut("limits") {
            for key in ["pids", "devices"] {
                if limits.remove(key).is_some() {
                    let path = join_path(&deploy_path, &format!("resources.limits.{key}"));
                    out.push(not_yet(&path, limits_hint));
                }
            }
        }
    }
    out
}
