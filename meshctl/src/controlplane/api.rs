//! The control plane's HTTP handlers on the mTLS API: the config long-poll and ACK for proxies
//! (each may only fetch the configs of its own identity), status and reload for the CLI (the
//! admin identity only).

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use meshapi::wire::{
    ACK_PATH, AckRequest, CONFIG_PATH, MAX_WAIT_MS, PROXY_EPOCH_PARAM, RELOAD_PATH, ROTATE_PATH,
    ReloadRequest, RotateRequest, STATUS_PATH,
};
use meshmodel::compile::ProxyKey;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::push::{AckReport, ProxyStatus, PushState};
use super::reload::ReloadReport;
use super::{ReloadCmd, admin};
use crate::api::router::full_body;
use crate::api::{ApiBody, PeerInfo, Router, error_response, json_response, read_json};
use crate::ca::{Ca, unix_secs};

/// Largest ACK or reload body.
const MAX_BODY: usize = 64 * 1024;
/// Long-poll time when the client names none.
const DEFAULT_WAIT_MS: u64 = 30_000;
/// `apply --wait` time when the client names none.
const DEFAULT_ACK_TIMEOUT_MS: u64 = 30_000;

/// One identity's certificate, for status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityStatus {
    pub identity: String,
    /// Expiry of its latest certificate, Unix seconds.
    pub not_after: i64,
    pub serial: String,
    /// When it was issued, Unix seconds.
    #[serde(default)]
    pub issued_at: i64,
    /// Where it stands against its lifetime (see [`Expiry::of`]).
    #[serde(default)]
    pub expiry: Expiry,
}

/// One of the CA's own certificates (nothing renews them), for status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaCertStatus {
    /// `root`, `retiring-root` (the old root during a rotation) or `intermediate`.
    pub role: String,
    /// Its subject.
    pub subject: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    pub expiry: Expiry,
    /// For the `retiring-root`: when it leaves the trust bundle, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retires_at: Option<i64>,
}

/// One warning per CA certificate near or past expiry (`now` in Unix seconds): what `meshctl
/// status` and `meshctl ps` print ahead of the root's expiry.
pub fn ca_warnings(ca_certificates: &[CaCertStatus], now: i64) -> Vec<String> {
    let rotation = ca_certificates.iter().find_map(|old| {
        let retires_at = old.retires_at?;
        let new = ca_certificates.iter().find(|c| c.role == "root")?;
        Some(format!(
            "root rotation in progress: the old root ({}, expires in {}) is trusted for {} more, then only the new root ({}, expires in {}); a proxy that has not renewed by then loses trust",
            old.subject,
            rough_duration(old.not_after - now),
            rough_duration(retires_at - now),
            new.subject,
            rough_duration(new.not_after - now),
        ))
    });
    rotation
        .into_iter()
        .chain(ca_certificates.iter().filter_map(|c| match c.expiry {
            Expiry::Ok => None,
            Expiry::Expiring => Some(format!(
                "the CA's {} certificate ({}) expires in {}: replace it (nothing renews it) before every proxy loses trust",
                c.role,
                c.subject,
                rough_duration(c.not_after - now)
            )),
            Expiry::Expired => Some(format!(
                "the CA's {} certificate ({}) has expired: no certificate it signed verifies",
                c.role, c.subject
            )),
        }))
        .collect()
}

/// Where a certificate stands against its lifetime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Expiry {
    /// More than a tenth of its lifetime left.
    #[default]
    Ok,
    /// At most a tenth of its lifetime left. A workload or admin certificate renews at half
    /// of it, so one here is overdue (its proxy stopped, or renewal keeps failing); a CA
    /// certificate must be replaced by hand.
    Expiring,
    /// Past its notAfter.
    Expired,
}

impl Expiry {
    /// The state at `now` of a certificate valid from `from` to `not_after` (Unix seconds).
    pub fn of(from: i64, not_after: i64, now: i64) -> Expiry {
        let left = not_after.saturating_sub(now);
        let lifetime = not_after.saturating_sub(from).max(0);
        if left <= 0 {
            Expiry::Expired
        } else if left.saturating_mul(10) <= lifetime {
            Expiry::Expiring
        } else {
            Expiry::Ok
        }
    }
}

