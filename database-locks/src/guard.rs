//! The RAII guard of a held lock.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::lease::{LeaseState, LostLock};
use crate::locks::{transient, Locks};
use crate::releaser::Pending;

/// A held lock. Dropping it stops renewal and releases the lock, on every exit path,
/// panics included; [`release`](Self::release) does the same and reports errors.
///
/// Dropping never blocks for long: it makes one attempt of at most 2 s (less with a
/// shorter [`Config::statement_timeout`](crate::Config::statement_timeout)), and a release
/// that could not reach the database is retried by a background thread of the handle
/// until it succeeds or the lease has ended.
///
/// A guard taken with [`acquire_async`](crate::LockBuilder::acquire_async) never blocks
/// its task's thread when dropped: the release runs on a thread of the crate. Await
/// [`release_async`](Self::release_async) where the process may exit right after (the end
/// of `main`): a release still in the background when the process ends does not happen,
/// and the lock stays taken until its lease runs out.
///
/// With locking disabled the guard holds nothing: [`is_held`](Self::is_held) is false
/// and [`token`](Self::token) is `None`.
///
/// ```no_run
/// # fn main() -> Result<(), database_locks::Error> {
/// let guard = database_locks::lock("rebuild-index").acquire()?;
/// // The fencing token grows with every acquisition of the name: pass it to whatever
/// // the holder writes to, so a stale holder's writes can be refused.
/// let token = guard.token();
/// # let _ = token;
/// // ... the work; a panic here releases the lock too ...
/// guard.release()?; // or let it drop
/// # Ok(()) }
/// ```
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
    /// Taken by a task: dropping it never blocks its thread (see `Drop`).
    from_task: bool,
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

/// The slot a permit of a semaphore holds ([`LockGuard::permit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Permit {
    /// The slot's number, from 1 to the semaphore's permits.
    pub slot: u32,
    /// The slot's row in the lock table (what `list` and `inspect` show).
    pub row: String,
}

impl LockGuard {
    pub(crate) fn disabled(name: String) -> Self {
        LockGuard { name, held: None }
    }

    pub(crate) fn held(
        locks: Locks,
        lease: Arc<LeaseState>,
        at_least: Option<Duration>,
        pinned: bool,
        thread: Option<std::thread::ThreadId>,
    ) -> Self {
        let local_id = locks
            .inner
            .local
            .acquired(&lease.name, &lease.owner, pinned, thread);
        crate::observe::held(&lease.name);
        locks.channel_held(local_id, &lease);
        LockGuard {
            name: lease.name.clone(),
            held: Some(Held {
                locks,
                lease,
                at_least,
                acquired_at: Instant::now(),
                local_id,
                from_task: thread.is_none(),
            }),
        }
    }

    /// The handle and the lease of a held lock; `None` when locking is disabled.
    pub(crate) fn lease(&self) -> Option<(&Locks, &Arc<LeaseState>)> {
        self.held.as_ref().map(|h| (&h.locks, &h.lease))
    }

    /// The lock's name; for a permit, the semaphore's.
    pub fn name(&self) -> &str {
        crate::backend::queue_key(&self.name)
    }

