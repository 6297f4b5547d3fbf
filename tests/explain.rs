//! `meshctl explain` against what real proxies do: a control plane and four meshproxies in
//! control-plane mode on loopback (clients `web` and `other`, server versions `api-v1` and
//! `api-v2` with their own service accounts), one table of requests. For each, explain's
//! verdict is asserted, then the same request is sent through the client's proxy and the
//! answer asserted equal: the status, the response flag's status, the subset that served it
//! (the server proxy names itself in `x-forwarded-client-cert`'s `By=`), the identity explain
//! expects, the redirect's location, and the denying policy in the server proxy's metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use meshapi::proxy::SpiffeId;
use meshctl::api::ApiConfig;
use meshctl::ca::{CaConfig, RateLimitConfig};
use meshctl::controlplane::{ControlPlane, ControlPlaneConfig, PlacementSpec, ProjectSpec};
use meshctl::explain::{ExplainRequest, Explanation, Offline, explain};
use meshproxy::cp_mode::{ControlPlaneSettings, CpProxy, run_with_control_plane};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEADLINE: Duration = Duration::from_secs(20);

fn compose(app_port: u16) -> String {
    format!(
        r#"
name: explainh19
services:
  web:
    image: demo/web
    labels: {{ app: web }}
    x-mesh:
      serviceAccount: web-sa
  other:
    image: demo/other
    labels: {{ app: other }}
    x-mesh:
      serviceAccount: other-sa
  api-v1:
    image: demo/api
    labels: {{ app: api, version: v1 }}
    x-mesh:
      service: api
      serviceAccount: api-v1-sa
      ports: [{{ port: {app_port}, protocol: http }}]
  api-v2:
    image: demo/api
    labels: {{ app: api, version: v2 }}
    x-mesh:
      service: api
      serviceAccount: api-v2-sa
      ports: [{{ port: {app_port}, protocol: http }}]
"#
    )
}

const POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: default, namespace: default }
spec:
  mtls: { mode: STRICT }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: api, namespace: default }
spec:
  host: api
  subsets:
    - { name: v1, labels: { version: v1 } }
    - { name: v2, labels: { version: v2 } }
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: api, namespace: default }
spec:
  hosts: [api]
  http:
    - name: canary
      match:
        - headers: { x-canary: { exact: "yes" } }
      route:
        - destination: { host: api, subset: v2 }
    - name: moved
      match:
        - uri: { prefix: /old }
      redirect: { uri: /new }
    - name: teapot
      match:
        - uri: { exact: /tea }
      directResponse: { status: 418, body: { string: short and stout } }
    - name: api
      match:
        - uri: { prefix: /api }
      route:
        - destination: { host: api, subset: v1 }
          weight: 100
        - destination: { host: api, subset: v2 }
          weight: 0
      timeout: 3s
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: deny-secret, namespace: default }
spec:
  selector: { matchLabels: { app: api } }
  action: DENY
  rules:
    - to:
        - operation: { paths: ["/api/secret/*"] }
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: allow-web, namespace: default }
spec:
  selector: { matchLabels: { app: api } }
  action: ALLOW
  rules:
    - from:
        - source: { principals: [cluster.local/ns/default/sa/web-sa] }
"#;

/// A host-placement base port whose inbound/admin/health/stats ports are free.
fn free_base(proxies: u16) -> u16 {
    let mut base = 20000 + (std::process::id() as u16 % 20000);
    loop {
        let all_free = [0u16, 1000, 2000, 3000].iter().all(|off| {
            (0..proxies).all(|k| std::net::TcpListener::bind(("127.0.0.1", base + off + k)).is_ok())
        });
        if all_free {
            return base;
        }
        base = 20000 + (base - 20000 + 7) % 20000;
    }
}

fn id(sa: &str) -> SpiffeId {
    format!("spiffe://cluster.local/ns/default/sa/{sa}")
        .parse()
        .unwrap()
}

async fn start_proxy(cp: &ControlPlane, workload: &str, sa: &str) -> CpProxy {
    let identity = id(sa);
    let token = cp.ca().issue_token(&identity).unwrap();
    let mut s = ControlPlaneSettings::new(
        cp.local_addr().to_string(),
        token.as_str(),
        identity,
        cp.ca().root_pem(),
        workload,
        0,
    );
    s.config_backoff = (Duration::from_millis(50), Duration::from_millis(300));
    s.startup_timeout = DEADLINE;
    run_with_control_plane(s, meshproxy::app::Options::default())
        .await
        .unwrap()
}

