//! One token: found in a request ([`extract`]), verified against a rule and its key set
//! ([`verify`]), and remembered once verified ([`TokenCache`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Validation;
use jsonwebtoken::errors::ErrorKind;
use serde_json::{Map, Value};

use super::keys::KeySet;
use super::{CLOCK_SKEW_SECS, JwtRule, Location, TokenSources};

/// Why a token was refused. The message is Envoy's `jwt_authn` status text, which is also the
/// body of the 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    #[error("Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections")]
    Malformed,
    #[error("Jwt issuer is not configured")]
    IssuerNotConfigured,
    #[error("Audiences in Jwt are not allowed")]
    AudienceNotAllowed,
    #[error("Jwt is expired")]
    Expired,
    #[error("Jwt not yet valid")]
    NotYetValid,
    #[error("Jwt verification fails")]
    BadSignature,
    #[error("Jwks doesn't have key to match kid or alg from Jwt")]
    NoMatchingKey,
    #[error("Jwks remote fetch is failed")]
    KeysUnavailable,
}

/// What a verified token says, as authorization and the output headers read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// `<iss>/<sub>`: the request principal.
    pub principal: String,
    /// `aud`, as a list.
    pub audiences: Vec<String>,
    /// `azp`.
    pub presenter: Option<String>,
    /// Every claim.
    pub claims: Map<String, Value>,
    /// The token's payload segment as sent (base64url).
    pub payload_b64: String,
    /// `exp`, seconds since the epoch.
    pub exp: Option<u64>,
}

impl Verified {
    /// A claim by path (`["a", "b"]` is `{"a": {"b": ...}}`).
    pub fn claim<S: AsRef<str>>(&self, path: &[S]) -> Option<&Value> {
        let (first, rest) = path.split_first()?;
        let mut v = self.claims.get(first.as_ref())?;
        for k in rest {
            v = v.as_object()?.get(k.as_ref())?;
        }
        Some(v)
    }

    /// The values of a claim as authorization compares them: a string, each string of a list,
    /// a number or boolean as JSON writes it.
    pub fn claim_values<S: AsRef<str>>(&self, path: &[S]) -> Vec<std::borrow::Cow<'_, str>> {
        use std::borrow::Cow;
        fn scalar(v: &Value) -> Option<Cow<'_, str>> {
            match v {
                Value::String(s) => Some(Cow::Borrowed(s.as_str())),
                Value::Number(_) | Value::Bool(_) => Some(Cow::Owned(v.to_string())),
                _ => None,
            }
        }
        match self.claim(path) {
            Some(Value::Array(a)) => a.iter().filter_map(scalar).collect(),
            Some(v) => scalar(v).into_iter().collect(),
            None => Vec::new(),
        }
    }

    /// A claim as a header value: a string as is, a list of scalars joined with `,`, any other
    /// JSON value as JSON.
    pub fn claim_text(&self, path: &[&str]) -> Option<String> {
        match self.claim(path)? {
            Value::String(s) => Some(s.clone()),
            Value::Array(_) => Some(self.claim_values(path).join(",")),
            Value::Null => None,
            v => Some(v.to_string()),
        }
    }
}

/// Seconds since the epoch.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The first token `rule` finds: its headers in order, then its query parameters, then its
/// cookies. A header whose value lacks the prefix holds no token.
pub(crate) fn extract<'a, 'r>(
    rule: &'r JwtRule,
    req: &TokenSources<'a>,
) -> Option<(&'a str, Location<'r>)> {
    for h in &rule.from_headers {
        let Some(v) = req.headers.get(&h.name) else {
            continue;
        };
        let p = h.prefix.as_bytes();
        let rest = match v.as_bytes().get(..p.len()) {
            Some(head) if head.eq_ignore_ascii_case(p) => v.get(p.len()..),
            _ => None,
        };
        if let Some(t) = rest.map(str::trim).filter(|t| !t.is_empty()) {
            return Some((t, Location::Header(&h.name)));
        }
    }
    if let Some(q) = req.query {
        for name in &rule.from_params {
            let found = q
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, v)| k == name && !v.is_empty());
            if let Some((_, v)) = found {
                return Some((v, Location::Param));
            }
        }
    }
    if !rule.from_cookies.is_empty()
        && let Some(c) = req.headers.get("cookie")
    {
        for name in &rule.from_cookies {
            let found = c
                .split([';', ','])
                .filter_map(|kv| kv.trim().split_once('='))
                .find(|(k, v)| k == name && !v.is_empty());
            if let Some((_, v)) = found {
                return Some((v, Location::Cookie));
            }
        }
    }
    None
}

