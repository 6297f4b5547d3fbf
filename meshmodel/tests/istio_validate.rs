//! Table tests of `validate()`: Istio's oneofs, required fields and minimums, and meshctl's
//! "not supported by meshctl" refusals, each with the field path it reports.

use meshapi::diag::FieldError;
use meshmodel::istio::{IstioResource, MtlsMode};

fn load(api_version: &str, kind: &str, spec: &str) -> IstioResource {
    load_doc(api_version, kind, "metadata: {name: test}\n", spec)
}

fn load_doc(api_version: &str, kind: &str, metadata: &str, spec: &str) -> IstioResource {
    let indented: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    let text = format!("apiVersion: {api_version}\nkind: {kind}\n{metadata}spec:\n{indented}");
    let v: meshapi::yaml::Value =
        meshapi::yaml::from_str(&text).unwrap_or_else(|e| panic!("{text}\n{e}"));
    IstioResource::from_value(api_version, kind, v)
        .unwrap_or_else(|e| panic!("{text}\n{}: {}", e.path, e.message))
}

fn vs(spec: &str) -> Vec<FieldError> {
    load("networking.istio.io/v1", "VirtualService", spec).validate()
}

fn dr(spec: &str) -> Vec<FieldError> {
    load("networking.istio.io/v1beta1", "DestinationRule", spec).validate()
}

fn pa(spec: &str) -> Vec<FieldError> {
    load("security.istio.io/v1", "PeerAuthentication", spec).validate()
}

fn ap(spec: &str) -> Vec<FieldError> {
    load("security.istio.io/v1", "AuthorizationPolicy", spec).validate()
}

/// Asserts `errors` holds an error at `path` whose message contains `msg`, and nothing else.
fn expect_only(case: &str, errors: &[FieldError], path: &str, msg: &str) {
    let found = errors
        .iter()
        .any(|e| e.path == path && e.message.contains(msg));
    assert!(
        found,
        "{case}: expected {path}: ...{msg}...; got {errors:#?}"
    );
    assert_eq!(
        errors.len(),
        1,
        "{case}: only one error expected; got {errors:#?}"
    );
}

const ROUTE: &str = "route: [{destination: {host: reviews}}]";

