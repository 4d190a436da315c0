//! A held lease as this process knows it: its identity, the local deadline by which it
//! must be renewed or given up, its loss (and who waits for it), and what the renewal
//! thread needs to schedule it.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::Waker;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::backend::Lease;

/// The exit status of the default `lost_lock_cb`: `EX_TEMPFAIL` from `sysexits.h`.
pub const LOST_LOCK_EXIT_CODE: i32 = 75;

/// What `lost_lock_cb` receives when a held lock is lost.
///
/// ```no_run
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::sync::Arc;
/// use database_locks::LossCause;
///
/// # fn main() -> Result<(), database_locks::Error> {
/// let stop = Arc::new(AtomicBool::new(false));
/// let flag = Arc::clone(&stop);
/// let guard = database_locks::lock("ingest")
///     .lost_lock_cb(move |lost| {
///         // Called before the lease ends by the database's clock (`expires_by`), except
///         // after `Taken`: the row is someone else's already.
///         if lost.cause == LossCause::Taken {
///             eprintln!("{} was taken over (token {})", lost.name, lost.token);
///         }
///         flag.store(true, Ordering::SeqCst);
///     })
///     .acquire()?;
/// while !stop.load(Ordering::SeqCst) {
///     // ... one unit of work ...
/// #   break;
/// }
/// # drop(guard);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LostLock {
    /// The lock's name.
    pub name: String,
    /// The owner id the guard held it as.
    pub locked_by: String,
    /// The fencing token of the lost acquisition.
    pub token: u64,
    /// What happened, in words.
    pub reason: String,
    /// What kind of loss it was.
    pub cause: LossCause,
    /// The earliest moment at which the lease can end by the database's clock: the send
    /// time of the last successful renewal (or of the acquisition) plus the ttl, since the
    /// database set `expires_at` from its own clock after that. Work that must not outlive
    /// the lock has to stop before then; with [`LossCause::Taken`] the row already belongs
    /// to someone else. `None` for a lock without expiry.
    pub expires_by: Option<Instant>,
}

/// Why a held lock was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LossCause {
    /// The lease could not be renewed in time (the database was unreachable or silent):
    /// it is about to run out, and nobody else has it yet.
    Expired,
    /// The row carries another owner or token, or its lease had already ended: it was
    /// force-released, stolen by an expired-lease takeover, or taken by the same owner id
    /// again.
    Taken,
    /// A renewal failed with an error that waiting cannot fix.
    Failed,
}

impl fmt::Display for LostLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "lock {:?} (owner {:?}, token {}) was lost: {}",
            self.name, self.locked_by, self.token, self.reason
        )
    }
}

pub(crate) type LostCallback = Arc<dyn Fn(&LostLock) + Send + Sync>;

/// The default callback: the counterpart of the seed raising in the main thread.
pub(crate) fn exit_on_loss(lost: &LostLock) {
    tracing::error!(
        lock = %lost.name,
        owner = %lost.locked_by,
        token = lost.token,
        "{lost}; ending the process (exit status {LOST_LOCK_EXIT_CODE}) so that nothing \
         runs unprotected; set lost_lock_cb to handle this yourself"
    );
    std::process::exit(LOST_LOCK_EXIT_CODE);
}

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

pub(crate) fn to_nanos(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(*EPOCH).as_nanos()).unwrap_or(u64::MAX)
}

pub(crate) fn from_nanos(nanos: u64) -> Instant {
    *EPOCH + Duration::from_nanos(nanos)
}

/// How long before the lease ends the holder stops believing it holds the lock: time for
/// the holder to stop its work before anyone else can get in. A quarter of the renewal
/// margin (at most 500 ms), so a renewal retried through a short outage still gets most
/// of `lock_ttl_renew`.
pub(crate) fn loss_margin(ttl: Duration, ttl_renew: Duration) -> Duration {
    (ttl_renew / 4).min(Duration::from_millis(500)).min(ttl / 4)
}

/// One held lease, shared by its guard, the renewal thread and the watchdog.
pub(crate) struct LeaseState {
    pub name: String,
    pub owner: String,
    pub token: i64,
    pub ttl: Option<Duration>,
    pub ttl_renew: Duration,
    /// When this process stops believing it holds the lease (`u64::MAX`: never).
    pub(crate) give_up_at: AtomicU64,
    pub(crate) lost: AtomicBool,
    /// What was lost, once it is.
    loss: Mutex<Option<LostLock>>,
    /// Tasks awaiting [`LockGuard::lost`](crate::LockGuard::lost), woken by the loss.
    loss_wakers: Mutex<Vec<Waker>>,
    /// Set when the guard released: renewal stops, loss is no longer reported.
    finished: AtomicBool,
    pub(crate) callback: Option<LostCallback>,
    /// When the renewer renews it next, as in `give_up_at` (`u64::MAX`: not scheduled).
    /// Changed only under the renewer's schedule lock.
    pub(crate) renew_at: AtomicU64,
    /// The wait before retrying a failed renewal, in nanoseconds.
    pub(crate) backoff: AtomicU64,
    /// Fenced transactions holding the lease's row now (see [`FencePause`]).
    pub(crate) fenced: AtomicUsize,
    /// Whether the lease was scheduled for renewal when the first of them began.
    /// Changed only under the renewer's schedule lock.
    pub(crate) fence_scheduled: AtomicBool,
}

impl fmt::Debug for LeaseState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseState")
            .field("name", &self.name)
            .field("owner", &self.owner)
            .field("token", &self.token)
            .field("lost", &self.is_lost())
            .finish_non_exhaustive()
    }
}

