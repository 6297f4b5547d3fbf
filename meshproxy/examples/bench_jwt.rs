//! Benchmark: what request authentication costs the inbound request path, in-process.
//!
//! `cargo run --release -p meshproxy --example bench_jwt` prints, measured in the same run:
//! - `baseline`: the same request (headers copied, as the proxy does) on a config without a
//!   RequestAuthentication;
//! - `cached`: the request with a token already verified once (the common case: a client sends
//!   the same token until it expires), through `meshproxy::authn::authenticate` and
//!   `rewrite_headers`, with ES256, RS256 (when `openssl` is there to make the key) and EdDSA;
//! - `uncached`: a full verification (signature, claims) per request, every token new.
//!
//! `--e2e DIR` instead writes `DIR/authn.yaml` (a `requestAuthentication` section with an
//! ES256 key) and `DIR/token` (a token it verifies, valid for a day) for `bench/run jwt`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use meshapi::authn::{Authenticator, JwtRule, RequestAuthentication, TokenHeader};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde_json::{Value, json};

const ROUNDS: usize = 1_000_000;
const UNCACHED: usize = 2_000;

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

enum Key {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

impl Key {
    fn ec() -> Key {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        Key::Ec(EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap())
    }

    fn ed() -> Key {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Key::Ed(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap())
    }

    fn rsa() -> Option<Key> {
        let out = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .args(["-outform", "DER"])
            .output()
            .ok()?;
        let kp = RsaKeyPair::from_der(&out.stdout)
            .or_else(|_| RsaKeyPair::from_pkcs8(&out.stdout))
            .ok()?;
        Some(Key::Rsa(kp))
    }

    fn alg(&self) -> &'static str {
        match self {
            Key::Rsa(_) => "RS256",
            Key::Ec(_) => "ES256",
            Key::Ed(_) => "EdDSA",
        }
    }

    fn jwks(&self) -> String {
        let jwk = match self {
            Key::Rsa(kp) => {
                let c = signature::RsaPublicKeyComponents::<Vec<u8>>::from(kp.public());
                json!({"kty": "RSA", "kid": "k", "n": b64(&c.n), "e": b64(&c.e)})
            }
            Key::Ec(kp) => {
                let p = kp.public_key().as_ref();
                json!({"kty": "EC", "kid": "k", "crv": "P-256", "x": b64(&p[1..33]), "y": b64(&p[33..65])})
            }
            Key::Ed(kp) => {
                json!({"kty": "OKP", "kid": "k", "crv": "Ed25519", "x": b64(kp.public_key().as_ref())})
            }
        };
        json!({ "keys": [jwk] }).to_string()
    }

    fn token(&self, claims: &Value) -> String {
        let header = json!({"alg": self.alg(), "kid": "k", "typ": "JWT"});
        let msg = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let sig = match self {
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
}

const ISSUER: &str = "https://issuer.example";

fn section(key: &Key) -> RequestAuthentication {
    RequestAuthentication {
        rules: vec![JwtRule {
            source: "default/bench".into(),
            issuer: ISSUER.into(),
            audiences: vec!["api".into()],
            jwks: Some(key.jwks()),
            jwks_uri: None,
            timeout: None,
            from_headers: vec![TokenHeader {
                name: "authorization".into(),
                prefix: "Bearer ".into(),
            }],
            from_params: vec!["access_token".into()],
            from_cookies: Vec::new(),
            forward_original_token: false,
            output_payload_to_header: None,
            output_claim_to_headers: Vec::new(),
        }],
        ..RequestAuthentication::default()
    }
}

fn claims(sub: &str) -> Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    json!({"iss": ISSUER, "sub": sub, "aud": "api", "exp": now + 86_400, "iat": now})
}

fn request(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", "backend:8080".parse().unwrap());
    h.insert("user-agent", "bench".parse().unwrap());
    h.insert("accept", "*/*".parse().unwrap());
    h.insert("authorization", format!("Bearer {token}").parse().unwrap());
    h
}

/// ns per request of the proxy's authentication step on `headers` (copied per request, as the
/// request head is per request), or of the copy alone with `auth` `None`.
fn per_request(auth: Option<&Authenticator>, headers: &HeaderMap, rounds: usize) -> f64 {
    let uri: http::Uri = "/api/items".parse().unwrap();
    let start = Instant::now();
    for _ in 0..rounds {
        let mut h = black_box(headers).clone();
        if let Some(a) = auth {
            let done = meshproxy::authn::authenticate(a, &uri, &h).unwrap();
            assert!(done.is_some());
            meshproxy::authn::rewrite_headers(a, done.as_ref(), &mut h);
        }
        black_box(h);
    }
    start.elapsed().as_nanos() as f64 / rounds as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--e2e") {
        let dir = std::path::PathBuf::from(args.get(i + 1).expect("--e2e DIR"));
        let key = Key::ec();
        let s = serde_json::to_string(&section(&key)).unwrap();
        std::fs::write(
            dir.join("authn.yaml"),
            format!("requestAuthentication: {s}\n"),
        )
        .unwrap();
        std::fs::write(dir.join("token"), key.token(&claims("bench"))).unwrap();
        return;
    }
    let mut keys = vec![Key::ec(), Key::ed()];
    match Key::rsa() {
        Some(k) => keys.insert(0, k),
        None => eprintln!("openssl not found: RS256 not measured"),
    }
    println!(
        "{:<6} {:>14} {:>14} {:>14} {:>16}",
        "alg", "baseline ns", "cached ns", "cached - base", "uncached us"
    );
    for key in &keys {
        let auth = Authenticator::new(&section(key), |_| unreachable!("inline keys"));
        let headers = request(&key.token(&claims("alice")));
        // Warm up (and verify once, so the token is cached).
        per_request(Some(&auth), &headers, 1000);
        per_request(None, &headers, 1000);
        // Interleaved halves, so a neighbour's load disturbs both the same way.
        let mut base = 0.0;
        let mut cached = 0.0;
        for _ in 0..2 {
            base += per_request(None, &headers, ROUNDS / 2) / 2.0;
            cached += per_request(Some(&auth), &headers, ROUNDS / 2) / 2.0;
        }
        let fresh: Vec<HeaderMap> = (0..UNCACHED)
            .map(|i| request(&key.token(&claims(&format!("user-{i}")))))
            .collect();
        let fresh_auth = Authenticator::new(&section(key), |_| unreachable!("inline keys"));
        let start = Instant::now();
        for h in &fresh {
            per_request(Some(&fresh_auth), h, 1);
        }
        let uncached = start.elapsed().as_nanos() as f64 / UNCACHED as f64 / 1000.0;
        println!(
            "{:<6} {:>14.0} {:>14.0} {:>14.0} {:>16.1}",
            key.alg(),
            base,
            cached,
            cached - base,
            uncached
        );
    }
    println!("goal: cached - base under 5000 ns per request");
}
