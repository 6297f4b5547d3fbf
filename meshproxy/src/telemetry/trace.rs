//! Trace context: `x-request-id` creation, W3C `traceparent`/`tracestate` and B3 (single
//! `b3` and multi `x-b3-*` header) propagation, sampling, and the OTLP span of one hop.
//!
//! Each hop is one span: the outbound side records a CLIENT span, the inbound side a SERVER
//! span. [`begin`] reads the incoming context (W3C first, then B3 single, then B3 multi),
//! keeps its trace id and sampled flag (an incoming decision is honoured; without one this
//! proxy samples `samplingPercent` of new traces), draws this hop's span id and rewrites the
//! propagation headers so the next hop's parent is this span: `traceparent` always (with
//! `tracestate` passed on), and the B3 form the request came with.

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderName, HeaderValue};
use meshapi::proxy::SpiffeId;
use meshapi::telemetry::TracingConfig;
use meshapi::telemetry::tracing::CustomTag;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, Status, span, status};

use super::RequestOutcome;
use crate::metrics::Direction;
use meshapi::telemetry::access_log::AccessLogLine;

pub const REQUEST_ID: &str = "x-request-id";
const TRACEPARENT: &str = "traceparent";
const B3: &str = "b3";
const B3_TRACE: &str = "x-b3-traceid";
const B3_SPAN: &str = "x-b3-spanid";
const B3_PARENT: &str = "x-b3-parentspanid";
const B3_SAMPLED: &str = "x-b3-sampled";
const B3_FLAGS: &str = "x-b3-flags";

/// A new `x-request-id`: a random UUID (version 4), as Envoy makes them.
pub fn new_request_id() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(char::from(DIGITS[usize::from(x >> 4)]));
        s.push(char::from(DIGITS[usize::from(x & 0xf)]));
    }
    s
}

/// Parses exactly `N` bytes of lowercase or uppercase hex; all-zero ids are invalid.
fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    out.iter().any(|b| *b != 0).then_some(out)
}

/// A B3 trace id: 16 or 32 hex digits (a 64-bit id is the low half of a 128-bit one).
fn b3_trace_id(s: &str) -> Option<[u8; 16]> {
    if s.len() == 16 {
        let low: [u8; 8] = unhex(s)?;
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&low);
        Some(id)
    } else {
        unhex(s)
    }
}

/// Which B3 form a request carried (rewritten in the same form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum B3Form {
    None,
    Single,
    Multi,
}

/// The context a request arrived with.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Incoming {
    trace_id: [u8; 16],
    parent: Option<[u8; 8]>,
    sampled: Option<bool>,
}

fn get<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// W3C `traceparent`: `00-<trace id>-<parent id>-<flags>` (a later version may add fields).
fn parse_traceparent(v: &str) -> Option<Incoming> {
    let mut it = v.split('-');
    let version = it.next()?;
    let trace_id = unhex::<16>(it.next()?)?;
    let parent = unhex::<8>(it.next()?)?;
    let flags: [u8; 1] = unhex_any(it.next()?)?;
    if version.len() != 2 || version == "ff" || (version == "00" && it.next().is_some()) {
        return None;
    }
    Some(Incoming {
        trace_id,
        parent: Some(parent),
        sampled: Some(flags[0] & 1 == 1),
    })
}

/// Like [`unhex`] but zero is allowed (flags).
fn unhex_any<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

