//! The lock builder: the seed's keyword arguments as methods. The loop that acquires is
//! in `acquire.rs`.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::thread::ThreadId;
use std::time::Duration;

use crate::acquire::{Acquisition, Request};
use crate::backend::{Semaphore, SEPARATOR};
use crate::error::{Error, Result};
use crate::guard::LockGuard;
use crate::lease::{LostCallback, LostLock};
use crate::local::SelfWait;
use crate::locks::{default_owner, Locks};

/// The longest lease accepted; use `lock_ttl(None)` for a lock that never expires.
pub const MAX_TTL: Duration = Duration::from_secs(366 * 86_400);

/// The longest name the table's `varchar(255)` holds, in characters.
pub const MAX_NAME_CHARS: usize = 255;

/// The most permits a semaphore can have ([`Locks::semaphore`]): one row per permit, and
/// an attempt names them all.
pub const MAX_PERMITS: u32 = 1000;

/// The default polling period, as in the seed.
pub const DEFAULT_RETRY: Duration = Duration::from_millis(500);

/// Options for one acquisition of one lock. Made by [`lock`](crate::lock) or
/// [`Locks::lock`]; unset options take the handle's settings at acquisition time.
///
/// | method | seed argument | default |
/// |---|---|---|
/// | [`timeout`](Self::timeout) | `timeout` | wait for ever (`Duration::ZERO` too, as the seed's `0`) |
/// | [`lock_ttl`](Self::lock_ttl) | `lock_ttl` | `DATABASE_LOCKS_DEFAULT_TTL`, 10 s |
/// | [`locked_by`](Self::locked_by) | `locked_by` | unique per acquisition |
/// | [`auto_renew`](Self::auto_renew) | `auto_renew` | `true` |
/// | [`retry`](Self::retry) | `retry` | 500 ms; `None` or zero: one attempt |
/// | [`lock_ttl_renew`](Self::lock_ttl_renew) | `lock_ttl_renew` | `DATABASE_LOCKS_DEFAULT_TTL_RENEW`, 2 s |
/// | [`lost_lock_cb`](Self::lost_lock_cb) | `lost_lock_cb` | log and exit the process |
/// | [`lock_at_least_for`](Self::lock_at_least_for) | (ShedLock's `lockAtLeastFor`) | none |
///
/// ```no_run
/// use std::time::Duration;
///
/// # fn main() -> Result<(), database_locks::Error> {
/// // The seed's `lock("nightly", timeout=30, lock_ttl=60, retry=0.5)`:
/// let guard = database_locks::lock("nightly")
///     .timeout(Duration::from_secs(30))
///     .lock_ttl(Some(Duration::from_secs(60)))
///     .retry(Some(Duration::from_millis(500)))
///     .lost_lock_cb(|lost| eprintln!("stopping: {lost}"))
///     .acquire()?;
/// # drop(guard);
/// // A single attempt that reports "held" as `None`:
/// if let Some(guard) = database_locks::lock("nightly").try_acquire()? {
///     guard.release()?;
/// }
/// # Ok(()) }
/// ```
#[must_use = "a lock builder does nothing until `acquire`, `try_acquire` or `run`"]
pub struct LockBuilder {
    handle: Result<Locks>,
    name: String,
    timeout: Option<Duration>,
    lock_ttl: Option<Option<Duration>>,
    locked_by: Option<String>,
    auto_renew: bool,
    retry: Option<Duration>,
    lock_ttl_renew: Option<Duration>,
    lost_lock_cb: Option<LostCallback>,
    lock_at_least_for: Option<Duration>,
    /// The guard stays on the acquiring thread (`#[locked]`).
    pinned: bool,
    /// A permit of the semaphore `name` with this many permits.
    permits: Option<u32>,
}

