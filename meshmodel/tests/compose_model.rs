//! Typing compose documents: short/long syntaxes, refused and unknown keys, the seed example.

use meshmodel::compose::{
    Command, ComposeFile, DependsCondition, Port, Protocol, Restart, from_value,
};

fn parse(yaml: &str) -> ComposeFile {
    let value: meshapi::yaml::Value =
        meshapi::yaml::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}\n{e}"));
    from_value(value).unwrap_or_else(|e| panic!("{yaml}\n{}: {}", e.path, e.message))
}

fn parse_err(yaml: &str) -> (String, String) {
    let value: meshapi::yaml::Value =
        meshapi::yaml::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}\n{e}"));
    match from_value(value) {
        Ok(f) => panic!("expected an error for\n{yaml}\ngot {f:?}"),
        Err(e) => (e.path, e.message),
    }
}

fn port(target: u16, published: Option<&str>, host_ip: Option<&str>, protocol: &str) -> Port {
    Port {
        target,
        published: published.map(str::to_string),
        host_ip: host_ip.map(str::to_string),
        protocol: protocol.to_string(),
        mode: "ingress".to_string(),
        name: None,
        app_protocol: None,
    }
}

#[test]
fn short_port_syntax() {
    let cases: Vec<(&str, Vec<Port>)> = vec![
        ("80", vec![port(80, None, None, "tcp")]),
        ("\"8080:80\"", vec![port(80, Some("8080"), None, "tcp")]),
        (
            "\"127.0.0.1:8080:80/tcp\"",
            vec![port(80, Some("8080"), Some("127.0.0.1"), "tcp")],
        ),
        (
            "\"127.0.0.1::80\"",
            vec![port(80, None, Some("127.0.0.1"), "tcp")],
        ),
        ("\"53:53/udp\"", vec![port(53, Some("53"), None, "udp")]),
        (
            "\"[::1]:8080:80\"",
            vec![port(80, Some("8080"), Some("::1"), "tcp")],
        ),
        (
            "\"9090-9091:8080-8081\"",
            vec![
                port(8080, Some("9090"), None, "tcp"),
                port(8081, Some("9091"), None, "tcp"),
            ],
        ),
        (
            "\"9000-9010:80\"",
            vec![port(80, Some("9000-9010"), None, "tcp")],
        ),
        (
            "\"3000-3001\"",
            vec![port(3000, None, None, "tcp"), port(3001, None, None, "tcp")],
        ),
        (
            "{target: 80, published: \"8080\", host_ip: 0.0.0.0, protocol: tcp, mode: host, name: http-web, app_protocol: http}",
            vec![Port {
                mode: "host".into(),
                name: Some("http-web".into()),
                app_protocol: Some("http".into()),
                ..port(80, Some("8080"), Some("0.0.0.0"), "tcp")
            }],
        ),
        (
            "{target: \"80\", published: 8080}",
            vec![port(80, Some("8080"), None, "tcp")],
        ),
    ];
    for (item, want) in cases {
        let file = parse(&format!("services: {{web: {{image: x, ports: [{item}]}}}}"));
        assert_eq!(file.services["web"].ports, want, "{item}");
    }
    for bad in [
        "\"80000:80\"",
        "\"a:b\"",
        "\"1:2:3:4\"",
        "\"9000-9002:80-81\"",
    ] {
        let (path, message) =
            parse_err(&format!("services: {{web: {{image: x, ports: [{bad}]}}}}"));
        assert_eq!(path, "services.web.ports[0]", "{bad}: {message}");
        assert!(message.contains("port"), "{bad}: {message}");
    }
}

