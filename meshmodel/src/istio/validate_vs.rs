//! `VirtualService::validate()`: Istio's own validation rules (the CRD schema's oneofs and
//! required fields, and istiod's webhook checks) plus meshctl's "not supported yet" refusals.

use meshapi::diag::FieldError;

use super::types::is_dns1123_label;
use super::validate::{
    Report, base64_len, check_export_to, check_header_name, check_header_value, check_ip_or_cidr,
    check_regex, check_wildcard_domain, is_base64, is_ip,
};
use super::virtual_service::{
    CorsPolicy, Destination, HeaderOperations, Headers, HttpDirectResponse, HttpFaultInjection,
    HttpMatchRequest, HttpRedirect, HttpRetry, HttpRewrite, HttpRoute, L4MatchAttributes,
    RouteDestination, StringMatch, TcpRoute, VirtualService,
};

/// The gateway name that means "all sidecars in the mesh", the only one meshctl serves.
pub const MESH_GATEWAY: &str = "mesh";

/// gRPC status names accepted by `fault.abort.grpcStatus`.
pub const GRPC_STATUS_NAMES: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

const CORS_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*",
];

/// Largest direct response body Istio accepts.
const MAX_DIRECT_RESPONSE_BODY: usize = 1024 * 1024;

impl VirtualService {
    /// Checks the resource as Istio would, plus meshctl's refusals. Paths start at the document
    /// root (`spec.http[0].retries.attempts`).
    pub fn validate(&self) -> Vec<FieldError> {
        let mut r = Report::default();
        self.metadata.validate_into(&mut r, false);
        let spec = &self.spec;
        if spec.hosts.is_empty() {
            r.unsupported(
                "spec.hosts",
                "a VirtualService without hosts",
                "that is an Istio delegate VirtualService, and delegation is not served; list the hosts this VirtualService routes",
            );
        }
        // `*` is refused only when the rules apply to the mesh; gateway-bound ones are refused for
        // their gateway instead.
        let applies_to_mesh =
            spec.gateways.is_empty() || spec.gateways.iter().any(|g| g == MESH_GATEWAY);
        for (i, host) in spec.hosts.iter().enumerate() {
            let p = format!("spec.hosts[{i}]");
            if host == "*" {
                if applies_to_mesh {
                    r.error(p, "wildcard host * is not allowed for a VirtualService bound to the mesh; name the service");
                }
            } else if let Err(e) = check_wildcard_domain(host)
                && !is_ip(host)
            {
                r.error(p, e);
            } else if spec.hosts[..i].contains(host) {
                r.error(p, format!("duplicate host {host:?}"));
            }
        }
        for (i, gw) in spec.gateways.iter().enumerate() {
            check_gateway(&mut r, &format!("spec.gateways[{i}]"), gw);
        }
        if spec.http.is_empty() && spec.tcp.is_empty() && spec.tls.is_empty() {
            r.error(
                "spec",
                "http, tcp or tls must be provided in a VirtualService",
            );
        }
        if !spec.tls.is_empty() {
            r.unsupported(
                "spec.tls",
                "tls",
                "SNI routing of TLS passthrough traffic is not served yet; route the traffic with `tcp` or `http`",
            );
        }
        for (i, route) in spec.http.iter().enumerate() {
            validate_http_route(&mut r, &format!("spec.http[{i}]"), route);
        }
        for (i, route) in spec.tcp.iter().enumerate() {
            validate_tcp_route(&mut r, &format!("spec.tcp[{i}]"), route);
        }
        check_export_to(
            &mut r,
            "spec.exportTo",
            &spec.export_to,
            self.metadata.namespace.as_deref(),
        );
        r.into_errors()
    }
}

fn check_gateway(r: &mut Report, path: &str, gw: &str) {
    if gw != MESH_GATEWAY {
        r.unsupported(
            path,
            &format!("gateway {gw:?}"),
            "meshctl has no ingress or egress gateways yet; only `mesh` (all sidecars) is served, so drop the gateway or list only `mesh`",
        );
    }
}

