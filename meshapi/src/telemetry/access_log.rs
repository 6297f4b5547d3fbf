//! Access logs: one line per HTTP request and per TCP connection (Envoy's default text format
//! or JSON, Istio's `accessLogFile`/`accessLogEncoding`), on or off per workload (Telemetry
//! `accessLogging`).

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
    /// The line in `encoding`, newline included. Text is Istio's default format
    /// (`%CONNECTION_TERMINATION_DETAILS%`, `%UPSTREAM_TRANSPORT_FAILURE_REASON%` and
    /// `%UPSTREAM_LOCAL_ADDRESS%` are always `-`) followed by the two peer identities:
    ///
    /// `[START_TIME] "METHOD PATH PROTOCOL" CODE FLAGS DETAILS - "-" RECEIVED SENT DURATION
    /// SERVICE_TIME "XFF" "USER_AGENT" "REQUEST_ID" "AUTHORITY" "UPSTREAM_HOST" CLUSTER -
    /// LOCAL_ADDRESS REMOTE_ADDRESS SNI ROUTE DOWNSTREAM_PEER UPSTREAM_PEER`
    pub fn render(&self, encoding: AccessLogEncoding) -> String {
        match encoding {
            AccessLogEncoding::Json => {
                let mut s = serde_json::to_string(self).unwrap_or_default();
                s.push('\n');
                s
            }
            AccessLogEncoding::Text => {
                let d = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
                format!(
                    "[{}] \"{} {} {}\" {} {} {} - \"-\" {} {} {} {} \"{}\" \"{}\" \"{}\" \"{}\" \"{}\" {} - {} {} {} {} {} {}\n",
                    self.start_time,
                    d(&self.method),
                    d(&self.path),
                    self.protocol,
                    self.response_code,
                    self.response_flags,
                    self.response_code_details,
                    self.bytes_received,
                    self.bytes_sent,
                    self.duration,
                    self.upstream_service_time
                        .map_or_else(|| "-".to_string(), |t| t.to_string()),
                    d(&self.x_forwarded_for),
                    d(&self.user_agent),
                    d(&self.request_id),
                    d(&self.authority),
                    d(&self.upstream_host),
                    d(&self.upstream_cluster),
                    d(&self.downstream_local_address),
                    d(&self.downstream_remote_address),
                    d(&self.requested_server_name),
                    d(&self.route_name),
                    d(&self.downstream_peer_uri_san),
                    d(&self.upstream_peer_uri_san),
                )
            }
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
        assert_eq!(
            AccessLogLine::parse("2026-12-07T19:00:00Z INFO meshproxy started"),
            None
        );
    }
}
