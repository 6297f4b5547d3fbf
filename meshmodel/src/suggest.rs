//! Turning serde's terse messages into advice: "did you mean" for misspelt fields, and where a
//! field that exists elsewhere in the mesh's formats actually belongs.

/// An unknown field as serde reports it: the name and the names it expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownField {
    pub name: String,
    pub expected: Vec<String>,
}

/// Reads serde's `unknown field `x`, expected one of `a`, `b`` (or `expected `a``, or
/// `there are no fields`) message.
pub fn parse_unknown_field(message: &str) -> Option<UnknownField> {
    let rest = message.strip_prefix("unknown field `")?;
    let end = rest.find('`')?;
    let name = rest[..end].to_string();
    let tail = &rest[end + 1..];
    let expected = tail
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some(UnknownField { name, expected })
}

/// Damerau-free Levenshtein distance on chars, case-insensitive.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest expected name, if it is close enough to be a likely typo (`retires` ->
/// `retries`, `perTryTimout` -> `perTryTimeout`, `Retries` -> `retries`).
pub fn did_you_mean<'a>(name: &str, expected: &'a [String]) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(1) + 1;
    expected
        .iter()
        .map(|e| (distance(name, e), e))
        .filter(|(d, e)| *d <= limit || e.eq_ignore_ascii_case(name) || sorted(e) == sorted(name))
        .min_by_key(|(d, _)| *d)
        .map(|(_, e)| e.as_str())
}

fn sorted(s: &str) -> Vec<char> {
    let mut v: Vec<char> = s.to_lowercase().chars().collect();
    v.sort_unstable();
    v
}

/// Fields users put in the wrong place, and where each belongs. `parent` is the last named
/// segment of the path holding the unknown field (`retries` for `spec.http[0].retries`).
struct Misplaced {
    field: &'static str,
    /// Matches the parent segment; `*` for any.
    parent: &'static str,
    hint: &'static str,
}

const MISPLACED: &[Misplaced] = &[
    Misplaced {
        field: "timeout",
        parent: "retries",
        hint: "`timeout` belongs to the route (`http[].timeout`, the total for all attempts); the limit per attempt is `retries.perTryTimeout`",
    },
    Misplaced {
        field: "attempts",
        parent: "http",
        hint: "`attempts` belongs under the route's `retries`: `retries: {attempts: 3}`",
    },
    Misplaced {
        field: "perTryTimeout",
        parent: "http",
        hint: "`perTryTimeout` belongs under the route's `retries`",
    },
    Misplaced {
        field: "retryOn",
        parent: "http",
        hint: "`retryOn` belongs under the route's `retries`",
    },
    Misplaced {
        field: "loadBalancer",
        parent: "http",
        hint: "`loadBalancer` belongs in a DestinationRule's `trafficPolicy`, not in a VirtualService route",
    },
    Misplaced {
        field: "loadBalancer",
        parent: "spec",
        hint: "`loadBalancer` belongs under `trafficPolicy` (a DestinationRule's `spec.trafficPolicy.loadBalancer`)",
    },
    Misplaced {
        field: "connectionPool",
        parent: "http",
        hint: "`connectionPool` belongs in a DestinationRule's `trafficPolicy`, not in a VirtualService route",
    },
    Misplaced {
        field: "connectionPool",
        parent: "spec",
        hint: "`connectionPool` belongs under `trafficPolicy` (a DestinationRule's `spec.trafficPolicy.connectionPool`)",
    },
    Misplaced {
        field: "outlierDetection",
        parent: "http",
        hint: "`outlierDetection` belongs in a DestinationRule's `trafficPolicy`, not in a VirtualService route",
    },
    Misplaced {
        field: "outlierDetection",
        parent: "spec",
        hint: "`outlierDetection` belongs under `trafficPolicy` (a DestinationRule's `spec.trafficPolicy.outlierDetection`)",
    },
    Misplaced {
        field: "tls",
        parent: "http",
        hint: "client TLS settings belong in a DestinationRule's `trafficPolicy.tls`",
    },
    Misplaced {
        field: "retries",
        parent: "spec",
        hint: "`retries` belongs to a VirtualService http route: `spec.http[].retries`",
    },
    Misplaced {
        field: "timeout",
        parent: "spec",
        hint: "`timeout` belongs to a VirtualService http route: `spec.http[].timeout`",
    },
    Misplaced {
        field: "retries",
        parent: "trafficPolicy",
        hint: "`retries` belongs to a VirtualService http route (`spec.http[].retries`); a DestinationRule can only bound them with `connectionPool.http.maxRetries`",
    },
    Misplaced {
        field: "timeout",
        parent: "trafficPolicy",
        hint: "request timeouts belong to a VirtualService http route (`spec.http[].timeout`); a DestinationRule has `connectionPool.tcp.connectTimeout`",
    },
    Misplaced {
        field: "fault",
        parent: "spec",
        hint: "`fault` belongs to a VirtualService http route: `spec.http[].fault`",
    },
    Misplaced {
        field: "mirror",
        parent: "spec",
        hint: "`mirror` belongs to a VirtualService http route: `spec.http[].mirror`",
    },
    Misplaced {
        field: "subsets",
        parent: "spec",
        hint: "`subsets` are defined in a DestinationRule (`kind: DestinationRule`, `spec.subsets`) and referenced from a VirtualService destination's `subset`",
    },
    Misplaced {
        field: "subset",
        parent: "route",
        hint: "`subset` belongs inside `destination`: `route: [{destination: {host: x, subset: v1}}]`",
    },
    Misplaced {
        field: "host",
        parent: "route",
        hint: "`host` belongs inside `destination`: `route: [{destination: {host: x}}]`",
    },
    Misplaced {
        field: "port",
        parent: "route",
        hint: "`port` belongs inside `destination`: `destination: {host: x, port: {number: 8080}}`",
    },
    Misplaced {
        field: "weight",
        parent: "destination",
        hint: "`weight` belongs beside `destination`, on the route entry: `route: [{destination: {host: x}, weight: 90}]`",
    },
    Misplaced {
        field: "fixedDelay",
        parent: "fault",
        hint: "`fixedDelay` belongs under `fault.delay`",
    },
    Misplaced {
        field: "httpStatus",
        parent: "fault",
        hint: "`httpStatus` belongs under `fault.abort`",
    },
    Misplaced {
        field: "percentage",
        parent: "fault",
        hint: "`percentage` belongs under `fault.delay` or `fault.abort`",
    },
    Misplaced {
        field: "principals",
        parent: "from",
        hint: "`principals` belongs under `source`: `from: [{source: {principals: [...]}}]`",
    },
    Misplaced {
        field: "namespaces",
        parent: "from",
        hint: "`namespaces` belongs under `source`: `from: [{source: {namespaces: [...]}}]`",
    },
    Misplaced {
        field: "paths",
        parent: "to",
        hint: "`paths` belongs under `operation`: `to: [{operation: {paths: [...]}}]`",
    },
    Misplaced {
        field: "methods",
        parent: "to",
        hint: "`methods` belongs under `operation`: `to: [{operation: {methods: [...]}}]`",
    },
    Misplaced {
        field: "principals",
        parent: "rules",
        hint: "`principals` belongs under `from[].source`: `rules: [{from: [{source: {principals: [...]}}]}]`",
    },
    Misplaced {
        field: "paths",
        parent: "rules",
        hint: "`paths` belongs under `to[].operation`: `rules: [{to: [{operation: {paths: [...]}}]}]`",
    },
    Misplaced {
        field: "mode",
        parent: "spec",
        hint: "`mode` belongs under `mtls` in a PeerAuthentication: `spec: {mtls: {mode: STRICT}}`",
    },
    Misplaced {
        field: "workloadSelector",
        parent: "spec",
        hint: "this kind selects workloads with `selector: {matchLabels: {...}}` (`workloadSelector` is a DestinationRule field)",
    },
    Misplaced {
        field: "replicas",
        parent: "*",
        hint: "in compose, `replicas` belongs under `deploy`: `deploy: {replicas: 2}`",
    },
];

