//! Checks on a typed compose file that serde cannot make: names that become mesh names,
//! references between services, `depends_on` cycles, ports, replicas, and services that share
//! one mesh service.

use std::collections::{BTreeMap, BTreeSet};

use super::mesh::PortProtocol;
use super::model::{ComposeFile, Service};
use meshapi::diag::{FieldError, join_path};

/// A DNS-1123 label: 1-63 of `[a-z0-9-]`, starting and ending with a letter or digit.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn port_range_ok(text: &str) -> bool {
    let (a, b) = text.split_once('-').unwrap_or((text, text));
    matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a > 0 && a <= b)
}

/// A SPIFFE trust domain: lowercase letters, digits, `.`, `-` and `_` (the SPIFFE ID
/// specification's charset), at most 255 bytes.
pub fn is_trust_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
}

impl ComposeFile {
    /// The top-level `x-mesh` settings serde cannot check: the root namespace is a DNS-1123
    /// label, trust domains use the SPIFFE charset, and an alias is neither the trust domain
    /// itself nor repeated.
    fn validate_mesh_settings(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let Some(m) = &self.x_mesh else {
            return errors;
        };
        if let Some(ns) = &m.root_namespace
            && !is_dns1123_label(ns)
        {
            errors.push(
                FieldError::new(
                    "x-mesh.rootNamespace",
                    format!("{ns:?} is not a DNS-1123 label"),
                )
                .with_hint("use lowercase letters, digits and '-', at most 63 (Istio's default is istio-system)"),
            );
        }
        let td_hint = "a trust domain has lowercase letters, digits, '.', '-' and '_' only, e.g. cluster.local";
        if let Some(td) = &m.trust_domain {
            if !is_trust_domain(td) {
                errors.push(
                    FieldError::new(
                        "x-mesh.trustDomain",
                        format!("{td:?} is not a trust domain"),
                    )
                    .with_hint(td_hint),
                );
            } else if td != crate::model::DEFAULT_TRUST_DOMAIN {
                // Refused by name rather than ignored: `meshctl up` starts its CA in
                // cluster.local whatever this says, so proxies would not match the setting.
                errors.push(
                    FieldError::new(
                        "x-mesh.trustDomain",
                        format!(
                            "trust domain {td:?} is not supported yet: meshctl's CA issues identities in cluster.local"
                        ),
                    )
                    .with_hint("leave trustDomain out (or set cluster.local); trustDomainAliases are supported"),
                );
            }
        }
        if let Some(lifetime) = m.certificate_lifetime {
            use super::model::{MAX_CERT_LIFETIME, MIN_CERT_LIFETIME};
            let d = lifetime.0;
            let problem = if d < MIN_CERT_LIFETIME {
                Some("is shorter than the minimum, 1m")
            } else if d > MAX_CERT_LIFETIME {
                Some("is longer than the maximum, 90 days (2160h)")
            } else {
                None
            };
            if let Some(problem) = problem {
                errors.push(
                    FieldError::new(
                        "x-mesh.certificateLifetime",
                        format!("certificate lifetime {lifetime} {problem}"),
                    )
                    .with_hint("a duration between 1m and 2160h, e.g. 24h (Istio's default)"),
                );
            }
        }
        let own = self.trust_domain();
        for (i, alias) in m.trust_domain_aliases.iter().enumerate() {
            let at = format!("x-mesh.trustDomainAliases[{i}]");
            if !is_trust_domain(alias) {
                errors.push(
                    FieldError::new(at, format!("{alias:?} is not a trust domain"))
                        .with_hint(td_hint),
                );
            } else if alias == own {
                errors.push(FieldError::new(
                    at,
                    format!("{alias:?} is the mesh's own trust domain, not an alias"),
                ));
            } else if m.trust_domain_aliases[..i].contains(alias) {
                errors.push(FieldError::new(at, format!("{alias:?} is listed twice")));
            }
        }
        super::observability::validate(m, &mut errors);
        errors
    }