/// The answer of one HTTP/1.1 request on a fresh connection: status and head.
/// `Host` is the URL's authority, as an application calling `http://api:<port>` sends it.
async fn send(
    addr: SocketAddr,
    authority: &str,
    method: &str,
    path: &str,
    headers: &[&str],
) -> (u16, String) {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).to_string()
    };
    let text = tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("request timed out");
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    (status, text)
}

/// What a case expects of both explain and the proxies.
struct Case {
    from: &'static str,
    method: &'static str,
    path: &'static str,
    headers: &'static [&'static str],
    /// Status the client sees.
    status: u16,
    /// The subset that serves it (forwarded requests).
    subset: Option<&'static str>,
    /// The denying policy (`namespace/name`), or `Some("")` for "no ALLOW policy matched".
    denied_by: Option<&'static str>,
    /// Explain's route decision and rule name.
    decision: &'static str,
    rule: Option<&'static str>,
}

const CASES: &[Case] = &[
    Case {
        from: "web",
        method: "GET",
        path: "/api/items",
        headers: &[],
        status: 200,
        subset: Some("v1"),
        denied_by: None,
        decision: "forward",
        rule: Some("api"),
    },
    Case {
        from: "web",
        method: "GET",
        path: "/api/items",
        headers: &["x-canary: yes"],
        status: 200,
        subset: Some("v2"),
        denied_by: None,
        decision: "forward",
        rule: Some("canary"),
    },
    Case {
        from: "web",
        method: "POST",
        path: "/api/secret/key",
        headers: &[],
        status: 403,
        subset: None,
        denied_by: Some("default/deny-secret"),
        decision: "forward",
        rule: Some("api"),
    },
    // The server normalizes the path before authorization: the dot segments do not hide it.
    Case {
        from: "web",
        method: "GET",
        path: "/api/public/../secret/key",
        headers: &[],
        status: 403,
        subset: None,
        denied_by: Some("default/deny-secret"),
        decision: "forward",
        rule: Some("api"),
    },
    Case {
        from: "other",
        method: "GET",
        path: "/api/items",
        headers: &[],
        status: 403,
        subset: None,
        denied_by: Some(""),
        decision: "forward",
        rule: Some("api"),
    },
    Case {
        from: "web",
        method: "GET",
        path: "/nowhere",
        headers: &[],
        status: 404,
        subset: None,
        denied_by: None,
        decision: "noRoute",
        rule: None,
    },
    Case {
        from: "web",
        method: "GET",
        path: "/old/page",
        headers: &[],
        status: 301,
        subset: None,
        denied_by: None,
        decision: "redirect",
        rule: Some("moved"),
    },
    Case {
        from: "other",
        method: "GET",
        path: "/tea",
        headers: &[],
        status: 418,
        subset: None,
        denied_by: None,
        decision: "directResponse",
        rule: Some("teapot"),
    },
];

/// The verdict explain gives for `case`, asserted against the case's expectations.
fn explained(offline: &Offline<'_>, case: &Case, port: u16) -> Explanation {
    let headers: Vec<String> = case.headers.iter().map(|h| h.to_string()).collect();
    let url = format!("http://api:{port}{}", case.path);
    let req = ExplainRequest::new(case.from, case.method, &url, &headers).unwrap();
    let x = explain(offline, &req).unwrap();
    let what = format!("{} {} from {}", case.method, case.path, case.from);
    assert_eq!(x.route.decision, case.decision, "{what}: {x:#?}");
    assert_eq!(x.route.rule_name.as_deref(), case.rule, "{what}");
    let status = x.verdict.status.unwrap_or(200);
    assert_eq!(status, case.status, "{what}: {}", x.verdict.summary);
    let live: Vec<_> = x.backends.iter().filter(|b| b.weight > 0).collect();
    if let Some(subset) = case.subset {
        assert_eq!(live.len(), 1, "{what}: one live subset");
        assert_eq!(live[0].subset.as_deref(), Some(subset), "{what}");
    }
    if let Some(policy) = case.denied_by {
        let a = live[0].endpoints[0].authorization.as_ref().unwrap();
        assert!(!a.allowed, "{what}");
        assert_eq!(a.policy.as_deref().unwrap_or(""), policy, "{what}");
    }
    x
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn explain_agrees_with_what_the_proxies_do() {
    let echo = meshtest::echo::EchoServer::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("compose.yaml"), compose(echo.port())).unwrap();
    std::fs::create_dir(dir.path().join("mesh")).unwrap();
    std::fs::write(dir.path().join("mesh/policies.yaml"), POLICIES).unwrap();
    let config = ControlPlaneConfig {
        project: ProjectSpec {
            working_dir: dir.path().to_path_buf(),
            ..ProjectSpec::default()
        },
        api: ApiConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            ..ApiConfig::default()
        },
        ca: CaConfig {
            rate_limit: RateLimitConfig {
                burst: 1000,
                refill_every: Duration::from_millis(1),
            },
            ..CaConfig::default()
        },
        placement: PlacementSpec::Host {
            base_port: free_base(4),
        },
        watch: false,
        ..ControlPlaneConfig::default()
    };
    let cp = ControlPlane::start(config).await.unwrap();
    let servers = [
        start_proxy(&cp, "api-v1", "api-v1-sa").await,
        start_proxy(&cp, "api-v2", "api-v2-sa").await,
    ];

    let spec = ProjectSpec {
        working_dir: dir.path().to_path_buf(),
        ..ProjectSpec::default()
    };
    let loaded = meshmodel::load::load(&spec.load_options());
    let offline = Offline::new(&loaded, &dir.path().join(".mesh")).unwrap();

    // On one host the client proxies would bind the same VIPs: one client at a time.
    for (from, sa) in [("web", "web-sa"), ("other", "other-sa")] {
        let client = start_proxy(&cp, from, sa).await;
        for case in CASES.iter().filter(|c| c.from == from) {
            check_case(&offline, case, &client, &servers, &echo).await;
        }
        client.shutdown().await;
    }
}

