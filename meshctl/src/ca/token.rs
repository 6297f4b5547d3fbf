//! Single-use bootstrap tokens: how a workload proves its identity for its first certificate.
//!
//! meshctl issues one random token per workload or host it starts, bound to one identity and
//! expiring after a short time. Only a SHA-256 hash of each token is kept, in memory and in
//! `<state>/.mesh/tokens.json` (mode 0600), so a restarted control plane honours outstanding
//! tokens and a leaked state file does not leak usable tokens. A used token stays recorded
//! (as used) until well after its expiry, so a replay is reported as a replay.
//!
//! A *pod token* ([`TokenStore::issue_for_holder`]) is the exception, for containers Docker may
//! restart: it names its holder (the sidecar container), is valid any number of times for its
//! one identity and does not expire; it is revoked when its holder is removed
//! ([`TokenStore::revoke_holders`]: `meshctl up` recreating or scaling away the pod, `meshctl
//! down`). A sidecar restarted by Docker (restart policy, `docker restart`, a daemon restart)
//! starts with the same environment, so it presents the same token and gets a certificate
//! again; the workload key never leaves the proxy's memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use meshapi::ca_api::{BootstrapToken, SpiffeId, TOKEN_RANDOM_BYTES};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::CaError;
use super::store::{check_private, write_file};

/// How long a used or expired token is remembered, so late replays get a precise refusal.
const REMEMBER_AFTER_EXPIRY: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRecord {
    identity: SpiffeId,
    /// Milliseconds since the Unix epoch.
    expires_at_ms: u64,
    used: bool,
    /// The container a pod token belongs to; `None` for a single-use token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    holder: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    version: u32,
    /// sha256(token) in hex -> record.
    tokens: BTreeMap<String, TokenRecord>,
}