/// VirtualService cases: (http rule or spec, path, message). A case starting with `hosts` is a
/// whole spec; otherwise it is one HTTP rule of a VirtualService for `reviews`.
const VS_CASES: &[(&str, &str, &str)] = &[
    // route xor redirect xor directResponse
    (
        "{route: [{destination: {host: r}}], redirect: {uri: /x}}",
        "spec.http[0].redirect",
        "both route and redirect",
    ),
    (
        "{route: [{destination: {host: r}}], directResponse: {status: 503}}",
        "spec.http[0].directResponse",
        "both route and directResponse",
    ),
    (
        "{redirect: {uri: /x}, directResponse: {status: 503}}",
        "spec.http[0].directResponse",
        "both directResponse and redirect",
    ),
    (
        "{redirect: {uri: /x}, fault: {abort: {httpStatus: 500}}}",
        "spec.http[0].fault",
        "both fault and redirect",
    ),
    (
        "{directResponse: {status: 200}, rewrite: {uri: /}}",
        "spec.http[0].rewrite",
        "both rewrite and directResponse",
    ),
    (
        "{timeout: 1s}",
        "spec.http[0]",
        "needs one of route, redirect or directResponse",
    ),
    // StringMatch: one of exact/prefix/regex, regexes are RE2
    (
        "{match: [{uri: {exact: /a, prefix: /a}}], ROUTE}",
        "spec.http[0].match[0].uri",
        "only one of exact, prefix or regex",
    ),
    (
        "{match: [{headers: {x-user: {exact: a, regex: a}}}], ROUTE}",
        "spec.http[0].match[0].headers.x-user",
        "only one of",
    ),
    (
        "{match: [{uri: {regex: '(unclosed'}}], ROUTE}",
        "spec.http[0].match[0].uri.regex",
        "invalid regex",
    ),
    (
        "{match: [{uri: {regex: '(a)\\1'}}], ROUTE}",
        "spec.http[0].match[0].uri.regex",
        "invalid regex",
    ),
    (
        "{match: [{uri: {regex: '(?=a)b'}}], ROUTE}",
        "spec.http[0].match[0].uri.regex",
        "invalid regex",
    ),
    (
        "{match: [{queryParams: {q: {regex: '['}}}], ROUTE}",
        "spec.http[0].match[0].queryParams.q.regex",
        "invalid regex",
    ),
    (
        "{match: [{method: {prefix: ''}}], ROUTE}",
        "spec.http[0].match[0].method.prefix",
        "must not be empty",
    ),
    (
        "{match: [{headers: {'bad header': {exact: a}}}], ROUTE}",
        "spec.http[0].match[0].headers.bad header",
        "invalid header name",
    ),
    (
        "{match: [{sourceNamespace: Prod}], ROUTE}",
        "spec.http[0].match[0].sourceNamespace",
        "invalid sourceNamespace",
    ),
    // durations: at least 1ms, whole milliseconds
    (
        "{timeout: 0s, ROUTE}",
        "spec.http[0].timeout",
        "at least 1ms",
    ),
    (
        "{retries: {attempts: 2, perTryTimeout: 500us}, ROUTE}",
        "spec.http[0].retries.perTryTimeout",
        "at least 1ms",
    ),
    (
        "{retries: {attempts: 2, backoff: 1500us}, ROUTE}",
        "spec.http[0].retries.backoff",
        "whole milliseconds",
    ),
    (
        "{fault: {delay: {fixedDelay: 0s, percentage: {value: 10}}}, ROUTE}",
        "spec.http[0].fault.delay.fixedDelay",
        "at least 1ms",
    ),
    (
        "{corsPolicy: {maxAge: 1500ms}, ROUTE}",
        "spec.http[0].corsPolicy.maxAge",
        "whole seconds",
    ),
    // retries
    (
        "{retries: {attempts: -1}, ROUTE}",
        "spec.http[0].retries.attempts",
        "must not be negative",
    ),
    (
        "{retries: {retryOn: 5xx}, ROUTE}",
        "spec.http[0].retries.attempts",
        "disables retries",
    ),
    (
        "{retries: {attempts: 0, perTryTimeout: 1s}, ROUTE}",
        "spec.http[0].retries.attempts",
        "disables retries",
    ),
    // destinations and weights
    (
        "{route: [{destination: {host: r}, weight: -5}]}",
        "spec.http[0].route[0].weight",
        "must not be negative",
    ),
    (
        "{route: [{destination: {host: r, subset: a}}, {destination: {host: r, subset: b}}]}",
        "spec.http[0].route",
        "total weight",
    ),
    (
        "{route: [{weight: 100}]}",
        "spec.http[0].route[0].destination",
        "destination is required",
    ),
    (
        "{route: [{destination: {host: '*'}}]}",
        "spec.http[0].route[0].destination.host",
        "cannot be *",
    ),
    (
        "{route: [{destination: {host: 'bad_host!'}}]}",
        "spec.http[0].route[0].destination.host",
        "invalid host",
    ),
    (
        "{route: [{destination: {host: r, subset: V1}}]}",
        "spec.http[0].route[0].destination.subset",
        "invalid subset name",
    ),
    (
        "{route: [{destination: {host: r, port: {}}}]}",
        "spec.http[0].route[0].destination.port.number",
        "port number is required",
    ),
    // redirect, direct response, rewrite
    (
        "{redirect: {port: 8080, derivePort: FROM_REQUEST_PORT}}",
        "spec.http[0].redirect.derivePort",
        "only one of port and derivePort",
    ),
    (
        "{redirect: {uri: /x, redirectCode: 200}}",
        "spec.http[0].redirect.redirectCode",
        "must be 3xx",
    ),
    (
        "{redirect: {scheme: ftp}}",
        "spec.http[0].redirect.scheme",
        "must be \"http\" or \"https\"",
    ),
    (
        "{redirect: {redirectCode: 302}}",
        "spec.http[0].redirect",
        "at least one of",
    ),
    (
        "{directResponse: {status: 700}}",
        "spec.http[0].directResponse.status",
        "not in range 200-599",
    ),
    (
        "{directResponse: {status: 200, body: {string: a, bytes: YQ==}}}",
        "spec.http[0].directResponse.body",
        "only one of string and bytes",
    ),
    (
        "{directResponse: {status: 200, body: {bytes: 'not base64!'}}}",
        "spec.http[0].directResponse.body.bytes",
        "base64",
    ),
    (
        "{rewrite: {uri: /a, uriRegexRewrite: {match: a, rewrite: b}}, ROUTE}",
        "spec.http[0].rewrite.uriRegexRewrite",
        "only one of uri and uriRegexRewrite",
    ),
    (
        "{rewrite: {}, ROUTE}",
        "spec.http[0].rewrite",
        "at least one of uri",
    ),
    (
        "{rewrite: {uriRegexRewrite: {match: '^/a'}}, ROUTE}",
        "spec.http[0].rewrite.uriRegexRewrite",
        "needs both match and rewrite",
    ),
    (
        "{rewrite: {authority: a}, headers: {request: {set: {host: b}}}, ROUTE}",
        "spec.http[0].rewrite.authority",
        "rewritten both here and in headers",
    ),
    // fault injection
    (
        "{fault: {}, ROUTE}",
        "spec.http[0].fault",
        "needs an abort and/or a delay",
    ),
    (
        "{fault: {abort: {httpStatus: 500, grpcStatus: UNAVAILABLE}}, ROUTE}",
        "spec.http[0].fault.abort",
        "only one of httpStatus",
    ),
    (
        "{fault: {abort: {percentage: {value: 10}}}, ROUTE}",
        "spec.http[0].fault.abort",
        "needs httpStatus or grpcStatus",
    ),
    (
        "{fault: {abort: {grpcStatus: NOPE}}, ROUTE}",
        "spec.http[0].fault.abort.grpcStatus",
        "not supported",
    ),
    (
        "{fault: {abort: {httpStatus: 99}}, ROUTE}",
        "spec.http[0].fault.abort.httpStatus",
        "not in range 200-599",
    ),
    (
        "{fault: {delay: {percentage: {value: 10}}}, ROUTE}",
        "spec.http[0].fault.delay",
        "needs fixedDelay",
    ),
    (
        "{fault: {delay: {fixedDelay: 1s, percent: 5, percentage: {value: 5}}}, ROUTE}",
        "spec.http[0].fault.delay.percent",
        "only one of percentage",
    ),
    (
        "{fault: {abort: {httpStatus: 500, percentage: {value: 0.00001}}}, ROUTE}",
        "spec.http[0].fault.abort.percentage.value",
        "[0.0001, 100]",
    ),
    // mirroring
    (
        "{mirror: {host: a}, mirrors: [{destination: {host: b}}], ROUTE}",
        "spec.http[0].mirrors",
        "both mirror and mirrors",
    ),
    (
        "{mirror: {host: a}, mirrorPercent: 5, mirrorPercentage: {value: 5}, ROUTE}",
        "spec.http[0].mirrorPercent",
        "only one of mirrorPercentage",
    ),
    (
        "{mirrors: [{destination: {host: '*'}}], ROUTE}",
        "spec.http[0].mirrors[0].destination.host",
        "cannot be *",
    ),
    // headers and CORS
    (
        "{headers: {request: {set: {':path': /x}}}, ROUTE}",
        "spec.http[0].headers.request.set.:path",
        "pseudo-headers",
    ),
    (
        "{headers: {response: {remove: [host]}}, ROUTE}",
        "spec.http[0].headers.response.remove[0]",
        "cannot be removed",
    ),
    (
        "{headers: {response: {set: {x-meshctl-response-flags: UF}}}, ROUTE}",
        "spec.http[0].headers.response.set.x-meshctl-response-flags",
        "reserved by meshctl",
    ),
    (
        "{route: [{destination: {host: reviews}, headers: {request: {add: {X-Meshctl-Framing-Error: x}}}}]}",
        "spec.http[0].route[0].headers.request.add.X-Meshctl-Framing-Error",
        "reserved by meshctl",
    ),
    (
        "{headers: {request: {add: {x-a: \"a\\u0001\"}}}, ROUTE}",
        "spec.http[0].headers.request.add.x-a",
        "control characters",
    ),
    (
        "{corsPolicy: {allowMethods: [FETCH]}, ROUTE}",
        "spec.http[0].corsPolicy.allowMethods[0]",
        "not a supported HTTP method",
    ),
    (
        "{corsPolicy: {allowOrigins: [{}]}, ROUTE}",
        "spec.http[0].corsPolicy.allowOrigins[0]",
        "non-empty exact, prefix or regex",
    ),
    // not supported by meshctl
    (
        "{delegate: {name: other}}",
        "spec.http[0].delegate",
        "not supported by meshctl: delegate",
    ),
    (
        "{match: [{gateways: [my-gw]}], ROUTE}",
        "spec.http[0].match[0].gateways[0]",
        "not supported by meshctl: gateway \"my-gw\"",
    ),
    (
        "{match: [{headers: {'@request.auth.claims.group': {exact: a}}}], ROUTE}",
        "spec.http[0].match[0].headers.@request.auth.claims.group",
        "not supported by meshctl: header",
    ),
    (
        "{fault: {delay: {exponentialDelay: 1s}}, ROUTE}",
        "spec.http[0].fault.delay.exponentialDelay",
        "not supported by meshctl: exponentialDelay",
    ),
    (
        "{fault: {abort: {http2Error: REFUSED}}, ROUTE}",
        "spec.http[0].fault.abort.http2Error",
        "not supported by meshctl: http2Error",
    ),
    // whole specs
    (
        "hosts: []\nhttp: [{ROUTE}]",
        "spec.hosts",
        "not supported by meshctl: a VirtualService without hosts",
    ),
    (
        "hosts: [reviews]\ngateways: [bookinfo-gateway]\nhttp: [{ROUTE}]",
        "spec.gateways[0]",
        "not supported by meshctl: gateway \"bookinfo-gateway\"",
    ),
    (
        "hosts: [reviews]\ngateways: [mesh, ingress]\nhttp: [{ROUTE}]",
        "spec.gateways[1]",
        "only `mesh` (all sidecars) is served",
    ),
    (
        "hosts: [reviews]\ntls: [{match: [{sniHosts: [reviews]}], route: [{destination: {host: reviews}}]}]",
        "spec.tls",
        "not supported by meshctl: tls",
    ),
    (
        "hosts: ['*']\nhttp: [{ROUTE}]",
        "spec.hosts[0]",
        "wildcard host * is not allowed",
    ),
    (
        "hosts: [reviews, reviews]\nhttp: [{ROUTE}]",
        "spec.hosts[1]",
        "duplicate host",
    ),
    (
        "hosts: [reviews]",
        "spec",
        "http, tcp or tls must be provided",
    ),
    (
        "hosts: [reviews]\nexportTo: ['*', ns1]\nhttp: [{ROUTE}]",
        "spec.exportTo",
        "both \"*\" and other entries",
    ),
    (
        "hosts: [reviews]\nexportTo: [Bad]\nhttp: [{ROUTE}]",
        "spec.exportTo[0]",
        "invalid exportTo",
    ),
    (
        "hosts: [reviews]\ntcp: [{match: [{port: 5432}]}]",
        "spec.tcp[0].route",
        "needs at least one destination",
    ),
    (
        "hosts: [reviews]\ntcp: [{match: [{destinationSubnets: [10.0.0.0/33]}], route: [{destination: {host: db}}]}]",
        "spec.tcp[0].match[0].destinationSubnets[0]",
        "bad CIDR",
    ),
    (
        "hosts: [reviews]\ntcp: [{match: [{gateways: [gw]}], route: [{destination: {host: db}}]}]",
        "spec.tcp[0].match[0].gateways[0]",
        "not supported by meshctl",
    ),
];

