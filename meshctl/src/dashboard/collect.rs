//! What the dashboard reads, every [`TICK`]: every proxy's `/stats/prometheus` (as
//! `meshctl stats` finds them: the control plane's list and the Docker sidecars, or with
//! `--host` the host placement) and the control plane's status (revision, ACK/NACK per
//! proxy, the last reload with its errors and diff).
//! Scrapes are kept for [`KEEP`]; views read counter increases over a window from them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshapi::wire::STATUS_PATH;

use crate::controlplane::ProjectSpec;
use crate::controlplane::api::StatusReport;
use crate::controlplane::client::call_with_backoff;
use crate::observe::ScrapeTarget;
use crate::observe::stats::{Sample, parse_exposition};

/// How often the proxies and the control plane are read.
pub const TICK: Duration = Duration::from_secs(1);
/// How long scrapes are kept (the window of "recent" errors and denials).
pub const KEEP: Duration = Duration::from_secs(60);

/// Where the proxies are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Every proxy the control plane lists (any runtime), Docker sidecars at their address
    /// on the project network (`meshctl stats`' list).
    Mesh,
    /// `meshctl serve`'s host-mode proxies from this base port.
    Host { base_port: u16 },
}

/// One proxy's metrics at one time.
#[derive(Debug, Clone)]
pub struct ProxyScrape {
    pub target: ScrapeTarget,
    /// Its samples, or why it could not be read.
    pub samples: Result<Vec<Sample>, String>,
}

/// Every proxy's metrics at one time.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub at: Instant,
    pub proxies: Vec<ProxyScrape>,
}

/// What the collector has seen.
#[derive(Debug, Default)]
pub struct Seen {
    pub scrapes: VecDeque<Scrape>,
    /// The control plane's last status, or why it could not be read.
    pub status: Option<Result<StatusReport, String>>,
}

/// Shared between the collector and the HTTP handlers; never held across an await.
pub type Shared = Arc<Mutex<Seen>>;

impl Seen {
    /// Counter increases of every series over about `window` up to the latest scrape (a
    /// proxy that restarted counts from zero), gauges at their latest value, and the seconds
    /// the window really spans. Empty before two scrapes.
    pub fn increase(&self, window: Duration) -> (Vec<(ScrapeTarget, Sample)>, f64) {
        let Some(last) = self.scrapes.back() else {
            return (Vec::new(), 0.0);
        };
        let first = self
            .scrapes
            .iter()
            .find(|s| last.at.duration_since(s.at) <= window)
            .unwrap_or(last);
        let secs = last.at.duration_since(first.at).as_secs_f64();
        let mut out = Vec::new();
        for p in &last.proxies {
            let Ok(after) = &p.samples else { continue };
            let before: HashMap<(&str, &BTreeMap<String, String>), f64> = first
                .proxies
                .iter()
                .filter(|b| b.target.address == p.target.address)
                .filter_map(|b| b.samples.as_ref().ok())
                .flatten()
                .map(|s| ((s.name.as_str(), &s.labels), s.value))
                .collect();
            for s in after {
                let mut s = s.clone();
                if is_counter(&s.name) {
                    let b = before.get(&(s.name.as_str(), &s.labels)).copied();
                    s.value = match b {
                        Some(b) if b <= s.value => s.value - b,
                        // New series in the window, or the proxy restarted.
                        _ if std::ptr::eq(first, last) => 0.0,
                        _ => s.value,
                    };
                }
                out.push((p.target.clone(), s));
            }
        }
        (out, secs)
    }
}

/// Counters by Prometheus' naming (and the histogram's parts, which only grow).
fn is_counter(name: &str) -> bool {
    name.ends_with("_total")
        || name.ends_with("_bucket")
        || name.ends_with("_count")
        || name.ends_with("_sum")
}

/// Reads the proxies and the control plane every [`TICK`] into `shared`, forever.
pub async fn run(spec: ProjectSpec, placement: Placement, shared: Shared) {
    let state_dir: PathBuf = spec.working_dir.join(".mesh");
    let mut targets: Vec<ScrapeTarget> = Vec::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // A bad edit keeps the last good list of proxies.
        if let Ok(project) = crate::docker::up::Project::load(&spec) {
            match placement {
                Placement::Mesh => {
                    if let Ok(t) = crate::observe::mesh_targets(&project).await {
                        targets = t;
                    }
                }
                Placement::Host { base_port } => {
                    targets = crate::observe::host_targets(&project, base_port);
                }
            }
        }
        let reads = targets.iter().map(|t| async move {
            let samples = crate::observe::stats::scrape(t.address)
                .await
                .map(|text| parse_exposition(&text));
            ProxyScrape {
                target: t.clone(),
                samples,
            }
        });
        let proxies = futures_util::future::join_all(reads).await;
        let status = call_with_backoff(&state_dir, Duration::from_millis(500), |c| async move {
            c.get::<StatusReport>(STATUS_PATH).await
        })
        .await
        .map(|(_, r)| r)
        .map_err(|e| e.to_string());
        let now = Instant::now();
        let mut seen = shared.lock().unwrap_or_else(|p| p.into_inner());
        seen.scrapes.push_back(Scrape { at: now, proxies });
        while seen
            .scrapes
            .front()
            .is_some_and(|s| now.duration_since(s.at) > KEEP)
        {
            seen.scrapes.pop_front();
        }
        seen.status = Some(status);
    }
}
