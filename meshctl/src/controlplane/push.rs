//! What has been pushed to whom: the per-proxy snapshot (one `watch` swap per revision, read
//! by every long-poll) and each proxy's ACK/NACK state, plus the waits on ACKs that
//! `meshctl apply --wait` and the reload log use.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use meshapi::proxy::SpiffeId;
use meshmodel::compile::ProxyKey;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::reload::ReloadReport;

/// The config one proxy gets, serialized once for every poll.
#[derive(Debug)]
pub struct Pushed {
    /// Version of this proxy's config: the revision at which its content last changed.
    pub version: u64,
    /// The identity a proxy must present to receive it.
    pub identity: SpiffeId,
    /// The whole `ConfigResponse` body, JSON.
    pub body: Bytes,
    /// Where the config tells the proxy to serve `/stats/prometheus` (`admin.stats`).
    pub stats: Option<SocketAddr>,
}

/// `admin.stats` of a proxy config's JSON (the rest is not read).
fn stats_of(json: &[u8]) -> Option<SocketAddr> {
    #[derive(Deserialize)]
    struct Config {
        #[serde(default)]
        admin: Option<Admin>,
    }
    #[derive(Deserialize)]
    struct Admin {
        #[serde(default)]
        stats: Option<SocketAddr>,
    }
    serde_json::from_slice::<Config>(json).ok()?.admin?.stats
}

/// Everything pushed at one revision.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Counts up on every change of any proxy's config.
    pub revision: u64,
    /// One entry per proxy.
    pub proxies: BTreeMap<ProxyKey, Arc<Pushed>>,
}

/// One proxy's push state (for `meshctl status`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    /// `<workload>/<instance>`.
    pub proxy: String,
    /// Its SPIFFE ID.
    pub identity: String,
    /// Version the control plane holds for it.
    pub version: u64,
    /// Last version sent to it.
    pub sent: Option<u64>,
    /// Last version it ACKed.
    pub acked: Option<u64>,
    /// Last version it refused, and why.
    pub nacked: Option<u64>,
    /// The refusal reason.
    pub nack_error: Option<String>,
    /// Polling now (or within the stale time).
    pub connected: bool,
    /// Start of the current connection, Unix ms.
    pub connected_since_ms: Option<u64>,
    /// Address it polls from.
    pub remote: Option<String>,
    /// The start epoch the proxy reported once serving (changes at each proxy restart).
    #[serde(default)]
    pub proxy_epoch: Option<u64>,
    /// When it first reported that epoch (it served from then on), Unix ms.
    #[serde(default)]
    pub ready_since_ms: Option<u64>,
    /// Where it serves `/stats/prometheus`, as reachable from where the control plane runs:
    /// its config's `admin.stats`, a wildcard address replaced by the address the proxy
    /// polls from (a container's address on its network). `None` until known.
    #[serde(default)]
    pub stats: Option<String>,
}

/// Result of waiting for ACKs of a revision.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AckReport {
    /// The revision waited for.
    pub revision: u64,
    /// Proxies that ACKed it (or a later version).
    pub acked: Vec<String>,
    /// Proxies that refused it: `(proxy, reason)`.
    pub refused: Vec<(String, String)>,
    /// Connected proxies that have not answered.
    pub pending: Vec<String>,
    /// Affected proxies that are not connected (not waited for).
    pub not_connected: Vec<String>,
    /// Whether the wait ended at the deadline with proxies pending.
    pub timed_out: bool,
    /// Time waited, ms.
    pub elapsed_ms: f64,
}

impl AckReport {
    /// Every connected proxy applied the revision.
    pub fn all_acked(&self) -> bool {
        self.refused.is_empty() && self.pending.is_empty()
    }
}

#[derive(Debug, Default)]
struct Track {
    polls: u32,
    connected_since: Option<SystemTime>,
    last_seen: Option<Instant>,
    remote: Option<SocketAddr>,
    sent: Option<u64>,
    acked: Option<u64>,
    nack: Option<(u64, String)>,
    /// The proxy's start epoch and when it was first reported.
    ready: Option<(u64, SystemTime)>,
}