#[test]
fn virtual_service_rules() {
    for (case, path, msg) in VS_CASES {
        let case = case.replace("ROUTE", ROUTE);
        let spec = if case.starts_with("hosts") {
            case.clone()
        } else {
            format!("hosts: [reviews]\nhttp:\n- {case}")
        };
        expect_only(&case, &vs(&spec), path, msg);
    }
}

#[test]
fn valid_virtual_services_have_no_errors() {
    let specs = [
        "hosts: [reviews]\nhttp: [{ROUTE}]",
        "hosts: [reviews, reviews.default.svc.cluster.local, '*.example.com', 10.0.0.1]\ngateways: [mesh]\nexportTo: ['.']\nhttp: [{ROUTE}]",
        "hosts: [reviews]\nhttp:\n- name: canary\n  match: [{name: jason, headers: {end-user: {exact: jason}}, uri: {prefix: ''}, ignoreUriCase: true, port: 9080}, {uri: {regex: '/api/v[0-9]+/.*'}, withoutHeaders: {x-debug: {regex: '*'}}}]\n  route: [{destination: {host: reviews, subset: v2, port: {number: 9080}}, weight: 90, headers: {request: {set: {x-canary: 'true'}}, response: {remove: [x-internal]}}}, {destination: {host: reviews, subset: v1}, weight: 10}]\n  timeout: 10s\n  retries: {attempts: 3, perTryTimeout: 2s, retryOn: 'gateway-error,connect-failure,503', backoff: 50ms}\n  fault: {delay: {fixedDelay: 7s, percentage: {value: 0.5}}, abort: {grpcStatus: UNAVAILABLE, percentage: {value: 1}}}\n  mirror: {host: shadow}\n  mirrorPercentage: {value: 10}\n  corsPolicy: {allowOrigins: [{exact: 'https://a.example'}, {regex: 'https://.*\\.example'}], allowMethods: [GET, POST], allowHeaders: [x-a], maxAge: 24h, allowCredentials: true, unmatchedPreflights: IGNORE}\n  headers: {request: {add: {x-b: b}}}\n- redirect: {uri: /v2, authority: new, redirectCode: 302, derivePort: FROM_PROTOCOL_DEFAULT}\n- directResponse: {status: 503, body: {string: unavailable}}\n- rewrite: {uriRegexRewrite: {match: '^/old/(.*)', rewrite: '/new/\\1'}}\n  ROUTE\n- ROUTE",
        "hosts: [db]\ntcp: [{match: [{port: 5432, sourceLabels: {app: api}, destinationSubnets: [10.0.0.0/8], sourceSubnet: 192.168.0.1}], route: [{destination: {host: db, port: {number: 5432}}, weight: 100}]}]",
    ];
    for spec in specs {
        let spec = spec.replace("ROUTE", ROUTE);
        let errors = vs(&spec);
        assert!(errors.is_empty(), "{spec}\n{errors:#?}");
    }
}

