//! Lease keeping: one renewal thread and one watchdog thread per [`Locks`](crate::Locks)
//! handle, whatever the number of locks held.
//!
//! The renewal thread does the I/O. The watchdog never touches the database: it declares
//! a lease lost when its renewal has not succeeded by a margin before the lease ends,
//! even if the renewal thread is stuck in a statement on a dead connection.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::backend::pool::Store;
use crate::backend::{Failure, Lease};

/// The exit status of the default `lost_lock_cb`: `EX_TEMPFAIL` from `sysexits.h`.
pub const LOST_LOCK_EXIT_CODE: i32 = 75;

/// What `lost_lock_cb` receives when a held lock is lost.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LostLock {
    /// The lock's name.
    pub name: String,
    /// The owner id the guard held it as.
    pub locked_by: String,
    /// The fencing token of the lost acquisition.
    pub token: u64,
    /// Why it was lost.
    pub reason: String,
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

fn to_nanos(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(*EPOCH).as_nanos()).unwrap_or(u64::MAX)
}

fn from_nanos(nanos: u64) -> Instant {
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
    give_up_at: AtomicU64,
    lost: AtomicBool,
    reason: Mutex<Option<String>>,
    /// Set when the guard released: renewal stops, loss is no longer reported.
    finished: AtomicBool,
    callback: Option<LostCallback>,
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
            give_up_at: AtomicU64::new(u64::MAX),
            lost: AtomicBool::new(false),
            reason: Mutex::new(None),
            finished: AtomicBool::new(false),
            callback,
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
    pub(crate) fn extended(&self, sent: Instant) {
        if let Some(ttl) = self.ttl {
            let give_up = sent + ttl - loss_margin(ttl, self.ttl_renew);
            self.give_up_at.store(to_nanos(give_up), Ordering::SeqCst);
        }
    }

    pub(crate) fn give_up_at(&self) -> Option<Instant> {
        match self.give_up_at.load(Ordering::SeqCst) {
            u64::MAX => None,
            nanos => Some(from_nanos(nanos)),
        }
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst) || self.give_up_at().is_some_and(|at| Instant::now() >= at)
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.finished.load(Ordering::SeqCst)
    }

    pub(crate) fn finish(&self) {
        self.finished.store(true, Ordering::SeqCst);
    }

    pub(crate) fn lost_reason(&self) -> String {
        self.reason
            .lock()
            .clone()
            .unwrap_or_else(|| "the lease ran out before it could be renewed".to_owned())
    }

    /// Marks the lease lost; the first caller runs the callback, on a thread of its own.
    pub(crate) fn declare_lost(&self, reason: String) {
        if self.is_finished() || self.lost.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::warn!(lock = %self.name, owner = %self.owner, token = self.token, "lock lost: {reason}");
        *self.reason.lock() = Some(reason.clone());
        let lost = LostLock {
            name: self.name.clone(),
            locked_by: self.owner.clone(),
            token: u64::try_from(self.token).unwrap_or(0),
            reason,
        };
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

struct Entry {
    lease: Arc<LeaseState>,
    renew_at: Instant,
    backoff: Duration,
}

#[derive(Default)]
struct Shared {
    entries: Mutex<Vec<Entry>>,
    renew_wake: Condvar,
    watch_wake: Condvar,
    shutdown: AtomicBool,
}

/// The renewal and watchdog threads of one handle, started on first use.
pub(crate) struct Renewer {
    shared: Arc<Shared>,
}

impl fmt::Debug for Renewer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Renewer")
            .field("leases", &self.shared.entries.lock().len())
            .finish()
    }
}

impl Renewer {
    pub(crate) fn start(store: Weak<dyn Store>) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let for_renew = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("database-locks-renew".into())
            .spawn(move || renew_loop(&for_renew, &store))?;
        let for_watch = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("database-locks-watchdog".into())
            .spawn(move || watch_loop(&for_watch))?;
        Ok(Renewer { shared })
    }

    /// Starts renewing `lease` every `ttl - ttl_renew`, from `sent`.
    pub(crate) fn add(&self, lease: Arc<LeaseState>, sent: Instant) {
        let Some(ttl) = lease.ttl else { return };
        let period = ttl.saturating_sub(lease.ttl_renew);
        self.shared.entries.lock().push(Entry {
            lease,
            renew_at: sent + period,
            backoff: Duration::ZERO,
        });
        self.shared.renew_wake.notify_all();
        self.shared.watch_wake.notify_all();
    }

    pub(crate) fn remove(&self, lease: &Arc<LeaseState>) {
        self.shared
            .entries
            .lock()
            .retain(|e| !Arc::ptr_eq(&e.lease, lease));
    }
}

