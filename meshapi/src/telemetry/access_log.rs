//! Access logs: one line per HTTP request and per TCP connection (Envoy's default text format
//! or JSON, Istio's `accessLogFile`/`accessLogEncoding`), on or off per workload (Telemetry
//! `accessLogging`).

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// `telemetry.accessLog` in the proxy config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessLogConfig {
    /// Whether the proxy writes access log lines to its stdout. Default false, as Istio's
    /// default profile (`accessLogFile` unset); the examples turn it on.
    #[serde(default)]
    pub enabled: bool,
    /// Line format. Default `TEXT`.
    #[serde(default)]
    pub encoding: AccessLogEncoding,
}

/// Istio's `accessLogEncoding`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AccessLogEncoding {
    /// Envoy's default text format.
    #[default]
    Text,
    /// One JSON object per line, with the same fields.
    Json,
}

/// One access log line's fields, named as Istio's JSON access log names them; the proxy
/// writes it ([`AccessLogLine::render`]), `meshctl top` reads it back ([`AccessLogLine::parse`]).
/// `None` is Envoy's `-`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AccessLogLine {
    /// RFC 3339 UTC with milliseconds (`%START_TIME%`).
    pub start_time: String,
    pub method: Option<String>,
    /// Path and query as received.
    pub path: Option<String>,
    /// `HTTP/1.1`, `HTTP/2` or `TCP`.
    pub protocol: String,
    /// 0 for TCP.
    pub response_code: u16,
    /// Envoy's flags, `-` for none.
    pub response_flags: String,
    pub response_code_details: String,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Milliseconds.
    pub duration: u64,
    /// Milliseconds from sending upstream to the response head.
    pub upstream_service_time: Option<u64>,
    pub x_forwarded_for: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub authority: Option<String>,
    pub upstream_host: Option<String>,
    /// Envoy's cluster name: `outbound|<port>|<subset>|<host>` or `inbound|<port>||`.
    pub upstream_cluster: Option<String>,
    pub downstream_local_address: Option<String>,
    pub downstream_remote_address: Option<String>,
    pub requested_server_name: Option<String>,
    pub route_name: Option<String>,
    /// The downstream's verified SPIFFE ID (inbound mTLS).
    pub downstream_peer_uri_san: Option<String>,
    /// The SPIFFE ID the upstream had to present (outbound mTLS).
    pub upstream_peer_uri_san: Option<String>,
}

impl AccessLogLine {
    /// The line in `encoding`, newline included (see [`LineRef::write`]).
    pub fn render(&self, encoding: AccessLogEncoding) -> String {
        let mut out = Vec::with_capacity(256);
        self.as_ref().write(encoding, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// The same fields, borrowed.
    pub fn as_ref(&self) -> LineRef<'_> {
        fn s(v: &Option<String>) -> Val<'_> {
            v.as_deref().map_or(Val::None, Val::Str)
        }
        LineRef {
            start_time: &self.start_time,
            method: s(&self.method),
            path: s(&self.path),
            protocol: &self.protocol,
            response_code: self.response_code,
            response_flags: &self.response_flags,
            response_code_details: &self.response_code_details,
            bytes_received: self.bytes_received,
            bytes_sent: self.bytes_sent,
            duration: self.duration,
            upstream_service_time: self.upstream_service_time,
            x_forwarded_for: s(&self.x_forwarded_for),
            user_agent: s(&self.user_agent),
            request_id: s(&self.request_id),
            authority: s(&self.authority),
            upstream_host: s(&self.upstream_host),
            upstream_cluster: s(&self.upstream_cluster),
            downstream_local_address: s(&self.downstream_local_address),
            downstream_remote_address: s(&self.downstream_remote_address),
            requested_server_name: s(&self.requested_server_name),
            route_name: s(&self.route_name),
            downstream_peer_uri_san: s(&self.downstream_peer_uri_san),
            upstream_peer_uri_san: s(&self.upstream_peer_uri_san),
        }
    }

