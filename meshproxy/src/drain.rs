//! The one drain mechanism shared by every listener and connection: a trigger, watchers that
//! see "draining" (stop accepting, finish in flight, send GOAWAY/close keep-alives) and
//! "forced" (deadline passed: drop now), and a count of live connections to wait on.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

#[derive(Debug)]
struct Inner {
    draining: watch::Sender<bool>,
    forced: watch::Sender<bool>,
    active: AtomicUsize,
    idle: Notify,
}

/// The drain trigger; cheap to clone.
#[derive(Debug, Clone)]
pub struct Drain {
    inner: Arc<Inner>,
}

/// Held by each live connection; dropping it lets a drain finish sooner.
#[derive(Debug)]
pub struct ConnGuard {
    inner: Arc<Inner>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.inner.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            inner: Arc::new(Inner {
                draining: watch::channel(false).0,
                forced: watch::channel(false).0,
                active: AtomicUsize::new(0),
                idle: Notify::new(),
            }),
        }
    }
}

impl Drain {
    /// Registers a live connection.
    pub fn guard(&self) -> ConnGuard {
        self.inner.active.fetch_add(1, Ordering::AcqRel);
        ConnGuard {
            inner: self.inner.clone(),
        }
    }

    /// Live connections.
    pub fn active(&self) -> usize {
        self.inner.active.load(Ordering::Acquire)
    }

    /// Resolves once draining has started.
    pub async fn draining(&self) {
        let mut rx = self.inner.draining.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Resolves once the deadline passed and remaining connections must close.
    pub async fn forced(&self) {
        let mut rx = self.inner.forced.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    pub fn is_draining(&self) -> bool {
        *self.inner.draining.borrow()
    }

    /// Starts draining and waits until every connection closed or `deadline` passed, then
    /// forces the rest closed. Returns the number of connections forced.
    pub async fn drain(&self, deadline: Duration) -> usize {
        self.inner.draining.send_replace(true);
        let wait = async {
            loop {
                let mut notified = std::pin::pin!(self.inner.idle.notified());
                notified.as_mut().enable();
                if self.active() == 0 {
                    return;
                }
                notified.await;
            }
        };
        let forced = match tokio::time::timeout(deadline, wait).await {
            Ok(()) => 0,
            Err(_) => self.active(),
        };
        self.inner.forced.send_replace(true);
        tracing::info!(forced, "drain finished");
        forced
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_guards_then_forces() {
        let d = Drain::default();
        let g = d.guard();
        let d2 = d.clone();
        let t = tokio::spawn(async move {
            d2.forced().await;
            drop(g);
        });
        assert_eq!(d.drain(Duration::from_millis(50)).await, 1);
        t.await.unwrap();
        assert_eq!(d.active(), 0);
        let d = Drain::default();
        let g = d.guard();
        drop(g);
        assert_eq!(d.drain(Duration::from_secs(1)).await, 0);
    }
}
