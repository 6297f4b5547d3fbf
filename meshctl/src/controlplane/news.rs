//! What the background control plane of `up -d` did that the user has not seen: a reload it
//! refused (the files' errors), one applied with warnings, a proxy that refused its config
//! (NACK). The next `meshctl` command that names the project prints it once on stderr, so a
//! bad edit saved while the mesh runs in the background does not go unnoticed until
//! `meshctl status`. What was shown is remembered in `.mesh/seen-news` (one key per event).

use std::path::Path;
use std::time::Duration;

use super::api::StatusReport;
use super::client::AdminClient;

/// File under `.mesh/` with the keys of the news already shown.
pub const SEEN_FILE: &str = "seen-news";

/// The lines to show for `status`, each with its key; empty when all is well.
pub fn news(status: &StatusReport) -> Vec<(String, String)> {
    let r = &status.last_reload;
    let mut out = Vec::new();
    let key = format!("reload:{}:{}", status.epoch, r.at_unix_ms);
    if !r.ok {
        let mut text = format!(
            "the control plane refused the last edit of the mesh files (the proxies keep revision {}):",
            r.revision
        );
        for e in &r.errors {
            text.push_str("\n  ");
            text.push_str(&e.replace('\n', "\n  "));
        }
        out.push((key, text));
    } else if r.warnings > 0 {
        out.push((
            key,
            format!(
                "the control plane applied revision {} with {} warning(s); `meshctl check` shows them",
                r.revision, r.warnings
            ),
        ));
    }
    for p in &status.proxies {
        if let (Some(v), Some(why)) = (p.nacked, &p.nack_error)
            && p.acked.is_none_or(|a| a < v)
        {
            out.push((
                format!("nack:{}:{}:{v}", status.epoch, p.proxy),
                format!("proxy {} refused config version {v}: {why}", p.proxy),
            ));
        }
    }
    out
}

/// Asks the project's control plane (if one runs) for news and prints what was not shown yet
/// to stderr. Quiet when no control plane answers within a second.
pub async fn print_unseen(state_dir: &Path) {
    let Ok(client) = AdminClient::from_state_dir(state_dir) else {
        return;
    };
    let asked = tokio::time::timeout(
        Duration::from_secs(1),
        client.get::<StatusReport>(meshapi::wire::STATUS_PATH),
    )
    .await;
    let Ok(Ok(status)) = asked else {
        return;
    };
    let seen_path = state_dir.join(SEEN_FILE);
    let seen = std::fs::read_to_string(&seen_path).unwrap_or_default();
    let fresh: Vec<(String, String)> = news(&status)
        .into_iter()
        .filter(|(k, _)| !seen.lines().any(|l| l == k))
        .collect();
    if fresh.is_empty() {
        return;
    }
    for (_, text) in &fresh {
        eprintln!("warning: {text}");
    }
    let mut keep: Vec<&str> = seen.lines().rev().take(50).collect();
    keep.reverse();
    let mut all: Vec<String> = keep.into_iter().map(String::from).collect();
    all.extend(fresh.into_iter().map(|(k, _)| k));
    let _ = std::fs::write(&seen_path, all.join("\n") + "\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controlplane::{ProxyStatus, ReloadReport};

    fn status(reload: ReloadReport, proxies: Vec<ProxyStatus>) -> StatusReport {
        StatusReport {
            epoch: 7,
            revision: reload.revision,
            proxies,
            last_reload: reload,
            identities: Vec::new(),
            ca_certificates: Vec::new(),
            warnings: Vec::new(),
        }
    }

    #[test]
    fn a_refused_edit_a_warning_and_a_nack_are_news_a_clean_reload_is_not() {
        let clean = ReloadReport {
            ok: true,
            revision: 3,
            at_unix_ms: 10,
            ..ReloadReport::default()
        };
        assert!(news(&status(clean.clone(), Vec::new())).is_empty());

        let refused = ReloadReport {
            ok: false,
            errors: vec!["mesh/vs.yaml:4:3: error[MESH0003]: unknown field".into()],
            ..clean.clone()
        };
        let n = news(&status(refused, Vec::new()));
        assert_eq!(n.len(), 1);
        assert!(n[0].1.contains("refused the last edit"), "{}", n[0].1);
        assert!(n[0].1.contains("mesh/vs.yaml:4:3"), "{}", n[0].1);

        let warned = ReloadReport {
            warnings: 2,
            ..clean.clone()
        };
        assert!(
            news(&status(warned, Vec::new()))[0]
                .1
                .contains("2 warning(s)")
        );

        let nack = ProxyStatus {
            proxy: "backend-v1/0".into(),
            identity: String::new(),
            version: 4,
            sent: Some(4),
            acked: Some(3),
            nacked: Some(4),
            nack_error: Some("bad route".into()),
            connected: true,
            connected_since_ms: None,
            remote: None,
            proxy_epoch: None,
            ready_since_ms: None,
            stats: None,
        };
        let n = news(&status(clean, vec![nack]));
        assert_eq!(n.len(), 1);
        assert!(
            n[0].1
                .contains("backend-v1/0 refused config version 4: bad route")
        );
    }
}
