//! The compiled per-proxy configuration: everything one `meshproxy` needs, in one typed,
//! versioned document (`apiVersion: meshproxy/v1`).
//!
//! `meshproxy --config FILE` reads it from YAML or JSON; the control plane will push the same
//! type. Unknown fields are errors. [`ProxyConfig::validate`] returns every problem at once as
//! [`FieldError`]s; [`ProxyConfig::from_str_checked`] parses and validates in one step.
//! The format is documented, with a runnable two-proxy example, in docs/proxy-config.md.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::diag::FieldError;

pub mod spiffe;
mod validate;
pub use spiffe::{SpiffeId, SpiffeIdError};

/// The only `apiVersion` this build understands.
pub const API_VERSION: &str = "meshproxy/v1";

/// One proxy's whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProxyConfig {
    /// Format version. Required; must be `meshproxy/v1`.
    pub api_version: String,
    /// Revision of this document, set by its writer (the control plane counts up). Shown in
    /// `/config_dump` and as `meshproxy_config_revision`. Default 0.
    #[serde(default)]
    pub revision: u64,
    /// Who this proxy is and where its credentials are.
    pub identity: IdentityConfig,
    /// Addresses of the data-plane listeners.
    #[serde(default)]
    pub listeners: ListenerConfig,
    /// Application ports this proxy serves inbound (forwarded to 127.0.0.1:<port>). Default none.
    #[serde(default)]
    pub inbound: Vec<InboundPort>,
    /// Service ports this proxy captures outbound (one entry per VIP:port). Default none.
    #[serde(default)]
    pub outbound: Vec<OutboundService>,
    /// Mesh services by name: their endpoints and destination host. Default none.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceConfig>,
    /// Whether the inbound side sets `x-forwarded-client-cert` (Envoy's SANITIZE_SET) for mTLS
    /// peers. A client-sent header is always removed. Default true.
    #[serde(default = "default_true")]
    pub xfcc: bool,
    /// How long SIGTERM waits for in-flight requests and streams before closing them.
    /// Default `5s`.
    #[serde(default = "default_drain")]
    pub drain_deadline: Dur,
    /// HTTP and connection limits.
    #[serde(default)]
    pub limits: Limits,
    /// Admin, health and metrics listeners.
    #[serde(default)]
    pub admin: AdminConfig,
    /// The compiled authorization policy of this workload ([`crate::authz::WorkloadPolicy`],
    /// as `meshmodel::compile::authz::compile_for_workload` makes it), including its
    /// `path_normalization` option. Evaluated per HTTP request and per TCP connection after
    /// PeerAuthentication. Default none: everything that passed PeerAuthentication is allowed,
    /// and HTTP paths are still normalized with Istio's default (`BASE`) before forwarding.
    /// Unknown fields are errors at any depth.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_via_json",
        deserialize_with = "de_via_json"
    )]
    pub authorization: Option<crate::authz::WorkloadPolicy>,
    /// The compiled RequestAuthentications of this workload
    /// ([`crate::authn::RequestAuthentication`], as
    /// `meshmodel::compile::authn::compile_for_workload` makes it): JWT rules checked on every
    /// inbound HTTP request before authorization. A token no rule verifies is answered 401; a
    /// request without a token passes with no request principal. Default none: tokens are
    /// not looked at. Unknown fields are errors at any depth.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_via_json",
        deserialize_with = "de_via_json"
    )]
    pub request_authentication: Option<crate::authn::RequestAuthentication>,
    /// The compiled traffic management of this client ([`crate::traffic::RouteTable`], as
    /// `meshmodel::compile::routes::compile_routes` makes it from VirtualServices and DestinationRules):
    /// per destination host its ordered HTTP and TCP rules, per (host, subset, port) its
    /// endpoints' policy (load balancer, connection pool, outlier detection). Services are
    /// matched to hosts by their `host`, endpoints to clusters by `workload` and `labels`.
    /// Default none: every service gets the default entry the compiler emits for a service no
    /// VirtualService or DestinationRule names (all endpoints, Istio's default load balancer
    /// and retry policy; [`crate::traffic::RouteTable::with_defaults`]); so does a service
    /// without `host` when a table is given. Unknown fields are errors at any depth.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_via_json",
        deserialize_with = "de_via_json"
    )]
    pub traffic: Option<crate::traffic::RouteTable>,
    /// Metrics, access logs and tracing ([`crate::telemetry::TelemetryConfig`]). Default:
    /// Istio's defaults.
    #[serde(default)]
    pub telemetry: crate::telemetry::TelemetryConfig,
    /// What the outbound capture listener does with a connection to a destination that is
    /// not in `outbound` (Istio's `outboundTrafficPolicy`). Default `ALLOW_ANY`.
    #[serde(default, skip_serializing_if = "OutboundTrafficPolicy::is_default")]
    pub outbound_traffic_policy: OutboundTrafficPolicy,
}