/// DestinationRule cases: (spec, path, message).
const DR_CASES: &[(&str, &str, &str)] = &[
    (
        "host: r\ntrafficPolicy: {tunnel: {targetHost: proxy, targetPort: 8080}}",
        "spec.trafficPolicy.tunnel",
        "not supported by meshctl: trafficPolicy.tunnel",
    ),
    (
        "host: r\ntrafficPolicy: {proxyProtocol: {version: V2}}",
        "spec.trafficPolicy.proxyProtocol",
        "not supported by meshctl: trafficPolicy.proxyProtocol",
    ),
    (
        "host: r\ntrafficPolicy: {loadBalancer: {simple: RANDOM, localityLbSetting: {enabled: true}}}",
        "spec.trafficPolicy.loadBalancer.localityLbSetting",
        "not supported by meshctl: loadBalancer.localityLbSetting",
    ),
    (
        "host: r\ntrafficPolicy: {loadBalancer: {zoneAwareLbSetting: {enabled: true}}}",
        "spec.trafficPolicy.loadBalancer.zoneAwareLbSetting",
        "not supported by meshctl",
    ),
    (
        "host: r\ntrafficPolicy: {loadBalancer: {backendUtilization: {}}}",
        "spec.trafficPolicy.loadBalancer.backendUtilization",
        "not supported by meshctl",
    ),
    (
        "host: r\nsubsets: [{name: v1, trafficPolicy: {tunnel: {targetHost: p, targetPort: 1}}}]",
        "spec.subsets[0].trafficPolicy.tunnel",
        "not supported by meshctl",
    ),
    (
        "host: r\ntrafficPolicy: {portLevelSettings: [{port: {number: 80}, loadBalancer: {localityLbSetting: {}}}]}",
        "spec.trafficPolicy.portLevelSettings[0].loadBalancer.localityLbSetting",
        "not supported by meshctl",
    ),
    (
        "host: r\ntrafficPolicy: {loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}}",
        "spec.trafficPolicy.loadBalancer",
        "only one of simple, consistentHash",
    ),
    (
        "host: r\ntrafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x, useSourceIp: true}}}",
        "spec.trafficPolicy.loadBalancer.consistentHash",
        "only one of httpHeaderName",
    ),
    (
        "host: r\ntrafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, ringHash: {}, maglev: {tableSize: 65537}}}}",
        "spec.trafficPolicy.loadBalancer.consistentHash",
        "only one of ringHash and maglev",
    ),
    (
        "host: r\ntrafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 1000}}}}",
        "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize",
        "prime",
    ),
    (
        "host: r\ntrafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, minimumRingSize: 10, ringHash: {minimumRingSize: 10}}}}",
        "spec.trafficPolicy.loadBalancer.consistentHash.minimumRingSize",
        "cannot be combined",
    ),
    (
        "host: r\ntrafficPolicy: {loadBalancer: {warmup: {duration: 0s}}}",
        "spec.trafficPolicy.loadBalancer.warmup.duration",
        "at least 1ms",
    ),
    (
        "host: r\ntrafficPolicy: {loadBalancer: {warmup: {duration: 1m, aggression: 0.5}}}",
        "spec.trafficPolicy.loadBalancer.warmup.aggression",
        "greater than or equal to 1",
    ),
    (
        "host: r\ntrafficPolicy: {}",
        "spec.trafficPolicy",
        "at least one field",
    ),
    (
        "host: r\ntrafficPolicy: {connectionPool: {}}",
        "spec.trafficPolicy.connectionPool",
        "tcp and/or http",
    ),
    (
        "host: r\ntrafficPolicy: {connectionPool: {tcp: {connectTimeout: 0s}}}",
        "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
        "at least 1ms",
    ),
    (
        "host: r\ntrafficPolicy: {connectionPool: {tcp: {maxConnections: -1}}}",
        "spec.trafficPolicy.connectionPool.tcp.maxConnections",
        "must not be negative",
    ),
    (
        "host: r\ntrafficPolicy: {connectionPool: {http: {h2UpgradePolicy: UPGRADE, useClientProtocol: true}}}",
        "spec.trafficPolicy.connectionPool.http.useClientProtocol",
        "must not be true",
    ),
    (
        "host: r\ntrafficPolicy: {connectionPool: {http: {http2KeepAlive: {interval: 0s}}}}",
        "spec.trafficPolicy.connectionPool.http.http2KeepAlive.interval",
        "at least 1ms",
    ),
    (
        "host: r\ntrafficPolicy: {outlierDetection: {consecutiveLocalOriginFailures: 3}}",
        "spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures",
        "splitExternalLocalOriginErrors",
    ),
    (
        "host: r\ntrafficPolicy: {outlierDetection: {maxEjectionPercent: 150}}",
        "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
        "not in range 0..100",
    ),
    (
        "host: r\ntrafficPolicy: {outlierDetection: {baseEjectionTime: 0s}}",
        "spec.trafficPolicy.outlierDetection.baseEjectionTime",
        "at least 1ms",
    ),
    (
        "host: r\ntrafficPolicy: {tls: {mode: MUTUAL, privateKey: /k.pem}}",
        "spec.trafficPolicy.tls.clientCertificate",
        "required for MUTUAL",
    ),
    (
        "host: r\ntrafficPolicy: {tls: {mode: ISTIO_MUTUAL, caCertificates: /ca.pem}}",
        "spec.trafficPolicy.tls.caCertificates",
        "ISTIO_MUTUAL uses the mesh's certificates",
    ),
    (
        "host: r\ntrafficPolicy: {tls: {mode: SIMPLE, credentialName: c}}",
        "spec.trafficPolicy.tls.credentialName",
        "not supported by meshctl: tls.credentialName (no Kubernetes secrets",
    ),
    (
        "host: r\ntrafficPolicy: {tls: {mode: SIMPLE, caCrl: /crl.pem, caCertificates: /ca.pem}}",
        "spec.trafficPolicy.tls.caCrl",
        "not supported by meshctl",
    ),
    (
        "host: r\ntrafficPolicy: {tls: {mode: SIMPLE, credentialName: c, caCertificates: /ca.pem}}",
        "spec.trafficPolicy.tls.credentialName",
        "when credentialName is set",
    ),
    (
        "host: r\ntrafficPolicy: {tls: {mode: SIMPLE, insecureSkipVerify: true, subjectAltNames: [a]}}",
        "spec.trafficPolicy.tls.insecureSkipVerify",
        "insecureSkipVerify",
    ),
    (
        "host: r\ntrafficPolicy: {portLevelSettings: [{tls: {mode: SIMPLE}}]}",
        "spec.trafficPolicy.portLevelSettings[0].port",
        "needs a port",
    ),
    (
        "host: r\ntrafficPolicy: {portLevelSettings: [{port: {number: 80}}]}",
        "spec.trafficPolicy.portLevelSettings[0]",
        "at least one of",
    ),
    (
        "host: r\ntrafficPolicy: {portLevelSettings: [{port: {number: 80}, tls: {mode: SIMPLE}}, {port: {number: 80}, tls: {mode: DISABLE}}]}",
        "spec.trafficPolicy.portLevelSettings[1].port.number",
        "duplicate",
    ),
    (
        "host: r\nsubsets: [{name: v1}, {name: v1}]",
        "spec.subsets[1].name",
        "duplicate subset name",
    ),
    (
        "host: r\nsubsets: [{name: V1}]",
        "spec.subsets[0].name",
        "invalid subset name",
    ),
    ("host: ''", "spec.host", "host is required"),
    ("host: 'a..b'", "spec.host", "invalid host"),
    (
        "host: r\nworkloadSelector: {matchLabels: {app: a}}\nexportTo: ['*']",
        "spec.exportTo",
        "only be exported to its own namespace",
    ),
];

