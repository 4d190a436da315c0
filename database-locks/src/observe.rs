//! What the crate reports to the [`metrics`](https://docs.rs/metrics) facade, with the
//! `metrics` feature: one function per event, called where the event happens. Without the
//! feature every function here is empty and inlined away, so the events cost nothing.
//!
//! The names follow Prometheus' conventions (`_total` for counters, `_seconds` for
//! durations); the README lists them. Every series has a `lock` label: the lock's name,
//! or the semaphore's for its slots (so a semaphore is one series, not one per slot).

use std::time::Duration;

use crate::lease::LossCause;

/// How an acquisition ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Acquired,
    /// Held by someone else, and the acquisition did not wait (`try_acquire`, no retry).
    Refused,
    TimedOut,
    Error,
}

impl Outcome {
    pub(crate) fn of<T>(result: &crate::Result<Option<T>>) -> Self {
        match result {
            Ok(Some(_)) => Outcome::Acquired,
            Ok(None) | Err(crate::Error::NotAcquired { .. }) => Outcome::Refused,
            Err(crate::Error::Timeout { .. }) => Outcome::TimedOut,
            Err(_) => Outcome::Error,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Acquired => "acquired",
            Outcome::Refused => "refused",
            Outcome::TimedOut => "timed_out",
            Outcome::Error => "error",
        }
    }
}

/// What woke a waiter for its next attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wakeup {
    /// A release announced by the database (PostgreSQL's NOTIFY, SQLite's commit watch).
    Notify,
    /// A release by a guard of the same handle.
    Local,
    /// The front of the queue's own poll at the retry period, or at the holder's expiry.
    Poll,
}

#[cfg(feature = "metrics")]
mod on {
    use std::sync::Once;
    use std::time::Duration;

    use metrics::{
        counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
    };

    use super::{Outcome, Wakeup};
    use crate::lease::LossCause;

    pub(crate) const ACQUISITIONS: &str = "database_locks_acquisitions_total";
    pub(crate) const ACQUIRE_WAIT: &str = "database_locks_acquire_wait_seconds";
    pub(crate) const HELD: &str = "database_locks_held";
    pub(crate) const HOLD: &str = "database_locks_hold_seconds";
    pub(crate) const RENEWALS: &str = "database_locks_renewals_total";
    pub(crate) const RENEWAL_FAILURES: &str = "database_locks_renewal_failures_total";
    pub(crate) const LOSSES: &str = "database_locks_losses_total";
    pub(crate) const WAKEUPS: &str = "database_locks_wakeups_total";