fn validate_http_route(r: &mut Report, p: &str, h: &HttpRoute) {
    if h.delegate.is_some() {
        r.unsupported(
            format!("{p}.delegate"),
            "delegate",
            "VirtualService delegation is not served; write the routes in this VirtualService",
        );
    }
    // Exactly one of route, redirect, directResponse (or delegate, refused above).
    let has_route = !h.route.is_empty();
    if let Some(_redirect) = &h.redirect {
        if has_route {
            r.error(
                format!("{p}.redirect"),
                "an HTTP route cannot have both route and redirect",
            );
        }
        if h.fault.is_some() {
            r.error(
                format!("{p}.fault"),
                "an HTTP route cannot have both fault and redirect",
            );
        }
        if h.rewrite.is_some() {
            r.error(
                format!("{p}.rewrite"),
                "an HTTP route cannot have both rewrite and redirect",
            );
        }
        if h.direct_response.is_some() {
            r.error(
                format!("{p}.directResponse"),
                "an HTTP route cannot have both directResponse and redirect",
            );
        }
    } else if h.direct_response.is_some() {
        if has_route {
            r.error(
                format!("{p}.directResponse"),
                "an HTTP route cannot have both route and directResponse",
            );
        }
        if h.fault.is_some() {
            r.error(
                format!("{p}.fault"),
                "an HTTP route cannot have both fault and directResponse",
            );
        }
        if h.rewrite.is_some() {
            r.error(
                format!("{p}.rewrite"),
                "an HTTP route cannot have both rewrite and directResponse",
            );
        }
    } else if !has_route && h.delegate.is_none() {
        r.error_hint(
            p,
            "an HTTP route needs one of route, redirect or directResponse",
            "add `route: [{destination: {host: <service>}}]`",
        );
    }
    if h.mirror.is_some() && !h.mirrors.is_empty() {
        r.error(
            format!("{p}.mirrors"),
            "an HTTP route cannot have both mirror and mirrors",
        );
    }
    if h.mirror_percent.is_some() && h.mirror_percentage.is_some() {
        r.error(
            format!("{p}.mirrorPercent"),
            "set only one of mirrorPercentage and the deprecated mirrorPercent",
        );
    }

    for (j, m) in h.r#match.iter().enumerate() {
        validate_match(r, &format!("{p}.match[{j}]"), m);
    }
    for (k, d) in h.route.iter().enumerate() {
        let dp = format!("{p}.route[{k}]");
        check_route_destination(r, &dp, d.destination.as_ref(), d.weight);
        if let Some(hd) = &d.headers {
            validate_headers(r, &format!("{dp}.headers"), hd);
        }
    }
    check_total_weight(r, &format!("{p}.route"), h.route.iter().map(|d| d.weight));
    if let Some(redirect) = &h.redirect {
        validate_redirect(r, &format!("{p}.redirect"), redirect);
    }
    if let Some(dr) = &h.direct_response {
        validate_direct_response(r, &format!("{p}.directResponse"), dr);
    }
    if let Some(rw) = &h.rewrite {
        validate_rewrite(r, &format!("{p}.rewrite"), rw, h.headers.as_ref());
    }
    r.min_duration(format!("{p}.timeout"), h.timeout.as_ref());
    if let Some(retries) = &h.retries {
        validate_retries(r, &format!("{p}.retries"), retries);
    }
    if let Some(fault) = &h.fault {
        validate_fault(r, &format!("{p}.fault"), fault);
    }
    if let Some(m) = &h.mirror {
        validate_destination(r, &format!("{p}.mirror"), m);
    }
    for (k, m) in h.mirrors.iter().enumerate() {
        validate_destination(r, &format!("{p}.mirrors[{k}].destination"), &m.destination);
    }
    if let Some(cors) = &h.cors_policy {
        validate_cors(r, &format!("{p}.corsPolicy"), cors);
    }
    if let Some(hd) = &h.headers {
        validate_headers(r, &format!("{p}.headers"), hd);
    }
}