impl fmt::Debug for LockBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockBuilder")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .field("lock_ttl", &self.lock_ttl)
            .field("locked_by", &self.locked_by)
            .field("auto_renew", &self.auto_renew)
            .field("retry", &self.retry)
            .field("lock_ttl_renew", &self.lock_ttl_renew)
            .field("lost_lock_cb", &self.lost_lock_cb.as_ref().map(|_| ".."))
            .field("lock_at_least_for", &self.lock_at_least_for)
            .field("permits", &self.permits)
            .finish()
    }
}

impl LockBuilder {
    pub(crate) fn new(handle: Result<Locks>, name: String) -> Self {
        LockBuilder {
            handle,
            name,
            timeout: None,
            lock_ttl: None,
            locked_by: None,
            auto_renew: true,
            retry: Some(DEFAULT_RETRY),
            lock_ttl_renew: None,
            lost_lock_cb: None,
            lock_at_least_for: None,
            pinned: false,
            permits: None,
        }
    }

    /// A permit of a semaphore ([`Locks::semaphore`]).
    pub(crate) fn permits(mut self, permits: u32) -> Self {
        self.permits = Some(permits);
        self
    }

    /// For `#[locked]`, whose guard never leaves the body's frame: waiting on the thread
    /// that holds it is a certain self-deadlock, refused with [`Error::WouldDeadlock`].
    pub(crate) fn pinned_to_thread(mut self) -> Self {
        self.pinned = true;
        self
    }

