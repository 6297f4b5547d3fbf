//! RequestAuthentication through real proxies: client app -> proxy A -> mTLS -> proxy B
//! (STRICT) -> echo app. The RequestAuthentication and AuthorizationPolicy YAML is compiled by
//! meshmodel as the control plane does; tokens are signed in the test with keys generated for
//! it (RSA by `openssl genpkey`, P-256 and Ed25519 by ring).
//!
//! - `jwt_rules_table_over_mtls`: each rule field and each outcome (200, 401 with Envoy's
//!   body and `www-authenticate`, 403 from authorization) on inline keys.
//! - `jwks_uri_is_fetched_refreshed_and_fails_closed`: keys from a real HTTP server in the
//!   test: rotation picked up by the refresh, cached keys still verify while the server is
//!   down, and keys never fetched verify nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use meshapi::authz::MeshSecurity;
use meshmodel::istio::{AuthorizationPolicy, RequestAuthentication};
use meshmodel::model::Workload;
use meshproxy::Bound;
use meshtest::EchoServer;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde_json::{Value, json};

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A signing key with its `kid` and its public JWK.
enum Key {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

struct Signer {
    kid: String,
    key: Key,
}

impl Signer {
    /// A 2048-bit RSA key from `openssl genpkey` (ring signs with RSA keys but cannot make
    /// them); `None` without openssl.
    fn rsa(kid: &str) -> Option<Signer> {
        let out = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-outform",
                "DER",
            ])
            .output()
            .ok()?;
        assert!(out.status.success(), "openssl genpkey failed");
        // OpenSSL 3 writes a DER RSA key as PKCS#1; others write PKCS#8.
        let kp = RsaKeyPair::from_der(&out.stdout)
            .or_else(|_| RsaKeyPair::from_pkcs8(&out.stdout))
            .expect("an RSA private key");
        Some(Signer {
            kid: kid.into(),
            key: Key::Rsa(kp),
        })
    }

    fn ec(kid: &str) -> Signer {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        Signer {
            kid: kid.into(),
            key: Key::Ec(EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap()),
        }
    }

    fn ed(kid: &str) -> Signer {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Signer {
            kid: kid.into(),
            key: Key::Ed(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()),
        }
    }

    fn alg(&self) -> &'static str {
        match self.key {
            Key::Rsa(_) => "RS256",
            Key::Ec(_) => "ES256",
            Key::Ed(_) => "EdDSA",
        }
    }

    fn jwk(&self) -> Value {
        match &self.key {
            Key::Rsa(kp) => {
                let c = signature::RsaPublicKeyComponents::<Vec<u8>>::from(kp.public());
                json!({"kty": "RSA", "kid": self.kid, "alg": "RS256", "n": b64(&c.n), "e": b64(&c.e)})
            }
            Key::Ec(kp) => {
                let p = kp.public_key().as_ref();
                json!({"kty": "EC", "kid": self.kid, "crv": "P-256", "x": b64(&p[1..33]), "y": b64(&p[33..65])})
            }
            Key::Ed(kp) => {
                json!({"kty": "OKP", "kid": self.kid, "crv": "Ed25519", "x": b64(kp.public_key().as_ref())})
            }
        }
    }

    /// A compact JWS of `claims`, with header `alg` (default this key's) and this `kid`.
    fn token_as(&self, alg: &str, claims: &Value) -> String {
        let header = json!({"alg": alg, "kid": self.kid, "typ": "JWT"});
        let msg = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let sig = match &self.key {
            Key::Rsa(kp) => {
                let mut sig = vec![0; kp.public().modulus_len()];
                kp.sign(&signature::RSA_PKCS1_SHA256, &rng, msg.as_bytes(), &mut sig)
                    .unwrap();
                sig
            }
            Key::Ec(kp) => kp.sign(&rng, msg.as_bytes()).unwrap().as_ref().to_vec(),
            Key::Ed(kp) => kp.sign(msg.as_bytes()).as_ref().to_vec(),
        };
        format!("{msg}.{}", b64(&sig))
    }

    fn token(&self, claims: &Value) -> String {
        self.token_as(self.alg(), claims)
    }
}