fn validate_match(r: &mut Report, p: &str, m: &HttpMatchRequest) {
    // `uri` may have an empty prefix (matches everything); the others may not.
    if let Some(uri) = &m.uri {
        check_string_match(r, &format!("{p}.uri"), uri, true);
    }
    for (field, sm) in [
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(sm) = sm {
            check_string_match(r, &format!("{p}.{field}"), sm, false);
        }
    }
    for (name, sm) in &m.headers {
        let hp = format!("{p}.headers.{name}");
        if name.starts_with("@request.auth.claims") {
            r.unsupported(
                hp,
                &format!("header {name:?}"),
                "routing on JWT claims happens at an ingress gateway in Istio, and meshctl has none; match on the claim in an AuthorizationPolicy (request.auth.claims[...]) instead",
            );
            continue;
        }
        if let Err(e) = check_header_name(name) {
            r.error(&hp, e);
        }
        check_string_match(r, &hp, sm, false);
    }
    for (name, sm) in &m.without_headers {
        let hp = format!("{p}.withoutHeaders.{name}");
        if name.starts_with("@request.auth.claims") {
            r.unsupported(
                hp,
                &format!("header {name:?}"),
                "routing on JWT claims happens at an ingress gateway in Istio, and meshctl has none; match on the claim in an AuthorizationPolicy (request.auth.claims[...]) instead",
            );
            continue;
        }
        if let Err(e) = check_header_name(name) {
            r.error(&hp, e);
        }
        // `regex: "*"` is Istio's "header absent", not a regex.
        if sm.regex.as_deref() != Some("*") || sm.set_count() > 1 {
            check_string_match(r, &hp, sm, false);
        }
    }
    for (name, sm) in &m.query_params {
        check_string_match(r, &format!("{p}.queryParams.{name}"), sm, false);
    }
    for (i, gw) in m.gateways.iter().enumerate() {
        check_gateway(r, &format!("{p}.gateways[{i}]"), gw);
    }
    check_source_namespace(
        r,
        &format!("{p}.sourceNamespace"),
        m.source_namespace.as_deref(),
    );
}

fn check_source_namespace(r: &mut Report, p: &str, ns: Option<&str>) {
    if let Some(ns) = ns
        && !is_dns1123_label(ns)
    {
        r.error(
            p,
            format!("invalid sourceNamespace {ns:?}: must be a namespace name"),
        );
    }
}

/// A `StringMatch`: at most one of exact/prefix/regex; a prefix may be empty only for `uri`;
/// regexes compile with RE2 semantics.
pub(crate) fn check_string_match(r: &mut Report, p: &str, sm: &StringMatch, empty_prefix_ok: bool) {
    if sm.set_count() > 1 {
        r.error(p, "set only one of exact, prefix or regex");
        return;
    }
    if let Some(prefix) = &sm.prefix
        && prefix.is_empty()
        && !empty_prefix_ok
    {
        r.error(format!("{p}.prefix"), "prefix must not be empty");
    }
    if let Some(re) = &sm.regex
        && let Err(e) = check_regex(re)
    {
        r.error(format!("{p}.regex"), e);
    }
}

fn check_route_destination(
    r: &mut Report,
    p: &str,
    dest: Option<&Destination>,
    weight: Option<i32>,
) {
    match dest {
        None => r.error(format!("{p}.destination"), "destination is required"),
        Some(d) => validate_destination(r, &format!("{p}.destination"), d),
    }
    if let Some(w) = weight
        && w < 0
    {
        r.error(
            format!("{p}.weight"),
            format!("weight {w} must not be negative"),
        );
    }
}

fn check_total_weight(
    r: &mut Report,
    p: &str,
    weights: impl ExactSizeIterator<Item = Option<i32>>,
) {
    let n = weights.len();
    let total: i64 = weights.map(|w| i64::from(w.unwrap_or(0).max(0))).sum();
    if n > 1 && total == 0 {
        r.error_hint(
            p,
            "the total weight of the destinations is 0, so no traffic can be routed",
            "give at least one destination a positive weight",
        );
    }
}

pub(crate) fn validate_destination(r: &mut Report, p: &str, d: &Destination) {
    if d.host == "*" {
        r.error(
            format!("{p}.host"),
            "destination host cannot be *; name a service",
        );
    } else if let Err(e) = check_wildcard_domain(&d.host) {
        r.error(format!("{p}.host"), e);
    }
    if let Some(s) = &d.subset
        && !is_dns1123_label(s)
    {
        r.error(
            format!("{p}.subset"),
            format!("invalid subset name {s:?}: lowercase letters, digits and '-', at most 63 characters"),
        );
    }
    if let Some(port) = &d.port
        && port.number.is_none()
    {
        r.error(format!("{p}.port.number"), "port number is required");
    }
}