/// Advice for an unknown field at `parent_path`: where it belongs, else the nearest spelling.
pub fn advise(unknown: &UnknownField, parent_path: &str) -> Option<String> {
    let parent = last_segment(parent_path);
    let misplaced = MISPLACED
        .iter()
        .find(|m| m.field == unknown.name && (m.parent == parent || m.parent == "*"));
    if let Some(m) = misplaced
        && (m.field != "replicas" || parent_path.starts_with("services."))
    {
        return Some(m.hint.to_string());
    }
    if let Some(best) = did_you_mean(&unknown.name, &unknown.expected) {
        return Some(format!("did you mean `{best}`?"));
    }
    if unknown.expected.is_empty() {
        None
    } else {
        Some(format!(
            "known fields here: {}",
            unknown.expected.join(", ")
        ))
    }
}

/// `spec.http[0].retries` -> `retries`; `spec.http[0]` -> `http`.
fn last_segment(path: &str) -> &str {
    let trimmed = path.trim_end_matches(|c: char| c == ']' || c.is_ascii_digit() || c == '[');
    trimmed.rsplit('.').next().unwrap_or(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unknown(name: &str, expected: &[&str]) -> UnknownField {
        UnknownField {
            name: name.into(),
            expected: expected.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn parses_serde_messages() {
        let u = parse_unknown_field("unknown field `retires`, expected one of `match`, `retries`")
            .unwrap();
        assert_eq!(u, unknown("retires", &["match", "retries"]));
        let u = parse_unknown_field("unknown field `x`, expected `y`").unwrap();
        assert_eq!(u.expected, vec!["y"]);
        let u = parse_unknown_field("unknown field `x`, there are no fields").unwrap();
        assert!(u.expected.is_empty());
        assert!(parse_unknown_field("invalid type: string").is_none());
    }

    #[test]
    fn suggestions() {
        let route_fields = [
            "match", "route", "retries", "timeout", "fault", "mirror", "rewrite",
        ];
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("retires", "spec.http[0]", Some("did you mean `retries`?")),
            ("Retries", "spec.http[0]", Some("did you mean `retries`?")),
            ("timout", "spec.http[0]", Some("did you mean `timeout`?")),
            (
                "timeout",
                "spec.http[0].retries",
                Some("belongs to the route"),
            ),
            (
                "loadBalancer",
                "spec.http[0]",
                Some("DestinationRule's `trafficPolicy`"),
            ),
            (
                "weight",
                "spec.http[0].route[0].destination",
                Some("beside `destination`"),
            ),
            ("replicas", "services.web", Some("deploy")),
            ("zzzzzzzzzz", "spec.http[0]", Some("known fields here")),
        ];
        for (name, parent, want) in cases {
            let got = advise(&unknown(name, &route_fields), parent);
            match (want, &got) {
                (Some(w), Some(g)) => assert!(g.contains(w), "{name} at {parent}: {g}"),
                (None, None) => {}
                _ => panic!("{name} at {parent}: got {got:?}, want {want:?}"),
            }
        }
    }
}
