//! Path normalization, case by case against Istio's published expectations (the
//! "Authorization Policy Normalization" reference, the security best-practices table, and the
//! `/public*` cases of Istio's path-normalization integration test), and the end-to-end
//! property: no encoding, dot-segment or slash trick reaches a path a DENY covers or an ALLOW
//! does not.
#![allow(clippy::unwrap_used)] // test helpers unwrap fixed inputs

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use PathNormalization::{
    Base, DecodeAndMergeSlashes as Decode, MergeSlashes as Merge, None as Off,
};
use meshapi::authz::{
    HttpAttributes, MeshSecurity, NormalizeError, PathNormalization, RequestAttributes,
    WorkloadPolicy, check_method, normalize_path,
};
use meshmodel::compile::authz::compile_for_workload;
use meshmodel::istio::{AuthorizationPolicy, IstioResource};
use meshmodel::model::Workload;

fn n(path: &str, mode: PathNormalization) -> Result<String, NormalizeError> {
    normalize_path(path, mode).map(|p| p.as_str().to_string())
}

#[test]
fn istio_reference_table() {
    // (input, mode, expected): the single percent-encoded characters, once, no double decoding.
    let cases: &[(&str, PathNormalization, &str)] = &[
        ("/some%2fdata/%61%62%63", Decode, "/some/data/abc"),
        ("/some%2fdata/%61%62%63", Base, "/some%2fdata/abc"),
        // Kept escapes stay exactly as sent: no change of hex case.
        ("/some%2Fdata", Base, "/some%2Fdata"),
        ("/%2d%2e%5f%7e", Base, "/-._~"),
        ("/%30%39%41%5A%61%7a", Base, "/09AZaz"),
        ("/a%5cb", Base, "/a%5cb"),
        ("/a%5cb", Decode, "/a/b"),
        ("/a%252e%252e/b", Base, "/a%252e%252e/b"),
        ("/a%20b", Base, "/a%20b"),
        ("/a%3fb", Base, "/a%3fb"),
        // Backslash.
        ("/some\\data", Base, "/some/data"),
        ("\\da", Base, "/da"),
        // Multiple slashes.
        ("/some//data///abc", Base, "/some//data///abc"),
        ("/some//data///abc", Merge, "/some/data/abc"),
        ("/a//b", Merge, "/a/b"),
        ("/a%2fb", Decode, "/a/b"),
        ("/a%2f%2fb", Decode, "/a/b"),
        // Dot segments.
        ("/public/./data/abc/../xyz", Base, "/public/data/xyz"),
        ("/a/../b", Base, "/b"),
        ("/a/b/..", Base, "/a/"),
        ("/a/.", Base, "/a/"),
        ("/..", Base, "/"),
        ("/../../a", Base, "/a"),
        ("/a/%2e%2e/b", Base, "/b"),
        ("/a/%2E./b", Base, "/b"),
        ("/a/.%2e/b", Base, "/b"),
        ("/a/...", Base, "/a/..."),
        ("/a/..b/c", Base, "/a/..b/c"),
        // Query kept, not normalized.
        ("/foo?v=1", Base, "/foo?v=1"),
        ("/a/../foo?x=/../%2F", Decode, "/foo?x=/../%2F"),
        // NONE: as received.
        ("/../%2Fa../b", Off, "/../%2Fa../b"),
        ("/a//b/./c", Off, "/a//b/./c"),
    ];
    for (input, mode, want) in cases {
        assert_eq!(
            n(input, *mode).as_deref(),
            Ok(*want),
            "{input} with {mode:?}"
        );
    }
}

#[test]
fn refused_with_400() {
    for mode in [Off, Base, Merge, Decode] {
        assert_eq!(n("/a%00b", mode), Err(NormalizeError::EncodedNul));
        assert!(matches!(
            n("/a%zzb", mode),
            Err(NormalizeError::MalformedEscape { at: 2 })
        ));
        assert!(matches!(
            n("/a%2", mode),
            Err(NormalizeError::MalformedEscape { .. })
        ));
        assert!(matches!(
            n("/a b", mode),
            Err(NormalizeError::InvalidByte { .. })
        ));
        assert!(matches!(
            n("/a#frag", mode),
            Err(NormalizeError::InvalidByte { .. })
        ));
        assert!(matches!(
            n("/a\u{e9}", mode),
            Err(NormalizeError::InvalidByte { .. })
        ));
        assert_eq!(n("a/b", mode), Err(NormalizeError::NotAbsolute));
    }
    assert!(check_method("GET").is_ok());
    assert!(check_method("get").is_err());
}

