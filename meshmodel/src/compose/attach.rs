//! Checks on what a service attaches to: networks (named ones with aliases, fixed addresses
//! and `ipam` subnets; the implicit `default` is the mesh's own), secrets and configs (from
//! files), and `x-mesh` on a service kept out of the mesh. `meshctl check` and `meshctl up`
//! both run them, so they accept and refuse the same files.

use std::net::Ipv4Addr;

use super::model::{ComposeFile, NetworkDef, Service};
use meshapi::diag::{FieldError, join_path};

/// An IPv4 CIDR (`172.28.0.0/16`): the network address and the prefix length.
pub fn parse_ipv4_cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, len) = text.split_once('/')?;
    let len: u8 = len.parse().ok()?;
    (len <= 32).then_some(())?;
    Some((ip.parse().ok()?, len))
}

/// True when `ip` is inside `(net, len)`.
pub fn cidr_contains((net, len): (Ipv4Addr, u8), ip: Ipv4Addr) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    u32::from(net) & mask == u32::from(ip) & mask
}

impl NetworkDef {
    /// The IPv4 subnets of its `ipam.config`.
    pub fn subnets(&self) -> Vec<(Ipv4Addr, u8)> {
        self.ipam
            .iter()
            .flat_map(|i| &i.config)
            .filter_map(|c| parse_ipv4_cidr(c.subnet.as_deref()?))
            .collect()
    }
}

impl ComposeFile {
    /// Networks, secrets, configs and `x-mesh.enabled`.
    pub(super) fn validate_attachments(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        self.validate_networks(&mut errors);
        for (section, objects) in [("secrets", &self.secrets), ("configs", &self.configs)] {
            for (name, o) in objects {
                let at = join_path(section, name);
                let refused = [
                    ("environment", o.environment.is_some()),
                    ("content", o.content.is_some()),
                    ("external", o.external == Some(true)),
                    ("template_driver", o.template_driver.is_some()),
                ];
                for (key, set) in refused {
                    if set {
                        errors.push(
                            FieldError::new(
                                join_path(&at, key),
                                format!("not supported by meshctl yet: {section}.{name}.{key}"),
                            )
                            .with_hint("write the value to a file and name it with `file:`"),
                        );
                    }
                }
                if o.file.is_none() && refused.iter().all(|(_, set)| !set) {
                    errors.push(
                        FieldError::new(at, format!("{section}.{name} has no `file:`"))
                            .with_hint("name the file that holds it: `file: ./path`"),
                    );
                }
            }
        }
        for (name, service) in &self.services {
            let base = join_path("services", name);
            for (section, refs, defined) in [
                ("secrets", &service.secrets, &self.secrets),
                ("configs", &service.configs, &self.configs),
            ] {
                for (i, r) in refs.iter().enumerate() {
                    let at = join_path(&base, &format!("{section}[{i}]"));
                    if !defined.contains_key(&r.source) {
                        errors.push(
                            FieldError::new(
                                at.clone(),
                                format!("refers to undefined {section} entry {:?}", r.source),
                            )
                            .with_hint(format!(
                                "define it under the top-level `{section}:` with `file:`"
                            )),
                        );
                    }
                    for (key, set) in [
                        ("uid", r.uid.is_some()),
                        ("gid", r.gid.is_some()),
                        ("mode", r.mode.is_some()),
                    ] {
                        if set {
                            errors.push(
                                FieldError::new(
                                    join_path(&at, key),
                                    format!("not supported by meshctl yet: {section}[].{key}"),
                                )
                                .with_hint("the file is bind-mounted read-only and keeps its own owner and mode: chown/chmod the file instead"),
                            );
                        }
                    }
                }
            }
            unmeshed_x_mesh(&base, service, &mut errors);
        }
        errors
    }

