//! Compose as people write it: named networks, `extends`, `include`, secrets and configs
//! from files, `x-mesh.enabled: false`, ports from `expose` or the image; and every refusal
//! of a file reported in one run, each at its file:line:column with what to do instead.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use meshapi::diag::{Diagnostic, Severity};
use meshmodel::load::{LoadOptions, Loaded, load};

fn load_files(files: &[(&str, &str)]) -> (tempfile::TempDir, Loaded) {
    load_with(files, BTreeMap::new())
}

fn load_with(
    files: &[(&str, &str)],
    image_ports: BTreeMap<String, Vec<u16>>,
) -> (tempfile::TempDir, Loaded) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let mut opts = LoadOptions::new(dir.path());
    opts.env = Box::new(BTreeMap::<String, String>::new());
    opts.image_ports = image_ports;
    let loaded = load(&opts);
    (dir, loaded)
}

fn errors(loaded: &Loaded) -> Vec<&Diagnostic> {
    loaded
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .collect()
}

fn no_errors(loaded: &Loaded) {
    let e = errors(loaded);
    assert!(e.is_empty(), "{:#?}", e);
}

/// (file name, line, column, path) of each error, in report order.
fn places(loaded: &Loaded) -> Vec<(String, usize, usize, String)> {
    errors(loaded)
        .iter()
        .map(|d| {
            (
                d.location
                    .file
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                d.location.line,
                d.location.column,
                d.path.clone(),
            )
        })
        .collect()
}

#[test]
fn every_refusal_of_a_file_is_reported_in_one_run_with_its_place_and_a_hint() {
    let compose = "\
services:
  web:
    image: x
    privileged: true
    dns: 1.1.1.1
    deploy:
      placement: {}
  db:
    image: y
    ipc: host
    networks:
      default:
        aliases: [database]
      back:
        ipv6_address: fd00::5
networks:
  back:
    driver: overlay
models: {}
";
    let (_d, loaded) = load_files(&[("compose.yaml", compose)]);
    let got = places(&loaded);
    let want = [
        (4, 5, "services.web.privileged"),
        (5, 5, "services.web.dns"),
        (7, 7, "services.web.deploy.placement"),
        (10, 5, "services.db.ipc"),
        (19, 1, "models"),
        // The rest of the file is still typed and checked in the same run.
        (12, 7, "services.db.networks.default"),
        (15, 9, "services.db.networks.back.ipv6_address"),
        (18, 5, "networks.back.driver"),
    ];
    for (line, column, path) in want {
        assert!(
            got.iter()
                .any(|g| g == &("compose.yaml".into(), line, column, path.into())),
            "{path} at {line}:{column} missing from {got:#?}"
        );
    }
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for d in errors(&loaded) {
        assert!(d.hint.is_some(), "no hint: {}", d.render(false));
    }
    let (_d, loaded) = load_files(&[(
        "compose.yaml",
        &compose
            .replace("    privileged: true\n    dns: 1.1.1.1\n", "")
            .replace("    deploy:\n      placement: {}\n", "")
            .replace("    ipc: host\n", "")
            .replace("models: {}\n", ""),
    )]);
    let got = places(&loaded);
    let paths: Vec<&str> = got.iter().map(|g| g.3.as_str()).collect();
    assert_eq!(
        paths,
        [
            "services.db.networks.default",
            "services.db.networks.back.ipv6_address",
            "networks.back.driver"
        ],
        "{got:#?}"
    );
    for d in errors(&loaded) {
        assert!(d.hint.is_some(), "no hint: {}", d.render(false));
    }
}

#[test]
fn named_networks_with_aliases_fixed_addresses_and_subnets_are_served() {
    let ok = "\
services:
  web:
    image: x
    expose: [80]
    networks: [front, default]
  db:
    image: y
    expose: ['5432']
    networks:
      back:
        aliases: [database, pg]
        ipv4_address: 172.31.250.10
        priority: 10
      front:
networks:
  front: {}
  back:
    internal: true
    ipam:
      config:
        - subnet: 172.31.250.0/24
          gateway: 172.31.250.1
";
    let (_d, loaded) = load_files(&[("compose.yaml", ok)]);
    no_errors(&loaded);
    let bad = [
        (
            ok.replace("ipv4_address: 172.31.250.10", "ipv4_address: 10.9.9.9"),
            "services.db.networks.back.ipv4_address",
            "not in a subnet",
        ),
        (
            ok.replace("subnet: 172.31.250.0/24", "subnet: fd00::/64"),
            "networks.back.ipam.config[0].subnet",
            "not an IPv4 CIDR",
        ),
        (
            ok.replace("aliases: [database, pg]", "aliases: [web]"),
            "services.db.networks.back.aliases[0]",
            "name of a mesh service",
        ),
        (
            ok.replace(
                "  front: {}\n",
                "  front: {}\n  default: {driver: bridge}\n",
            ),
            "networks.default",
            "options on the `default` network",
        ),
        (
            ok.replace(
                "    networks: [front, default]",
                "    networks: [front, nowhere]",
            ),
            "services.web.networks.nowhere",
            "undefined network",
        ),
    ];
    for (text, path, message) in bad {
        let (_d, loaded) = load_files(&[("compose.yaml", &text)]);
        let e = errors(&loaded);
        let found = e
            .iter()
            .find(|d| d.path == path)
            .unwrap_or_else(|| panic!("{path}: {e:#?}"));
        assert!(found.message.contains(message), "{}", found.message);
        assert!(found.location.line > 1, "{}", found.render(false));
        assert!(found.hint.is_some(), "{}", found.render(false));
    }
}

