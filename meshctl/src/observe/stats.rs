//! `meshctl stats [SERVICE]`, like `linkerd viz stat`: per mesh service and version, success
//! rate, requests per second, p50/p95/p99 latency and open TCP connections, from two scrapes
//! of every proxy's `/stats/prometheus` a window apart (what the server side of each request,
//! `reporter="destination"`, counted in between).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use super::ScrapeTarget;
use crate::project::ProjectArgs;

/// `meshctl stats`.
#[derive(Debug, Clone, Args)]
pub struct StatsArgs {
    /// Only this mesh service.
    pub service: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Keep refreshing, one table per window.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Time between the two scrapes, e.g. `10s`, `1m`.
    #[arg(long, default_value = "10s", value_parser = parse_window)]
    pub window: Duration,
    /// Host mode: `meshctl serve`'s proxies at their host ports, without asking the control
    /// plane (by default the proxies are those the running control plane lists, and the
    /// Docker sidecars).
    #[arg(long)]
    pub host: bool,
    /// Host mode's first inbound port.
    #[arg(long, default_value_t = meshmodel::compile::DEFAULT_HOST_BASE_PORT)]
    pub base_port: u16,
}

fn parse_window(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|_| format!("not a duration: {s:?}"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        _ => return Err(format!("not a duration: {s:?} (use 10s or 1m)")),
    };
    if secs == 0 {
        return Err("the window must be at least 1s".into());
    }
    Ok(Duration::from_secs(secs))
}

/// One sample of the exposition: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Reads Prometheus' text format (comments skipped, escapes in label values honoured).
/// Lines that do not parse are skipped.
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = BTreeMap::new();
    let rest = if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            r = r.trim_start_matches(',');
            if let Some(after) = r.strip_prefix('}') {
                break after;
            }
            let (k, after) = r.split_once("=\"")?;
            let mut v = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => v.push('\n'),
                        other => v.push(other),
                    },
                    '"' => break i,
                    c => v.push(c),
                }
            };
            labels.insert(k.to_string(), v);
            r = &after[end + 1..];
        }
    } else {
        rest
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// One row: a mesh service at one version.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Row {
    pub service: String,
    pub version: String,
    /// Requests in the window.
    pub requests: f64,
    /// Share of requests answered without a 5xx; `None` without requests.
    pub success_rate: Option<f64>,
    pub rps: f64,
    /// Latency percentiles in milliseconds (from Istio's duration buckets).
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// TCP connections open at the second scrape.
    pub tcp_connections: f64,
}

#[derive(Default)]
struct Acc {
    requests: f64,
    failures: f64,
    /// Cumulative bucket counts by upper bound (milliseconds).
    buckets: BTreeMap<u64, f64>,
    tcp_open: f64,
}

fn key(s: &Sample) -> Option<(String, String)> {
    (s.labels.get("reporter")? == "destination").then(|| {
        let l = |k: &str| s.labels.get(k).cloned().unwrap_or_else(|| "unknown".into());
        (l("destination_service_name"), l("destination_version"))
    })
}

/// Upper bounds in thousandths of a millisecond, so they can be map keys (`+Inf` is max).
pub(crate) fn bound_key(le: &str) -> Option<u64> {
    if le == "+Inf" {
        return Some(u64::MAX);
    }
    let v: f64 = le.parse().ok()?;
    Some((v * 1000.0).round() as u64)
}

/// `histogram_quantile`: linear interpolation inside the bucket the rank falls in.
pub fn quantile(q: f64, buckets: &BTreeMap<u64, f64>) -> Option<f64> {
    let total = *buckets.get(&u64::MAX).or(buckets.values().last())?;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev_bound = 0.0;
    let mut prev_count = 0.0;
    for (b, c) in buckets {
        let bound = *b as f64 / 1000.0;
        if *c >= rank {
            if *b == u64::MAX {
                return Some(prev_bound);
            }
            let width = c - prev_count;
            let frac = if width > 0.0 {
                (rank - prev_count) / width
            } else {
                1.0
            };
            return Some(prev_bound + (bound - prev_bound) * frac);
        }
        prev_bound = bound;
        prev_count = *c;
    }
    Some(prev_bound)
}

