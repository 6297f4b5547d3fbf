//! Outbound: connections from local applications to mesh services, through an explicit
//! VIP:port listener (host mode) or the capture listener (15001, original destination from
//! SO_ORIGINAL_DST). Each request takes the route decision, then rides a pooled connection to
//! the chosen endpoint (HTTP/2 mTLS to a mesh proxy, or as [`crate::upstream`] decides); TCP
//! and upgrades get their own stream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{HeaderValue, Request, Response, Uri, header};
use hyper::body::Incoming;
use meshapi::proxy::{Protocol, ProxyConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::context::Context;
use crate::http::{Body, check_framing, splice_upgrade, strip_hop_by_hop, strip_internal};
use crate::listener::{BindError, Until, bind};
use crate::metrics::Direction;
use crate::reply::ProxyError;
use crate::runtime::{Runtime, Snapshot, Target};
use crate::telemetry::{Downstream, ServiceLabels};
use crate::upstream::Wire;

/// The original destination of a redirected connection.
fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    socket2::SockRef::from(stream)
        .original_dst_v4()
        .ok()?
        .as_socket()
}

/// The endpoint for a TCP connection or an upgrade/CONNECT tunnel to `out`: the route
/// table's TCP rule, or its HTTP rule for the tunnel's request, then the cluster's balancer.
fn connection_target(
    snap: &Snapshot,
    out: &meshapi::proxy::OutboundService,
    req: Option<(&http::Method, &Uri, &http::HeaderMap)>,
) -> Result<Target, ProxyError> {
    let host = snap.host_of(out).ok_or_else(|| ProxyError::NoRoute {
        target: out.service.clone(),
    })?;
    crate::traffic::route_connection(snap, host, out.target_port(), req)
}

/// Runs the capture listener (15001): each connection's destination is its original one.
pub fn spawn_capture(ctx: Arc<Context>, listener: TcpListener) {
    crate::listener::spawn_accept(
        ctx,
        listener,
        "outbound capture".into(),
        Until::Draining,
        None,
        |ctx, stream, remote| serve(ctx, stream, remote, None),
    );
}

/// A running explicit VIP listener (host mode).
struct VipListener {
    bound: SocketAddr,
    stop: watch::Sender<bool>,
}

/// The explicit VIP:port listeners (host mode, `listeners.bindVips`), kept in step with the
/// config's `outbound` entries.
#[derive(Default)]
pub struct VipListeners {
    by_vip: Mutex<HashMap<SocketAddr, VipListener>>,
}

impl VipListeners {
    /// Binds listeners for new VIPs first (failing without side effects), then stops removed.
    pub fn sync(&self, ctx: &Arc<Context>, cfg: &ProxyConfig) -> Result<(), BindError> {
        let want: Vec<SocketAddr> = if cfg.listeners.bind_vips {
            cfg.outbound.iter().map(|o| o.vip).collect()
        } else {
            Vec::new()
        };
        let Ok(mut vips) = self.by_vip.lock() else {
            return Ok(());
        };
        let mut fresh = Vec::new();
        for vip in want.iter().filter(|v| !vips.contains_key(v)) {
            let (l, bound) = bind(*vip)?;
            fresh.push((*vip, l, bound));
        }
        for (vip, l, bound) in fresh {
            let (stop, rx) = watch::channel(false);
            crate::listener::spawn_accept(
                Arc::clone(ctx),
                l,
                format!("outbound {vip}"),
                Until::Draining,
                Some(rx),
                move |ctx, stream, remote| serve(ctx, stream, remote, Some(vip)),
            );
            vips.insert(vip, VipListener { bound, stop });
        }
        vips.retain(|vip, l| {
            let keep = want.contains(vip);
            if !keep {
                l.stop.send_replace(true);
            }
            keep
        });
        Ok(())
    }

    /// The bound address of a configured outbound VIP.
    pub fn addr(&self, vip: SocketAddr) -> Option<SocketAddr> {
        self.by_vip.lock().ok()?.get(&vip).map(|l| l.bound)
    }
}

/// Serves one outbound connection; `vip` is the configured VIP of an explicit listener, or
/// `None` for the capture listener.
pub async fn serve(
    shared: Arc<Context>,
    stream: TcpStream,
    remote: SocketAddr,
    vip: Option<SocketAddr>,
) {
    let _guard = shared.drain.guard();
    shared.metrics.connection(Direction::Outbound);
    let Some(dst) = vip.or_else(|| original_dst(&stream)) else {
        tracing::info!(%remote, "captured connection without an original destination");
        return;
    };
    let snap = shared.runtime.load_full();
    let Some(out) = snap.outbound_for_original_dst(dst) else {
        if vip.is_none() {
            drop(snap);
            crate::egress::serve(shared, stream, dst, remote).await;
        } else {
            tracing::info!(%remote, %dst, "no outbound service for destination");
        }
        return;
    };
    // The listener's own address for an explicit VIP listener (bound on port 0 in tests).
    let local = vip.and_then(|_| stream.local_addr().ok()).unwrap_or(dst);
    if out.protocol == Protocol::Tcp {
        let target = match connection_target(&snap, out, None) {
            Ok(t) => t,
            Err(e) => {
                tracing::info!(%dst, error = %e, "TCP connection dropped");
                let mut record = crate::telemetry::ConnectionOutcome::start(
                    Direction::Outbound,
                    snap.telemetry.local.party.clone(),
                    crate::telemetry::Party::unknown(),
                    snap.service_labels(&out.service),
                );
                record.downstream = Some(Arc::new(downstream(remote, local)));
                crate::telemetry::refused_connection(&shared, record, &e);
                return;
            }
        };
        serve_tcp(shared, snap, stream, target, downstream(remote, local)).await;
    } else {
        drop(snap);
        serve_http(shared, stream, dst, downstream(remote, local)).await;
    }
}