    /// Everything wrong that typing could not see; empty when the file is usable.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = self.validate_mesh_settings();
        errors.extend(self.validate_attachments());
        for (name, service) in &self.services {
            let base = join_path("services", name);
            let at = |field: &str| join_path(&base, field);
            let mesh = service.mesh_service(name);
            let xm = if service.x_mesh.as_ref().is_some_and(|m| m.service.is_some()) {
                at("x-mesh.service")
            } else {
                base.clone()
            };
            if service.meshed() && !is_dns1123_label(mesh) {
                errors.push(
                    FieldError::new(
                        xm,
                        format!("mesh service name {mesh:?} is not a DNS-1123 label"),
                    )
                    .with_hint(
                        "use lowercase letters, digits and '-', at most 63, or set x-mesh.service",
                    ),
                );
            }
            for (field, value) in [
                ("x-mesh.serviceAccount", service.service_account(name)),
                ("x-mesh.namespace", service.namespace()),
            ] {
                if service.meshed() && !is_dns1123_label(value) && value != mesh {
                    errors.push(FieldError::new(
                        at(field),
                        format!(
                            "{value:?} is not a DNS-1123 label (lowercase letters, digits, '-')"
                        ),
                    ));
                }
            }
            if service.process().is_some() {
                process_fields(service, "x-mesh.process", &at, &mut errors);
                if service.endpoint().is_some() {
                    errors.push(FieldError::new(
                        at("x-mesh.endpoint"),
                        "`x-mesh.endpoint` cannot be used with `x-mesh.process`: a service is either a process meshctl runs or one that already runs",
                    ));
                }
            } else if let Some(e) = service.endpoint() {
                process_fields(service, "x-mesh.endpoint", &at, &mut errors);
                endpoint_fields(service, e, &at, &mut errors);
            } else if service.image.is_none() && service.build.is_none() {
                errors.push(FieldError::new(
                    base.clone(),
                    "service has neither image nor build",
                ));
            }
            if service.container_name.is_some() && service.replicas() > 1 {
                errors.push(FieldError::new(
                    at("container_name"),
                    "container_name must be unique: it cannot be used with more than one replica",
                ));
            }
            for dep in service
                .depends_on
                .iter()
                .filter(|(_, d)| d.required)
                .map(|(k, _)| k)
            {
                if !self.services.contains_key(dep) {
                    errors.push(FieldError::new(
                        at(&format!("depends_on.{dep}")),
                        format!("depends on undefined service {dep:?}"),
                    ));
                }
            }
            for (i, p) in service.ports.iter().enumerate() {
                let path = at(&format!("ports[{i}]"));
                if p.target == 0 {
                    errors.push(FieldError::new(
                        join_path(&path, "target"),
                        "port 0 is not a valid target",
                    ));
                }
                if let Some(pb) = &p.published
                    && !port_range_ok(pb)
                {
                    errors.push(FieldError::new(
                        join_path(&path, "published"),
                        format!("invalid published port {pb:?}: expected 1-65535 or a range"),
                    ));
                }
                if !matches!(p.protocol.as_str(), "tcp" | "udp") {
                    errors.push(FieldError::new(
                        join_path(&path, "protocol"),
                        format!("invalid protocol {:?}: expected tcp or udp", p.protocol),
                    ));
                }
            }
            for (i, e) in service.expose.iter().enumerate() {
                let number = e.split('/').next().unwrap_or_default();
                if !port_range_ok(number) {
                    errors.push(FieldError::new(
                        at(&format!("expose[{i}]")),
                        format!("invalid port {e:?}: expected 1-65535 or a range"),
                    ));
                }
            }
            for (i, p) in service.x_mesh.iter().flat_map(|m| &m.ports).enumerate() {
                if p.port == 0 {
                    errors.push(FieldError::new(
                        at(&format!("x-mesh.ports[{i}].port")),
                        "port 0 is not valid",
                    ));
                }
            }
            for net in service.networks.keys() {
                if net != "default" && !self.networks.contains_key(net) {
                    errors.push(
                        FieldError::new(
                            at(&format!("networks.{net}")),
                            format!("refers to undefined network {net:?}"),
                        )
                        .with_hint(format!(
                            "define it under the top-level `networks:` (`{net}: {{}}`), or remove it"
                        )),
                    );
                }
            }
            for (i, v) in service.volumes.iter().enumerate() {
                if let (true, Some(src)) = (v.kind == "volume", &v.source)
                    && !self.volumes.contains_key(src)
                {
                    errors.push(FieldError::new(
                        at(&format!("volumes[{i}]")),
                        format!("refers to undefined volume {src:?}"),
                    ));
                }
            }
        }
        errors.extend(self.cycles());
        errors.extend(self.shared_mesh_services());
        errors
    }

    /// Findings worth a warning only (obsolete `version`; a mesh service with no port
    /// declared, which callers reach only if its image EXPOSEs one).
    pub fn warnings(&self) -> Vec<FieldError> {
        let mut out = Vec::new();
        for w in self.workloads() {
            if w.ports.is_empty() {
                out.push(
                    FieldError::new(
                        join_path("services", w.name),
                        format!(
                            "service {:?} declares no port (ports, expose or x-mesh.ports): callers get a route to it only for the ports its image EXPOSEs, which `meshctl up` reads",
                            w.name
                        ),
                    )
                    .with_hint("declare the ports it serves with `expose:` (or `ports:` to publish them); a client that serves nothing needs none"),
                );
            }
        }
        if self.version.is_some() {
            out.push(FieldError::new(
                "version",
                "the attribute `version` is obsolete; it is ignored",
            ));
        }
        out
    }

    /// One error per `depends_on` cycle, at the service where it was found.
    fn cycles(&self) -> Vec<FieldError> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Visiting,
            Done,
        }
        fn visit<'a>(
            file: &'a ComposeFile,
            name: &'a str,
            marks: &mut BTreeMap<&'a str, Mark>,
            stack: &mut Vec<&'a str>,
            out: &mut Vec<FieldError>,
        ) {
            match marks.get(name) {
                Some(Mark::Done) => return,
                Some(Mark::Visiting) => {
                    let start = stack.iter().position(|s| *s == name).unwrap_or(0);
                    let mut cycle: Vec<&str> = stack[start..].to_vec();
                    cycle.push(name);
                    out.push(FieldError::new(
                        join_path(
                            "services",
                            &format!("{}.depends_on", stack[stack.len() - 1]),
                        ),
                        format!("dependency cycle: {}", cycle.join(" -> ")),
                    ));
                    return;
                }
                None => {}
            }
            let Some(service) = file.services.get(name) else {
                return;
            };
            marks.insert(name, Mark::Visiting);
            stack.push(name);
            for dep in service.depends_on.keys() {
                visit(file, dep, marks, stack, out);
            }
            stack.pop();
            marks.insert(name, Mark::Done);
        }
        let mut marks = BTreeMap::new();
        let mut out = Vec::new();
        for name in self.services.keys() {
            visit(self, name, &mut marks, &mut Vec::new(), &mut out);
        }
        out
    }

    /// Compose services sharing one mesh service (in one namespace) must serve the same ports
    /// with the same protocols: the mesh sends any of its traffic to any of them.
    fn shared_mesh_services(&self) -> Vec<FieldError> {
        type Key<'a> = (&'a str, &'a str);
        let mut groups: BTreeMap<Key, Vec<(&str, Vec<PortProtocol>)>> = BTreeMap::new();
        for (name, s) in self.services.iter().filter(|(_, s)| s.meshed()) {
            groups
                .entry((s.namespace(), s.mesh_service(name)))
                .or_default()
                .push((name, s.ports_with_protocol()));
        }
        let mut out = Vec::new();
        for ((_, mesh), members) in groups {
            let Some(((first, first_ports), rest)) = members.split_first() else {
                continue;
            };
            let first_set: BTreeSet<u16> = first_ports.iter().map(|p| p.port).collect();
            for (name, ports) in rest {
                let set: BTreeSet<u16> = ports.iter().map(|p| p.port).collect();
                if set != first_set {
                    out.push(
                        FieldError::new(
                            join_path("services", name),
                            format!(
                                "{name:?} and {first:?} are both mesh service {mesh:?} but serve different ports ({set:?} vs {first_set:?})"
                            ),
                        )
                        .with_hint("declare the same ports (ports, expose or x-mesh.ports) on every version"),
                    );
                    continue;
                }
                for (a, b) in ports.iter().zip(first_ports) {
                    if let (Some(pa), Some(pb)) = (a.protocol, b.protocol)
                        && pa != pb
                    {
                        out.push(FieldError::new(
                                join_path("services", name),
                                format!(
                                    "port {} is {pa:?} here but {pb:?} in {first:?}, which is the same mesh service {mesh:?}",
                                    a.port
                                ),
                            ));
                    }
                }
            }
        }
        out
    }
}

