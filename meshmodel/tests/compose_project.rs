//! Project names, validation across services, and merging files.

use std::collections::BTreeMap;
use std::path::Path;

use meshmodel::compose::{ComposeFile, from_value, merge, project_name};

fn parse(yaml: &str) -> ComposeFile {
    let value: meshapi::yaml::Value =
        meshapi::yaml::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}\n{e}"));
    from_value(value).unwrap_or_else(|e| panic!("{yaml}\n{}: {}", e.path, e.message))
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `-p`, `name:`, environment, expected name or error fragment.
type NameCase<'a> = (
    Option<&'a str>,
    Option<&'a str>,
    &'a BTreeMap<String, String>,
    Result<&'a str, &'a str>,
);

#[test]
fn project_name_precedence_and_rules() {
    let dir = Path::new("/nonexistent/My Project.v2");
    let with_env = env(&[("COMPOSE_PROJECT_NAME", "fromenv")]);
    let empty_env = env(&[("COMPOSE_PROJECT_NAME", "")]);
    let none = env(&[]);
    let cases: &[NameCase] = &[
        (Some("cli"), Some("file"), &with_env, Ok("cli")),
        (None, Some("file"), &with_env, Ok("fromenv")),
        (None, Some("file"), &none, Ok("file")),
        (None, Some("file"), &empty_env, Ok("file")),
        (None, None, &none, Ok("myprojectv2")),
        (None, Some("my_app-1"), &none, Ok("my_app-1")),
        (Some("MyApp"), None, &none, Err("\"myapp\"")),
        (None, Some("-lead"), &none, Err("not a valid project name")),
        (None, Some("a.b"), &none, Err("\"ab\"")),
    ];
    for (explicit, field, env, want) in cases {
        let got = project_name(*explicit, *field, dir, *env).map_err(|e| e.to_string());
        match (got, want) {
            (Ok(got), Ok(want)) => assert_eq!(got, *want),
            (Err(got), Err(want)) => assert!(got.contains(want), "{got}"),
            (got, want) => panic!("{explicit:?} {field:?}: got {got:?}, want {want:?}"),
        }
    }
    assert!(project_name(None, None, Path::new("/nonexistent/___"), &none).is_err());
}

#[test]
fn depends_on_errors() {
    let cases: &[(&str, &[&str])] = &[
        (
            "services: {a: {image: x, depends_on: [b]}, b: {image: x, depends_on: [a]}}",
            &["dependency cycle: a -> b -> a"],
        ),
        (
            "services: {a: {image: x, depends_on: [a]}}",
            &["dependency cycle: a -> a"],
        ),
        (
            "services: {a: {image: x, depends_on: [b]}, b: {image: x, depends_on: [c]}, c: {image: x, depends_on: [a]}}",
            &["dependency cycle: a -> b -> c -> a"],
        ),
        (
            "services: {a: {image: x, depends_on: [ghost]}}",
            &["undefined service \"ghost\""],
        ),
        (
            "services: {a: {image: x, depends_on: {ghost: {condition: service_started, required: false}}}}",
            &[],
        ),
        (
            "services: {a: {environment: {A: b}, x-mesh: {process: {command: \"run --fast\", workingDir: ./a, env: {B: c}}}}}",
            &[],
        ),
        (
            "services: {a: {image: x, depends_on: {b: {condition: service_healthy}}}, b: {image: x}}",
            &[],
        ),
    ];
    for (yaml, want) in cases {
        let errors = parse(yaml).validate();
        let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages.len(), want.len(), "{yaml}: {messages:?}");
        for (m, w) in messages.iter().zip(*want) {
            assert!(m.contains(w), "{yaml}: {m}");
        }
    }
}

