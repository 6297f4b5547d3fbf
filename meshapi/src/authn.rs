//! Request authentication: Istio's RequestAuthentication as Envoy's `jwt_authn` filter
//! enforces it. The control plane compiles the resources that select a workload
//! (`meshmodel::compile::authn`) into a [`RequestAuthentication`] section of the proxy config;
//! the proxy builds an [`Authenticator`] from it and asks it about every inbound HTTP request.
//!
//! Istio's rules, kept here:
//! - A request without a token in any configured location passes authentication (and carries
//!   no request principal: AuthorizationPolicy decides).
//! - A request with a token that no rule verifies (bad signature, unknown issuer, wrong
//!   audience, expired, not yet valid, no key for it) is refused with 401, whatever the
//!   authorization policy says. Keys that could not be fetched verify nothing.
//! - `exp` and `nbf` are checked with Envoy's 60 s of clock skew.
//!
//! Verified tokens are cached per rule (bounded, keyed by the whole token, valid only under the
//! key set that verified them and only until the token's `exp`), so a client that sends the
//! same token again costs a hash lookup instead of a signature check.

mod keys;
mod token;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use keys::{JwksError, KeySet, RemoteKeys};
pub use token::{AuthnError, Verified};

use crate::authz::HeaderLookup;
use token::TokenCache;

/// The version of the [`RequestAuthentication`] format; bumped on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;
/// Envoy's allowed clock skew on `exp` and `nbf`, in seconds.
pub const CLOCK_SKEW_SECS: u64 = 60;
/// How often a proxy re-fetches a `jwksUri` by default (Envoy's remote JWKS cache duration).
pub const DEFAULT_JWKS_REFRESH: std::time::Duration = std::time::Duration::from_secs(300);
/// How long one fetch of a rule's keys may take by default (Istio's `timeout` default).
pub const DEFAULT_JWKS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Where an issuer publishes its OpenID provider metadata (`jwks_uri` among it), after the
/// issuer URL without its trailing `/`.
pub const OPENID_CONFIGURATION: &str = "/.well-known/openid-configuration";
/// How many verified tokens each rule remembers.
pub const TOKEN_CACHE_SIZE: usize = 1024;
/// The header and query parameter Istio reads a token from when a rule names no location.
pub const DEFAULT_HEADER: &str = "authorization";
pub const DEFAULT_PREFIX: &str = "Bearer ";
pub const DEFAULT_PARAM: &str = "access_token";

/// The `requestAuthentication` section of a proxy config: the JWT rules of every
/// RequestAuthentication that selects the workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestAuthentication {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// How often each `jwksUri` is fetched again (a failed fetch is retried sooner). Default
    /// `5m`.
    #[serde(default = "default_refresh")]
    pub jwks_refresh: crate::proxy::Dur,
    /// The rules, in the order of their resources (root namespace first, then by name).
    #[serde(default)]
    pub rules: Vec<JwtRule>,
}

fn default_refresh() -> crate::proxy::Dur {
    crate::proxy::Dur(DEFAULT_JWKS_REFRESH)
}

impl Default for RequestAuthentication {
    fn default() -> Self {
        RequestAuthentication {
            version: FORMAT_VERSION,
            jwks_refresh: default_refresh(),
            rules: Vec::new(),
        }
    }
}

/// One compiled `jwtRules` entry. Token locations are explicit: the compiler writes Istio's
/// defaults (`Authorization: Bearer`, `?access_token=`) when the resource names none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JwtRule {
    /// The RequestAuthentication it came from, `<namespace>/<name>`, for logs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// The `iss` a token must carry. Required.
    pub issuer: String,
    /// If not empty, the token's `aud` must contain one of these. Default: any audience.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// An inline JSON Web Key Set. At most one of `jwks` and `jwksUri`; with neither, the
    /// proxy discovers the key set from the issuer ([`KeySource::Discovery`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// Where the proxy fetches the key set (`http://` or `https://`), every `jwksRefresh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// How long one fetch of the keys (discovery document included) may take. Default `5s`
    /// ([`DEFAULT_JWKS_TIMEOUT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<crate::proxy::Dur>,
    /// Headers the token is read from, each with the prefix the value must start with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<TokenHeader>,
    /// Query parameters the token is read from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    /// Cookies the token is read from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_cookies: Vec<String>,
    /// Keep the token header on the request to the application. Default false: removed.
    #[serde(default)]
    pub forward_original_token: bool,
    /// A header that gets the verified token's payload, base64url-encoded. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_payload_to_header: Option<String>,
    /// Headers that get one claim each (nested claims by dots, `a.b`). Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
}

/// A header a token is read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenHeader {
    /// Lower case.
    pub name: String,
    /// What the value starts with before the token (`Bearer `), compared ignoring ASCII case.
    /// Default none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
}

/// `outputClaimToHeaders` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimToHeader {
    /// Lower case.
    pub header: String,
    /// The claim, nested by dots (`a.b` is `{"a": {"b": ...}}`).
    pub claim: String,
}

