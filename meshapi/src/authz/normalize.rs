//! Request path normalization before authorization, with Istio's options (`meshConfig.
//! pathNormalization.normalization`): `NONE`, `BASE` (the default), `MERGE_SLASHES`,
//! `DECODE_AND_MERGE_SLASHES`.
//!
//! The proxy normalizes once, authorizes the result and forwards the very same string, so the
//! application never sees a path other than the one that was authorized. What each option does
//! follows Istio's "Authorization Policy Normalization" reference:
//!
//! - every option: `%00`, a `%` not followed by two hex digits, control characters, spaces,
//!   non-ASCII bytes and `#` are refused (the proxy answers 400); the path must start with `/`;
//! - `BASE`: percent-encoded unreserved characters (`%2d - %2e . %30-%39 %41-%5a %5f _ %61-%7a
//!   %7e ~`) are decoded, once (no double decoding: `%252e` stays); other escapes are kept
//!   exactly as sent (hex case unchanged); `\` becomes `/`; `.` and `..` segments are
//!   resolved (RFC 3986 5.2.4);
//! - `MERGE_SLASHES`: `BASE`, then runs of `/` become one;
//! - `DECODE_AND_MERGE_SLASHES`: `%2F` and `%5C` (any case) are decoded first, then
//!   `MERGE_SLASHES`.
//!
//! The query (after `?`) is never changed and is not part of what `paths` match.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// Istio's path normalization option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PathNormalization {
    /// Only the checks every option makes; the path is authorized and forwarded as received.
    None,
    /// RFC 3986 normalization plus `\` to `/`. Istio's default (MeshConfig also calls it
    /// `DEFAULT`).
    #[default]
    #[serde(alias = "DEFAULT")]
    Base,
    /// `BASE`, then repeated slashes merged.
    MergeSlashes,
    /// `%2F` / `%5C` decoded, then `MERGE_SLASHES`. The safest choice with DENY path rules.
    DecodeAndMergeSlashes,
}

/// Why a request path is refused (the proxy answers 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NormalizeError {
    #[error("path contains %00")]
    EncodedNul,
    #[error("malformed percent-encoding at byte {at} of the path")]
    MalformedEscape { at: usize },
    #[error("invalid character {byte:#04x} at byte {at} of the path")]
    InvalidByte { byte: u8, at: usize },
    #[error("path must start with '/'")]
    NotAbsolute,
    #[error("method {0:?} is not in upper case")]
    LowercaseMethod(String),
}

/// Istio refuses a request whose method is not in upper case (400), so that `methods` rules
/// cannot be sidestepped with `get`.
pub fn check_method(method: &str) -> Result<(), NormalizeError> {
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(NormalizeError::LowercaseMethod(method.to_string()));
    }
    Ok(())
}

/// A normalized request target: the path, then the query as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath<'a> {
    full: Cow<'a, str>,
    path_len: usize,
}

impl NormalizedPath<'_> {
    /// Path and query: what the proxy forwards.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The path without the query: what `paths` match.
    pub fn path(&self) -> &str {
        &self.full[..self.path_len]
    }

    /// The query without `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.full
            .get(self.path_len + 1..)
            .filter(|_| self.full.len() > self.path_len)
    }

    /// Whether normalization changed anything (the proxy then rewrites `:path`).
    pub fn is_changed(&self) -> bool {
        matches!(self.full, Cow::Owned(_))
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Normalizes a request target (`/path?query`) with `mode`; see the module documentation.
pub fn normalize_path(
    raw: &str,
    mode: PathNormalization,
) -> Result<NormalizedPath<'_>, NormalizeError> {
    let bytes = raw.as_bytes();
    let path_len = raw.find('?').unwrap_or(raw.len());
    for (at, &byte) in bytes.iter().enumerate() {
        if byte <= b' ' || byte >= 0x7f || byte == b'#' {
            return Err(NormalizeError::InvalidByte { byte, at });
        }
        if byte == b'%' && at < path_len {
            match (
                bytes.get(at + 1).copied().and_then(hex),
                bytes.get(at + 2).copied().and_then(hex),
            ) {
                (Some(0), Some(0)) => return Err(NormalizeError::EncodedNul),
                (Some(_), Some(_)) => {}
                _ => return Err(NormalizeError::MalformedEscape { at }),
            }
        }
    }
    // `\da` is `/da` once backslashes are slashes (Istio's own example).
    if !(raw.starts_with('/') || (raw.starts_with('\\') && mode != PathNormalization::None)) {
        return Err(NormalizeError::NotAbsolute);
    }
    let path = &raw[..path_len];
    let merge = matches!(
        mode,
        PathNormalization::MergeSlashes | PathNormalization::DecodeAndMergeSlashes
    );
    let dirty = path.contains(['%', '\\']) || path.contains("/.") || (merge && path.contains("//"));
    if mode == PathNormalization::None || !dirty {
        return Ok(NormalizedPath {
            full: Cow::Borrowed(raw),
            path_len,
        });
    }

    // 1. Percent-decoding (once), 2. backslashes to slashes.
    let decode_slashes = mode == PathNormalization::DecodeAndMergeSlashes;
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let b = bytes[i];
        if b == b'%' {
            // Checked above: two hex digits follow.
            let v = hex(bytes[i + 1]).unwrap_or(0) * 16 + hex(bytes[i + 2]).unwrap_or(0);
            if is_unreserved(v) {
                decoded.push(char::from(v));
            } else if decode_slashes && (v == b'/' || v == b'\\') {
                decoded.push('/');
            } else {
                // Kept exactly as sent: no change of hex case.
                decoded.push_str(&path[i..i + 3]);
            }
            i += 3;
            continue;
        }
        decoded.push(if b == b'\\' { '/' } else { char::from(b) });
        i += 1;
    }

    // 3. Dot segments (RFC 3986 5.2.4).
    let mut out = String::with_capacity(decoded.len() + raw.len() - path_len);
    let mut segments = decoded.split('/').skip(1).peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        match seg {
            "." => {}
            ".." => {
                let cut = out.rfind('/').unwrap_or(0);
                out.truncate(cut);
            }
            s => {
                out.push('/');
                out.push_str(s);
                continue;
            }
        }
        if last {
            out.push('/');
        }
    }
    if out.is_empty() {
        out.push('/');
    }

    // 4. Merged slashes.
    if merge && out.contains("//") {
        let mut merged = String::with_capacity(out.len());
        for c in out.chars() {
            if !(c == '/' && merged.ends_with('/')) {
                merged.push(c);
            }
        }
        out = merged;
    }
    let path_len = out.len();
    out.push_str(&raw[path.len()..]);
    Ok(NormalizedPath {
        full: Cow::Owned(out),
        path_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_paths_are_borrowed() {
        let n = normalize_path("/api/v1?x=%2F..", PathNormalization::Base).unwrap();
        assert!(!n.is_changed());
        assert_eq!(n.path(), "/api/v1");
        assert_eq!(n.query(), Some("x=%2F.."));
    }

    #[test]
    fn query_is_kept() {
        let n = normalize_path("/a/../b?q=1", PathNormalization::Base).unwrap();
        assert_eq!(n.as_str(), "/b?q=1");
        assert_eq!(n.path(), "/b");
    }
}
