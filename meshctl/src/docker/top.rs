//! `meshctl top`: the busiest paths of a running project, live, from the sidecars' access
//! logs (followed through the Docker API, new lines only): per source, destination, method
//! and path the request count, best, worst and last duration and the success rate (responses
//! other than 5xx), busiest first, redrawn every second until Ctrl-C or `--duration`.
//!
//! A request inside the mesh is logged by both of its proxies; it is counted once, from the
//! client's outbound line. An inbound line counts only for a client outside the mesh (no
//! verified peer identity): its source is the client's address.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use bollard::query_parameters::LogsOptionsBuilder;
use clap::Args;
use futures_util::StreamExt;
use meshapi::telemetry::access_log::AccessLogLine;
use serde::Serialize;

use super::engine::Engine;
use super::*;
use crate::project::ProjectArgs;

/// `meshctl top`.
#[derive(Debug, Clone, Args)]
pub struct TopArgs {
    /// Compose file, Istio resource file or directory (repeatable; `-f` before `top` too).
    #[arg(long = "file", value_name = "PATH")]
    pub files: Vec<std::path::PathBuf>,
    /// Stop after this many seconds and print the table once (default: live until Ctrl-C).
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<u64>,
    /// Rows shown (busiest first).
    #[arg(long, default_value_t = 20)]
    pub rows: usize,
    /// Print the final table as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Only requests from or to these services.
    pub services: Vec<String>,
}

/// One row: requests with the same source, destination, method and path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Key {
    pub source: String,
    pub destination: String,
    pub method: String,
    /// Path without the query.
    pub path: String,
}

/// What a row has seen.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    pub count: u64,
    pub successes: u64,
    /// Milliseconds.
    pub best: u64,
    pub worst: u64,
    pub last: u64,
}

/// The table `top` shows.
#[derive(Debug, Default)]
pub struct Top {
    rows: HashMap<Key, Stats>,
}

/// The destination a cluster name names: the first label of its host
/// (`outbound|8080|v1|backend.default.svc.cluster.local` is `backend`).
fn cluster_service(cluster: &str) -> Option<&str> {
    let host = cluster.rsplit('|').next()?;
    host.split('.').next().filter(|h| !h.is_empty())
}

impl Top {
    /// Counts one access log line written by the sidecar of mesh service `service`; `false`
    /// when the line is not counted (a TCP line, or the server side of a mesh request).
    pub fn add(&mut self, service: &str, line: &AccessLogLine) -> bool {
        let (Some(method), Some(path)) = (&line.method, &line.path) else {
            return false;
        };
        let cluster = line.upstream_cluster.as_deref().unwrap_or("");
        let (source, destination) = if cluster.starts_with("inbound|") {
            if line.downstream_peer_uri_san.is_some() {
                return false;
            }
            let from = line
                .downstream_remote_address
                .as_deref()
                .and_then(|a| a.rsplit_once(':').map(|(ip, _)| ip.to_string()))
                .unwrap_or_else(|| "-".into());
            (from, service.to_string())
        } else {
            let to = cluster_service(cluster)
                .or(line.authority.as_deref())
                .unwrap_or("-");
            (service.to_string(), to.to_string())
        };
        let key = Key {
            source,
            destination,
            method: method.clone(),
            path: path.split('?').next().unwrap_or(path).to_string(),
        };
        let s = self.rows.entry(key).or_default();
        if s.count == 0 || line.duration < s.best {
            s.best = line.duration;
        }
        s.worst = s.worst.max(line.duration);
        s.last = line.duration;
        s.count += 1;
        if (1..500).contains(&line.response_code) {
            s.successes += 1;
        }
        true
    }

    /// The rows, busiest first (then by key), at most `n`.
    pub fn busiest(&self, n: usize) -> Vec<(&Key, &Stats)> {
        let mut v: Vec<_> = self.rows.iter().collect();
        v.sort_by(|a, b| b.1.count.cmp(&a.1.count).then_with(|| a.0.cmp(b.0)));
        v.truncate(n);
        v
    }

    /// The table as text, with a header, as `docker compose ps` aligns columns.
    pub fn render(&self, n: usize) -> String {
        let mut rows = vec![[
            "SOURCE".to_string(),
            "DESTINATION".into(),
            "METHOD".into(),
            "PATH".into(),
            "COUNT".into(),
            "BEST".into(),
            "WORST".into(),
            "LAST".into(),
            "SUCCESS RATE".into(),
        ]];
        for (k, s) in self.busiest(n) {
            rows.push([
                k.source.clone(),
                k.destination.clone(),
                k.method.clone(),
                k.path.clone(),
                s.count.to_string(),
                format!("{}ms", s.best),
                format!("{}ms", s.worst),
                format!("{}ms", s.last),
                format!("{:.2}%", 100.0 * s.successes as f64 / s.count.max(1) as f64),
            ]);
        }
        let mut width = [0usize; 9];
        for r in &rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.len());
            }
        }
        let mut out = String::new();
        for r in &rows {
            let cells: Vec<String> = r
                .iter()
                .zip(width)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            out.push_str(cells.join("   ").trim_end());
            out.push('\n');
        }
        out
    }

    /// The table as JSON rows.
    pub fn json(&self, n: usize) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .busiest(n)
            .into_iter()
            .map(|(k, s)| {
                serde_json::json!({
                    "source": k.source, "destination": k.destination,
                    "method": k.method, "path": k.path, "count": s.count,
                    "bestMs": s.best, "worstMs": s.worst, "lastMs": s.last,
                    "successRate": s.successes as f64 / s.count.max(1) as f64,
                })
            })
            .collect();
        serde_json::Value::Array(rows)
    }
}