impl RequestAuthentication {
    /// Problems with the section, as `(path below requestAuthentication, message)`.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.version != FORMAT_VERSION {
            out.push((
                "version".to_string(),
                format!(
                    "unknown requestAuthentication format version {} (this build reads {FORMAT_VERSION})",
                    self.version
                ),
            ));
        }
        if self.jwks_refresh.0.is_zero() {
            out.push(("jwksRefresh".into(), "must be more than 0".into()));
        }
        for (i, r) in self.rules.iter().enumerate() {
            let p = |f: &str| format!("rules[{i}].{f}");
            if r.issuer.is_empty() {
                out.push((p("issuer"), "issuer is required".into()));
            }
            match (&r.jwks, &r.jwks_uri) {
                (Some(_), Some(_)) => out.push((
                    p("jwks"),
                    "at most one of jwks and jwksUri may be set".into(),
                )),
                // OpenID discovery from the issuer: an issuer that is no URL fails at fetch
                // time and verifies nothing, as in Istio.
                (None, None) => {}
                (Some(j), None) => {
                    if let Err(e) = KeySet::parse(j) {
                        out.push((p("jwks"), e.to_string()));
                    }
                }
                (None, Some(u)) => {
                    if let Err(e) = keys::check_uri(u) {
                        out.push((p("jwksUri"), e));
                    }
                }
            }
            if r.timeout.is_some_and(|t| t.0.is_zero()) {
                out.push((p("timeout"), "must be more than 0".into()));
            }
            if r.from_headers.is_empty() && r.from_params.is_empty() && r.from_cookies.is_empty() {
                out.push((p("fromHeaders"), "a rule needs a token location".into()));
            }
            let mut headers: Vec<(String, &str)> = r
                .from_headers
                .iter()
                .enumerate()
                .map(|(j, h)| (p(&format!("fromHeaders[{j}].name")), h.name.as_str()))
                .collect();
            if let Some(h) = &r.output_payload_to_header {
                headers.push((p("outputPayloadToHeader"), h));
            }
            for (j, c) in r.output_claim_to_headers.iter().enumerate() {
                headers.push((p(&format!("outputClaimToHeaders[{j}].header")), &c.header));
                if c.claim.is_empty() {
                    out.push((
                        p(&format!("outputClaimToHeaders[{j}].claim")),
                        "must not be empty".into(),
                    ));
                }
            }
            for (path, h) in headers {
                if !is_header_name(h) {
                    out.push((path, format!("{h:?} is not a lower-case header name")));
                }
            }
        }
        out
    }

    /// Every key set the proxy fetches for the rules, once each.
    pub fn key_sources(&self) -> Vec<KeySource> {
        let mut out: Vec<KeySource> = Vec::new();
        for s in self.rules.iter().filter_map(JwtRule::key_source) {
            if !out.contains(&s) {
                out.push(s);
            }
        }
        out
    }
}

impl JwtRule {
    /// Where the proxy fetches this rule's keys; `None` for inline keys.
    pub fn key_source(&self) -> Option<KeySource> {
        if self.jwks.is_some() {
            return None;
        }
        let timeout = self.timeout.map_or(DEFAULT_JWKS_TIMEOUT, |t| t.0);
        Some(match &self.jwks_uri {
            Some(uri) => KeySource::Uri {
                uri: uri.clone(),
                timeout,
            },
            None => KeySource::Discovery {
                issuer: self.issuer.clone(),
                timeout,
            },
        })
    }
}

/// A key set the proxy fetches, and how long each fetch may take.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeySource {
    /// The rule's `jwksUri`.
    Uri {
        uri: String,
        timeout: std::time::Duration,
    },
    /// OpenID discovery, as Istio does for a rule with neither `jwks` nor `jwksUri`:
    /// `<issuer>/.well-known/openid-configuration`, then its `jwks_uri`.
    Discovery {
        issuer: String,
        timeout: std::time::Duration,
    },
}

impl KeySource {
    /// The first URL fetched: the `jwksUri`, or the issuer's discovery document.
    pub fn first_url(&self) -> String {
        match self {
            KeySource::Uri { uri, .. } => uri.clone(),
            KeySource::Discovery { issuer, .. } => {
                format!("{}{OPENID_CONFIGURATION}", issuer.trim_end_matches('/'))
            }
        }
    }

    pub fn timeout(&self) -> std::time::Duration {
        match self {
            KeySource::Uri { timeout, .. } | KeySource::Discovery { timeout, .. } => *timeout,
        }
    }
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Uri { uri, .. } => f.write_str(uri),
            KeySource::Discovery { .. } => write!(f, "{} (OpenID discovery)", self.first_url()),
        }
    }
}

/// The `jwks_uri` of an OpenID provider metadata document.
pub fn discovered_jwks_uri(doc: &str) -> Result<String, String> {
    #[derive(serde::Deserialize)]
    struct Meta {
        jwks_uri: String,
    }
    let m: Meta = serde_json::from_str(doc)
        .map_err(|e| format!("OpenID configuration without a jwks_uri: {e}"))?;
    keys::check_uri(&m.jwks_uri)?;
    Ok(m.jwks_uri)
}

