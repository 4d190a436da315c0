//! Releases that could not finish when their guard went: a background thread per handle
//! keeps trying, until the row is released or its lease has ended anyway.
//!
//! Dropping a guard makes one short attempt (the drop must not block its thread for long,
//! on any exit path, panics included); `release()` tries for up to the statement timeout
//! and reports the error. Either way a release that could not reach the database comes
//! here, so that a lock is not held until its lease runs out merely because the network
//! hiccupped at the wrong moment.

use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::backend::pool::Store;
use crate::backend::Failure;
use crate::lease::LeaseState;

/// A release to finish.
pub(crate) struct Pending {
    pub lease: Arc<LeaseState>,
    /// `lock_at_least_for`, measured from `acquired_at`.
    pub at_least: Option<Duration>,
    pub acquired_at: Instant,
}

impl Pending {
    /// How much longer the row must stay held (`lock_at_least_for`), if at all.
    pub(crate) fn keep_for(&self) -> Option<Duration> {
        self.at_least
            .and_then(|d| d.checked_sub(self.acquired_at.elapsed()))
            .filter(|d| !d.is_zero())
    }
}

/// The first wait before trying a failed release again; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The background releaser of one handle, started on first use.
pub(crate) struct Releaser {
    queue: Mutex<mpsc::Sender<Pending>>,
}

impl std::fmt::Debug for Releaser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Releaser").finish_non_exhaustive()
    }
}

impl Releaser {
    pub(crate) fn start(store: Weak<dyn Store>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("database-locks-release".into())
            .spawn(move || release_loop(&rx, &store))?;
        Ok(Releaser {
            queue: Mutex::new(tx),
        })
    }

    pub(crate) fn push(&self, pending: Pending) {
        let name = pending.lease.name.clone();
        if self.queue.lock().send(pending).is_err() {
            tracing::warn!(lock = %name, "the background releaser has stopped; the lease will expire");
        }
    }
}

struct Retry {
    pending: Pending,
    at: Instant,
    backoff: Duration,
}

fn release_loop(rx: &mpsc::Receiver<Pending>, store: &Weak<dyn Store>) {
    let mut retries: Vec<Retry> = Vec::new();
    loop {
        let now = Instant::now();
        let next = retries.iter().map(|r| r.at).min();
        let received = match next {
            Some(at) => rx.recv_timeout(at.saturating_duration_since(now)),
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(pending) => retries.push(Retry {
                pending,
                at: Instant::now(),
                backoff: FIRST_BACKOFF,
            }),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // The handle is gone; its leases expire by themselves.
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let Some(store) = store.upgrade() else { return };
        let now = Instant::now();
        retries.retain_mut(|retry| {
            if retry.at > now {
                return true;
            }
            let lease = &retry.pending.lease;
            if lease.expires_by().is_some_and(|end| end <= now) {
                tracing::debug!(lock = %lease.name, "the lease ended before it could be released");
                return false;
            }
            match store.release(
                store.deadline(None),
                lease.lease(),
                retry.pending.keep_for(),
            ) {
                Ok(released) => {
                    tracing::debug!(lock = %lease.name, released, "released in the background");
                    false
                }
                Err(err) if err.failure == Failure::Transient => {
                    retry.at = Instant::now() + retry.backoff;
                    retry.backoff = (retry.backoff * 2).min(MAX_BACKOFF);
                    true
                }
                Err(err) => {
                    tracing::warn!(lock = %lease.name, "releasing in the background failed: {}", err.error);
                    false
                }
            }
        });
    }
}
