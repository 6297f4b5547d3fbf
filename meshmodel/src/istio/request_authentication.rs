//! RequestAuthentication (security.istio.io v1beta1, v1): which JSON Web Tokens a workload
//! accepts. A request with a token that no rule verifies is refused (401); a request without a
//! token passes, with no request principal, and AuthorizationPolicy decides
//! (`requestPrincipals`, `request.auth.*`).

use serde::{Deserialize, Serialize};

use meshapi::diag::FieldError;

use super::meta::{Ignored, ObjectMeta, PolicyTargetReference, WorkloadSelector};
use super::types::Duration;
use super::validate::{Report, check_header_name};

/// A RequestAuthentication document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthentication {
    /// `security.istio.io/v1` or `v1beta1` (same schema).
    pub api_version: String,
    /// `RequestAuthentication`.
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: RequestAuthenticationSpec,
    /// Written by a cluster; read and dropped.
    #[serde(default, skip_serializing)]
    pub status: Ignored,
}

/// The `spec` of a RequestAuthentication.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthenticationSpec {
    /// The workloads this applies to. Absent (and no targetRef): the whole namespace, or the
    /// mesh in the root namespace. Exclusive with `targetRef`/`targetRefs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// Attach to a Service by name. Exclusive with `selector`, `targetRefs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    /// Attach to several targets; at most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// The token rules; a token is accepted when one of them verifies it. At most 4096.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_rules: Vec<JwtRule>,
}

/// One issuer's tokens and where to find them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    /// The `iss` the token carries. Required.
    #[serde(default)]
    pub issuer: String,
    /// Accepted `aud` values; empty: any audience.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Where the proxy fetches the public keys (JWKS), `http://` or `https://`. With neither
    /// this nor `jwks`, the proxy discovers them from the issuer (OpenID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// The legacy spelling of `jwksUri`, still in Istio's schema.
    #[serde(default, rename = "jwks_uri", skip_serializing_if = "Option::is_none")]
    pub jwks_uri_legacy: Option<String>,
    /// The public keys inline (a JWKS JSON document). At most one of `jwks`, `jwksUri` and
    /// `jwks_uri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// Headers with the token. Default (with `fromParams` and `fromCookies` empty):
    /// `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters with the token. Default (see `fromHeaders`): `access_token`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    /// Cookies with the token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_cookies: Vec<String>,
    /// Header that gets the verified payload (base64url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_payload_to_header: Option<String>,
    /// Keep the token on the request to the application. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_original_token: Option<bool>,
    /// Claims copied into headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// How long one fetch of the keys (discovery included) may take. Default 5s; at least 1ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// `OPTIONAL` (default: a request without a token passes) or `REQUIRED`. `REQUIRED` is not
    /// supported by meshctl.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<Presence>,
    /// Claims read as space-delimited lists. Not supported by meshctl.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub space_delimited_claims: Vec<String>,
}

/// `presence` of a jwtRule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Presence {
    Optional,
    Required,
}

impl JwtRule {
    /// `jwksUri`, or its legacy spelling `jwks_uri`.
    pub fn uri(&self) -> Option<&str> {
        self.jwks_uri.as_deref().or(self.jwks_uri_legacy.as_deref())
    }
}

/// A header a token is read from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    /// Required.
    #[serde(default)]
    pub name: String,
    /// What the value starts with before the token, e.g. `"Bearer "`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// An `outputClaimToHeaders` entry.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    /// Required.
    #[serde(default)]
    pub header: String,
    /// Required; nested claims by dots (`a.b`).
    #[serde(default)]
    pub claim: String,
}

/// Istio's limit on `jwtRules`.
pub const MAX_JWT_RULES: usize = 4096;

impl RequestAuthentication {
    /// Checks the resource as Istio would, plus meshctl's refusals. Paths start at the document
    /// root (`spec.jwtRules[0].issuer`).
    pub fn validate(&self) -> Vec<FieldError> {
        let mut r = Report::default();
        self.metadata.validate_into(&mut r, false);
        let spec = &self.spec;
        let targets = usize::from(spec.selector.is_some())
            + usize::from(spec.target_ref.is_some())
            + usize::from(!spec.target_refs.is_empty());
        if targets > 1 {
            r.error(
                "spec",
                "only one of selector, targetRef or targetRefs can be set",
            );
        }
        if let Some(sel) = &spec.selector {
            sel.validate_into(&mut r, "spec.selector");
        }
        if let Some(t) = &spec.target_ref {
            t.validate_into(&mut r, "spec.targetRef");
        }
        for (i, t) in spec.target_refs.iter().enumerate() {
            t.validate_into(&mut r, &format!("spec.targetRefs[{i}]"));
        }
        if spec.jwt_rules.len() > MAX_JWT_RULES {
            r.error(
                "spec.jwtRules",
                format!("at most {MAX_JWT_RULES} jwtRules are allowed"),
            );
        }
        for (i, rule) in spec.jwt_rules.iter().enumerate() {
            validate_rule(&mut r, &format!("spec.jwtRules[{i}]"), rule);
        }
        r.into_errors()
    }
}