/// Shared push state of the control plane.
#[derive(Debug)]
pub struct PushState {
    epoch: u64,
    snapshot: watch::Sender<Arc<Snapshot>>,
    tracks: Mutex<BTreeMap<ProxyKey, Track>>,
    acks: watch::Sender<u64>,
    closed: watch::Sender<bool>,
    last_reload: Mutex<ReloadReport>,
    stale_after: Duration,
    pub(crate) print: bool,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The response body of a config poll, built without re-serializing the config.
fn body(epoch: u64, version: u64, config_json: &[u8]) -> Bytes {
    let mut out = format!("{{\"epoch\":{epoch},\"version\":{version},\"config\":").into_bytes();
    out.extend_from_slice(config_json);
    out.push(b'}');
    Bytes::from(out)
}

impl PushState {
    /// Empty state with a fresh random epoch.
    pub fn new(stale_after: Duration, print: bool) -> PushState {
        PushState {
            epoch: rand::random::<u64>() >> 11,
            snapshot: watch::Sender::new(Arc::new(Snapshot::default())),
            tracks: Mutex::new(BTreeMap::new()),
            acks: watch::Sender::new(0),
            closed: watch::Sender::new(false),
            last_reload: Mutex::new(ReloadReport::default()),
            stale_after,
            print,
        }
    }

    fn tracks(&self) -> std::sync::MutexGuard<'_, BTreeMap<ProxyKey, Track>> {
        self.tracks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This control-plane run's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The current revision.
    pub fn revision(&self) -> u64 {
        self.snapshot.borrow().revision
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// A receiver that sees every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.subscribe()
    }

    /// A receiver that turns true at shutdown.
    pub fn closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    /// Answers every pending poll (shutdown).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Publishes a new revision: `changed` proxies get new configs (identity, config JSON),
    /// `removed` ones disappear; the others keep theirs. One swap. Returns the revision.
    pub fn publish(
        &self,
        changed: Vec<(ProxyKey, SpiffeId, Vec<u8>)>,
        removed: &[ProxyKey],
    ) -> u64 {
        let mut revision = 0;
        self.snapshot.send_modify(|snap| {
            revision = snap.revision + 1;
            let mut proxies = snap.proxies.clone();
            for k in removed {
                proxies.remove(k);
            }
            for (key, identity, json) in changed {
                let pushed = Pushed {
                    version: revision,
                    identity,
                    body: body(self.epoch, revision, &json),
                    stats: stats_of(&json),
                };
                proxies.insert(key, Arc::new(pushed));
            }
            *snap = Arc::new(Snapshot { revision, proxies });
        });
        revision
    }

    /// Pushes a hand-made config to one existing proxy; see `ControlPlane::push_override`.
    pub fn push_override(&self, key: &ProxyKey, config: serde_json::Value) -> Option<u64> {
        let identity = self.snapshot().proxies.get(key)?.identity.clone();
        let json = serde_json::to_vec(&config).ok()?;
        Some(self.publish(vec![(key.clone(), identity, json)], &[]))
    }

    /// A poll of `key` started; the guard marks its end.
    pub fn poll_started(self: &Arc<Self>, key: &ProxyKey, remote: SocketAddr) -> PollGuard {
        let mut tracks = self.tracks();
        let now = Instant::now();
        let t = tracks.entry(key.clone()).or_default();
        let stale = t
            .last_seen
            .is_none_or(|s| now.duration_since(s) > self.stale_after);
        if t.polls == 0 && (stale || t.remote != Some(remote)) {
            t.connected_since = Some(SystemTime::now());
        }
        t.polls += 1;
        t.last_seen = Some(now);
        t.remote = Some(remote);
        PollGuard {
            state: self.clone(),
            key: key.clone(),
        }
    }

    /// Records that proxy `key` serves with start epoch `epoch` (its polls say so once it
    /// serves). `true` when the epoch is new: the proxy (re)started, and its clients' configs
    /// must carry the new epoch (see [`PushState::epochs`]).
    pub fn report_ready(&self, key: &ProxyKey, epoch: u64) -> bool {
        let mut tracks = self.tracks();
        let t = tracks.entry(key.clone()).or_default();
        if t.ready.is_some_and(|(e, _)| e == epoch) {
            return false;
        }
        tracing::info!(proxy = %key, proxy_epoch = epoch, "proxy serving with a new start epoch");
        t.ready = Some((epoch, SystemTime::now()));
        true
    }