/// The rows from two scrapes (of every proxy) `window` apart, sorted by service and version.
pub fn rows(before: &[Sample], after: &[Sample], window: Duration) -> Vec<Row> {
    let mut acc: BTreeMap<(String, String), Acc> = BTreeMap::new();
    let mut add = |samples: &[Sample], sign: f64| {
        for s in samples {
            let Some(k) = key(s) else { continue };
            let a = acc.entry(k).or_default();
            match s.name.as_str() {
                "istio_requests_total" => {
                    a.requests += sign * s.value;
                    if s.labels
                        .get("response_code")
                        .is_some_and(|c| c.starts_with('5'))
                    {
                        a.failures += sign * s.value;
                    }
                }
                "istio_request_duration_milliseconds_bucket" => {
                    if let Some(b) = s.labels.get("le").and_then(|l| bound_key(l)) {
                        *a.buckets.entry(b).or_default() += sign * s.value;
                    }
                }
                "istio_tcp_connections_opened_total" if sign > 0.0 => a.tcp_open += s.value,
                "istio_tcp_connections_closed_total" if sign > 0.0 => a.tcp_open -= s.value,
                _ => {}
            }
        }
    };
    add(before, -1.0);
    add(after, 1.0);
    let secs = window.as_secs_f64().max(f64::EPSILON);
    acc.into_iter()
        .map(|((service, version), a)| {
            // A proxy restarted in the window counts from zero: never negative.
            let requests = a.requests.max(0.0);
            let buckets: BTreeMap<u64, f64> = a
                .buckets
                .into_iter()
                .map(|(b, c)| (b, c.max(0.0)))
                .collect();
            let some = requests > 0.0;
            Row {
                service,
                version,
                requests,
                success_rate: some.then(|| 1.0 - a.failures.max(0.0) / requests),
                rps: requests / secs,
                p50_ms: some.then(|| quantile(0.50, &buckets)).flatten(),
                p95_ms: some.then(|| quantile(0.95, &buckets)).flatten(),
                p99_ms: some.then(|| quantile(0.99, &buckets)).flatten(),
                tcp_connections: a.tcp_open.max(0.0),
            }
        })
        .collect()
}

async fn scrape_all(targets: &[ScrapeTarget]) -> Vec<Sample> {
    let mut out = Vec::new();
    for t in targets {
        match scrape(t.address).await {
            Ok(text) => out.extend(parse_exposition(&text)),
            Err(e) => eprintln!("warning: {} ({}): {e}", t.service, t.address),
        }
    }
    out
}

pub(crate) async fn scrape(addr: SocketAddr) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let req = format!(
            "GET {} HTTP/1.0\r\nHost: {addr}\r\n\r\n",
            super::METRICS_PATH
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no response")?;
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            return Err(head.lines().next().unwrap_or_default().to_string());
        }
        Ok(body.to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}ms"))
}

fn print_table(out: &mut impl Write, rows: &[Row]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<24} {:<10} {:>8} {:>9} {:>11} {:>11} {:>11} {:>8}",
        "SERVICE",
        "VERSION",
        "SUCCESS",
        "RPS",
        "LATENCY_P50",
        "LATENCY_P95",
        "LATENCY_P99",
        "TCP_CONN"
    )?;
    for r in rows {
        writeln!(
            out,
            "{:<24} {:<10} {:>8} {:>9.2} {:>11} {:>11} {:>11} {:>8}",
            r.service,
            r.version,
            r.success_rate
                .map_or_else(|| "-".into(), |s| format!("{:.2}%", s * 100.0)),
            r.rps,
            ms(r.p50_ms),
            ms(r.p95_ms),
            ms(r.p99_ms),
            r.tcp_connections
        )?;
    }
    Ok(())
}