#[test]
fn destination_rule_rules() {
    for (spec, path, msg) in DR_CASES {
        expect_only(spec, &dr(spec), path, msg);
    }
    // A DestinationRule without spec lacks its host.
    let v: meshapi::yaml::Value = meshapi::yaml::from_str(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: a}\n",
    )
    .expect("yaml");
    let r =
        IstioResource::from_value("networking.istio.io/v1", "DestinationRule", v).expect("loads");
    expect_only("no spec", &r.validate(), "spec.host", "host is required");
}

#[test]
fn valid_destination_rules_have_no_errors() {
    let specs = [
        "host: reviews\nsubsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}]",
        "host: reviews.default.svc.cluster.local\ntrafficPolicy:\n  loadBalancer: {consistentHash: {httpCookie: {name: user, ttl: 0s, path: /, attributes: [{name: SameSite, value: Strict}]}, ringHash: {minimumRingSize: 1024}}, warmup: {duration: 30s, minimumPercent: 10, aggression: 1.5}}\n  connectionPool: {tcp: {maxConnections: 100, connectTimeout: 30ms, idleTimeout: 0s, tcpKeepalive: {time: 7200s, interval: 75s, probes: 9}}, http: {http1MaxPendingRequests: 10, http2MaxRequests: 100, maxRequestsPerConnection: 1, maxRetries: 3, idleTimeout: 1h, h2UpgradePolicy: UPGRADE}}\n  outlierDetection: {consecutive5xxErrors: 7, consecutiveGatewayErrors: 3, interval: 5m, baseEjectionTime: 15m, maxEjectionPercent: 100, splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 2, outlierDetectionHttpErrorCodes: [500, 503]}\n  tls: {mode: ISTIO_MUTUAL, sni: reviews}\n  portLevelSettings: [{port: {number: 80}, loadBalancer: {simple: LEAST_REQUEST}}, {port: {number: 443}, tls: {mode: SIMPLE}}]\n  retryBudget: {percent: 25, minRetryConcurrency: 5}",
        "host: db\ntrafficPolicy: {tls: {mode: MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem}}\nworkloadSelector: {matchLabels: {app: api}}\nexportTo: ['.']",
        "host: db\ntrafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 65537}}}}",
    ];
    for spec in specs {
        let errors = dr(spec);
        assert!(errors.is_empty(), "{spec}\n{errors:#?}");
    }
}

