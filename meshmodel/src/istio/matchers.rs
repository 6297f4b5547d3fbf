//! What policies select and match on: Kubernetes label selectors, strings with Istio's `*`
//! wildcards (namespaces, trust domains), SPIFFE principals, trust domains, service accounts and
//! IP blocks. Each newtype checks its value while it is deserialized.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use meshapi::deserialize_from_str;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

pub use meshapi::values::IpBlock;

// ---------------------------------------------------------------------------------------------
// Labels

/// A set of Kubernetes-style labels used as a selector (`matchLabels`, subset `labels`,
/// `sourceLabels`). Keys and values are checked with Kubernetes' label syntax, so wildcards,
/// spaces and empty keys are refused when the file is read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    pub fn new(map: BTreeMap<String, String>) -> Result<Labels, String> {
        for (k, v) in &map {
            check_label(k, v)?;
        }
        Ok(Labels(map))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_inner(self) -> BTreeMap<String, String> {
        self.0
    }

    /// Whether a workload is selected: every key here has the same value in the workload's labels,
    /// looked up with `get`. An empty selector selects everything.
    pub fn matches<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.0.iter().all(|(k, v)| get(k) == Some(v.as_str()))
    }

    /// [`Labels::matches`] against a map.
    pub fn matches_map(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

impl Deref for Labels {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A DNS-1123 label: lowercase alphanumerics and `-`, at most 63, starting and ending with an
/// alphanumeric. Kubernetes namespaces and Istio subset names have this form.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// A DNS-1123 subdomain: dot-separated DNS-1123 labels, at most 253 characters. Kubernetes
/// object names have this form.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

fn check_label(key: &str, value: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("label key must not be empty".into());
    }
    if key.contains('*') {
        return Err(format!("wildcard not allowed in label key match: {key:?}"));
    }
    if value.contains('*') {
        return Err(format!(
            "wildcard not allowed in label value match: {key}={value:?}"
        ));
    }
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && !is_dns1123_subdomain(p)
    {
        return Err(format!(
            "invalid label key {key:?}: the prefix before '/' must be a DNS subdomain such as example.com"
        ));
    }
    if !is_label_name(name) {
        return Err(format!(
            "invalid label key {key:?}: at most 63 characters, alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
        ));
    }
    if !value.is_empty() && !is_label_name(value) {
        return Err(format!(
            "invalid label value {value:?} for key {key:?}: at most 63 characters, alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
        ));
    }
    Ok(())
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Labels;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of label names to string values")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Labels, E> {
                Ok(Labels::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Labels, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value: String = map.next_value()?;
                    check_label(&key, &value).map_err(de::Error::custom)?;
                    if out.insert(key.clone(), value).is_some() {
                        return Err(de::Error::custom(format!("duplicate label key {key:?}")));
                    }
                }
                Ok(Labels(out))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------------
// Wildcard strings, principals, trust domains, service accounts

/// How a [`Wildcard`] matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WildcardMatch<'a> {
    /// `*`: any value, as long as one is present.
    Any,
    /// `abc*`: values starting with `abc`.
    Prefix(&'a str),
    /// `*abc`: values ending with `abc`.
    Suffix(&'a str),
    /// `abc`: exactly `abc`.
    Exact(&'a str),
}

/// A string with Istio's authorization wildcards: `*` alone, or one `*` at the start or at the
/// end (`prefix*`, `*suffix`). Used for namespaces, trust domains and principals. Empty values and
/// a `*` anywhere else are refused.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Wildcard(String);

impl Wildcard {
    pub fn new(s: impl Into<String>) -> Result<Wildcard, String> {
        let s = s.into();
        if s.is_empty() {
            return Err("empty value is not allowed (use \"*\" to match any value)".into());
        }
        if s.chars().any(char::is_whitespace) {
            return Err(format!("invalid value {s:?}: whitespace is not allowed"));
        }
        let stars = s.matches('*').count();
        let ok = stars == 0 || s == "*" || (stars == 1 && (s.starts_with('*') || s.ends_with('*')));
        if !ok {
            return Err(format!(
                "invalid value {s:?}: `*` is only allowed alone, as a prefix (`*suffix`) or as a suffix (`prefix*`)"
            ));
        }
        Ok(Wildcard(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matcher(&self) -> WildcardMatch<'_> {
        let s = self.0.as_str();
        if s == "*" {
            WildcardMatch::Any
        } else if let Some(rest) = s.strip_prefix('*') {
            WildcardMatch::Suffix(rest)
        } else if let Some(rest) = s.strip_suffix('*') {
            WildcardMatch::Prefix(rest)
        } else {
            WildcardMatch::Exact(s)
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        match self.matcher() {
            WildcardMatch::Any => true,
            WildcardMatch::Prefix(p) => value.starts_with(p),
            WildcardMatch::Suffix(p) => value.ends_with(p),
            WildcardMatch::Exact(p) => value == p,
        }
    }

    pub fn is_wildcard(&self) -> bool {
        !matches!(self.matcher(), WildcardMatch::Exact(_))
    }
}

impl fmt::Display for Wildcard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Wildcard {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

deserialize_from_str!(
    Wildcard,
    "a string, optionally with a leading or trailing `*`",
    Wildcard::new
);

/// The parts of a principal of the form `<trust-domain>/ns/<namespace>/sa/<service-account>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpiffeParts<'a> {
    pub trust_domain: &'a str,
    pub namespace: &'a str,
    pub service_account: &'a str,
}

/// A source principal as written in an AuthorizationPolicy: the SPIFFE ID of the peer's
/// certificate without the `spiffe://` scheme, e.g. `cluster.local/ns/default/sa/frontend`, with
/// Istio's wildcards (`*`, `cluster.local/ns/default/*`, `*/ns/default/sa/frontend`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Principal(Wildcard);

impl Principal {
    pub fn new(s: impl Into<String>) -> Result<Principal, String> {
        let s = s.into();
        if let Some(rest) = s.strip_prefix("spiffe://") {
            return Err(format!(
                "invalid principal {s:?}: write principals without the spiffe:// scheme, e.g. {rest:?}"
            ));
        }
        Wildcard::new(s)
            .map(Principal)
            .map_err(|e| format!("principal: {e}"))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn pattern(&self) -> &Wildcard {
        &self.0
    }

    /// Matches a peer's SPIFFE ID, given with or without the `spiffe://` scheme.
    pub fn matches(&self, spiffe_id: &str) -> bool {
        self.0
            .matches(spiffe_id.strip_prefix("spiffe://").unwrap_or(spiffe_id))
    }

    /// The trust domain, namespace and service account of an exact principal in SPIFFE form.
    pub fn spiffe_parts(&self) -> Option<SpiffeParts<'_>> {
        let WildcardMatch::Exact(s) = self.0.matcher() else {
            return None;
        };
        let mut it = s.split('/');
        let (td, ns_kw, ns, sa_kw, sa) =
            (it.next()?, it.next()?, it.next()?, it.next()?, it.next()?);
        if it.next().is_some()
            || ns_kw != "ns"
            || sa_kw != "sa"
            || td.is_empty()
            || ns.is_empty()
            || sa.is_empty()
        {
            return None;
        }
        Some(SpiffeParts {
            trust_domain: td,
            namespace: ns,
            service_account: sa,
        })
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Principal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

deserialize_from_str!(
    Principal,
    "a principal such as \"cluster.local/ns/default/sa/frontend\"",
    Principal::new
);

/// A SPIFFE trust domain such as `cluster.local`: lowercase letters, digits, `.`, `-` and `_`,
/// at most 255 characters (the SPIFFE ID specification).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Istio's and meshctl's default trust domain.
    pub const DEFAULT: &'static str = "cluster.local";

    pub fn new(s: impl Into<String>) -> Result<TrustDomain, String> {
        let s = s.into();
        if s.is_empty() || s.len() > 255 {
            return Err(format!(
                "invalid trust domain {s:?}: must be 1 to 255 characters"
            ));
        }
        if !s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        }) {
            return Err(format!(
                "invalid trust domain {s:?}: only lowercase letters, digits, '.', '-' and '_' are allowed"
            ));
        }
        Ok(TrustDomain(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TrustDomain {
    fn default() -> Self {
        TrustDomain(Self::DEFAULT.to_string())
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TrustDomain::new(s)
    }
}

impl Serialize for TrustDomain {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

deserialize_from_str!(
    TrustDomain,
    "a trust domain such as \"cluster.local\"",
    TrustDomain::new
);

/// A service account in an AuthorizationPolicy `serviceAccounts` list: `name` (in the policy's
/// namespace) or `namespace/name`. No wildcards.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceAccountRef {
    pub namespace: Option<String>,
    pub name: String,
}

impl ServiceAccountRef {
    pub fn new(s: &str) -> Result<ServiceAccountRef, String> {
        let form = "expected format 'serviceAccount' or 'namespace/serviceAccount'";
        if s.is_empty() {
            return Err(format!("empty service account: {form}"));
        }
        if s.contains('*') {
            return Err(format!(
                "invalid service account {s:?}: wildcards are not allowed"
            ));
        }
        if s.len() > 320 {
            return Err(format!(
                "invalid service account {s:?}: at most 320 characters"
            ));
        }
        match s.split_once('/') {
            None => Ok(ServiceAccountRef {
                namespace: None,
                name: s.to_string(),
            }),
            Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => {
                Ok(ServiceAccountRef {
                    namespace: Some(ns.to_string()),
                    name: sa.to_string(),
                })
            }
            Some(_) => Err(format!("invalid service account {s:?}: {form}")),
        }
    }
}

impl fmt::Display for ServiceAccountRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

impl Serialize for ServiceAccountRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

deserialize_from_str!(
    ServiceAccountRef,
    "a service account such as \"frontend\" or \"default/frontend\"",
    ServiceAccountRef::new
);
