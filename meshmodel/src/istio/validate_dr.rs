//! `DestinationRule::validate()`: Istio's validation rules plus meshctl's refusals.

use meshapi::diag::FieldError;

use super::destination_rule::{
    ClientTlsSettings, ConnectionPoolSettings, DestinationRule, H2UpgradePolicy,
    LoadBalancerSettings, OutlierDetection, PortTrafficPolicy, TlsMode, TrafficPolicy,
};
use super::types::is_dns1123_label;
use super::validate::{Report, check_export_to, check_wildcard_domain};

/// Istio's limit on `portLevelSettings` entries.
pub const MAX_PORT_LEVEL_SETTINGS: usize = 4096;
/// Maglev table sizes must be primes below this.
pub const MAGLEV_TABLE_SIZE_LIMIT: u64 = 5_000_011;

impl DestinationRule {
    /// Checks the resource as Istio would, plus meshctl's refusals. Paths start at the document
    /// root (`spec.trafficPolicy.tunnel`).
    pub fn validate(&self) -> Vec<FieldError> {
        let mut r = Report::default();
        self.metadata.validate_into(&mut r, false);
        let spec = &self.spec;
        if spec.host.is_empty() {
            r.error("spec.host", "host is required");
        } else if let Err(e) = check_wildcard_domain(&spec.host) {
            r.error("spec.host", e);
        }
        if let Some(tp) = &spec.traffic_policy {
            validate_traffic_policy(&mut r, "spec.trafficPolicy", tp);
        }
        for (i, s) in spec.subsets.iter().enumerate() {
            let p = format!("spec.subsets[{i}]");
            if s.name.is_empty() {
                r.error(format!("{p}.name"), "subset name is required");
            } else if !is_dns1123_label(&s.name) {
                r.error(
                    format!("{p}.name"),
                    format!("invalid subset name {:?}: lowercase letters, digits and '-', at most 63 characters", s.name),
                );
            } else if spec.subsets[..i].iter().any(|o| o.name == s.name) {
                r.error(
                    format!("{p}.name"),
                    format!("duplicate subset name {:?}", s.name),
                );
            }
            if let Some(tp) = &s.traffic_policy {
                validate_traffic_policy(&mut r, &format!("{p}.trafficPolicy"), tp);
            }
        }
        let ns = self.metadata.namespace.as_deref();
        check_export_to(&mut r, "spec.exportTo", &spec.export_to, ns);
        if let Some(ws) = &spec.workload_selector {
            ws.validate_into(&mut r, "spec.workloadSelector");
            // A rule scoped to some callers can only be seen in its own namespace.
            let own = |e: &String| e == "." || Some(e.as_str()) == ns;
            if spec.export_to.len() > 1 || spec.export_to.iter().any(|e| !own(e)) {
                r.error(
                    "spec.exportTo",
                    "a DestinationRule with a workloadSelector can only be exported to its own namespace (\".\")",
                );
            }
        }
        r.into_errors()
    }
}

fn validate_traffic_policy(r: &mut Report, p: &str, tp: &TrafficPolicy) {
    if tp.load_balancer.is_none()
        && tp.connection_pool.is_none()
        && tp.outlier_detection.is_none()
        && tp.tls.is_none()
        && tp.port_level_settings.is_empty()
        && tp.tunnel.is_none()
        && tp.proxy_protocol.is_none()
        && tp.retry_budget.is_none()
    {
        r.error(p, "a traffic policy must have at least one field");
    }
    if tp.tunnel.is_some() {
        r.unsupported(
            format!("{p}.tunnel"),
            "trafficPolicy.tunnel",
            "tunneling TCP over HTTP CONNECT/POST to an upstream is not served yet",
        );
    }
    if tp.proxy_protocol.is_some() {
        r.unsupported(
            format!("{p}.proxyProtocol"),
            "trafficPolicy.proxyProtocol",
            "sending a PROXY protocol header upstream is not served yet",
        );
    }
    if let Some(lb) = &tp.load_balancer {
        validate_load_balancer(r, &format!("{p}.loadBalancer"), lb);
    }
    if let Some(cp) = &tp.connection_pool {
        validate_connection_pool(r, &format!("{p}.connectionPool"), cp);
    }
    if let Some(od) = &tp.outlier_detection {
        validate_outlier_detection(r, &format!("{p}.outlierDetection"), od);
    }
    if let Some(tls) = &tp.tls {
        validate_tls(r, &format!("{p}.tls"), tls);
    }
    if tp.port_level_settings.len() > MAX_PORT_LEVEL_SETTINGS {
        r.error(
            format!("{p}.portLevelSettings"),
            format!("at most {MAX_PORT_LEVEL_SETTINGS} port level settings are allowed"),
        );
    }
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        validate_port_policy(
            r,
            &format!("{p}.portLevelSettings[{i}]"),
            pl,
            &tp.port_level_settings[..i],
        );
    }
    if let Some(rb) = &tp.retry_budget {
        r.min_duration(
            format!("{p}.retryBudget.budgetInterval"),
            rb.budget_interval.as_ref(),
        );
    }
}

