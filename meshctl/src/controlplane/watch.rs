//! Watching the mesh files: notify on the parent directory of every loaded file (so editors
//! that save by writing a temporary file and renaming it over the original are seen, and a
//! deleted file is noticed) and recursively on every loaded directory (new files there are
//! picked up), plus each loaded directory's parent for the directory's own entry (a directory
//! replaced by a symlink swap is seen). Events for other paths (such as `.mesh/`) are ignored. After the last event,
//! a quiet time (the debounce) passes before one reload is requested.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::ReloadCmd;

/// Which paths matter.
#[derive(Debug, Default)]
struct Interest {
    files: BTreeSet<PathBuf>,
    dirs: Vec<PathBuf>,
}

impl Interest {
    fn matches(&self, path: &Path) -> bool {
        self.files.contains(path) || self.dirs.iter().any(|d| path.starts_with(d))
    }
}

struct Inner {
    watcher: RecommendedWatcher,
    /// Directories watched, with their mode.
    watched: BTreeSet<(PathBuf, bool)>,
}

/// The running watcher; dropping it stops watching.
pub struct FileWatcher {
    inner: Arc<Mutex<Inner>>,
    interest: Arc<Mutex<Interest>>,
    debounce_task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FileWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWatcher").finish_non_exhaustive()
    }
}

impl Drop for FileWatcher {
    fn drop(&mut self) {
        self.debounce_task.abort();
    }
}

/// A handle the reload task uses to follow the set of loaded files.
#[derive(Clone)]
pub struct Rewatch {
    inner: Arc<Mutex<Inner>>,
    interest: Arc<Mutex<Interest>>,
}

fn absolute(p: &Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    // A file that does not exist (deleted): canonicalize its directory.
    match (p.parent(), p.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
        .map(|d| d.join(name))
        .unwrap_or_else(|_| p.to_path_buf()),
        _ => p.to_path_buf(),
    }
}

impl Rewatch {
    /// Watches exactly what `files` and `dirs` need; errors are logged (a directory that
    /// vanished is watched again when it is loaded again). True if a new watch was added.
    pub fn update(&self, files: &[PathBuf], dirs: &[PathBuf]) -> bool {
        let mut files: BTreeSet<PathBuf> = files.iter().map(|f| absolute(f)).collect();
        let mut want: BTreeSet<(PathBuf, bool)> = BTreeSet::new();
        // A loaded directory's own entry in its parent: replacing it (a symlink swap) is seen.
        for d in dirs {
            if let (Some(parent), Some(name)) = (d.parent(), d.file_name()) {
                let parent = absolute(if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                });
                files.insert(parent.join(name));
            }
        }
        let dirs: Vec<PathBuf> = dirs.iter().map(|d| absolute(d)).collect();
        for f in &files {
            if let Some(parent) = f.parent() {
                want.insert((parent.to_path_buf(), false));
            }
        }
        for d in &dirs {
            want.insert((d.clone(), true));
        }
        {
            let mut interest = self.interest.lock().unwrap_or_else(|p| p.into_inner());
            interest.files = files;
            interest.dirs = dirs;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<_> = inner.watched.difference(&want).cloned().collect();
        for (dir, _) in gone {
            let _ = inner.watcher.unwatch(&dir);
            inner.watched.retain(|(d, _)| *d != dir);
        }
        let new: Vec<_> = want.difference(&inner.watched).cloned().collect();
        let mut added = false;
        for (dir, recursive) in new {
            let mode = if recursive {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            match inner.watcher.watch(&dir, mode) {
                Ok(()) => {
                    inner.watched.insert((dir, recursive));
                    added = true;
                }
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch"),
            }
        }
        added
    }
}

impl FileWatcher {
    /// Starts watching; reloads are sent to `reload` after `debounce` of quiet.
    pub fn start(
        files: &[PathBuf],
        dirs: &[PathBuf],
        debounce: Duration,
        reload: mpsc::Sender<ReloadCmd>,
    ) -> notify::Result<FileWatcher> {
        let interest = Arc::new(Mutex::new(Interest::default()));
        let (tx, rx) = mpsc::unbounded_channel::<Instant>();
        let filter = interest.clone();
        let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::warn!(error = %e, "file watch error");
                    return;
                }
            };
            if ev.kind.is_access() {
                return;
            }
            let relevant = {
                let interest = filter.lock().unwrap_or_else(|p| p.into_inner());
                ev.paths.iter().any(|p| interest.matches(p))
            };
            if relevant {
                let _ = tx.send(Instant::now());
            }
        })?;
        let inner = Arc::new(Mutex::new(Inner {
            watcher,
            watched: BTreeSet::new(),
        }));
        let handle = Rewatch {
            inner: inner.clone(),
            interest: interest.clone(),
        };
        handle.update(files, dirs);
        let debounce_task = tokio::spawn(debounce_loop(rx, debounce, reload));
        Ok(FileWatcher {
            inner,
            interest,
            debounce_task,
        })
    }

    /// The handle to follow a changed set of files.
    pub fn handle(&self) -> Rewatch {
        Rewatch {
            inner: self.inner.clone(),
            interest: self.interest.clone(),
        }
    }
}

async fn debounce_loop(
    mut rx: mpsc::UnboundedReceiver<Instant>,
    debounce: Duration,
    reload: mpsc::Sender<ReloadCmd>,
) {
    while let Some(first) = rx.recv().await {
        loop {
            tokio::select! {
                more = rx.recv() => if more.is_none() { return },
                _ = tokio::time::sleep(debounce) => break,
            }
        }
        tracing::debug!(
            since_first_event_ms = first.elapsed().as_millis() as u64,
            "files changed"
        );
        let cmd = ReloadCmd {
            reply: None,
            trigger: Some(first),
            note: None,
        };
        if reload.send(cmd).await.is_err() {
            return;
        }
    }
}
