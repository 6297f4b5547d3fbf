//! The web console in a real browser: Debian's `chromium` driven by `chromedriver` over
//! WebDriver (plain HTTP, [`WebDriver`] below), against `meshctl dashboard` on the seed example
//! running on the real Docker engine under steady load. In order:
//!
//! 1. the graph shows frontend -> backend, backend with versions v1 and v2;
//! 2. a live edit of the VirtualService's split (90/10 -> 10/90) shows on the service page:
//!    configured weights and the live split, each within a bounded wait (the time is printed);
//! 3. breaking backend v1 (`/admin/fail`) shows its endpoint ejected;
//! 4. a live DENY policy shows the denied calls with the policy's name;
//! 5. the config view shows the new revision and the diff naming the policy; the explain
//!    form explains the same call as denied by it.
//!
//! Screenshots of every view go to `$CARGO_TARGET_TMPDIR/console/`, and into `docs/console/`
//! when `MESHCTL_UPDATE_SCREENSHOTS=1`. The page's size and first-render time are printed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod docker_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use docker_support::*;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// A child process killed (by its own id) when dropped.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A WebDriver session on a chromedriver of our own.
struct WebDriver {
    http: Client<HttpConnector, Full<Bytes>>,
    base: String,
    session: String,
    _driver: Kid,
}