#[test]
fn refused_keys_by_path() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "services: {web: {image: x, dns: 8.8.8.8}}",
            "services.web.dns",
            "owns DNS",
        ),
        (
            "services: {web: {image: x, network_mode: host}}",
            "services.web.network_mode",
            "network namespace",
        ),
        (
            "services: {web: {image: x, privileged: true}}",
            "services.web.privileged",
            "not supported by meshctl",
        ),
        (
            "services: {web: {image: x, deploy: {placement: {}}}}",
            "services.web.deploy.placement",
            "not supported by meshctl",
        ),
        (
            "services: {web: {image: x, deploy: {resources: {reservations: {}}}}}",
            "services.web.deploy.resources.reservations",
            "not supported by meshctl",
        ),
        (
            "services: {web: {image: x, dns_search: [a]}}",
            "services.web.dns_search",
            "owns DNS",
        ),
    ];
    for (yaml, path, message) in cases {
        let (p, m) = parse_err(yaml);
        assert_eq!(p, *path, "{yaml}");
        assert!(m.contains(message) && m.contains(path), "{yaml}: {m}");
    }
    let value: meshapi::yaml::Value = meshapi::yaml::from_str("models: {}\nservices: {}").unwrap();
    let e = from_value(value).unwrap_err();
    assert_eq!(e.message, "not supported by meshctl yet: models");
    assert_eq!(
        e.hint.as_deref(),
        Some("remove it; meshctl runs containers only")
    );
}

#[test]
fn unknown_keys_keep_serde_wording() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "services: {web: {imag: x}}",
            "services.web.imag",
            "unknown field `imag`, expected one of",
        ),
        ("servics: {}", "servics", "unknown field `servics`"),
        (
            "services: {web: {image: x, x-mesh: {servce: a}}}",
            "services.web.x-mesh.servce",
            "unknown field `servce`",
        ),
        (
            "services: {web: {image: x, healthcheck: {tset: x}}}",
            "services.web.healthcheck.tset",
            "unknown field `tset`",
        ),
        (
            "services: {web: {image: x, ports: [{target: 80, publish: 1}]}}",
            "services.web.ports[0].publish",
            "unknown field `publish`",
        ),
        (
            "services: {web: {image: x, deploy: {replicas: -1}}}",
            "services.web.deploy.replicas",
            "expected a whole number >= 0",
        ),
        (
            "services: {web: {image: x, restart: sometimes}}",
            "services.web.restart",
            "invalid restart policy",
        ),
        (
            "services: {web: {image: x, depends_on: {db: {condition: service_ready}}}}",
            "services.web.depends_on.db.condition",
            "unknown variant",
        ),
        (
            "services: {web: {image: x, healthcheck: {interval: 10 seconds}}}",
            "services.web.healthcheck.interval",
            "invalid duration",
        ),
    ];
    for (yaml, path, message) in cases {
        let (p, m) = parse_err(yaml);
        assert_eq!(p, *path, "{yaml}: {m}");
        assert!(m.contains(message), "{yaml}: {m}");
    }
}

#[test]
fn extensions_are_kept_aside() {
    let file = parse(
        "x-defaults: &d {restart: always}\nservices:\n  web:\n    image: x\n    x-custom: 1\nnetworks:\n  n: {x-note: hi}\n",
    );
    assert!(file.extensions.contains_key("x-defaults"));
    assert!(file.services["web"].extensions.contains_key("x-custom"));
}