    /// A line in either encoding; `None` for anything else (the proxy's other output).
    pub fn parse(line: &str) -> Option<AccessLogLine> {
        let line = line.trim();
        if line.starts_with('{') {
            return serde_json::from_str(line).ok();
        }
        if !line.starts_with('[') {
            return None;
        }
        let f = split_text(line)?;
        if f.len() != 24 {
            return None;
        }
        let opt = |i: usize| (f[i] != "-").then(|| f[i].to_string());
        let mut request = f[1].splitn(3, ' ');
        let (method, path, protocol) = (request.next()?, request.next()?, request.next()?);
        let dash = |s: &str| (s != "-").then(|| s.to_string());
        Some(AccessLogLine {
            start_time: f[0].to_string(),
            method: dash(method),
            path: dash(path),
            protocol: protocol.to_string(),
            response_code: f[2].parse().ok()?,
            response_flags: f[3].to_string(),
            response_code_details: f[4].to_string(),
            bytes_received: f[7].parse().ok()?,
            bytes_sent: f[8].parse().ok()?,
            duration: f[9].parse().ok()?,
            upstream_service_time: f[10].parse().ok(),
            x_forwarded_for: opt(11),
            user_agent: opt(12),
            request_id: opt(13),
            authority: opt(14),
            upstream_host: opt(15),
            upstream_cluster: opt(16),
            downstream_local_address: opt(18),
            downstream_remote_address: opt(19),
            requested_server_name: opt(20),
            route_name: opt(21),
            downstream_peer_uri_san: opt(22),
            upstream_peer_uri_san: opt(23),
        })
    }
}

/// The fields of a text line: `[...]`, `"..."` and bare words, separated by spaces.
fn split_text(line: &str) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    let mut rest = line;
    while !rest.is_empty() {
        let (field, tail) = if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            (&r[..end], &r[end + 1..])
        } else if let Some(r) = rest.strip_prefix('"') {
            let end = r.find('"')?;
            (&r[..end], &r[end + 1..])
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        out.push(field);
        rest = tail.trim_start();
    }
    Some(out)
}

/// One field's value, borrowed from wherever the proxy keeps it (a header, an address, an
/// identity): formatted straight into the line, never copied into a `String` first.
#[derive(Clone, Copy)]
pub enum Val<'a> {
    /// Envoy's `-` (JSON `null`).
    None,
    Str(&'a str),
    Addr(SocketAddr),
    Display(&'a (dyn fmt::Display + Sync)),
}

impl fmt::Display for Val<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Val::None => f.write_str("-"),
            Val::Str(s) => f.write_str(s),
            Val::Addr(a) => fmt::Display::fmt(a, f),
            Val::Display(d) => d.fmt(f),
        }
    }
}

impl Serialize for Val<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Val::None => s.serialize_none(),
            Val::Str(v) => s.serialize_str(v),
            other => s.collect_str(other),
        }
    }
}

impl<'a> From<Option<&'a str>> for Val<'a> {
    fn from(v: Option<&'a str>) -> Val<'a> {
        v.map_or(Val::None, Val::Str)
    }
}

impl From<Option<SocketAddr>> for Val<'_> {
    fn from(v: Option<SocketAddr>) -> Self {
        v.map_or(Val::None, Val::Addr)
    }
}

/// An [`AccessLogLine`]'s fields borrowed: what the proxy writes on its hot path without
/// building the owned line (`start_time` is anything that displays as RFC 3339).
#[derive(Clone, Copy)]
pub struct LineRef<'a> {
    pub start_time: &'a (dyn fmt::Display + Sync),
    pub method: Val<'a>,
    pub path: Val<'a>,
    pub protocol: &'a str,
    pub response_code: u16,
    pub response_flags: &'a str,
    pub response_code_details: &'a str,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration: u64,
    pub upstream_service_time: Option<u64>,
    pub x_forwarded_for: Val<'a>,
    pub user_agent: Val<'a>,
    pub request_id: Val<'a>,
    pub authority: Val<'a>,
    pub upstream_host: Val<'a>,
    pub upstream_cluster: Val<'a>,
    pub downstream_local_address: Val<'a>,
    pub downstream_remote_address: Val<'a>,
    pub requested_server_name: Val<'a>,
    pub route_name: Val<'a>,
    pub downstream_peer_uri_san: Val<'a>,
    pub upstream_peer_uri_san: Val<'a>,
}