#[test]
fn peer_authentication_rules() {
    assert!(pa("mtls: {mode: STRICT}").is_empty());
    assert!(pa("selector: {matchLabels: {app: db}}\nmtls: {mode: PERMISSIVE}\nportLevelMtls: {5432: {mode: DISABLE}, '8080': {mode: STRICT}}").is_empty());
    expect_only(
        "no selector",
        &pa("mtls: {mode: STRICT}\nportLevelMtls: {8080: {mode: DISABLE}}"),
        "spec.portLevelMtls",
        "portLevelMtls requires selector",
    );
    expect_only(
        "empty selector",
        &pa("selector: {}\nportLevelMtls: {8080: {mode: DISABLE}}"),
        "spec.portLevelMtls",
        "requires selector",
    );
    expect_only(
        "empty map",
        &pa("selector: {matchLabels: {app: a}}\nportLevelMtls: {}"),
        "spec.portLevelMtls",
        "at least one port",
    );

    let r = load(
        "security.istio.io/v1beta1",
        "PeerAuthentication",
        "selector: {matchLabels: {app: db}}\nmtls: {mode: STRICT}\nportLevelMtls: {5432: {mode: DISABLE}, 9000: {mode: UNSET}}",
    );
    let IstioResource::PeerAuthentication(p) = r else {
        panic!()
    };
    assert_eq!(p.spec.mode_for_port(5432), Some(MtlsMode::Disable));
    assert_eq!(
        p.spec.mode_for_port(9000),
        Some(MtlsMode::Strict),
        "UNSET inherits"
    );
    assert_eq!(p.spec.mode_for_port(80), Some(MtlsMode::Strict));
    assert_eq!(MtlsMode::DEFAULT, MtlsMode::Permissive);

    // Bad keys and modes are refused while reading, with their path.
    for (spec, path, msg) in [
        (
            "selector: {matchLabels: {app: a}}\nportLevelMtls: {0: {mode: STRICT}}",
            "spec.portLevelMtls",
            "invalid port 0",
        ),
        (
            "selector: {matchLabels: {app: a}}\nportLevelMtls: {http: {mode: STRICT}}",
            "spec.portLevelMtls",
            "invalid port \"http\"",
        ),
        (
            "mtls: {mode: strict}",
            "spec.mtls.mode",
            "unknown variant `strict`, expected one of `UNSET`, `DISABLE`, `PERMISSIVE`, `STRICT`",
        ),
        (
            "selector: {matchLabels: {'*': a}}",
            "spec.selector.matchLabels",
            "wildcard not allowed in label key match",
        ),
    ] {
        let v: meshapi::yaml::Value = meshapi::yaml::from_str(&format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: a}}\nspec:\n{}",
            spec.lines().map(|l| format!("  {l}\n")).collect::<String>()
        ))
        .expect("yaml");
        let err = IstioResource::from_value("security.istio.io/v1", "PeerAuthentication", v)
            .expect_err(spec);
        assert!(err.path.starts_with(path), "{spec}: {}", err.path);
        assert!(err.message.contains(msg), "{spec}: {}", err.message);
    }
}

