//! The telemetry settings of the top-level `x-mesh`, under Istio's MeshConfig names:
//! `accessLogFile` (`/dev/stdout` turns access logs on), `accessLogEncoding` (`TEXT`, `JSON`),
//! `defaultConfig.tracing.sampling` (percentage, default 1), `extensionProviders` (an
//! `opentelemetry` entry with `http`: the OTLP/HTTP collector) and `defaultProviders.tracing`.

use meshapi::diag::FieldError;
use meshapi::telemetry::access_log::AccessLogEncoding;
use serde::{Deserialize, Serialize};

/// The only `accessLogFile` served: the proxy's standard output.
pub const ACCESS_LOG_STDOUT: &str = "/dev/stdout";

/// A percentage 0 to 100 (`Eq` by bits, so the compose model stays comparable).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sampling(pub f64);

impl Eq for Sampling {}

/// MeshConfig `defaultConfig` (ProxyConfig): only `tracing` is served.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProxyDefaults {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingDefaults>,
}

/// `defaultConfig.tracing`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TracingDefaults {
    /// Percentage of new traces sampled, 0 to 100. Default 1 (Istio's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Sampling>,
}

/// MeshConfig `extensionProviders[]`: only `opentelemetry` is served.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExtensionProvider {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opentelemetry: Option<OpenTelemetryProvider>,
}

/// `extensionProviders[].opentelemetry`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OpenTelemetryProvider {
    /// Host of the collector (a mesh or ServiceEntry host, or an address).
    pub service: String,
    pub port: u16,
    /// OTLP over HTTP; required (meshctl exports OTLP/HTTP only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<OtlpHttp>,
}

/// `opentelemetry.http`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OtlpHttp {
    /// Default `/v1/traces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// MeshConfig `defaultProviders`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DefaultProviders {
    /// The tracing provider of every workload (an `extensionProviders` name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracing: Vec<String>,
}

impl ExtensionProvider {
    /// The OTLP/HTTP traces URL, `None` for a provider that is not OpenTelemetry over HTTP.
    pub fn otlp_http_url(&self) -> Option<String> {
        let o = self.opentelemetry.as_ref()?;
        let path = o.http.as_ref()?.path.as_deref().unwrap_or("/v1/traces");
        Some(format!("http://{}:{}{path}", o.service, o.port))
    }
}

/// Checks the telemetry settings of a top-level `x-mesh`.
pub(crate) fn validate(m: &super::MeshSettings, errors: &mut Vec<FieldError>) {
    if let Some(f) = &m.access_log_file
        && !f.is_empty()
        && f != ACCESS_LOG_STDOUT
    {
        errors.push(
            FieldError::new(
                "x-mesh.accessLogFile",
                format!("not supported by meshctl: access log file {f:?} (proxies log to their standard output)"),
            )
            .with_hint("`/dev/stdout` turns access logs on, `\"\"` leaves them off; `meshctl logs --proxy` shows them"),
        );
    }
    if m.access_log_encoding.is_some() && m.access_log_file.as_deref().is_none_or(str::is_empty) {
        // Istio accepts it and logs nothing: say so.
        errors.push(
            FieldError::new(
                "x-mesh.accessLogEncoding",
                "accessLogEncoding without accessLogFile has no effect",
            )
            .with_hint("add `accessLogFile: /dev/stdout`"),
        );
    }
    if let Some(s) = m
        .default_config
        .as_ref()
        .and_then(|d| d.tracing.as_ref())
        .and_then(|t| t.sampling)
        && !(s.0.is_finite() && (0.0..=100.0).contains(&s.0))
    {
        errors.push(FieldError::new(
            "x-mesh.defaultConfig.tracing.sampling",
            format!("invalid percentage {}: must be between 0 and 100", s.0),
        ));
    }
    for (i, p) in m.extension_providers.iter().enumerate() {
        let at = format!("x-mesh.extensionProviders[{i}]");
        if p.name.is_empty() {
            errors.push(FieldError::new(
                format!("{at}.name"),
                "a provider needs a name",
            ));
        }
        if m.extension_providers[..i].iter().any(|q| q.name == p.name) {
            errors.push(FieldError::new(
                format!("{at}.name"),
                format!("provider {:?} is listed twice", p.name),
            ));
        }
        match &p.opentelemetry {
            None => errors.push(
                FieldError::new(
                    at,
                    "not supported by meshctl: an extension provider other than opentelemetry",
                )
                .with_hint(
                    "`opentelemetry: {service: <host>, port: 4318, http: {path: /v1/traces}}`",
                ),
            ),
            Some(o) if o.http.is_none() => errors.push(
                FieldError::new(
                    format!("{at}.opentelemetry"),
                    "not supported by meshctl: OTLP over gRPC (proxies export OTLP/HTTP)",
                )
                .with_hint("add `http: {path: /v1/traces}` and the collector's HTTP port (4318)"),
            ),
            Some(o) if o.service.is_empty() || o.port == 0 => errors.push(FieldError::new(
                format!("{at}.opentelemetry"),
                "service and port are required",
            )),
            Some(_) => {}
        }
    }
    for (i, name) in m
        .default_providers
        .iter()
        .flat_map(|d| d.tracing.iter())
        .enumerate()
    {
        if !m.extension_providers.iter().any(|p| &p.name == name) {
            errors.push(FieldError::new(
                format!("x-mesh.defaultProviders.tracing[{i}]"),
                format!("no extension provider is named {name:?}"),
            ));
        }
    }
}

impl super::ComposeFile {
    /// Whether `x-mesh.accessLogFile` turns access logs on.
    pub fn access_log_on(&self) -> bool {
        self.x_mesh
            .as_ref()
            .and_then(|m| m.access_log_file.as_deref())
            == Some(ACCESS_LOG_STDOUT)
    }

    /// `x-mesh.accessLogEncoding`, `TEXT` when not set.
    pub fn access_log_encoding(&self) -> AccessLogEncoding {
        self.x_mesh
            .as_ref()
            .and_then(|m| m.access_log_encoding)
            .unwrap_or_default()
    }

    /// `x-mesh.defaultConfig.tracing.sampling`, when set.
    pub fn tracing_sampling(&self) -> Option<f64> {
        self.x_mesh
            .as_ref()?
            .default_config
            .as_ref()?
            .tracing
            .as_ref()?
            .sampling
            .map(|s| s.0)
    }

    /// The extension provider named `name`.
    pub fn extension_provider(&self, name: &str) -> Option<&ExtensionProvider> {
        self.x_mesh
            .as_ref()?
            .extension_providers
            .iter()
            .find(|p| p.name == name)
    }

    /// `x-mesh.defaultProviders.tracing[0]`, when set.
    pub fn default_tracing_provider(&self) -> Option<&str> {
        self.x_mesh
            .as_ref()?
            .default_providers
            .as_ref()?
            .tracing
            .first()
            .map(String::as_str)
    }
}
