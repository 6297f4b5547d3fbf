//! Upstream TLS on the client side, through real proxies and real listeners on loopback:
//! Istio's auto-mTLS compiled from PeerAuthentication (plaintext to a DISABLE port, mTLS to
//! STRICT and PERMISSIVE), a DestinationRule `tls: DISABLE` against a STRICT server (fails with
//! UF at once), and TLS origination (SIMPLE, MUTUAL) to a rustls server whose certificate
//! comes from a CA outside the mesh.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshapi::dns::{VipAllocator, VipRange};
use meshapi::proxy::{ProxyConfig, UpstreamTlsMode};
use meshmodel::compile::{CompileInput, FixedPlacement, ProxyKey, compile_proxy};
use meshmodel::load::{LoadOptions, load};
use meshmodel::model::Inventory;
use meshproxy::metrics::Direction;
use meshtest::EchoServer;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

const FLAGS: &str = "x-meshctl-response-flags";

// ---------------------------------------------------------------------------------------------
// Compiled meshes: the client's config comes from meshapi's compiler, as meshctl pushes it.

/// Compiles `frontend`'s config for a mesh where `backend` (service account `backend`) serves
/// `port` over HTTP behind the proxy at `backend_at`, with `policies` (PeerAuthentication,
/// DestinationRule) applied; identity and listeners are the test's.
fn compiled_frontend(
    mesh: &Mesh,
    port: u16,
    backend_at: SocketAddr,
    policies: &str,
) -> ProxyConfig {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("compose.yaml"),
        format!(
            "name: tls\nservices:\n  frontend:\n    image: f\n    labels: {{ app: frontend }}\n    x-mesh: {{ serviceAccount: frontend }}\n  backend:\n    image: b\n    labels: {{ app: backend }}\n    x-mesh: {{ serviceAccount: backend, ports: [ {{ port: {port}, protocol: http }} ] }}\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), policies).unwrap();
    let loaded = load(&LoadOptions::new(dir.path()));
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    let inv = Inventory::from_compose(loaded.mesh.compose.as_ref());
    let mut vips = VipAllocator::new(VipRange::default());
    vips.sync(
        inv.services
            .iter()
            .map(|s| (s.namespace.as_str(), s.name.as_str())),
    )
    .unwrap();
    let mut placement = FixedPlacement::default();
    placement
        .0
        .insert(("frontend".into(), 0), "127.0.0.1:1".parse().unwrap());
    placement.0.insert(("backend".into(), 0), backend_at);
    let input = CompileInput::new(&loaded.mesh, &inv, &vips, &placement, 1);
    let mut cfg = compile_proxy(
        &input,
        &ProxyKey {
            workload: "frontend".into(),
            instance: 0,
        },
    )
    .unwrap();
    let base = parse(&base_yaml(&mesh.identity_yaml("frontend"), 1));
    cfg.identity = base.identity;
    cfg.listeners = base.listeners;
    cfg.admin = base.admin;
    for o in &mut cfg.outbound {
        o.vip = SocketAddr::from(([127, 0, 0, 1], 0));
        o.target_port = Some(port);
    }
    assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
    cfg
}

fn peer_auth(mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{ name: backend, namespace: default }}\nspec:\n  selector: {{ matchLabels: {{ app: backend }} }}\n  mtls: {{ mode: {mode} }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_mtls_sends_plaintext_only_to_a_disable_server() {
    for mode in ["DISABLE", "STRICT", "PERMISSIVE"] {
        let mesh = Mesh::new();
        let echo = EchoServer::start("echo").await;
        let b = backend_proxy(&mesh, "backend", echo.port(), "http", mode).await;
        let cfg = compiled_frontend(&mesh, echo.port(), b.inbound, &peer_auth(mode));
        let ep = &cfg.services["backend.default"].endpoints[0];
        let expected = if mode == "DISABLE" {
            UpstreamTlsMode::Disable
        } else {
            UpstreamTlsMode::IstioMutual
        };
        assert_eq!(ep.tls_for(echo.port()).mode, expected, "{mode}");
        let a = meshproxy::build(cfg).await.unwrap();
        let out = a.outbound("127.0.0.1:0".parse().unwrap()).unwrap();
        let client = http1_client();
        for _ in 0..2 {
            let (status, headers, body) = get(&client, &format!("http://{out}/x")).await;
            assert_eq!(status, 200, "{mode}: {body}");
            assert_eq!(headers["x-echo-server"], "echo");
        }
        let seen = echo.last().unwrap();
        let xfcc = seen
            .headers
            .get("x-forwarded-client-cert")
            .map(|v| v.to_str().unwrap().to_string());
        if mode == "DISABLE" {
            assert_eq!(xfcc, None, "plaintext: the server saw no peer identity");
        } else {
            let xfcc = xfcc.unwrap_or_else(|| panic!("{mode}: no xfcc"));
            assert!(
                xfcc.contains(&format!("URI={}", spiffe("frontend"))),
                "{mode}: {xfcc}"
            );
        }
        // The server refused nothing because of its mode.
        assert_eq!(
            b.handle
                .metrics()
                .mode_rejected
                .load(std::sync::atomic::Ordering::Relaxed),
            0,
            "{mode}"
        );
        assert_eq!(a.handle.metrics().tls_failures(Direction::Outbound), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_rule_disable_to_a_strict_server_fails_at_once_with_uf() {
    let mesh = Mesh::new();
    let echo = EchoServer::start("echo").await;
    let b = backend_proxy(&mesh, "backend", echo.port(), "http", "STRICT").await;
    let policies = format!(
        "{}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{ name: backend, namespace: default }}\nspec:\n  host: backend\n  trafficPolicy:\n    tls: {{ mode: DISABLE }}\n",
        peer_auth("STRICT")
    );
    let cfg = compiled_frontend(&mesh, echo.port(), b.inbound, &policies);
    let a = meshproxy::build(cfg).await.unwrap();
    let out = a.outbound("127.0.0.1:0".parse().unwrap()).unwrap();
    let client = http1_client();
    // An upper bound so a hang fails the test instead of stalling it.
    let (status, headers, body) = tokio::time::timeout(
        Duration::from_secs(10),
        get(&client, &format!("http://{out}/x")),
    )
    .await
    .expect("the request must end, not hang");
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers[FLAGS], "UF", "{body}");
    assert!(body.contains("backend.default"), "{body}");
    assert_eq!(echo.completed(), 0, "nothing reached the app");
    // The STRICT server refused the plaintext bytes (they open no TLS handshake) and closed.
    assert!(
        b.handle
            .metrics()
            .mode_rejected
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    assert!(body.contains("require mTLS"), "{body}");
}

// ---------------------------------------------------------------------------------------------
// TLS origination to a server outside the mesh.

/// A CA outside the mesh.
struct OtherCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl OtherCa {
    fn new(name: &str) -> OtherCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        OtherCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf with DNS SANs `names` and common name `cn`: (cert PEM, key PEM).
    fn leaf(&self, cn: &str, names: &[&str]) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// What the TLS server saw of one handshake.
#[derive(Debug, Clone)]
struct Hello {
    sni: Option<String>,
    client_cert: bool,
    alpn: Option<String>,
}

/// A rustls HTTPS server (HTTP/1.1 and HTTP/2 by ALPN) answering 200 with `x-sni`; with
/// `client_ca` it requires a client certificate issued by it.
struct TlsServer {
    addr: SocketAddr,
    hellos: Arc<Mutex<Vec<Hello>>>,
}

async fn tls_server(cert_pem: &str, key_pem: &str, client_ca: Option<&str>) -> TlsServer {
    tls_server_with(cert_pem, key_pem, client_ca, rustls::DEFAULT_VERSIONS).await
}

/// [`tls_server`] speaking only `versions`.
async fn tls_server_with(
    cert_pem: &str,
    key_pem: &str,
    client_ca: Option<&str>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> TlsServer {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
                .unwrap();
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(v)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(certs, key).unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hellos = Arc::new(Mutex::new(Vec::new()));
    let h = hellos.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let h = h.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let (_, conn) = tls.get_ref();
                let hello = Hello {
                    sni: conn.server_name().map(str::to_string),
                    client_cert: conn.peer_certificates().is_some_and(|c| !c.is_empty()),
                    alpn: conn
                        .alpn_protocol()
                        .map(|a| String::from_utf8_lossy(a).into_owned()),
                };
                h.lock().unwrap().push(hello.clone());
                let svc = service_fn(move |req: Request<Incoming>| {
                    let hello = hello.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .header("x-sni", hello.sni.unwrap_or_default())
                                .header("x-client-cert", hello.client_cert.to_string())
                                .header("x-version", format!("{:?}", req.version()))
                                .header(
                                    "x-host",
                                    req.uri()
                                        .authority()
                                        .map(|a| a.to_string())
                                        .or_else(|| {
                                            req.headers()
                                                .get("host")
                                                .map(|h| h.to_str().unwrap_or("").to_string())
                                        })
                                        .unwrap_or_default(),
                                )
                                .body(Full::new(bytes::Bytes::from_static(b"external")))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    TlsServer { addr, hellos }
}

/// A client proxy with one outbound service `external` on 127.0.0.1:0 whose one endpoint is
/// outside the mesh at `addr`, connected as `tls_yaml` says (flow-style entry body).
async fn external_client(mesh: &Mesh, addr: SocketAddr, tls_yaml: &str) -> meshproxy::Bound {
    let mut y = base_yaml(&mesh.identity_yaml("frontend"), 1);
    y.push_str(&format!(
        "outbound:\n  - {{ service: external, vip: \"127.0.0.1:0\", protocol: http, targetPort: {} }}\n\
         services:\n  external:\n    endpoints:\n      - address: \"{addr}\"\n        tls: [ {{ {tls_yaml} }} ]\n",
        addr.port()
    ));
    meshproxy::build(parse(&y)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_tls_origination_verifies_ca_names_and_sends_sni() {
    let mesh = Mesh::new();
    let other = OtherCa::new("external-root");
    let (cert, key) = other.leaf("api", &["api.external.test", "alt.external.test"]);
    let server = tls_server(&cert, &key, None).await;
    let ca = write_file(mesh.path(), "external-ca.pem", &other.pem);
    let mesh_ca = mesh.path().join("roots.pem");
    let client = http1_client();

    // Right CA, explicit SNI: 200, the server saw the SNI and no client certificate.
    let a = external_client(
        &mesh,
        server.addr,
        &format!(
            "mode: SIMPLE, caCertificates: \"{}\", sni: alt.external.test",
            ca.display()
        ),
    )
    .await;
    let out = a.outbound("127.0.0.1:0".parse().unwrap()).unwrap();
    for _ in 0..2 {
        let (status, headers, body) = get(&client, &format!("http://{out}/v1")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, "external");
        assert_eq!(headers["x-sni"], "alt.external.test");
        assert_eq!(headers["x-client-cert"], "false");
    }
    let hellos = server.hellos.lock().unwrap().clone();
    assert_eq!(hellos[0].alpn.as_deref(), Some("h2"), "{hellos:?}");
    assert_eq!(a.handle.metrics().tls_failures(Direction::Outbound), 0);

    // No sni: the first subjectAltName is sent, and checked.
    let a = external_client(
        &mesh,
        server.addr,
        &format!(
            "mode: SIMPLE, caCertificates: \"{}\", subjectAltNames: [api.external.test]",
            ca.display()
        ),
    )
    .await;
    let out = a.outbound("127.0.0.1:0".parse().unwrap()).unwrap();
    let (status, headers, body) = get(&client, &format!("http://{out}/")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-sni"], "api.external.test");

    // The mesh's CA does not vouch for the external server: refused, UF, counted.
    let a = external_client(
        &mesh,
        server.addr,
        &format!(
            "mode: SIMPLE, caCertificates: \"{}\", sni: api.external.test",
            mesh_ca.display()
        ),
    )
    .await;
    let out = a.outbound("127.0.0.1:0".parse().unwrap()).unwrap();
    let (status, headers, body) = get(&client, &format!("http://{out}/")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers[FLAGS], "UF");
    assert!(body.contains("external"), "names the service: {body}");
    assert!(body.contains("TLS error"), "{body}");
    assert!(body.contains("UnknownIssuer"), "{body}");
    assert!(a.handle.metrics().tls_failures(Direction::Outbound) >= 1);

    // Right CA, but the certificate is not for the required name: refused.
    let a = external_client(
        &mesh,
        server.addr,
        &format!(
            "mode: SIMPLE, caCertificates: \"{}\", sni: api.external.test, subjectAltNames: [db.external.test]",
            ca.display()
        ),
    )
    .await;
    let out = a.outbound("127.0.0.1:0".parse().unwrap()).unwrap();
    let (status, headers, body) = get(&client, &format!("http://{out}/")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers[FLAGS], "UF");
    assert!(body.contains("NotValidForName"), "{body}");

    // insecureSkipVerify accepts the unknown issuer.
    let a = external_client(
        &mesh,
        server.addr,
        "mode: SIMPLE, insecureSkipVerify: true, sni: api.external.test",
    )
    .await;
    let out = a.outbound("127.0.0.1:0".parse().unwrap()).unwrap();
    let (status, _, body) = get(&client, &format!("http://{out}/")).await;
    assert_eq!(status, 200, "{body}");

    // A CA file that is not there: UF naming the file.
    let a = external_client(
        &mesh,
        server.addr,
        "mode: SIMPLE, caCertificates: /nonexistent/ca.pem",
    )
    .await;
    let out = a.outbound("127.0.0.1:0".parse().unwrap()).unwrap();
    let (status, headers, body) = get(&client, &format!("http://{out}/")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers[FLAGS], "UF");
    assert!(body.contains("/nonexistent/ca.pem"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_origination_presents_the_configured_client_certificate() {
    let mesh = Mesh::new();
    let server_ca = OtherCa::new("external-root");
    let client_ca = OtherCa::new("client-root");
    let (cert, key) = server_ca.leaf("db", &["db.external.test"]);
    let server = tls_server(&cert, &key, Some(&client_ca.pem)).await;
    let ca = write_file(mesh.path(), "external-ca.pem", &server_ca.pem);
    let (ccert, ckey) = client_ca.leaf("frontend-client", &["frontend.client.test"]);
    let ccert = write_file(mesh.path(), "client.pem", &ccert);
    let ckey = write_file(mesh.path(), "client.key", &ckey);
    let client = http1_client();

    let a = external_client(
        &mesh,
        server.addr,
        &format!(
            "mode: MUTUAL, caCertificates: \"{}\", clientCertificate: \"{}\", privateKey: \"{}\", sni: db.external.test",
            ca.display(),
            ccert.display(),
            ckey.display()
        ),
    )
    .await;
    let out = a.outbound("127.0.0.1:0".parse().unwrap()).unwrap();
    let (status, headers, body) = get(&client, &format!("http://{out}/q")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-client-cert"], "true");
    assert_eq!(headers["x-sni"], "db.external.test");
    // /config_dump does not show where the key is.
    assert!(
        a.handle.config().redacted().services["external"].endpoints[0].tls[0]
            .private_key
            .as_ref()
            .is_some_and(|p| p.to_str() == Some("<redacted>"))
    );

    // The same kind of server without a client certificate (SIMPLE): refused. TLS 1.2 only, so
    // the refusal is part of the handshake (TLS 1.3 reports it after the client's Finished,
    // when the request may already be on its way): a connect failure, `503 UF`.
    let (cert, key) = server_ca.leaf("db", &["db.external.test"]);
    let server = tls_server_with(
        &cert,
        &key,
        Some(&client_ca.pem),
        &[&rustls::version::TLS12],
    )
    .await;
    let a = external_client(
        &mesh,
        server.addr,
        &format!(
            "mode: SIMPLE, caCertificates: \"{}\", sni: db.external.test",
            ca.display()
        ),
    )
    .await;
    let out = a.outbound("127.0.0.1:0".parse().unwrap()).unwrap();
    let (status, headers, body) = get(&client, &format!("http://{out}/q")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers[FLAGS], "UF", "{body}");
    assert!(
        server.hellos.lock().unwrap().iter().all(|h| h.client_cert),
        "the server accepted no handshake without a certificate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_outside_the_mesh_is_http1_with_host() {
    let mesh = Mesh::new();
    let echo = EchoServer::start("plain-external").await;
    let a = external_client(&mesh, echo.addr(), "mode: DISABLE").await;
    let out = a.outbound("127.0.0.1:0".parse().unwrap()).unwrap();
    let client = http1_client();
    for i in 0..3 {
        let req = Request::get(format!("http://{out}/p/{i}"))
            .header("host", "api.example.test")
            .body(Full::new(bytes::Bytes::new()))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-echo-version"], "HTTP/1.1");
        assert_eq!(resp.headers()["x-echo-path"], format!("/p/{i}").as_str());
    }
    let seen = echo.last().unwrap();
    assert_eq!(seen.headers["host"], "api.example.test");
    assert!(seen.headers.get("x-forwarded-client-cert").is_none());
}

// ---------------------------------------------------------------------------------------------
// ServiceEntry: compiled from the mesh, reached through the entry's VIP.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_entry_hosts_are_reached_through_their_vip_plaintext_and_with_tls_origination() {
    let mesh = Mesh::new();
    let echo = EchoServer::start("plain-external").await;
    let other = OtherCa::new("external-root");
    let (cert, key) = other.leaf("api", &["api.payments.test"]);
    let server = tls_server(&cert, &key, None).await;
    let ca = write_file(mesh.path(), "payments-ca.pem", &other.pem);
    let policies = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: payments, namespace: default }}
spec:
  hosts: [api.payments.test]
  resolution: STATIC
  ports: [ {{ number: 18080, name: http, protocol: HTTP, targetPort: {tls_port} }} ]
  endpoints: [ {{ address: 127.0.0.1 }} ]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: plain, namespace: default }}
spec:
  hosts: [plain.payments.test]
  resolution: STATIC
  ports: [ {{ number: 18081, name: http, protocol: HTTP }} ]
  endpoints: [ {{ address: 127.0.0.1, ports: {{ http: {echo_port} }} }} ]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: payments, namespace: default }}
spec:
  host: api.payments.test
  trafficPolicy:
    tls: {{ mode: SIMPLE, caCertificates: "{ca}", sni: api.payments.test }}
"#,
        tls_port = server.addr.port(),
        echo_port = echo.port(),
        ca = ca.display(),
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("compose.yaml"),
        "name: se\nservices:\n  frontend:\n    image: f\n    labels: { app: frontend }\n    x-mesh: { serviceAccount: frontend }\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), policies).unwrap();
    let loaded = load(&LoadOptions::new(dir.path()));
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    let inv = Inventory::from_compose(loaded.mesh.compose.as_ref());
    let mut vips = VipAllocator::new(VipRange::default());
    let wanted = meshmodel::compile::vip_services(&loaded.mesh, &inv);
    vips.sync(wanted.iter().map(|(ns, n)| (ns.as_str(), n.as_str())))
        .unwrap();
    let mut placement = FixedPlacement::default();
    placement
        .0
        .insert(("frontend".into(), 0), "127.0.0.1:1".parse().unwrap());
    let input = CompileInput::new(&loaded.mesh, &inv, &vips, &placement, 1);
    let mut cfg = compile_proxy(
        &input,
        &ProxyKey {
            workload: "frontend".into(),
            instance: 0,
        },
    )
    .unwrap();
    let base = parse(&base_yaml(&mesh.identity_yaml("frontend"), 1));
    cfg.identity = base.identity;
    cfg.listeners = base.listeners;
    cfg.admin = base.admin;
    let a = meshproxy::build(cfg).await.unwrap();
    let api_vip = SocketAddr::from((vips.get("default", "api.payments.test").unwrap(), 18080));
    let plain_vip = SocketAddr::from((vips.get("default", "plain.payments.test").unwrap(), 18081));
    assert_eq!(
        a.outbound(api_vip),
        Some(api_vip),
        "listens on the entry's VIP"
    );
    let client = http1_client();
    // TLS origination: the app speaks plain HTTP to the VIP, the proxy speaks TLS outside.
    let req = Request::get(format!("http://{api_vip}/charge"))
        .header("host", "api.payments.test")
        .body(Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-sni"], "api.payments.test");
    assert_eq!(resp.headers()["x-host"], "api.payments.test");
    // Plaintext to the other entry, at the endpoint's own port.
    let (status, headers, body) = get(&client, &format!("http://{plain_vip}/ping")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-echo-server"], "plain-external");
    assert!(
        echo.last()
            .unwrap()
            .headers
            .get("x-forwarded-client-cert")
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_to_an_outside_endpoint_is_wrapped_in_the_originated_tls() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mesh = Mesh::new();
    let other = OtherCa::new("external-root");
    let (cert, key) = other.leaf("db", &["db.external.test"]);
    let server = tls_server(&cert, &key, None).await;
    let ca = write_file(mesh.path(), "external-ca.pem", &other.pem);
    let mut y = base_yaml(&mesh.identity_yaml("frontend"), 1);
    y.push_str(&format!(
        "outbound:\n  - {{ service: db, vip: \"127.0.0.1:0\", protocol: tcp, targetPort: {port} }}\n\
         services:\n  db:\n    endpoints:\n      - address: \"{addr}\"\n        tls: [ {{ mode: SIMPLE, caCertificates: \"{ca}\", sni: db.external.test }} ]\n",
        port = server.addr.port(),
        addr = server.addr,
        ca = ca.display(),
    ));
    let a = meshproxy::build(parse(&y)).await.unwrap();
    let out = a.outbound("127.0.0.1:0".parse().unwrap()).unwrap();
    // The app writes plaintext bytes; the server only speaks TLS, so an answer proves the
    // proxy wrapped them (no ALPN on TCP: the server falls back to HTTP/1.1).
    let mut s = tokio::net::TcpStream::connect(out).await.unwrap();
    s.write_all(b"GET /raw HTTP/1.1\r\nHost: db.external.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("the stream ends")
        .unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("x-sni: db.external.test"), "{text}");
    assert!(text.ends_with("external"), "{text}");
    let hellos = server.hellos.lock().unwrap().clone();
    assert_eq!(hellos.len(), 1, "{hellos:?}");
    assert_eq!(hellos[0].alpn, None);
}