#[test]
fn validation_errors_by_path() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "services: {Web_1: {image: x}}",
            "services.Web_1",
            "DNS-1123",
        ),
        (
            "services: {a: {image: x, x-mesh: {service: Bad.Name}}}",
            "services.a.x-mesh.service",
            "DNS-1123",
        ),
        (
            "services: {a: {image: x, x-mesh: {namespace: NS}}}",
            "services.a.x-mesh.namespace",
            "DNS-1123",
        ),
        ("services: {a: {}}", "services.a", "neither image nor build"),
        (
            "services: {a: {image: x, x-mesh: {process: {command: [run]}}}}",
            "services.a.image",
            "`image` cannot be used with `x-mesh.process`",
        ),
        (
            "services: {a: {build: ., x-mesh: {process: {command: [run]}}}}",
            "services.a.build",
            "`build` cannot be used with `x-mesh.process`",
        ),
        (
            "services: {a: {volumes: [\"./d:/d\"], x-mesh: {process: {command: [run]}}}}",
            "services.a.volumes",
            "`volumes` cannot be used with `x-mesh.process`",
        ),
        (
            "services: {a: {x-mesh: {process: {command: []}}}}",
            "services.a.x-mesh.process.command",
            "the command is empty",
        ),
        (
            "services: {a: {image: x, container_name: c, deploy: {replicas: 2}}}",
            "services.a.container_name",
            "more than one replica",
        ),
        (
            "services: {a: {image: x, ports: [{target: 0}]}}",
            "services.a.ports[0].target",
            "port 0",
        ),
        (
            "services: {a: {image: x, ports: [{target: 80, protocol: sctp}]}}",
            "services.a.ports[0].protocol",
            "tcp or udp",
        ),
        (
            "services: {a: {image: x, expose: [\"0\"]}}",
            "services.a.expose[0]",
            "invalid port",
        ),
        (
            "services: {a: {image: x, networks: [back]}}",
            "services.a.networks.back",
            "undefined network",
        ),
        (
            "services: {a: {image: x, volumes: [\"data:/d\"]}}",
            "services.a.volumes[0]",
            "undefined volume",
        ),
        (
            "services: {a-v1: {image: x, expose: [\"80\"], x-mesh: {service: a}}, a-v2: {image: x, expose: [\"81\"], x-mesh: {service: a}}}",
            "services.a-v2",
            "different ports",
        ),
        (
            "services: {a-v1: {image: x, x-mesh: {service: a, ports: {80: http}}}, a-v2: {image: x, x-mesh: {service: a, ports: {80: tcp}}}}",
            "services.a-v2",
            "port 80",
        ),
    ];
    for (yaml, path, message) in cases {
        let errors = parse(yaml).validate();
        assert!(
            errors
                .iter()
                .any(|e| e.path == *path && e.message.contains(message)),
            "{yaml}: {errors:?}"
        );
    }
}

