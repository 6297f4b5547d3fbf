//! Precompiled request matchers of the routing engine: Istio's `StringMatch` compiled (exact, prefix,
//! regex with RE2 semantics and Envoy's full-match rule), header and query-parameter conditions
//! (`{}` = present, `withoutHeaders` inverted), and one `match` block (conditions ANDed).
//!
//! Matching never allocates: patterns are stored in the form they are compared in, and regexes
//! are compiled once (when the table is compiled or deserialized).

use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::authz::HeaderLookup;

/// A regex compiled with RE2 semantics (the `regex` crate is linear-time) that must match the
/// whole value, as Envoy's `safe_regex` does. Serialized as its source text.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    re: Regex,
}

impl Pattern {
    /// Compiles `source` anchored at both ends (`^(?:source)$`).
    pub fn new(source: &str) -> Result<Pattern, regex::Error> {
        let re = Regex::new(&format!("^(?:{source})$"))?;
        Ok(Pattern {
            source: source.to_string(),
            re,
        })
    }

    /// The regex as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whole-value match.
    pub fn is_match(&self, value: &str) -> bool {
        self.re.is_match(value)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Pattern::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A compiled string condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrCond {
    /// Equal (ASCII case-insensitively when `ignore_case`).
    Exact { value: String, ignore_case: bool },
    /// Starts with (ASCII case-insensitively when `ignore_case`).
    Prefix { value: String, ignore_case: bool },
    /// Full regex match (case-sensitive: Envoy's regexes ignore `ignoreUriCase`).
    Regex(Pattern),
    /// Present, any value (`{}`).
    Present,
}

impl StrCond {
    /// Whether `value` satisfies the condition.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StrCond::Exact {
                value: v,
                ignore_case,
            } => {
                if *ignore_case {
                    value.eq_ignore_ascii_case(v)
                } else {
                    value == v
                }
            }
            StrCond::Prefix {
                value: p,
                ignore_case,
            } => {
                if *ignore_case {
                    value.len() >= p.len()
                        && value.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
                } else {
                    value.starts_with(p.as_str())
                }
            }
            StrCond::Regex(re) => re.is_match(value),
            StrCond::Present => true,
        }
    }
}

/// A condition on a named value that may be absent (a header or query parameter).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedCond {
    /// Lower-case header name, or the query parameter's name as written.
    pub name: String,
    /// What the value must satisfy; [`StrCond::Present`] for `{}`.
    pub cond: StrCond,
    /// `withoutHeaders`: the condition holds when the header does NOT match. An absent
    /// header is matched as the empty value before inverting, as Istio configures Envoy
    /// (`treat_missing_header_as_empty`): `withoutHeaders: {x: {regex: ".*"}}` does not hold
    /// for a request without `x`, `withoutHeaders: {x: {exact: a}}` does. `{}` (present)
    /// inverted holds exactly when the header is absent.
    #[serde(default)]
    pub invert: bool,
}

impl NamedCond {
    /// Evaluates against a value, `None` when absent.
    pub fn matches(&self, value: Option<&str>) -> bool {
        let hit = match (value, &self.cond) {
            (None, StrCond::Present) => false,
            (None, c) if self.invert => c.matches(""),
            (None, _) => false,
            (Some(v), c) => c.matches(v),
        };
        hit != self.invert
    }
}

/// One `match` block: every condition given must hold.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RequestMatch {
    /// The match's `name`, for logs. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Path (query excluded). Default: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StrCond>,
    /// `:scheme`. Default: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<StrCond>,
    /// `:method`. Default: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StrCond>,
    /// `:authority` as received (a `:port` suffix included). Default: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<StrCond>,
    /// Header conditions, `headers` and `withoutHeaders` (inverted). Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<NamedCond>,
    /// Query-parameter conditions (raw, not percent-decoded). Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<NamedCond>,
    /// Destination port. Default: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// A query parameter's raw value in `query` (without `?`); a key without `=` has value `""`.
pub fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

/// The request fields a match block looks at.
pub(crate) struct MatchInput<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a dyn HeaderLookup,
    pub port: u16,
}

