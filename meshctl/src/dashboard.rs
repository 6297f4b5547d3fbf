//! `meshctl dashboard`: the web console, served by meshctl itself on 127.0.0.1 (a
//! non-loopback address only with `--listen`). One small page (plain JavaScript and SVG,
//! embedded in the binary: no CDN, works offline) over a read-only JSON API:
//!
//! - `GET /api/graph`: services (versions, replicas, kind) and calls (rps, success rate,
//!   p99, mTLS state, health) over the last few seconds ([`views::graph`]);
//! - `GET /api/service?name=S`: endpoints (state, identity, certificate expiry, ejection),
//!   the routes and DestinationRule that apply, configured weights next to the live split,
//!   recent errors by response flag, recent denials with the denying policy ([`views::service`]);
//! - `GET /api/config`: revision, ACK/NACK per proxy, the last reload with its errors and
//!   diff ([`views::config`]);
//! - `GET /api/explain?from=&method=&url=&header=`: [`crate::explain`].
//!
//! Metrics and status are read by [`collect`]; only GET is served.

pub mod collect;
pub mod views;

use std::convert::Infallible;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::controlplane::ProjectSpec;
use crate::project::ProjectArgs;
use collect::{Placement, Shared};

const INDEX_HTML: &str = include_str!("dashboard/assets/index.html");
const APP_JS: &str = include_str!("dashboard/assets/app.js");

/// `meshctl dashboard`.
#[derive(Debug, Clone, Args)]
pub struct DashboardArgs {
    /// Port to serve on.
    #[arg(long, default_value_t = 15800)]
    pub port: u16,
    /// Address to listen on; anything but loopback exposes the console (read-only) to the
    /// network.
    #[arg(long, value_name = "ADDR", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub listen: IpAddr,
    /// Open the console in the desktop's browser (`xdg-open`).
    #[arg(long)]
    pub open: bool,
    /// Host mode: read `meshctl serve`'s proxies at their host ports without asking the
    /// control plane (by default: every proxy the control plane lists, as `meshctl stats`).
    #[arg(long)]
    pub host: bool,
    /// Host mode's first inbound port (`meshctl serve --base-port`).
    #[arg(long, default_value_t = meshmodel::compile::DEFAULT_HOST_BASE_PORT)]
    pub base_port: u16,
}

/// Everything a request handler needs.
struct Console {
    spec: ProjectSpec,
    seen: Shared,
    kind: &'static str,
}

/// Runs `meshctl dashboard` until interrupted.
pub fn dashboard(project: &ProjectArgs, args: &DashboardArgs) -> anyhow::Result<ExitCode> {
    let spec = project.spec();
    let placement = if args.host {
        Placement::Host {
            base_port: args.base_port,
        }
    } else {
        Placement::Mesh
    };
    let rt = crate::docker::commands::runtime()?;
    rt.block_on(async {
        let addr = SocketAddr::new(args.listen, args.port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let bound = listener.local_addr()?;
        let url = format!("http://{bound}/");
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "meshctl dashboard: {url}")?;
            if !args.listen.is_loopback() {
                writeln!(
                    out,
                    "warning: listening on {} exposes the console (read-only) to the network",
                    args.listen
                )?;
            }
        }
        if args.open
            && let Err(e) = std::process::Command::new("xdg-open").arg(&url).spawn()
        {
            eprintln!("warning: cannot open a browser (xdg-open: {e}); open {url}");
        }
        let console = Arc::new(Console {
            spec: spec.clone(),
            seen: Shared::default(),
            kind: if args.host { "process" } else { "container" },
        });
        tokio::spawn(collect::run(spec, placement, console.seen.clone()));
        serve(listener, console).await
    })
}

async fn serve(
    listener: tokio::net::TcpListener,
    console: Arc<Console>,
) -> anyhow::Result<ExitCode> {
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "dashboard accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let console = console.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let console = console.clone();
                        async move { Ok::<_, Infallible>(handle(&console, &req)) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        }
    }
}

