//! Access log lines: Istio's default text format (Envoy's `%START_TIME%`, method, path,
//! protocol, response code, flags and details, bytes, duration, upstream service time,
//! `x-forwarded-for`, user agent, request id, authority, upstream host and cluster,
//! addresses, server name, route name) plus the downstream and upstream peer identities, or
//! the same fields as one JSON object per line (Istio's `accessLogEncoding: JSON` keys).
//!
//! Lines never wait for the sink: [`Writer::write`] puts a line on a bounded queue, a task
//! writes batches of lines to the sink (stdout), and a full queue drops the line and counts it
//! (`meshproxy_access_log_dropped_total`).

use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use meshapi::telemetry::access_log::AccessLogEncoding;
use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{Outcome, TelemetryCounters};

/// Where access log lines go: the proxy's stdout unless a test gives another writer.
pub type Sink = Pin<Box<dyn AsyncWrite + Send>>;

/// Lines waiting for the sink at most; more are dropped and counted.
pub const QUEUE_LINES: usize = 1024;

/// Bytes written to the sink in one write at most.
const BATCH_BYTES: usize = 64 * 1024;

/// The queue in front of the access log sink.
pub struct Writer {
    tx: mpsc::Sender<String>,
    counters: Arc<TelemetryCounters>,
}

impl Writer {
    /// Starts the task that writes queued lines to `sink`.
    pub fn spawn(sink: Sink, counters: Arc<TelemetryCounters>) -> Writer {
        let (tx, rx) = mpsc::channel(QUEUE_LINES);
        tokio::spawn(drain(sink, rx, Arc::clone(&counters)));
        Writer { tx, counters }
    }