async fn serve_tcp(
    shared: Arc<Context>,
    rt: Arc<Runtime>,
    mut stream: TcpStream,
    target: crate::runtime::Target,
    down: Downstream,
) {
    let (cluster, i) = &target.cluster;
    let upstream = crate::telemetry::Upstream {
        cluster: Arc::clone(cluster),
        endpoint: *i,
    };
    let mut record = crate::telemetry::ConnectionOutcome::start(
        Direction::Outbound,
        rt.telemetry.local.party.clone(),
        upstream.party(),
        rt.service_labels(&target.service),
    );
    record.upstream = Some(upstream);
    record.downstream = Some(Arc::new(down));
    let Some(_slot) = cluster.tcp_slot() else {
        let e = ProxyError::Overflow {
            service: target.service.to_string(),
            what: "connections".into(),
        };
        crate::telemetry::refused_connection(&shared, record, &e);
        return;
    };
    let tls = crate::upstream::settings(&target);
    let mut up = match crate::upstream::connect(&shared, &rt, &target, tls, Wire::Tcp).await {
        Ok(s) => {
            cluster.record(*i, meshapi::traffic::CallResult::LocalOriginSuccess);
            s
        }
        Err(e) => {
            cluster.record(*i, meshapi::traffic::CallResult::ConnectFailure);
            tracing::info!(error = %e, "TCP upstream failed");
            crate::telemetry::refused_connection(&shared, record, &e);
            return;
        }
    };
    crate::telemetry::connection_opened(&shared, &record);
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut stream, &mut up) => {
            tracing::debug!(result = ?r, service = %target.service, "outbound TCP stream ended");
            record.bytes(r.ok());
        }
        _ = shared.drain.forced() => {}
    }
    crate::telemetry::record_connection(&shared, &record.finish());
}

/// The outbound connection as access logs and spans tell it.
fn downstream(remote: SocketAddr, local: SocketAddr) -> Downstream {
    Downstream {
        remote,
        local: Some(local),
        peer: None,
        sni: None,
    }
}

async fn serve_http(ctx: Arc<Context>, stream: TcpStream, dst: SocketAddr, down: Downstream) {
    let remote = down.remote;
    let shared = Arc::clone(&ctx);
    let service = {
        let snap = ctx.runtime.load();
        snap.outbound_for_original_dst(dst)
            .map_or_else(ServiceLabels::unknown, |o| snap.service_labels(&o.service))
    };
    let side = crate::telemetry::Side::Outbound { service };
    crate::listener::serve_http(ctx, stream, side, down, move |req| {
        let ctx = Arc::clone(&shared);
        async move { forward(&ctx, dst, remote, req).await }
    })
    .await;
}

/// One outbound request: framing check, then the route table ([`crate::traffic::forward`]),
/// or for an upgrade or CONNECT its own stream ([`tunnel`]).
async fn forward(
    shared: &Arc<Context>,
    dst: SocketAddr,
    remote: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    check_framing(req.version(), req.headers())?;
    let snap = shared.runtime.load_full();
    let out = snap
        .outbound_for_original_dst(dst)
        .ok_or_else(|| ProxyError::NoRoute {
            target: dst.to_string(),
        })?;
    if crate::http::is_tunnel(&req) {
        let target = connection_target(&snap, out, Some((req.method(), req.uri(), req.headers())))?;
        return tunnel(shared, &snap, target, req).await;
    }
    let host = snap.host_of(out).ok_or_else(|| ProxyError::NoRoute {
        target: out.service.clone(),
    })?;
    let port = out.target_port();
    crate::traffic::forward(shared, snap.clone(), host, port, remote, req).await
}

/// An upgrade or CONNECT: its own HTTP/1.1 stream to the endpoint, spliced to the client's
/// connection once the endpoint opens the tunnel.
async fn tunnel(
    shared: &Arc<Context>,
    rt: &Runtime,
    target: Target,
    req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let upgrade = crate::http::is_upgrade(&req);
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers, upgrade);
    strip_internal(&mut parts.headers);
    let authority = parts
        .uri
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_else(|| target.service.to_string());
    let mut req = Request::from_parts(parts, crate::http::boxed(body));
    let method = req.method().clone();
    let down = hyper::upgrade::on(&mut req);
    if method != http::Method::CONNECT {
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        *req.uri_mut() = pq
            .parse()
            .map_err(|_| ProxyError::BadRequest("unusable request target"))?;
    }
    if !req.headers().contains_key(header::HOST)
        && let Ok(h) = HeaderValue::from_str(&authority)
    {
        req.headers_mut().insert(header::HOST, h);
    }
    let tls = crate::upstream::settings(&target);
    let stream = crate::upstream::connect(shared, rt, &target, tls, Wire::Http1).await?;
    let mut resp = crate::http::send_tunnel(stream, req, &target.service).await?;
    if crate::http::tunnel_opened(&method, resp.status()) {
        let up = hyper::upgrade::on(&mut resp);
        tokio::spawn(splice_upgrade(down, up));
    }
    let mut resp = resp.map(crate::http::boxed);
    let switching = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    strip_hop_by_hop(resp.headers_mut(), switching);
    if !target.is_verified_peer() {
        crate::http::strip_reserved(resp.headers_mut());
    }
    Ok(resp)
}