impl LeaseState {
    /// A lease acquired by a statement sent at `sent`.
    pub(crate) fn new(
        name: String,
        owner: String,
        token: i64,
        ttl: Option<Duration>,
        ttl_renew: Duration,
        sent: Instant,
        callback: Option<LostCallback>,
    ) -> Self {
        let state = LeaseState {
            name,
            owner,
            token,
            ttl,
            ttl_renew,
            // Set by `extended` below, which only moves it later; `u64::MAX`: never.
            give_up_at: AtomicU64::new(if ttl.is_some() { 0 } else { u64::MAX }),
            lost: AtomicBool::new(false),
            loss: Mutex::new(None),
            loss_wakers: Mutex::new(Vec::new()),
            finished: AtomicBool::new(false),
            callback,
            renew_at: AtomicU64::new(u64::MAX),
            backoff: AtomicU64::new(0),
            fenced: AtomicUsize::new(0),
            fence_scheduled: AtomicBool::new(false),
        };
        state.extended(sent);
        state
    }

    pub(crate) fn lease(&self) -> Lease<'_> {
        Lease {
            name: &self.name,
            owner: &self.owner,
            token: self.token,
        }
    }

    /// Records a renewal (or the acquisition) whose statement was sent at `sent`: the
    /// database's lease ends no earlier than `sent + ttl`.
    /// Never moves it earlier: a renewal that answered late may come after a later one.
    pub(crate) fn extended(&self, sent: Instant) {
        if let Some(ttl) = self.ttl {
            let give_up = sent + ttl - loss_margin(ttl, self.ttl_renew);
            self.give_up_at
                .fetch_max(to_nanos(give_up), Ordering::SeqCst);
        }
    }

    pub(crate) fn give_up_at(&self) -> Option<Instant> {
        match self.give_up_at.load(Ordering::SeqCst) {
            u64::MAX => None,
            nanos => Some(from_nanos(nanos)),
        }
    }

    /// The earliest the database's lease can end (see [`LostLock::expires_by`]).
    pub(crate) fn expires_by(&self) -> Option<Instant> {
        let ttl = self.ttl?;
        self.give_up_at()
            .map(|at| at + loss_margin(ttl, self.ttl_renew))
    }

    /// While a fenced transaction holds the row, nobody else can take the lock (on Galera,
    /// one of the two commits fails), so the local deadline does not apply.
    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
            || (self.fenced.load(Ordering::SeqCst) == 0
                && self.give_up_at().is_some_and(|at| Instant::now() >= at))
    }

    /// Whether a fenced transaction whose lease was last extended by a statement sent at
    /// `sent` should extend it again before committing: the renewer would have by now.
    pub(crate) fn renewal_due(&self, sent: Instant) -> Option<Duration> {
        let ttl = self.ttl?;
        (Instant::now() >= sent + period(self)).then_some(ttl)
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.finished.load(Ordering::SeqCst)
    }

    pub(crate) fn finish(&self) {
        self.finished.store(true, Ordering::SeqCst);
    }

    pub(crate) fn lost_reason(&self) -> String {
        self.loss.lock().as_ref().map_or_else(
            || "the lease ran out before it could be renewed".to_owned(),
            |loss| loss.reason.clone(),
        )
    }

    /// The loss as declared, or, for a lease whose local deadline passed without anyone
    /// declaring it (no renewal), as the deadline makes it.
    pub(crate) fn loss(&self) -> Option<LostLock> {
        if let Some(loss) = self.loss.lock().clone() {
            return Some(loss);
        }
        self.is_lost()
            .then(|| self.lost_lock(LossCause::Expired, self.lost_reason()))
    }

    fn lost_lock(&self, cause: LossCause, reason: String) -> LostLock {
        LostLock {
            name: self.name.clone(),
            locked_by: self.owner.clone(),
            token: u64::try_from(self.token).unwrap_or(0),
            reason,
            cause,
            expires_by: self.expires_by(),
        }
    }

    /// Wakes `waker` when the lease is declared lost.
    pub(crate) fn wake_on_loss(&self, waker: &Waker) {
        let mut wakers = self.loss_wakers.lock();
        if self.lost.load(Ordering::SeqCst) {
            drop(wakers);
            waker.wake_by_ref();
            return;
        }
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
    }

    /// Marks the lease lost; the first caller runs the callback, on a thread of its own.
    pub(crate) fn declare_lost(&self, cause: LossCause, reason: String) {
        if self.is_finished() || self.lost.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::warn!(lock = %self.name, owner = %self.owner, token = self.token, "lock lost: {reason}");
        crate::observe::loss(&self.name, cause);
        let lost = self.lost_lock(cause, reason);
        *self.loss.lock() = Some(lost.clone());
        let wakers = std::mem::take(&mut *self.loss_wakers.lock());
        wakers.into_iter().for_each(Waker::wake);
        let callback = self.callback.clone();
        let spawned = std::thread::Builder::new()
            .name("database-locks-lost".into())
            .spawn(move || match callback {
                Some(callback) => callback(&lost),
                None => exit_on_loss(&lost),
            });
        if let Err(err) = spawned {
            tracing::error!("cannot start a thread for lost_lock_cb: {err}");
        }
    }
}

/// A lease's renewal period: `ttl - lock_ttl_renew`.
pub(crate) fn period(lease: &LeaseState) -> Duration {
    lease
        .ttl
        .unwrap_or_default()
        .saturating_sub(lease.ttl_renew)
}