fn b3_sampled(v: &str) -> Option<bool> {
    match v {
        "1" | "d" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// B3 single: `{trace}-{span}[-{sampled}[-{parent}]]`, or only `{sampled}`.
fn parse_b3_single(v: &str) -> Option<Incoming> {
    let parts: Vec<&str> = v.split('-').collect();
    match parts.as_slice() {
        [s] => b3_sampled(s).map(|sampled| Incoming {
            trace_id: rand::random(),
            parent: None,
            sampled: Some(sampled),
        }),
        [t, s, rest @ ..] => Some(Incoming {
            trace_id: b3_trace_id(t)?,
            parent: Some(unhex(s)?),
            sampled: rest.first().and_then(|s| b3_sampled(s)),
        }),
        [] => None,
    }
}

fn parse_b3_multi(h: &HeaderMap) -> Option<Incoming> {
    let sampled = if get(h, B3_FLAGS) == Some("1") {
        Some(true)
    } else {
        get(h, B3_SAMPLED).and_then(b3_sampled)
    };
    match (get(h, B3_TRACE), get(h, B3_SPAN)) {
        (Some(t), Some(s)) => Some(Incoming {
            trace_id: b3_trace_id(t)?,
            parent: Some(unhex(s)?),
            sampled,
        }),
        _ => sampled.map(|sampled| Incoming {
            trace_id: rand::random(),
            parent: None,
            sampled: Some(sampled),
        }),
    }
}

/// The context of a request and the B3 form it used.
fn extract(h: &HeaderMap) -> (Option<Incoming>, B3Form) {
    let form = if h.contains_key(B3) {
        B3Form::Single
    } else if h.contains_key(B3_TRACE) || h.contains_key(B3_SAMPLED) {
        B3Form::Multi
    } else {
        B3Form::None
    };
    let ctx = get(h, TRACEPARENT)
        .and_then(parse_traceparent)
        .or_else(|| get(h, B3).and_then(parse_b3_single))
        .or_else(|| parse_b3_multi(h));
    (ctx, form)
}

/// This hop's span: its ids and its parent (the incoming span, if any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanIds {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
}

/// Takes or starts the trace context of a request, rewrites its propagation headers for
/// this hop and returns this hop's span when the trace is sampled.
pub fn begin(h: &mut HeaderMap, sampling_percent: f64) -> Option<SpanIds> {
    let (incoming, form) = extract(h);
    let (trace_id, parent, sampled) = match incoming {
        Some(i) => (
            i.trace_id,
            i.parent,
            i.sampled.unwrap_or_else(|| sample(sampling_percent)),
        ),
        None => (rand::random(), None, sample(sampling_percent)),
    };
    let span_id: [u8; 8] = loop {
        let id: [u8; 8] = rand::random();
        if id != [0; 8] {
            break id;
        }
    };
    let (t, s) = (hex(&trace_id), hex(&span_id));
    let flag = if sampled { "01" } else { "00" };
    insert(h, TRACEPARENT, format!("00-{t}-{s}-{flag}"));
    let sampled_b3 = if sampled { "1" } else { "0" };
    match form {
        B3Form::Single => insert(h, B3, format!("{t}-{s}-{sampled_b3}")),
        B3Form::Multi => {
            insert(h, B3_TRACE, t);
            insert(h, B3_SPAN, s);
            match parent {
                Some(p) => insert(h, B3_PARENT, hex(&p)),
                None => {
                    h.remove(B3_PARENT);
                }
            }
            insert(h, B3_SAMPLED, sampled_b3.to_string());
            h.remove(B3_FLAGS);
        }
        B3Form::None => {}
    }
    sampled.then_some(SpanIds {
        trace_id,
        span_id,
        parent,
    })
}

fn insert(h: &mut HeaderMap, name: &'static str, v: String) {
    if let Ok(v) = HeaderValue::try_from(v) {
        h.insert(HeaderName::from_static(name), v);
    }
}

/// Whether a new trace is sampled at `percent` (0 to 100).
fn sample(percent: f64) -> bool {
    percent >= 100.0 || (percent > 0.0 && rand::random::<f64>() * 100.0 < percent)
}

/// The values of the request headers custom tags name (read before the request moves on).
pub fn tag_headers(h: &HeaderMap, cfg: &TracingConfig) -> Vec<(String, String)> {
    cfg.custom_tags
        .values()
        .filter_map(|t| match t {
            CustomTag::Header { name, .. } => Some((name.clone(), get(h, name)?.to_string())),
            _ => None,
        })
        .collect()
}

/// Who this proxy is, for span attributes and the OTLP resource.
#[derive(Debug, Clone)]
pub struct Node {
    /// `service.name`: `<service account>.<namespace>`, as Istio's canonical service.
    pub service: String,
    pub namespace: String,
    /// `node_id`: the host name (container id in Docker) and the SPIFFE ID.
    pub id: String,
}

impl Node {
    pub fn new(id: &SpiffeId) -> Node {
        let host = std::env::var("HOSTNAME").unwrap_or_default();
        Node {
            service: format!("{}.{}", id.service_account(), id.namespace()),
            namespace: id.namespace().to_string(),
            id: format!("sidecar~{host}~{id}"),
        }
    }
}

/// A string attribute.
pub fn kv(key: &str, v: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn nanos(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The OTLP span of one hop with Istio's attributes: `component: proxy`, `node_id`,
/// `upstream_cluster`, `http.method`, `http.url`, `http.protocol`, `http.status_code`,
/// `response_flags`, `request_size`, `response_size`, `guid:x-request-id`, `user_agent`,
/// `peer.address`, the peer identities and the custom tags; its fields are those of the
/// request's access log `line`.
pub fn to_otlp(
    o: &RequestOutcome,
    line: &AccessLogLine,
    ids: &SpanIds,
    node: &Node,
    cfg: &TracingConfig,
) -> Span {
    let authority = line.authority.clone().unwrap_or_else(|| "-".into());
    let path = line.path.clone().unwrap_or_default();
    let mut attrs = vec![
        kv("component", "proxy"),
        kv("node_id", node.id.clone()),
        kv("istio.canonical_service", node.service.clone()),
        kv("istio.namespace", node.namespace.clone()),
        kv("http.method", line.method.clone().unwrap_or_default()),
        kv("http.url", format!("http://{authority}{path}")),
        kv("http.protocol", line.protocol.clone()),
        kv("http.status_code", o.status.to_string()),
        kv("response_flags", o.response_flags),
        kv("request_size", o.bytes_received.to_string()),
        kv("response_size", o.bytes_sent.to_string()),
        kv("peer.address", o.downstream.remote.ip().to_string()),
    ];
    let opt = [
        ("upstream_cluster", line.upstream_cluster.clone()),
        ("upstream_cluster.name", line.upstream_cluster.clone()),
        ("upstream_host", line.upstream_host.clone()),
        ("guid:x-request-id", line.request_id.clone()),
        ("user_agent", line.user_agent.clone()),
        (
            "downstream_peer.principal",
            line.downstream_peer_uri_san.clone(),
        ),
        (
            "upstream_peer.principal",
            line.upstream_peer_uri_san.clone(),
        ),
    ];
    attrs.extend(opt.into_iter().filter_map(|(k, v)| Some(kv(k, v?))));
    attrs.extend(custom_tags(cfg, &o.request.tag_headers));
    let end = o.start + o.duration;
    let error = o.status >= 500 || o.status == 0;
    Span {
        trace_id: ids.trace_id.to_vec(),
        span_id: ids.span_id.to_vec(),
        parent_span_id: ids.parent.map(|p| p.to_vec()).unwrap_or_default(),
        name: format!("{authority}/*"),
        kind: match o.direction {
            Direction::Inbound => span::SpanKind::Server,
            Direction::Outbound => span::SpanKind::Client,
        } as i32,
        start_time_unix_nano: nanos(o.start),
        end_time_unix_nano: nanos(end),
        attributes: attrs,
        status: Some(Status {
            message: String::new(),
            code: if error {
                status::StatusCode::Error
            } else {
                status::StatusCode::Unset
            } as i32,
        }),
        ..Default::default()
    }
}

/// The custom tags' attributes: literals, the header values read at the request's start,
/// environment variables; a missing value takes the tag's default or is left out.
fn custom_tags(cfg: &TracingConfig, headers: &[(String, String)]) -> Vec<KeyValue> {
    let by_header: BTreeMap<&str, &str> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    cfg.custom_tags
        .iter()
        .filter_map(|(tag, how)| {
            let v = match how {
                CustomTag::Literal { value } => Some(value.clone()),
                CustomTag::Header {
                    name,
                    default_value,
                } => by_header
                    .get(name.as_str())
                    .map(|v| v.to_string())
                    .or_else(|| default_value.clone()),
                CustomTag::Environment {
                    name,
                    default_value,
                } => std::env::var(name).ok().or_else(|| default_value.clone()),
            }?;
            Some(kv(tag, v))
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn w3c_context_is_continued_with_this_hop_as_parent() {
        let mut h = headers(&[(TRACEPARENT, TP), ("tracestate", "congo=t61rcWkgMzE")]);
        let s = begin(&mut h, 0.0).expect("incoming sampled flag honoured at 0%");
        assert_eq!(hex(&s.trace_id), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(hex(&s.parent.unwrap()), "b7ad6b7169203331");
        let out = h[TRACEPARENT].to_str().unwrap();
        assert_eq!(
            out,
            format!("00-0af7651916cd43dd8448eb211c80319c-{}-01", hex(&s.span_id))
        );
        assert_eq!(h["tracestate"], "congo=t61rcWkgMzE");
    }

    #[test]
    fn an_incoming_unsampled_flag_is_honoured_at_100_percent() {
        let mut h = headers(&[(
            TRACEPARENT,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        )]);
        assert!(begin(&mut h, 100.0).is_none());
        assert!(h[TRACEPARENT].to_str().unwrap().ends_with("-00"));
    }

    #[test]
    fn b3_multi_and_single_are_rewritten_in_their_own_form() {
        let mut h = headers(&[
            (B3_TRACE, "463ac35c9f6413ad"),
            (B3_SPAN, "a2fb4a1d1a96d312"),
            (B3_SAMPLED, "1"),
        ]);
        let s = begin(&mut h, 0.0).unwrap();
        assert_eq!(hex(&s.trace_id), "0000000000000000463ac35c9f6413ad");
        assert_eq!(h[B3_PARENT], "a2fb4a1d1a96d312");
        assert_eq!(h[B3_SPAN], hex(&s.span_id).as_str());
        assert_eq!(h[B3_SAMPLED], "1");
        let mut h = headers(&[(
            B3,
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )]);
        let s = begin(&mut h, 0.0).unwrap();
        assert_eq!(hex(&s.parent.unwrap()), "e457b5a2e4d86bd1");
        assert_eq!(
            h[B3].to_str().unwrap(),
            format!("80f198ee56343ba864fe8b2a57d3eff7-{}-1", hex(&s.span_id))
        );
        let mut h = headers(&[(B3, "0")]);
        assert!(begin(&mut h, 100.0).is_none());
    }

    #[test]
    fn a_new_trace_is_sampled_by_percentage_and_malformed_context_is_replaced() {
        let mut h = headers(&[(
            TRACEPARENT,
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        )]);
        assert!(begin(&mut h, 0.0).is_none());
        let s = begin(&mut HeaderMap::new(), 100.0).unwrap();
        assert!(s.parent.is_none());
        let sampled = (0..10_000)
            .filter(|_| begin(&mut HeaderMap::new(), 10.0).is_some())
            .count();
        assert!((700..1300).contains(&sampled), "{sampled} of 10000 at 10%");
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = new_request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, new_request_id());
    }
}
