//! Publishing records snapshots, and the records-file watcher.
//!
//! [`RecordsHandle::publish`] validates a [`Records`] value, compiles it into a [`Zone`] and
//! swaps it in with one `ArcSwap::store`; requests in flight keep the snapshot they loaded.
//! [`watch_file`] watches the file's parent directory (so editors that replace the file by
//! rename, symlink swaps, and a file deleted and re-created, are seen), debounces the burst of events, and
//! re-reads the file. A file that does not parse or validate is refused with one warning and
//! the last good records keep serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use meshapi::dns::{Records, RecordsError};
use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::zone::{Zone, ZoneError};

/// Why records could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Records(#[from] RecordsError),
    #[error(transparent)]
    Zone(#[from] ZoneError),
}

/// Why the watcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {path}: {source}")]
    Notify {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// Publishes records snapshots to the running server. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RecordsHandle {
    zone: Arc<ArcSwap<Zone>>,
    current: Arc<ArcSwap<Records>>,
    serial: Arc<AtomicU32>,
    status: Arc<ArcSwap<ReloadStatus>>,
}

/// Outcome of the latest records-file reload, for `meshctl status` and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadStatus {
    /// Reloads attempted since start (good, unchanged or refused).
    pub attempts: u64,
    /// Why the latest reload was refused; `None` once a good file has been read.
    pub last_error: Option<String>,
}

impl RecordsHandle {
    /// A handle serving `initial` (already validated).
    pub fn new(initial: Records) -> Result<RecordsHandle, PublishError> {
        let serial = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u32::try_from(d.as_secs()).unwrap_or(1));
        let zone = Zone::build(&initial, serial)?;
        Ok(RecordsHandle {
            zone: Arc::new(ArcSwap::from_pointee(zone)),
            current: Arc::new(ArcSwap::from_pointee(initial)),
            serial: Arc::new(AtomicU32::new(serial)),
            status: Arc::default(),
        })
    }

    /// The zone the request handler reads.
    pub fn zone(&self) -> Arc<ArcSwap<Zone>> {
        self.zone.clone()
    }

    /// The records now served.
    pub fn current(&self) -> Arc<Records> {
        self.current.load_full()
    }

    /// The outcome of the latest file reload.
    pub fn status(&self) -> ReloadStatus {
        (*self.status.load_full()).clone()
    }

    /// Validates, compiles and swaps in `records`. Returns false if they equal the current
    /// ones (nothing to do). On error the current records keep serving.
    pub fn publish(&self, records: Records) -> Result<bool, PublishError> {
        if *self.current.load_full() == records {
            return Ok(false);
        }
        let errors = records.validate();
        if !errors.is_empty() {
            return Err(RecordsError::Invalid {
                origin: "published records".to_string(),
                errors,
            }
            .into());
        }
        let serial = self.serial.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let zone = Zone::build(&records, serial)?;
        self.zone.store(Arc::new(zone));
        self.current.store(Arc::new(records));
        Ok(true)
    }

    /// Reads `path` and publishes it, logging the outcome.
    pub fn reload_from(&self, path: &Path) {
        let result = Records::load(path)
            .map_err(PublishError::from)
            .and_then(|r| {
                let services = r.services.len();
                self.publish(r).map(|changed| (changed, services))
            });
        let attempts = self.status.load().attempts + 1;
        let last_error = result.as_ref().err().map(ToString::to_string);
        self.status.store(Arc::new(ReloadStatus {
            attempts,
            last_error,
        }));
        match result {
            Ok((true, services)) => info!(file = %path.display(), services, "records reloaded"),
            Ok((false, _)) => debug!(file = %path.display(), "records file unchanged"),
            Err(error) => warn!(
                file = %path.display(),
                %error,
                "records file refused; still serving the last good records"
            ),
        }
    }
}

/// Watches `path` and reloads it into `records` on change until `shutdown` turns true.
pub fn watch_file(
    path: PathBuf,
    records: RecordsHandle,
    debounce: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, WatchError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Any event in the directory triggers a (debounced) re-read, not only events naming the
    // file: a symlink swap (`records.yaml -> ..data/records.yaml`, as Kubernetes mounts do)
    // changes other names, and after an error notify may have lost events. Re-reading
    // unchanged content is cheap and publishes nothing.
    let mut watcher = notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
        let _ = tx.send(());
    })
    .map_err(|source| WatchError::Notify {
        path: dir.clone(),
        source,
    })?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|source| WatchError::Notify {
            path: dir.clone(),
            source,
        })?;
    info!(file = %path.display(), "watching records file");
    Ok(tokio::spawn(async move {
        let _watcher = watcher; // dropped when the task ends, which stops watching
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                event = rx.recv() => if event.is_none() { return },
            }
            // Debounce: wait until no event arrived for `debounce`.
            loop {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    event = rx.recv() => if event.is_none() { return },
                    _ = tokio::time::sleep(debounce) => break,
                }
            }
            records.reload_from(&path);
        }
    }))
}