/// Verifies `token` for `rule` with `keys` at the current time: issuer, key (by `kid` and `alg`),
/// signature, audiences, `exp` and `nbf` with [`CLOCK_SKEW_SECS`].
pub(crate) fn verify(rule: &JwtRule, keys: &KeySet, token: &str) -> Result<Verified, AuthnError> {
    let mut parts = token.split('.');
    let (Some(_header), Some(payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthnError::Malformed);
    };
    let claims: Map<String, Value> = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(AuthnError::Malformed)?;
    if claims.get("iss").and_then(Value::as_str) != Some(rule.issuer.as_str()) {
        return Err(AuthnError::IssuerNotConfigured);
    }
    let head = jsonwebtoken::decode_header(token).map_err(|_| AuthnError::Malformed)?;
    let alg = head.alg;
    let candidates = keys.keys.iter().filter(|k| {
        k.family.accepts(alg)
            && k.alg.is_none_or(|a| a == alg)
            && match (&head.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            }
    });
    let mut validation = Validation::new(alg);
    validation.required_spec_claims.clear();
    validation.leeway = CLOCK_SKEW_SECS;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    if rule.audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&rule.audiences);
        validation.required_spec_claims.insert("aud".into());
    }
    let mut result = Err(AuthnError::NoMatchingKey);
    for k in candidates {
        match jsonwebtoken::decode::<serde::de::IgnoredAny>(token, &k.key, &validation) {
            Ok(_) => {
                result = Ok(());
                break;
            }
            Err(e) => {
                let mapped = match e.kind() {
                    ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
                        AuthnError::BadSignature
                    }
                    ErrorKind::ExpiredSignature => AuthnError::Expired,
                    ErrorKind::ImmatureSignature => AuthnError::NotYetValid,
                    ErrorKind::InvalidAudience | ErrorKind::MissingRequiredClaim(_) => {
                        AuthnError::AudienceNotAllowed
                    }
                    ErrorKind::Crypto(_) => AuthnError::BadSignature,
                    _ => AuthnError::Malformed,
                };
                result = Err(mapped);
                // Another key with the same kid (or none) may still verify the signature.
                if mapped != AuthnError::BadSignature {
                    break;
                }
            }
        }
    }
    result?;
    let audiences = match claims.get("aud") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("");
    Ok(Verified {
        principal: format!("{}/{sub}", rule.issuer),
        audiences,
        presenter: claims
            .get("azp")
            .and_then(Value::as_str)
            .map(str::to_string),
        exp: claims.get("exp").and_then(Value::as_f64).map(|e| e as u64),
        payload_b64: payload.to_string(),
        claims,
    })
}

/// Verified tokens of one rule, keyed by the whole token. An entry counts only under the key
/// set that verified it and until its `exp` (plus the skew); the map never holds more than
/// its capacity.
#[derive(Debug)]
pub(crate) struct TokenCache {
    capacity: usize,
    map: Mutex<HashMap<Box<str>, Entry>>,
}

/// A verified token and the generation of the key set that verified it.
type Entry = (Arc<Verified>, u64);

impl TokenCache {
    pub(crate) fn new(capacity: usize) -> Self {
        TokenCache {
            capacity,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn live(v: &Verified, now: u64) -> bool {
        v.exp
            .is_none_or(|exp| exp.saturating_add(CLOCK_SKEW_SECS) >= now)
    }

    pub(crate) fn get(&self, token: &str, keys: &KeySet, now: u64) -> Option<Arc<Verified>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let (v, generation) = map.get(token)?;
        (*generation == keys.generation() && Self::live(v, now)).then(|| v.clone())
    }

    pub(crate) fn insert(&self, token: &str, keys: &KeySet, v: Arc<Verified>) {
        if self.capacity == 0 {
            return;
        }
        let now = now_secs();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.capacity {
            let generation = keys.generation();
            map.retain(|_, (v, g)| *g == generation && Self::live(v, now));
        }
        if map.len() >= self.capacity
            && let Some(k) = map.keys().next().cloned()
        {
            map.remove(&k);
        }
        map.insert(token.into(), (v, keys.generation()));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(exp: Option<u64>) -> Arc<Verified> {
        Arc::new(Verified {
            principal: "iss/sub".into(),
            audiences: Vec::new(),
            presenter: None,
            claims: Map::new(),
            payload_b64: String::new(),
            exp,
        })
    }

    #[test]
    fn the_cache_is_bounded_keyed_by_key_set_and_honours_exp() {
        let keys = KeySet::empty();
        let rotated = KeySet::empty();
        let now = now_secs();
        let cache = TokenCache::new(2);
        cache.insert("a", &keys, verified(Some(now + 600)));
        cache.insert("b", &keys, verified(None));
        cache.insert("c", &keys, verified(Some(now + 600)));
        assert_eq!(cache.len(), 2, "never more than its capacity");
        assert!(cache.get("c", &keys, now).is_some());
        assert!(cache.get("c", &rotated, now).is_none(), "other keys");
        cache.insert("old", &keys, verified(Some(now - 10)));
        assert!(cache.get("old", &keys, now).is_some(), "within the skew");
        assert!(
            cache.get("old", &keys, now + CLOCK_SKEW_SECS).is_none(),
            "expired past the skew"
        );
        assert!(cache.get("missing", &keys, now).is_none());
    }
}