#[test]
fn merge_two_files() {
    let base = parse(
        r#"
name: base
x-a: 1
services:
  web:
    image: web:1
    command: ["run"]
    environment: {A: "1", B: "2"}
    ports: ["8080:80"]
    expose: ["9000"]
    volumes: ["./a:/app", "./logs:/logs"]
    labels: {app: web}
    healthcheck: {test: ["CMD", "true"], interval: 10s}
    deploy: {replicas: 1, resources: {limits: {memory: 512m}}}
    x-mesh: {service: web, ports: {80: http}}
  db:
    image: postgres
"#,
    );
    let over = parse(
        r#"
x-a: 2
services:
  web:
    image: web:2
    command: serve --debug
    environment: {B: "two", C: "3"}
    ports: ["8080:80", "9443:443"]
    expose: ["9000", "9001"]
    volumes: ["./b:/app"]
    labels: {version: v2}
    healthcheck: {timeout: 2s}
    deploy: {replicas: 3, resources: {limits: {cpus: "0.5"}}}
    x-mesh: {namespace: shop, ports: [{port: 443, protocol: https}]}
  cache:
    image: redis
"#,
    );
    let merged = merge(base, over);
    assert_eq!(merged.name.as_deref(), Some("base"));
    assert_eq!(merged.extensions["x-a"], meshapi::yaml::Value::from(2));
    assert_eq!(
        merged.services.keys().collect::<Vec<_>>(),
        ["cache", "db", "web"]
    );
    let web = &merged.services["web"];
    assert_eq!(web.image.as_deref(), Some("web:2"));
    assert_eq!(
        web.command,
        Some(meshmodel::compose::Command::Shell("serve --debug".into()))
    );
    let env: Vec<(&str, Option<&str>)> = web
        .environment
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_deref()))
        .collect();
    assert_eq!(
        env,
        [("A", Some("1")), ("B", Some("two")), ("C", Some("3"))]
    );
    let ports: Vec<u16> = web.ports.iter().map(|p| p.target).collect();
    assert_eq!(ports, [80, 443]);
    assert_eq!(web.expose, ["9000", "9001"]);
    let volumes: Vec<(&str, &str)> = web
        .volumes
        .iter()
        .map(|v| (v.source.as_deref().unwrap_or(""), v.target.as_str()))
        .collect();
    assert_eq!(volumes, [("./b", "/app"), ("./logs", "/logs")]);
    assert_eq!(web.labels.len(), 2);
    let hc = web.healthcheck.as_ref().unwrap();
    assert!(hc.test.is_some() && hc.interval.is_some() && hc.timeout.is_some());
    assert_eq!(web.replicas(), 3);
    let limits = web
        .deploy
        .as_ref()
        .unwrap()
        .resources
        .as_ref()
        .unwrap()
        .limits
        .as_ref()
        .unwrap();
    assert_eq!(
        (limits.memory.as_deref(), limits.cpus.as_deref()),
        (Some("512m"), Some("0.5"))
    );
    assert_eq!(web.mesh_service("web"), "web");
    assert_eq!(web.namespace(), "shop");
    assert_eq!(web.x_mesh.as_ref().unwrap().ports.len(), 2);
}

#[test]
fn relative_paths_resolve_against_the_project() {
    let mut file = parse(
        r#"
services:
  web:
    build: ./web
    env_file: [.env.web, /etc/abs.env]
    volumes: ["./src:/app", "../shared:/shared", "~/cache:/cache", "data:/data", "/abs:/abs"]
  remote:
    build: https://github.com/x/y.git
volumes: {data: }
"#,
    );
    file.resolve_paths(Path::new("/proj/app"), Some(Path::new("/home/me")));
    let web = &file.services["web"];
    assert_eq!(
        web.build.as_ref().map(|b| b.context.as_str()),
        Some("/proj/app/web")
    );
    let env_files: Vec<&str> = web.env_file.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(env_files, ["/proj/app/.env.web", "/etc/abs.env"]);
    let sources: Vec<&str> = web
        .volumes
        .iter()
        .filter_map(|v| v.source.as_deref())
        .collect();
    assert_eq!(
        sources,
        [
            "/proj/app/src",
            "/proj/shared",
            "/home/me/cache",
            "data",
            "/abs"
        ]
    );
    let remote = &file.services["remote"];
    assert_eq!(
        remote.build.as_ref().map(|b| b.context.as_str()),
        Some("https://github.com/x/y.git")
    );
}

#[test]
fn an_image_beside_a_process_is_refused_at_its_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("compose.yaml"),
        "services:\n  backend:\n    x-mesh:\n      process:\n        command: [./backend]\n    image: demo/backend\n",
    )
    .unwrap();
    let loaded =
        meshmodel::load::load(&meshmodel::load::LoadOptions::new(dir.path().to_path_buf()));
    assert!(loaded.has_errors());
    let d = loaded
        .diagnostics
        .iter()
        .find(|d| d.path == "services.backend.image")
        .unwrap_or_else(|| panic!("{:?}", loaded.diagnostics));
    assert_eq!((d.location.line, d.location.column), (6, 5), "{d:?}");
    assert!(d.message.contains("x-mesh.process"), "{d:?}");
}