#[test]
fn extends_in_the_same_file_and_from_another_one() {
    let base = "\
services:
  common:
    image: base-image
    environment: {LOG: info, A: '1'}
    volumes: ['./data:/data']
";
    let compose = "\
services:
  web:
    extends: {service: common, file: lib/base.yaml}
    environment: {A: '2'}
    expose: [80]
  worker:
    extends: web
    command: work
";
    let (dir, loaded) = load_files(&[("compose.yaml", compose), ("lib/base.yaml", base)]);
    no_errors(&loaded);
    let c = loaded.mesh.compose.as_ref().unwrap();
    let web = &c.services["web"];
    assert_eq!(web.image.as_deref(), Some("base-image"));
    assert_eq!(web.environment["LOG"].as_deref(), Some("info"));
    assert_eq!(web.environment["A"].as_deref(), Some("2"));
    assert!(web.extends.is_none());
    // A relative path in the other file is relative to that file.
    let src = web.volumes[0].source.as_deref().unwrap();
    assert_eq!(
        std::path::Path::new(src),
        dir.path().join("lib/data"),
        "{src}"
    );
    let worker = &c.services["worker"];
    assert_eq!(worker.image.as_deref(), Some("base-image"));
    assert_eq!(worker.expose, ["80"]);
    assert!(
        loaded
            .mesh
            .files
            .iter()
            .any(|f| f.ends_with("lib/base.yaml"))
    );

    let broken = compose.replace("extends: web", "extends: nothing");
    let (_d, loaded) = load_files(&[("compose.yaml", &broken), ("lib/base.yaml", base)]);
    assert!(
        places(&loaded).contains(&(
            "compose.yaml".to_string(),
            7,
            5,
            "services.worker.extends".to_string()
        )),
        "{:#?}",
        loaded.diagnostics
    );
    let cycle = "services:\n  a: {image: x, extends: b}\n  b: {image: x, extends: a}\n";
    let (_d, loaded) = load_files(&[("compose.yaml", cycle)]);
    assert!(
        errors(&loaded)
            .iter()
            .any(|d| d.message.contains("extends cycle")),
        "{:#?}",
        loaded.diagnostics
    );
}

#[test]
fn include_adds_the_other_files_definitions_and_refuses_a_clash() {
    let compose = "\
include:
  - db/compose.yaml
services:
  web:
    image: x
    expose: [80]
    depends_on: [db]
";
    let db = "\
name: ignored
services:
  db:
    image: postgres
    expose: [5432]
    env_file: db.env
";
    let (dir, loaded) = load_files(&[
        ("compose.yaml", compose),
        ("db/compose.yaml", db),
        ("db/db.env", "A=1\n"),
    ]);
    no_errors(&loaded);
    assert_ne!(loaded.mesh.project, "ignored");
    let c = loaded.mesh.compose.as_ref().unwrap();
    assert_eq!(
        c.services.keys().collect::<Vec<_>>(),
        ["db", "web"],
        "{c:#?}"
    );
    assert_eq!(
        std::path::Path::new(&c.services["db"].env_file[0].path),
        dir.path().join("db/db.env")
    );

    // An error in the included file is placed in it.
    let (_d, loaded) = load_files(&[
        ("compose.yaml", compose),
        (
            "db/compose.yaml",
            &db.replace("image: postgres", "imag: postgres"),
        ),
    ]);
    let e = errors(&loaded);
    let unknown = e
        .iter()
        .find(|d| d.path == "services.db.imag")
        .unwrap_or_else(|| panic!("{e:#?}"));
    assert!(unknown.location.file.ends_with("db/compose.yaml"));
    assert_eq!((unknown.location.line, unknown.location.column), (4, 5));

    let clash = format!("{compose}  db:\n    image: z\n");
    let (_d, loaded) = load_files(&[("compose.yaml", &clash), ("db/compose.yaml", db)]);
    let e = errors(&loaded);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!((e[0].location.line, e[0].path.as_str()), (2, "include[0]"));
    assert!(
        e[0].message
            .contains("service \"db\" is defined both here and in the included file")
    );
}

