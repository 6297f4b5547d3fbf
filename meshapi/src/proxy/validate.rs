//! Reading and validating a [`ProxyConfig`]: the one YAML reader (JSON is read as YAML), then
//! every problem at once as [`FieldError`]s with their paths.

use super::*;

impl ProxyConfig {
    /// Parses YAML or JSON (JSON is read as YAML) and validates.
    pub fn from_str_checked(text: &str) -> Result<Self, ConfigError> {
        let cfg: ProxyConfig = crate::yaml::from_str(text).map_err(|e| ConfigError::Parse {
            path: e.path,
            message: e.message,
            line: e.pos.line,
            column: e.pos.column,
        })?;
        let errors = cfg.validate();
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    /// Reads, parses and validates a file.
    pub fn load_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_str_checked(&text)
    }

    /// Every problem with this config; empty when it is valid.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.api_version != API_VERSION {
            errs.push(
                FieldError::new(
                    "apiVersion",
                    format!("unknown apiVersion {:?}", self.api_version),
                )
                .with_hint(format!("use `{API_VERSION}`")),
            );
        }
        let id = &self.identity;
        let files = [
            id.cert_file.is_some(),
            id.key_file.is_some(),
            id.roots_file.is_some(),
        ];
        if files.iter().any(|b| *b) && !files.iter().all(|b| *b) {
            errs.push(
                FieldError::new("identity", "certFile, keyFile and rootsFile go together")
                    .with_hint("set all three (file mode) or none (CA-client mode)"),
            );
        }
        if let Some(t) = &self.traffic
            && t.version != crate::traffic::FORMAT_VERSION
        {
            errs.push(FieldError::new(
                "traffic.version",
                format!(
                    "route table format {} is not {} (meshctl and meshproxy versions differ)",
                    t.version,
                    crate::traffic::FORMAT_VERSION
                ),
            ));
        }
        let mut ports = BTreeSet::new();
        for (i, p) in self.inbound.iter().enumerate() {
            if p.port == 0 {
                errs.push(FieldError::new(
                    format!("inbound[{i}].port"),
                    "port 0 is not an application port",
                ));
            }
            if !ports.insert(p.port) {
                errs.push(FieldError::new(
                    format!("inbound[{i}].port"),
                    format!("port {} listed twice", p.port),
                ));
            }
        }
        let mut vips = BTreeSet::new();
        for (i, o) in self.outbound.iter().enumerate() {
            let path = format!("outbound[{i}]");
            if !self.services.contains_key(&o.service) {
                errs.push(
                    FieldError::new(
                        format!("{path}.service"),
                        format!("unknown service {:?}", o.service),
                    )
                    .with_hint("add it under `services`"),
                );
            }
            if !vips.insert(o.vip) {
                errs.push(FieldError::new(
                    format!("{path}.vip"),
                    format!("{} listed twice", o.vip),
                ));
            }
            if o.target_port.is_none() && o.vip.port() == 0 {
                errs.push(
                    FieldError::new(
                        format!("{path}.targetPort"),
                        "required when the VIP port is 0",
                    )
                    .with_hint("name the application port on the endpoints"),
                );
            }
            if o.target_port == Some(0) {
                errs.push(FieldError::new(
                    format!("{path}.targetPort"),
                    "port 0 is not an application port",
                ));
            }
        }
        for (name, svc) in &self.services {
            for (j, e) in svc.endpoints.iter().enumerate() {
                validate_endpoint_tls(&mut errs, &format!("services.{name}.endpoints[{j}]"), e);
            }
        }
        if let Some(t) = &self.traffic {
            for (i, c) in t.clusters.iter().enumerate() {
                if let Some(tls) = &c.policy.tls {
                    let at = format!("traffic.clusters[{i}].policy.tls");
                    errs.extend(tls.validate(&at));
                    if tls.port.is_some() {
                        errs.push(FieldError::new(
                            format!("{at}.port"),
                            "a cluster's TLS applies to its own port; remove `port`",
                        ));
                    }
                }
            }
        }
        if self.drain_deadline.0.is_zero() {
            errs.push(FieldError::new("drainDeadline", "must be more than 0"));
        }
        let l = &self.limits;
        if l.max_header_bytes < 8192 {
            errs.push(FieldError::new(
                "limits.maxHeaderBytes",
                "must be at least 8192",
            ));
        }
        if l.sniff_timeout.0.is_zero() || l.sniff_timeout.0 > Duration::from_secs(1) {
            errs.push(FieldError::new(
                "limits.sniffTimeout",
                "must be between 1ms and 1s",
            ));
        }
        for (field, d) in [
            ("headerReadTimeout", l.header_read_timeout),
            ("connectTimeout", l.connect_timeout),
        ] {
            if d.0.is_zero() {
                errs.push(FieldError::new(
                    format!("limits.{field}"),
                    "must be more than 0",
                ));
            }
        }
        if l.max_concurrent_streams == 0 {
            errs.push(FieldError::new(
                "limits.maxConcurrentStreams",
                "must be more than 0",
            ));
        }
        if let Some(a) = &self.authorization
            && a.version != crate::authz::FORMAT_VERSION
        {
            errs.push(
                FieldError::new(
                    "authorization.version",
                    format!("unknown authorization format version {}", a.version),
                )
                .with_hint(format!(
                    "this build reads version {}; recompile the config with a matching meshctl",
                    crate::authz::FORMAT_VERSION
                )),
            );
        }
        if let Some(a) = &self.request_authentication {
            for (path, message) in a.problems() {
                errs.push(FieldError::new(
                    format!("requestAuthentication.{path}"),
                    message,
                ));
            }
        }
        errs.extend(self.telemetry.metrics.validate());
        errs
    }

    /// This config with secrets replaced, for `/config_dump`.
    pub fn redacted(&self) -> ProxyConfig {
        let mut c = self.clone();
        let redact = |k: &mut Option<PathBuf>| {
            if k.is_some() {
                *k = Some(PathBuf::from("<redacted>"));
            }
        };
        redact(&mut c.identity.key_file);
        for svc in c.services.values_mut() {
            for e in &mut svc.endpoints {
                for t in &mut e.tls {
                    redact(&mut t.private_key);
                }
            }
        }
        if let Some(t) = &mut c.traffic {
            for cl in &mut t.clusters {
                if let Some(tls) = &mut cl.policy.tls {
                    redact(&mut tls.private_key);
                }
            }
        }
        c
    }
}

/// An endpoint's `tls` entries: each valid, one per port, ISTIO_MUTUAL only with an identity.
fn validate_endpoint_tls(errs: &mut Vec<FieldError>, at: &str, e: &Endpoint) {
    let mut seen = BTreeSet::new();
    for (k, t) in e.tls.iter().enumerate() {
        let here = format!("{at}.tls[{k}]");
        errs.extend(t.validate(&here));
        if !seen.insert(t.port) {
            let what = t.port.map_or("the entry without a port".to_string(), |p| {
                format!("port {p}")
            });
            errs.push(FieldError::new(
                format!("{here}.port"),
                format!("{what} listed twice"),
            ));
        }
        if t.mode == UpstreamTlsMode::IstioMutual && e.identity.is_none() {
            errs.push(
                FieldError::new(
                    format!("{here}.mode"),
                    "ISTIO_MUTUAL needs the endpoint's `identity`",
                )
                .with_hint("add `identity: spiffe://...`, or use SIMPLE, MUTUAL or DISABLE"),
            );
        }
    }
}