impl Drop for Renewer {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.renew_wake.notify_all();
        self.shared.watch_wake.notify_all();
    }
}

const IDLE_WAIT: Duration = Duration::from_secs(1);

fn renew_loop(shared: &Shared, store: &Weak<dyn Store>) {
    while !shared.shutdown.load(Ordering::SeqCst) {
        let now = Instant::now();
        let due: Vec<Arc<LeaseState>> = {
            let mut entries = shared.entries.lock();
            entries.retain(|e| !e.lease.is_finished() && !e.lease.lost.load(Ordering::SeqCst));
            let due: Vec<_> = entries
                .iter()
                .filter(|e| e.renew_at <= now)
                .map(|e| Arc::clone(&e.lease))
                .collect();
            if due.is_empty() {
                let next = entries
                    .iter()
                    .map(|e| e.renew_at)
                    .min()
                    .unwrap_or(now + IDLE_WAIT);
                shared
                    .renew_wake
                    .wait_until(&mut entries, next.min(now + IDLE_WAIT));
                continue;
            }
            due
        };
        let Some(store) = store.upgrade() else { return };
        renew_batch(shared, store.as_ref(), &due);
    }
}

fn renew_batch(shared: &Shared, store: &dyn Store, due: &[Arc<LeaseState>]) {
    let sent = Instant::now();
    let leases: Vec<_> = due
        .iter()
        .filter_map(|l| l.ttl.map(|ttl| (l.lease(), ttl)))
        .collect();
    let outcome = store.renew(&leases);
    let mut entries = shared.entries.lock();
    for lease in due {
        let Some(entry) = entries.iter_mut().find(|e| Arc::ptr_eq(&e.lease, lease)) else {
            continue;
        };
        let index = due.iter().position(|l| Arc::ptr_eq(l, lease)).unwrap_or(0);
        match &outcome {
            Ok(renewed) if renewed.get(index).copied().unwrap_or(false) => {
                if lease.is_lost() {
                    // Renewed too late: the holder has already been told it may not
                    // hold the lock. Stop renewing; the guard's release clears the row.
                    lease.declare_lost(
                        "the lease could not be renewed before it ran out".to_owned(),
                    );
                    continue;
                }
                lease.extended(sent);
                let period = lease
                    .ttl
                    .unwrap_or_default()
                    .saturating_sub(lease.ttl_renew);
                entry.renew_at = sent + period;
                entry.backoff = Duration::ZERO;
                tracing::trace!(lock = %lease.name, "lease renewed");
            }
            Ok(_) => lease.declare_lost(
                "the renewal found another owner or token, or an expired lease".to_owned(),
            ),
            Err(err) if err.failure == Failure::Transient => {
                entry.backoff = (entry.backoff * 2)
                    .clamp(Duration::from_millis(50), Duration::from_millis(500));
                entry.renew_at = Instant::now() + entry.backoff;
                tracing::debug!(lock = %lease.name, "renewal failed, retrying: {}", err.error);
            }
            Err(err) => lease.declare_lost(format!("the renewal failed: {}", err.error)),
        }
    }
}

fn watch_loop(shared: &Shared) {
    let mut entries = shared.entries.lock();
    while !shared.shutdown.load(Ordering::SeqCst) {
        let now = Instant::now();
        let mut next = now + IDLE_WAIT;
        for entry in entries.iter() {
            let lease = &entry.lease;
            if lease.is_finished() || lease.lost.load(Ordering::SeqCst) {
                continue;
            }
            match lease.give_up_at() {
                Some(at) if at <= now => lease
                    .declare_lost("the lease could not be renewed before it ran out".to_owned()),
                Some(at) => next = next.min(at),
                None => {}
            }
        }
        shared.watch_wake.wait_until(&mut entries, next);
    }
}