    /// The start epoch each proxy last reported, for the compiler
    /// (`meshmodel::compile::CompileInput::epochs`).
    pub fn epochs(&self) -> BTreeMap<ProxyKey, u64> {
        self.tracks()
            .iter()
            .filter_map(|(k, t)| Some((k.clone(), t.ready?.0)))
            .collect()
    }

    /// Records that `version` was sent to `key`.
    pub fn mark_sent(&self, key: &ProxyKey, version: u64) {
        if let Some(t) = self.tracks().get_mut(key) {
            t.sent = Some(version);
        }
    }

    /// Records an ACK or NACK. Stale epochs are ignored.
    pub fn record_ack(
        &self,
        key: &ProxyKey,
        epoch: u64,
        version: u64,
        accepted: bool,
        error: Option<String>,
    ) {
        if epoch != self.epoch {
            return;
        }
        {
            let mut tracks = self.tracks();
            let t = tracks.entry(key.clone()).or_default();
            t.last_seen = Some(Instant::now());
            if accepted {
                t.acked = Some(version);
                tracing::debug!(proxy = %key, version, "config ACKed");
            } else {
                let why = error.unwrap_or_else(|| "no reason given".into());
                tracing::warn!(proxy = %key, version, error = %why, "config NACKed");
                t.nack = Some((version, why));
            }
        }
        self.acks.send_modify(|n| *n += 1);
    }

    fn connected(&self, t: &Track, now: Instant) -> bool {
        t.polls > 0
            || t.last_seen
                .is_some_and(|s| now.duration_since(s) <= self.stale_after)
    }

    /// Every proxy's state.
    pub fn status(&self) -> Vec<ProxyStatus> {
        let snap = self.snapshot();
        let tracks = self.tracks();
        let now = Instant::now();
        snap.proxies
            .iter()
            .map(|(key, p)| {
                let t = tracks.get(key);
                let connected = t.is_some_and(|t| self.connected(t, now));
                ProxyStatus {
                    proxy: key.to_string(),
                    identity: p.identity.to_string(),
                    version: p.version,
                    sent: t.and_then(|t| t.sent),
                    acked: t.and_then(|t| t.acked),
                    nacked: t.and_then(|t| t.nack.as_ref().map(|n| n.0)),
                    nack_error: t.and_then(|t| t.nack.as_ref().map(|n| n.1.clone())),
                    connected,
                    connected_since_ms: t
                        .filter(|_| connected)
                        .and_then(|t| t.connected_since.map(unix_ms)),
                    remote: t.and_then(|t| t.remote.map(|r| r.to_string())),
                    proxy_epoch: t.and_then(|t| t.ready.map(|r| r.0)),
                    ready_since_ms: t.and_then(|t| t.ready.map(|r| unix_ms(r.1))),
                    stats: p.stats.and_then(|s| {
                        if !s.ip().is_unspecified() {
                            return Some(s.to_string());
                        }
                        let from = t.and_then(|t| t.remote)?;
                        Some(SocketAddr::new(from.ip(), s.port()).to_string())
                    }),
                }
            })
            .collect()
    }

    /// Where each proxy affected by `revision` (its version is `revision` or later) stands.
    pub fn ack_report(&self, revision: u64) -> AckReport {
        self.report_with(revision, |version| {
            (version >= revision).then_some(revision)
        })
    }

    /// Where every proxy stands against its own current version (is the mesh in sync?).
    pub fn sync_report(&self) -> AckReport {
        self.report_with(self.revision(), Some)
    }

    /// The report of `revision`, where `need(version)` is the version a proxy whose config is
    /// at `version` must have ACKed, or `None` when it is not waited for.
    fn report_with(&self, revision: u64, need: impl Fn(u64) -> Option<u64>) -> AckReport {
        let snap = self.snapshot();
        let tracks = self.tracks();
        let now = Instant::now();
        let mut report = AckReport {
            revision,
            ..AckReport::default()
        };
        for (key, p) in &snap.proxies {
            let Some(need) = need(p.version) else {
                continue;
            };
            let name = key.to_string();
            let Some(t) = tracks.get(key).filter(|t| self.connected(t, now)) else {
                report.not_connected.push(name);
                continue;
            };
            let acked = t.acked.is_some_and(|a| a >= need);
            match &t.nack {
                Some((v, why)) if *v >= need && t.acked.is_none_or(|a| a < *v) => {
                    report.refused.push((name, why.clone()));
                }
                _ if acked => report.acked.push(name),
                _ => report.pending.push(name),
            }
        }
        report
    }