/// Istio's `outboundTrafficPolicy`: what happens to captured traffic for a destination the
/// proxy does not know (neither a mesh service nor a ServiceEntry in its `outbound`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutboundTrafficPolicy {
    /// `ALLOW_ANY` or `REGISTRY_ONLY`. Default `ALLOW_ANY`, Istio's default.
    #[serde(default)]
    pub mode: OutboundMode,
}

impl OutboundTrafficPolicy {
    /// Whether this is the default (`ALLOW_ANY`), left out when written.
    pub fn is_default(&self) -> bool {
        *self == OutboundTrafficPolicy::default()
    }
}

/// `outboundTrafficPolicy.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundMode {
    /// Unknown destinations are passed through (a TCP byte copy to the original
    /// destination, counted as passthrough). Istio's default.
    #[default]
    AllowAny,
    /// Unknown destinations are refused: an HTTP request gets `502` with the response flag
    /// `NR` and the host in the body, any other connection is closed; both are counted.
    RegistryOnly,
}

impl OutboundMode {
    /// The name as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            OutboundMode::AllowAny => "ALLOW_ANY",
            OutboundMode::RegistryOnly => "REGISTRY_ONLY",
        }
    }
}

/// Writes an engine section (`authorization`, `traffic`) through `serde_json::Value`, so it
/// reads back through [`de_via_json`] the same from YAML and JSON.
fn ser_via_json<T, S>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error>
where
    T: Serialize,
    S: Serializer,
{
    use serde::ser::Error;
    match v {
        None => s.serialize_none(),
        Some(p) => s.serialize_some(&serde_json::to_value(p).map_err(S::Error::custom)?),
    }
}

/// Reads an engine section (`authorization`, `traffic`) refusing unknown fields at any depth,
/// although the engines' types do not say `deny_unknown_fields`: every key given must survive
/// a round trip through the typed value (keys the serializer skips may only carry empty
/// values). Enum variants are one-key maps (`{principal: [...]}`), as JSON has them.
fn de_via_json<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
where
    T: Serialize + serde::de::DeserializeOwned,
    D: Deserializer<'de>,
{
    use serde::de::Error;
    let given: Option<serde_json::Value> = Option::deserialize(d)?;
    let Some(given) = given else {
        return Ok(None);
    };
    let value: T = serde_json::from_value(given.clone()).map_err(D::Error::custom)?;
    let typed = serde_json::to_value(&value).map_err(D::Error::custom)?;
    if let Some(path) = unknown_key(&given, &typed, String::new()) {
        return Err(D::Error::custom(format!("unknown field `{path}`")));
    }
    Ok(Some(value))
}

/// The first key path in `given` that `typed` does not have (ignoring empty values).
fn unknown_key(given: &serde_json::Value, typed: &serde_json::Value, at: String) -> Option<String> {
    use serde_json::Value;
    let empty = |v: &Value| match v {
        Value::Null | Value::Bool(false) => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    };
    match (given, typed) {
        (Value::Object(g), Value::Object(t)) => g.iter().find_map(|(k, v)| {
            let here = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            match t.get(k) {
                Some(tv) => unknown_key(v, tv, here),
                None if empty(v) => None,
                None => Some(here),
            }
        }),
        (Value::Array(g), Value::Array(t)) => g
            .iter()
            .zip(t)
            .enumerate()
            .find_map(|(i, (gv, tv))| unknown_key(gv, tv, format!("{at}[{i}]"))),
        _ => None,
    }
}

fn default_true() -> bool {
    true
}

fn default_drain() -> Dur {
    Dur(Duration::from_secs(5))
}

/// The proxy's workload identity. In file mode the three PEM files are read at start and
/// re-read when they change (rotation); all three are required together. Without them the
/// proxy waits for credentials from the CA client and is not ready until it has some.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IdentityConfig {
    /// This workload's SPIFFE ID; must match the URI SAN of `certFile`. Required.
    pub spiffe_id: SpiffeId,
    /// PEM certificate chain (leaf first). Default: none (CA-client mode).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1). Default: none. Redacted in `/config_dump`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// PEM mesh trust roots. Default: none.
    #[serde(default)]
    pub roots_file: Option<PathBuf>,
    /// Trust domains besides `spiffeId`'s whose peers this proxy accepts over mTLS (the
    /// mesh's `trustDomainAliases`). Default none: only its own trust domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_domain_aliases: Vec<String>,
    /// Control-plane mode: the mesh CA's current trust bundle, PEM (both roots while a root
    /// rotation is in progress). Set by the control plane, not by `meshctl proxy-config`. A
    /// proxy whose trust roots differ trusts exactly these from then on (toward peers and
    /// toward the control plane) and renews its certificate at once. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_bundle: Option<String>,
}