fn validate_headers(r: &mut Report, p: &str, h: &Headers) {
    if let Some(req) = &h.request {
        check_header_ops(r, &format!("{p}.request"), req, true);
    }
    if let Some(resp) = &h.response {
        check_header_ops(r, &format!("{p}.response"), resp, false);
    }
}

fn check_header_ops(r: &mut Report, p: &str, ops: &HeaderOperations, request: bool) {
    use meshapi::traffic::is_authority_header as is_authority;
    for (op, map) in [("set", &ops.set), ("add", &ops.add)] {
        for (name, value) in map {
            let hp = format!("{p}.{op}.{name}");
            if name.is_empty() {
                r.error(&hp, "header name must not be empty");
            } else if request && is_authority(name) {
                // Rewriting the authority through headers is allowed on requests.
            } else if meshapi::headers::is_reserved(name) {
                r.error_hint(
                    &hp,
                    format!("header {name:?} is reserved by meshctl's proxies"),
                    "the proxies set and strip it themselves; use another name (x-mesh-* is free)",
                );
            } else if name.starts_with(':') {
                r.error(
                    &hp,
                    format!(
                        "invalid header {name:?}: pseudo-headers (\":\" prefix) cannot be changed"
                    ),
                );
            } else if !request && name.eq_ignore_ascii_case("host") {
                r.error(
                    &hp,
                    format!("invalid header {name:?}: cannot set the Host header on a response"),
                );
            } else if let Err(e) = check_header_name(name) {
                r.error(&hp, e);
            }
            if let Err(e) = check_header_value(value) {
                r.error(&hp, e);
            }
        }
    }
    for (i, name) in ops.remove.iter().enumerate() {
        let hp = format!("{p}.remove[{i}]");
        if name.is_empty() {
            r.error(hp, "header name must not be empty");
        } else if name.starts_with(':') || name.eq_ignore_ascii_case("host") {
            r.error(
                hp,
                format!(
                    "invalid header {name:?}: the Host header and pseudo-headers cannot be removed"
                ),
            );
        }
    }
}

fn validate_redirect(r: &mut Report, p: &str, rd: &HttpRedirect) {
    if rd.uri.is_none()
        && rd.authority.is_none()
        && rd.port.is_none()
        && rd.derive_port.is_none()
        && rd.scheme.is_none()
        && rd.prefix_rewrite.is_none()
    {
        r.error(p, "a redirect must set at least one of uri, prefixRewrite, authority, scheme, port or derivePort");
    }
    if rd.port.is_some() && rd.derive_port.is_some() {
        r.error(
            format!("{p}.derivePort"),
            "set only one of port and derivePort",
        );
    }
    if rd.uri.is_some() && rd.prefix_rewrite.is_some() {
        r.error(
            format!("{p}.prefixRewrite"),
            "set only one of uri and prefixRewrite",
        );
    }
    if let Some(code) = rd.redirect_code
        && !(300..=399).contains(&code)
    {
        r.error(
            format!("{p}.redirectCode"),
            format!("{code} is not a valid redirect code: must be 3xx"),
        );
    }
    if let Some(s) = &rd.scheme
        && s != "http"
        && s != "https"
    {
        r.error(
            format!("{p}.scheme"),
            format!("invalid redirect scheme {s:?}: must be \"http\" or \"https\""),
        );
    }
}

fn validate_direct_response(r: &mut Report, p: &str, d: &HttpDirectResponse) {
    if !(200..=599).contains(&d.status) {
        r.error(
            format!("{p}.status"),
            format!("HTTP status {} is not in range 200-599", d.status),
        );
    }
    if let Some(body) = &d.body {
        let bp = format!("{p}.body");
        match (&body.string, &body.bytes) {
            (Some(_), Some(_)) => r.error(&bp, "set only one of string and bytes"),
            (Some(s), None) if s.len() > MAX_DIRECT_RESPONSE_BODY => {
                r.error(
                    format!("{bp}.string"),
                    "a direct response body must be smaller than 1 MiB",
                );
            }
            (None, Some(b)) if !is_base64(b) => {
                r.error(format!("{bp}.bytes"), "bytes must be standard base64");
            }
            (None, Some(b)) if base64_len(b) > MAX_DIRECT_RESPONSE_BODY => {
                r.error(
                    format!("{bp}.bytes"),
                    "a direct response body must be smaller than 1 MiB",
                );
            }
            _ => {}
        }
    }
}