    /// Gives up with [`Error::Timeout`] after waiting this long. `Duration::ZERO` waits for
    /// ever, like the seed's `timeout=0` (use [`try_acquire`](Self::try_acquire) for a
    /// single attempt).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = (!timeout.is_zero()).then_some(timeout);
        self
    }

    /// The lease length: a holder that stops renewing loses the lock after this long.
    /// `None`: the lock never expires (released only by its holder or by force).
    pub fn lock_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.lock_ttl = Some(ttl);
        self
    }

    /// The owner id written into the row. A holder whose owner id equals the row's takes
    /// the lock again even while the lease runs (a restarted worker reclaiming its lock);
    /// each such acquisition gets a new token, and older guards of that owner stop
    /// validating. By default every acquisition has an owner id of its own, so two
    /// acquisitions in one process exclude each other.
    pub fn locked_by(mut self, owner: impl Into<String>) -> Self {
        self.locked_by = Some(owner.into());
        self
    }

    /// Renew the lease in the background while the guard lives (default `true`).
    pub fn auto_renew(mut self, auto_renew: bool) -> Self {
        self.auto_renew = auto_renew;
        self
    }

    /// The polling period while the lock is held elsewhere. `None` or zero: a single
    /// attempt, failing with [`Error::NotAcquired`]. A release in this process, or the
    /// holder's lease running out first, wakes the waiter before the period ends.
    pub fn retry(mut self, retry: Option<Duration>) -> Self {
        self.retry = retry.filter(|r| !r.is_zero());
        self
    }

    /// How long before the lease ends it is renewed: renewal runs every
    /// `lock_ttl - lock_ttl_renew`. It must be shorter than `lock_ttl`. Unset, it is the
    /// handle's default (`DATABASE_LOCKS_DEFAULT_TTL_RENEW`, 2 s) but at most half of
    /// `lock_ttl`, so a 1 s lease renews every 500 ms.
    pub fn lock_ttl_renew(mut self, margin: Duration) -> Self {
        self.lock_ttl_renew = Some(margin);
        self
    }

    /// Called once, on a thread of its own, when the lease is lost: a renewal found another
    /// owner, or could not reach the database before the lease ran out. It runs before the
    /// lease ends, so the holder can stop before anybody else can take the lock.
    ///
    /// **The default logs an error and ends the process** with status
    /// [`LOST_LOCK_EXIT_CODE`](crate::LOST_LOCK_EXIT_CODE), the Rust counterpart of the
    /// seed raising in the main thread: work that is no longer protected must not go on.
    pub fn lost_lock_cb(mut self, callback: impl Fn(&LostLock) + Send + Sync + 'static) -> Self {
        self.lost_lock_cb = Some(Arc::new(callback));
        self
    }

    /// Keeps the lock at least this long after acquiring it, even when released earlier,
    /// so that a quick job scheduled on many hosts runs once per schedule (ShedLock's
    /// `lockAtLeastFor`).
    pub fn lock_at_least_for(mut self, duration: Duration) -> Self {
        self.lock_at_least_for = Some(duration);
        self
    }

    /// Takes the lock, waiting as configured. The guard releases it when dropped.
    pub fn acquire(self) -> Result<LockGuard> {
        let name = self.name.clone();
        self.acquire_inner(false)?
            .ok_or(Error::NotAcquired { name, holder: None })
    }

    /// One attempt: `Ok(None)` when another owner holds the lock.
    pub fn try_acquire(self) -> Result<Option<LockGuard>> {
        self.acquire_inner(true)
    }

    /// Runs `f` while holding the lock, like the seed's `with lock(...)`. The lock is
    /// released when `f` returns or panics; a failed release is logged.
    ///
    /// When the lock was lost while `f` ran (a renewal found another owner, or the lease
    /// ran out unrenewed), `f`'s work was not protected all the way through, and `run`
    /// returns [`Error::Lost`] instead of its value. A release that cannot reach the
    /// database is logged and handed to a background thread (the lease would expire
    /// anyway): the lock was held for all of `f`, so the value is returned.
    pub fn run<T>(self, f: impl FnOnce() -> T) -> Result<T> {
        let guard = self.acquire()?;
        let value = f();
        let lost = guard.is_lost().then(|| guard.lost_error());
        match (guard.release(), lost) {
            (_, Some(lost)) | (Err(lost @ Error::Lost { .. }), None) => Err(lost),
            (Err(err), None) => {
                tracing::warn!("releasing the lock after the closure ran failed: {err}");
                Ok(value)
            }
            (Ok(()), None) => Ok(value),
        }
    }

    fn acquire_inner(self, once: bool) -> Result<Option<LockGuard>> {
        match self.request(once, Some(std::thread::current().id()))? {
            Ok(request) => Acquisition::new(request).run_blocking(),
            Err(disabled) => Ok(Some(disabled)),
        }
    }

    /// Takes the lock, waiting as configured, without blocking the task's thread: the
    /// statements run on the crate's threads and the wait is woken by them (releases in
    /// this process, the PostgreSQL listener, timers), so it runs on any executor. Every
    /// option means what it means for [`acquire`](Self::acquire).
    ///
    /// Cancel-safe: dropping the future at any point leaves no lock behind (a lock granted
    /// after the drop is released at once). Tasks are not threads, so no task is refused
    /// with [`Error::WouldDeadlock`] because another task on its thread holds the lock.
    ///
    /// ```no_run
    /// # async fn job() -> Result<(), database_locks::Error> {
    /// use std::time::Duration;
    ///
    /// let guard = database_locks::lock("nightly-report")
    ///     .timeout(Duration::from_secs(30))
    ///     .acquire_async()
    ///     .await?;
    /// // ... exactly one task in all processes at a time gets here ...
    /// guard.release_async().await?;
    /// # Ok(()) }
    /// ```
    #[allow(
        clippy::manual_async_fn,
        reason = "the signature promises `Send + 'static`, which callers of `tokio::spawn` rely on"
    )]
    pub fn acquire_async(self) -> impl Future<Output = Result<LockGuard>> + Send + 'static {
        async move {
            let name = self.name.clone();
            self.acquire_async_inner(false)
                .await?
                .ok_or(Error::NotAcquired { name, holder: None })
        }
    }

    /// One attempt, as [`try_acquire`](Self::try_acquire), without blocking the task's
    /// thread: `Ok(None)` when another owner holds the lock.
    pub fn try_acquire_async(
        self,
    ) -> impl Future<Output = Result<Option<LockGuard>>> + Send + 'static {
        self.acquire_async_inner(true)
    }

    async fn acquire_async_inner(self, once: bool) -> Result<Option<LockGuard>> {
        match self.request(once, None)? {
            Ok(request) => Acquisition::new(request).run_async().await,
            Err(disabled) => Ok(Some(disabled)),
        }
    }

    /// The checked request, or the guard of a disabled handle. `thread`: the acquiring
    /// thread, `None` for a task (which may move between threads).
    fn request(self, once: bool, thread: Option<ThreadId>) -> Result<Result<Request, LockGuard>> {
        let locks = self.handle?;
        let settings = locks.settings();
        let ttl = self.lock_ttl.unwrap_or(settings.default_ttl);
        let ttl_renew = self
            .lock_ttl_renew
            .unwrap_or_else(|| default_margin(settings.default_ttl_renew, ttl));
        validate_name(&self.name)?;
        let semaphore = match self.permits {
            Some(permits) => Some(validate_semaphore(&self.name, permits)?),
            None => None,
        };
        validate_lock_name(&self.name)?;
        if let Some(owner) = &self.locked_by {
            validate_owner(owner)?;
        }
        validate_ttl(ttl, self.auto_renew, ttl_renew)?;
        if let Some(at_least) = self.lock_at_least_for {
            if at_least > MAX_TTL {
                return Err(Error::invalid(
                    "lock_at_least_for",
                    format!("{at_least:?} is longer than the maximum {MAX_TTL:?}"),
                ));
            }
        }

        if !settings.enabled {
            tracing::warn!(lock = %self.name, "database locks are disabled; running without the lock");
            return Ok(Err(LockGuard::disabled(self.name)));
        }
        // Only an acquisition that waits can wait for ever on its own thread's guard; a
        // task is not its thread.
        let waits = !once && self.retry.is_some();
        // A permit never waits for a guard of its own thread: the other permits may free.
        if waits && thread.is_some() && semaphore.is_none() {
            match locks
                .inner
                .local
                .would_deadlock(&self.name, self.locked_by.as_deref())
            {
                SelfWait::No => {}
                SelfWait::Certain => return Err(Error::WouldDeadlock { name: self.name }),
                // The guard may be on another thread by now (sent there, or held by a
                // task that moved): waiting is right, and a timeout still ends it.
                SelfWait::Possible => tracing::warn!(
                    lock = %self.name,
                    "this thread acquired the lock through another guard; if that guard is \
                     still on this thread, this acquisition waits for it {}",
                    if self.timeout.is_some() { "until its timeout" } else { "for ever" }
                ),
            }
        }
        let owner = self.locked_by.unwrap_or_else(default_owner);
        Ok(Ok(Request {
            locks,
            name: self.name,
            semaphore,
            owner,
            ttl,
            ttl_renew,
            auto_renew: self.auto_renew,
            retry: if once { None } else { self.retry },
            once,
            timeout: self.timeout,
            callback: self.lost_lock_cb,
            at_least: self.lock_at_least_for,
            pinned: self.pinned,
            thread,
        }))
    }
}