/// What a process service (`x-mesh.process`) may not have: container-only fields are refused
/// by name rather than ignored (a `volumes:` that silently does nothing loses data).
fn process_fields(
    service: &Service,
    key: &str,
    at: &dyn Fn(&str) -> String,
    errors: &mut Vec<FieldError>,
) {
    let hint = format!(
        "a service with `{key}` runs on the host: remove the field, or remove `{key}` to run a container"
    );
    let mut refuse = |field: &str, present: bool| {
        if present {
            errors.push(
                FieldError::new(at(field), format!("`{field}` cannot be used with `{key}`"))
                    .with_hint(&hint),
            );
        }
    };
    refuse("image", service.image.is_some());
    refuse("build", service.build.is_some());
    refuse(
        "x-mesh.enabled",
        service.x_mesh.as_ref().and_then(|m| m.enabled) == Some(false),
    );
    refuse("command", service.command.is_some());
    refuse("entrypoint", service.entrypoint.is_some());
    refuse("volumes", !service.volumes.is_empty());
    refuse("working_dir", service.working_dir.is_some());
    refuse("user", service.user.is_some());
    refuse("hostname", service.hostname.is_some());
    refuse("container_name", service.container_name.is_some());
    refuse("cap_add", !service.cap_add.is_empty());
    refuse("cap_drop", !service.cap_drop.is_empty());
    refuse("read_only", service.read_only.is_some());
    refuse("tty", service.tty.is_some());
    refuse("stdin_open", service.stdin_open.is_some());
    refuse("init", service.init.is_some());
    refuse("platform", service.platform.is_some());
    refuse("pull_policy", service.pull_policy.is_some());
    refuse("extra_hosts", !service.extra_hosts.is_empty());
    refuse(
        "deploy.resources",
        service
            .deploy
            .as_ref()
            .is_some_and(|d| d.resources.is_some()),
    );
    if let Some(p) = service.process() {
        let empty = match &p.command {
            super::parts::Command::Exec(v) => v.first().is_none_or(|c| c.trim().is_empty()),
            super::parts::Command::Shell(s) => s.trim().is_empty(),
        };
        if empty {
            errors.push(FieldError::new(
                at("x-mesh.process.command"),
                "the command is empty: name the program to run",
            ));
        }
    }
}

