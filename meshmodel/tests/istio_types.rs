//! Table tests of the Istio newtypes: what each accepts, what it refuses and with which message,
//! and how it prints back.

use meshmodel::istio::{
    Duration, IntPercent, IpBlock, Labels, Percent, Port, PortString, Principal, RetryCondition,
    RetryOn, ServiceAccountRef, TrustDomain, Wildcard, WildcardMatch,
};
use serde::de::DeserializeOwned;

/// Deserializes a YAML scalar the way a field would be read.
fn read<T: DeserializeOwned>(yaml: &str) -> Result<T, String> {
    let v: meshapi::yaml::Value =
        meshapi::yaml::from_str(yaml).map_err(|e| format!("yaml: {e}"))?;
    meshapi::yaml::from_value(v).map_err(|e| e.to_string())
}

fn ms(n: u64) -> std::time::Duration {
    std::time::Duration::from_millis(n)
}

#[test]
fn durations_in_istio_form() {
    let good: &[(&str, std::time::Duration)] = &[
        ("100ms", ms(100)),
        ("1.5s", ms(1500)),
        ("0.5s", ms(500)),
        ("1m", ms(60_000)),
        ("1h", ms(3_600_000)),
        ("1h30m", ms(5_400_000)),
        ("1h0m0s", ms(3_600_000)),
        ("2m30.5s", ms(150_500)),
        ("250us", std::time::Duration::from_micros(250)),
        ("250\u{b5}s", std::time::Duration::from_micros(250)),
        ("10ns", std::time::Duration::from_nanos(10)),
        (".5s", ms(500)),
        ("0", ms(0)),
        ("0s", ms(0)),
        ("+3s", ms(3000)),
        ("'10s'", ms(10_000)),
        ("0", ms(0)),
    ];
    for (text, want) in good {
        let d: Duration = read(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(d.get(), *want, "{text}");
    }
    let bad: &[(&str, &str)] = &[
        ("''", "empty"),
        ("-1s", "negative durations are not allowed"),
        ("-0.5s", "negative"),
        ("'5'", "missing unit"),
        ("5", "needs a unit"),
        ("1.5", "needs a unit"),
        ("-5", "negative"),
        ("5 s", "unknown unit"),
        ("1d", "unknown unit \"d\""),
        ("1sec", "unknown unit \"sec\""),
        ("abc", "expected a number"),
        ("s", "expected a number"),
        ("1.5.5s", "missing unit after 1.5"),
        ("99999999999999999999h", "too large"),
        ("10000000h", "too large"),
        ("[1s]", "a duration string"),
    ];
    for (text, msg) in bad {
        let err = read::<Duration>(text).expect_err(text);
        assert!(err.contains(msg), "{text}: {err}");
    }
}

#[test]
fn durations_print_in_shortest_form() {
    let cases: &[(std::time::Duration, &str)] = &[
        (ms(0), "0s"),
        (ms(100), "100ms"),
        (ms(1500), "1.5s"),
        (ms(60_000), "1m"),
        (ms(90_000), "1m30s"),
        (ms(3_600_000), "1h"),
        (ms(5_400_000), "1h30m"),
        (ms(3_600_001), "1h0.001s"),
        (std::time::Duration::from_micros(250), "250us"),
        (std::time::Duration::from_nanos(7), "7ns"),
    ];
    for (d, text) in cases {
        let dur = Duration::from(*d);
        assert_eq!(dur.to_string(), *text);
        assert_eq!(Duration::parse(text).expect("reparses").get(), *d, "{text}");
        assert_eq!(
            serde_json::to_string(&dur).expect("json"),
            format!("\"{text}\"")
        );
    }
    assert!(Duration::from_millis(5) >= Duration::MIN_ISTIO);
    assert!(Duration::parse("1ms").expect("1ms").is_whole_millis());
    assert!(!Duration::parse("1500us").expect("us").is_whole_millis());
}

#[test]
fn percentages() {
    for (text, want) in [
        ("0", 0.0),
        ("100", 100.0),
        ("12.5", 12.5),
        ("100.0", 100.0),
        ("0.0001", 0.0001),
    ] {
        let p: Percent = read(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(p.value(), want);
    }
    for text in ["-1", "100.1", "1000", ".nan", ".inf", "'50'"] {
        assert!(read::<Percent>(text).is_err(), "{text}");
    }
    assert!(
        read::<Percent>("150")
            .expect_err("150")
            .contains("must be between 0 and 100")
    );
    assert_eq!(Percent::new(25.0).expect("25").fraction(), 0.25);

    for (text, want) in [("0", 0), ("100", 100), ("42", 42)] {
        assert_eq!(read::<IntPercent>(text).expect(text).get(), want);
    }
    for text in ["101", "-1", "1.5", "'5'"] {
        assert!(read::<IntPercent>(text).is_err(), "{text}");
    }
}

#[test]
fn ports() {
    for (text, want) in [("1", 1), ("8080", 8080), ("65535", 65535)] {
        assert_eq!(read::<Port>(text).expect(text).get(), want);
    }
    for (text, msg) in [
        ("0", "invalid port 0"),
        ("65536", "invalid port 65536"),
        ("-1", "invalid port -1"),
        ("'80'", "a port number between 1 and 65535"),
    ] {
        let err = read::<Port>(text).expect_err(text);
        assert!(err.contains(msg), "{text}: {err}");
    }
    // Ports Istio writes as strings: both spellings read, written as a string.
    for text in ["'8080'", "8080"] {
        let p: PortString = read(text).expect(text);
        assert_eq!(p.port().get(), 8080);
        assert_eq!(serde_json::to_string(&p).expect("json"), "\"8080\"");
    }
    for text in ["'0'", "'abc'", "'65536'", "''", "'-1'", "' 80'"] {
        assert!(read::<PortString>(text).is_err(), "{text}");
    }
}

#[test]
fn label_selectors() {
    let l: Labels =
        read("{app: reviews, version: v1, example.com/tier: backend, empty: ''}").expect("labels");
    assert_eq!(l.len(), 4);
    assert!(
        l.matches_map(
            &[
                ("app", "reviews"),
                ("version", "v1"),
                ("example.com/tier", "backend"),
                ("empty", ""),
                ("x", "y")
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
        )
    );
    assert!(!l.matches(|k| (k == "app").then_some("reviews")));
    assert!(
        read::<Labels>("{}").expect("empty").matches(|_| None),
        "an empty selector selects everything"
    );
    for (text, msg) in [
        ("{'': x}", "label key must not be empty"),
        ("{'*': x}", "wildcard not allowed in label key match"),
        ("{app: '*'}", "wildcard not allowed in label value match"),
        ("{'a b': c}", "invalid label key"),
        ("{app: 'a b'}", "invalid label value"),
        ("{'-app': x}", "invalid label key"),
        ("{'Bad_Prefix/app': x}", "prefix before '/'"),
        ("{app: 1}", "invalid type: integer `1`, expected a string"),
    ] {
        let err = read::<Labels>(text).expect_err(text);
        assert!(err.contains(msg), "{text}: {err}");
    }
    let long = "a".repeat(64);
    assert!(read::<Labels>(&format!("{{app: {long}}}")).is_err());
}

#[test]
fn wildcards() {
    let cases = [
        ("*", WildcardMatch::Any),
        ("abc*", WildcardMatch::Prefix("abc")),
        ("*abc", WildcardMatch::Suffix("abc")),
        ("abc", WildcardMatch::Exact("abc")),
    ];
    for (text, want) in cases {
        let w: Wildcard = read(&format!("'{text}'")).expect(text);
        assert_eq!(w.matcher(), want);
    }
    let w = Wildcard::new("prod-*").expect("prefix");
    assert!(w.matches("prod-eu") && !w.matches("dev-eu"));
    let w = Wildcard::new("*-test").expect("suffix");
    assert!(w.matches("ns-test") && !w.matches("ns-prod"));
    for (text, msg) in [
        ("''", "empty value"),
        ("'a*b'", "`*` is only allowed"),
        ("'*a*'", "`*` is only allowed"),
        ("'a b'", "whitespace"),
    ] {
        let err = read::<Wildcard>(text).expect_err(text);
        assert!(err.contains(msg), "{text}: {err}");
    }
}

#[test]
fn principals() {
    let p: Principal = read("cluster.local/ns/default/sa/frontend").expect("principal");
    let parts = p.spiffe_parts().expect("spiffe form");
    assert_eq!(
        (parts.trust_domain, parts.namespace, parts.service_account),
        ("cluster.local", "default", "frontend")
    );
    assert!(p.matches("spiffe://cluster.local/ns/default/sa/frontend"));
    assert!(p.matches("cluster.local/ns/default/sa/frontend"));
    assert!(!p.matches("spiffe://cluster.local/ns/default/sa/backend"));

    let any_td: Principal = read("'*/ns/foo/sa/bar'").expect("suffix wildcard");
    assert!(any_td.matches("spiffe://other.td/ns/foo/sa/bar"));
    assert_eq!(any_td.spiffe_parts(), None);
    let any_sa: Principal = read("'cluster.local/ns/foo/sa/*'").expect("prefix wildcard");
    assert!(
        any_sa.matches("spiffe://cluster.local/ns/foo/sa/x")
            && !any_sa.matches("spiffe://cluster.local/ns/bar/sa/x")
    );
    assert!(read::<Principal>("'*'").expect("any").matches("anything"));
    // Istio accepts principals that are not SPIFFE-shaped; they just never match a workload.
    assert_eq!(
        read::<Principal>("principal")
            .expect("plain")
            .spiffe_parts(),
        None
    );

    for (text, msg) in [
        (
            "spiffe://cluster.local/ns/a/sa/b",
            "without the spiffe:// scheme",
        ),
        ("'cluster.local/ns/*/sa/b'", "`*` is only allowed"),
        ("''", "empty value"),
    ] {
        let err = read::<Principal>(text).expect_err(text);
        assert!(err.contains(msg), "{text}: {err}");
    }
}

#[test]
fn trust_domains() {
    for text in ["cluster.local", "example.org", "td_1-a.b"] {
        assert_eq!(read::<TrustDomain>(text).expect(text).as_str(), text);
    }
    assert_eq!(TrustDomain::default().as_str(), "cluster.local");
    for text in ["''", "Cluster.Local", "a/b", "'*'", "'a b'"] {
        assert!(read::<TrustDomain>(text).is_err(), "{text}");
    }
}

#[test]
fn service_accounts() {
    let sa: ServiceAccountRef = read("frontend").expect("sa");
    assert_eq!(
        (sa.namespace.as_deref(), sa.name.as_str()),
        (None, "frontend")
    );
    let sa: ServiceAccountRef = read("prod/frontend").expect("ns/sa");
    assert_eq!(
        (sa.namespace.as_deref(), sa.name.as_str()),
        (Some("prod"), "frontend")
    );
    assert_eq!(sa.to_string(), "prod/frontend");
    for text in ["a/b/c", "/sa", "ns/", "'*'", "''", "'ns/*'"] {
        assert!(read::<ServiceAccountRef>(text).is_err(), "{text}");
    }
}

#[test]
fn ip_blocks() {
    let b: IpBlock = read("10.1.0.0/16").expect("cidr");
    assert!(b.contains("10.1.2.3".parse().expect("ip")));
    assert!(!b.contains("10.2.0.1".parse().expect("ip")));
    assert_eq!(b.to_string(), "10.1.0.0/16");
    let one: IpBlock = read("192.168.1.1").expect("ip");
    assert_eq!(one.prefix_len, 32);
    assert!(
        one.contains("192.168.1.1".parse().expect("ip"))
            && !one.contains("192.168.1.2".parse().expect("ip"))
    );
    assert_eq!(one.to_string(), "192.168.1.1");
    let v6: IpBlock = read("'fd00::/8'").expect("v6");
    assert!(
        v6.contains("fd12::1".parse().expect("ip"))
            && !v6.contains("10.0.0.1".parse().expect("ip"))
    );
    assert!(
        read::<IpBlock>("0.0.0.0/0")
            .expect("all")
            .contains("8.8.8.8".parse().expect("ip"))
    );
    for text in [
        "10.0.0.256",
        "10.0.0.0/33",
        "x",
        "10.0.0.0/-1",
        "10.0.0.0/",
        "'::/129'",
    ] {
        let err = read::<IpBlock>(text).expect_err(text);
        assert!(err.contains("bad"), "{text}: {err}");
    }
}

#[test]
fn retry_on_conditions() {
    let all = "5xx,gateway-error,reset,reset-before-request,connect-failure,retriable-4xx,refused-stream,retriable-status-codes,retriable-headers,envoy-ratelimited,http3-post-connect-failure,cancelled,deadline-exceeded,internal,resource-exhausted,unavailable,503";
    let r: RetryOn = read(all).expect("all conditions");
    assert_eq!(r.conditions().len(), 17);
    assert_eq!(r.to_string(), all);
    assert!(r.contains(RetryCondition::FiveXx));
    assert!(r.contains(RetryCondition::Status(503)));
    assert_eq!(r.status_codes().collect::<Vec<_>>(), vec![503]);
    assert!(RetryCondition::Unavailable.is_grpc() && !RetryCondition::Reset.is_grpc());

    let spaced: RetryOn = read("'5xx, connect-failure'").expect("spaces are trimmed");
    assert_eq!(spaced.to_string(), "5xx,connect-failure");

    for (text, msg) in [
        ("bogus", "\"bogus\" is not a valid retryOn condition"),
        ("'5xx,'", "empty condition"),
        ("'99'", "is not a valid retryOn condition"),
        ("'600'", "is not a valid retryOn condition"),
        ("''", "empty condition"),
        ("5XX", "is not a valid retryOn condition"),
    ] {
        let err = read::<RetryOn>(text).expect_err(text);
        assert!(err.contains(msg), "{text}: {err}");
    }
}
