//! OTLP/HTTP span export: spans wait on a bounded queue ([`QUEUE_SPANS`]); one task sends
//! them in batches (up to [`BATCH_SPANS`], or what arrived within [`BATCH_DELAY`]) as a
//! protobuf `ExportTraceServiceRequest` POSTed to the collector (`/v1/traces`, Jaeger, Tempo
//! and the OpenTelemetry Collector all accept it), one request at a time with a timeout.
//! A full queue, a collector that is down, slow or refusing loses spans, never requests; the
//! loss is counted (`meshproxy_trace_spans_dropped_total`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use tokio::sync::mpsc;

use super::TelemetryCounters;
use super::trace::{Node, kv};

/// Spans waiting for export at most; more are dropped and counted.
pub const QUEUE_SPANS: usize = 2048;
/// Spans in one export request at most.
pub const BATCH_SPANS: usize = 512;
/// How long a batch waits for more spans after its first.
pub const BATCH_DELAY: Duration = Duration::from_millis(500);
/// One export request's deadline (connect, send and answer).
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// A span and the collector it goes to (the config's at the time it ended).
struct Queued {
    collector: Arc<str>,
    span: Span,
    node: Arc<Node>,
}

/// The queue in front of the export task.
pub struct Exporter {
    tx: mpsc::Sender<Queued>,
    counters: Arc<TelemetryCounters>,
}

impl Exporter {
    pub fn spawn(counters: Arc<TelemetryCounters>) -> Exporter {
        let (tx, rx) = mpsc::channel(QUEUE_SPANS);
        tokio::spawn(export(rx, Arc::clone(&counters)));
        Exporter { tx, counters }
    }

    /// Queues `span` for `collector`; drops and counts it when the queue is full.
    pub fn submit(&self, collector: &str, span: Span, node: &Arc<Node>) {
        let q = Queued {
            collector: Arc::from(collector),
            span,
            node: Arc::clone(node),
        };
        if self.tx.try_send(q).is_err() {
            self.counters.spans_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Why one export failed.
#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error("collector URL {0:?} is not an http:// URL")]
    Url(String),
    #[error("collector unreachable: {0}")]
    Send(#[from] hyper_util::client::legacy::Error),
    #[error("collector answered {0}")]
    Status(http::StatusCode),
    #[error("collector did not answer within {EXPORT_TIMEOUT:?}")]
    Timeout,
}

async fn export(mut rx: mpsc::Receiver<Queued>, counters: Arc<TelemetryCounters>) {
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(HttpConnector::new());
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let until = tokio::time::Instant::now() + BATCH_DELAY;
        while batch.len() < BATCH_SPANS {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(q)) => batch.push(q),
                _ => break,
            }
        }
        // A config change may move spans to another collector mid-batch.
        while !batch.is_empty() {
            let collector = Arc::clone(&batch[0].collector);
            let (now, later): (Vec<Queued>, Vec<Queued>) =
                batch.into_iter().partition(|q| q.collector == collector);
            batch = later;
            let n = now.len() as u64;
            match send(&client, &collector, now).await {
                Ok(()) => counters.spans_exported.fetch_add(n, Ordering::Relaxed),
                Err(e) => {
                    tracing::debug!(collector = %collector, spans = n, error = %e, "spans dropped");
                    counters.spans_dropped.fetch_add(n, Ordering::Relaxed)
                }
            };
        }
    }
}

/// The export request of `spans` (all from one proxy).
pub fn request(node: &Node, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", &node.service),
                    kv("k8s.namespace.name", &node.namespace),
                    kv("node_id", &node.id),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "meshproxy".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    collector: &str,
    batch: Vec<Queued>,
) -> Result<(), ExportError> {
    let uri: http::Uri = collector
        .parse()
        .ok()
        .filter(|u: &http::Uri| u.scheme_str() == Some("http") && u.authority().is_some())
        .ok_or_else(|| ExportError::Url(collector.to_string()))?;
    let node = Arc::clone(&batch[0].node);
    let body = request(&node, batch.into_iter().map(|q| q.span).collect()).encode_to_vec();
    let req = http::Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(Bytes::from(body)))
        .map_err(|_| ExportError::Url(collector.to_string()))?;
    let resp = tokio::time::timeout(EXPORT_TIMEOUT, client.request(req))
        .await
        .map_err(|_| ExportError::Timeout)??;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(ExportError::Status(resp.status()))
    }
}