    /// For a permit of a semaphore ([`Locks::semaphore`](crate::Locks::semaphore)), which
    /// slot it holds: its row is `name␟slot`, with a lease and a fencing token of its own.
    /// `None` for a lock, and when locking is disabled.
    pub fn permit(&self) -> Option<Permit> {
        let held = self.held.as_ref()?;
        let (_, slot) = held.lease.name.split_once(crate::backend::SEPARATOR)?;
        Some(Permit {
            slot: slot.parse().ok()?,
            row: held.lease.name.clone(),
        })
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
            return Err(self.lost_error_of(lease));
        }
        let span = tracing::debug_span!(
            "renew",
            leases = 1,
            lock = lease.name.as_str(),
            owner = lease.owner.as_str(),
        );
        let _entered = span.enter();
        let sent = Instant::now();
        let store = held.locks.store();
        let batch = vec![(lease.name.clone(), lease.owner.clone(), lease.token, ttl)];
        let renewed = store
            .renew(store.deadline(lease.give_up_at()), batch, Box::new(|_| {}))
            .map_err(|e| e.error)?;
        if renewed.first().copied().unwrap_or(false) {
            lease.extended(sent);
            Ok(())
        } else {
            lease.declare_lost(
                crate::lease::LossCause::Taken,
                "a manual renewal found another owner or token, or an expired lease".into(),
            );
            Err(self.lost_error_of(lease))
        }
    }

    /// Asks the database whether the lease is still live and this guard's (same owner,
    /// same token). `Ok(true)` when locking is disabled.
    pub fn verify(&self) -> Result<bool> {
        let Some(held) = &self.held else {
            return Ok(true);
        };
        let store = held.locks.store();
        store
            .verify(store.deadline(None), held.lease.lease())
            .map_err(|e| e.error)
    }

    fn verify_or_lost(&self) -> Result<()> {
        match (&self.held, self.verify()?) {
            (Some(held), false) => Err(self.lost_error_of(&held.lease)),
            _ => Ok(()),
        }
    }

    /// The error of a guard whose lock was lost.
    pub(crate) fn lost_error(&self) -> Error {
        match &self.held {
            Some(held) => self.lost_error_of(&held.lease),
            None => Error::Lost {
                name: self.name.clone(),
                reason: "locking is disabled".into(),
            },
        }
    }

    fn lost_error_of(&self, lease: &LeaseState) -> Error {
        Error::Lost {
            name: self.name.clone(),
            reason: lease.lost_reason(),
        }
    }

    /// Releases the lock now. Fails with [`Error::Lost`] when the row no longer carries
    /// this guard's owner and token (someone else holds it now, and it is left alone).
    /// Retries a failure that waiting can fix for up to the statement timeout
    /// ([`Config::statement_timeout`](crate::Config::statement_timeout), 10 s), then reports
    /// it and leaves the release to a background thread of the handle, which keeps trying
    /// until the lease ends.
    pub fn release(mut self) -> Result<()> {
        match self.held.take() {
            Some(held) => release(&self.name, held, Wait::Report),
            None => Ok(()),
        }
    }

    /// [`release`](Self::release) without blocking the task's thread: the statement runs
    /// on a thread of the crate. The release happens even if this future is dropped
    /// before it completes; awaiting it is what reports the outcome.
    pub fn release_async(mut self) -> impl Future<Output = Result<()>> + Send {
        let job = self.held.take().map(|held| {
            let name = self.name.clone();
            crate::offload::offload(move || release(&name, held, Wait::Report), None)
        });
        async move {
            match job {
                Some(job) => job.await.map_err(|source| Error::Thread {
                    thread: "async worker",
                    source,
                })?,
                None => Ok(()),
            }
        }
    }

    /// Completes when the lock is lost: a renewal found another owner (force-released,
    /// taken over), or the lease is about to run out unrenewed. It completes before the
    /// lease ends by the database's clock ([`LostLock::expires_by`]), so work that
    /// `select!`s on it stops in time. Never completes for a guard that is released
    /// normally, nor for one of a disabled handle.
    ///
    /// ```no_run
    /// # async fn job() -> Result<(), database_locks::Error> {
    /// let guard = database_locks::lock("ingest").acquire_async().await?;
    /// let lost = guard.lost(); // 'static: it may go to another task
    /// // tokio::select! { () = work() => {}, loss = lost => eprintln!("stopped: {loss}") }
    /// # drop(lost);
    /// guard.release_async().await
    /// # }
    /// ```
    pub fn lost(&self) -> impl Future<Output = LostLock> + Send + 'static {
        Lost {
            lease: self.held.as_ref().map(|h| Arc::clone(&h.lease)),
            sleep: None,
        }
    }
}

/// The future of [`LockGuard::lost`].
struct Lost {
    lease: Option<Arc<LeaseState>>,
    /// Wakes the task at the lease's local deadline, for a lease nobody renews (and so
    /// nobody declares lost).
    sleep: Option<crate::timer::Sleep>,
}

impl Future for Lost {
    type Output = LostLock;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<LostLock> {
        let this = self.get_mut();
        let Some(lease) = &this.lease else {
            return Poll::Pending;
        };
        if lease.is_finished() {
            return Poll::Pending;
        }
        lease.wake_on_loss(cx.waker());
        if let Some(loss) = lease.loss() {
            return Poll::Ready(loss);
        }
        // The deadline moves later with each renewal: sleep until the current one.
        if let Some(mut at) = lease.give_up_at() {
            let now = Instant::now();
            if at <= now {
                // Past it but not lost: a fenced transaction holds the row. Look again soon.
                at = now + Duration::from_millis(100);
            }
            if this.sleep.as_ref().is_none_or(|s| s.at() != at) {
                this.sleep = Some(crate::timer::sleep_until(at));
            }
            if let Some(sleep) = &mut this.sleep {
                if Pin::new(sleep).poll(cx).is_ready() {
                    // Woken at the deadline: look again (a renewal may have moved it).
                    cx.waker().wake_by_ref();
                }
            }
        }
        Poll::Pending
    }
}