/// The renewal margin of a lock that does not set `lock_ttl_renew`: the handle's default
/// (2 s unless configured), but at most half the lease, so that a short lease (`--ttl 1`)
/// is renewed twice per ttl instead of being refused.
pub(crate) fn default_margin(default: Duration, ttl: Option<Duration>) -> Duration {
    match ttl {
        Some(ttl) => default.min(ttl / 2),
        None => default,
    }
}

pub(crate) fn validate_name(name: &str) -> Result<()> {
    let chars = name.chars().count();
    if chars == 0 {
        return Err(Error::invalid("lock name", "the name is empty"));
    }
    if chars > MAX_NAME_CHARS {
        return Err(Error::invalid(
            "lock name",
            format!("the name has {chars} characters; at most {MAX_NAME_CHARS} fit the table"),
        ));
    }
    if name.contains('\0') {
        return Err(Error::invalid(
            "lock name",
            "the name contains a NUL character",
        ));
    }
    Ok(())
}

/// A name that a lock, a semaphore or an election can take: a row name
/// ([`validate_name`]) without [`SEPARATOR`], which names a semaphore's rows.
pub(crate) fn validate_lock_name(name: &str) -> Result<()> {
    validate_name(name)?;
    if name.contains(SEPARATOR) {
        return Err(Error::invalid(
            "lock name",
            format!("the name contains {SEPARATOR:?} (U+241F), which names a semaphore's rows"),
        ));
    }
    Ok(())
}