fn validate_rewrite(r: &mut Report, p: &str, rw: &HttpRewrite, headers: Option<&Headers>) {
    if rw.uri.is_some() && rw.uri_regex_rewrite.is_some() {
        r.error(
            format!("{p}.uriRegexRewrite"),
            "set only one of uri and uriRegexRewrite",
        );
    }
    if rw.uri.is_none() && rw.uri_regex_rewrite.is_none() && rw.authority.is_none() {
        r.error(
            p,
            "a rewrite must set at least one of uri, uriRegexRewrite or authority",
        );
    }
    if let Some(rr) = &rw.uri_regex_rewrite {
        let rp = format!("{p}.uriRegexRewrite");
        match (&rr.r#match, &rr.rewrite) {
            (Some(m), Some(_)) => {
                if let Err(e) = check_regex(m) {
                    r.error(format!("{rp}.match"), e);
                }
            }
            _ => r.error(rp, "uriRegexRewrite needs both match and rewrite"),
        }
    }
    // The authority may be rewritten in one place only.
    if rw.authority.is_some()
        && let Some(req) = headers.and_then(|h| h.request.as_ref())
        && req
            .set
            .keys()
            .chain(req.add.keys())
            .any(|k| k.eq_ignore_ascii_case(":authority") || k.eq_ignore_ascii_case("host"))
    {
        r.error(
            format!("{p}.authority"),
            "the authority is rewritten both here and in headers.request; keep one",
        );
    }
}

fn validate_retries(r: &mut Report, p: &str, rt: &HttpRetry) {
    match rt.attempts {
        Some(a) if a < 0 => r.error(
            format!("{p}.attempts"),
            format!("attempts {a} must not be negative"),
        ),
        Some(a) if a > 0 => {}
        _ => {
            if rt.per_try_timeout.is_some()
                || rt.retry_on.is_some()
                || rt.retry_remote_localities.is_some()
            {
                r.error_hint(
                    format!("{p}.attempts"),
                    "attempts is 0 or unset, which disables retries, but other retry settings are given",
                    format!("set attempts (Istio's default is {})", HttpRetry::DEFAULT_ATTEMPTS),
                );
            }
        }
    }
    r.min_duration(format!("{p}.perTryTimeout"), rt.per_try_timeout.as_ref());
    r.min_duration(format!("{p}.backoff"), rt.backoff.as_ref());
}