fn is_header_name(h: &str) -> bool {
    !h.is_empty()
        && h.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "!#$%&'*+-.^_`|~".contains(c))
}

/// Where a verified token was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location<'r> {
    /// A header (removed before the application unless `forwardOriginalToken`).
    Header(&'r str),
    Param,
    Cookie,
}

/// A request that carried a token a rule verified.
#[derive(Debug, Clone)]
pub struct Authenticated<'r> {
    pub verified: Arc<Verified>,
    pub rule: &'r JwtRule,
    pub location: Location<'r>,
}

impl Authenticated<'_> {
    /// The headers to set on the request to the application: the payload header and the
    /// claim headers of the rule, for the claims the token has.
    pub fn output_headers(&self) -> Vec<(&str, String)> {
        let mut out = Vec::new();
        if let Some(h) = &self.rule.output_payload_to_header {
            out.push((h.as_str(), self.verified.payload_b64.clone()));
        }
        for c in &self.rule.output_claim_to_headers {
            let path: Vec<&str> = c.claim.split('.').collect();
            if let Some(v) = self.verified.claim_text(&path) {
                out.push((c.header.as_str(), v));
            }
        }
        out
    }
}

/// What the proxy needs of a request to find its token.
#[derive(Clone, Copy)]
pub struct TokenSources<'a> {
    pub headers: &'a dyn HeaderLookup,
    /// The query string, without `?`.
    pub query: Option<&'a str>,
}

/// Where a rule gets its keys.
#[derive(Debug, Clone)]
pub enum Keys {
    Inline(Arc<KeySet>),
    /// Fetched by the proxy; empty until the first successful fetch.
    Remote(Arc<RemoteKeys>),
}

impl Keys {
    fn current(&self) -> Option<Arc<KeySet>> {
        match self {
            Keys::Inline(k) => Some(k.clone()),
            Keys::Remote(r) => r.get(),
        }
    }
}

#[derive(Debug)]
struct RuleState {
    rule: JwtRule,
    keys: Keys,
    cache: TokenCache,
}

/// The runtime form of a [`RequestAuthentication`]: each rule with its keys and its cache of
/// verified tokens. Built once per config apply.
#[derive(Debug)]
pub struct Authenticator {
    rules: Vec<RuleState>,
}

impl Authenticator {
    /// `remote` answers the fetched key set of a [`KeySource`]. An inline set that does not parse
    /// (the config's validation refuses it first) verifies nothing: the rule fails closed.
    pub fn new(
        section: &RequestAuthentication,
        mut remote: impl FnMut(&KeySource) -> Arc<RemoteKeys>,
    ) -> Authenticator {
        let rules = section
            .rules
            .iter()
            .map(|r| {
                let keys = match (&r.jwks, r.key_source()) {
                    (Some(j), _) => Keys::Inline(Arc::new(
                        KeySet::parse(j).unwrap_or_else(|_| KeySet::empty()),
                    )),
                    (None, Some(source)) => Keys::Remote(remote(&source)),
                    (None, None) => Keys::Inline(Arc::new(KeySet::empty())),
                };
                RuleState {
                    rule: r.clone(),
                    keys,
                    cache: TokenCache::new(TOKEN_CACHE_SIZE),
                }
            })
            .collect();
        Authenticator { rules }
    }

    /// Every rule, in order.
    pub fn rules(&self) -> impl Iterator<Item = &JwtRule> {
        self.rules.iter().map(|r| &r.rule)
    }

    /// Whether any rule applies.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Authenticates one request: `Ok(None)` when no rule finds a token (Istio lets it
    /// through without a principal), `Ok(Some)` when a rule verifies the token it found, and
    /// the most telling failure when tokens were found and none verified.
    pub fn authenticate(
        &self,
        req: &TokenSources<'_>,
    ) -> Result<Option<Authenticated<'_>>, AuthnError> {
        let mut failure: Option<AuthnError> = None;
        for st in &self.rules {
            let Some((token, location)) = token::extract(&st.rule, req) else {
                continue;
            };
            match self.verify_with(st, token) {
                Ok(verified) => {
                    return Ok(Some(Authenticated {
                        verified,
                        rule: &st.rule,
                        location,
                    }));
                }
                Err(e) => {
                    // A token for another rule's issuer says less than a real failure.
                    if failure
                        .as_ref()
                        .is_none_or(|f| *f == AuthnError::IssuerNotConfigured)
                    {
                        failure = Some(e);
                    }
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    fn verify_with(&self, st: &RuleState, token: &str) -> Result<Arc<Verified>, AuthnError> {
        let now = token::now_secs();
        let keys = st.keys.current().ok_or(AuthnError::KeysUnavailable)?;
        if let Some(v) = st.cache.get(token, &keys, now) {
            return Ok(v);
        }
        let v = Arc::new(token::verify(&st.rule, &keys, token)?);
        st.cache.insert(token, &keys, v.clone());
        Ok(v)
    }
}