/// How a release may wait.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// `release()`: attempts for up to the statement timeout, and the error if they fail.
    Report,
    /// Drop: one attempt of at most [`DROP_ATTEMPT`].
    Briefly,
}

/// The one attempt a dropped guard makes before leaving its release to the background.
const DROP_ATTEMPT: Duration = Duration::from_secs(2);

fn release(name: &str, held: Held, wait: Wait) -> Result<()> {
    let Held {
        locks,
        lease,
        at_least,
        acquired_at,
        local_id,
        from_task: _,
    } = held;
    let span = tracing::debug_span!(
        "release",
        lock = %name,
        owner = %lease.owner,
        token = lease.token,
        outcome = tracing::field::Empty,
    );
    let _entered = span.enter();
    crate::observe::released(&lease.name, acquired_at.elapsed());
    lease.finish();
    if let Some(renewer) = locks.inner_renewer() {
        renewer.remove(&lease);
    }
    let pending = Pending {
        lease,
        at_least,
        acquired_at,
    };
    let store = locks.store();
    let deadline = match wait {
        Wait::Report => store.deadline(None),
        Wait::Briefly => store.deadline(Instant::now().checked_add(DROP_ATTEMPT)),
    };
    let mut backoff = Duration::from_millis(50);
    // Durations measured here are immune to clock skew; the database adds them to its own
    // clock.
    let outcome = loop {
        let outcome = store.release(deadline, pending.lease.lease(), pending.keep_for());
        match &outcome {
            Err(err)
                if transient(err)
                    && wait == Wait::Report
                    && Instant::now() + backoff < deadline =>
            {
                std::thread::sleep(backoff);
                backoff *= 2;
            }
            _ => break outcome,
        }
    };
    // The row first, then the session lock: a waiter it wakes finds the row free.
    locks.channel_released(local_id);
    locks.inner.local.released(name, local_id);
    let token = pending.lease.token;
    span.record(
        "outcome",
        match &outcome {
            Ok(true) => "released",
            Ok(false) => "lost",
            Err(err) if transient(err) => "retrying",
            Err(_) => "error",
        },
    );
    match outcome {
        Ok(true) => {
            tracing::debug!(lock = %name, token, "lock released");
            Ok(())
        }
        Ok(false) => Err(Error::Lost {
            name: name.to_owned(),
            reason: "at release the row carried another owner or token".into(),
        }),
        Err(err) => {
            if transient(&err) {
                // The lease must not outlive the process's interest in it: keep trying.
                match locks.releaser() {
                    Ok(releaser) => {
                        tracing::info!(lock = %name, token, "release failed ({}); retrying in the background", err.error);
                        releaser.push(pending);
                    }
                    Err(thread) => tracing::warn!(lock = %name, "{thread}; the lease will expire"),
                }
            }
            Err(err.error)
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        if held.from_task {
            // Never a round trip on an executor's thread: the release goes to a worker of
            // the crate (and on from there to the background releaser if it fails).
            let name = self.name.clone();
            let (lease, locks, local_id) =
                (Arc::clone(&held.lease), held.locks.clone(), held.local_id);
            let spawned = crate::offload::detach(move || {
                if let Err(err) = release(&name, held, Wait::Briefly) {
                    tracing::warn!(lock = %name, "releasing the lock on drop failed: {err}");
                }
            });
            if let Err(err) = spawned {
                // No thread to release on: the lease runs out by itself; stop renewing it.
                tracing::warn!(lock = %self.name, "cannot start a thread to release the lock ({err}); its lease will expire");
                crate::observe::released(&lease.name, Duration::ZERO);
                lease.finish();
                locks.channel_released(local_id);
                if let Some(renewer) = locks.inner_renewer() {
                    renewer.remove(&lease);
                }
            }
            return;
        }
        if let Err(err) = release(&self.name, held, Wait::Briefly) {
            tracing::warn!(lock = %self.name, "releasing the lock on drop failed: {err}");
        }
    }
}

/// The guard is held across `.await` and moved between threads.
const _: () = {
    const fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<LockGuard>();
};
