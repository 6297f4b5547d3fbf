//! One outbound HTTP request under the route table ([`forward`]): the route decision (or the
//! local reply a route gives), faults (delay, then abort; outside the route's timeout and
//! retries, as Istio), mirrors (fire and forget, never slowing or failing the primary), request
//! and response header operations, rewrites, CORS response headers, consistent-hash cookies,
//! and the route `timeout` (504 `UT`) around [`super::retry`]. [`route_connection`] picks the
//! endpoint of a TCP connection or an upgrade.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use meshapi::authz::HeaderLookup;
use meshapi::traffic::{
    DestinationRef, Forward, HashInput, HashOutcome, HeaderOps, RequestView, RouteDecision,
};

use super::cluster::ClusterState;
use super::retry::{ReqBody, buffer, send_with_retries};
use crate::authz::Headers;
use crate::body::Tracked;
use crate::context::Context;
use crate::http::{Body, RequestHead, full};
use crate::reply::{LocalReply, ProxyError, cors_headers};
use crate::runtime::{Runtime, Snapshot, Target};

/// The endpoint of a TCP connection or an HTTP upgrade to `out` under the route table.
pub fn route_connection(
    snap: &Snapshot,
    host: &str,
    port: u16,
    req: Option<(&http::Method, &Uri, &HeaderMap)>,
) -> Result<Target, ProxyError> {
    let random = rand::random::<u64>();
    let table = snap.table();
    let dest: &DestinationRef = match req {
        None => table
            .route_tcp(host, port, random)
            .ok_or_else(|| ProxyError::NoRoute {
                target: format!("{host}:{port}"),
            })?,
        Some((method, uri, headers)) => {
            let lookup = Headers::new(headers);
            let authority = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or(host);
            let view = RequestView {
                host,
                port,
                method: method.as_str(),
                scheme: "http",
                authority,
                path: uri.path(),
                query: uri.query().unwrap_or(""),
                headers: &lookup,
                random,
            };
            match table.route(&view) {
                RouteDecision::Forward(f) => &f.destination.destination,
                _ => {
                    return Err(ProxyError::NoRoute {
                        target: format!("{host}{}", uri.path()),
                    });
                }
            }
        }
    };
    let cluster = snap
        .cluster(dest, port)
        .ok_or_else(|| ProxyError::NoRoute {
            target: format!("{}:{}", dest.host, dest.port_for(port)),
        })?;
    cluster.pick_target(rand::random())
}

/// Applies header operations; `Host` / `:authority` are left out: they rewrite the authority
/// ([`Forward::upstream_authority`]), not a header.
fn apply_ops(h: &mut HeaderMap, ops: &HeaderOps) {
    let valid = |(k, v): &(String, String)| {
        if meshapi::traffic::is_authority_header(k) {
            return None;
        }
        Some((
            HeaderName::try_from(k.as_str()).ok()?,
            HeaderValue::try_from(v.as_str()).ok()?,
        ))
    };
    for (k, v) in ops.set.iter().filter_map(valid) {
        h.insert(k, v);
    }
    for (k, v) in ops.add.iter().filter_map(valid) {
        h.append(k, v);
    }
    for k in &ops.remove {
        h.remove(k.as_str());
    }
}

/// What the route decided for a request, taken before any await (it borrows the request).
enum Decision<'t> {
    /// Send upstream (or fault) under this rule.
    Forward(Decided<'t>),
    /// The route answers itself.
    Reply(LocalReply<'t>),
}

/// A request to forward: the rule, its cluster, the request's `Origin` (for CORS response
/// headers) and its consistent-hash outcome.
struct Decided<'t> {
    f: Forward<'t>,
    cluster: Option<&'t Arc<ClusterState>>,
    origin: Option<String>,
    hash: Option<HashOutcome>,
}

/// The request's authority: its absolute-form URI's, else `Host`, else the service host.
fn request_authority(req: &Request<Incoming>, host: &str) -> String {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_else(|| host.to_string())
}