/// Data-plane listener addresses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ListenerConfig {
    /// The inbound listener (mTLS from other proxies). Default `0.0.0.0:15006`.
    #[serde(default = "default_inbound_addr")]
    pub inbound: SocketAddr,
    /// The outbound capture listener for kernel-redirected connections (SO_ORIGINAL_DST).
    /// Default: none (host mode binds one listener per outbound VIP:port instead).
    #[serde(default)]
    pub outbound_capture: Option<SocketAddr>,
    /// Whether to bind one explicit listener per `outbound[].vip` (host mode). Default true.
    #[serde(default = "default_true")]
    pub bind_vips: bool,
    /// The edge listener: plaintext from outside the mesh to a published port (container
    /// mode: the capture rules redirect it here), served with the port's protocol and the
    /// workload's AuthorizationPolicy, without a principal. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<SocketAddr>,
}

fn default_inbound_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 15006))
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            inbound: default_inbound_addr(),
            outbound_capture: None,
            bind_vips: true,
            edge: None,
        }
    }
}

/// Application protocol of a port (Istio's port-name / appProtocol values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 (and h2c if the client speaks it).
    Http,
    /// HTTP/2 cleartext to the application.
    Http2,
    /// gRPC (HTTP/2 with trailers).
    Grpc,
    /// Opaque TCP byte stream.
    Tcp,
}

impl Protocol {
    /// True for every HTTP flavour.
    pub fn is_http(self) -> bool {
        !matches!(self, Protocol::Tcp)
    }
}

/// PeerAuthentication mode of an inbound port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PeerAuthMode {
    /// Only mTLS from the mesh; plaintext and certificate-less clients are refused.
    Strict,
    /// mTLS or plaintext, detected on the first bytes.
    Permissive,
    /// Plaintext only.
    Disable,
}

/// One application port served inbound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InboundPort {
    /// The service port peers ask for (in SNI, or the original destination). Required.
    pub port: u16,
    /// Protocol the application speaks. Required.
    pub protocol: Protocol,
    /// PeerAuthentication mode. Default `PERMISSIVE` (Istio's default).
    #[serde(default = "default_mode")]
    pub mode: PeerAuthMode,
    /// The application's port on 127.0.0.1 when it differs from `port` (Kubernetes'
    /// `targetPort`). Default: `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
}

impl InboundPort {
    /// The application's port on 127.0.0.1.
    pub fn app_port(&self) -> u16 {
        self.target_port.unwrap_or(self.port)
    }
}

fn default_mode() -> PeerAuthMode {
    PeerAuthMode::Permissive
}

/// One service port reached through this proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutboundService {
    /// Name of the service in `services`. Required.
    pub service: String,
    /// The service VIP and port clients connect to. Required.
    pub vip: SocketAddr,
    /// Protocol of this port. Required.
    pub protocol: Protocol,
    /// The application port on the endpoints, sent to the peer proxy (in SNI). Default: the
    /// VIP's port.
    #[serde(default)]
    pub target_port: Option<u16>,
}

impl OutboundService {
    /// The application port on the endpoints.
    pub fn target_port(&self) -> u16 {
        self.target_port.unwrap_or(self.vip.port())
    }
}

/// A mesh service: where it runs and its name in the route table.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceConfig {
    /// Endpoints of the service. Default none (requests get `503 UH`).
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// The service's FQDN (`backend.default.svc.cluster.local`), its name in `traffic`.
    /// Default none: the service is routed by a default entry named by its key (all its
    /// endpoints, Istio's defaults), whether or not `traffic` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// One endpoint of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Endpoint {
    /// Where the endpoint's proxy accepts mTLS (its inbound listener, or the pod address when
    /// the peer captures inbound traffic). Required.
    pub address: SocketAddr,
    /// SPIFFE ID the endpoint's proxy must present (ISTIO_MUTUAL). Default none: the endpoint
    /// is outside the mesh (a ServiceEntry address), reached in plaintext unless `tls` says
    /// otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<SpiffeId>,
    /// Labels (`app`, `version`, ...) DestinationRule subsets select on. Default none.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The compose service the endpoint is an instance of (`backend-v1`); a `traffic`
    /// cluster lists the workloads it holds. Default none: clusters select by labels only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// How this client connects to the endpoint: entries with a `port` apply to that
    /// application port, one entry without `port` to every other port. Default none:
    /// `ISTIO_MUTUAL` when the endpoint has an `identity`, `DISABLE` (plaintext) when not. A
    /// `traffic` cluster's `policy.tls` (a DestinationRule's `tls`) overrides this.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<UpstreamTls>,
    /// The start epoch of the endpoint's proxy: a random number its proxy draws at each start
    /// and reports to the control plane once it serves. A client that sees a new epoch for an
    /// endpoint it ejected (outlier detection) takes it back at once, as Istio on Kubernetes
    /// does for a new pod address. Default none: not known (not started yet, not a mesh proxy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

