//! Access log lines: the fields of one [`Outcome`] as a [`AccessLogLine`] (Istio's default
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

use meshapi::telemetry::access_log::{AccessLogEncoding, AccessLogLine};
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
    line_of(o).render(encoding)
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

/// The access log fields of `o`.
pub fn line_of(o: &Outcome) -> AccessLogLine {
    let r = o.request.as_ref();
    let u = &o.upstream;
    AccessLogLine {
        start_time: start_time(o.start),
        method: r.map(|r| r.method.clone()),
        path: r.map(|r| r.path.clone()),
        protocol: o.protocol.to_string(),
        response_code: o.response_code,
        response_flags: o.response_flags.clone(),
        response_code_details: o.response_code_details.to_string(),
        bytes_received: o.bytes_received,
        bytes_sent: o.bytes_sent,
        duration: millis(o.duration),
        upstream_service_time: u.service_time.map(millis),
        x_forwarded_for: r.and_then(|r| r.x_forwarded_for.clone()),
        user_agent: r.and_then(|r| r.user_agent.clone()),
        request_id: r.and_then(|r| r.request_id.clone()),
        authority: r.and_then(|r| r.authority.clone()),
        upstream_host: u.host.map(|h| h.to_string()),
        upstream_cluster: u.cluster.clone(),
        downstream_local_address: o.downstream.local.map(|a| a.to_string()),
        downstream_remote_address: Some(o.downstream.remote.to_string()),
        requested_server_name: o.downstream.sni.as_deref().map(str::to_string),
        route_name: u.route.clone(),
        downstream_peer_uri_san: o.downstream.peer.as_ref().map(|p| p.to_string()),
        upstream_peer_uri_san: u.peer.clone(),
    }
}