#[test]
fn long_forms_and_normalization() {
    let file = parse(
        r#"
version: "3.8"
services:
  web:
    build: ./web
    command: npm start
    entrypoint: ["/bin/sh", "-c"]
    environment: ["A=1", "B", "C=x=y"]
    env_file: .env.web
    labels: ["app=web", "tier"]
    expose: [8080, "9000-9001/tcp"]
    volumes: ["./src:/app:ro", "data:/data", "/cache"]
    depends_on: [db]
    healthcheck:
      test: curl -f http://localhost
      interval: 1m30s
      timeout: 500ms
      retries: "3"
    restart: on-failure:5
    networks: {front: {aliases: [w]}}
    read_only: "true"
    extra_hosts: ["host.docker.internal:host-gateway"]
    stop_grace_period: 1h2m
  db:
    image: postgres
    environment: {POSTGRES_DB: app, N: 5, F: false, E: null}
    env_file: [{path: a.env, required: false}, b.env]
    depends_on: {}
    healthcheck: {test: ["CMD", "pg_isready"]}
networks: {front: }
volumes: {data: }
"#,
    );
    let web = &file.services["web"];
    assert_eq!(web.build.as_ref().unwrap().context, "./web");
    assert_eq!(web.command, Some(Command::Shell("npm start".into())));
    assert_eq!(
        web.entrypoint,
        Some(Command::Exec(vec!["/bin/sh".into(), "-c".into()]))
    );
    assert_eq!(web.environment["A"].as_deref(), Some("1"));
    assert_eq!(web.environment["B"], None);
    assert_eq!(web.environment["C"].as_deref(), Some("x=y"));
    assert_eq!(web.env_file[0].path, ".env.web");
    assert!(web.env_file[0].required);
    assert_eq!(web.labels["tier"], "");
    assert_eq!(web.expose, ["8080", "9000-9001/tcp"]);
    assert_eq!(web.volumes[0].kind, "bind");
    assert_eq!(web.volumes[0].read_only, Some(true));
    assert_eq!(web.volumes[1].kind, "volume");
    assert_eq!(web.volumes[2].source, None);
    assert_eq!(
        web.depends_on["db"].condition,
        DependsCondition::ServiceStarted
    );
    let hc = web.healthcheck.as_ref().unwrap();
    assert_eq!(
        hc.test.as_ref().unwrap().0,
        ["CMD-SHELL", "curl -f http://localhost"]
    );
    assert_eq!(hc.interval.unwrap().0.as_secs(), 90);
    assert_eq!(hc.timeout.unwrap().0.as_millis(), 500);
    assert_eq!(hc.retries, Some(3));
    assert_eq!(web.restart, Some(Restart::OnFailure(Some(5))));
    assert_eq!(web.networks["front"].aliases, ["w"]);
    assert_eq!(web.read_only, Some(true));
    assert_eq!(web.extra_hosts, ["host.docker.internal=host-gateway"]);
    let db = &file.services["db"];
    assert_eq!(db.environment["N"].as_deref(), Some("5"));
    assert_eq!(db.environment["F"].as_deref(), Some("false"));
    assert_eq!(db.environment["E"], None);
    assert!(!db.env_file[0].required);
    assert_eq!(db.env_file[1].path, "b.env");
    assert!(file.validate().is_empty(), "{:?}", file.validate());
    // The obsolete `version`, and `db`, which declares no port.
    let mut warned: Vec<String> = file.warnings().into_iter().map(|w| w.path).collect();
    warned.sort();
    assert_eq!(warned, ["services.db", "version"]);

    // The normalized model prints long syntax and reads back to the same model.
    let printed = meshapi::yaml::to_string(&file).unwrap();
    assert!(printed.contains("interval: 1m30s"), "{printed}");
    assert!(printed.contains("stop_grace_period: 1h2m0s"), "{printed}");
    assert!(printed.contains("restart: on-failure:5"), "{printed}");
    assert!(printed.contains("target: /app"), "{printed}");
    let again = parse(&printed);
    assert_eq!(again.services, file.services);
}

pub const SEED: &str = r#"
name: seed
services:
  frontend:
    image: seed/frontend
    ports: ["3000:3000"]
    environment:
      BACKEND_URL: http://backend:8080
    depends_on: [backend-v1, backend-v2]
  backend-v1:
    image: seed/backend
    labels: {app: backend, version: v1}
    expose: ["8080"]
    x-mesh: {service: backend, ports: [{port: 8080, protocol: http, name: http}]}
  backend-v2:
    image: seed/backend
    labels: {app: backend, version: v2}
    deploy: {replicas: 2}
    expose: ["8080"]
    x-mesh: {service: backend, ports: {8080: http}}
"#;

#[test]
fn seed_example_accessors() {
    let file = parse(SEED);
    assert!(file.validate().is_empty(), "{:?}", file.validate());
    let fe = &file.services["frontend"];
    assert_eq!(fe.mesh_service("frontend"), "frontend");
    assert_eq!(fe.service_account("frontend"), "frontend");
    assert_eq!(fe.namespace(), "default");
    assert_eq!(fe.labels("frontend")["app"], "frontend");
    assert_eq!(fe.replicas(), 1);
    let fe_ports = fe.ports_with_protocol();
    assert_eq!(fe_ports.len(), 1);
    assert_eq!((fe_ports[0].port, fe_ports[0].protocol), (3000, None));
    for (name, version, replicas) in [("backend-v1", "v1", 1), ("backend-v2", "v2", 2)] {
        let s = &file.services[name];
        assert_eq!(s.mesh_service(name), "backend");
        assert_eq!(s.service_account(name), "backend");
        assert_eq!(s.namespace(), "default");
        let labels = s.labels(name);
        assert_eq!(labels["app"], "backend");
        assert_eq!(labels["version"], version);
        assert_eq!(labels["service.istio.io/canonical-revision"], version);
        assert_eq!(s.replicas(), replicas);
        let ports = s.ports_with_protocol();
        assert_eq!(ports.len(), 1);
        assert_eq!(
            (ports[0].port, ports[0].protocol),
            (8080, Some(Protocol::Http))
        );
    }
}