impl Endpoint {
    /// Whether `other` is this endpoint at the same place with the same settings, whatever
    /// the epochs: a restarted proxy is the same endpoint.
    pub fn same_but_epoch(&self, other: &Endpoint) -> bool {
        let Endpoint {
            address,
            identity,
            labels,
            workload,
            tls,
            epoch: _,
        } = self;
        *address == other.address
            && *identity == other.identity
            && *labels == other.labels
            && *workload == other.workload
            && *tls == other.tls
    }

    /// The TLS settings for connections to `port` on this endpoint (see [`Endpoint::tls`]).
    pub fn tls_for(&self, port: u16) -> UpstreamTls {
        self.tls
            .iter()
            .find(|t| t.port == Some(port))
            .or_else(|| self.tls.iter().find(|t| t.port.is_none()))
            .cloned()
            .unwrap_or_else(|| match self.identity {
                Some(_) => UpstreamTls::istio_mutual(),
                None => UpstreamTls::disable(),
            })
    }
}

/// How a client proxy opens connections to an upstream (Istio's `ClientTLSSettings`, with
/// file paths read by the proxy at each new connection, so a rotated file applies to the next
/// connection).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpstreamTls {
    /// The application port this entry is for (only in `endpoints[].tls`). Default: every
    /// port without an entry of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// How to connect. Required.
    pub mode: UpstreamTlsMode,
    /// PEM CA bundle the server's chain must lead to (`SIMPLE`, `MUTUAL`). Default: the
    /// system's trust roots (the first of [`SYSTEM_CA_FILES`] that exists), as Istio does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<PathBuf>,
    /// PEM client certificate chain presented to the server (`MUTUAL`, required there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<PathBuf>,
    /// PEM private key of `clientCertificate` (`MUTUAL`, required there). Redacted in
    /// `/config_dump`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<PathBuf>,
    /// Server name sent in the TLS handshake (`SIMPLE`, `MUTUAL`). Default: the first of
    /// `subjectAltNames`, else the service's host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// DNS names (or IP addresses) one of which the server certificate must carry as a SAN.
    /// Default none: the sent SNI must be in the certificate (when it is a DNS name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// Accept any server certificate (chain and names unchecked). Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
}

/// Where the proxy looks for the system's trust roots when `caCertificates` is not set
/// (Debian/Ubuntu/Alpine, then Fedora/RHEL, then openSUSE).
pub const SYSTEM_CA_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
];

/// `UpstreamTls.mode`, Istio's `tls.mode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UpstreamTlsMode {
    /// Mutual TLS 1.3 with this proxy's mesh certificate; the server must present the
    /// endpoint's `identity`. The default inside the mesh.
    IstioMutual,
    /// Plaintext TCP (HTTP/1.1, or h2c to an `http2`/`grpc` port or another mesh proxy).
    Disable,
    /// TLS origination: the server's certificate is verified, no client certificate.
    Simple,
    /// TLS origination presenting `clientCertificate`.
    Mutual,
}

impl UpstreamTls {
    /// `mode: ISTIO_MUTUAL` for every port.
    pub fn istio_mutual() -> UpstreamTls {
        UpstreamTls::of(UpstreamTlsMode::IstioMutual)
    }

    /// `mode: DISABLE` for every port.
    pub fn disable() -> UpstreamTls {
        UpstreamTls::of(UpstreamTlsMode::Disable)
    }

    /// `mode` with nothing else set.
    pub fn of(mode: UpstreamTlsMode) -> UpstreamTls {
        UpstreamTls {
            port: None,
            mode,
            ca_certificates: None,
            client_certificate: None,
            private_key: None,
            sni: None,
            subject_alt_names: Vec::new(),
            insecure_skip_verify: false,
        }
    }

    /// Whether this originates TLS of its own (`SIMPLE`, `MUTUAL`).
    pub fn originates(&self) -> bool {
        matches!(self.mode, UpstreamTlsMode::Simple | UpstreamTlsMode::Mutual)
    }