/// The semaphore's rows, if `name` and `permits` fit: its rows' names (`name␟permits` the
/// longest of them) must fit the table's 255 characters.
fn validate_semaphore(name: &str, permits: u32) -> Result<Semaphore> {
    if permits == 0 || permits > MAX_PERMITS {
        return Err(Error::invalid(
            "permits",
            format!("a semaphore has 1 to {MAX_PERMITS} permits, not {permits}"),
        ));
    }
    let longest = MAX_NAME_CHARS - "\u{241F}permits".chars().count();
    let chars = name.chars().count();
    if chars > longest {
        return Err(Error::invalid(
            "semaphore name",
            format!("the name has {chars} characters; a semaphore's name has at most {longest}, so that its rows' names fit the table"),
        ));
    }
    Ok(Semaphore::new(name, permits))
}

pub(crate) fn validate_owner(owner: &str) -> Result<()> {
    if owner.is_empty() {
        return Err(Error::invalid("locked_by", "the owner id is empty"));
    }
    if owner.contains('\0') {
        return Err(Error::invalid(
            "locked_by",
            "the owner id contains a NUL character",
        ));
    }
    if owner.chars().count() > 1024 {
        return Err(Error::invalid(
            "locked_by",
            "the owner id is longer than 1024 characters",
        ));
    }
    Ok(())
}

pub(crate) fn validate_ttl(
    ttl: Option<Duration>,
    auto_renew: bool,
    ttl_renew: Duration,
) -> Result<()> {
    let Some(ttl) = ttl else { return Ok(()) };
    if ttl.is_zero() {
        return Err(Error::invalid(
            "lock_ttl",
            "the lease length must be positive; use lock_ttl(None) for no expiry",
        ));
    }
    if ttl > MAX_TTL {
        return Err(Error::invalid(
            "lock_ttl",
            format!(
                "{ttl:?} is longer than the maximum {MAX_TTL:?}; use lock_ttl(None) for no expiry"
            ),
        ));
    }
    if auto_renew {
        if ttl_renew.is_zero() {
            return Err(Error::invalid(
                "lock_ttl_renew",
                "the renewal margin must be positive",
            ));
        }
        if ttl_renew >= ttl {
            return Err(Error::invalid(
                "lock_ttl_renew",
                format!(
                    "the renewal margin {ttl_renew:?} must be shorter than lock_ttl {ttl:?}, \
                     or the lease would run out before its renewal"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn the_default_margin_is_at_most_half_the_lease() {
        assert_eq!(default_margin(2 * SEC, Some(10 * SEC)), 2 * SEC);
        assert_eq!(default_margin(2 * SEC, Some(4 * SEC)), 2 * SEC);
        assert_eq!(default_margin(2 * SEC, Some(3 * SEC)), SEC * 3 / 2);
        assert_eq!(default_margin(2 * SEC, Some(SEC)), SEC / 2);
        assert_eq!(default_margin(2 * SEC, None), 2 * SEC);
        // What the scaled default gives always passes validation; an explicit one may not.
        for ttl in [SEC / 10, SEC, 3 * SEC, 10 * SEC] {
            let margin = default_margin(2 * SEC, Some(ttl));
            assert!(validate_ttl(Some(ttl), true, margin).is_ok(), "{ttl:?}");
        }
        assert!(validate_ttl(Some(SEC), true, 2 * SEC).is_err());
    }
}