/// AuthorizationPolicy cases: (spec, path, message).
const AP_CASES: &[(&str, &str, &str)] = &[
    (
        "action: CUSTOM\nrules: [{}]",
        "spec.action",
        "not supported by meshctl: action CUSTOM (CUSTOM authorization",
    ),
    (
        "provider: {name: ext}\nrules: [{}]",
        "spec.provider",
        "CUSTOM is not supported",
    ),
    (
        "rules: [{from: [{source: {requestPrincipals: ['']}}]}]",
        "spec.rules[0].from[0].source.requestPrincipals[0]",
        "empty value is not allowed",
    ),
    (
        "rules: [{from: [{source: {notRequestPrincipals: [a, '']}}]}]",
        "spec.rules[0].from[0].source.notRequestPrincipals[1]",
        "empty value is not allowed",
    ),
    (
        "rules: [{when: [{key: 'request.auth.claims[a][]', values: [a]}]}]",
        "spec.rules[0].when[0].key",
        "should have the form request.auth.claims[name] or request.auth.claims[a][b]",
    ),
    (
        "rules: [{when: [{key: 'experimental.envoy.filters.a.b[c]', values: [a]}]}]",
        "spec.rules[0].when[0].key",
        "not supported by meshctl",
    ),
    (
        "selector: {matchLabels: {app: a}}\ntargetRef: {kind: Service, name: a}\nrules: [{}]",
        "spec",
        "only one of selector, targetRef or targetRefs",
    ),
    (
        "targetRef: {kind: Deployment, name: a}\nrules: [{}]",
        "spec.targetRef.kind",
        "targetRef must be a Service",
    ),
    (
        "targetRef: {kind: Service, name: a, namespace: other}\nrules: [{}]",
        "spec.targetRef.namespace",
        "cross namespace",
    ),
    (
        "rules: [{from: [{source: {principals: [a], serviceAccounts: [b]}}]}]",
        "spec.rules[0].from[0].source",
        "cannot set serviceAccounts with namespaces or principals",
    ),
    (
        "rules: [{from: [{source: {}}]}]",
        "spec.rules[0].from[0].source",
        "must not be empty",
    ),
    (
        "rules: [{from: [{}]}]",
        "spec.rules[0].from[0].source",
        "source is required",
    ),
    (
        "rules: [{to: [{operation: {}}]}]",
        "spec.rules[0].to[0].operation",
        "must not be empty",
    ),
    (
        "rules: [{to: [{}]}]",
        "spec.rules[0].to[0].operation",
        "operation is required",
    ),
    (
        "rules: [{to: [{operation: {paths: ['/{**}/a/{*}']}}]}]",
        "spec.rules[0].to[0].operation.paths[0]",
        "{**} must be the last operator",
    ),
    (
        "rules: [{to: [{operation: {notPaths: ['/a{b']}}]}]",
        "spec.rules[0].to[0].operation.notPaths[0]",
        "outside a {*} or {**} template",
    ),
    (
        "rules: [{to: [{operation: {methods: ['']}}]}]",
        "spec.rules[0].to[0].operation.methods[0]",
        "empty value",
    ),
    (
        "rules: [{when: [{key: source.ip}]}]",
        "spec.rules[0].when[0]",
        "at least one of values or notValues",
    ),
    (
        "rules: [{when: [{key: source.ip, values: [10.0.0.300]}]}]",
        "spec.rules[0].when[0].values[0]",
        "bad IP address",
    ),
    (
        "rules: [{when: [{key: destination.port, notValues: ['99999']}]}]",
        "spec.rules[0].when[0].notValues[0]",
        "invalid port",
    ),
    (
        "rules: [{when: [{key: source.serviceAccount, values: ['a/b/c']}]}]",
        "spec.rules[0].when[0].values[0]",
        "service account",
    ),
    (
        "rules: [{when: [{key: request.headers, values: [a]}]}]",
        "spec.rules[0].when[0].key",
        "should have the form request.headers[name]",
    ),
    (
        "rules: [{when: [{key: 'destination.labels[app]', values: [a]}]}]",
        "spec.rules[0].when[0].key",
        "replaced by the workload selector",
    ),
    (
        "rules: [{when: [{key: destination.namespace, values: [a]}]}]",
        "spec.rules[0].when[0].key",
        "replaced by the policy's metadata.namespace",
    ),
    (
        "rules: [{when: [{key: source.color, values: [a]}]}]",
        "spec.rules[0].when[0].key",
        "unknown attribute",
    ),
];

#[test]
fn authorization_policy_rules() {
    for (spec, path, msg) in AP_CASES {
        expect_only(spec, &ap(spec), path, msg);
    }
    // CUSTOM with a provider reports both, each naming CUSTOM.
    let errors = ap(
        "action: CUSTOM\nprovider: {name: ext-authz}\nrules: [{to: [{operation: {paths: [/admin]}}]}]",
    );
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(
        errors.iter().all(|e| e.message.contains("CUSTOM")),
        "{errors:#?}"
    );
}