    /// Queues one line (newline included); drops and counts it when the sink is behind.
    pub fn write(&self, line: String) {
        if self.tx.try_send(line).is_err() {
            self.counters
                .access_log_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Writes queued lines to `sink` in batches until every sender is gone.
async fn drain(mut sink: Sink, mut rx: mpsc::Receiver<String>, counters: Arc<TelemetryCounters>) {
    let mut batch = String::new();
    while let Some(line) = rx.recv().await {
        batch.clear();
        batch.push_str(&line);
        let mut n = 1;
        while batch.len() < BATCH_BYTES {
            match rx.try_recv() {
                Ok(l) => {
                    batch.push_str(&l);
                    n += 1;
                }
                Err(_) => break,
            }
        }
        let written = sink.write_all(batch.as_bytes()).await;
        let flushed = sink.flush().await;
        if written.is_err() || flushed.is_err() {
            counters.access_log_dropped.fetch_add(n, Ordering::Relaxed);
        } else {
            counters.access_log_written.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// The line for `o` in `encoding`, newline included.
pub fn format(o: &Outcome, encoding: AccessLogEncoding) -> String {
    let f = Fields::of(o);
    match encoding {
        AccessLogEncoding::Json => {
            let mut s = serde_json::to_string(&f).unwrap_or_default();
            s.push('\n');
            s
        }
        AccessLogEncoding::Text => text(&f),
    }
}

/// RFC 3339 UTC with milliseconds, as Envoy's `%START_TIME%`.
pub fn start_time(t: std::time::SystemTime) -> String {
    let d = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        d.year(),
        u8::from(d.month()),
        d.day(),
        d.hour(),
        d.minute(),
        d.second(),
        d.millisecond()
    )
}

/// One line's fields, named as Istio's JSON access log names them.
#[derive(Debug, Serialize)]
pub struct Fields<'a> {
    pub start_time: String,
    pub method: Option<&'a str>,
    pub path: Option<&'a str>,
    pub protocol: &'a str,
    pub response_code: u16,
    pub response_flags: &'a str,
    pub response_code_details: &'a str,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Milliseconds.
    pub duration: u128,
    /// Milliseconds.
    pub upstream_service_time: Option<u128>,
    pub x_forwarded_for: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub authority: Option<&'a str>,
    pub upstream_host: Option<String>,
    pub upstream_cluster: Option<&'a str>,
    pub downstream_local_address: Option<String>,
    pub downstream_remote_address: String,
    pub requested_server_name: Option<&'a str>,
    pub route_name: Option<&'a str>,
    /// The downstream's verified SPIFFE ID (inbound mTLS).
    pub downstream_peer_uri_san: Option<String>,
    /// The SPIFFE ID the upstream had to present (outbound mTLS).
    pub upstream_peer_uri_san: Option<&'a str>,
    /// `inbound` or `outbound`: which side of the proxy this line is from.
    pub direction: &'static str,
}

impl<'a> Fields<'a> {
    pub fn of(o: &'a Outcome) -> Fields<'a> {
        let r = o.request.as_ref();
        let u = &o.upstream;
        Fields {
            start_time: start_time(o.start),
            method: r.map(|r| r.method.as_str()),
            path: r.map(|r| r.path.as_str()),
            protocol: o.protocol,
            response_code: o.response_code,
            response_flags: &o.response_flags,
            response_code_details: o.response_code_details,
            bytes_received: o.bytes_received,
            bytes_sent: o.bytes_sent,
            duration: o.duration.as_millis(),
            upstream_service_time: u.service_time.map(|t| t.as_millis()),
            x_forwarded_for: r.and_then(|r| r.x_forwarded_for.as_deref()),
            user_agent: r.and_then(|r| r.user_agent.as_deref()),
            request_id: r.and_then(|r| r.request_id.as_deref()),
            authority: r.and_then(|r| r.authority.as_deref()),
            upstream_host: u.host.map(|h| h.to_string()),
            upstream_cluster: u.cluster.as_deref(),
            downstream_local_address: o.downstream.local.map(|a| a.to_string()),
            downstream_remote_address: o.downstream.remote.to_string(),
            requested_server_name: o.downstream.sni.as_deref(),
            route_name: u.route.as_deref(),
            downstream_peer_uri_san: o.downstream.peer.as_ref().map(|p| p.to_string()),
            upstream_peer_uri_san: u.peer.as_deref(),
            direction: match o.direction {
                crate::metrics::Direction::Inbound => "inbound",
                crate::metrics::Direction::Outbound => "outbound",
            },
        }
    }
}

/// Istio's default text format (`%UPSTREAM_LOCAL_ADDRESS%`, `%CONNECTION_TERMINATION_DETAILS%`
/// and `%UPSTREAM_TRANSPORT_FAILURE_REASON%` are always `-`), then the downstream and upstream
/// peer identities:
///
/// `[START_TIME] "METHOD PATH PROTOCOL" CODE FLAGS DETAILS - "-" RECEIVED SENT DURATION
/// SERVICE_TIME "XFF" "USER_AGENT" "REQUEST_ID" "AUTHORITY" "UPSTREAM_HOST" CLUSTER -
/// LOCAL_ADDRESS REMOTE_ADDRESS SNI ROUTE DOWNSTREAM_PEER UPSTREAM_PEER`
fn text(f: &Fields<'_>) -> String {
    let d = |v: Option<&str>| v.unwrap_or("-").to_string();
    let mut s = String::with_capacity(320);
    let _ = writeln!(
        s,
        "[{}] \"{} {} {}\" {} {} {} - \"-\" {} {} {} {} \"{}\" \"{}\" \"{}\" \"{}\" \"{}\" {} - {} {} {} {} {} {}",
        f.start_time,
        d(f.method),
        d(f.path),
        f.protocol,
        f.response_code,
        f.response_flags,
        f.response_code_details,
        f.bytes_received,
        f.bytes_sent,
        f.duration,
        f.upstream_service_time
            .map_or_else(|| "-".to_string(), |t| t.to_string()),
        d(f.x_forwarded_for),
        d(f.user_agent),
        d(f.request_id),
        d(f.authority),
        d(f.upstream_host.as_deref()),
        d(f.upstream_cluster),
        d(f.downstream_local_address.as_deref()),
        f.downstream_remote_address,
        d(f.requested_server_name),
        d(f.route_name),
        d(f.downstream_peer_uri_san.as_deref()),
        d(f.upstream_peer_uri_san),
    );
    s
}