impl LineRef<'_> {
    /// Appends the line in `encoding` to `out`, newline included. Text is Istio's default
    /// format (`%CONNECTION_TERMINATION_DETAILS%`, `%UPSTREAM_TRANSPORT_FAILURE_REASON%` and
    /// `%UPSTREAM_LOCAL_ADDRESS%` are always `-`) followed by the two peer identities:
    ///
    /// `[START_TIME] "METHOD PATH PROTOCOL" CODE FLAGS DETAILS - "-" RECEIVED SENT DURATION
    /// SERVICE_TIME "XFF" "USER_AGENT" "REQUEST_ID" "AUTHORITY" "UPSTREAM_HOST" CLUSTER -
    /// LOCAL_ADDRESS REMOTE_ADDRESS SNI ROUTE DOWNSTREAM_PEER UPSTREAM_PEER`
    ///
    /// JSON is one object with [`AccessLogLine`]'s keys, `null` for `-`.
    pub fn write(&self, encoding: AccessLogEncoding, out: &mut Vec<u8>) {
        use std::io::Write as _;
        let start = out.len();
        let ok = match encoding {
            AccessLogEncoding::Json => serde_json::to_writer(&mut *out, self).is_ok(),
            AccessLogEncoding::Text => {
                let r = write!(
                    out,
                    "[{}] \"{} {} {}\" {} {} {} - \"-\" {} {} {} ",
                    self.start_time,
                    self.method,
                    self.path,
                    self.protocol,
                    self.response_code,
                    self.response_flags,
                    self.response_code_details,
                    self.bytes_received,
                    self.bytes_sent,
                    self.duration,
                );
                let r = r.and_then(|()| match self.upstream_service_time {
                    Some(t) => write!(out, "{t}"),
                    None => out.write_all(b"-"),
                });
                r.and_then(|()| {
                    write!(
                        out,
                        " \"{}\" \"{}\" \"{}\" \"{}\" \"{}\" {} - {} {} {} {} {} {}",
                        self.x_forwarded_for,
                        self.user_agent,
                        self.request_id,
                        self.authority,
                        self.upstream_host,
                        self.upstream_cluster,
                        self.downstream_local_address,
                        self.downstream_remote_address,
                        self.requested_server_name,
                        self.route_name,
                        self.downstream_peer_uri_san,
                        self.upstream_peer_uri_san,
                    )
                })
                .is_ok()
            }
        };
        if ok {
            out.push(b'\n');
        } else {
            out.truncate(start);
        }
    }

    /// The owned line (for a span's attributes).
    pub fn to_owned_line(&self) -> AccessLogLine {
        let s = |v: Val<'_>| match v {
            Val::None => None,
            v => Some(v.to_string()),
        };
        AccessLogLine {
            start_time: self.start_time.to_string(),
            method: s(self.method),
            path: s(self.path),
            protocol: self.protocol.to_string(),
            response_code: self.response_code,
            response_flags: self.response_flags.to_string(),
            response_code_details: self.response_code_details.to_string(),
            bytes_received: self.bytes_received,
            bytes_sent: self.bytes_sent,
            duration: self.duration,
            upstream_service_time: self.upstream_service_time,
            x_forwarded_for: s(self.x_forwarded_for),
            user_agent: s(self.user_agent),
            request_id: s(self.request_id),
            authority: s(self.authority),
            upstream_host: s(self.upstream_host),
            upstream_cluster: s(self.upstream_cluster),
            downstream_local_address: s(self.downstream_local_address),
            downstream_remote_address: s(self.downstream_remote_address),
            requested_server_name: s(self.requested_server_name),
            route_name: s(self.route_name),
            downstream_peer_uri_san: s(self.downstream_peer_uri_san),
            upstream_peer_uri_san: s(self.upstream_peer_uri_san),
        }
    }
}