/// `meshctl top`.
pub fn top(project: &ProjectArgs, args: &TopArgs) -> anyhow::Result<ExitCode> {
    let project = super::up::Project::load(&super::commands::spec(project))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let engine = Engine::connect().await?;
        let sidecars: BTreeMap<String, String> = engine
            .containers(project.name())
            .await?
            .iter()
            .filter(|c| c.role() == Some(Role::Sidecar))
            .map(|c| (c.id.clone(), c.label(LABEL_MESH_SERVICE).to_string()))
            .collect();
        if sidecars.is_empty() {
            anyhow::bail!(
                "no sidecar of project {} is running (meshctl up first)",
                project.name()
            );
        }
        let table = follow(&engine, &sidecars, args).await;
        let mut out = std::io::stdout().lock();
        if args.json {
            writeln!(out, "{:#}", table.json(args.rows))?;
        } else {
            write!(out, "{}", table.render(args.rows))?;
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Follows every sidecar's new log lines into a table until Ctrl-C or `args.duration`,
/// redrawing it every second on a terminal.
async fn follow(engine: &Engine, sidecars: &BTreeMap<String, String>, args: &TopArgs) -> Top {
    let streams = sidecars.iter().map(|(id, service)| {
        let opts = LogsOptionsBuilder::new()
            .follow(true)
            .stdout(true)
            .tail("0")
            .build();
        let service = service.clone();
        engine
            .docker
            .logs(id, Some(opts))
            .map(move |chunk| (service.clone(), chunk))
            .boxed()
    });
    let mut all = futures_util::stream::select_all(streams);
    let mut partial: HashMap<String, String> = HashMap::new();
    let mut table = Top::default();
    let live = std::io::stdout().is_terminal() && !args.json;
    let stop = tokio::time::sleep(Duration::from_secs(args.duration.unwrap_or(u64::MAX / 4)));
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick(), if live => {
                print!("\x1b[2J\x1b[H{}", table.render(args.rows));
                let _ = std::io::stdout().flush();
            }
            next = all.next() => {
                let Some((service, chunk)) = next else { break };
                let Ok(chunk) = chunk else { continue };
                let buf = partial.entry(service.clone()).or_default();
                buf.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
                while let Some(i) = buf.find('\n') {
                    let line: String = buf.drain(..=i).collect();
                    if let Some(l) = AccessLogLine::parse(&line)
                        && (args.services.is_empty() || wanted(&service, &l, &args.services))
                    {
                        table.add(&service, &l);
                    }
                }
            }
        }
    }
    if live {
        print!("\x1b[2J\x1b[H");
    }
    table
}

/// Whether a line written by `service`'s sidecar is from or to one of `services`.
fn wanted(service: &str, l: &AccessLogLine, services: &[String]) -> bool {
    services.iter().any(|s| {
        s == service
            || l.upstream_cluster
                .as_deref()
                .and_then(cluster_service)
                .is_some_and(|d| d == s)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn line(cluster: &str, path: &str, code: u16, ms: u64, peer: Option<&str>) -> AccessLogLine {
        AccessLogLine {
            method: Some("GET".into()),
            path: Some(path.into()),
            protocol: "HTTP/1.1".into(),
            response_code: code,
            duration: ms,
            upstream_cluster: Some(cluster.into()),
            downstream_remote_address: Some("172.18.0.1:40000".into()),
            downstream_peer_uri_san: peer.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn mesh_requests_count_once_from_the_client_and_outside_ones_from_the_server() {
        let mut t = Top::default();
        let out = "outbound|8080|v1|backend.default.svc.cluster.local";
        assert!(t.add("frontend", &line(out, "/a?x=1", 200, 5, None)));
        assert!(t.add("frontend", &line(out, "/a?x=2", 503, 2, None)));
        assert!(t.add("frontend", &line(out, "/a", 200, 9, None)));
        // The server side of the same mesh requests: not counted again.
        let peer = Some("spiffe://cluster.local/ns/default/sa/frontend-sa");
        assert!(!t.add("backend", &line("inbound|8080||", "/a", 200, 4, peer)));
        // A client outside the mesh, seen by the frontend's inbound side.
        assert!(t.add("frontend", &line("inbound|3000||", "/", 200, 12, None)));
        let rows = t.busiest(10);
        assert_eq!(rows.len(), 2);
        let (k, s) = rows[0];
        assert_eq!(
            (k.source.as_str(), k.destination.as_str(), k.path.as_str()),
            ("frontend", "backend", "/a")
        );
        assert_eq!(
            (s.count, s.successes, s.best, s.worst, s.last),
            (3, 2, 2, 9, 9)
        );
        assert_eq!(rows[1].0.source, "172.18.0.1");
        assert_eq!(rows[1].0.destination, "frontend");
        let text = t.render(10);
        assert!(text.starts_with("SOURCE"), "{text}");
        assert!(text.contains("66.67%"), "{text}");
        assert_eq!(t.json(1)[0]["count"], 3);
    }
}