/// `token` with one character of its signature changed.
fn flip_signature(token: &str) -> String {
    let mut t = token.to_string();
    let i = t.rfind('.').unwrap() + 5;
    let c = if &t[i..=i] == "A" { "B" } else { "A" };
    t.replace_range(i..=i, c);
    t
}

fn jwks(signers: &[&Signer]) -> String {
    json!({"keys": signers.iter().map(|s| s.jwk()).collect::<Vec<_>>()}).to_string()
}

fn backend_workload() -> Workload {
    Workload {
        compose_name: "backend".into(),
        service: "backend".into(),
        namespace: "default".into(),
        service_account: "backend".into(),
        labels: BTreeMap::from([("app".into(), "backend".into())]),
        replicas: 1,
        ports: vec![],
    }
}

fn from_yaml<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
    let docs =
        meshapi::yaml::parse(yaml, Default::default()).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let value = serde_json::to_value(docs[0].root.to_value()).unwrap();
    serde_json::from_value(value).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

/// Proxy B's config for revision `revision`: its STRICT HTTP port, with `ra` and `ap` compiled
/// for the backend workload as the control plane does.
fn backend_cfg(
    mesh: &Mesh,
    app_port: u16,
    revision: u64,
    ra: &str,
    ap: &str,
) -> meshapi::proxy::ProxyConfig {
    let mut cfg = parse(&format!(
        "{}inbound:\n  - {{ port: {app_port}, protocol: http, mode: STRICT }}\n",
        base_yaml(&mesh.identity_yaml("backend"), revision)
    ));
    let ra: RequestAuthentication = from_yaml(ra);
    assert!(ra.validate().is_empty(), "{:?}", ra.validate());
    cfg.request_authentication = meshmodel::compile::authn::compile_for_workload(
        &[&ra],
        &backend_workload(),
        meshapi::ROOT_NAMESPACE,
    );
    if !ap.is_empty() {
        let ap: AuthorizationPolicy = from_yaml(ap);
        assert!(ap.validate().is_empty(), "{:?}", ap.validate());
        let compiled = meshmodel::compile::authz::compile_for_workload(
            &[&ap],
            &backend_workload(),
            &MeshSecurity::default(),
        )
        .unwrap();
        cfg.authorization = Some(compiled);
    }
    let errs = cfg.validate();
    assert!(errs.is_empty(), "{errs:?}");
    cfg
}

/// A client proxy (frontend) sending to proxy B; returns its outbound address.
async fn client_proxy(mesh: &Mesh, app_port: u16, b: &Bound) -> (Bound, SocketAddr) {
    let yaml = client_yaml(
        &mesh.identity_yaml("frontend"),
        1,
        "127.0.0.1:0",
        "http",
        app_port,
        &[(b.inbound, "backend")],
    );
    let a = meshproxy::build(parse(&yaml)).await.unwrap();
    let out = a.outbound("127.0.0.1:0".parse().unwrap()).unwrap();
    (a, out)
}

/// What the caller saw.
#[derive(Debug)]
struct Seen {
    status: u16,
    body: String,
    www_authenticate: String,
}

