//! Access log lines: the fields of one [`RequestOutcome`] or [`ConnectionOutcome`] as an
//! [`AccessLogLine`] (Istio's default
//! text format plus the peer identities, or the same fields as one JSON object per line with
//! Istio's `accessLogEncoding: JSON` keys; the format lives in `meshapi` so `meshctl top`
//! reads exactly what the proxy writes).
//!
//! Lines never wait for the sink: [`Writer::write`] puts a line on a bounded queue, a task
//! writes batches of lines to the sink (stdout), and a full queue drops the line and counts it
//! (`meshproxy_access_log_dropped_total`).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use meshapi::telemetry::access_log::AccessLogLine;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{
    ConnectionOutcome, Downstream, RequestOutcome, TelemetryCounters, Upstream, UpstreamFacts,
};

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

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn text(v: &Option<http::HeaderValue>) -> Option<String> {
    v.as_ref().and_then(|v| v.to_str().ok()).map(str::to_string)
}

fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// `UPSTREAM_HOST`, `UPSTREAM_CLUSTER` and the upstream's identity: the endpoint that
/// answered, else what the path recorded (inbound: the application).
fn upstream(
    up: Option<&Upstream>,
    facts: &UpstreamFacts,
) -> (Option<String>, Option<String>, Option<String>) {
    match up {
        Some(u) => (
            u.host().map(|h| h.to_string()),
            Some(u.cluster.name.clone()),
            u.cluster
                .endpoints
                .get(u.endpoint)
                .and_then(|e| e.identity.as_ref())
                .map(|i| i.to_string()),
        ),
        None => (
            facts.host.map(|h| h.to_string()),
            facts.cluster.clone(),
            None,
        ),
    }
}

fn downstream(line: &mut AccessLogLine, d: &Downstream) {
    line.downstream_local_address = d.local.map(|a| a.to_string());
    line.downstream_remote_address = Some(d.remote.to_string());
    line.requested_server_name = d.sni.as_deref().map(str::to_string);
    line.downstream_peer_uri_san = d.peer.as_ref().map(|p| p.to_string());
}

/// The access log fields of a finished request.
pub fn request_line(o: &RequestOutcome) -> AccessLogLine {
    let r = &o.request;
    let (upstream_host, upstream_cluster, upstream_peer_uri_san) =
        upstream(o.upstream.as_ref(), &o.facts);
    let mut line = AccessLogLine {
        start_time: start_time(o.start),
        method: Some(o.method.as_str().to_string()),
        path: Some(
            r.uri
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
        ),
        protocol: protocol(o.version).to_string(),
        response_code: o.status,
        response_flags: o.response_flags.to_string(),
        response_code_details: o.details.to_string(),
        bytes_received: o.bytes_received,
        bytes_sent: o.bytes_sent,
        duration: millis(o.duration),
        upstream_service_time: o.facts.service_time.map(millis),
        x_forwarded_for: text(&r.forwarded_for),
        user_agent: text(&r.user_agent),
        request_id: text(&r.request_id),
        authority: r
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| text(&r.authority)),
        upstream_host,
        upstream_cluster,
        route_name: o.facts.route.clone(),
        upstream_peer_uri_san,
        ..Default::default()
    };
    downstream(&mut line, &o.downstream);
    line
}

/// The access log fields of a closed TCP connection.
pub fn connection_line(o: &ConnectionOutcome) -> AccessLogLine {
    let (upstream_host, upstream_cluster, upstream_peer_uri_san) =
        upstream(o.upstream.as_ref(), &o.facts);
    let mut line = AccessLogLine {
        start_time: start_time(o.start),
        protocol: "TCP".into(),
        response_flags: o.response_flags.to_string(),
        response_code_details: "-".into(),
        bytes_received: o.bytes_received,
        bytes_sent: o.bytes_sent,
        duration: millis(o.duration),
        upstream_host,
        upstream_cluster,
        upstream_peer_uri_san,
        ..Default::default()
    };
    if let Some(d) = &o.downstream {
        downstream(&mut line, d);
    }
    line
}