/// `meshctl stats`.
pub fn stats(project: &ProjectArgs, args: &StatsArgs) -> anyhow::Result<ExitCode> {
    let project = crate::docker::up::Project::load(&crate::docker::commands::spec(project))?;
    let rt = crate::docker::commands::runtime()?;
    let targets = if args.host {
        super::host_targets(&project, args.base_port)
    } else {
        rt.block_on(super::mesh_targets(&project))?
    };
    if targets.is_empty() {
        anyhow::bail!(
            "no running proxy for project {} (run `meshctl up` or `meshctl serve`, or --host for `meshctl serve`'s proxies without its control plane)",
            project.name()
        );
    }
    rt.block_on(async {
        let mut before = scrape_all(&targets).await;
        loop {
            let t0 = Instant::now();
            tokio::time::sleep(args.window).await;
            let after = scrape_all(&targets).await;
            let mut rows = rows(&before, &after, t0.elapsed());
            if let Some(s) = &args.service {
                rows.retain(|r| &r.service == s);
            }
            let mut out = std::io::stdout().lock();
            if args.json {
                serde_json::to_writer_pretty(&mut out, &rows)?;
                writeln!(out)?;
            } else {
                print_table(&mut out, &rows)?;
            }
            if !args.watch {
                return Ok(ExitCode::SUCCESS);
            }
            writeln!(out)?;
            before = after;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_lines_with_escapes() {
        let s = parse_exposition(
            "# HELP x y\nx_total{a=\"q\\\"b\",le=\"+Inf\"} 3\nplain 2.5\nbroken{a=\"x} 1\n",
        );
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s[0].labels["a"], "q\"b");
        assert_eq!(s[0].value, 3.0);
        assert_eq!(s[1].name, "plain");
    }

    fn series(version: &str, code: &str, n: f64, buckets: &[(&str, f64)]) -> Vec<Sample> {
        let base = |name: &str| Sample {
            name: name.into(),
            labels: BTreeMap::from([
                ("reporter".into(), "destination".into()),
                ("destination_service_name".into(), "backend".into()),
                ("destination_version".into(), version.into()),
                ("response_code".into(), code.into()),
            ]),
            value: n,
        };
        let mut out = vec![base("istio_requests_total")];
        for (le, c) in buckets {
            let mut b = base("istio_request_duration_milliseconds_bucket");
            b.labels.insert("le".into(), (*le).into());
            b.value = *c;
            out.push(b);
        }
        out
    }

    #[test]
    fn rows_are_the_difference_of_two_scrapes() {
        let before = series(
            "v1",
            "200",
            10.0,
            &[("5.0", 10.0), ("10.0", 10.0), ("+Inf", 10.0)],
        );
        let mut after = series(
            "v1",
            "200",
            110.0,
            &[("5.0", 60.0), ("10.0", 110.0), ("+Inf", 110.0)],
        );
        after.extend(series(
            "v1",
            "503",
            10.0,
            &[("5.0", 10.0), ("10.0", 10.0), ("+Inf", 10.0)],
        ));
        let r = rows(&before, &after, Duration::from_secs(10));
        assert_eq!(r.len(), 1);
        let r = &r[0];
        assert_eq!(r.requests, 110.0);
        assert_eq!(r.rps, 11.0);
        assert!((r.success_rate.unwrap() - 100.0 / 110.0).abs() < 1e-9);
        // 60 of 110 at or under 5 ms: the median is inside the first bucket.
        let p50 = r.p50_ms.unwrap();
        assert!(p50 > 0.0 && p50 <= 5.0, "{p50}");
        let p99 = r.p99_ms.unwrap();
        assert!(p99 > 5.0 && p99 <= 10.0, "{p99}");
    }
}
