//! Precompiled value matchers of the authorization engine: Istio's string patterns (exact,
//! `prefix*`, `*suffix`, presence `*`), host patterns (case-insensitive, port ignored), path
//! patterns including the `{*}` / `{**}` templates, and the peer identity parsed once per
//! evaluation.
//!
//! Matching never allocates: every pattern is stored in the form it is compared in.

use serde::{Deserialize, Serialize};

/// One string pattern, as Istio reads `abc`, `abc*`, `*abc` and `*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrMatch {
    /// The value equals this.
    Exact(String),
    /// The value starts with this.
    Prefix(String),
    /// The value ends with this.
    Suffix(String),
    /// Any non-empty value (`*`).
    Present,
}

impl StrMatch {
    /// Reads an Istio pattern: `*` alone is presence, a leading `*` a suffix, a trailing `*` a
    /// prefix; anything else is exact (a `*` elsewhere is literal, as in Envoy's matchers).
    pub fn parse(pattern: &str) -> StrMatch {
        if pattern == "*" {
            StrMatch::Present
        } else if let Some(rest) = pattern.strip_prefix('*') {
            StrMatch::Suffix(rest.to_string())
        } else if let Some(rest) = pattern.strip_suffix('*') {
            StrMatch::Prefix(rest.to_string())
        } else {
            StrMatch::Exact(pattern.to_string())
        }
    }

    /// Case-sensitive match.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StrMatch::Exact(s) => value == s,
            StrMatch::Prefix(s) => value.starts_with(s.as_str()),
            StrMatch::Suffix(s) => value.ends_with(s.as_str()),
            StrMatch::Present => !value.is_empty(),
        }
    }

    /// ASCII case-insensitive match (hosts).
    pub fn matches_ignore_case(&self, value: &str) -> bool {
        let v = value.as_bytes();
        match self {
            StrMatch::Exact(s) => v.eq_ignore_ascii_case(s.as_bytes()),
            StrMatch::Prefix(s) => {
                v.len() >= s.len() && v[..s.len()].eq_ignore_ascii_case(s.as_bytes())
            }
            StrMatch::Suffix(s) => {
                v.len() >= s.len() && v[v.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }
            StrMatch::Present => !v.is_empty(),
        }
    }
}

/// Istio's `hosts` / `notHosts` match: the whole authority as received, port included,
/// ASCII case-insensitively (`web` does not match `web:80`; `web:*` does).
pub(crate) fn host_matches(m: &StrMatch, authority: &str) -> bool {
    m.matches_ignore_case(authority)
}

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplateSegment {
    /// A literal segment.
    Literal(String),
    /// `{*}`: exactly one non-empty segment of path characters.
    One,
    /// `{**}`: one or more segments (which may be empty), i.e. Envoy's `[pchar/]*` between the
    /// surrounding slashes.
    Many,
}

/// A `paths` / `notPaths` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathMatch {
    /// A string pattern on the path without its query.
    Str(StrMatch),
    /// A `{*}` / `{**}` template, split at `/` (the first segment is the empty one before the
    /// leading slash).
    Template(Vec<TemplateSegment>),
}

impl PathMatch {
    /// Reads a `paths` entry: a template when it contains `{*}` or `{**}` (as Istio decides),
    /// else a string pattern.
    pub fn parse(pattern: &str) -> PathMatch {
        if pattern.contains("{*}") || pattern.contains("{**}") {
            PathMatch::Template(
                pattern
                    .split('/')
                    .map(|seg| match seg {
                        "{*}" => TemplateSegment::One,
                        "{**}" => TemplateSegment::Many,
                        s => TemplateSegment::Literal(s.to_string()),
                    })
                    .collect(),
            )
        } else {
            PathMatch::Str(StrMatch::parse(pattern))
        }
    }

    /// Matches a path; anything after `?` is not part of it.
    pub fn matches(&self, path: &str) -> bool {
        self.matches_without_query(path.split_once('?').map_or(path, |(p, _)| p))
    }

    /// Matches a path that has no query.
    pub(crate) fn matches_without_query(&self, path: &str) -> bool {
        match self {
            PathMatch::Str(m) => m.matches(path),
            PathMatch::Template(segs) => template_matches(segs, path),
        }
    }
}

/// RFC 3986 `pchar` minus `%`-decoding: what Envoy's template operators accept in a segment.
fn is_pchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@=".contains(&b)
}

