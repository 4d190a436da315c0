//! What `#[locked]` expands to. Not public API: no semver promise holds for anything here;
//! only the macro of the same version calls it.
//!
//! - this file: [`Lock`], the builder the expansion fills in and acquires with;
//! - `args`: the values the macro's arguments may take;
//! - `names`: default lock names known only at run time;
//! - `kinds`: what a failed acquire turns into, by return type.

use core::future::Future;

pub use crate::LockGuard;
use crate::{Error, LockBuilder, LostLock};

mod args;
mod kinds;
mod names;

pub use args::{LockName, MaybeSeconds, Owner, Seconds};
pub use kinds::{lock_failed, CarriesLockError, Panic, PanicKind, Ret, ReturnErr, ReturnErrKind};
pub use names::method_lock_name;

/// The MySQL session lock that stands for the lock `name` of the table in `database`
/// (the wake-up channel, `backend::session`): for tests that look for it.
pub use crate::backend::session::wake_key;

/// The builder `#[locked]` fills in: a [`LockBuilder`] plus the first argument that could
/// not be converted, returned by [`acquire`](Self::acquire) or
/// [`acquire_async`](Self::acquire_async) before any SQL runs.
#[derive(Debug)]
pub struct Lock {
    builder: LockBuilder,
    error: Option<Error>,
}

impl Lock {
    /// The lock `name` on the global handle, read at this call.
    pub fn new(name: impl LockName) -> Self {
        Lock {
            builder: crate::lock(name.lock_name()),
            error: None,
        }
    }

    fn set<T>(
        mut self,
        what: &'static str,
        value: Result<T, String>,
        apply: impl FnOnce(LockBuilder, T) -> LockBuilder,
    ) -> Self {
        match value {
            Ok(value) => self.builder = apply(self.builder, value),
            Err(reason) => {
                self.error.get_or_insert(Error::invalid(what, reason));
            }
        }
        self
    }

    /// `timeout = ...`
    pub fn timeout(self, timeout: impl Seconds) -> Self {
        self.set("timeout", timeout.seconds(), LockBuilder::timeout)
    }

    /// `lock_ttl = ...` (`None`: no expiry).
    pub fn lock_ttl(self, ttl: impl MaybeSeconds) -> Self {
        self.set("lock_ttl", ttl.maybe_seconds(), LockBuilder::lock_ttl)
    }

    /// `locked_by = ...` (`None`: the default owner).
    pub fn locked_by(mut self, owner: impl Owner) -> Self {
        if let Some(owner) = owner.owner() {
            self.builder = self.builder.locked_by(owner);
        }
        self
    }

    /// `auto_renew` or `auto_renew = ...`
    pub fn auto_renew(mut self, auto_renew: bool) -> Self {
        self.builder = self.builder.auto_renew(auto_renew);
        self
    }

    /// `retry = ...` (`0` or `None`: one attempt).
    pub fn retry(self, retry: impl MaybeSeconds) -> Self {
        self.set("retry", retry.maybe_seconds(), LockBuilder::retry)
    }

    /// `lock_ttl_renew = ...`
    pub fn lock_ttl_renew(self, margin: impl Seconds) -> Self {
        self.set(
            "lock_ttl_renew",
            margin.seconds(),
            LockBuilder::lock_ttl_renew,
        )
    }

    /// `lost_lock_cb = ...`
    pub fn lost_lock_cb(mut self, callback: impl Fn(&LostLock) + Send + Sync + 'static) -> Self {
        self.builder = self.builder.lost_lock_cb(callback);
        self
    }

    /// `lock_at_least_for = ...`
    pub fn lock_at_least_for(self, duration: impl Seconds) -> Self {
        self.set(
            "lock_at_least_for",
            duration.seconds(),
            LockBuilder::lock_at_least_for,
        )
    }

    /// Takes the lock, or reports the first bad argument.
    pub fn acquire(self) -> Result<LockGuard, Error> {
        match self.error {
            Some(error) => Err(error),
            None => self.builder.pinned_to_thread().acquire(),
        }
    }

    /// Takes the lock from an `async fn`, or reports the first bad argument. Not pinned to
    /// the thread: a task moves between threads, and tasks sharing one thread must contend
    /// like threads do (no [`Error::WouldDeadlock`]).
    #[allow(
        clippy::manual_async_fn,
        reason = "`Send + 'static` in the signature: the expanded fn's future is `Send` when \
                  its body's is"
    )]
    pub fn acquire_async(self) -> impl Future<Output = Result<LockGuard, Error>> + Send + 'static {
        let Lock { builder, error } = self;
        async move {
            match error {
                Some(error) => Err(error),
                None => builder.acquire_async().await,
            }
        }
    }
}