/// The route decision for one request on `host:port`.
fn decide<'t>(
    snap: &'t Snapshot,
    host: &str,
    port: u16,
    source: std::net::SocketAddr,
    authority: &str,
    req: &Request<Incoming>,
) -> Result<Decision<'t>, ProxyError> {
    let random = rand::random::<u64>();
    let lookup = Headers::new(req.headers());
    let view = RequestView {
        host,
        port,
        method: req.method().as_str(),
        scheme: "http",
        authority,
        path: req.uri().path(),
        query: req.uri().query().unwrap_or(""),
        headers: &lookup,
        random,
    };
    let f = match snap.table().route(&view) {
        RouteDecision::Forward(f) => f,
        RouteDecision::NoRoute | RouteDecision::UnknownHost => {
            return Err(ProxyError::NoRoute {
                target: format!("{host}{}", req.uri().path()),
            });
        }
        RouteDecision::Redirect {
            status, location, ..
        } => return Ok(Decision::Reply(LocalReply::Redirect { status, location })),
        RouteDecision::Direct { response, .. } => {
            return Ok(Decision::Reply(LocalReply::Direct {
                status: response.status,
                body: response.body.as_ref().map_or(&[], |b| b.as_bytes()),
            }));
        }
        RouteDecision::CorsPreflight { cors, allowed, .. } => {
            let origin = allowed.then(|| lookup.get("origin").unwrap_or_default().to_string());
            return Ok(Decision::Reply(LocalReply::CorsPreflight { cors, origin }));
        }
    };
    let cluster = snap.cluster(&f.destination.destination, port);
    let hash = cluster.map(|c| {
        c.hash(&HashInput {
            headers: &lookup,
            query: req.uri().query().unwrap_or(""),
            source_ip: Some(source.ip()),
            random,
        })
    });
    Ok(Decision::Forward(Decided {
        origin: lookup.get("origin").map(str::to_string),
        f,
        cluster,
        hash,
    }))
}

/// One outbound HTTP request under the route table: the decision, then faults, mirrors, the
/// tries within the route timeout, response header operations. `port` is the service port
/// the client dialled.
pub async fn forward(
    shared: &Arc<Context>,
    snap: Arc<Runtime>,
    host: &str,
    port: u16,
    source: std::net::SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let authority = request_authority(&req, host);
    let d = match decide(&snap, host, port, source, &authority, &req)? {
        Decision::Reply(r) => return Ok(r.render()),
        Decision::Forward(d) => d,
    };
    let path_and_query = upstream_path_and_query(&d.f, req.uri());
    let (parts, body) = req.into_parts();

    // Faults first: as in Istio, the route's timeout and retries do not apply to them.
    if let Some(delay) = d.f.fault.delay {
        tokio::time::sleep(delay).await;
    }
    if let Some(abort) = &d.f.fault.abort {
        return Ok(LocalReply::FaultAbort(abort).render());
    }

    let cluster = d.cluster.ok_or_else(|| ProxyError::NoCluster {
        target: format!(
            "{}:{}",
            d.f.destination.destination.host,
            d.f.destination.destination.port_for(port)
        ),
    })?;
    let retries = d.f.retries();
    let mirrored = d.f.mirrors().next().is_some();
    let fault = crate::body::BodyFault::for_request(&parts.extensions);
    let mut body = if retries.is_some() || mirrored {
        buffer(body, fault).await?
    } else {
        ReqBody::streaming(body, fault)
    };
    let mut head = upstream_head(&d.f, parts, authority, &path_and_query)?;
    if cluster.to_mesh {
        // Istio's metadata exchange: the server side labels its metrics with our workload.
        head.headers.insert(
            HeaderName::from_static(crate::telemetry::PEER_HEADER),
            snap.telemetry.local.header.clone(),
        );
    }
    if mirrored {
        mirror(shared, &snap, &d.f, port, &head, &body, cluster);
    }

    let deadline = d.f.timeout().map(|t| tokio::time::Instant::now() + t);
    let hash = d.hash.as_ref().and_then(|h| h.hash);
    let sent_at = std::time::Instant::now();
    let send = send_with_retries(shared, &snap, cluster, hash, retries, head, &mut body);
    let resp = match deadline {
        Some(at) => match tokio::time::timeout_at(at, send).await {
            Ok(r) => with_deadline(r?, at, &cluster.name),
            Err(_) => {
                return Err(ProxyError::Timeout {
                    service: cluster.name.clone(),
                });
            }
        },
        None => send.await?,
    };
    let mut resp = finish_response(resp, &d);
    resp.extensions_mut()
        .insert(crate::telemetry::UpstreamFacts {
            route: d.f.rule.name.clone(),
            service_time: Some(sent_at.elapsed()),
            ..Default::default()
        });
    Ok(resp)
}