/// Explains `case`, sends it through `client`'s proxy, asserts both.
async fn check_case(
    offline: &Offline<'_>,
    case: &Case,
    client: &CpProxy,
    servers: &[CpProxy],
    echo: &meshtest::echo::EchoServer,
) {
    {
        let what = format!("{} {} from {}", case.method, case.path, case.from);
        let x = explained(offline, case, echo.port());
        let vip = (client.config.borrow().outbound.iter())
            .find(|o| o.service.starts_with("api"))
            .unwrap()
            .vip;
        let out = client.bound.outbound(vip).expect("outbound VIP listener");
        let before = echo.completed();
        let mut denied_before = std::collections::HashMap::new();
        for label in ["deny-secret.default", "none"] {
            denied_before.insert(label.to_string(), denials(servers, label).await);
        }
        let (status, head) = send(
            out,
            &format!("api:{}", echo.port()),
            case.method,
            case.path,
            case.headers,
        )
        .await;
        // Both: the proxies' answer is explain's.
        assert_eq!(
            Some(status),
            x.verdict.status.or(Some(200)),
            "{what}: proxies answered {head:?}, explain said {}",
            x.verdict.summary
        );
        if let Some(subset) = case.subset {
            assert_eq!(echo.completed(), before + 1, "{what}: not forwarded");
            let xfcc = echo.last().unwrap().headers["x-forwarded-client-cert"]
                .to_str()
                .unwrap()
                .to_string();
            let by = xfcc.split(';').next().unwrap().trim_start_matches("By=");
            let expected = x.backends.iter().find(|b| b.weight > 0).unwrap().endpoints[0]
                .expected_identity
                .clone()
                .unwrap();
            assert_eq!(by, expected, "{what}: served by another identity");
            assert_eq!(
                by,
                format!("spiffe://cluster.local/ns/default/sa/api-{subset}-sa")
            );
        } else {
            assert_eq!(echo.completed(), before, "{what}: reached the app: {head}");
        }
        if case.status == 301 {
            let location = x.route.location.as_deref().unwrap();
            assert!(
                head.lines()
                    .any(|l| l.eq_ignore_ascii_case(&format!("location: {location}"))),
                "{what}: explain's location {location} not in {head}"
            );
        }
        if let Some(policy) = case.denied_by {
            // The server proxy counted the denial under the policy explain named.
            let label = match policy.split_once('/') {
                Some((ns, name)) => format!("{name}.{ns}"),
                None => "none".to_string(),
            };
            assert_eq!(
                denials(servers, &label).await,
                denied_before.get(&label).copied().unwrap_or(0) + 1,
                "{what}: the proxies did not count one denial by {label}"
            );
        }
    }
}

/// Denials the server proxies counted under `policy` (`name.namespace` or `none`).
async fn denials(servers: &[CpProxy], policy: &str) -> u64 {
    let mut n = 0;
    for s in servers {
        let text = admin_get(s.bound.stats, "/stats/prometheus").await;
        let series = format!("meshproxy_authz_decisions_total{{policy=\"{policy}\",");
        n += text
            .lines()
            .filter(|l| l.starts_with(&series) && l.contains("result=\"denied\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    n
}

async fn admin_get(addr: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    text.split_once("\r\n\r\n")
        .map_or(text.clone(), |(_, b)| b.to_string())
}