    /// Waits until no connected proxy affected by `revision` is pending, or `timeout`.
    pub async fn wait_acks(&self, revision: u64, timeout: Duration) -> AckReport {
        self.wait_report(timeout, || self.ack_report(revision))
            .await
    }

    /// Waits until no connected proxy is pending on its current version, or `timeout`.
    pub async fn wait_sync(&self, timeout: Duration) -> AckReport {
        self.wait_report(timeout, || self.sync_report()).await
    }

    async fn wait_report(&self, timeout: Duration, report: impl Fn() -> AckReport) -> AckReport {
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.acks.subscribe();
        loop {
            rx.borrow_and_update();
            let mut report = report();
            let done = report.pending.is_empty();
            if done || tokio::time::Instant::now() >= deadline {
                report.timed_out = !done;
                report.elapsed_ms = start.elapsed().as_secs_f64() * 1000.0;
                return report;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return report },
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Stores the last reload's report.
    pub fn set_last_reload(&self, report: ReloadReport) {
        *self.last_reload.lock().unwrap_or_else(|p| p.into_inner()) = report;
    }

    /// The last reload's report.
    pub fn last_reload(&self) -> ReloadReport {
        self.last_reload
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Marks the end of a poll when dropped (also when the client goes away mid-poll).
#[derive(Debug)]
pub struct PollGuard {
    state: Arc<PushState>,
    key: ProxyKey,
}

impl Drop for PollGuard {
    fn drop(&mut self) {
        if let Some(t) = self.state.tracks().get_mut(&self.key) {
            t.polls = t.polls.saturating_sub(1);
            t.last_seen = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(w: &str) -> ProxyKey {
        ProxyKey {
            workload: w.into(),
            instance: 0,
        }
    }

    fn id(sa: &str) -> SpiffeId {
        format!("spiffe://cluster.local/ns/default/sa/{sa}")
            .parse()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn acks_nacks_and_disconnected_proxies_are_told_apart() {
        let push = Arc::new(PushState::new(Duration::from_secs(45), false));
        let r1 = push.publish(
            vec![
                (key("a"), id("a"), b"{}".to_vec()),
                (key("b"), id("b"), b"{}".to_vec()),
                (key("c"), id("c"), b"{}".to_vec()),
            ],
            &[],
        );
        assert_eq!(r1, 1);
        let body = push.snapshot().proxies[&key("a")].body.clone();
        let parsed: meshapi::wire::ConfigResponse =
            serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((parsed.epoch, parsed.version), (push.epoch(), 1));

        let remote: SocketAddr = ([127, 0, 0, 1], 1).into();
        let ga = push.poll_started(&key("a"), remote);
        let gb = push.poll_started(&key("b"), remote);
        push.record_ack(&key("a"), push.epoch(), 1, true, None);
        push.record_ack(&key("b"), push.epoch(), 1, false, Some("bad".into()));
        // A stale epoch (before a restart) counts for nothing.
        push.record_ack(&key("b"), push.epoch() ^ 1, 1, true, None);
        let r = push.wait_acks(1, Duration::from_millis(1)).await;
        assert_eq!(r.acked, ["a/0"]);
        assert_eq!(r.refused, [("b/0".to_string(), "bad".to_string())]);
        assert_eq!(r.not_connected, ["c/0"]);
        assert!(r.pending.is_empty() && !r.timed_out);
        assert!(!r.all_acked());

        // Revision 2 changes only b: a is not affected; b is pending until it ACKs.
        let r2 = push.publish(vec![(key("b"), id("b"), b"{}".to_vec())], &[key("c")]);
        assert_eq!(push.snapshot().proxies.len(), 2);
        let waiter = {
            let push = push.clone();
            tokio::spawn(async move { push.wait_acks(r2, Duration::from_secs(10)).await })
        };
        tokio::task::yield_now().await;
        push.record_ack(&key("b"), push.epoch(), r2, true, None);
        let r = waiter.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.acked, ["b/0"]);
        assert!(r.all_acked());
        let st = push.status();
        assert!(st.iter().all(|p| p.connected));
        assert_eq!(st[1].nacked, Some(1));
        assert_eq!(st[1].acked, Some(2));
        drop((ga, gb));
    }
}