#[test]
fn protocol_from_name_and_app_protocol() {
    let file = parse(
        r#"
services:
  s:
    image: x
    ports:
      - {target: 80, name: http-web}
      - {target: 81, name: grpc}
      - {target: 82, name: tcp-db}
      - {target: 83, name: http-x, app_protocol: grpc}
      - {target: 84, name: web}
      - {target: 85}
    x-mesh: {ports: [{port: 85, protocol: HTTP2}]}
"#,
    );
    let got: Vec<(u16, Option<Protocol>)> = file.services["s"]
        .ports_with_protocol()
        .into_iter()
        .map(|p| (p.port, p.protocol))
        .collect();
    assert_eq!(
        got,
        [
            (80, Some(Protocol::Http)),
            (81, Some(Protocol::Grpc)),
            (82, Some(Protocol::Tcp)),
            (83, Some(Protocol::Grpc)),
            (84, None),
            (85, Some(Protocol::Http2)),
        ]
    );
}

#[test]
fn seed_example_file_loads() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/seed/compose.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    // The file uses `${FRONTEND_PORT:-3000}`: interpolate with an empty environment first, as
    // the loader does.
    let mut value: meshapi::yaml::Value = meshapi::yaml::from_str(&text).unwrap();
    let env = std::collections::BTreeMap::<String, String>::new();
    let _ = meshmodel::compose::interpolate(&mut value, &env);
    let file = from_value(value).unwrap_or_else(|e| panic!("{}: {}", e.path, e.message));
    assert!(file.validate().is_empty(), "{:?}", file.validate());
    assert_eq!(
        file.services["frontend"].ports[0].published.as_deref(),
        Some("3000")
    );
    let fe = &file.services["frontend"];
    assert_eq!(fe.service_account("frontend"), "frontend-sa");
    assert_eq!(fe.labels("frontend")["version"], "v1");
    for name in ["backend-v1", "backend-v2"] {
        let s = &file.services[name];
        assert_eq!(s.mesh_service(name), "backend");
        assert_eq!(s.ports_with_protocol()[0].protocol, Some(Protocol::Http));
    }
}

#[test]
fn nested_errors_keep_their_path() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "services: {a: {image: x, x-mesh: {ports: [{port: 80, protocol: http}, {port: 81, protocol: quic}]}}}",
            "services.a.x-mesh.ports[1].protocol",
            "unknown variant `quic`",
        ),
        (
            "services: {a: {image: x, x-mesh: {ports: {80: quic}}}}",
            "services.a.x-mesh.ports.80",
            "unknown variant `quic`",
        ),
        (
            "services: {a: {image: x, healthcheck: {test: [curl, x]}}}",
            "services.a.healthcheck.test",
            "must start with NONE, CMD or CMD-SHELL",
        ),
        (
            "services: {a: {image: x, command: {run: x}}}",
            "services.a.command",
            "a string or a list of strings",
        ),
        (
            "services: {a: {image: x, volumes: [{type: bind, source: ., target: /a, readonly: true}]}}",
            "services.a.volumes[0].readonly",
            "unknown field `readonly`",
        ),
    ];
    for (yaml, path, message) in cases {
        let (p, m) = parse_err(yaml);
        assert_eq!(p, *path, "{yaml}: {m}");
        assert!(m.contains(message), "{yaml}: {m}");
    }
}

#[test]
fn extensions_print_with_the_model() {
    let file =
        parse("x-top: {a: 1}\nservices:\n  web: {image: x, x-note: hi, command: [sleep, 5]}\n");
    assert_eq!(
        file.services["web"].command,
        Some(Command::Exec(vec!["sleep".into(), "5".into()]))
    );
    let printed = meshapi::yaml::to_string(&file).unwrap();
    assert!(
        printed.contains("x-top:") && printed.contains("x-note: hi"),
        "{printed}"
    );
    assert_eq!(parse(&printed), file);
}