    /// The metrics' descriptions, given to the recorder installed when the first handle
    /// is made (a recorder installed later gets none: they are help texts only).
    pub(crate) fn describe() {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            describe_counter!(
                ACQUISITIONS,
                Unit::Count,
                "Acquisitions of a lock by outcome: acquired, refused (held, no waiting), timed_out, error"
            );
            describe_histogram!(
                ACQUIRE_WAIT,
                Unit::Seconds,
                "Time from the start of an acquisition to its outcome"
            );
            describe_gauge!(HELD, Unit::Count, "Guards of this process holding the lock (slots, for a semaphore)");
            describe_histogram!(HOLD, Unit::Seconds, "Time from acquisition to release");
            describe_counter!(RENEWALS, Unit::Count, "Leases extended by the renewal thread");
            describe_counter!(
                RENEWAL_FAILURES,
                Unit::Count,
                "Renewal statements that failed for a lease (retried while the lease lasts)"
            );
            describe_counter!(
                LOSSES,
                Unit::Count,
                "Locks lost while held, by cause: expired (not renewed in time), taken, failed"
            );
            describe_counter!(
                WAKEUPS,
                Unit::Count,
                "Waiters woken for an attempt, by kind: notify (another process released), local (this process released), poll"
            );
        });
    }

    pub(crate) fn acquisition(lock: &str, outcome: Outcome, waited: Duration) {
        let (lock, outcome) = (lock.to_owned(), outcome.as_str());
        counter!(ACQUISITIONS, "lock" => lock.clone(), "outcome" => outcome).increment(1);
        histogram!(ACQUIRE_WAIT, "lock" => lock, "outcome" => outcome).record(waited);
    }

    pub(crate) fn held(lock: &str) {
        gauge!(HELD, "lock" => lock.to_owned()).increment(1.0);
    }

    pub(crate) fn released(lock: &str, held_for: Duration) {
        gauge!(HELD, "lock" => lock.to_owned()).decrement(1.0);
        histogram!(HOLD, "lock" => lock.to_owned()).record(held_for);
    }

    pub(crate) fn renewal(lock: &str, ok: bool) {
        let name = if ok { RENEWALS } else { RENEWAL_FAILURES };
        counter!(name, "lock" => lock.to_owned()).increment(1);
    }

    pub(crate) fn loss(lock: &str, cause: LossCause) {
        let cause = match cause {
            LossCause::Expired => "expired",
            LossCause::Taken => "taken",
            LossCause::Failed => "failed",
        };
        counter!(LOSSES, "lock" => lock.to_owned(), "cause" => cause).increment(1);
    }

    pub(crate) fn wakeup(lock: &str, kind: Wakeup) {
        let kind = match kind {
            Wakeup::Notify => "notify",
            Wakeup::Local => "local",
            Wakeup::Poll => "poll",
        };
        counter!(WAKEUPS, "lock" => lock.to_owned(), "kind" => kind).increment(1);
    }
}

/// The `lock` label of a row: a semaphore slot counts for its semaphore.
#[cfg(feature = "metrics")]
fn label(row: &str) -> &str {
    crate::backend::queue_key(row)
}

/// Called when a handle is made.
#[inline]
pub(crate) fn describe() {
    #[cfg(feature = "metrics")]
    on::describe();
}

/// An acquisition of `name` (a lock's or a semaphore's) ended with `outcome` after
/// `waited`.
#[inline]
pub(crate) fn acquisition(name: &str, outcome: Outcome, waited: Duration) {
    #[cfg(feature = "metrics")]
    on::acquisition(label(name), outcome, waited);
    #[cfg(not(feature = "metrics"))]
    let _ = (name, outcome, waited);
}

/// A guard of the row `row` now holds it.
#[inline]
pub(crate) fn held(row: &str) {
    #[cfg(feature = "metrics")]
    on::held(label(row));
    #[cfg(not(feature = "metrics"))]
    let _ = row;
}

/// The guard of `row` let it go (released, dropped, or given up) after `held_for`.
#[inline]
pub(crate) fn released(row: &str, held_for: Duration) {
    #[cfg(feature = "metrics")]
    on::released(label(row), held_for);
    #[cfg(not(feature = "metrics"))]
    let _ = (row, held_for);
}

/// A renewal of `row`'s lease extended it (`ok`) or failed with an error.
#[inline]
pub(crate) fn renewal(row: &str, ok: bool) {
    #[cfg(feature = "metrics")]
    on::renewal(label(row), ok);
    #[cfg(not(feature = "metrics"))]
    let _ = (row, ok);
}

/// `row`'s lease was declared lost.
#[inline]
pub(crate) fn loss(row: &str, cause: LossCause) {
    #[cfg(feature = "metrics")]
    on::loss(label(row), cause);
    #[cfg(not(feature = "metrics"))]
    let _ = (row, cause);
}

/// A waiter for `name` (a queue's: a lock's or a semaphore's) was woken by `kind`.
#[inline]
pub(crate) fn wakeup(name: &str, kind: Wakeup) {
    #[cfg(feature = "metrics")]
    on::wakeup(label(name), kind);
    #[cfg(not(feature = "metrics"))]
    let _ = (name, kind);
}