    fn validate_networks(&self, errors: &mut Vec<FieldError>) {
        for (name, def) in &self.networks {
            let at = join_path("networks", name);
            let Some(def) = def else { continue };
            if name == "default" {
                if def != &NetworkDef::default() {
                    errors.push(
                        FieldError::new(
                            at,
                            "not supported by meshctl: options on the `default` network: it is the project's mesh network, a bridge on a /24 meshctl chooses",
                        )
                        .with_hint("remove them; declare a network of your own for a subnet, and list it in the services' `networks`"),
                    );
                }
                continue;
            }
            if def.driver.as_deref().is_some_and(|d| d != "bridge") {
                errors.push(
                    FieldError::new(
                        join_path(&at, "driver"),
                        format!(
                            "not supported by meshctl: driver {:?}: networks are bridges on this host",
                            def.driver.as_deref().unwrap_or_default()
                        ),
                    )
                    .with_hint("remove `driver` (bridge is the default)"),
                );
            }
            if def.enable_ipv6 == Some(true) {
                errors.push(
                    FieldError::new(
                        join_path(&at, "enable_ipv6"),
                        "not supported by meshctl yet: enable_ipv6 (the mesh is IPv4 only)",
                    )
                    .with_hint("remove it"),
                );
            }
            let Some(ipam) = &def.ipam else { continue };
            if ipam.driver.as_deref().is_some_and(|d| d != "default") {
                errors.push(
                    FieldError::new(
                        join_path(&at, "ipam.driver"),
                        "not supported by meshctl: an IPAM driver other than `default`",
                    )
                    .with_hint("remove `ipam.driver`"),
                );
            }
            for (i, pool) in ipam.config.iter().enumerate() {
                let pool_at = join_path(&at, &format!("ipam.config[{i}]"));
                for (key, value) in [
                    ("subnet", &pool.subnet),
                    ("ip_range", &pool.ip_range),
                    ("gateway", &pool.gateway),
                ] {
                    let Some(value) = value else { continue };
                    let ok = if key == "gateway" {
                        value.parse::<Ipv4Addr>().is_ok()
                    } else {
                        parse_ipv4_cidr(value).is_some()
                    };
                    if !ok {
                        errors.push(
                            FieldError::new(
                                join_path(&pool_at, key),
                                format!(
                                    "{value:?} is not an IPv4 {}",
                                    if key == "gateway" { "address" } else { "CIDR" }
                                ),
                            )
                            .with_hint(
                                "IPv4 only, e.g. subnet: 172.28.0.0/16, gateway: 172.28.0.1",
                            ),
                        );
                    }
                }
            }
        }
        let mesh_names: Vec<&str> = self.workloads().iter().map(|w| w.mesh_service).collect();
        for svc in self
            .services
            .iter()
            .filter(|(_, s)| !s.meshed())
            .map(|(n, _)| n)
        {
            if mesh_names.contains(&svc.as_str()) {
                errors.push(
                    FieldError::new(
                        join_path("services", svc),
                        format!(
                            "{svc:?} is kept out of the mesh but is also the name of a mesh service"
                        ),
                    )
                    .with_hint(
                        "rename the service, or the mesh service (x-mesh.service) of the others",
                    ),
                );
            }
        }
        for (svc, s) in &self.services {
            for (net, n) in &s.networks {
                let at = join_path("services", &format!("{svc}.networks.{net}"));
                for (i, alias) in n.aliases.iter().enumerate() {
                    if s.meshed() && mesh_names.contains(&alias.as_str()) {
                        errors.push(
                            FieldError::new(
                                join_path(&at, &format!("aliases[{i}]")),
                                format!("alias {alias:?} is the name of a mesh service: Docker's DNS would answer it with a pod address, bypassing the service's VIP and its routing"),
                            )
                            .with_hint("remove the alias: mesh services are reached by name through meshdns"),
                        );
                    }
                }
                if net == "default" && (!n.aliases.is_empty() || n.ipv4_address.is_some()) {
                    errors.push(
                        FieldError::new(
                            at.clone(),
                            "not supported by meshctl: aliases and fixed addresses on `default`, the mesh network: mesh services are reached by name through meshdns",
                        )
                        .with_hint("declare a named network (top-level `networks:`) and put the aliases or address there"),
                    );
                }
                if n.ipv6_address.is_some() {
                    errors.push(
                        FieldError::new(
                            join_path(&at, "ipv6_address"),
                            "not supported by meshctl yet: ipv6_address (the mesh is IPv4 only)",
                        )
                        .with_hint("remove it"),
                    );
                }
                let Some(addr) = &n.ipv4_address else {
                    continue;
                };
                let at = join_path(&at, "ipv4_address");
                let Ok(ip) = addr.parse::<Ipv4Addr>() else {
                    errors.push(FieldError::new(
                        at,
                        format!("{addr:?} is not an IPv4 address"),
                    ));
                    continue;
                };
                if s.replicas() > 1 {
                    errors.push(
                        FieldError::new(
                            at.clone(),
                            "a fixed address cannot be given to more than one replica",
                        )
                        .with_hint("remove ipv4_address or set deploy.replicas to 1"),
                    );
                }
                let subnets = self
                    .networks
                    .get(net)
                    .and_then(Option::as_ref)
                    .map(NetworkDef::subnets)
                    .unwrap_or_default();
                if net != "default" && !subnets.iter().any(|c| cidr_contains(*c, ip)) {
                    errors.push(
                        FieldError::new(
                            at,
                            format!(
                                "{ip} is not in a subnet of network {net:?} (Docker gives fixed addresses only on a network with a configured subnet)"
                            ),
                        )
                        .with_hint(format!(
                            "give networks.{net}.ipam.config a subnet that contains it"
                        )),
                    );
                }
            }
        }
    }
}

/// `x-mesh` keys other than `enabled` mean nothing on a service kept out of the mesh: refused
/// by name rather than ignored.
fn unmeshed_x_mesh(base: &str, service: &Service, errors: &mut Vec<FieldError>) {
    let Some(x) = service.x_mesh.as_ref().filter(|_| !service.meshed()) else {
        return;
    };
    for (key, set) in [
        ("service", x.service.is_some()),
        ("serviceAccount", x.service_account.is_some()),
        ("namespace", x.namespace.is_some()),
        ("ports", !x.ports.is_empty()),
    ] {
        if set {
            errors.push(
                FieldError::new(
                    join_path(base, &format!("x-mesh.{key}")),
                    format!("x-mesh.{key} has no effect on a service with x-mesh.enabled: false"),
                )
                .with_hint("remove it, or remove `enabled: false` to put the service in the mesh"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let c = parse_ipv4_cidr("172.28.0.0/16").unwrap();
        assert!(cidr_contains(c, "172.28.5.9".parse().unwrap()));
        assert!(!cidr_contains(c, "172.29.0.1".parse().unwrap()));
        assert!(parse_ipv4_cidr("172.28.0.0/33").is_none());
        assert!(parse_ipv4_cidr("fd00::/64").is_none());
    }
}