#[test]
fn valid_authorization_policies_have_no_errors() {
    let specs = [
        "{}",
        "action: DENY\nrules: [{}]",
        "action: AUDIT\nrules: [{to: [{operation: {paths: [/audit]}}]}]",
        "selector: {matchLabels: {app: reviews}}\naction: ALLOW\nrules:\n- from: [{source: {principals: [cluster.local/ns/default/sa/productpage, '*/ns/prod/sa/api'], namespaces: [default, 'prod-*'], ipBlocks: [10.0.0.0/8], notIpBlocks: [10.1.0.1], remoteIpBlocks: ['::1'], trustDomains: [cluster.local, 'td-*']}}, {source: {serviceAccounts: [frontend, prod/api], notServiceAccounts: [prod/batch]}}]\n  to: [{operation: {methods: [GET, 'HE*'], paths: ['/api/*', '/v1/{*}/items/{**}'], ports: ['9080', 9443], hosts: ['*.example.com'], notPaths: [/api/admin]}}]\n  when: [{key: 'request.headers[x-user]', values: [alice]}, {key: source.ip, values: [10.0.0.0/8]}, {key: remote.ip, notValues: [1.2.3.4]}, {key: source.namespace, values: [default]}, {key: source.serviceAccount, values: [default/frontend]}, {key: source.principal, values: ['*']}, {key: destination.ip, values: [127.0.0.1]}, {key: destination.port, values: ['9080']}, {key: connection.sni, values: [reviews]}, {key: 'request.headers[:method]', values: [GET]}]",
        "targetRefs: [{kind: Service, name: reviews}, {group: networking.istio.io, kind: ServiceEntry, name: ext}]\nrules: [{}]",
    ];
    for spec in specs {
        let errors = ap(spec);
        assert!(errors.is_empty(), "{spec}\n{errors:#?}");
    }
}

#[test]
fn authorization_policy_values_are_checked_while_reading() {
    for (spec, path, msg) in [
        (
            "rules: [{from: [{source: {principals: ['spiffe://cluster.local/ns/a/sa/b']}}]}]",
            "spec.rules[0].from[0].source.principals[0]",
            "without the spiffe:// scheme",
        ),
        (
            "rules: [{from: [{source: {principals: ['cluster.local/ns/*/sa/b']}}]}]",
            "spec.rules[0].from[0].source.principals[0]",
            "`*` is only allowed",
        ),
        (
            "rules: [{from: [{source: {namespaces: ['']}}]}]",
            "spec.rules[0].from[0].source.namespaces[0]",
            "empty value",
        ),
        (
            "rules: [{from: [{source: {ipBlocks: [10.0.0.0/40]}}]}]",
            "spec.rules[0].from[0].source.ipBlocks[0]",
            "bad CIDR range",
        ),
        (
            "rules: [{from: [{source: {serviceAccounts: ['ns/*']}}]}]",
            "spec.rules[0].from[0].source.serviceAccounts[0]",
            "wildcards are not allowed",
        ),
        (
            "rules: [{to: [{operation: {ports: ['http']}}]}]",
            "spec.rules[0].to[0].operation.ports[0]",
            "invalid port \"http\"",
        ),
        (
            "action: PERMIT",
            "spec.action",
            "unknown variant `PERMIT`, expected one of `ALLOW`, `DENY`, `AUDIT`, `CUSTOM`",
        ),
    ] {
        let v: meshapi::yaml::Value = meshapi::yaml::from_str(&format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: a}}\nspec:\n{}",
            spec.lines().map(|l| format!("  {l}\n")).collect::<String>()
        ))
        .expect("yaml");
        let err = IstioResource::from_value("security.istio.io/v1", "AuthorizationPolicy", v)
            .expect_err(spec);
        assert_eq!(err.path, path, "{spec}");
        assert!(err.message.contains(msg), "{spec}: {}", err.message);
    }
}

#[test]
fn dry_run_annotation() {
    let doc = |ann: &str, spec: &str| {
        load_doc(
            "security.istio.io/v1",
            "AuthorizationPolicy",
            &format!("metadata: {{name: a, annotations: {{istio.io/dry-run: '{ann}'}}}}\n"),
            spec,
        )
    };
    let r = doc("true", "action: DENY\nrules: [{}]");
    let IstioResource::AuthorizationPolicy(p) = &r else {
        panic!()
    };
    assert!(p.dry_run());
    assert!(r.validate().is_empty());
    let IstioResource::AuthorizationPolicy(p) = doc("false", "rules: [{}]") else {
        panic!()
    };
    assert!(!p.dry_run());
    expect_only(
        "bad value",
        &doc("maybe", "rules: [{}]").validate(),
        "metadata.annotations.istio.io/dry-run",
        "use \"true\" or \"false\"",
    );
    expect_only(
        "audit",
        &doc("true", "action: AUDIT\nrules: [{}]").validate(),
        "metadata.annotations.istio.io/dry-run",
        "only supported with action ALLOW or DENY",
    );
    let vs = load_doc(
        "networking.istio.io/v1",
        "VirtualService",
        "metadata: {name: a, annotations: {istio.io/dry-run: 'true'}}\n",
        "hosts: [a]\nhttp: [{route: [{destination: {host: a}}]}]",
    );
    expect_only(
        "vs",
        &vs.validate(),
        "metadata.annotations.istio.io/dry-run",
        "only supported on AuthorizationPolicy",
    );
}

#[test]
fn metadata_rules() {
    let r = load_doc(
        "networking.istio.io/v1",
        "DestinationRule",
        "metadata: {namespace: prod}\n",
        "host: r\nsubsets: [{name: v1}]",
    );
    expect_only(
        "no name",
        &r.validate(),
        "metadata.name",
        "name is required",
    );
    let r = load_doc(
        "networking.istio.io/v1",
        "DestinationRule",
        "metadata: {name: Reviews_DR}\n",
        "host: r\nsubsets: [{name: v1}]",
    );
    expect_only("bad name", &r.validate(), "metadata.name", "invalid name");
    let r = load_doc(
        "networking.istio.io/v1",
        "DestinationRule",
        "metadata: {name: r, namespace: Prod}\n",
        "host: r\nsubsets: [{name: v1}]",
    );
    expect_only(
        "bad namespace",
        &r.validate(),
        "metadata.namespace",
        "invalid namespace",
    );
}