fn template_matches(segs: &[TemplateSegment], path: &str) -> bool {
    // What is left of the path after the segments matched so far; `None` once it is used up.
    let mut rest = Some(path);
    for (i, seg) in segs.iter().enumerate() {
        let Some(r) = rest else { return false };
        if *seg == TemplateSegment::Many {
            // `{**}` is the last operator: the literal segments after it must be the tail, and
            // at least one (possibly empty) segment must remain for it.
            let mut middle = r;
            for t in segs[i + 1..].iter().rev() {
                let TemplateSegment::Literal(l) = t else {
                    return false;
                };
                match middle.rsplit_once('/') {
                    Some((head, last)) if last == l.as_str() => middle = head,
                    _ => return false,
                }
            }
            return middle.bytes().all(|b| b == b'/' || is_pchar(b));
        }
        let (part, next) = match r.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (r, None),
        };
        let ok = match seg {
            TemplateSegment::Literal(l) => part == l.as_str(),
            _ => !part.is_empty() && part.bytes().all(is_pchar),
        };
        if !ok {
            return false;
        }
        rest = next;
    }
    rest.is_none()
}

/// The peer identity of a request, taken apart once per evaluation, and the request path
/// without its query.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Peer<'a> {
    /// The HTTP path without `?query`; `None` for TCP.
    pub path: Option<&'a str>,
    /// The SPIFFE ID without `spiffe://`; `None` without mTLS.
    pub principal: Option<&'a str>,
    pub trust_domain: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub service_account: Option<&'a str>,
}

impl<'a> Peer<'a> {
    pub(crate) fn parse(principal: Option<&'a str>) -> Peer<'a> {
        let Some(p) = principal else {
            return Peer::default();
        };
        let p = p.strip_prefix("spiffe://").unwrap_or(p);
        if p.is_empty() {
            return Peer::default();
        }
        let trust_domain = p.split('/').next();
        // `.../ns/<ns>/...` and `.../sa/<sa>` (Istio's regexes look for these anywhere).
        let mut namespace = None;
        let mut service_account = None;
        let mut it = p.split('/').skip(1);
        while let Some(k) = it.next() {
            match k {
                "ns" if namespace.is_none() => namespace = it.next(),
                "sa" if service_account.is_none() => service_account = it.next(),
                _ => {}
            }
        }
        Peer {
            path: None,
            principal: Some(p),
            trust_domain,
            namespace,
            service_account,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_patterns() {
        assert!(StrMatch::parse("abc").matches("abc"));
        assert!(!StrMatch::parse("abc").matches("abcd"));
        assert!(StrMatch::parse("abc*").matches("abcd"));
        assert!(StrMatch::parse("*bcd").matches("abcd"));
        assert!(StrMatch::parse("*").matches("x"));
        assert!(!StrMatch::parse("*").matches(""));
        assert!(StrMatch::parse("Example.COM").matches_ignore_case("example.com"));
    }

    #[test]
    fn hosts_compare_the_whole_authority_ignoring_case() {
        let cases = [
            ("web", "web", true),
            ("web", "WEB", true),
            ("web", "web:80", false),
            ("web:*", "web:80", true),
            ("web:*", "web", false),
            ("web:80", "Web:80", true),
            ("*.example.com", "A.Example.com", true),
            ("*.example.com", "a.example.com:8080", false),
            ("*.example.com", "example.com", false),
            ("prefix.*", "prefix.x:1", true),
        ];
        for (pattern, authority, want) in cases {
            let got = host_matches(&StrMatch::parse(pattern), authority);
            assert_eq!(got, want, "{pattern} vs {authority}");
        }
    }

    #[test]
    fn templates() {
        let t = PathMatch::parse("/path/template/{*}");
        assert!(t.matches("/path/template/x"));
        assert!(t.matches("/path/template/x?q=1"));
        assert!(!t.matches("/path/template/x/y"));
        assert!(!t.matches("/path/template/"));
        let t = PathMatch::parse("/{**}/path/template");
        assert!(t.matches("/a/b/path/template"));
        assert!(t.matches("//path/template"));
        assert!(!t.matches("/path/template"));
        let t = PathMatch::parse("/api/{**}");
        assert!(t.matches("/api/a/b"));
        assert!(t.matches("/api/"));
        assert!(!t.matches("/api"));
        let t = PathMatch::parse("/{*}/x/{**}");
        assert!(t.matches("/a/x/b/c"));
        assert!(!t.matches("/a/y/b"));
    }

    #[test]
    fn peers() {
        let p = Peer::parse(Some("spiffe://cluster.local/ns/default/sa/frontend"));
        assert_eq!(p.principal, Some("cluster.local/ns/default/sa/frontend"));
        assert_eq!(p.trust_domain, Some("cluster.local"));
        assert_eq!(p.namespace, Some("default"));
        assert_eq!(p.service_account, Some("frontend"));
        assert!(Peer::parse(None).principal.is_none());
    }
}
