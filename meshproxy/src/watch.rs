//! Re-applies the config file when it (or a credential file it names) changes. Watches the
//! parent directories, so editors and tools that replace files by rename work; debounced so a
//! burst of events gives one reload. An invalid file is refused and the old config stays.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::app::ProxyHandle;

/// Debounce window for file events.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

fn watched_dirs(config: &Path, handle: &ProxyHandle) -> BTreeSet<PathBuf> {
    let cfg = handle.config();
    let id = &cfg.identity;
    [
        Some(config),
        id.cert_file.as_deref(),
        id.key_file.as_deref(),
        id.roots_file.as_deref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| {
        p.parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf()
    })
    .collect()
}

/// File names whose changes trigger a reload (other files in the same directories, such as
/// logs, are ignored).
fn watched_names(config: &Path, handle: &ProxyHandle) -> BTreeSet<std::ffi::OsString> {
    let cfg = handle.config();
    let id = &cfg.identity;
    [
        Some(config),
        id.cert_file.as_deref(),
        id.key_file.as_deref(),
        id.roots_file.as_deref(),
    ]
    .into_iter()
    .flatten()
    .filter_map(|p| p.file_name().map(|n| n.to_os_string()))
    .collect()
}

/// Starts watching; the returned watcher must be kept alive.
pub fn spawn(config: PathBuf, handle: ProxyHandle) -> notify::Result<notify::RecommendedWatcher> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let names = watched_names(&config, &handle);
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let Ok(ev) = ev else { return };
        let relevant = !ev.kind.is_access()
            && ev
                .paths
                .iter()
                .any(|p| p.file_name().is_some_and(|n| names.contains(n)));
        if relevant {
            let _ = tx.send(());
        }
    })?;
    for dir in watched_dirs(&config, &handle) {
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        tracing::info!(dir = %dir.display(), "watching for config and credential changes");
    }
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: wait until events stop for DEBOUNCE.
            while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
            if handle.reload_file(&config).is_ok() {
                tracing::info!(path = %config.display(), "config file re-applied");
            }
        }
    });
    Ok(watcher)
}
