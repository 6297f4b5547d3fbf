//! Egress: what the outbound capture listener does with a connection whose original
//! destination is not in the registry (no mesh service or ServiceEntry of this proxy's
//! `outbound`), after the config's `outboundTrafficPolicy` (Istio's semantics):
//!
//! - `ALLOW_ANY` (the default): passed through, a TCP byte copy to the original destination
//!   (Istio's `PassthroughCluster`), counted in `meshproxy_outbound_passthrough_total`.
//! - `REGISTRY_ONLY`: refused (Istio's `BlackHoleCluster`), counted in
//!   `meshproxy_outbound_registry_blocked_total`. A connection whose first bytes are an HTTP
//!   request is answered per request with `502`, the response flag `NR` and the host in the
//!   body ([`ProxyError::NotInRegistry`]); any other connection is closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Request, header};
use hyper::body::Incoming;
use meshapi::proxy::OutboundMode;
use tokio::net::TcpStream;

use crate::context::Context;
use crate::metrics::Direction;
use crate::reply::ProxyError;
use crate::telemetry::{ConnectionOutcome, Downstream, Party, ServiceLabels, Side};

/// Istio's destination service name for traffic passed through under `ALLOW_ANY`.
const PASSTHROUGH: &str = "PassthroughCluster";
/// Istio's destination service name for traffic refused under `REGISTRY_ONLY`.
const BLACKHOLE: &str = "BlackHoleCluster";

/// How long to wait between two looks at a client's first bytes while they trickle in.
const PEEK_PAUSE: Duration = Duration::from_millis(5);

/// Serves a captured connection to `dst`, which the registry does not know.
pub async fn serve(shared: Arc<Context>, stream: TcpStream, dst: SocketAddr, remote: SocketAddr) {
    let (mode, limits) = {
        let rt = shared.runtime.load();
        (rt.cfg.outbound_traffic_policy.mode, rt.cfg.limits.clone())
    };
    match mode {
        OutboundMode::AllowAny => {
            shared.metrics.passthrough.fetch_add(1, Ordering::Relaxed);
            passthrough(shared, stream, dst, remote, limits.connect_timeout.0).await;
        }
        OutboundMode::RegistryOnly => {
            shared
                .metrics
                .registry_blocked
                .fetch_add(1, Ordering::Relaxed);
            if looks_like_http(&stream, limits.sniff_timeout.0).await {
                tracing::info!(%remote, %dst, "REGISTRY_ONLY: HTTP to a destination outside the registry, answered 502");
                refuse_http(shared, stream, dst, remote).await;
            } else {
                tracing::info!(%remote, %dst, "REGISTRY_ONLY: connection to a destination outside the registry closed");
            }
        }
    }
}

/// `ALLOW_ANY`: a byte copy to the original destination, on a marked socket (never captured
/// again), recorded as a TCP connection to Istio's `PassthroughCluster`.
async fn passthrough(
    shared: Arc<Context>,
    mut stream: TcpStream,
    dst: SocketAddr,
    remote: SocketAddr,
    timeout: Duration,
) {
    let mut up = match tokio::time::timeout(timeout, crate::capture::connect(dst)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(%dst, error = %e, "passthrough connect failed");
            return;
        }
        Err(_) => {
            tracing::info!(%dst, "passthrough connect timed out");
            return;
        }
    };
    let _ = up.set_nodelay(true);
    tracing::debug!(%dst, "passthrough (ALLOW_ANY)");
    let local = shared.runtime.load().telemetry.local.party.clone();
    let mut record = ConnectionOutcome::start(
        Direction::Outbound,
        local,
        Party::unknown(),
        Arc::new(ServiceLabels::of_host(PASSTHROUGH)),
    );
    record.downstream = Some(Arc::new(downstream(remote, dst)));
    crate::telemetry::connection_opened(&shared, &record);
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut stream, &mut up) => {
            tracing::debug!(result = ?r, %dst, "passthrough stream ended");
            record.bytes(r.ok());
        }
        _ = shared.drain.forced() => {}
    }
    crate::telemetry::record_connection(&shared, &record.finish());
}

/// The connection as access logs and spans tell it.
fn downstream(remote: SocketAddr, dst: SocketAddr) -> Downstream {
    Downstream {
        remote,
        local: Some(dst),
        peer: None,
        sni: None,
    }
}

/// Every request on the connection gets [`ProxyError::NotInRegistry`].
async fn refuse_http(shared: Arc<Context>, stream: TcpStream, dst: SocketAddr, remote: SocketAddr) {
    let side = Side::Outbound {
        service: Arc::new(ServiceLabels::of_host(BLACKHOLE)),
    };
    let down = downstream(remote, dst);
    crate::listener::serve_http(shared, stream, side, down, move |req| async move {
        Err::<http::Response<crate::http::Body>, _>(ProxyError::NotInRegistry {
            host: request_host(&req).unwrap_or_else(|| dst.to_string()),
        })
    })
    .await;
}

/// The host a request names: its authority, else its `Host` header.
fn request_host(req: &Request<Incoming>) -> Option<String> {
    req.uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .filter(|h| !h.is_empty())
}

/// Whether the client's first bytes are an HTTP request line (`GET `, `POST `, the HTTP/2
/// preface's `PRI `), waiting at most `timeout` for them.
pub async fn looks_like_http(stream: &TcpStream, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 16];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return false,
        };
        match classify(&buf[..n]) {
            Some(http) => return http,
            None if n == buf.len() => return false,
            None => {
                if tokio::time::timeout_at(deadline, tokio::time::sleep(PEEK_PAUSE))
                    .await
                    .is_err()
                {
                    return false;
                }
            }
        }
    }
}

/// `Some(true)`: a method token and a space; `Some(false)`: cannot be HTTP; `None`: too
/// few bytes to tell.
fn classify(head: &[u8]) -> Option<bool> {
    match head.iter().position(|b| *b == b' ') {
        Some(0) => Some(false),
        Some(i) => Some(head[..i].iter().all(u8::is_ascii_uppercase)),
        None if head.iter().all(u8::is_ascii_uppercase) => None,
        None => Some(false),
    }
}

#[cfg(test)]
mod tests {
    use super::classify;

    #[test]
    fn request_lines_are_told_from_other_protocols() {
        let cases: &[(&[u8], Option<bool>)] = &[
            (b"GET / HTTP/1.1\r\n", Some(true)),
            (b"POST", None),
            (b"PRI * HTTP/2.0", Some(true)),
            (b"\x16\x03\x01\x02", Some(false)),
            (b"SSH-2.0-OpenSSH", Some(false)),
            (b" GET", Some(false)),
            (b"get / HTTP/1.1", Some(false)),
        ];
        for (head, want) in cases {
            assert_eq!(classify(head), *want, "{:?}", String::from_utf8_lossy(head));
        }
    }
}