fn validate_port_policy(
    r: &mut Report,
    p: &str,
    pl: &PortTrafficPolicy,
    before: &[PortTrafficPolicy],
) {
    match pl.port.as_ref().map(|s| s.number) {
        None => r.error(format!("{p}.port"), "a port level setting needs a port"),
        Some(None) => r.error(format!("{p}.port.number"), "port number is required"),
        Some(Some(n)) => {
            if before
                .iter()
                .any(|b| b.port.as_ref().and_then(|s| s.number) == Some(n))
            {
                r.error(
                    format!("{p}.port.number"),
                    format!("duplicate port level settings for port {n}"),
                );
            }
        }
    }
    if pl.load_balancer.is_none()
        && pl.connection_pool.is_none()
        && pl.outlier_detection.is_none()
        && pl.tls.is_none()
    {
        r.error(p, "a port level setting must have at least one of loadBalancer, connectionPool, outlierDetection or tls");
    }
    if let Some(lb) = &pl.load_balancer {
        validate_load_balancer(r, &format!("{p}.loadBalancer"), lb);
    }
    if let Some(cp) = &pl.connection_pool {
        validate_connection_pool(r, &format!("{p}.connectionPool"), cp);
    }
    if let Some(od) = &pl.outlier_detection {
        validate_outlier_detection(r, &format!("{p}.outlierDetection"), od);
    }
    if let Some(tls) = &pl.tls {
        validate_tls(r, &format!("{p}.tls"), tls);
    }
}

fn validate_load_balancer(r: &mut Report, p: &str, lb: &LoadBalancerSettings) {
    let kinds = [
        lb.simple.is_some(),
        lb.consistent_hash.is_some(),
        lb.backend_utilization.is_some(),
    ];
    if kinds.iter().filter(|b| **b).count() > 1 {
        r.error(
            p,
            "set only one of simple, consistentHash and backendUtilization",
        );
    }
    if lb.locality_lb_setting.is_some() {
        r.unsupported(
            format!("{p}.localityLbSetting"),
            "loadBalancer.localityLbSetting",
            "meshctl hosts have no localities (region/zone), so locality load balancing has nothing to act on",
        );
    }
    if lb.zone_aware_lb_setting.is_some() {
        r.unsupported(
            format!("{p}.zoneAwareLbSetting"),
            "loadBalancer.zoneAwareLbSetting",
            "meshctl hosts have no zones, so zone-aware load balancing has nothing to act on",
        );
    }
    if lb.backend_utilization.is_some() {
        r.unsupported(
            format!("{p}.backendUtilization"),
            "loadBalancer.backendUtilization",
            "weighting by backend-reported ORCA load is not served yet; use simple: LEAST_REQUEST",
        );
    }
    if let Some(ch) = &lb.consistent_hash {
        let cp = format!("{p}.consistentHash");
        let keys = [
            ch.http_header_name.is_some(),
            ch.http_cookie.is_some(),
            ch.use_source_ip.is_some(),
            ch.http_query_parameter_name.is_some(),
        ];
        if keys.iter().filter(|b| **b).count() > 1 {
            r.error(&cp, "set only one of httpHeaderName, httpCookie, useSourceIp and httpQueryParameterName");
        }
        if ch.ring_hash.is_some() && ch.maglev.is_some() {
            r.error(&cp, "set only one of ringHash and maglev");
        }
        if ch.minimum_ring_size.is_some() && (ch.ring_hash.is_some() || ch.maglev.is_some()) {
            r.error(
                format!("{cp}.minimumRingSize"),
                "the deprecated minimumRingSize cannot be combined with ringHash or maglev; use ringHash.minimumRingSize",
            );
        }
        if let Some(cookie) = &ch.http_cookie {
            if cookie.name.is_empty() {
                r.error(
                    format!("{cp}.httpCookie.name"),
                    "name required for httpCookie",
                );
            }
            for (i, a) in cookie.attributes.iter().enumerate() {
                if a.name.is_empty() {
                    r.error(
                        format!("{cp}.httpCookie.attributes[{i}].name"),
                        "cookie attribute name is required",
                    );
                }
            }
        }
        if let Some(ml) = &ch.maglev {
            let tp = format!("{cp}.maglev.tableSize");
            match ml.table_size {
                None | Some(0) => r.error(tp, "tableSize must be set for maglev"),
                Some(n) if n >= MAGLEV_TABLE_SIZE_LIMIT => {
                    r.error(
                        tp,
                        format!("tableSize must be less than {MAGLEV_TABLE_SIZE_LIMIT} for maglev"),
                    );
                }
                Some(n) if !is_prime(n) => r.error(
                    tp,
                    format!("tableSize {n} must be a prime number for maglev"),
                ),
                Some(_) => {}
            }
        }
    }
    if let Some(w) = &lb.warmup {
        let wp = format!("{p}.warmup");
        r.min_duration(format!("{wp}.duration"), Some(&w.duration));
        if let Some(a) = w.aggression
            && (a < 1.0 || a.is_nan())
        {
            r.error(
                format!("{wp}.aggression"),
                "aggression should be greater than or equal to 1",
            );
        }
    }
    r.min_duration(
        format!("{p}.warmupDurationSecs"),
        lb.warmup_duration_secs.as_ref(),
    );
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n < 4 {
        return true;
    }
    if n.is_multiple_of(2) {
        return false;
    }
    let mut f = 3;
    while f * f <= n {
        if n.is_multiple_of(f) {
            return false;
        }
        f += 2;
    }
    true
}