#[test]
fn normalization_is_idempotent() {
    let inputs = [
        "/a/./b/../c//d%2f%2e%2e/e\\f",
        "/%2e%2e%2f%2e%2e%2fetc",
        "/x/%252e%252e/y",
        "//..//a",
    ];
    for mode in [Base, Merge, Decode] {
        for i in inputs {
            let once = n(i, mode).unwrap();
            assert_eq!(n(&once, mode).unwrap(), once, "{i} with {mode:?}");
        }
    }
}

fn compile(yaml: &str, mode: PathNormalization) -> WorkloadPolicy {
    let v: meshapi::yaml::Value = meshapi::yaml::from_str(yaml).unwrap();
    let IstioResource::AuthorizationPolicy(p) =
        IstioResource::from_value("security.istio.io/v1", "AuthorizationPolicy", v).unwrap()
    else {
        panic!()
    };
    let w = Workload {
        compose_name: "app".into(),
        service: "app".into(),
        namespace: "default".into(),
        service_account: "app".into(),
        labels: BTreeMap::new(),
        replicas: 1,
        ports: vec![80],
    };
    let mesh = MeshSecurity {
        path_normalization: mode,
        ..MeshSecurity::default()
    };
    let refs: Vec<&AuthorizationPolicy> = vec![&p];
    compile_for_workload(&refs, &w, &mesh).unwrap()
}

/// What the proxy does: normalize with the workload's option (400 on error), then evaluate.
fn proxy_allows(wp: &WorkloadPolicy, raw: &str) -> Option<bool> {
    let np = normalize_path(raw, wp.path_normalization).ok()?;
    let attrs = RequestAttributes {
        peer_principal: Some("cluster.local/ns/default/sa/client"),
        source_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        remote_ip: None,
        destination_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        destination_port: 80,
        sni: None,
        http: Some(HttpAttributes {
            method: "GET",
            host: "app",
            path: np.as_str(),
            headers: &(),
            auth: None,
        }),
    };
    Some(wp.evaluate(&attrs).allowed)
}

const ALLOW_PUBLIC: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: public, namespace: default}
spec:
  rules: [{to: [{operation: {paths: ["/public*"], methods: ["GET"]}}]}]
"#;

const DENY_PRIVATE: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: private, namespace: default}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/private*"]}}]}]
"#;

#[test]
fn istio_public_private_cases() {
    // Istio's path-normalization integration test: only `/public*` is allowed.
    let allow = compile(ALLOW_PUBLIC, Base);
    let deny = compile(DENY_PRIVATE, Base);
    let cases: &[(&str, bool)] = &[
        ("/public", true),
        ("/public/../public", true),
        ("/private", false),
        ("/public/../private", false),
        ("/public/./../private", false),
        ("/public/.././private", false),
        ("/public/%2e%2e/private", false),
        ("/public/%2E%2E/private", false),
        ("/public/%2E./private", false),
        ("/public/.%2E/private", false),
        ("/public/%2e%2E/private", false),
        ("/public\\..\\private", false),
        ("/public/%70rivate", true),
        ("/%70rivate", false),
        ("/%70ublic", true),
    ];
    for (path, public) in cases {
        assert_eq!(
            proxy_allows(&allow, path),
            Some(*public),
            "ALLOW /public*: {path}"
        );
        let private = normalize_path(path, Base)
            .unwrap()
            .path()
            .starts_with("/private");
        assert_eq!(
            proxy_allows(&deny, path),
            Some(!private),
            "DENY /private*: {path}"
        );
        assert_eq!(private, !public, "{path}");
    }
}

#[test]
fn encoded_slashes_need_decode_and_merge() {
    // With BASE an encoded slash stays encoded: the request is authorized and forwarded as
    // `/public/..%2fprivate`, which an application that does not decode %2F serves as public.
    let deny = compile(DENY_PRIVATE, Base);
    assert_eq!(proxy_allows(&deny, "/public/..%2fprivate"), Some(true));
    assert_eq!(
        n("/public/..%2fprivate", Base).unwrap(),
        "/public/..%2fprivate"
    );
    // DECODE_AND_MERGE_SLASHES decodes first, so the same trick is denied.
    let deny = compile(DENY_PRIVATE, Decode);
    for p in [
        "/public/..%2fprivate",
        "/public/..%5Cprivate",
        "//private",
        "/public%2f..%2f%2fprivate",
    ] {
        assert_eq!(proxy_allows(&deny, p), Some(false), "{p}");
    }
    // MERGE_SLASHES closes `//private` against a DENY on `/private*`.
    let deny = compile(DENY_PRIVATE, Merge);
    assert_eq!(proxy_allows(&deny, "//private"), Some(false));
    let deny = compile(DENY_PRIVATE, Base);
    assert_eq!(proxy_allows(&deny, "//private"), Some(true));
}
