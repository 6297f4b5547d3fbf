//! The `.env` syntax.

use std::collections::BTreeMap;

use meshmodel::compose::{parse_env_file, resolve_env_entries};

fn one(text: &str) -> (String, Option<String>) {
    let mut entries = parse_env_file(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    assert_eq!(entries.len(), 1, "{text:?}: {entries:?}");
    entries.remove(0)
}

#[test]
fn values() {
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("A=1", "A", Some("1")),
        ("A = 1 ", "A", Some("1")),
        ("export A=1", "A", Some("1")),
        ("A=", "A", Some("")),
        ("A", "A", None),
        ("A # comment", "A", None),
        ("A=x # comment", "A", Some("x")),
        ("A=x#not-comment", "A", Some("x#not-comment")),
        ("A='x # y'", "A", Some("x # y")),
        ("A='a\\nb'", "A", Some("a\\nb")),
        ("A=\"a\\nb\"", "A", Some("a\nb")),
        ("A=\"q\\\"t\"", "A", Some("q\"t")),
        ("A=\"x\" # c", "A", Some("x")),
        ("A=\"multi\nline\"", "A", Some("multi\nline")),
        ("A=${B}", "A", Some("${B}")),
        ("A=\"\"", "A", Some("")),
        ("A.b-c=1", "A.b-c", Some("1")),
        ("A=1\r\n", "A", Some("1")),
    ];
    for (text, key, value) in cases {
        let (k, v) = one(text);
        assert_eq!((k.as_str(), v.as_deref()), (*key, *value), "{text:?}");
    }
}

#[test]
fn whole_file() {
    let text = "# header\n\nexport A=1\nB='two'\n  # indented comment\nC=\"3\"\nD\n";
    let entries = parse_env_file(text).unwrap();
    let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["A", "B", "C", "D"]);
    let env: BTreeMap<String, String> = [("D".to_string(), "from-env".to_string())].into();
    let resolved = resolve_env_entries(entries, &env);
    assert_eq!(
        resolved.last(),
        Some(&("D".to_string(), "from-env".to_string()))
    );
}

#[test]
fn errors_with_lines() {
    let cases: &[(&str, usize, &str)] = &[
        ("A=1\nB C=2", 2, "unexpected character"),
        ("A=1\n\nB=\"open", 3, "unterminated"),
        ("=1", 1, "expected a variable name"),
        ("A='x' trailing", 1, "after the closing quote"),
    ];
    for (text, line, message) in cases {
        let err = parse_env_file(text).unwrap_err();
        assert_eq!(err.line, *line, "{text:?}: {err}");
        assert!(err.message.contains(message), "{text:?}: {err}");
    }
}

#[test]
fn expansion_like_compose() {
    let text = "A=one\nB=${A}-two\nC='${A}'\nD=\"${SHELL_ONLY:-d}\"\nE=$A$A\nF=${A:?}\nG\n";
    let env: BTreeMap<String, String> = [("A".to_string(), "shell".to_string())].into();
    let got = meshmodel::compose::parse_env_file_with(text, &env).unwrap();
    let got: Vec<(&str, Option<&str>)> = got
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            ("A", Some("one")),
            ("B", Some("shell-two")),
            ("C", Some("${A}")),
            ("D", Some("d")),
            ("E", Some("shellshell")),
            ("F", Some("shell")),
            ("G", None),
        ]
    );
    let none: BTreeMap<String, String> = BTreeMap::new();
    let got = meshmodel::compose::parse_env_file_with("X=1\nY=${X}\n", &none).unwrap();
    assert_eq!(got[1].1.as_deref(), Some("1"));
    let err = meshmodel::compose::parse_env_file_with("X=1\nY=${Z:?need Z}\n", &none).unwrap_err();
    assert_eq!(err.line, 2);
    assert!(err.message.contains("need Z"), "{err}");
}