#[test]
fn workloads_and_profiles() {
    let file = parse(&format!(
        "{SEED}  debug:\n    image: busybox\n    profiles: [debug]\n"
    ));
    let backend = file.instances_of("default", "backend");
    let names: Vec<&str> = backend.iter().map(|w| w.name).collect();
    assert_eq!(names, ["backend-v1", "backend-v2"]);
    assert_eq!(backend[1].replicas, 2);
    assert_eq!(backend[1].labels["version"], "v2");
    assert_eq!(backend[0].service_account, "backend");
    assert!(file.instances_of("other", "backend").is_empty());
    assert_eq!(file.workloads().len(), 4);
    assert!(!file.enabled_services(&[]).contains(&"debug"));
    assert!(file.enabled_services(&["debug"]).contains(&"debug"));
    assert_eq!(file.enabled_services(&["*"]).len(), 4);
}

/// Every property of a service in the compose specification's JSON schema
/// (compose-spec/compose-spec, `schema/compose-spec.json`, `definitions.service.properties`),
/// written out here from the specification, not from meshctl's code.
const COMPOSE_SPEC_SERVICE_KEYS: &[&str] = &[
    "develop",
    "deploy",
    "annotations",
    "attach",
    "build",
    "blkio_config",
    "cap_add",
    "cap_drop",
    "cgroup",
    "cgroup_parent",
    "command",
    "configs",
    "container_name",
    "cpu_count",
    "cpu_percent",
    "cpu_shares",
    "cpu_quota",
    "cpu_period",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpus",
    "cpuset",
    "credential_spec",
    "depends_on",
    "device_cgroup_rules",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "entrypoint",
    "env_file",
    "label_file",
    "environment",
    "expose",
    "extends",
    "external_links",
    "extra_hosts",
    "gpus",
    "group_add",
    "healthcheck",
    "hostname",
    "image",
    "init",
    "ipc",
    "isolation",
    "labels",
    "links",
    "logging",
    "mac_address",
    "mem_limit",
    "mem_reservation",
    "mem_swappiness",
    "memswap_limit",
    "network_mode",
    "models",
    "networks",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "pids_limit",
    "platform",
    "ports",
    "post_start",
    "pre_stop",
    "privileged",
    "profiles",
    "provider",
    "pull_policy",
    "pull_refresh_after",
    "read_only",
    "restart",
    "runtime",
    "scale",
    "secrets",
    "security_opt",
    "shm_size",
    "stdin_open",
    "stop_grace_period",
    "stop_signal",
    "storage_opt",
    "sysctls",
    "tmpfs",
    "tty",
    "ulimits",
    "use_api_socket",
    "user",
    "userns_mode",
    "uts",
    "volumes",
    "volumes_from",
    "working_dir",
];

/// The properties of `deploy` in the same schema (`definitions.deployment.properties`).
const COMPOSE_SPEC_DEPLOY_KEYS: &[&str] = &[
    "mode",
    "endpoint_mode",
    "replicas",
    "labels",
    "rollback_config",
    "update_config",
    "resources",
    "restart_policy",
    "placement",
];

/// What meshctl makes of one key: served (the document reads, or the value's type is wrong),
/// refused by name, or — the bug this test exists for — unknown, as if it were a typo.
fn verdict(yaml: &str, path: &str) -> Result<(), String> {
    let value: meshapi::yaml::Value =
        meshapi::yaml::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}\n{e}"));
    match from_value(value) {
        Ok(_) => Ok(()),
        Err(e) if e.message.contains("unknown field") => Err(format!("{path}: {}", e.message)),
        Err(e) if e.message.contains("not supported by meshctl") => {
            if e.path == path {
                Ok(())
            } else {
                Err(format!("{path}: refused at {}: {}", e.path, e.message))
            }
        }
        Err(_) => Ok(()),
    }
}

