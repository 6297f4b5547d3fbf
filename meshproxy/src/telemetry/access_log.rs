//! Access log lines: the fields of one [`RequestOutcome`] or [`ConnectionOutcome`] as an
//! [`AccessLogLine`] (Istio's default
//! text format plus the peer identities, or the same fields as one JSON object per line with
//! Istio's `accessLogEncoding: JSON` keys; the format lives in `meshapi` so `meshctl top`
//! reads exactly what the proxy writes).
//!
//! Lines never wait for the sink and cost no allocation: [`Writer::write`] formats a line
//! straight into one shared buffer (the fields borrowed from the record, [`LineRef`]); a
//! task swaps the buffer out and writes it to the sink (stdout) in one write, at the latest
//! [`FLUSH_INTERVAL`] after its first line or once [`BATCH_LINES`] wait. At most
//! [`QUEUE_LINES`] lines wait or are being written: more are dropped and counted
//! (`meshproxy_access_log_dropped_total`), so a stalled stdout costs lines, never requests.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use meshapi::telemetry::access_log::{AccessLogEncoding, LineRef, Val};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use super::{
    ConnectionOutcome, Downstream, RequestOutcome, TelemetryCounters, Upstream, UpstreamFacts,
};

/// Where access log lines go: the proxy's stdout unless a test gives another writer.
pub type Sink = Pin<Box<dyn AsyncWrite + Send>>;

/// Lines waiting for the sink (or being written) at most; more are dropped and counted.
pub const QUEUE_LINES: usize = 1024;

/// Bytes waiting for the sink at most (long paths and headers); more are dropped.
const QUEUE_BYTES: usize = 1024 * 1024;

/// Lines that make the writer write at once rather than at the flush interval.
pub const BATCH_LINES: u64 = 256;

/// How long a line waits at most for more lines before the writer writes them (Envoy
/// flushes its access log files every second).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Lines formatted and not yet written.
#[derive(Default)]
struct Queued {
    text: Vec<u8>,
    lines: u64,
    /// Lines of the batch being written now (they count against [`QUEUE_LINES`]).
    in_flight: u64,
    closed: bool,
}

