//! The RAII guard of a held lock.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::locks::{transient, Locks};
use crate::renewer::LeaseState;

/// A held lock. Dropping it stops renewal and releases the lock, on every exit path,
/// panics included; [`release`](Self::release) does the same and reports errors.
///
/// With locking disabled the guard holds nothing: [`is_held`](Self::is_held) is false
/// and [`token`](Self::token) is `None`.
#[must_use = "the lock is released as soon as the guard is dropped; bind it to a variable"]
pub struct LockGuard {
    name: String,
    held: Option<Held>,
}

struct Held {
    locks: Locks,
    lease: Arc<LeaseState>,
    at_least: Option<Duration>,
    acquired_at: Instant,
    local_id: u64,
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("name", &self.name)
            .field("locked_by", &self.locked_by())
            .field("token", &self.token())
            .field("lost", &self.is_lost())
            .finish()
    }
}

/// How often release retries a transient failure before leaving the lease to expire.
const RELEASE_ATTEMPTS: u32 = 3;

impl LockGuard {
    pub(crate) fn disabled(name: String) -> Self {
        LockGuard { name, held: None }
    }

    pub(crate) fn held(locks: Locks, lease: Arc<LeaseState>, at_least: Option<Duration>) -> Self {
        let local_id = locks.inner.local.acquired(&lease.name, &lease.owner);
        LockGuard {
            name: lease.name.clone(),
            held: Some(Held {
                locks,
                lease,
                at_least,
                acquired_at: Instant::now(),
                local_id,
            }),
        }
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The fencing token of this acquisition: it grows with every acquisition of the
    /// name, so a resource that remembers the highest token it has seen can refuse writes
    /// from a holder whose lease has since passed to someone else. `None` when locking is
    /// disabled.
    pub fn token(&self) -> Option<u64> {
        self.held
            .as_ref()
            .map(|h| u64::try_from(h.lease.token).unwrap_or(0))
    }

    /// The owner id written into the row; `None` when locking is disabled.
    pub fn locked_by(&self) -> Option<&str> {
        self.held.as_ref().map(|h| h.lease.owner.as_str())
    }

    /// Whether this guard holds a lock in the database (false when locking is disabled).
    pub fn is_held(&self) -> bool {
        self.held.is_some()
    }

    /// Whether the lock is lost: a renewal found another owner, or the lease is about to
    /// run out without a successful renewal. Turns true *before* the lease ends.
    pub fn is_lost(&self) -> bool {
        self.held.as_ref().is_some_and(|h| h.lease.is_lost())
    }

    /// Extends the lease now by its ttl (for locks without auto-renewal). Fails with
    /// [`Error::Lost`] when the lease is no longer this guard's.
    pub fn renew(&self) -> Result<()> {
        let Some(held) = &self.held else {
            return Ok(());
        };
        let lease = &held.lease;
        let Some(ttl) = lease.ttl else {
            return self.verify_or_lost();
        };
        if lease.is_lost() {
            return Err(self.lost_error(lease));
        }
        let sent = Instant::now();
        let renewed = held
            .locks
            .store()
            .renew(&[(lease.lease(), ttl)])
            .map_err(|e| e.error)?;
        if renewed.first().copied().unwrap_or(false) {
            lease.extended(sent);
            Ok(())
        } else {
            lease.declare_lost(
                crate::renewer::LossCause::Taken,
                "a manual renewal found another owner or token, or an expired lease".into(),
            );
            Err(self.lost_error(lease))
        }
    }

    /// Asks the database whether the lease is still live and this guard's (same owner,
    /// same token). `Ok(true)` when locking is disabled.
    pub fn verify(&self) -> Result<bool> {
        let Some(held) = &self.held else {
            return Ok(true);
        };
        held.locks
            .store()
            .verify(held.lease.lease())
            .map_err(|e| e.error)
    }

    fn verify_or_lost(&self) -> Result<()> {
        match (&self.held, self.verify()?) {
            (Some(held), false) => Err(self.lost_error(&held.lease)),
            _ => Ok(()),
        }
    }

    fn lost_error(&self, lease: &LeaseState) -> Error {
        Error::Lost {
            name: self.name.clone(),
            reason: lease.lost_reason(),
        }
    }

    /// Releases the lock now. Fails with [`Error::Lost`] when the row no longer carries
    /// this guard's owner and token (someone else holds it now, and it is left alone).
    pub fn release(mut self) -> Result<()> {
        match self.held.take() {
            Some(held) => release(&self.name, held),
            None => Ok(()),
        }
    }
}

fn release(name: &str, held: Held) -> Result<()> {
    let Held {
        locks,
        lease,
        at_least,
        acquired_at,
        local_id,
    } = held;
    lease.finish();
    if let Some(renewer) = locks.inner_renewer() {
        renewer.remove(&lease);
    }
    // Durations measured here are immune to clock skew; the database adds them to its own clock.
    let keep_for = at_least
        .and_then(|d| d.checked_sub(acquired_at.elapsed()))
        .filter(|d| !d.is_zero());
    let mut outcome = Ok(false);
    for attempt in 1..=RELEASE_ATTEMPTS {
        outcome = locks.store().release(lease.lease(), keep_for);
        match &outcome {
            Err(err) if transient(err) && attempt < RELEASE_ATTEMPTS => {
                std::thread::sleep(Duration::from_millis(50 * u64::from(attempt)));
            }
            _ => break,
        }
    }
    locks.inner.local.released(name, local_id);
    match outcome {
        Ok(true) => {
            tracing::debug!(lock = %name, token = lease.token, "lock released");
            Ok(())
        }
        Ok(false) => Err(Error::Lost {
            name: name.to_owned(),
            reason: "at release the row carried another owner or token".into(),
        }),
        Err(err) => Err(err.error),
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            if let Err(err) = release(&self.name, held) {
                tracing::warn!(lock = %self.name, "releasing the lock on drop failed: {err}");
            }
        }
    }
}
