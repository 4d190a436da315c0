//! SQLite: a release in one process wakes a waiter in another (the handle's listener reads
//! `PRAGMA data_version`), instead of the waiter finding out at its next poll.
//!
//! The waiter (`wake-helper`) polls every 60 s, and the holder's lock has no expiry, so
//! only a wake-up lets it acquire before its timeout. With `notify(false)` the same
//! waiter gets the lock only by the attempt it makes at its deadline: that is what shows
//! the first test passes by the wake-up. No assertion bounds a time from above but by the
//! waiter's own timeout (30 s); the lower bound (at or after its deadline) cannot be
//! broken by a slow machine.

mod common;

use std::time::Duration;

use common::{unique_name, Db};

use common::wake::{outcome, waiter, RETRY, STEP};

fn token_i64(token: u64) -> i64 {
    i64::try_from(token).expect("a token fits the column")
}

#[test]
fn a_release_wakes_a_waiter_in_another_process() {
    let db = Db::sqlite();
    let locks = db.locks();
    let name = unique_name("sqlite-wake");
    let guard = locks
        .lock(&name)
        .lock_ttl(None)
        .try_acquire()
        .expect("acquire")
        .expect("a new name is free");
    let held = guard.token().expect("a token");

    let (mut child, out, state) = waiter(&db, &name, 0, RETRY, "30", true);
    assert_eq!(
        state, "Watching",
        "the waiter's handle watches the file's commits"
    );
    guard.release().expect("release");

    let (how, token, ms) = outcome(&mut child, &out);
    assert_eq!(how, "acquired", "the waiter timed out after {ms} ms");
    // Its own acquisition, the next after the holder's: the holder's row had been released
    // (it had no expiry), and nothing else took it in between.
    assert_eq!(token, Some(held + 1));
    // Before its timeout (whose last attempt would also have found the lock free) and
    // before its first poll (60 s).
    assert!(
        ms < 30_000,
        "acquired after {ms} ms: at its deadline, not woken"
    );
    // It released it before exiting.
    let row = db.row(&name).expect("the row");
    assert_eq!(
        (row.token, row.expires_at),
        (token_i64(held + 1), None),
        "{row:?}"
    );
}

#[test]
fn without_notify_the_waiter_finds_out_at_its_deadline_only() {
    let db = Db::sqlite();
    let locks = db.locks();
    let name = unique_name("sqlite-nowake");
    let guard = locks
        .lock(&name)
        .lock_ttl(None)
        .try_acquire()
        .expect("acquire")
        .expect("a new name is free");

    let (mut child, out, state) = waiter(&db, &name, 0, RETRY, "3", false);
    assert_eq!(state, "Off");
    guard.release().expect("release");

    // Its one attempt after the first is the last look at its deadline: it finds the lock
    // free then, or (if this test was slower than 3 s to release) times out.
    let (how, _, ms) = outcome(&mut child, &out);
    assert!(
        ms >= 3_000,
        "{how} after {ms} ms, before its deadline: something but the poll woke it"
    );
}

#[test]
fn a_released_permit_wakes_a_semaphore_waiter_in_another_process() {
    let db = Db::sqlite();
    let locks = db.locks();
    let name = unique_name("sqlite-wake-sem");
    let permits: Vec<_> = (0..2)
        .map(|_| {
            locks
                .semaphore(&name, 2)
                .lock_ttl(None)
                .try_acquire()
                .expect("acquire a permit")
                .expect("a permit is free")
        })
        .collect();

    let (mut child, out, state) = waiter(&db, &name, 2, RETRY, "30", true);
    assert_eq!(state, "Watching");
    let mut permits = permits.into_iter();
    let (first, second) = (permits.next(), permits.next());
    let (first, second) = (first.expect("a permit"), second.expect("two permits"));
    let (held, freed) = (
        first.token().expect("a token"),
        first.permit().expect("a slot").row,
    );
    let (kept, kept_row) = (
        second.token().expect("a token"),
        second.permit().expect("a slot").row,
    );
    first.release().expect("release a permit");

    let (how, token, ms) = outcome(&mut child, &out);
    assert_eq!(how, "acquired", "the waiter timed out after {ms} ms");
    assert!(
        ms < 30_000,
        "acquired after {ms} ms: at its deadline, not woken"
    );
    // The released slot, taken next and released again; the other slot still ours.
    assert_eq!(token, Some(held + 1));
    let row = db.row(&freed).expect("the freed slot's row");
    assert_eq!(
        (row.token, row.expires_at),
        (token_i64(held + 1), None),
        "{row:?}"
    );
    let row = db.row(&kept_row).expect("the kept slot's row");
    assert_eq!(row.token, token_i64(kept), "{row:?}");
    assert!(row.expires_at.is_some(), "{row:?}");
    drop(second);
}

/// `PRAGMA data_version` statements run in this process (`count_looks`).
static LOOKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn count_looks() -> Option<Box<dyn diesel::connection::Instrumentation>> {
    Some(Box::new(
        |event: diesel::connection::InstrumentationEvent<'_>| {
            if let diesel::connection::InstrumentationEvent::StartQuery { query, .. } = event {
                if query
                    .to_string()
                    .trim_start()
                    .starts_with("PRAGMA data_version")
                {
                    LOOKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        },
    ))
}

/// While nothing is written to the file, a waiting handle's listener sleeps (Linux: until
/// inotify reports a write to the database or its log), rather than looking at
/// `data_version` every millisecond: 100 processes waiting would otherwise cost 100,000
/// looks a second. Over 2 s it looks once per 50 ms wake-up of its own (39 measured
/// here), where looking every millisecond made 1,845 (the watch turned off, on a loaded
/// machine). A slow machine can only make the count smaller. The release at
/// the end still wakes the waiter, whose poll is 60 s.
#[cfg(target_os = "linux")]
#[test]
fn a_waiting_listener_sleeps_while_nothing_is_written() {
    // Only this test's connections count: those of the others wait in other processes.
    diesel::connection::set_default_instrumentation(count_looks).expect("instrumentation");
    let db = Db::sqlite();
    let holder = db.locks();
    let name = unique_name("sqlite-sleep");
    // No expiry: no renewals, so nothing at all is written while the waiter waits.
    let guard = holder
        .lock(&name)
        .lock_ttl(None)
        .try_acquire()
        .expect("acquire")
        .expect("a new name is free");
    let waiting = db.locks();
    let waiter = std::thread::spawn({
        let (waiting, name) = (waiting.clone(), name.clone());
        move || {
            waiting
                .lock(&name)
                .retry(Some(Duration::from_secs(60)))
                .timeout(Duration::from_secs(30))
                .acquire()
                .map(|guard| guard.token())
        }
    });
    // Once its first attempt was refused and its listener has started to look.
    let started = std::time::Instant::now();
    while !(common::in_progress(&waiting) == 1
        && format!("{waiting:?}").contains("notifications: Watching,")
        && LOOKS.load(std::sync::atomic::Ordering::Relaxed) > 0)
    {
        assert!(started.elapsed() < STEP, "the waiter never waited");
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = LOOKS.load(std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(2));
    let looks = LOOKS.load(std::sync::atomic::Ordering::Relaxed) - before;
    println!("looks in 2 s of waiting with nothing written: {looks}");
    assert!(
        looks < 200,
        "{looks} looks at data_version in 2 s: the listener polls instead of sleeping"
    );
    let held = guard.token().expect("a token");
    guard.release().expect("release");
    let token = waiter.join().expect("the waiter");
    assert_eq!(
        token.expect("woken by the release, before its 30 s timeout"),
        Some(held + 1)
    );
}