/// `3d4h`, `5h12m`, `7m`, `42s`: a rough length for messages.
pub fn rough_duration(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        s if s >= 86_400 => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Answer of `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub epoch: u64,
    pub revision: u64,
    pub proxies: Vec<ProxyStatus>,
    pub last_reload: ReloadReport,
    pub identities: Vec<IdentityStatus>,
    /// The CA's root (and intermediate) certificates.
    #[serde(default)]
    pub ca_certificates: Vec<CaCertStatus>,
    /// Certificates near or past expiry, one sentence each.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// Answer of `POST /v1/reload`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReloadResponse {
    pub reload: ReloadReport,
    /// ACK outcome, when asked to wait and something changed.
    pub acks: Option<AckReport>,
}

/// Adds the config, ACK, status and reload routes to `base`.
pub fn router(
    base: Router,
    push: Arc<PushState>,
    ca: Arc<Ca>,
    reload: mpsc::Sender<ReloadCmd>,
) -> Router {
    let (p1, p2, p3, p4, p5) = (push.clone(), push.clone(), push.clone(), push.clone(), push);
    let (ca2, ca3) = (ca.clone(), ca.clone());
    let (reload2, reload3) = (reload.clone(), reload.clone());
    base.route(Method::GET, CONFIG_PATH, move |req, peer| {
        poll(p1.clone(), reload2.clone(), req, peer)
    })
    .route(Method::POST, ACK_PATH, move |req, peer| {
        ack(p2.clone(), req, peer)
    })
    .route(Method::GET, STATUS_PATH, move |req, peer| {
        status(p3.clone(), ca.clone(), req, peer)
    })
    .route(Method::POST, RELOAD_PATH, move |req, peer| {
        reload_now(p4.clone(), ca2.clone(), reload.clone(), req, peer)
    })
    .route(Method::POST, ROTATE_PATH, move |req, peer| {
        rotate(p5.clone(), ca3.clone(), reload3.clone(), req, peer)
    })
}

/// Shortest overlap `meshctl ca rotate` accepts: time enough for every connected proxy to
/// take the new bundle and renew (they do so at once, on the push).
pub const MIN_OVERLAP: Duration = Duration::from_secs(10);

/// Answer of [`ROTATE_PATH`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RotateResponse {
    /// The CA's certificates after the rotation started: the new `root` and the
    /// `retiring-root` with its `retiresAt`.
    pub ca_certificates: Vec<CaCertStatus>,
    /// The push of the new trust bundle (every proxy renews on it).
    pub reload: ReloadReport,
    /// Which connected proxies ACKed it.
    pub acks: Option<AckReport>,
}

/// Runs one reload in the reload task (with `note` printed above its report) and returns
/// its report, or the answer to give when the control plane is stopping.
#[allow(clippy::result_large_err)]
async fn reload_for(
    tx: &mpsc::Sender<ReloadCmd>,
    note: Option<String>,
) -> Result<ReloadReport, Response<ApiBody>> {
    let stopping = || error_response(StatusCode::SERVICE_UNAVAILABLE, "control plane stopping");
    let (reply, rx) = oneshot::channel();
    let cmd = ReloadCmd {
        reply: Some(reply),
        trigger: None,
        note,
    };
    if tx.send(cmd).await.is_err() {
        return Err(stopping());
    }
    rx.await.map_err(|_| stopping())
}

async fn rotate(
    push: Arc<PushState>,
    ca: Arc<Ca>,
    tx: mpsc::Sender<ReloadCmd>,
    req: Request<Incoming>,
    peer: PeerInfo,
) -> Response<ApiBody> {
    if let Err(resp) = require_admin(&peer, &ca) {
        return resp;
    }
    let body: RotateRequest = match read_json(req, MAX_BODY).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let overlap = Duration::from_millis(body.overlap_ms);
    if overlap < MIN_OVERLAP {
        return error_response(
            StatusCode::BAD_REQUEST,
            format!(
                "overlap {}s is too short: at least {}s, so every proxy can take the new root before the old one retires",
                overlap.as_secs(),
                MIN_OVERLAP.as_secs()
            ),
        );
    }
    let ca2 = ca.clone();
    match tokio::task::spawn_blocking(move || ca2.rotate(overlap)).await {
        Ok(Ok(())) => {}
        Ok(Err(e @ crate::ca::CaError::Config(_))) => {
            return error_response(StatusCode::CONFLICT, e.to_string());
        }
        Ok(Err(e)) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
    let report = match reload_for(
        &tx,
        Some("root rotation started: pushing the new trust bundle".into()),
    )
    .await
    {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let timeout = Duration::from_millis(body.timeout_ms.unwrap_or(DEFAULT_ACK_TIMEOUT_MS));
    let acks = if report.changed.is_empty() {
        push.wait_sync(timeout).await
    } else {
        push.wait_acks(report.revision, timeout).await
    };
    json_response(
        StatusCode::OK,
        &RotateResponse {
            ca_certificates: status_report(&push, &ca).ca_certificates,
            reload: report,
            acks: Some(acks),
        },
    )
}

#[derive(Debug, Default)]
struct PollQuery {
    key: Option<ProxyKey>,
    epoch: u64,
    version: u64,
    wait_ms: u64,
    /// The proxy's start epoch, sent once it serves.
    proxy_epoch: Option<u64>,
}

fn parse_query(q: Option<&str>) -> Result<PollQuery, String> {
    let mut workload = None;
    let mut instance = None;
    let mut out = PollQuery {
        wait_ms: DEFAULT_WAIT_MS,
        ..PollQuery::default()
    };
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let num = |v: &str| v.parse::<u64>().map_err(|_| format!("{k}: not a number"));
        match k {
            "workload" => workload = Some(v.to_string()),
            "instance" => instance = Some(num(v)?),
            "epoch" => out.epoch = num(v)?,
            "version" => out.version = num(v)?,
            "waitMs" => out.wait_ms = num(v)?.min(MAX_WAIT_MS),
            PROXY_EPOCH_PARAM => out.proxy_epoch = Some(num(v)?),
            _ => return Err(format!("unknown parameter {k:?}")),
        }
    }
    let workload = workload.ok_or("workload is required")?;
    let instance = u32::try_from(instance.unwrap_or(0)).map_err(|_| "instance: too large")?;
    out.key = Some(ProxyKey { workload, instance });
    Ok(out)
}

fn raw_json(body: bytes::Bytes) -> Response<ApiBody> {
    let mut resp = Response::new(full_body(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn empty(status: StatusCode) -> Response<ApiBody> {
    let mut resp = Response::new(full_body(bytes::Bytes::new()));
    *resp.status_mut() = status;
    resp
}

async fn poll(
    push: Arc<PushState>,
    reload: mpsc::Sender<ReloadCmd>,
    req: Request<Incoming>,
    peer: PeerInfo,
) -> Response<ApiBody> {
    let identity = match peer.require_identity() {
        Ok(id) => id.clone(),
        Err(resp) => return resp,
    };
    let query = match parse_query(req.uri().query()) {
        Ok(q) => q,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, e),
    };
    let Some(key) = query.key else {
        return error_response(StatusCode::BAD_REQUEST, "workload is required");
    };
    let mut rx = push.subscribe();
    let mut closed = push.closed();
    match push.snapshot().proxies.get(&key) {
        None => {
            return error_response(StatusCode::NOT_FOUND, format!("no proxy {key} in the mesh"));
        }
        Some(p) if p.identity != identity => {
            tracing::warn!(proxy = %key, peer = %identity, "config poll for another identity refused");
            return error_response(
                StatusCode::FORBIDDEN,
                format!("{key} is {}, not {identity}", p.identity),
            );
        }
        Some(_) => {}
    }
    let _guard = push.poll_started(&key, peer.remote_addr);
    if let Some(e) = query.proxy_epoch
        && push.report_ready(&key, e)
    {
        // The proxy (re)started and serves: recompile so its clients see the new epoch. A
        // full queue already holds a reload, which reads the epochs when it runs.
        let _ = reload.try_send(ReloadCmd {
            reply: None,
            trigger: Some(std::time::Instant::now()),
            note: Some(format!("{key} serves (proxy started)")),
        });
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(query.wait_ms);
    loop {
        let current = rx.borrow_and_update().proxies.get(&key).cloned();
        match current {
            None => return error_response(StatusCode::NOT_FOUND, format!("{key} was removed")),
            Some(p) if query.epoch != push.epoch() || p.version != query.version => {
                push.mark_sent(&key, p.version);
                return raw_json(p.body.clone());
            }
            Some(_) => {}
        }
        if *closed.borrow() {
            return error_response(StatusCode::SERVICE_UNAVAILABLE, "control plane stopping");
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() {
                return error_response(StatusCode::SERVICE_UNAVAILABLE, "control plane stopping");
            },
            _ = tokio::time::sleep_until(deadline) => return empty(StatusCode::NO_CONTENT),
            _ = closed.changed() => {}
        }
    }
}

async fn ack(push: Arc<PushState>, req: Request<Incoming>, peer: PeerInfo) -> Response<ApiBody> {
    let identity = match peer.require_identity() {
        Ok(id) => id.clone(),
        Err(resp) => return resp,
    };
    let body: AckRequest = match read_json(req, MAX_BODY).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let key = ProxyKey {
        workload: body.workload,
        instance: body.instance,
    };
    match push.snapshot().proxies.get(&key) {
        Some(p) if p.identity == identity => {}
        Some(_) => return error_response(StatusCode::FORBIDDEN, "not your proxy"),
        None => return error_response(StatusCode::NOT_FOUND, format!("no proxy {key}")),
    }
    push.record_ack(&key, body.epoch, body.version, body.accepted, body.error);
    empty(StatusCode::NO_CONTENT)
}

#[allow(clippy::result_large_err)]
fn require_admin(peer: &PeerInfo, ca: &Ca) -> Result<(), Response<ApiBody>> {
    let id = peer.require_identity()?;
    let admin = admin::admin_id(&ca.config().trust_domain).ok();
    if admin.as_ref() != Some(id) {
        return Err(error_response(
            StatusCode::FORBIDDEN,
            "only the meshctl admin identity may do this",
        ));
    }
    Ok(())
}

async fn status(
    push: Arc<PushState>,
    ca: Arc<Ca>,
    _req: Request<Incoming>,
    peer: PeerInfo,
) -> Response<ApiBody> {
    if let Err(resp) = require_admin(&peer, &ca) {
        return resp;
    }
    json_response(StatusCode::OK, &status_report(&push, &ca))
}

/// The status report (also used in-process by tests).
pub fn status_report(push: &PushState, ca: &Ca) -> StatusReport {
    let now = unix_secs(std::time::SystemTime::now());
    let identities: Vec<IdentityStatus> = ca
        .issued()
        .into_iter()
        .map(|(id, info)| {
            let (issued_at, not_after) = (unix_secs(info.issued_at), unix_secs(info.not_after));
            IdentityStatus {
                identity: id.to_string(),
                not_after,
                serial: info.serial,
                issued_at,
                expiry: Expiry::of(issued_at, not_after, now),
            }
        })
        .collect();
    let ca_certificates: Vec<CaCertStatus> = ca
        .ca_certificates()
        .into_iter()
        .filter_map(|(role, der)| {
            use x509_parser::prelude::{FromDer, X509Certificate};
            let (_, x) = X509Certificate::from_der(&der).ok()?;
            let (not_before, not_after) = (
                x.validity().not_before.timestamp(),
                x.validity().not_after.timestamp(),
            );
            Some(CaCertStatus {
                role: role.to_string(),
                subject: x.subject().to_string(),
                not_before,
                not_after,
                expiry: Expiry::of(not_before, not_after, now),
                retires_at: (role == "retiring-root")
                    .then(|| ca.retire_at().map(unix_secs))
                    .flatten(),
            })
        })
        .collect();
    let mut warnings = ca_warnings(&ca_certificates, now);
    let admin = admin::admin_id(&ca.config().trust_domain)
        .ok()
        .map(|a| a.to_string());
    let mut expired = 0;
    for i in &identities {
        let is_admin = admin.as_deref() == Some(i.identity.as_str());
        match i.expiry {
            Expiry::Ok => {}
            Expiry::Expiring => warnings.push(format!(
                "the certificate of {} expires in {}: its renewal is overdue{}",
                i.identity,
                rough_duration(i.not_after - now),
                if is_admin {
                    " (see the control plane's log)"
                } else {
                    " (is its proxy running and able to reach the control plane?)"
                }
            )),
            Expiry::Expired if is_admin => warnings.push(format!(
                "the CLI's admin certificate ({}) has expired",
                i.identity
            )),
            Expiry::Expired => expired += 1,
        }
    }
    if expired > 0 {
        warnings.push(format!(
            "{expired} identit{} hold only an expired certificate (their proxies are stopped or not renewing)",
            if expired == 1 { "y" } else { "ies" }
        ));
    }
    StatusReport {
        epoch: push.epoch(),
        revision: push.revision(),
        proxies: push.status(),
        last_reload: push.last_reload(),
        identities,
        ca_certificates,
        warnings,
    }
}

async fn reload_now(
    push: Arc<PushState>,
    ca: Arc<Ca>,
    tx: mpsc::Sender<ReloadCmd>,
    req: Request<Incoming>,
    peer: PeerInfo,
) -> Response<ApiBody> {
    if let Err(resp) = require_admin(&peer, &ca) {
        return resp;
    }
    let body: ReloadRequest = match read_json(req, MAX_BODY).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let report = match reload_for(&tx, None).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let acks = if body.wait && report.ok {
        let timeout = Duration::from_millis(body.timeout_ms.unwrap_or(DEFAULT_ACK_TIMEOUT_MS));
        if report.changed.is_empty() {
            // Nothing changed: is every proxy on its current config? (The revision in force
            // may be a proxy restart's, which changed only that proxy's clients.)
            Some(push.wait_sync(timeout).await)
        } else {
            Some(push.wait_acks(report.revision, timeout).await)
        }
    } else {
        None
    };
    json_response(
        StatusCode::OK,
        &ReloadResponse {
            reload: report,
            acks,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_judged_against_the_lifetime() {
        // 24 h certificate, renewed at 12 h: fine until the last 2.4 h.
        assert_eq!(Expiry::of(0, 86_400, 43_200), Expiry::Ok);
        assert_eq!(Expiry::of(0, 86_400, 77_759), Expiry::Ok);
        assert_eq!(Expiry::of(0, 86_400, 77_760), Expiry::Expiring);
        assert_eq!(Expiry::of(0, 86_400, 86_400), Expiry::Expired);
        assert_eq!(Expiry::of(0, 86_400, 90_000), Expiry::Expired);
        assert_eq!(rough_duration(90_061), "1d1h");
        assert_eq!(rough_duration(3_700), "1h1m");
        assert_eq!(rough_duration(61), "1m");
        assert_eq!(rough_duration(-5), "0s");
    }

    #[test]
    fn queries_parse_and_bad_ones_are_refused() {
        let q = parse_query(Some(
            "workload=web&instance=2&epoch=5&version=7&waitMs=999999",
        ))
        .unwrap_or_default();
        assert_eq!(q.key.as_ref().map(|k| k.instance), Some(2));
        assert_eq!((q.epoch, q.version, q.wait_ms), (5, 7, MAX_WAIT_MS));
        assert_eq!(q.proxy_epoch, None);
        let q = parse_query(Some("workload=web&proxyEpoch=42")).unwrap_or_default();
        assert_eq!(q.proxy_epoch, Some(42));
        assert!(parse_query(Some("workload=web&proxyEpoch=-1")).is_err());
        assert!(parse_query(Some("instance=1")).is_err());
        assert!(parse_query(Some("workload=a&version=x")).is_err());
        assert!(parse_query(Some("workload=a&evil=1")).is_err());
    }
}