/// Outstanding bootstrap tokens, persisted to one JSON file.
#[derive(Debug)]
pub struct TokenStore {
    path: PathBuf,
    tokens: Mutex<BTreeMap<String, TokenRecord>>,
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn hash(token: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl TokenStore {
    /// Opens the store at `path`, loading outstanding tokens if the file exists.
    pub fn open(path: &Path) -> Result<Self, CaError> {
        let tokens = if path.exists() {
            check_private(path)?;
            let text = std::fs::read_to_string(path).map_err(|e| CaError::Io {
                path: path.to_owned(),
                source: e,
            })?;
            let file: TokenFile = serde_json::from_str(&text).map_err(|e| CaError::Corrupt {
                path: path.to_owned(),
                reason: format!("not a token file: {e}"),
            })?;
            file.tokens
        } else {
            BTreeMap::new()
        };
        Ok(Self {
            path: path.to_owned(),
            tokens: Mutex::new(tokens),
        })
    }

    /// Issues a token for `identity`, valid for `ttl` from `now`, and persists it.
    pub fn issue(
        &self,
        identity: &SpiffeId,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<BootstrapToken, CaError> {
        let mut bytes = [0u8; TOKEN_RANDOM_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        let token = BootstrapToken::from_random(&bytes);
        let record = TokenRecord {
            identity: identity.clone(),
            expires_at_ms: millis(now + ttl),
            used: false,
            holder: None,
        };
        self.insert(token, record, now)
    }

    /// Issues a pod token for `identity` held by container `holder`: reusable, no expiry,
    /// valid until [`TokenStore::revoke_holders`] removes it. An earlier token of the same
    /// holder is revoked (one token per container name).
    pub fn issue_for_holder(
        &self,
        identity: &SpiffeId,
        holder: &str,
        now: SystemTime,
    ) -> Result<BootstrapToken, CaError> {
        let record = TokenRecord {
            identity: identity.clone(),
            expires_at_ms: u64::MAX,
            used: false,
            holder: Some(holder.to_string()),
        };
        let mut bytes = [0u8; TOKEN_RANDOM_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        let token = BootstrapToken::from_random(&bytes);
        self.lock()
            .retain(|_, r| r.holder.as_deref() != Some(holder));
        self.insert(token, record, now)
    }

    /// Revokes the pod tokens whose holder `revoke` selects; returns how many.
    pub fn revoke_holders(
        &self,
        revoke: impl Fn(&str) -> bool,
        now: SystemTime,
    ) -> Result<usize, CaError> {
        let mut tokens = self.lock();
        let before = tokens.len();
        tokens.retain(|_, r| !r.holder.as_deref().is_some_and(&revoke));
        let revoked = before - tokens.len();
        if revoked > 0 {
            self.save(&mut tokens, now)?;
        }
        Ok(revoked)
    }

    /// Holders of the pod tokens in the store.
    pub fn holders(&self) -> Vec<String> {
        self.lock()
            .values()
            .filter_map(|r| r.holder.clone())
            .collect()
    }

    fn insert(
        &self,
        token: BootstrapToken,
        record: TokenRecord,
        now: SystemTime,
    ) -> Result<BootstrapToken, CaError> {
        let mut tokens = self.lock();
        tokens.insert(hash(token.as_str()), record);
        self.save(&mut tokens, now)?;
        Ok(token)
    }

    /// The holder of pod token `token`, if it is one (a single-use token has none).
    pub fn holder_of(&self, token: &str) -> Option<String> {
        self.lock().get(&hash(token)).and_then(|r| r.holder.clone())
    }

    /// Checks, without using it, that `token` is valid now for `identity`.
    pub fn check(&self, token: &str, identity: &SpiffeId, now: SystemTime) -> Result<(), CaError> {
        let tokens = self.lock();
        Self::validate(&tokens, token, identity, now).map(|_| ())
    }

    /// Uses `token` for `identity`: valid once, atomically, and persisted before returning
    /// (a pod token stays valid: nothing changes).
    pub fn consume(
        &self,
        token: &str,
        identity: &SpiffeId,
        now: SystemTime,
    ) -> Result<(), CaError> {
        let mut tokens = self.lock();
        let key = Self::validate(&tokens, token, identity, now)?;
        match tokens.get_mut(&key) {
            Some(record) if record.holder.is_none() => record.used = true,
            _ => return Ok(()),
        }
        self.save(&mut tokens, now)
    }

    /// Number of tokens that are neither used nor expired.
    pub fn outstanding(&self, now: SystemTime) -> usize {
        let now = millis(now);
        self.lock()
            .values()
            .filter(|r| !r.used && r.expires_at_ms > now)
            .count()
    }

    fn validate(
        tokens: &BTreeMap<String, TokenRecord>,
        token: &str,
        identity: &SpiffeId,
        now: SystemTime,
    ) -> Result<String, CaError> {
        if token.parse::<BootstrapToken>().is_err() {
            return Err(CaError::TokenMalformed);
        }
        let key = hash(token);
        let record = tokens.get(&key).ok_or(CaError::TokenUnknown)?;
        if record.used {
            return Err(CaError::TokenReused {
                bound_to: record.identity.to_string(),
            });
        }
        if record.expires_at_ms <= millis(now) {
            return Err(CaError::TokenExpired {
                bound_to: record.identity.to_string(),
            });
        }
        if record.identity != *identity {
            return Err(CaError::TokenIdentityMismatch {
                bound_to: record.identity.to_string(),
                requested: identity.to_string(),
            });
        }
        Ok(key)
    }

    fn save(
        &self,
        tokens: &mut BTreeMap<String, TokenRecord>,
        now: SystemTime,
    ) -> Result<(), CaError> {
        let remember_ms = u64::try_from(REMEMBER_AFTER_EXPIRY.as_millis()).unwrap_or(u64::MAX);
        let forget_before = millis(now).saturating_sub(remember_ms);
        tokens.retain(|_, r| r.expires_at_ms > forget_before);
        let file = TokenFile {
            version: 1,
            tokens: tokens.clone(),
        };
        let json = serde_json::to_vec_pretty(&file).map_err(|e| CaError::Corrupt {
            path: self.path.clone(),
            reason: format!("cannot serialise tokens: {e}"),
        })?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| CaError::Io {
                path: dir.to_owned(),
                source: e,
            })?;
        }
        write_file(&self.path, &json, 0o600, true)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, TokenRecord>> {
        // A panic while holding the lock cannot leave the map half-updated (single inserts),
        // so recovering the guard is safe.
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }
}