/// The head to send upstream: hop-by-hop and internal headers stripped, the rule's request
/// header operations applied, absolute URI with the (rewritten) authority and path.
fn upstream_head(
    f: &Forward<'_>,
    parts: http::request::Parts,
    authority: String,
    path_and_query: &str,
) -> Result<RequestHead, ProxyError> {
    let mut headers = parts.headers;
    crate::http::strip_hop_by_hop(&mut headers, false);
    crate::http::strip_internal(&mut headers);
    headers.remove(header::HOST);
    for ops in f.request_headers() {
        apply_ops(&mut headers, ops);
    }
    let up_authority = f
        .upstream_authority()
        .map(str::to_string)
        .unwrap_or(authority);
    let uri = Uri::builder()
        .scheme("http")
        .authority(up_authority.as_str())
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| ProxyError::BadRequest("unusable request target or Host"))?;
    Ok(RequestHead {
        method: parts.method,
        version: parts.version,
        uri,
        headers,
    })
}

/// Fires the drawn mirrors (a buffered body only).
fn mirror(
    shared: &Arc<Context>,
    snap: &Arc<Runtime>,
    f: &Forward<'_>,
    port: u16,
    head: &RequestHead,
    body: &ReqBody,
    cluster: &ClusterState,
) {
    let ReqBody::Buffered(b) = body else {
        tracing::debug!(cluster = %cluster.name, "request body too large to mirror");
        return;
    };
    for m in f.mirrors() {
        spawn_mirror(shared, snap, &m.destination, port, head, b.clone());
    }
}

/// As Envoy's route timeout, the deadline covers the response body too: one still streaming
/// then is cut (the client sees a reset stream, never a short success).
fn with_deadline(resp: Response<Body>, at: tokio::time::Instant, cluster: &str) -> Response<Body> {
    let name = cluster.to_string();
    resp.map(|b| {
        Tracked::new(b)
            .deadline(at, &name)
            .on_end(move |complete| {
                if !complete && tokio::time::Instant::now() >= at {
                    tracing::info!(cluster = %name, "route timeout while the response body streamed (UT)");
                }
            })
            .boxed()
    })
}

/// The rule's response side: hop-by-hop headers stripped, header operations, CORS headers
/// for an allowed origin, the consistent-hash cookie.
fn finish_response(mut resp: Response<Body>, d: &Decided<'_>) -> Response<Body> {
    crate::http::strip_hop_by_hop(resp.headers_mut(), false);
    for ops in d.f.response_headers() {
        apply_ops(resp.headers_mut(), ops);
    }
    if let (Some(cors), Some(origin)) = (d.f.cors(), &d.origin)
        && cors.allows(origin)
    {
        cors_headers(resp.headers_mut(), cors, origin, false);
    }
    if let Some(c) = d.hash.as_ref().and_then(|h| h.set_cookie.as_ref())
        && let Ok(v) = HeaderValue::try_from(c.header_value())
    {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

/// The path (rewritten when the rule says so) and query to send upstream.
fn upstream_path_and_query(f: &Forward<'_>, uri: &Uri) -> String {
    let path = f.upstream_path(uri.path());
    match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.into_owned(),
    }
}

/// Sends a copy to a mirror destination; the response is read and dropped, errors are logged
/// at debug level and never reach the client.
fn spawn_mirror(
    shared: &Arc<Context>,
    snap: &Arc<Runtime>,
    dest: &DestinationRef,
    port: u16,
    head: &RequestHead,
    body: Bytes,
) {
    let Some(cluster) = snap.cluster(dest, port) else {
        tracing::debug!(host = %dest.host, "mirror destination has no cluster");
        return;
    };
    let Ok(target) = cluster.pick_target(rand::random()) else {
        return;
    };
    let req = head.request(full(body));
    let shared = Arc::clone(shared);
    let rt = Arc::clone(snap);
    tokio::spawn(async move {
        match crate::pool::send_pooled(&shared, &rt, &target, req, None).await {
            Ok(resp) => {
                let _ = resp.into_body().collect().await;
            }
            Err(e) => tracing::debug!(error = %e, "mirror request failed"),
        }
    });
}