impl WebDriver {
    async fn start() -> WebDriver {
        let port = free_port();
        let driver = Kid(Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"));
        let http = Client::builder(TokioExecutor::new()).build_http();
        let mut wd = WebDriver {
            http,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            _driver: driver,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while wd.call("GET", "/status", None).await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver never answered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,960"]
            }
        }}});
        let v = wd.call("POST", "/session", Some(caps)).await.unwrap();
        wd.session = v["sessionId"].as_str().unwrap().to_string();
        wd
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(Duration::from_secs(30), self.http.request(req))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {}", v["value"]));
        }
        Ok(v["value"].clone())
    }

    async fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.call(method, &path, body)
            .await
            .unwrap_or_else(|e| panic!("webdriver {method} {path}: {e}"))
    }

    async fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })))
            .await;
    }

    /// Runs `script` (a function body) in the page and returns its value.
    async fn js(&self, script: &str) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// The element `css` selects (waits for it up to 20 s).
    async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let path = format!("/session/{}/element", self.session);
            let body = json!({"using": "css selector", "value": css});
            if let Ok(v) = self.call("POST", &path, Some(body)).await
                && let Some(id) = v.as_object().and_then(|o| o.values().next())
            {
                return id.as_str().unwrap().to_string();
            }
            assert!(Instant::now() < deadline, "no element {css}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn click(&self, css: &str) {
        let el = self.find(css).await;
        self.session_call("POST", &format!("/element/{el}/click"), Some(json!({})))
            .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css).await;
        self.session_call("POST", &format!("/element/{el}/clear"), Some(json!({})))
            .await;
        self.session_call(
            "POST",
            &format!("/element/{el}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Saves a PNG of the viewport as `name`.png in the artifacts directory (and docs/console/
    /// when asked).
    async fn screenshot(&self, name: &str) {
        let b64 = self.session_call("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        let dir = artifacts();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), &png).unwrap();
        if std::env::var("MESHCTL_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
            let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/console");
            std::fs::create_dir_all(&docs).unwrap();
            std::fs::write(docs.join(format!("{name}.png")), &png).unwrap();
        }
    }

    /// Polls `script` until it returns true, up to `within`; the time it took.
    async fn until(&self, what: &str, within: Duration, script: &str) -> Duration {
        let t0 = Instant::now();
        loop {
            if self.js(script).await == Value::Bool(true) {
                return t0.elapsed();
            }
            assert!(t0.elapsed() < within, "{what}: not shown within {within:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for WebDriver {
    /// Ends the session (Chromium with it) before chromedriver is killed, even when a step
    /// failed: a plain blocking `DELETE`, bounded by its timeouts.
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let Some(addr) = self.base.strip_prefix("http://") else {
            return;
        };
        let Ok(mut s) = std::net::TcpStream::connect(addr) else {
            return;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let req = format!(
            "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n",
            self.session
        );
        if s.write_all(req.as_bytes()).is_ok() {
            let _ = s.read_to_end(&mut Vec::new());
        }
    }
}

fn chromium() -> String {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or(&"chromium")
        .to_string()
}

fn artifacts() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("console")
}

fn browser_available() -> bool {
    let ok = Command::new("chromedriver")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        && Command::new(chromium())
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    !meshtest::skip_unless(
        "chromium",
        ok,
        "Debian's chromium and chromium-driver are not installed; the console's browser test did not run",
    )
}

const SPLIT_10_90: &str = r#"# Edited live by the console test: 10/90.
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: backend
  namespace: default
spec:
  hosts:
    - backend
  http:
    - route:
        - destination:
            host: backend
            subset: v1
          weight: 10
        - destination:
            host: backend
            subset: v2
          weight: 90
      retries:
        attempts: 3
        perTryTimeout: 100ms
      timeout: 500ms
"#;

const DENY: &str = r#"# Added live by the console test.
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-backend-maintenance
  namespace: default
spec:
  selector:
    matchLabels:
      app: backend
  action: DENY
  rules:
    - to:
        - operation:
            methods: ["GET"]
"#;

/// The dashboard's first bytes: the page and its script.
async fn page_size(port: u16) -> usize {
    let mut total = 0;
    for path in ["/", "/app.js"] {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match get_path(port, path).await {
                Ok(body) => {
                    total += body.len();
                    break;
                }
                Err(e) => assert!(Instant::now() < deadline, "dashboard {path}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    total
}

async fn get_path(port: u16, path: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no head")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(head.lines().next().unwrap_or_default().to_string());
    }
    Ok(body.to_string())
}

/// Steady load on the frontend until `stop` (at most 10 minutes, one request per 20 ms).
fn load(port: u16, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let end = Instant::now() + Duration::from_secs(600);
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) && Instant::now() < end {
            let _ = get(port, "/").await;
            sent += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sent
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_shows_the_mesh_live_in_chromium() {
    if !docker_available() || !browser_available() {
        return;
    }
    let seed = Seed::new("h19console");
    seed.ok(&["up", "-d", "--wait", "--build"]);
    let ui_port = free_port();
    let _dashboard = Kid(seed
        .command(&["dashboard", "--port", &ui_port.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .expect("start meshctl dashboard"));
    let size = page_size(ui_port).await;
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(seed.port, stop.clone());
    let wd = WebDriver::start().await;
    let ui = format!("http://127.0.0.1:{ui_port}/");

    // 1. The graph: frontend -> backend with two versions, with traffic.
    wd.goto(&format!("{ui}#/graph")).await;
    wd.until(
        "the graph's frontend -> backend edge with traffic and backend's two versions",
        Duration::from_secs(60),
        r#"const e = document.querySelector('[data-edge="frontend->backend"]');
           const v = [...document.querySelectorAll('[data-node="backend"] [data-version]')].map(x => x.dataset.version).sort().join();
           return !!e && Number(e.dataset.rps) > 0 && e.dataset.mtls === "mTLS" && v === "v1,v2";"#,
    )
    .await;
    let first_render = wd.js("return window.firstRenderMs").await;
    wd.screenshot("graph").await;

    // 2. The service page follows a live edit of the split.
    wd.goto(&format!("{ui}#/service/backend")).await;
    let live = |v: &str, op: &str, n: u32| {
        format!(
            r#"const r = document.querySelector('tr[data-version="{v}"]');
               return !!r && r.dataset.live !== "" && Number(r.dataset.live) {op} {n};"#
        )
    };
    wd.until(
        "the live 90/10 split",
        Duration::from_secs(30),
        &live("v1", ">", 60),
    )
    .await;
    std::fs::write(
        seed.dir.path().join("mesh/virtual-service.yaml"),
        SPLIT_10_90,
    )
    .unwrap();
    let configured = wd
        .until(
            "the configured 10/90 weights",
            Duration::from_secs(5),
            r#"const r = document.querySelector('tr[data-version="v2"]');
               return !!r && r.dataset.configured === "90";"#,
        )
        .await;
    let moved = wd
        .until(
            "the live split moving to v2",
            Duration::from_secs(20),
            &live("v2", ">", 60),
        )
        .await;
    eprintln!(
        "split edit: configured weights shown after {configured:?}, live split moved after {moved:?}"
    );
    wd.screenshot("service").await;

    // 3. Breaking v1 ejects it.
    let v1 = format!("{}-backend-v1-1", seed.project);
    backend_admin(&v1, "fail");
    wd.until(
        "backend v1's ejection",
        Duration::from_secs(30),
        r#"const r = document.querySelector('tr[data-endpoint="backend-v1/0"]');
           return !!r && r.dataset.ejected === "true";"#,
    )
    .await;
    wd.screenshot("service-ejected").await;
    backend_admin(&v1, "heal");

    // 4. A live DENY policy: the denials show with its name.
    std::fs::write(seed.dir.path().join("mesh/deny.yaml"), DENY).unwrap();
    wd.until(
        "the denial by deny-backend-maintenance",
        Duration::from_secs(30),
        r#"return !!document.querySelector('tr[data-policy="default/deny-backend-maintenance"]');"#,
    )
    .await;
    wd.screenshot("service-denied").await;

    // 5. The config view names the change; explain agrees with what the proxies did.
    wd.goto(&format!("{ui}#/config")).await;
    wd.until(
        "the config diff naming the new policy",
        Duration::from_secs(20),
        r#"const d = document.getElementById('diff');
           return !!d && d.textContent.includes('deny-backend-maintenance')
             && document.querySelectorAll('[data-proxy]').length === 3;"#,
    )
    .await;
    wd.screenshot("config").await;
    wd.goto(&format!("{ui}#/explain")).await;
    wd.type_into("#x-url", "http://backend:8080/").await;
    wd.click("button[type=submit]").await;
    wd.until(
        "explain's verdict",
        Duration::from_secs(20),
        r#"const v = document.getElementById('verdict');
           return !!v && v.textContent.includes('403 RBAC')
             && v.textContent.includes('default/deny-backend-maintenance');"#,
    )
    .await;
    wd.screenshot("explain").await;

    stop.store(true, Ordering::Relaxed);
    let sent = loader.await.unwrap();
    eprintln!(
        "console: page {size} bytes (index.html + app.js), first render {first_render} ms after \
         navigation start, {sent} requests of load; screenshots in {}",
        artifacts().display()
    );
    assert!(size < 64 * 1024, "the page is {size} bytes");
}
