//! Compose interpolation: each form, nesting, escapes, warnings and errors.

use std::collections::BTreeMap;

use meshmodel::compose::{EnvLookup, Layered, interpolate, substitute};

fn env() -> BTreeMap<String, String> {
    [
        ("A", "alpha"),
        ("EMPTY", ""),
        ("B", "beta"),
        ("PORT", "8080"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

#[test]
fn forms() {
    let cases: &[(&str, &str)] = &[
        ("plain", "plain"),
        ("$A", "alpha"),
        ("${A}", "alpha"),
        ("x${A}y", "xalphay"),
        ("$A.$B", "alpha.beta"),
        ("$Ax", ""),
        ("${UNSET:-def}", "def"),
        ("${EMPTY:-def}", "def"),
        ("${EMPTY-def}", ""),
        ("${UNSET-def}", "def"),
        ("${A:-def}", "alpha"),
        ("${A:+alt}", "alt"),
        ("${EMPTY:+alt}", ""),
        ("${EMPTY+alt}", "alt"),
        ("${UNSET+alt}", ""),
        ("${A:?boom}", "alpha"),
        ("${EMPTY?boom}", ""),
        ("$$A", "$A"),
        ("$${A}", "${A}"),
        ("$A-bar", "alpha-bar"),
        ("${UNSET-myerror?msg}", "myerror?msg"),
        ("${UNSET:-/non:-alphanumeric}", "/non:-alphanumeric"),
        ("${UNSET-${A} ${A}}", "alpha alpha"),
        ("${UNSET:-${B}}", "beta"),
        ("${UNSET:-${ALSO_UNSET:-deep}}", "deep"),
        ("${UNSET:-a}b}", "ab}"),
        ("${UNSET:-$$}", "$"),
        ("${UNSET:-}", ""),
        ("${PORT:-80}:80", "8080:80"),
    ];
    let env = env();
    for (input, want) in cases {
        let mut warnings = Vec::new();
        let got = substitute(input, &env, &mut warnings);
        assert_eq!(got.as_deref(), Ok(*want), "input {input:?}");
    }
}

#[test]
fn errors() {
    let cases: &[(&str, &str)] = &[
        (
            "${UNSET:?need it}",
            "required variable UNSET is missing a value: need it",
        ),
        (
            "${EMPTY:?need it}",
            "required variable EMPTY is missing a value: need it",
        ),
        (
            "${UNSET?gone}",
            "required variable UNSET is missing a value: gone",
        ),
        ("${UNSET?}", "required variable UNSET is missing a value"),
        (
            "${UNSET?bar-baz}",
            "required variable UNSET is missing a value: bar-baz",
        ),
        ("${UNSET:?}", "required variable UNSET is missing a value"),
        (
            "${UNSET:?no ${B}}",
            "required variable UNSET is missing a value: no beta",
        ),
    ];
    let env = env();
    for (input, want) in cases {
        let got = substitute(input, &env, &mut Vec::new());
        assert_eq!(got, Err(want.to_string()), "input {input:?}");
    }
    for bad in [
        "${", "$}", "${A", "${}", "${ }", "${ A}", "${A }", "${A!x}", "${1A}", "5$", "a $ b",
    ] {
        let got = substitute(bad, &env, &mut Vec::new());
        assert!(
            got.is_err_and(|e| e.contains("invalid interpolation format")),
            "{bad:?}"
        );
    }
}

#[test]
fn unset_warns_and_blanks() {
    let mut warnings = Vec::new();
    let got = substitute("a${NOPE}b$NOPE2", &env(), &mut warnings);
    assert_eq!(got.as_deref(), Ok("ab"));
    assert_eq!(warnings.len(), 2);
    assert!(
        warnings[0].contains("\"NOPE\" variable is not set"),
        "{warnings:?}"
    );
}

#[test]
fn document_values_not_keys_with_paths() {
    let mut doc: meshapi::yaml::Value = meshapi::yaml::from_str(
        r#"
x-common: ${A}
services:
  $A:
    image: "img:${B}"
    ports: ["${PORT}:80", 9000]
    environment:
      X: ${MISSING}
      Y: ${REQ:?set REQ}
"#,
    )
    .unwrap();
    let report = interpolate(&mut doc, &env());
    assert_eq!(doc["x-common"], "alpha");
    assert_eq!(doc["services"]["$A"]["image"], "img:beta");
    assert_eq!(doc["services"]["$A"]["ports"][0], "8080:80");
    assert_eq!(doc["services"]["$A"]["ports"][1], 9000);
    assert_eq!(report.warnings.len(), 1);
    assert_eq!(report.warnings[0].path, "services.$A.environment.X");
    assert_eq!(report.errors.len(), 1);
    assert_eq!(report.errors[0].path, "services.$A.environment.Y");
    assert!(report.errors[0].message.contains("set REQ"));
}

#[test]
fn process_env_wins_over_dotenv() {
    let process: BTreeMap<String, String> = [("TAG".to_string(), "from-shell".to_string())]
        .into_iter()
        .collect();
    let dotenv: BTreeMap<String, String> = [("TAG", "from-dotenv"), ("ONLY_DOTENV", "d")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let env = Layered {
        over: process,
        under: dotenv,
    };
    assert_eq!(env.get("TAG").as_deref(), Some("from-shell"));
    assert_eq!(env.get("ONLY_DOTENV").as_deref(), Some("d"));
    assert_eq!(env.get("NEITHER"), None);
}

#[test]
fn hostile_nesting_is_refused() {
    let deep = format!("{}x{}", "${U:-".repeat(100_000), "}".repeat(100_000));
    let got = substitute(&deep, &env(), &mut Vec::new());
    assert!(got.is_err_and(|e| e.contains("nested more than")));
    let ok = format!("{}x{}", "${U:-".repeat(10), "}".repeat(10));
    assert_eq!(substitute(&ok, &env(), &mut Vec::new()).as_deref(), Ok("x"));
    let wide = "${A}".repeat(100_000);
    assert_eq!(
        substitute(&wide, &env(), &mut Vec::new()).map(|s| s.len()),
        Ok(500_000)
    );
}