fn non_negative(r: &mut Report, p: String, v: Option<i32>) {
    if let Some(v) = v
        && v < 0
    {
        r.error(p, format!("{v} must not be negative"));
    }
}

fn validate_connection_pool(r: &mut Report, p: &str, cp: &ConnectionPoolSettings) {
    if cp.http.is_none() && cp.tcp.is_none() {
        r.error(p, "a connection pool must have tcp and/or http settings");
    }
    if let Some(h) = &cp.http {
        let hp = format!("{p}.http");
        non_negative(
            r,
            format!("{hp}.http1MaxPendingRequests"),
            h.http1_max_pending_requests,
        );
        non_negative(r, format!("{hp}.http2MaxRequests"), h.http2_max_requests);
        non_negative(
            r,
            format!("{hp}.maxRequestsPerConnection"),
            h.max_requests_per_connection,
        );
        non_negative(r, format!("{hp}.maxRetries"), h.max_retries);
        non_negative(
            r,
            format!("{hp}.maxConcurrentStreams"),
            h.max_concurrent_streams,
        );
        r.min_duration(format!("{hp}.idleTimeout"), h.idle_timeout.as_ref());
        if h.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade)
            && h.use_client_protocol == Some(true)
        {
            r.error(
                format!("{hp}.useClientProtocol"),
                "useClientProtocol must not be true when h2UpgradePolicy is UPGRADE",
            );
        }
        if let Some(ka) = &h.http2_keep_alive {
            r.min_duration(
                format!("{hp}.http2KeepAlive.interval"),
                ka.interval.as_ref(),
            );
            r.min_duration(format!("{hp}.http2KeepAlive.timeout"), ka.timeout.as_ref());
        }
    }
    if let Some(t) = &cp.tcp {
        let tp = format!("{p}.tcp");
        non_negative(r, format!("{tp}.maxConnections"), t.max_connections);
        r.min_duration(format!("{tp}.connectTimeout"), t.connect_timeout.as_ref());
        r.min_duration(
            format!("{tp}.maxConnectionDuration"),
            t.max_connection_duration.as_ref(),
        );
        // 0s disables the idle timeout.
        if let Some(idle) = &t.idle_timeout
            && !idle.is_zero()
        {
            r.min_duration(format!("{tp}.idleTimeout"), Some(idle));
        }
        if let Some(ka) = &t.tcp_keepalive {
            r.min_duration(format!("{tp}.tcpKeepalive.time"), ka.time.as_ref());
            r.min_duration(format!("{tp}.tcpKeepalive.interval"), ka.interval.as_ref());
        }
    }
}