#[test]
fn secrets_and_configs_come_from_files() {
    let compose = "\
services:
  web:
    image: x
    expose: [80]
    secrets: [token, {source: cert, target: tls.pem}]
    configs: [{source: nginx, target: /etc/nginx/nginx.conf}, plain]
secrets:
  token: {file: ./token.txt}
  cert: {file: ./cert.pem}
configs:
  nginx: {file: ./nginx.conf}
  plain: {file: ./plain.txt}
";
    let (_d, loaded) = load_files(&[("compose.yaml", compose)]);
    no_errors(&loaded);
    let c = loaded.mesh.compose.as_ref().unwrap();
    let web = &c.services["web"];
    let targets: Vec<String> = web
        .secrets
        .iter()
        .map(meshmodel::compose::secret_target)
        .chain(web.configs.iter().map(meshmodel::compose::config_target))
        .collect();
    assert_eq!(
        targets,
        [
            "/run/secrets/token",
            "/run/secrets/tls.pem",
            "/etc/nginx/nginx.conf",
            "/plain"
        ]
    );
    let bad = compose
        .replace(
            "  token: {file: ./token.txt}",
            "  token: {environment: TOKEN}",
        )
        .replace(
            "[token, {source: cert",
            "[token, nope, {source: cert, mode: 0400",
        )
        .replace("  plain: {file: ./plain.txt}", "  plain: {content: hi}");
    let (_d, loaded) = load_files(&[("compose.yaml", &bad)]);
    let got: Vec<String> = places(&loaded).into_iter().map(|p| p.3).collect();
    assert_eq!(
        got,
        [
            "services.web.secrets[1]",
            "services.web.secrets[2].mode",
            "secrets.token.environment",
            "configs.plain.content",
        ],
        "{:#?}",
        loaded.diagnostics
    );
}

#[test]
fn a_service_out_of_the_mesh_is_no_workload_and_refuses_mesh_keys() {
    let compose = "\
services:
  web:
    image: x
    expose: [80]
  legacy:
    image: y
    x-mesh: {enabled: false}
";
    let (_d, loaded) = load_files(&[("compose.yaml", compose)]);
    no_errors(&loaded);
    let c = loaded.mesh.compose.as_ref().unwrap();
    let names: Vec<&str> = c.workloads().iter().map(|w| w.name).collect();
    assert_eq!(names, ["web"]);
    // No warning about its ports: it is not a mesh service.
    assert!(
        !loaded
            .diagnostics
            .iter()
            .any(|d| d.message.contains("legacy")),
        "{:#?}",
        loaded.diagnostics
    );
    let bad = compose.replace("{enabled: false}", "{enabled: false, service: old}");
    let (_d, loaded) = load_files(&[("compose.yaml", &bad)]);
    assert_eq!(
        places(&loaded),
        [(
            "compose.yaml".to_string(),
            7,
            30,
            "services.legacy.x-mesh.service".to_string()
        )]
    );
    let clash = compose.replace(
        "  legacy:",
        "  web2:\n    image: x\n    expose: [80]\n    x-mesh: {service: legacy}\n  legacy:",
    );
    let (_d, loaded) = load_files(&[("compose.yaml", &clash)]);
    assert_eq!(errors(&loaded).len(), 1, "{:#?}", loaded.diagnostics);
}

#[test]
fn a_mesh_service_with_no_port_is_a_finding_unless_its_image_exposes_one() {
    let compose = "services:\n  db:\n    image: postgres\n  web:\n    image: x\n    expose: [80]\n";
    let (_d, loaded) = load_files(&[("compose.yaml", compose)]);
    no_errors(&loaded);
    let warnings: Vec<&Diagnostic> = loaded
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Warning)
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert_eq!(warnings[0].path, "services.db");
    assert_eq!(warnings[0].location.line, 2);
    assert!(warnings[0].message.contains("declares no port"));
    // With the image's EXPOSE (what `up` reads from the engine), the ports are known.
    let (_d, loaded) = load_with(
        &[("compose.yaml", compose)],
        BTreeMap::from([("db".to_string(), vec![5432])]),
    );
    assert!(
        loaded
            .diagnostics
            .iter()
            .all(|d| d.severity != Severity::Warning),
        "{:#?}",
        loaded.diagnostics
    );
    let c = loaded.mesh.compose.as_ref().unwrap();
    let ports: Vec<u16> = c.services["db"]
        .ports_with_protocol()
        .iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(ports, [5432]);
}
