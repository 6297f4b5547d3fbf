//! Compose as people write it, on the real engine (issue 18): named networks with aliases, a
//! fixed address and an `ipam` subnet; a service whose port comes only from its image's
//! EXPOSE; services kept out of the mesh (`x-mesh.enabled: false`) reaching a PERMISSIVE
//! port in plaintext and refused by a STRICT one, and reached by name from the mesh; an
//! `include`d file, `extends`, and a secret and a config from files. `check` and `up`
//! accept and refuse the same files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod docker_support;

use std::time::{Duration, Instant};

use docker_support::*;

/// The project: `db` (included from db/compose.yaml, built FROM the demo backend with
/// `EXPOSE 8080` and no port in compose, PERMISSIVE) on the `back` network at a fixed
/// address with aliases; `api` (a demo backend, STRICT); `web` (a meshed frontend calling
/// `db`); `legacy` (out of the mesh, calling `db`); `legacy-strict` (extends `legacy`,
/// calling `api`); `viewer` (meshed, calling `legacy` by name).
fn write_project(seed: &Seed, subnet: &str) -> [u16; 4] {
    let dir = seed.dir.path();
    std::fs::remove_dir_all(dir.join("mesh")).unwrap();
    std::fs::create_dir_all(dir.join("db")).unwrap();
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let [web, legacy, strict, viewer] = ports;
    std::fs::write(
        dir.join("compose.yaml"),
        format!(
            "\
include:
  - db/compose.yaml
services:
  api:
    image: meshctl-demo/backend:latest
    environment: {{VERSION: api}}
    expose: [8080]
    networks: [default, back]
  web:
    image: meshctl-demo/frontend:latest
    ports: ['{web}:3000']
    environment: {{BACKEND_URL: 'http://db:8080/'}}
    depends_on: [db]
  legacy:
    extends: {{service: legacy, file: lib/legacy.yaml}}
    ports: ['{legacy}:3000']
    environment: {{BACKEND_URL: 'http://db:8080/'}}
  legacy-strict:
    extends: {{service: legacy, file: lib/legacy.yaml}}
    ports: ['{strict}:3000']
    environment: {{BACKEND_URL: 'http://api:8080/'}}
  viewer:
    image: meshctl-demo/frontend:latest
    ports: ['{viewer}:3000']
    environment: {{BACKEND_URL: 'http://legacy:3000/'}}
    depends_on: [legacy]
networks:
  back:
    ipam:
      config:
        - subnet: {subnet}.0/24
secrets:
  token: {{file: ./token.txt}}
configs:
  settings: {{file: ./settings.conf}}
"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("db/compose.yaml"),
        format!(
            "\
services:
  db:
    build: .
    image: meshctl-test/db-{}:latest
    environment: {{VERSION: db}}
    networks:
      default:
      back:
        aliases: [database, pg]
        ipv4_address: {subnet}.10
",
            seed.project
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("db/Dockerfile"),
        "FROM meshctl-demo/backend:latest\nEXPOSE 8080\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("lib")).unwrap();
    std::fs::write(
        dir.join("lib/legacy.yaml"),
        "\
services:
  legacy:
    image: meshctl-demo/frontend:latest
    secrets: [token]
    configs: [{source: settings, target: /etc/settings.conf}]
    x-mesh: {enabled: false}
",
    )
    .unwrap();
    std::fs::write(dir.join("token.txt"), "s3cret\n").unwrap();
    std::fs::write(dir.join("settings.conf"), "level = 3\n").unwrap();
    std::fs::write(
        dir.join("mesh.yaml"),
        "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: api, namespace: default}
spec:
  selector: {matchLabels: {app: api}}
  mtls: {mode: STRICT}
",
    )
    .unwrap();
    ports
}

/// GETs `/` on a published port until `want` holds for the answer, within `limit`.
async fn eventually_get(port: u16, limit: Duration, want: impl Fn(u16, &str) -> bool) -> String {
    let t0 = Instant::now();
    loop {
        let last = get_at("127.0.0.1", port).await;
        if let Ok((status, text)) = &last
            && want(*status, text)
        {
            return text.clone();
        }
        assert!(
            t0.elapsed() < limit,
            "port {port}: no wanted answer within {limit:?}; last: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn named_networks_image_ports_and_services_out_of_the_mesh() {
    if !docker_available() {
        return;
    }
    let seed = Seed::new("forms");
    // The image `up --build` makes for db, removed however the test ends.
    struct Image(String);
    impl Drop for Image {
        fn drop(&mut self) {
            let _ = std::process::Command::new("docker")
                .args(["rmi", &self.0])
                .output();
        }
    }
    let _image = Image(format!("meshctl-test/db-{}:latest", seed.project));
    // A /24 no engine network uses, derived from the pid (172.31.16-239.0).
    let subnet = format!("172.31.{}", 16 + std::process::id() % 224);
    let [web, legacy, strict, viewer] = write_project(&seed, &subnet);
    let p = seed.project.clone();

    // `check` accepts what `up` runs.
    seed.ok(&["check"]);
    seed.ok(&["up", "-d", "--wait", "--build"]);

    // The mesh reaches db on the port its image EXPOSEs (nothing in compose names it).
    let body = eventually_get(web, Duration::from_secs(20), |s, _| s == 200).await;
    assert!(
        body.ends_with("Frontend says: Hello from Backend!"),
        "{body}"
    );

    // Out of the mesh: plaintext to db's PERMISSIVE port is accepted ...
    let body = eventually_get(legacy, Duration::from_secs(20), |s, _| s == 200).await;
    assert!(
        body.ends_with("Frontend says: Hello from Backend!"),
        "{body}"
    );
    // ... and refused by api's STRICT one (the frontend says it could not reach it).
    let body = eventually_get(strict, Duration::from_secs(20), |s, _| s == 500).await;
    // The name resolved and the connection opened (a DNS failure is `(Connect)`); the STRICT
    // inbound listener closed it without an answer.
    assert!(
        body.contains("Frontend could not reach the backend: client error (SendRequest)"),
        "{body}"
    );
    // The mesh reaches the service out of it by its compose name.
    let body = eventually_get(viewer, Duration::from_secs(20), |s, _| s == 200).await;
    assert!(
        body.ends_with("Frontend says: Frontend says: Hello from Backend!"),
        "{body}"
    );

    // No sidecar for the services out of the mesh; db's sidecar on `back` at its address
    // with its aliases.
    let names = docker(&[
        "ps",
        "--filter",
        &format!("label=io.meshctl.project={p}"),
        "--format",
        "{{.Names}}",
    ]);
    assert!(
        names.contains(&format!("{p}-legacy-1\n")) || names.ends_with(&format!("{p}-legacy-1"))
    );
    assert!(!names.contains(&format!("{p}-legacy-1-proxy")), "{names}");
    assert!(
        !names.contains(&format!("{p}-legacy-strict-1-proxy")),
        "{names}"
    );
    let back = format!("{p}_back");
    let endpoint = docker(&[
        "inspect",
        "--format",
        &format!("{{{{json (index .NetworkSettings.Networks \"{back}\")}}}}"),
        &format!("{p}-db-1-proxy"),
    ]);
    let endpoint: serde_json::Value = serde_json::from_str(&endpoint).unwrap();
    assert_eq!(endpoint["IPAddress"], format!("{subnet}.10"), "{endpoint}");
    let aliases: Vec<&str> = endpoint["Aliases"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    for alias in ["database", "pg"] {
        assert!(aliases.contains(&alias), "{aliases:?}");
    }
    let subnet_of = docker(&[
        "network",
        "inspect",
        "--format",
        "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
        &back,
    ]);
    assert_eq!(subnet_of, format!("{subnet}.0/24"));

    // The secret and the config, read-only at compose's places, also through `extends`.
    for app in ["legacy-1", "legacy-strict-1"] {
        let mounts = docker(&[
            "inspect",
            "--format",
            "{{range .Mounts}}{{.Destination}} {{.RW}} {{.Source}};{{end}}",
            &format!("{p}-{app}"),
        ]);
        for (target, file) in [
            ("/run/secrets/token", "token.txt"),
            ("/etc/settings.conf", "settings.conf"),
        ] {
            let want = format!(
                "{target} false {};",
                seed.dir.path().join(file).canonicalize().unwrap().display()
            );
            assert!(mounts.contains(&want), "{app}: {mounts} lacks {want}");
        }
    }

    // `down -v` removes the named network too.
    seed.ok(&["down", "-v"]);
    let left = leftovers(&p);
    assert!(left.values().all(String::is_empty), "{left:?}");
}

#[test]
fn check_and_up_refuse_the_same_file_with_every_problem_placed() {
    if !docker_available() {
        return;
    }
    let seed = Seed::new("formsbad");
    let path = seed.dir.path().join("compose.yaml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "  backend-v1:\n    image: meshctl-demo/backend:latest\n",
        "  backend-v1:\n    image: meshctl-demo/backend:latest\n    privileged: true\n    ipc: host\n    networks:\n      nowhere:\n",
    );
    std::fs::write(&path, text).unwrap();
    let mut reports = Vec::new();
    for args in [&["check"][..], &["up", "-d"][..]] {
        let out = seed.meshctl(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        let mut lines: Vec<String> = err
            .lines()
            .filter(|l| l.contains("compose.yaml:"))
            .map(|l| l[l.find("compose.yaml:").unwrap()..].to_string())
            .collect();
        lines.sort();
        lines.dedup();
        assert!(!lines.is_empty(), "meshctl {args:?} placed nothing:\n{err}");
        reports.push(lines);
    }
    for key in ["privileged", "ipc", "networks.nowhere"] {
        assert!(
            reports[0].iter().any(|l| l.contains(key)),
            "check does not name {key}: {:#?}",
            reports[0]
        );
    }
    assert_eq!(reports[0], reports[1], "check and up disagree");
    let left = leftovers(&seed.project);
    assert!(left.values().all(String::is_empty), "{left:?}");
}