fn reply(status: StatusCode, kind: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(kind) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    reply(status, "application/json", v.to_string())
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": message }))
}

/// The query's values of `key`, percent-decoded.
fn params<'q>(query: &'q str, key: &'q str) -> impl Iterator<Item = String> + 'q {
    query.split('&').filter_map(move |kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| decode(v))
    })
}

fn decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escaped = match (b, bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) => hex(h).zip(hex(l)).map(|(h, l)| (h * 16 + l) as u8),
            _ => None,
        };
        match (b, escaped) {
            (_, Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (b, None) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn handle(console: &Console, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, "the console is read-only");
    }
    let query = req.uri().query().unwrap_or("");
    match req.uri().path() {
        "/" | "/index.html" => reply(StatusCode::OK, "text/html; charset=utf-8", INDEX_HTML),
        "/app.js" => reply(StatusCode::OK, "text/javascript; charset=utf-8", APP_JS),
        "/api/graph" => {
            let inv = load(&console.spec)
                .map(|l| meshmodel::model::Inventory::from_compose(l.mesh.compose.as_ref()))
                .unwrap_or_default();
            let seen = console.seen.lock().unwrap_or_else(|p| p.into_inner());
            json(StatusCode::OK, &views::graph(&inv, &seen, console.kind))
        }
        "/api/config" => {
            let seen = console.seen.lock().unwrap_or_else(|p| p.into_inner());
            json(StatusCode::OK, &views::config(&seen))
        }
        "/api/service" => {
            let Some(name) = params(query, "name").next() else {
                return error(StatusCode::BAD_REQUEST, "name= is required");
            };
            with_offline(console, |offline| {
                let seen = console.seen.lock().unwrap_or_else(|p| p.into_inner());
                match views::service(offline, &seen, &name) {
                    Some(v) => json(StatusCode::OK, &v),
                    None => error(StatusCode::NOT_FOUND, &format!("no mesh service {name:?}")),
                }
            })
        }
        "/api/explain" => {
            let get = |k| params(query, k).next().unwrap_or_default();
            let headers: Vec<String> = params(query, "header").filter(|h| !h.is_empty()).collect();
            let req = match crate::explain::ExplainRequest::new(
                &get("from"),
                &get("method"),
                &get("url"),
                &headers,
            ) {
                Ok(r) => r,
                Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
            };
            with_offline(console, |offline| {
                match crate::explain::explain(offline, &req) {
                    Ok(x) => match serde_json::to_value(&x) {
                        Ok(v) => json(StatusCode::OK, &v),
                        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                    },
                    Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
                }
            })
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

fn load(spec: &ProjectSpec) -> Option<meshmodel::load::Loaded> {
    let loaded = meshmodel::load::load(&spec.load_options());
    (!loaded.has_errors()).then_some(loaded)
}

/// Runs `f` on the project's files compiled as the control plane compiles them; a project
/// with errors is a 409 naming them (the config view shows where).
fn with_offline(
    console: &Console,
    f: impl FnOnce(&crate::explain::Offline<'_>) -> Response<Full<Bytes>>,
) -> Response<Full<Bytes>> {
    let loaded = meshmodel::load::load(&console.spec.load_options());
    match crate::explain::Offline::new(&loaded, &console.spec.working_dir.join(".mesh")) {
        Ok(o) => f(&o),
        Err(e) => error(StatusCode::CONFLICT, &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        let q = "from=frontend&url=http%3A%2F%2Fbackend%3A8080%2Fa%20b&header=x-a%3A+1&header=";
        assert_eq!(
            params(q, "url").next().as_deref(),
            Some("http://backend:8080/a b")
        );
        assert_eq!(params(q, "header").collect::<Vec<_>>(), ["x-a: 1", ""]);
        assert_eq!(decode("%zz%4"), "%zz%4");
    }
}