    /// Every problem with these settings, with paths under `at`.
    pub fn validate(&self, at: &str) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let origin_only = [
            ("caCertificates", self.ca_certificates.is_some()),
            ("clientCertificate", self.client_certificate.is_some()),
            ("privateKey", self.private_key.is_some()),
            ("sni", self.sni.is_some()),
            ("subjectAltNames", !self.subject_alt_names.is_empty()),
            ("insecureSkipVerify", self.insecure_skip_verify),
        ];
        match self.mode {
            UpstreamTlsMode::IstioMutual | UpstreamTlsMode::Disable => {
                for (field, set) in origin_only {
                    if set {
                        errs.push(
                            FieldError::new(
                                format!("{at}.{field}"),
                                format!("only for SIMPLE or MUTUAL, not {:?}", self.mode),
                            )
                            .with_hint("remove it, or set mode SIMPLE or MUTUAL"),
                        );
                    }
                }
            }
            UpstreamTlsMode::Simple | UpstreamTlsMode::Mutual => {
                if self.insecure_skip_verify
                    && (self.ca_certificates.is_some() || !self.subject_alt_names.is_empty())
                {
                    errs.push(FieldError::new(
                        format!("{at}.insecureSkipVerify"),
                        "cannot go with caCertificates or subjectAltNames",
                    ));
                }
                let mutual = self.mode == UpstreamTlsMode::Mutual;
                for (field, set) in [
                    ("clientCertificate", self.client_certificate.is_some()),
                    ("privateKey", self.private_key.is_some()),
                ] {
                    if mutual && !set {
                        errs.push(FieldError::new(
                            format!("{at}.{field}"),
                            "required for MUTUAL",
                        ));
                    }
                    if !mutual && set {
                        errs.push(
                            FieldError::new(format!("{at}.{field}"), "only for MUTUAL")
                                .with_hint("set mode MUTUAL to present a client certificate"),
                        );
                    }
                }
                if let Some(sni) = &self.sni
                    && rustls_name_ok(sni).is_err()
                {
                    errs.push(FieldError::new(
                        format!("{at}.sni"),
                        format!("{sni:?} is not a DNS name or IP address"),
                    ));
                }
            }
        }
        errs
    }
}

/// Whether `s` can be a TLS server name: a DNS name (letters, digits, `-`, `.`) or an IP.
fn rustls_name_ok(s: &str) -> Result<(), ()> {
    if s.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if ok { Ok(()) } else { Err(()) }
}

/// HTTP and connection limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Limits {
    /// Time a client has to send a complete HTTP/1 request head. Default `10s`.
    #[serde(default = "d_header_timeout")]
    pub header_read_timeout: Dur,
    /// Largest request head accepted (bytes); bigger gets 431. Default 65536; minimum 8192.
    #[serde(default = "d_max_header")]
    pub max_header_bytes: usize,
    /// How long PERMISSIVE waits for a first byte to tell TLS from plaintext. Default `200ms`;
    /// at most `1s`.
    #[serde(default = "d_sniff")]
    pub sniff_timeout: Dur,
    /// Timeout to connect (TCP + TLS) to an endpoint or the application. Default `2s`.
    #[serde(default = "d_connect")]
    pub connect_timeout: Dur,
    /// Max concurrent HTTP/2 streams per connection accepted. Default 1024.
    #[serde(default = "d_streams")]
    pub max_concurrent_streams: u32,
}

fn d_header_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn d_max_header() -> usize {
    65536
}
fn d_sniff() -> Dur {
    Dur(Duration::from_millis(200))
}
fn d_connect() -> Dur {
    Dur(Duration::from_secs(2))
}
fn d_streams() -> u32 {
    1024
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: d_header_timeout(),
            max_header_bytes: d_max_header(),
            sniff_timeout: d_sniff(),
            connect_timeout: d_connect(),
            max_concurrent_streams: d_streams(),
        }
    }
}

/// Admin, health and metrics listener addresses (Istio's ports).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AdminConfig {
    /// `/config_dump`, `/ready`, `/logging?level=`. Default `127.0.0.1:15000`.
    #[serde(default = "d_admin")]
    pub admin: SocketAddr,
    /// `/healthz/ready`. Default `0.0.0.0:15021`.
    #[serde(default = "d_health")]
    pub health: SocketAddr,
    /// `/stats/prometheus`. Default `0.0.0.0:15090`.
    #[serde(default = "d_stats")]
    pub stats: SocketAddr,
}

fn d_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15000))
}
fn d_health() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 15021))
}
fn d_stats() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 15090))
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            admin: d_admin(),
            health: d_health(),
            stats: d_stats(),
        }
    }
}