impl RequestMatch {
    /// All conditions hold. Cheap conditions (port, exact, prefix, presence) are checked
    /// before any regex, so a block that fails on a header costs no regex run.
    pub(crate) fn matches(&self, r: &MatchInput<'_>) -> bool {
        if let Some(p) = self.port
            && p != r.port
        {
            return false;
        }
        self.pass(r, false) && self.pass(r, true)
    }

    /// Checks the regex conditions (`regex`) or all others (`!regex`).
    fn pass(&self, r: &MatchInput<'_>, regex: bool) -> bool {
        let wanted = |c: &StrCond| matches!(c, StrCond::Regex(_)) == regex;
        let pairs = [
            (&self.method, r.method),
            (&self.scheme, r.scheme),
            (&self.authority, r.authority),
            (&self.uri, r.path),
        ];
        for (c, v) in pairs {
            if let Some(c) = c
                && wanted(c)
                && !c.matches(v)
            {
                return false;
            }
        }
        self.headers
            .iter()
            .filter(|h| wanted(&h.cond))
            .all(|h| h.matches(r.headers.get(&h.name)))
            && self
                .query
                .iter()
                .filter(|q| wanted(&q.cond))
                .all(|q| q.matches(query_param(r.query, &q.name)))
    }

    /// The prefix this block matched the path with, for a prefix `rewrite.uri`.
    pub fn uri_prefix(&self) -> Option<&str> {
        match &self.uri {
            Some(StrCond::Prefix { value, .. }) => Some(value),
            _ => None,
        }
    }
}

/// `uriRegexRewrite`: every match of `pattern` in the path (unanchored, RE2) is replaced by
/// `rewrite`, where `\1` names a capture group as in Envoy. Serialized as the two strings
/// written.
#[derive(Debug, Clone)]
pub struct RegexRewrite {
    pattern: String,
    rewrite: String,
    re: Regex,
    /// `rewrite` in the `regex` crate's syntax (`${1}`, `$$`).
    replacement: String,
}

impl RegexRewrite {
    pub fn new(pattern: &str, rewrite: &str) -> Result<RegexRewrite, regex::Error> {
        let mut replacement = String::with_capacity(rewrite.len() + 4);
        let mut chars = rewrite.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '$' => replacement.push_str("$$"),
                '\\' if chars.peek().is_some_and(char::is_ascii_digit) => {
                    replacement.push_str("${");
                    while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                        replacement.push(d);
                        chars.next();
                    }
                    replacement.push('}');
                }
                c => replacement.push(c),
            }
        }
        Ok(RegexRewrite {
            pattern: pattern.to_string(),
            rewrite: rewrite.to_string(),
            re: Regex::new(pattern)?,
            replacement,
        })
    }

    /// The rewritten path.
    pub fn apply<'p>(&self, path: &'p str) -> std::borrow::Cow<'p, str> {
        self.re.replace_all(path, self.replacement.as_str())
    }
}

impl PartialEq for RegexRewrite {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern && self.rewrite == other.rewrite
    }
}

impl Serialize for RegexRewrite {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (&self.pattern, &self.rewrite).serialize(s)
    }
}

impl<'de> Deserialize<'de> for RegexRewrite {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (p, r) = <(String, String)>::deserialize(d)?;
        RegexRewrite::new(&p, &r).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_is_a_full_match() {
        let c = Pattern::new("/api/v[0-9]+")
            .map(StrCond::Regex)
            .unwrap_or(StrCond::Present);
        assert!(c.matches("/api/v2"));
        assert!(!c.matches("/api/v2/users"));
        assert!(!c.matches("x/api/v2"));
    }

    #[test]
    fn query_params_are_found_raw() {
        assert_eq!(query_param("a=1&b=&c", "b"), Some(""));
        assert_eq!(query_param("a=1&b=&c", "c"), Some(""));
        assert_eq!(query_param("a=1&b=&c", "a"), Some("1"));
        assert_eq!(query_param("a=1", "z"), None);
    }
}
