//! JSON Web Key Sets: parsed once into verification keys ([`KeySet`]), and the slot a proxy
//! fills with what it fetched from a `jwksUri` ([`RemoteKeys`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};

/// Why a key set cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("JWKS is not JSON with a `keys` list: {0}")]
    NotJson(String),
    #[error("JWKS has no RSA, EC (P-256, P-384) or Ed25519 key meshctl can verify with")]
    NoUsableKey,
}

/// The family of algorithms one key verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl Family {
    pub(crate) fn accepts(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            Family::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            Family::EcP256 => alg == ES256,
            Family::EcP384 => alg == ES384,
            Family::Ed25519 => alg == EdDSA,
        }
    }
}

/// One verification key.
pub(crate) struct Key {
    pub kid: Option<String>,
    /// The key's own `alg`, when it names one.
    pub alg: Option<Algorithm>,
    pub family: Family,
    pub key: DecodingKey,
}

/// A parsed key set. Each set has a process-unique generation, so a token verified under one
/// set is never taken as verified under another (after a rotation).
pub struct KeySet {
    pub(crate) keys: Vec<Key>,
    generation: u64,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("keys", &self.keys.len())
            .field("kids", &self.kids())
            .finish()
    }
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

impl KeySet {
    /// Reads a JWKS document (`{"keys": [...]}`). Keys of a kind meshctl does not verify with
    /// (symmetric `oct` keys, other curves) are skipped; a set left without any key is an
    /// error.
    pub fn parse(json: &str) -> Result<KeySet, JwksError> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc = serde_json::from_str(json).map_err(|e| JwksError::NotJson(e.to_string()))?;
        let keys: Vec<Key> = doc
            .keys
            .into_iter()
            .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
            .filter_map(|jwk| key_of(&jwk))
            .collect();
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey);
        }
        Ok(KeySet::of(keys))
    }

    /// A set without keys: verifies nothing.
    pub fn empty() -> KeySet {
        KeySet::of(Vec::new())
    }

    fn of(keys: Vec<Key>) -> KeySet {
        KeySet {
            keys,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The `kid`s of the keys, for logs.
    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().filter_map(|k| k.kid.as_deref()).collect()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn key_of(jwk: &Jwk) -> Option<Key> {
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Family::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Family::EcP256,
            EllipticCurve::P384 => Family::EcP384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Family::Ed25519
        }
        _ => return None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    let alg = jwk
        .common
        .key_algorithm
        .and_then(|a| a.to_string().parse::<Algorithm>().ok());
    Some(Key {
        kid: jwk.common.key_id.clone(),
        alg,
        family,
        key,
    })
}

/// The key set of one `jwksUri`, as last fetched by the proxy: empty until a fetch succeeds,
/// then the last good set (a failed fetch keeps it).
#[derive(Debug, Default)]
pub struct RemoteKeys {
    current: RwLock<Option<Arc<KeySet>>>,
}

impl RemoteKeys {
    pub fn get(&self) -> Option<Arc<KeySet>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set(&self, keys: KeySet) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(keys));
    }
}

/// A URL a proxy can fetch keys from (`jwksUri`, an issuer to discover, a discovered
/// `jwks_uri`): `http://` or `https://` with a host.
pub(crate) fn check_uri(uri: &str) -> Result<(), String> {
    let rest = uri
        .strip_prefix("http://")
        .or_else(|| uri.strip_prefix("https://"))
        .ok_or_else(|| format!("{uri:?} must start with http:// or https://"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() {
        return Err(format!("{uri:?} has no host"));
    }
    Ok(())
}