fn validate_fault(r: &mut Report, p: &str, f: &HttpFaultInjection) {
    if f.abort.is_none() && f.delay.is_none() {
        r.error(p, "fault injection needs an abort and/or a delay");
    }
    if let Some(d) = &f.delay {
        let dp = format!("{p}.delay");
        match (&d.fixed_delay, &d.exponential_delay) {
            (Some(_), Some(_)) => r.error(&dp, "set only one of fixedDelay and exponentialDelay"),
            (None, None) => r.error(&dp, "a delay needs fixedDelay"),
            _ => {}
        }
        r.min_duration(format!("{dp}.fixedDelay"), d.fixed_delay.as_ref());
        if d.exponential_delay.is_some() {
            r.unsupported(
                format!("{dp}.exponentialDelay"),
                "exponentialDelay",
                "Istio does not implement it either; use fixedDelay",
            );
        }
        if d.percentage.is_some() && d.percent.is_some() {
            r.error(
                format!("{dp}.percent"),
                "set only one of percentage and the deprecated percent",
            );
        }
        if let Some(pc) = &d.percentage {
            check_fault_percentage(r, &format!("{dp}.percentage.value"), pc.value.value());
        }
    }
    if let Some(a) = &f.abort {
        let ap = format!("{p}.abort");
        let set = [
            a.http_status.is_some(),
            a.grpc_status.is_some(),
            a.http2_error.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        match set {
            0 => r.error(&ap, "an abort needs httpStatus or grpcStatus"),
            1 => {}
            _ => r.error(&ap, "set only one of httpStatus, grpcStatus and http2Error"),
        }
        if let Some(s) = a.http_status
            && !(200..=599).contains(&s)
        {
            r.error(
                format!("{ap}.httpStatus"),
                format!("HTTP status {s} is not in range 200-599"),
            );
        }
        if let Some(g) = &a.grpc_status
            && !GRPC_STATUS_NAMES.contains(&g.as_str())
        {
            r.error(
                format!("{ap}.grpcStatus"),
                format!("gRPC status {g:?} is not supported; use a status name such as UNAVAILABLE or NOT_FOUND"),
            );
        }
        if a.http2_error.is_some() {
            r.unsupported(
                format!("{ap}.http2Error"),
                "http2Error",
                "Istio does not implement HTTP/2 error aborts either; use httpStatus or grpcStatus",
            );
        }
        if let Some(pc) = &a.percentage {
            check_fault_percentage(r, &format!("{ap}.percentage.value"), pc.value.value());
        }
    }
}

fn check_fault_percentage(r: &mut Report, p: &str, v: f64) {
    if v > 0.0 && v < 0.0001 {
        r.error(
            p,
            format!("percentage {v} is neither 0 nor in range [0.0001, 100]"),
        );
    }
}

fn validate_cors(r: &mut Report, p: &str, c: &CorsPolicy) {
    for (i, o) in c.allow_origins.iter().enumerate() {
        let op = format!("{p}.allowOrigins[{i}]");
        if o.set_count() == 0
            || o.exact
                .as_deref()
                .or(o.prefix.as_deref())
                .or(o.regex.as_deref())
                == Some("")
        {
            r.error(
                &op,
                "an allowed origin needs a non-empty exact, prefix or regex",
            );
        } else {
            check_string_match(r, &op, o, false);
        }
    }
    for (i, m) in c.allow_methods.iter().enumerate() {
        if !CORS_METHODS.contains(&m.as_str()) {
            r.error(
                format!("{p}.allowMethods[{i}]"),
                format!("{m:?} is not a supported HTTP method"),
            );
        }
    }
    for (field, list) in [
        ("allowHeaders", &c.allow_headers),
        ("exposeHeaders", &c.expose_headers),
    ] {
        for (i, h) in list.iter().enumerate() {
            if h != "*"
                && let Err(e) = check_header_name(h)
            {
                r.error(format!("{p}.{field}[{i}]"), e);
            }
        }
    }
    if let Some(age) = &c.max_age {
        r.min_duration(format!("{p}.maxAge"), Some(age));
        if age.get().subsec_nanos() != 0 {
            r.error(
                format!("{p}.maxAge"),
                "maxAge is sent in whole seconds; drop the fraction",
            );
        }
    }
}

fn validate_tcp_route(r: &mut Report, p: &str, t: &TcpRoute) {
    for (j, m) in t.r#match.iter().enumerate() {
        validate_l4_match(r, &format!("{p}.match[{j}]"), m);
    }
    if t.route.is_empty() {
        r.error(
            format!("{p}.route"),
            "a TCP route needs at least one destination in route",
        );
    }
    for (k, d) in t.route.iter().enumerate() {
        check_route_destination(
            r,
            &format!("{p}.route[{k}]"),
            d.destination.as_ref(),
            d.weight,
        );
    }
    check_total_weight(
        r,
        &format!("{p}.route"),
        t.route.iter().map(|d: &RouteDestination| d.weight),
    );
}

fn validate_l4_match(r: &mut Report, p: &str, m: &L4MatchAttributes) {
    for (i, s) in m.destination_subnets.iter().enumerate() {
        if let Err(e) = check_ip_or_cidr(s) {
            r.error(format!("{p}.destinationSubnets[{i}]"), e);
        }
    }
    if let Some(s) = &m.source_subnet
        && let Err(e) = check_ip_or_cidr(s)
    {
        r.error(format!("{p}.sourceSubnet"), e);
    }
    for (i, gw) in m.gateways.iter().enumerate() {
        check_gateway(r, &format!("{p}.gateways[{i}]"), gw);
    }
    check_source_namespace(
        r,
        &format!("{p}.sourceNamespace"),
        m.source_namespace.as_deref(),
    );
}