impl Serialize for LineRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut m = s.serialize_struct("AccessLogLine", 23)?;
        m.serialize_field("start_time", &Val::Display(self.start_time))?;
        m.serialize_field("method", &self.method)?;
        m.serialize_field("path", &self.path)?;
        m.serialize_field("protocol", self.protocol)?;
        m.serialize_field("response_code", &self.response_code)?;
        m.serialize_field("response_flags", self.response_flags)?;
        m.serialize_field("response_code_details", self.response_code_details)?;
        m.serialize_field("bytes_received", &self.bytes_received)?;
        m.serialize_field("bytes_sent", &self.bytes_sent)?;
        m.serialize_field("duration", &self.duration)?;
        m.serialize_field("upstream_service_time", &self.upstream_service_time)?;
        m.serialize_field("x_forwarded_for", &self.x_forwarded_for)?;
        m.serialize_field("user_agent", &self.user_agent)?;
        m.serialize_field("request_id", &self.request_id)?;
        m.serialize_field("authority", &self.authority)?;
        m.serialize_field("upstream_host", &self.upstream_host)?;
        m.serialize_field("upstream_cluster", &self.upstream_cluster)?;
        m.serialize_field("downstream_local_address", &self.downstream_local_address)?;
        m.serialize_field("downstream_remote_address", &self.downstream_remote_address)?;
        m.serialize_field("requested_server_name", &self.requested_server_name)?;
        m.serialize_field("route_name", &self.route_name)?;
        m.serialize_field("downstream_peer_uri_san", &self.downstream_peer_uri_san)?;
        m.serialize_field("upstream_peer_uri_san", &self.upstream_peer_uri_san)?;
        m.end()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn line() -> AccessLogLine {
        AccessLogLine {
            start_time: "2026-12-07T19:24:40.824Z".into(),
            method: Some("GET".into()),
            path: Some("/orders/7?x=1".into()),
            protocol: "HTTP/1.1".into(),
            response_code: 200,
            response_flags: "-".into(),
            response_code_details: "via_upstream".into(),
            bytes_received: 8,
            bytes_sent: 120,
            duration: 4,
            upstream_service_time: Some(3),
            user_agent: Some("curl/8.0 (x86_64)".into()),
            request_id: Some("f33e7431-41e7-4dd4-90a9-698430334de0".into()),
            authority: Some("backend:8080".into()),
            upstream_host: Some("10.0.0.7:15006".into()),
            upstream_cluster: Some("outbound|8080|v1|backend.default.svc.cluster.local".into()),
            downstream_remote_address: Some("127.0.0.1:41582".into()),
            route_name: Some("default".into()),
            upstream_peer_uri_san: Some("spiffe://cluster.local/ns/default/sa/backend".into()),
            ..Default::default()
        }
    }

    #[test]
    fn text_and_json_lines_read_back_as_written() {
        for enc in [AccessLogEncoding::Text, AccessLogEncoding::Json] {
            let text = line().render(enc);
            assert!(
                text.ends_with('\n') && text.matches('\n').count() == 1,
                "{text}"
            );
            assert_eq!(AccessLogLine::parse(&text), Some(line()), "{enc:?}: {text}");
        }
        let tcp = AccessLogLine {
            protocol: "TCP".into(),
            method: None,
            path: None,
            response_code: 0,
            response_code_details: "-".into(),
            ..line()
        };
        assert_eq!(
            AccessLogLine::parse(&tcp.render(AccessLogEncoding::Text)),
            Some(tcp)
        );
        // The borrowed writer's JSON is the owned line's serde encoding, key for key.
        let json = line().render(AccessLogEncoding::Json);
        assert_eq!(json.trim_end(), serde_json::to_string(&line()).unwrap());
        assert_eq!(line().as_ref().to_owned_line(), line());
        assert_eq!(
            AccessLogLine::parse("2026-12-07T19:00:00Z INFO meshproxy started"),
            None
        );
    }
}