/// A duration written as `250ms`, `5s`, `2m` or `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("duration {s:?} must look like 250ms, 5s, 2m or 1h"))?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            _ => return Err(format!("duration {s:?} needs a unit: ms, s, m or h")),
        };
        Ok(Dur(d))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Why a config document was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The text is not YAML, or a field does not fit its type; `path` is the field path
    /// (empty at the top), `line` and `column` place the node in the text.
    #[error("{line}:{column}: {}{message}", if .path.is_empty() { String::new() } else { format!("{}: ", .path) })]
    Parse {
        path: String,
        message: String,
        line: usize,
        column: usize,
    },
    #[error("invalid proxy config: {}", .0.iter().map(|e| format!("{}: {}", e.path, e.message)).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
}

impl ProxyConfig {
    /// The route table this proxy routes with: `traffic` plus the compiler's default entry
    /// ([`RouteTable::with_defaults`](crate::traffic::RouteTable::with_defaults)) for every
    /// service the table does not route (all of them without `traffic`, else those without
    /// `host`, named by their key). Also returns each service's host in the table, by key.
    /// The proxy and `meshctl explain` both route with exactly this table.
    pub fn effective_routes(
        &self,
    ) -> (
        crate::traffic::RouteTable,
        std::collections::HashMap<String, String>,
    ) {
        let hosts = self
            .services
            .iter()
            .map(|(k, s)| (k.clone(), s.host.clone().unwrap_or_else(|| k.clone())))
            .collect();
        let defaults = self
            .services
            .iter()
            .filter(|(_, s)| self.traffic.is_none() || s.host.is_none())
            .map(|(k, s)| {
                let mut ports: Vec<u16> = self
                    .outbound
                    .iter()
                    .filter(|o| o.service == *k)
                    .map(OutboundService::target_port)
                    .collect();
                ports.sort_unstable();
                ports.dedup();
                (s.host.clone().unwrap_or_else(|| k.clone()), ports)
            })
            .collect::<Vec<_>>();
        let base = self.traffic.clone().unwrap_or_else(|| {
            crate::traffic::RouteTable::empty(&self.identity.spiffe_id.to_string())
        });
        (base.with_defaults(defaults), hosts)
    }