fn validate_rule(r: &mut Report, p: &str, rule: &JwtRule) {
    if rule.issuer.is_empty() {
        r.error(format!("{p}.issuer"), "issuer must be set");
    }
    for (i, a) in rule.audiences.iter().enumerate() {
        if a.is_empty() {
            r.error(format!("{p}.audiences[{i}]"), "audience must not be empty");
        }
    }
    let set = usize::from(rule.jwks.is_some())
        + usize::from(rule.jwks_uri.is_some())
        + usize::from(rule.jwks_uri_legacy.is_some());
    if set > 1 {
        r.error(p, "only one of jwks or jwksUri can be set");
    }
    if let Some(u) = rule.uri()
        && let Err(e) = check_jwks_uri(u)
    {
        r.error(format!("{p}.jwksUri"), e);
    }
    // With neither jwks nor jwksUri the proxy discovers the keys from the issuer (OpenID).
    if let Some(j) = &rule.jwks
        && let Err(e) = meshapi::authn::KeySet::parse(j)
    {
        r.error(format!("{p}.jwks"), e.to_string());
    }
    if let Some(t) = rule.timeout
        && t < Duration::MIN_ISTIO
    {
        r.error(
            format!("{p}.timeout"),
            "must be a valid duration greater than 1ms",
        );
    }
    for (i, h) in rule.from_headers.iter().enumerate() {
        let hp = format!("{p}.fromHeaders[{i}].name");
        if h.name.is_empty() {
            r.error(hp, "location header name must be set");
        } else if let Err(e) = check_header_name(&h.name) {
            r.error(hp, e);
        }
    }
    for (i, q) in rule.from_params.iter().enumerate() {
        if q.is_empty() {
            r.error(format!("{p}.fromParams[{i}]"), "location query must be set");
        }
    }
    for (i, c) in rule.from_cookies.iter().enumerate() {
        if c.is_empty() {
            r.error(format!("{p}.fromCookies[{i}]"), "cookie name must be set");
        }
    }
    if let Some(h) = &rule.output_payload_to_header
        && let Err(e) = check_header_name(h)
    {
        r.error(format!("{p}.outputPayloadToHeader"), e);
    }
    for (i, c) in rule.output_claim_to_headers.iter().enumerate() {
        let cp = format!("{p}.outputClaimToHeaders[{i}]");
        if c.header.is_empty() {
            r.error(format!("{cp}.header"), "header must be set");
        } else if let Err(e) = check_header_name(&c.header) {
            r.error(format!("{cp}.header"), e);
        } else if c.header.starts_with(':') {
            r.error(
                format!("{cp}.header"),
                "a pseudo-header cannot carry a claim",
            );
        }
        if c.claim.is_empty() {
            r.error(format!("{cp}.claim"), "claim must be set");
        }
    }
    if rule.presence == Some(Presence::Required) {
        r.unsupported(
            format!("{p}.presence"),
            "presence REQUIRED",
            "a request without a token passes authentication; require one with an AuthorizationPolicy `requestPrincipals: [\"*\"]`",
        );
    }
    if !rule.space_delimited_claims.is_empty() {
        r.unsupported(
            format!("{p}.spaceDelimitedClaims"),
            "spaceDelimitedClaims",
            "claims are matched as strings or lists of strings",
        );
    }
}

/// A `jwksUri` a proxy can fetch: an `http` or `https` URL with a host.
fn check_jwks_uri(u: &str) -> Result<(), String> {
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"))
        .ok_or_else(|| format!("jwksUri {u:?} must be an http:// or https:// URL"))?;
    if rest.split(['/', '?', '#']).next().unwrap_or("").is_empty() {
        return Err(format!("jwksUri {u:?} has no host"));
    }
    Ok(())
}