fn validate_outlier_detection(r: &mut Report, p: &str, od: &OutlierDetection) {
    r.min_duration(
        format!("{p}.baseEjectionTime"),
        od.base_ejection_time.as_ref(),
    );
    r.min_duration(format!("{p}.interval"), od.interval.as_ref());
    if od.consecutive_local_origin_failures.unwrap_or(0) > 0
        && od.split_external_local_origin_errors != Some(true)
    {
        r.error(
            format!("{p}.consecutiveLocalOriginFailures"),
            "consecutiveLocalOriginFailures needs splitExternalLocalOriginErrors: true",
        );
    }
    for (field, v) in [
        ("maxEjectionPercent", od.max_ejection_percent),
        ("minHealthPercent", od.min_health_percent),
    ] {
        if let Some(v) = v
            && !(0..=100).contains(&v)
        {
            r.error(
                format!("{p}.{field}"),
                format!("percentage {v} is not in range 0..100"),
            );
        }
    }
    for (i, code) in od.outlier_detection_http_error_codes.iter().enumerate() {
        if !(100..=599).contains(code) {
            r.error(
                format!("{p}.outlierDetectionHttpErrorCodes[{i}]"),
                format!("{code} is not an HTTP status code (100-599)"),
            );
        }
    }
}

fn validate_tls(r: &mut Report, p: &str, tls: &ClientTlsSettings) {
    let mode = tls.mode;
    // meshctl's own refusals: what the proxy cannot do.
    let conflict = matches!(mode, Some(TlsMode::Simple | TlsMode::Mutual))
        && (tls.client_certificate.is_some()
            || tls.private_key.is_some()
            || tls.ca_certificates.is_some()
            || tls.ca_crl.is_some());
    // (Istio's own conflict error below says more about a credentialName next to files.)
    if tls.credential_name.is_some() && !conflict && mode != Some(TlsMode::IstioMutual) {
        r.unsupported(
            format!("{p}.credentialName"),
            "tls.credentialName",
            "no Kubernetes secrets; name PEM files with caCertificates, clientCertificate and privateKey",
        );
    }
    if tls.ca_crl.is_some() {
        r.unsupported(
            format!("{p}.caCrl"),
            "tls.caCrl",
            "certificate revocation lists are not checked yet",
        );
    }
    if tls.insecure_skip_verify == Some(true) {
        let bad = match mode {
            Some(TlsMode::Simple) => {
                tls.ca_certificates.is_some()
                    || tls.credential_name.is_some()
                    || !tls.subject_alt_names.is_empty()
            }
            Some(TlsMode::Mutual) => {
                tls.ca_certificates.is_some() || !tls.subject_alt_names.is_empty()
            }
            _ => false,
        };
        if bad {
            r.error(
                format!("{p}.insecureSkipVerify"),
                "cannot have a CA certificate or subjectAltNames when insecureSkipVerify is set",
            );
        }
    }
    match mode {
        Some(TlsMode::Simple | TlsMode::Mutual) if tls.credential_name.is_some() => {
            let files = tls.client_certificate.is_some()
                || tls.private_key.is_some()
                || tls.ca_certificates.is_some()
                || tls.ca_crl.is_some();
            if files {
                r.error(
                    format!("{p}.credentialName"),
                    "cannot set clientCertificate, privateKey, caCertificates or caCrl when credentialName is set",
                );
            }
        }
        Some(TlsMode::Mutual) => {
            if tls.client_certificate.is_none() {
                r.error(
                    format!("{p}.clientCertificate"),
                    "clientCertificate is required for MUTUAL tls",
                );
            }
            if tls.private_key.is_none() {
                r.error(
                    format!("{p}.privateKey"),
                    "privateKey is required for MUTUAL tls",
                );
            }
        }
        Some(TlsMode::IstioMutual) => {
            for (field, set) in [
                ("clientCertificate", tls.client_certificate.is_some()),
                ("privateKey", tls.private_key.is_some()),
                ("caCertificates", tls.ca_certificates.is_some()),
                ("credentialName", tls.credential_name.is_some()),
            ] {
                if set {
                    r.error(
                        format!("{p}.{field}"),
                        format!("ISTIO_MUTUAL uses the mesh's certificates; remove {field}"),
                    );
                }
            }
        }
        _ => {}
    }
}
