//! Extreme durations (issue 11, "Blocking and time limits"): `Duration::MAX` as a timeout
//! or a polling period means "for ever", never an arithmetic overflow. On every backend.
//! Each waiting call runs on a thread of its own, so a panic there fails the test with a
//! message and a hang fails it after a bound.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{unique_name, Db};
use database_locks::{Error, LockGuard, Locks, Result};
use database_locks_testkit::{on_each_backend, read_row};

/// A lock held on `locks` for 60 s (no renewal matters within a test).
fn hold(locks: &Locks, name: &str) -> LockGuard {
    locks
        .lock(name)
        .lock_ttl(Some(Duration::from_secs(60)))
        .lost_lock_cb(|_| {})
        .acquire()
        .expect("the first holder")
}

/// Starts `acquire` on a thread of its own; its outcome and when it came arrive on the
/// channel, which disconnects without a message when the thread panicked.
fn spawn_acquire(
    acquire: impl FnOnce() -> Result<LockGuard> + Send + 'static,
) -> mpsc::Receiver<(Result<LockGuard>, Instant)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let outcome = acquire();
        let _ = tx.send((outcome, Instant::now()));
    });
    rx
}

/// The waiter is still waiting (it neither returned nor panicked) after `wait`.
fn still_waiting(rx: &mpsc::Receiver<(Result<LockGuard>, Instant)>, wait: Duration, what: &str) {
    match rx.recv_timeout(wait) {
        Err(mpsc::RecvTimeoutError::Timeout) => {}
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: the acquisition panicked"),
        Ok((outcome, _)) => panic!("{what}: returned while the lock was held: {outcome:?}"),
    }
}

/// `rx`'s outcome within `limit`, failing the test on a panic or a hang.
fn outcome(
    rx: &mpsc::Receiver<(Result<LockGuard>, Instant)>,
    limit: Duration,
    what: &str,
) -> (Result<LockGuard>, Instant) {
    match rx.recv_timeout(limit) {
        Ok(done) => done,
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: the acquisition panicked"),
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: no outcome within {limit:?}"),
    }
}

/// Hands the lock over from `holder` (same handle, so the release wakes the waiter) and
/// checks the waiter got it; prints how long the hand-off took.
fn handed_over(
    db: &Db,
    holder: LockGuard,
    rx: &mpsc::Receiver<(Result<LockGuard>, Instant)>,
    what: &str,
) {
    let released = Instant::now();
    holder.release().expect("the holder releases");
    let (got, at) = outcome(rx, Duration::from_secs(10), what);
    let guard = got.unwrap_or_else(|e| panic!("{what}: {e}"));
    let row = read_row(db.kind, &db.url, guard.name())
        .unwrap_or_else(|e| panic!("reading the row on {}: {e}", db.url))
        .expect("the row");
    assert!(row.is_held(), "{row:?}");
    assert_eq!(row.locked_by.as_deref(), guard.locked_by(), "{row:?}");
    assert_eq!(Some(row.token as u64), guard.token(), "{row:?}");
    println!(
        "{what} [{:?}]: acquired {:.1} ms after the release",
        db.kind,
        at.saturating_duration_since(released).as_secs_f64() * 1000.0
    );
    guard.release().expect("the waiter releases");
}

/// `timeout(Duration::MAX)` waits (as for ever) and gets the lock when it is released.
fn timeout_max_waits_for_the_lock(db: &Db) {
    let locks = db.locks();
    let name = unique_name("limits.timeout_max");
    let holder = hold(&locks, &name);
    let rx = spawn_acquire({
        let (locks, name) = (locks.clone(), name.clone());
        move || {
            locks
                .lock(&name)
                .timeout(Duration::MAX)
                .lost_lock_cb(|_| {})
                .acquire()
        }
    });
    still_waiting(&rx, Duration::from_millis(700), "timeout(Duration::MAX)");
    handed_over(db, holder, &rx, "timeout(Duration::MAX)");
}

/// `retry(Some(Duration::MAX))` polls once and then only waits for a wake-up: with a
/// timeout it ends with `Error::Timeout` on time.
fn retry_max_keeps_its_timeout(db: &Db) {
    let locks = db.locks();
    let name = unique_name("limits.retry_max");
    let _holder = hold(&locks, &name);
    let timeout = Duration::from_secs(1);
    let started = Instant::now();
    let rx = spawn_acquire({
        let (locks, name) = (locks.clone(), name.clone());
        move || {
            locks
                .lock(&name)
                .retry(Some(Duration::MAX))
                .timeout(timeout)
                .lost_lock_cb(|_| {})
                .acquire()
        }
    });
    let (got, at) = outcome(&rx, 10 * timeout, "retry(Some(Duration::MAX))");
    let took = at.saturating_duration_since(started);
    println!(
        "retry(Some(Duration::MAX)).timeout(1 s) [{:?}]: {:?} after {:.0} ms",
        db.kind,
        got.as_ref().map(|_| ()),
        took.as_secs_f64() * 1000.0
    );
    assert!(matches!(got, Err(Error::Timeout { .. })), "{got:?}");
    assert!(took < 3 * timeout, "{took:?}");
}

/// Both at `Duration::MAX`: waits, and a release on the same handle wakes it.
fn retry_max_and_timeout_max_get_the_lock_on_release(db: &Db) {
    let locks = db.locks();
    let name = unique_name("limits.both_max");
    let holder = hold(&locks, &name);
    let rx = spawn_acquire({
        let (locks, name) = (locks.clone(), name.clone());
        move || {
            locks
                .lock(&name)
                .retry(Some(Duration::MAX))
                .timeout(Duration::MAX)
                .lost_lock_cb(|_| {})
                .acquire()
        }
    });
    still_waiting(
        &rx,
        Duration::from_millis(700),
        "retry and timeout Duration::MAX",
    );
    handed_over(db, holder, &rx, "retry and timeout Duration::MAX");
}

/// The other durations at their maximum are refused as input, before any SQL.
fn other_maximal_durations_are_refused(db: &Db) {
    let locks = db.locks();
    let name = unique_name("limits.refused");
    let cases = [
        ("lock_ttl", locks.lock(&name).lock_ttl(Some(Duration::MAX))),
        (
            "lock_ttl_renew",
            locks
                .lock(&name)
                .lock_ttl(Some(Duration::from_secs(10)))
                .lock_ttl_renew(Duration::MAX),
        ),
        (
            "lock_at_least_for",
            locks.lock(&name).lock_at_least_for(Duration::MAX),
        ),
    ];
    for (what, builder) in cases {
        match builder.acquire() {
            Err(Error::InvalidInput { .. }) => {}
            other => panic!("{what}(Duration::MAX): {other:?}"),
        }
    }
}

on_each_backend!(
    timeout_max_waits_for_the_lock,
    retry_max_keeps_its_timeout,
    retry_max_and_timeout_max_get_the_lock_on_release,
    other_maximal_durations_are_refused,
);
