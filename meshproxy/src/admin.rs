//! Admin (15000: `/config_dump`, `/certs`, `/ready`, `/logging?level=`), health (15021:
//! `/healthz/ready`) and metrics (15090: `/stats/prometheus`) endpoints.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::context::Context;
use crate::http::{Body, full};

/// Which admin listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminPort {
    Admin,
    Health,
    Stats,
}

/// Runs one admin-side listener; it keeps answering while the proxy drains (health says
/// "draining") and closes when the drain forces the rest.
pub fn spawn(ctx: Arc<Context>, listener: TcpListener, port: AdminPort) {
    crate::listener::spawn_accept(
        ctx,
        listener,
        format!("{port:?}").to_lowercase(),
        crate::listener::Until::Forced,
        None,
        move |ctx, stream, _| serve(ctx, stream, port),
    );
}

/// Serves one admin-side connection (HTTP/1.1).
pub async fn serve(shared: Arc<Context>, stream: TcpStream, port: AdminPort) {
    let svc = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(route(&shared, port, &req)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10))
        .serve_connection(TokioIo::new(stream), svc);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "admin connection ended");
    }
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r
}

/// Why the proxy is not ready, or `None` when it is.
pub fn not_ready_reason(shared: &Context) -> Option<&'static str> {
    if shared.drain.is_draining() {
        Some("draining")
    } else if !shared.identity.is_ready() {
        Some("no workload certificate loaded")
    } else {
        None
    }
}

fn ready(shared: &Context) -> Response<Body> {
    match not_ready_reason(shared) {
        None => text(StatusCode::OK, "ready\n"),
        Some(why) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// `/certs`, after Envoy's: the trust roots in force (`ca_cert`) and our own chain
/// (`cert_chain`), each with subject, serial, SPIFFE ID (leaf), issuer and validity (Unix
/// seconds). Empty before the first certificate.
fn certs(shared: &Context) -> Vec<u8> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let describe = |der: &[u8]| {
        let Ok((_, x)) = X509Certificate::from_der(der) else {
            return serde_json::json!({"error": "does not parse"});
        };
        let uris: Vec<String> = x
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        serde_json::json!({
            "subject": x.subject().to_string(),
            "issuer": x.issuer().to_string(),
            "serial_number": x.raw_serial_as_string(),
            "subject_alt_names": uris,
            "valid_from": x.validity().not_before.timestamp(),
            "expiration_time": x.validity().not_after.timestamp(),
        })
    };
    let certificates: Vec<serde_json::Value> = shared
        .identity
        .current()
        .map(|c| {
            serde_json::json!({
                "ca_cert": c.root_certs().iter().map(|d| describe(d)).collect::<Vec<_>>(),
                "cert_chain": c.chain().iter().map(|d| describe(d)).collect::<Vec<_>>(),
            })
        })
        .into_iter()
        .collect();
    serde_json::to_vec_pretty(&serde_json::json!({ "certificates": certificates }))
        .unwrap_or_default()
}

/// What `/stats/prometheus` reads from the whole proxy at scrape time.
fn scrape(shared: &Context) -> crate::metrics::Scrape {
    let t = &shared.telemetry.counters;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let creds = shared.identity.current();
    crate::metrics::Scrape {
        clusters: shared.runtime.load().cluster_status(),
        pooled: shared.pool.pooled(),
        telemetry: [
            load(&t.access_log_written),
            load(&t.access_log_dropped),
            load(&t.spans_exported),
            load(&t.spans_dropped),
        ],
        cert_not_after: creds.as_ref().and_then(|c| c.not_after),
        roots_not_after: creds.as_ref().and_then(|c| c.roots_not_after),
        now: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
    }
}

fn route(shared: &Context, port: AdminPort, req: &Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    match (port, path) {
        (AdminPort::Health, "/healthz/ready") | (AdminPort::Admin, "/ready") => ready(shared),
        (AdminPort::Stats, "/stats/prometheus") => {
            let body = shared.metrics.render_with(Some(scrape(shared)));
            let mut r = text(StatusCode::OK, body);
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        (AdminPort::Admin, "/config_dump") => {
            let snap = shared.runtime.load();
            let cfg = snap.cfg.redacted();
            let dump = serde_json::json!({
                "config": cfg,
                "clusters": snap.cluster_status(),
                "certificate": shared.identity.current().map(|c| c.id.to_string()),
                "activeConnections": shared.drain.active(),
            });
            let body = serde_json::to_vec_pretty(&dump).unwrap_or_default();
            let mut r = text(StatusCode::OK, body);
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        (AdminPort::Admin, "/certs") => {
            let mut r = text(StatusCode::OK, certs(shared));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        (AdminPort::Admin, "/logging") => {
            let level = req
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .find_map(|kv| kv.strip_prefix("level="))
                .unwrap_or("");
            match (&shared.log_control, level) {
                (_, "") => text(StatusCode::BAD_REQUEST, "usage: /logging?level=<filter>\n"),
                (None, _) => text(
                    StatusCode::NOT_IMPLEMENTED,
                    "log level is not adjustable here\n",
                ),
                (Some(ctl), level) => match ctl(level) {
                    Ok(()) => text(StatusCode::OK, format!("log level set to {level}\n")),
                    Err(e) => text(StatusCode::BAD_REQUEST, format!("bad level: {e}\n")),
                },
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}