/// What an existing host service (`x-mesh.endpoint`) may not have besides the container-only
/// fields: meshctl does not run it, so nothing about running it applies; and its address.
fn endpoint_fields(
    service: &Service,
    endpoint: &str,
    at: &dyn Fn(&str) -> String,
    errors: &mut Vec<FieldError>,
) {
    if service.endpoint_addr().is_none() {
        errors.push(
            FieldError::new(
                at("x-mesh.endpoint"),
                format!("{endpoint:?} is not an address: write ip:port (127.0.0.1:5432)"),
            )
            .with_hint(
                "host names are not resolved here: give the IP address the service listens on",
            ),
        );
    }
    let mut refuse = |field: &str, present: bool| {
        if present {
            errors.push(
                FieldError::new(
                    at(field),
                    format!("`{field}` cannot be used with `x-mesh.endpoint`: meshctl does not run that service"),
                )
                .with_hint("remove the field (the service is started by whoever runs it)"),
            );
        }
    };
    refuse("environment", !service.environment.is_empty());
    refuse("env_file", !service.env_file.is_empty());
    refuse("healthcheck", service.healthcheck.is_some());
    refuse("restart", service.restart.is_some());
    refuse("stop_signal", service.stop_signal.is_some());
    refuse("stop_grace_period", service.stop_grace_period.is_some());
    refuse(
        "deploy.replicas",
        service
            .deploy
            .as_ref()
            .is_some_and(|d| d.replicas.is_some_and(|r| r != 1)),
    );
}
