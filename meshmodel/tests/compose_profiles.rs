//! `--profile` / `COMPOSE_PROFILES` and `--env-file`, through `load` as the CLI calls it: a
//! service no active profile enables is not in the mesh (compose's rule), a dependency on one
//! is an error naming the profile, and `--env-file` replaces the project's `.env`.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use meshapi::diag::Severity;
use meshmodel::load::{LoadOptions, Loaded, load};

const COMPOSE: &str = "\
services:
  web:
    image: nginx
  debug:
    image: busybox:${TAG:-latest}
    profiles: [debug]
  tools:
    image: alpine
    profiles: [tools, debug]
";

fn load_with(
    files: &[(&str, &str)],
    env: &[(&str, &str)],
    set: impl FnOnce(&mut LoadOptions, &std::path::Path),
) -> Loaded {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let mut opts = LoadOptions::new(dir.path());
    opts.env = Box::new(
        env.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    );
    set(&mut opts, dir.path());
    load(&opts)
}

fn services(loaded: &Loaded) -> Vec<String> {
    loaded
        .mesh
        .compose
        .as_ref()
        .map(|c| c.services.keys().cloned().collect())
        .unwrap_or_default()
}

fn errors(loaded: &Loaded) -> Vec<String> {
    loaded
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| d.to_string())
        .collect()
}

#[test]
fn services_behind_a_profile_start_only_when_it_is_active() {
    let none = load_with(&[("compose.yaml", COMPOSE)], &[], |_, _| {});
    assert_eq!(services(&none), ["web"]);
    assert!(errors(&none).is_empty(), "{:?}", errors(&none));

    let tools = load_with(&[("compose.yaml", COMPOSE)], &[], |o, _| {
        o.profiles = vec!["tools".into()];
    });
    assert_eq!(services(&tools), ["tools", "web"]);

    // COMPOSE_PROFILES, comma-separated, when no --profile is given.
    let env = load_with(
        &[("compose.yaml", COMPOSE)],
        &[("COMPOSE_PROFILES", "debug")],
        |_, _| {},
    );
    assert_eq!(services(&env), ["debug", "tools", "web"]);

    // --profile wins over the environment; `*` enables every profile.
    let flag = load_with(
        &[("compose.yaml", COMPOSE)],
        &[("COMPOSE_PROFILES", "debug")],
        |o, _| o.profiles = vec!["tools".into()],
    );
    assert_eq!(services(&flag), ["tools", "web"]);
    let all = load_with(&[("compose.yaml", COMPOSE)], &[], |o, _| {
        o.profiles = vec!["*".into()];
    });
    assert_eq!(services(&all), ["debug", "tools", "web"]);

    // COMPOSE_PROFILES from the project's .env, as compose reads it.
    let dotenv = load_with(
        &[
            ("compose.yaml", COMPOSE),
            (".env", "COMPOSE_PROFILES=tools\n"),
        ],
        &[],
        |_, _| {},
    );
    assert_eq!(services(&dotenv), ["tools", "web"]);
}

#[test]
fn depending_on_a_disabled_service_names_the_profile_to_activate() {
    let text = "\
services:
  web:
    image: nginx
    depends_on:
      - debug
  debug:
    image: busybox
    profiles: [debug]
";
    let loaded = load_with(&[("compose.yaml", text)], &[], |_, _| {});
    let errs = errors(&loaded);
    assert_eq!(errs.len(), 1, "{errs:?}");
    // Placed at the `depends_on` field (a short-syntax list item has no key of its own).
    assert!(errs[0].contains("compose.yaml:4:5:"), "{}", errs[0]);
    assert!(errs[0].contains("no active profile enables"), "{}", errs[0]);
    assert!(errs[0].contains("--profile debug"), "{}", errs[0]);
    // With the profile active it loads.
    let ok = load_with(&[("compose.yaml", text)], &[], |o, _| {
        o.profiles = vec!["debug".into()]
    });
    assert!(errors(&ok).is_empty(), "{:?}", errors(&ok));
}

#[test]
fn env_file_replaces_the_project_dot_env() {
    let files = [
        ("compose.yaml", COMPOSE),
        (".env", "TAG=from-dotenv\n"),
        ("other.env", "TAG=from-other\n"),
    ];
    let image = |l: &Loaded| {
        l.mesh.compose.as_ref().unwrap().services["debug"]
            .image
            .clone()
            .unwrap()
    };
    let dotenv = load_with(&files, &[], |o, _| o.profiles = vec!["debug".into()]);
    assert_eq!(image(&dotenv), "busybox:from-dotenv");
    let other = load_with(&files, &[], |o, dir| {
        o.profiles = vec!["debug".into()];
        o.env_files = vec![dir.join("other.env")];
    });
    assert_eq!(image(&other), "busybox:from-other");
    // A missing --env-file is an error (compose refuses it too); a missing .env is not.
    let missing = load_with(&[("compose.yaml", COMPOSE)], &[], |o, dir| {
        o.env_files = vec![dir.join("nope.env")];
    });
    let errs = errors(&missing);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("nope.env") && errs[0].contains("--env-file"),
        "{}",
        errs[0]
    );
}