struct Shared {
    queued: Mutex<Queued>,
    wake: Notify,
    counters: Arc<TelemetryCounters>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queued> {
        self.queued.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The buffer in front of the access log sink.
pub struct Writer {
    shared: Arc<Shared>,
}

impl Writer {
    /// Starts the task that writes queued lines to `sink`.
    pub fn spawn(sink: Sink, counters: Arc<TelemetryCounters>) -> Writer {
        let shared = Arc::new(Shared {
            queued: Mutex::default(),
            wake: Notify::new(),
            counters,
        });
        tokio::spawn(drain(sink, Arc::clone(&shared)));
        Writer { shared }
    }

    /// Queues one line that `line` appends (newline included); drops and counts it when the
    /// sink is behind.
    pub fn write(&self, line: impl FnOnce(&mut Vec<u8>)) {
        let mut q = self.shared.lock();
        if q.lines + q.in_flight >= QUEUE_LINES as u64 || q.text.len() >= QUEUE_BYTES {
            drop(q);
            self.shared
                .counters
                .access_log_dropped
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        let before = q.text.len();
        line(&mut q.text);
        if q.text.len() == before {
            return;
        }
        q.lines += 1;
        if q.lines == 1 || q.lines == BATCH_LINES {
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

/// Writes the queued lines to `sink` in one write per batch until the [`Writer`] is gone.
async fn drain(mut sink: Sink, shared: Arc<Shared>) {
    let mut batch = Vec::new();
    loop {
        shared.wake.notified().await;
        let ready = {
            let q = shared.lock();
            q.closed || q.lines >= BATCH_LINES
        };
        if !ready {
            tokio::select! {
                () = tokio::time::sleep(FLUSH_INTERVAL) => {}
                () = shared.wake.notified() => {}
            }
        }
        let (n, closed) = {
            let mut q = shared.lock();
            std::mem::swap(&mut q.text, &mut batch);
            let n = std::mem::take(&mut q.lines);
            q.in_flight = n;
            (n, q.closed)
        };
        if n > 0 {
            let written = sink.write_all(&batch).await;
            let flushed = sink.flush().await;
            let counter = if written.is_err() || flushed.is_err() {
                &shared.counters.access_log_dropped
            } else {
                &shared.counters.access_log_written
            };
            counter.fetch_add(n, Ordering::Relaxed);
            batch.clear();
            if batch.capacity() > 4 * 64 * 1024 {
                batch.shrink_to(64 * 1024);
            }
        }
        shared.lock().in_flight = 0;
        if closed {
            return;
        }
    }
}

/// Envoy's `%START_TIME%`, formatted where it is written.
pub struct StartTime(pub std::time::SystemTime);

impl std::fmt::Display for StartTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = time::OffsetDateTime::from(self.0);
        write!(
            f,
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
}

/// RFC 3339 UTC with milliseconds, as Envoy's `%START_TIME%`.
pub fn start_time(t: std::time::SystemTime) -> String {
    StartTime(t).to_string()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn text(v: Option<&http::HeaderValue>) -> Val<'_> {
    v.and_then(|v| v.to_str().ok()).into()
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
fn upstream<'a>(up: Option<&'a Upstream>, facts: &'a UpstreamFacts) -> (Val<'a>, Val<'a>, Val<'a>) {
    match up {
        Some(u) => (
            u.host().into(),
            Val::Str(&u.cluster.name),
            u.cluster
                .endpoints
                .get(u.endpoint)
                .and_then(|e| e.identity.as_ref())
                .map_or(Val::None, |i| Val::Display(i)),
        ),
        None => (
            facts.host.into(),
            facts.cluster.as_deref().into(),
            Val::None,
        ),
    }
}

/// `DOWNSTREAM_LOCAL_ADDRESS`, `DOWNSTREAM_REMOTE_ADDRESS`, `REQUESTED_SERVER_NAME`,
/// `DOWNSTREAM_PEER`.
fn downstream(d: Option<&Downstream>) -> [Val<'_>; 4] {
    match d {
        Some(d) => [
            d.local.into(),
            Val::Addr(d.remote),
            d.sni.as_deref().into(),
            d.peer.as_ref().map_or(Val::None, |p| Val::Display(p)),
        ],
        None => [Val::None; 4],
    }
}

/// Calls `f` with the access log fields of a finished request, borrowed from it.
pub fn with_request_line<R>(o: &RequestOutcome, f: impl FnOnce(&LineRef<'_>) -> R) -> R {
    let r = &o.request;
    let start = StartTime(o.start);
    let (upstream_host, upstream_cluster, upstream_peer_uri_san) =
        upstream(o.upstream.as_ref(), &o.facts);
    let [local, remote, sni, peer] = downstream(Some(&o.downstream));
    let line = LineRef {
        start_time: &start,
        method: Val::Str(o.method.as_str()),
        path: Val::Str(r.uri.path_and_query().map_or("/", |p| p.as_str())),
        protocol: protocol(o.version),
        response_code: o.status,
        response_flags: o.response_flags,
        response_code_details: o.details,
        bytes_received: o.bytes_received,
        bytes_sent: o.bytes_sent,
        duration: millis(o.duration),
        upstream_service_time: o.facts.service_time.map(millis),
        x_forwarded_for: text(r.forwarded_for.as_ref()),
        user_agent: text(r.user_agent.as_ref()),
        request_id: text(r.request_id.as_ref()),
        authority: match r.uri.authority() {
            Some(a) => Val::Str(a.as_str()),
            None => text(r.authority.as_ref()),
        },
        upstream_host,
        upstream_cluster,
        downstream_local_address: local,
        downstream_remote_address: remote,
        requested_server_name: sni,
        route_name: o.facts.route.as_deref().into(),
        downstream_peer_uri_san: peer,
        upstream_peer_uri_san,
    };
    f(&line)
}

/// Appends the access log line of a closed TCP connection to `out`.
pub fn write_connection_line(
    o: &ConnectionOutcome,
    encoding: AccessLogEncoding,
    out: &mut Vec<u8>,
) {
    let start = StartTime(o.start);
    let (upstream_host, upstream_cluster, upstream_peer_uri_san) =
        upstream(o.upstream.as_ref(), &o.facts);
    let [local, remote, sni, peer] = downstream(o.downstream.as_deref());
    LineRef {
        start_time: &start,
        method: Val::None,
        path: Val::None,
        protocol: "TCP",
        response_code: 0,
        response_flags: o.response_flags,
        response_code_details: o.details,
        bytes_received: o.bytes_received,
        bytes_sent: o.bytes_sent,
        duration: millis(o.duration),
        upstream_service_time: None,
        x_forwarded_for: Val::None,
        user_agent: Val::None,
        request_id: Val::None,
        authority: Val::None,
        upstream_host,
        upstream_cluster,
        downstream_local_address: local,
        downstream_remote_address: remote,
        requested_server_name: sni,
        route_name: Val::None,
        downstream_peer_uri_san: peer,
        upstream_peer_uri_san,
    }
    .write(encoding, out);
}