#[test]
fn every_compose_spec_service_key_is_served_or_refused_by_name() {
    let mut unknown = Vec::new();
    for key in COMPOSE_SPEC_SERVICE_KEYS.iter().filter(|k| **k != "image") {
        let yaml = format!("services: {{web: {{image: x, {key}: 1}}}}");
        if let Err(e) = verdict(&yaml, &format!("services.web.{key}")) {
            unknown.push(e);
        }
    }
    for key in COMPOSE_SPEC_DEPLOY_KEYS {
        let yaml = format!("services: {{web: {{image: x, deploy: {{{key}: 1}}}}}}");
        if let Err(e) = verdict(&yaml, &format!("services.web.deploy.{key}")) {
            unknown.push(e);
        }
    }
    assert!(
        unknown.is_empty(),
        "compose keys treated as unknown (a user's valid file would get a typo hint):\n{}",
        unknown.join("\n")
    );
    // A key that is not in the specification is still an unknown field.
    let (path, message) = parse_err("services: {web: {image: x, imagee: 1}}");
    assert_eq!(path, "services.web.imagee");
    assert!(message.contains("unknown field `imagee`"), "{message}");
}

#[test]
fn keys_the_mesh_owns_are_refused_with_the_reason() {
    // The sidecar owns the pod's network and DNS: a service cannot set them.
    for key in ["dns", "dns_search", "dns_opt", "network_mode"] {
        let (path, message) = parse_err(&format!("services: {{web: {{image: x, {key}: 1}}}}"));
        assert_eq!(path, format!("services.web.{key}"));
        assert!(
            message.starts_with(&format!(
                "not supported by meshctl: services.web.{key}: the "
            )),
            "{key}: {message}"
        );
    }
    let (path, message) = parse_err("services: {web: {image: x, privileged: true}}");
    assert_eq!(path, "services.web.privileged");
    assert!(
        message.starts_with("not supported by meshctl yet: services.web.privileged"),
        "{message}"
    );
}

#[test]
fn odd_shapes_are_errors_not_panics() {
    let cases = [
        "[1, 2]",
        "services: [web]",
        "services: {web: image}",
        "services: {web: {image: x, ports: {a: 1}}}",
        "services: {web: {image: x, ports: [[80]]}}",
        "services: {web: {image: x, environment: 5}}",
        "services: {web: {image: x, volumes: [\"a:b:c:d\"]}}",
        "services: {web: {image: x, volumes: [\":/x\"]}}",
        "services: {web: {image: x, healthcheck: {test: []}}}",
        "services: {web: {image: x, depends_on: 3}}",
        "services: {web: {image: x, x-mesh: [1]}}",
        "services: {web: {image: x, x-mesh: {ports: 7}}}",
        "services: {web: {image: x, deploy: {replicas: 1.5}}}",
        "services: {web: {image: x, stop_grace_period: 5}}",
        "services: {web: {image: x, extra_hosts: [nohost]}}",
        "services: {web: {image: x, ports: [\"[::1:80\"]}}",
    ];
    for yaml in cases {
        let value: meshapi::yaml::Value = meshapi::yaml::from_str(yaml).unwrap();
        assert!(from_value(value).is_err(), "{yaml}");
    }
}

#[test]
fn yaml_merge_keys_are_resolved_as_docker_compose_does() {
    let value: meshapi::yaml::Value = meshapi::yaml::from_str(
        "x-check: &check\n  test: [\"CMD\", \"/app\", \"healthcheck\"]\n  interval: 2s\n\
         services:\n  api:\n    image: a\n    healthcheck:\n      <<: *check\n      interval: 5s\n",
    )
    .unwrap();
    let file = from_value(value).unwrap_or_else(|e| panic!("{}: {}", e.path, e.message));
    let hc = file.services["api"].healthcheck.as_ref().unwrap();
    // Merged from the anchor, the service's own key winning.
    assert!(format!("{:?}", hc.test).contains("healthcheck"), "{hc:?}");
    assert!(format!("{:?}", hc.interval).contains('5'), "{hc:?}");
    // A merge of something that is not a mapping is an error, not silence.
    let bad: meshapi::yaml::Value =
        meshapi::yaml::from_str("services:\n  api:\n    image: a\n    <<: 3\n").unwrap();
    assert!(from_value(bad).is_err());
}
