//! Shared pieces of `validate()`: the error collector and the checks several kinds use (hosts,
//! header names, regexes, `exportTo`, Istio's duration minimum).

use std::net::IpAddr;

use meshapi::diag::FieldError;

use super::types::{Duration, is_dns1123_label};

/// Collects [`FieldError`]s while a resource is walked.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub errors: Vec<FieldError>,
}

impl Report {
    pub fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError::new(path, message));
    }

    pub fn error_hint(
        &mut self,
        path: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.errors
            .push(FieldError::new(path, message).with_hint(hint));
    }

    /// A field Istio has and meshctl does not serve yet: `not supported by meshctl: <what> (<why>)`.
    pub fn unsupported(&mut self, path: impl Into<String>, what: &str, why: &str) {
        self.errors.push(FieldError::new(
            path,
            format!("not supported by meshctl: {what} ({why})"),
        ));
    }

    /// Istio's rule for most durations: at least 1ms, in whole milliseconds.
    pub fn min_duration(&mut self, path: impl Into<String>, d: Option<&Duration>) {
        let Some(d) = d else { return };
        if *d < Duration::MIN_ISTIO {
            self.error(
                path,
                format!("duration {d} is too short: must be at least 1ms"),
            );
        } else if !d.is_whole_millis() {
            self.error(
                path,
                format!("duration {d} is too precise: only whole milliseconds are supported"),
            );
        }
    }

    pub fn into_errors(self) -> Vec<FieldError> {
        self.errors
    }
}

/// Checks a host name that may start with a `*.` wildcard label (`reviews`,
/// `reviews.default.svc.cluster.local`, `*.example.com`, `*`), as Istio's
/// `ValidateWildcardDomain` does.
pub(crate) fn check_wildcard_domain(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("host must not be empty".into());
    }
    if host.len() > 255 {
        return Err(format!("host {host:?} is too long: at most 255 characters"));
    }
    let rest = if host == "*" {
        return Ok(());
    } else if let Some(r) = host.strip_prefix("*.") {
        r
    } else {
        host
    };
    // A trailing dot (fully qualified) is tolerated.
    let rest = rest.strip_suffix('.').unwrap_or(rest);
    for label in rest.split('.') {
        let b = label.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 63
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-');
        if !ok {
            return Err(format!(
                "invalid host {host:?}: each dot-separated part must be letters, digits and '-', 1 to 63 characters; only a leading `*.` wildcard is allowed"
            ));
        }
    }
    Ok(())
}

pub(crate) fn is_ip(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
}

/// An IP address or CIDR block.
pub(crate) fn check_ip_or_cidr(s: &str) -> Result<(), String> {
    super::types::IpBlock::new(s).map(|_| ())
}

/// An HTTP header name: an RFC 7230 token, or an HTTP/2 pseudo-header.
pub(crate) fn check_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name must not be empty".into());
    }
    if matches!(
        name,
        ":method" | ":scheme" | ":authority" | ":path" | ":status"
    ) {
        return Ok(());
    }
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !name.chars().all(token) {
        return Err(format!("invalid header name {name:?}"));
    }
    Ok(())
}

/// A header value: no control characters other than tab.
pub(crate) fn check_header_value(value: &str) -> Result<(), String> {
    if value
        .chars()
        .any(|c| (c.is_control() && c != '\t') || c == '\u{7f}')
    {
        return Err(format!(
            "invalid header value {value:?}: control characters are not allowed"
        ));
    }
    Ok(())
}

/// Istio's limit on a regex's length (a stand-in for RE2's program size limit).
pub(crate) const MAX_REGEX_LEN: usize = 1024;

/// Compiles `re` with the `regex` crate (RE2 semantics: linear time, no backreferences or
/// look-around), anchored as a full match like Envoy's `safe_regex`.
pub(crate) fn check_regex(re: &str) -> Result<(), String> {
    if re.is_empty() {
        return Err("regex must not be empty".into());
    }
    if re.len() > MAX_REGEX_LEN {
        return Err(format!(
            "regex is too large: at most {MAX_REGEX_LEN} characters"
        ));
    }
    regex::RegexBuilder::new(&format!("^(?:{re})$"))
        .size_limit(1 << 20)
        .build()
        .map(|_| ())
        .map_err(|e| {
            let detail = e.to_string().lines().last().unwrap_or_default().trim().to_string();
            format!("invalid regex {re:?}: {detail} (RE2 syntax: https://github.com/google/re2/wiki/Syntax)")
        })
}

/// `exportTo`: `.` (this namespace), `*` (all namespaces) or namespace names, without
/// duplicates, and `*` alone.
pub(crate) fn check_export_to(
    r: &mut Report,
    path: &str,
    export_to: &[String],
    namespace: Option<&str>,
) {
    let mut seen: Vec<&str> = Vec::new();
    for (i, e) in export_to.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let key = if e == "." {
            namespace.unwrap_or(".")
        } else {
            e.as_str()
        };
        if seen.contains(&key) {
            r.error(p, format!("duplicate exportTo entry {e:?}"));
            continue;
        }
        seen.push(key);
        if e != "." && e != "*" && !is_dns1123_label(e) {
            r.error(
                p,
                format!("invalid exportTo {e:?}: use \".\", \"*\" or a namespace name"),
            );
        }
    }
    if export_to.len() > 1 && export_to.iter().any(|e| e == "*") {
        r.error(path, "exportTo cannot have both \"*\" and other entries");
    }
}

/// Whether `bytes` is valid standard base64 (with padding), as protobuf JSON writes `bytes`.
pub(crate) fn is_base64(s: &str) -> bool {
    let b: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    if !b.len().is_multiple_of(4) {
        return false;
    }
    let pad = b.iter().rev().take_while(|c| **c == b'=').count();
    if pad > 2 {
        return false;
    }
    b[..b.len() - pad]
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/' || *c == b'-' || *c == b'_')
}

/// The decoded length of valid base64.
pub(crate) fn base64_len(s: &str) -> usize {
    let n = s.bytes().filter(|c| !c.is_ascii_whitespace()).count();
    let pad = s
        .bytes()
        .rev()
        .filter(|c| !c.is_ascii_whitespace())
        .take_while(|c| *c == b'=')
        .count();
    (n / 4) * 3 - pad.min(2)
}