async fn send(client: &Client, out: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Seen {
    let mut r = http::Request::builder().uri(format!("http://{out}{path}"));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = client
        .request(r.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Seen {
        status: parts.status.as_u16(),
        body: String::from_utf8_lossy(&body).into_owned(),
        www_authenticate: parts
            .headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
    }
}

const RSA_ISS: &str = "https://rsa.example";
const EC_ISS: &str = "https://ec.example";
const ED_ISS: &str = "https://ed.example";

/// One request and what the caller must see.
struct Case {
    name: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    status: u16,
    /// 401: Envoy's body; others: ignored.
    body: &'static str,
    /// Headers the application must (`Some`) or must not (`None`) receive.
    app: Vec<(&'static str, Option<String>)>,
}

fn case(name: &'static str, path: &'static str, status: u16) -> Case {
    Case {
        name,
        path,
        headers: Vec::new(),
        status,
        body: "",
        app: Vec::new(),
    }
}

impl Case {
    fn h(mut self, k: &'static str, v: impl Into<String>) -> Self {
        self.headers.push((k, v.into()));
        self
    }
    fn bearer(self, t: &str) -> Self {
        self.h("authorization", format!("Bearer {t}"))
    }
    fn body(mut self, b: &'static str) -> Self {
        self.body = b;
        self
    }
    fn app(mut self, k: &'static str, v: Option<String>) -> Self {
        self.app.push((k, v));
        self
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_rules_table_over_mtls() {
    let Some(rsa) = Signer::rsa("r1") else {
        meshtest::skip_unless(
            "openssl",
            false,
            "RSA test keys come from `openssl genpkey`",
        );
        return;
    };
    let ec = Signer::ec("e1");
    let ed = Signer::ed("d1");
    let ra = format!(
        r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  selector: {{matchLabels: {{app: backend}}}}
  jwtRules:
  - issuer: {RSA_ISS}
    audiences: [api, api2]
    jwks: '{}'
    outputPayloadToHeader: x-jwt-payload
    outputClaimToHeaders: [{{header: x-jwt-team, claim: org.team}}, {{header: x-jwt-sub, claim: sub}}]
  - issuer: {EC_ISS}
    jwks: '{}'
    fromHeaders: [{{name: x-token}}]
    fromParams: [tok]
    forwardOriginalToken: true
  - issuer: {ED_ISS}
    jwks: '{}'
    fromCookies: [session]
"#,
        jwks(&[&rsa]),
        jwks(&[&ec]),
        jwks(&[&ed])
    );
    let ap = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: jwt-rules, namespace: default}
spec:
  selector: {matchLabels: {app: backend}}
  rules:
  - to: [{operation: {paths: ["/open"]}}]
  - from: [{source: {requestPrincipals: ["https://rsa.example/alice", "*/bob"]}}]
    to: [{operation: {paths: ["/p"]}}]
  - from: [{source: {notRequestPrincipals: ["*"]}}]
    to: [{operation: {paths: ["/anon"]}}]
  - to: [{operation: {paths: ["/claims"]}}]
    when: [{key: "request.auth.claims[org][team]", values: [blue]}, {key: "request.auth.claims[groups]", values: ["adm*"]}]
  - to: [{operation: {paths: ["/aud"]}}]
    when: [{key: request.auth.audiences, values: [api2]}]
  - to: [{operation: {paths: ["/azp"]}}]
    when: [{key: request.auth.presenter, values: [web]}, {key: request.auth.principal, values: ["https://rsa.example/*"]}]
"#;
    let mesh = Mesh::new();
    let echo = EchoServer::start("app").await;
    let b = meshproxy::build(backend_cfg(&mesh, echo.port(), 1, &ra, ap))
        .await
        .unwrap();
    let (_a, out) = client_proxy(&mesh, echo.port(), &b).await;
    let client = http1_client();

    let t = now();
    let alice = json!({"iss": RSA_ISS, "sub": "alice", "aud": "api", "exp": t + 600,
        "org": {"team": "blue"}, "groups": ["admins", "dev"]});
    let alice_tok = rsa.token(&alice);
    let alice_payload = alice_tok.split('.').nth(1).unwrap().to_string();
    let tampered = {
        let mut p: Vec<&str> = alice_tok.split('.').collect();
        let forged = b64(json!({"iss": RSA_ISS, "sub": "mallory", "aud": "api"})
            .to_string()
            .as_bytes());
        p[1] = &forged;
        p.join(".")
    };
    let rsa_with = |extra: Value| {
        let mut c = json!({"iss": RSA_ISS, "sub": "alice", "aud": "api"});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        rsa.token(&c)
    };
    let bob_ec = ec.token(&json!({"iss": EC_ISS, "sub": "bob", "exp": t + 600}));
    let carol_ed = ed.token(&json!({"iss": ED_ISS, "sub": "carol", "exp": t + 600}));
    let red = rsa_with(json!({"org": {"team": "red"}, "groups": ["admins"]}));

    let cases = vec![
        // No token: authentication passes, authorization decides.
        case("no token, open path", "/open", 200),
        case("no token, principal required", "/p", 403),
        case("no token, notRequestPrincipals", "/anon", 200),
        // RS256 with every output.
        case("RS256 alice", "/p", 200)
            .bearer(&alice_tok)
            .app("authorization", None)
            .app("x-jwt-payload", Some(alice_payload.clone()))
            .app("x-jwt-team", Some("blue".into()))
            .app("x-jwt-sub", Some("alice".into())),
        case("lower-case bearer prefix", "/p", 200)
            .h("authorization", format!("bearer {alice_tok}")),
        case("token on notRequestPrincipals", "/anon", 403).bearer(&alice_tok),
        case("claims nested and list prefix", "/claims", 200).bearer(&alice_tok),
        case("claim mismatch", "/claims", 403).bearer(&red),
        case("audiences", "/aud", 200).bearer(&rsa_with(json!({"aud": ["x", "api2"]}))),
        case("audiences mismatch", "/aud", 403).bearer(&alice_tok),
        case("presenter", "/azp", 200).bearer(&rsa_with(json!({"azp": "web"}))),
        case("presenter missing", "/azp", 403).bearer(&alice_tok),
        // Invalid tokens: 401 whatever the path, Envoy's body.
        case("bad signature", "/open", 401)
            .bearer(&tampered)
            .body("Jwt verification fails"),
        case("expired", "/open", 401)
            .bearer(&rsa_with(json!({"exp": t - 120})))
            .body("Jwt is expired"),
        case("expired within 60 s skew", "/open", 200).bearer(&rsa_with(json!({"exp": t - 30}))),
        case("not yet valid", "/open", 401)
            .bearer(&rsa_with(json!({"nbf": t + 120})))
            .body("Jwt not yet valid"),
        case("nbf within skew", "/open", 200).bearer(&rsa_with(json!({"nbf": t + 30}))),
        case("wrong audience", "/open", 401)
            .bearer(&rsa_with(json!({"aud": "other"})))
            .body("Audiences in Jwt are not allowed"),
        case("no audience when audiences are set", "/open", 401)
            .bearer(&rsa.token(&json!({"iss": RSA_ISS, "sub": "alice"})))
            .body("Audiences in Jwt are not allowed"),
        case("unknown issuer", "/open", 401)
            .bearer(&rsa.token(&json!({"iss": "https://evil.example", "sub": "x"})))
            .body("Jwt issuer is not configured"),
        case("other issuer's key", "/open", 401)
            .bearer(&ec.token(&json!({"iss": RSA_ISS, "sub": "alice", "aud": "api"})))
            .body("Jwks doesn't have key to match kid or alg from Jwt"),
        case("alg none", "/open", 401).bearer(&format!(
            "{}.{}.",
            b64(br#"{"alg":"none"}"#),
            b64(json!({"iss": RSA_ISS, "sub": "alice", "aud": "api"})
                .to_string()
                .as_bytes())
        )),
        case("not a JWT", "/open", 401).bearer("abc").body(
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        ),
        // ES256 from a header without prefix (forwarded) and from a query parameter.
        case("ES256 header, forwarded", "/p", 200)
            .h("x-token", bob_ec.clone())
            .app("x-token", Some(bob_ec.clone())),
        case("ES256 query parameter", "/p?tok=", 200),
        // EdDSA from a cookie.
        case("EdDSA cookie, principal not allowed", "/p", 403)
            .h("cookie", format!("a=b; session={carol_ed}")),
        case("EdDSA cookie, open", "/open", 200).h("cookie", format!("session={carol_ed}")),
        case("EdDSA cookie, bad", "/open", 401)
            .h("cookie", format!("session={}", flip_signature(&carol_ed)))
            .body("Jwt verification fails"),
        // Output headers come only from a verified token.
        case("forged output header stripped", "/open", 200)
            .h("x-jwt-team", "blue")
            .app("x-jwt-team", None),
        // A cached verification is the same answer.
        case("RS256 alice again (cached)", "/p", 200).bearer(&alice_tok),
    ];
    let mut failures = Vec::new();
    for c in &cases {
        let path = if c.name == "ES256 query parameter" {
            format!("/p?tok={bob_ec}")
        } else {
            c.path.to_string()
        };
        let before = echo.completed();
        let headers: Vec<(&str, &str)> = c.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let seen = send(&client, out, &path, &headers).await;
        let reached = echo.completed() - before;
        let mut bad = Vec::new();
        if seen.status != c.status {
            bad.push(format!("status {} (body {:?})", seen.status, seen.body));
        }
        if c.status == 401 {
            if !c.body.is_empty() && seen.body != c.body {
                bad.push(format!("body {:?}", seen.body));
            }
            if !seen.www_authenticate.starts_with("Bearer realm=\"http://")
                || !seen.www_authenticate.ends_with("error=\"invalid_token\"")
            {
                bad.push(format!("www-authenticate {:?}", seen.www_authenticate));
            }
        }
        if (c.status == 200) != (reached == 1) {
            bad.push(format!("reached the app {reached} times"));
        }
        if c.status == 200 {
            let got = echo.last().unwrap();
            for (k, want) in &c.app {
                let have = got.headers.get(*k).map(|v| v.to_str().unwrap().to_string());
                if have != *want {
                    bad.push(format!("app header {k}: {have:?}, want {want:?}"));
                }
            }
        }
        if !bad.is_empty() {
            failures.push(format!("[{}] {}", c.name, bad.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// A document server on 127.0.0.1:0 (JWKS, OpenID configuration): each path answers what
/// `docs` holds for it (404 otherwise), over plain HTTP or, with a certificate, HTTPS; every
/// request waits `delay` first. Stopped by aborting its task.
struct JwksServer {
    addr: SocketAddr,
    docs: Arc<Mutex<BTreeMap<String, String>>>,
    hits: Arc<std::sync::atomic::AtomicUsize>,
    /// TLS handshakes that failed (a client that does not trust the certificate).
    refused: Arc<std::sync::atomic::AtomicUsize>,
    delay: Arc<Mutex<Duration>>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    /// Serves `doc` at `/jwks` over HTTP.
    async fn start(doc: String) -> JwksServer {
        let s = JwksServer::serve(None).await;
        s.set("/jwks", doc);
        s
    }

    /// Serves nothing yet, over HTTPS with `cert` when given.
    async fn serve(cert: Option<meshtest::Workload>) -> JwksServer {
        use hyper::service::service_fn;
        use hyper_util::rt::TokioIo;
        use rustls_pki_types::pem::PemObject;
        let acceptor = cert.map(|c| {
            let certs = rustls_pki_types::CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key =
                rustls_pki_types::PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap();
            let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
            tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let docs = Arc::new(Mutex::new(BTreeMap::new()));
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let delay = Arc::new(Mutex::new(Duration::ZERO));
        let (d, h, r, w) = (docs.clone(), hits.clone(), refused.clone(), delay.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    continue;
                };
                let (d, h, r, w) = (d.clone(), h.clone(), r.clone(), w.clone());
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let doc = d.lock().unwrap().get(req.uri().path()).cloned();
                        let wait = *w.lock().unwrap();
                        async move {
                            tokio::time::sleep(wait).await;
                            let resp = match doc {
                                Some(body) => http::Response::new(Full::new(Bytes::from(body))),
                                None => http::Response::builder()
                                    .status(404)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            };
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(s), svc).await;
                        }
                        Some(a) => match a.accept(s).await {
                            Ok(tls) => {
                                let _ = http.serve_connection(TokioIo::new(tls), svc).await;
                            }
                            Err(_) => {
                                r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                        },
                    }
                });
            }
        });
        JwksServer {
            addr,
            docs,
            hits,
            refused,
            delay,
            task,
        }
    }

    fn set(&self, path: &str, doc: String) {
        self.docs.lock().unwrap().insert(path.to_string(), doc);
    }

    fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn refused(&self) -> usize {
        self.refused.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn ra_uri(uri: &str) -> String {
    format!(
        r#"apiVersion: security.istio.io/v1beta1
kind: RequestAuthentication
metadata: {{name: remote, namespace: default}}
spec:
  jwtRules:
  - issuer: https://remote.example
    jwksUri: {uri}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_uri_is_fetched_refreshed_and_fails_closed() {
    let k1 = Signer::ec("k1");
    let k2 = Signer::ed("k2");
    let server = JwksServer::start(jwks(&[&k1])).await;
    let mesh = Mesh::new();
    let echo = EchoServer::start("app").await;
    let mut cfg = backend_cfg(
        &mesh,
        echo.port(),
        1,
        &ra_uri(&format!("http://{}/jwks", server.addr)),
        "",
    );
    // Refreshed every 200 ms here; 5 minutes by default.
    cfg.request_authentication.as_mut().unwrap().jwks_refresh =
        meshapi::proxy::Dur(Duration::from_millis(200));
    let b = meshproxy::build(cfg).await.unwrap();
    let (_a, out) = client_proxy(&mesh, echo.port(), &b).await;
    let client = http1_client();
    let claims =
        |sub: &str| json!({"iss": "https://remote.example", "sub": sub, "exp": now() + 600});
    let status = |tok: String| {
        let client = client.clone();
        async move {
            send(
                &client,
                out,
                "/",
                &[("authorization", &format!("Bearer {tok}"))],
            )
            .await
            .status
        }
    };

    // Fetched by the proxy: k1 verifies.
    let t1 = k1.token(&claims("a"));
    meshtest::assert_eventually!(
        status(t1.clone()).await == 200,
        "a k1 token never passed; jwks hits {}",
        server.hits()
    );
    assert_eq!(
        status(k2.token(&claims("b"))).await,
        401,
        "k2 is not published yet"
    );

    // Rotation: k2 replaces k1 at the server; the next refresh takes it.
    server.set("/jwks", jwks(&[&k2]));
    meshtest::assert_eventually!(
        status(k2.token(&claims("c"))).await == 200,
        "the rotated key never verified"
    );
    // The k1 token verified (and cached) before is no longer accepted under the new keys.
    assert_eq!(status(t1.clone()).await, 401);

    // Server down: the last keys keep verifying (a fresh token, not a cached one).
    server.task.abort();
    for i in 0..3 {
        assert_eq!(
            status(k2.token(&claims(&format!("down-{i}")))).await,
            200,
            "cached keys stop verifying while the JWKS server is down"
        );
    }

    // Keys never fetched: a token is refused, a request without one passes authentication.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let cfg = backend_cfg(
        &mesh,
        echo.port(),
        2,
        &ra_uri(&format!("http://{dead_addr}/jwks")),
        "",
    );
    b.handle.apply(cfg).unwrap();
    let seen = send(
        &client,
        out,
        "/",
        &[(
            "authorization",
            &format!("Bearer {}", k2.token(&claims("d"))),
        )],
    )
    .await;
    assert_eq!(
        (seen.status, seen.body.as_str()),
        (401, "Jwks remote fetch is failed")
    );
    assert_eq!(send(&client, out, "/", &[]).await.status, 200);
}

/// A RequestAuthentication with one rule, `rule` a YAML flow mapping.
fn ra_rule(rule: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: remote, namespace: default}}\nspec:\n  jwtRules:\n  - {rule}\n"
    )
}

/// Where a rule's keys come from and whether they verify: an `https://` jwksUri trusted
/// through the mesh's roots (by IP address and by DNS name), one whose certificate the proxy
/// must refuse (a CA outside the mesh, a name mismatch), OpenID discovery from the issuer over
/// HTTP and HTTPS, a discovery document without `jwks_uri`, and the rule's fetch `timeout`.
/// A source that fails never opens the door: a token gets 401, no token still passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_keys_over_https_discovery_and_timeout_table() {
    let key = Signer::ec("k1");
    let set = jwks(&[&key]);
    let mesh = Mesh::new();
    // HTTPS with a certificate from the mesh's CA, which the proxy trusts with the public roots.
    let trusted = JwksServer::serve(Some(mesh.ca.issue_server(&["127.0.0.1", "localhost"]))).await;
    let t = trusted.addr.port();
    trusted.set("/jwks", set.clone());
    trusted.set(
        "/.well-known/openid-configuration",
        json!({"issuer": format!("https://localhost:{t}"), "jwks_uri": format!("https://localhost:{t}/jwks")}).to_string(),
    );
    let outside = meshtest::TestCa::new("outside-root");
    let untrusted = JwksServer::serve(Some(outside.issue_server(&["127.0.0.1"]))).await;
    untrusted.set("/jwks", set.clone());
    let misnamed = JwksServer::serve(Some(mesh.ca.issue_server(&["other.example"]))).await;
    misnamed.set("/jwks", set.clone());
    let plain = JwksServer::serve(None).await;
    let p = plain.addr.port();
    plain.set(
        "/idp/.well-known/openid-configuration",
        json!({"jwks_uri": format!("http://127.0.0.1:{p}/keys")}).to_string(),
    );
    plain.set("/keys", set.clone());
    plain.set(
        "/bad/.well-known/openid-configuration",
        json!({"issuer": format!("http://127.0.0.1:{p}/bad")}).to_string(),
    );
    let slow = JwksServer::serve(None).await;
    slow.set("/jwks", set.clone());
    *slow.delay.lock().unwrap() = Duration::from_secs(1);

    // (case, issuer, the rule's key fields, the server it fetches from, verifies)
    let cases: Vec<(&str, String, String, &JwksServer, bool)> = vec![
        (
            "https jwksUri, IP address",
            "https://idp.test".into(),
            format!("jwksUri: 'https://127.0.0.1:{t}/jwks'"),
            &trusted,
            true,
        ),
        (
            "https jwksUri, DNS name",
            "https://idp2.test".into(),
            format!("jwksUri: 'https://localhost:{t}/jwks'"),
            &trusted,
            true,
        ),
        (
            "https, CA outside the mesh",
            "https://idp3.test".into(),
            format!(
                "jwksUri: 'https://127.0.0.1:{}/jwks'",
                untrusted.addr.port()
            ),
            &untrusted,
            false,
        ),
        (
            "https, name mismatch",
            "https://idp4.test".into(),
            format!("jwksUri: 'https://127.0.0.1:{}/jwks'", misnamed.addr.port()),
            &misnamed,
            false,
        ),
        (
            "OpenID discovery over http",
            format!("http://127.0.0.1:{p}/idp"),
            String::new(),
            &plain,
            true,
        ),
        (
            "OpenID discovery over https",
            format!("https://localhost:{t}"),
            String::new(),
            &trusted,
            true,
        ),
        (
            "discovery document without jwks_uri",
            format!("http://127.0.0.1:{p}/bad"),
            String::new(),
            &plain,
            false,
        ),
        (
            "timeout shorter than the server's answer",
            "https://idp5.test".into(),
            format!(
                "jwksUri: 'http://127.0.0.1:{}/jwks', timeout: 200ms",
                slow.addr.port()
            ),
            &slow,
            false,
        ),
        (
            "timeout longer than the server's answer",
            "https://idp6.test".into(),
            format!(
                "jwksUri: 'http://127.0.0.1:{}/jwks', timeout: 20s",
                slow.addr.port()
            ),
            &slow,
            true,
        ),
    ];
    let echo = EchoServer::start("app").await;
    let b = meshproxy::build(backend_cfg(
        &mesh,
        echo.port(),
        1,
        &ra_uri("http://127.0.0.1:1/none"),
        "",
    ))
    .await
    .unwrap();
    let (_a, out) = client_proxy(&mesh, echo.port(), &b).await;
    let client = http1_client();
    for (i, (name, issuer, fields, server, verifies)) in cases.iter().enumerate() {
        let sep = if fields.is_empty() { "" } else { ", " };
        let ra = ra_rule(&format!("{{issuer: '{issuer}'{sep}{fields}}}"));
        let before = (server.hits(), server.refused());
        b.handle
            .apply(backend_cfg(&mesh, echo.port(), 2 + i as u64, &ra, ""))
            .unwrap();
        let tok = key.token(&json!({"iss": issuer, "sub": "a", "exp": now() + 600}));
        let auth = format!("Bearer {tok}");
        if *verifies {
            meshtest::assert_eventually!(
                send(&client, out, "/", &[("authorization", &auth)])
                    .await
                    .status
                    == 200,
                "[{name}] the token never verified"
            );
        } else {
            // The proxy tried (and retried) the source: then a token is refused.
            meshtest::assert_eventually!(
                server.hits() + server.refused() >= before.0 + before.1 + 2,
                "[{name}] the proxy never tried its key source"
            );
            let seen = send(&client, out, "/", &[("authorization", &auth)]).await;
            assert_eq!(
                (seen.status, seen.body.as_str()),
                (401, "Jwks remote fetch is failed"),
                "[{name}]"
            );
        }
        assert_eq!(
            send(&client, out, "/", &[]).await.status,
            200,
            "[{name}] no token"
        );
    }
}

/// A CONNECT request is authenticated like any other, and what reaches the application (a
/// forward proxy) follows the rule: the token header is removed unless `forwardOriginalToken`,
/// claim headers are added.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_token_header_follows_forward_original_token() {
    let key = Signer::ec("c1");
    let mesh = Mesh::new();
    let (app, seen) = connect_app().await;
    let rule = |forward: bool| {
        ra_rule(&format!(
            "{{issuer: https://c.example, jwks: '{}', forwardOriginalToken: {forward}, outputClaimToHeaders: [{{header: x-jwt-sub, claim: sub}}]}}",
            jwks(&[&key])
        ))
    };
    let b = meshproxy::build(backend_cfg(&mesh, app.port(), 1, &rule(false), ""))
        .await
        .unwrap();
    let (_a, out) = client_proxy(&mesh, app.port(), &b).await;
    let tok = key.token(&json!({"iss": "https://c.example", "sub": "carol", "exp": now() + 600}));
    // (forwardOriginalToken, token, status, the app sees the token, the app sees x-jwt-sub)
    let cases = [
        (false, tok.clone(), 200, false, true),
        (true, tok.clone(), 200, true, true),
        (false, flip_signature(&tok), 401, false, false),
    ];
    for (i, (forward, token, status, token_seen, sub_seen)) in cases.into_iter().enumerate() {
        b.handle
            .apply(backend_cfg(
                &mesh,
                app.port(),
                2 + i as u64,
                &rule(forward),
                "",
            ))
            .unwrap();
        let before = seen.lock().unwrap().len();
        let mut s = tokio::net::TcpStream::connect(out).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(
            &mut s,
            format!(
                "CONNECT api.example.test:443 HTTP/1.1\r\nHost: api.example.test:443\r\nAuthorization: Bearer {token}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let head = read_head(&mut s).await;
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status}")),
            "[case {i}] {head}"
        );
        let heads = seen.lock().unwrap().clone();
        if status != 200 {
            assert_eq!(
                heads.len(),
                before,
                "[case {i}] a refused CONNECT reached the app"
            );
            continue;
        }
        let got = heads[before..].join("").to_ascii_lowercase();
        assert_eq!(
            got.contains("authorization: bearer"),
            token_seen,
            "[case {i}] {got}"
        );
        assert_eq!(
            got.contains("x-jwt-sub: carol"),
            sub_seen,
            "[case {i}] {got}"
        );
    }
}