    /// Whether `self` and `other` are equal except for their revision (nothing to push).
    pub fn same_content(&self, other: &ProxyConfig) -> bool {
        if self.revision == other.revision {
            return self == other;
        }
        let mut other = other.clone();
        other.revision = self.revision;
        *self == other
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
apiVersion: meshproxy/v1
revision: 3
identity:
  spiffeId: spiffe://cluster.local/ns/default/sa/web
  certFile: /tmp/web.pem
  keyFile: /tmp/web.key
  rootsFile: /tmp/roots.pem
listeners:
  inbound: 127.0.0.1:15006
inbound:
  - { port: 8080, protocol: http, mode: STRICT }
outbound:
  - { service: api, vip: 127.240.0.2:80, protocol: http, targetPort: 9090 }
services:
  api:
    endpoints:
      - address: 127.0.0.1:15106
        identity: spiffe://cluster.local/ns/default/sa/api
        labels: { version: v1 }
drainDeadline: 3s
"#;

    #[test]
    fn example_parses_with_defaults() {
        let c = ProxyConfig::from_str_checked(EXAMPLE).unwrap();
        assert_eq!(c.revision, 3);
        assert!(c.xfcc);
        assert_eq!(c.drain_deadline.0, Duration::from_secs(3));
        assert_eq!(c.limits.sniff_timeout.0, Duration::from_millis(200));
        assert_eq!(c.outbound[0].target_port(), 9090);
        assert_eq!(c.inbound[0].mode, PeerAuthMode::Strict);
        assert_eq!(c.admin.health.port(), 15021);
        // JSON round trip is accepted by the same loader.
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(ProxyConfig::from_str_checked(&json).unwrap(), c);
        assert_eq!(
            c.redacted().identity.key_file.unwrap(),
            PathBuf::from("<redacted>")
        );
    }

    const AUTHZ: &str = r#"authorization:
  version: 1
  path_normalization: MERGE_SLASHES
  deny:
    - namespace: default
      name: no-admin
      rules:
        - id: ns[default]-policy[no-admin]-rule[0]
          to:
            - - cond: { path: [ { str: { prefix: /admin } } ] }
          http_only: true
  allow:
    - namespace: default
      name: frontend-only
      rules:
        - id: ns[default]-policy[frontend-only]-rule[0]
          from:
            - - cond: { principal: [ { exact: cluster.local/ns/default/sa/frontend-sa } ] }
"#;

    #[test]
    fn authorization_section_parses_round_trips_and_refuses_unknown_fields() {
        assert!(
            ProxyConfig::from_str_checked(EXAMPLE)
                .unwrap()
                .authorization
                .is_none()
        );
        let c = ProxyConfig::from_str_checked(&format!("{EXAMPLE}{AUTHZ}")).unwrap();
        let a = c.authorization.as_ref().unwrap();
        assert_eq!(
            a.path_normalization,
            crate::authz::PathNormalization::MergeSlashes
        );
        assert_eq!(a.deny[0].name, "no-admin");
        assert_eq!(a.allow[0].rules.len(), 1);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(ProxyConfig::from_str_checked(&json).unwrap(), c);
        // YAML output (nested enums as one-key maps) reads back.
        let yaml = crate::yaml::to_string(&c).unwrap();
        assert!(yaml.contains("principal:"), "{yaml}");
        assert_eq!(ProxyConfig::from_str_checked(&yaml).unwrap(), c);
        let typo = format!("{EXAMPLE}{}", AUTHZ.replace("http_only", "httpOnly"));
        match ProxyConfig::from_str_checked(&typo) {
            Err(ConfigError::Parse { path, message, .. }) => {
                assert_eq!(path, "authorization");
                assert!(message.contains("deny[0].rules[0].httpOnly"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let v2 = format!("{EXAMPLE}{}", AUTHZ.replace("version: 1", "version: 2"));
        match ProxyConfig::from_str_checked(&v2) {
            Err(ConfigError::Invalid(errs)) => {
                assert_eq!(errs[0].path, "authorization.version", "{errs:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn traffic_section_round_trips_and_refuses_unknown_fields_and_other_versions() {
        let traffic =
            "traffic:\n  version: 1\n  client: frontend\n  services: []\n  clusters: []\n";
        let c = ProxyConfig::from_str_checked(&format!("{EXAMPLE}{traffic}")).unwrap();
        assert_eq!(c.traffic.as_ref().unwrap().client, "frontend");
        let yaml = crate::yaml::to_string(&c).unwrap();
        assert_eq!(ProxyConfig::from_str_checked(&yaml).unwrap(), c);
        let typo = format!("{EXAMPLE}{traffic}  clusterz: [1]\n");
        match ProxyConfig::from_str_checked(&typo) {
            Err(ConfigError::Parse { path, message, .. }) => {
                assert_eq!(path, "traffic");
                assert!(message.contains("clusterz"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let v2 = format!("{EXAMPLE}{}", traffic.replace("version: 1", "version: 2"));
        match ProxyConfig::from_str_checked(&v2) {
            Err(ConfigError::Invalid(errs)) => {
                assert_eq!(errs[0].path, "traffic.version", "{errs:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// The hand-written example in docs/proxy-config.md stays a valid config.
    #[test]
    fn docs_example_configs_parse() {
        let doc = include_str!("../../docs/proxy-config.md");
        let blocks: Vec<&str> = doc
            .split("```yaml\n")
            .skip(1)
            .filter_map(|b| b.split("```").next())
            .filter(|b| b.starts_with("apiVersion: meshproxy/v1"))
            .collect();
        assert_eq!(blocks.len(), 2, "backend.yaml and frontend.yaml");
        for b in blocks {
            ProxyConfig::from_str_checked(b).unwrap_or_else(|e| panic!("{e}\n{b}"));
        }
        let frontend = ProxyConfig::from_str_checked(blocks_last(doc)).unwrap();
        let ext = &frontend.services["example-com"].endpoints[0];
        assert_eq!(ext.identity, None);
        assert_eq!(ext.tls_for(443).mode, UpstreamTlsMode::Simple);
    }

    fn blocks_last(doc: &str) -> &str {
        doc.split("```yaml\n")
            .filter_map(|b| b.split("```").next())
            .filter(|b| b.starts_with("apiVersion: meshproxy/v1"))
            .last()
            .unwrap()
    }

    #[test]
    fn endpoint_tls_defaults_lookup_and_validation() {
        // Old configs mean the same: an endpoint with an identity is ISTIO_MUTUAL everywhere.
        let c = ProxyConfig::from_str_checked(EXAMPLE).unwrap();
        let ep = &c.services["api"].endpoints[0];
        assert_eq!(ep.tls_for(9090), UpstreamTls::istio_mutual());
        let with = EXAMPLE.replace(
            "        labels: { version: v1 }\n",
            "        labels: { version: v1 }\n        tls:\n          - { port: 9090, mode: DISABLE }\n          - { mode: SIMPLE, caCertificates: /ca.pem, sni: api.example, subjectAltNames: [api.example], }\n      - address: 127.0.0.1:443\n",
        );
        let c = ProxyConfig::from_str_checked(&with).unwrap();
        let eps = &c.services["api"].endpoints;
        assert_eq!(eps[0].tls_for(9090).mode, UpstreamTlsMode::Disable);
        let other = eps[0].tls_for(8443);
        assert_eq!(other.mode, UpstreamTlsMode::Simple);
        assert_eq!(other.sni.as_deref(), Some("api.example"));
        // No identity: outside the mesh, plaintext by default.
        assert_eq!(eps[1].identity, None);
        assert_eq!(eps[1].tls_for(443), UpstreamTls::disable());
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(ProxyConfig::from_str_checked(&json).unwrap(), c);
        // Unknown field inside tls: refused with its path.
        let typo = with.replace("sni: api.example", "server_name: api.example");
        match ProxyConfig::from_str_checked(&typo) {
            Err(ConfigError::Parse { path, message, .. }) => {
                assert!(path.contains("tls[1]"), "{path}");
                assert!(message.contains("server_name"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // Semantic problems, every one reported.
        let bad = with
            .replace("caCertificates: /ca.pem, ", "insecureSkipVerify: true, ")
            .replace("{ port: 9090, mode: DISABLE }", "{ port: 9090, mode: DISABLE, sni: x }")
            .replace(
                "      - address: 127.0.0.1:443\n",
                "      - { address: \"127.0.0.1:443\", tls: [ { mode: ISTIO_MUTUAL }, { mode: MUTUAL, insecureSkipVerify: true } ] }\n",
            );
        let Err(ConfigError::Invalid(errs)) = ProxyConfig::from_str_checked(&bad) else {
            panic!("{bad}")
        };
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "services.api.endpoints[0].tls[0].sni",
                "services.api.endpoints[0].tls[1].insecureSkipVerify",
                "services.api.endpoints[1].tls[0].mode",
                "services.api.endpoints[1].tls[1].clientCertificate",
                "services.api.endpoints[1].tls[1].privateKey",
                "services.api.endpoints[1].tls[1].port",
            ],
            "{errs:?}"
        );
    }

    #[test]
    fn unknown_fields_are_refused_with_a_path() {
        let bad = EXAMPLE.replace("targetPort: 9090", "targetPort: 9090, timeout: 1s");
        match ProxyConfig::from_str_checked(&bad) {
            Err(ConfigError::Parse { path, message, .. }) => {
                assert!(path.starts_with("outbound[0]"), "{path}");
                assert!(message.contains("timeout"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wrong_types_are_placed_at_their_line_and_column() {
        let bad = EXAMPLE.replace("targetPort: 9090", "targetPort: lots");
        let line = bad.lines().position(|l| l.contains("lots")).unwrap() + 1;
        let column = bad
            .lines()
            .nth(line - 1)
            .unwrap()
            .find("targetPort")
            .unwrap()
            + 1;
        let err = ProxyConfig::from_str_checked(&bad).unwrap_err();
        match &err {
            ConfigError::Parse {
                path,
                message,
                line: l,
                column: c,
            } => {
                assert_eq!(path, "outbound[0].targetPort");
                assert!(message.contains("invalid type"), "{message}");
                assert_eq!((*l, *c), (line, column), "{err}");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            err.to_string()
                .starts_with(&format!("{line}:{column}: outbound[0].targetPort: ")),
            "{err}"
        );
        // Syntax errors are placed too.
        let err = ProxyConfig::from_str_checked(
            "apiVersion: meshproxy/v1
revision: [1
",
        )
        .unwrap_err();
        assert!(
            matches!(err, ConfigError::Parse { line, .. } if line >= 2),
            "{err:?}"
        );
    }

    #[test]
    fn validation_reports_every_problem() {
        let bad = EXAMPLE
            .replace("meshproxy/v1", "meshproxy/v9")
            .replace("service: api,", "service: nope,")
            .replace("3s", "0s")
            .replace("  keyFile: /tmp/web.key\n", "");
        let Err(ConfigError::Invalid(errs)) = ProxyConfig::from_str_checked(&bad) else {
            panic!()
        };
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "apiVersion",
                "identity",
                "outbound[0].service",
                "drainDeadline"
            ]
        );
    }

    #[test]
    fn bad_spiffe_id_and_duration_are_parse_errors() {
        let bad = EXAMPLE.replace("sa/web", "sa/web/extra");
        assert!(matches!(
            ProxyConfig::from_str_checked(&bad),
            Err(ConfigError::Parse { .. })
        ));
        let bad = EXAMPLE.replace("3s", "3");
        assert!(matches!(
            ProxyConfig::from_str_checked(&bad),
            Err(ConfigError::Parse { .. })
        ));
    }
}
