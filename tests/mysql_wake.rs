//! MariaDB/MySQL: a release in one process wakes a waiter in another through session locks
//! (`GET_LOCK`): the holder's channel holds `k(name)` while it holds the row, the waiter's
//! listener blocks in `GET_LOCK(k, t)` and is granted when the channel lets `k` go.
//!
//! As in `sqlite_wake.rs`, the waiter (`wake-helper`) polls every 60 s, and the holder's
//! lock has no expiry unless a test says otherwise, so only a wake-up lets it acquire
//! before its timeout (30 s); with `notify(false)` the same waiter gets the lock only at
//! its deadline. No assertion bounds a time from above but by the waiter's own timeout.
//! Each test has a database of its own, so that the server's process list shows whose
//! sessions wait on a session lock.
#![cfg(feature = "mysql")]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{eventually, expect_line, lines, unique_name, Db};
use database_locks::__private::wake_key;
use diesel::{Connection, MysqlConnection, QueryableByName, RunQueryDsl};

use common::wake::{outcome, waiter, RETRY, STEP, WAKE_HELPER};

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// One number from `sql` (`... AS n`), on a fresh connection to `db`.
fn number(db: &Db, sql: &str) -> i64 {
    let mut conn = MysqlConnection::establish(&db.url)
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", db.url));
    let rows: Vec<N> = diesel::sql_query(sql)
        .load(&mut conn)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.first().map_or(0, |r| r.n)
}

fn database_of(db: &Db) -> String {
    db.url.rsplit('/').next().unwrap_or_default().to_owned()
}

/// The session lock that stands for `name` in `db`.
fn key_of(db: &Db, name: &str) -> String {
    wake_key(&database_of(db), name)
}

/// The connection id of the session holding `name`'s key, 0 when none does.
fn key_holder(db: &Db, name: &str) -> i64 {
    number(
        db,
        &format!(
            "SELECT CAST(COALESCE(IS_USED_LOCK('{}'), 0) AS SIGNED) AS n",
            key_of(db, name)
        ),
    )
}

/// How many sessions of `db` wait in `GET_LOCK` now.
fn blocked_in_get_lock(db: &Db) -> i64 {
    number(
        db,
        &format!(
            "SELECT COUNT(*) AS n FROM information_schema.processlist \
             WHERE db = '{}' AND state = 'User lock'",
            database_of(db)
        ),
    )
}

#[test]
fn a_release_wakes_a_waiter_blocked_in_another_process() {
    let db = Db::mysql().isolated();
    let locks = db.locks();
    let name = unique_name("mysql-wake");
    let guard = locks
        .lock(&name)
        .lock_ttl(None)
        .try_acquire()
        .expect("acquire")
        .expect("a new name is free");
    let held = guard.token().expect("a token");
    assert!(
        eventually(STEP, || key_holder(&db, &name) != 0),
        "the holder's channel never took the session lock"
    );

    let (mut child, out, state) = waiter(&db, &name, 0, RETRY, "30", true);
    assert_eq!(
        state, "SessionLocks",
        "the waiter's handle waits on session locks"
    );
    // Its listener blocks on the key the holder's channel holds.
    assert!(
        eventually(STEP, || blocked_in_get_lock(&db) == 1),
        "the waiter never blocked in GET_LOCK"
    );
    guard.release().expect("release");

    let (how, token, ms) = outcome(&mut child, &out);
    assert_eq!(how, "acquired", "the waiter timed out after {ms} ms");
    // Its own acquisition, the next after the holder's.
    assert_eq!(token, Some(held + 1));
    assert!(
        ms < 30_000,
        "acquired after {ms} ms: at its deadline, not woken"
    );
    let row = db.row(&name).expect("the row");
    assert_eq!(row.expires_at, None, "released by the waiter: {row:?}");
}

#[test]
fn without_notify_the_waiter_finds_out_at_its_deadline_only() {
    let db = Db::mysql().isolated();
    let locks = db.locks();
    let name = unique_name("mysql-nowake");
    let guard = locks
        .lock(&name)
        .lock_ttl(None)
        .try_acquire()
        .expect("acquire")
        .expect("a new name is free");
    assert!(
        eventually(STEP, || key_holder(&db, &name) != 0),
        "the holder's channel never took the session lock"
    );

    let (mut child, out, state) = waiter(&db, &name, 0, RETRY, "3", false);
    assert_eq!(state, "Off");
    guard.release().expect("release");

    let (how, _, ms) = outcome(&mut child, &out);
    assert!(
        ms >= 3_000,
        "{how} after {ms} ms, before its deadline: something but the poll woke it"
    );
}

/// A holder whose channel never takes the key: a handle with `notify(false)`, which is
/// what a waiter sees of a section shorter than the channel's delay, stretched so that the
/// waiter is surely refused during it (and of a Django process, or another crate). The
/// waiter's listener finds the key free, reads the row (held), and backs off (1 ms,
/// doubling to 1 s); the look after the release finds the row free and wakes it, long
/// before its poll.
#[test]
fn a_release_without_a_session_lock_is_found_by_the_back_off() {
    let db = Db::mysql().isolated();
    let holder = database_locks::Locks::new(db.config().notify(false)).expect("handle");
    let name = unique_name("mysql-backoff");
    let guard = holder
        .lock(&name)
        .lock_ttl(None)
        .try_acquire()
        .expect("acquire")
        .expect("a new name is free");
    let held = guard.token().expect("a token");

    let (mut child, out, state) = waiter(&db, &name, 0, RETRY, "30", true);
    assert_eq!(state, "SessionLocks");
    // Long enough for the back-off to reach its longest step.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        out.try_recv().is_err(),
        "the waiter got the lock while it was held"
    );
    guard.release().expect("release");

    let (how, token, ms) = outcome(&mut child, &out);
    assert_eq!(how, "acquired", "the waiter timed out after {ms} ms");
    assert_eq!(token, Some(held + 1));
    assert!(ms < 30_000, "acquired after {ms} ms: at its deadline");
}

/// Statements this test process sent that mention a watched string (SQL and binds).
static WATCHED: Mutex<Vec<String>> = Mutex::new(Vec::new());
static GET_LOCKS: AtomicU64 = AtomicU64::new(0);
static RELEASE_LOCKS: AtomicU64 = AtomicU64::new(0);

fn count_session_locks() -> Option<Box<dyn diesel::connection::Instrumentation>> {
    Some(Box::new(
        |event: diesel::connection::InstrumentationEvent<'_>| {
            if let diesel::connection::InstrumentationEvent::StartQuery { query, .. } = event {
                let text = query.to_string();
                let watched = WATCHED.lock().unwrap_or_else(|e| e.into_inner());
                if watched.iter().any(|w| text.contains(w.as_str())) {
                    if text.contains("GET_LOCK(") {
                        GET_LOCKS.fetch_add(1, Ordering::SeqCst);
                    } else if text.contains("RELEASE_LOCK(") {
                        RELEASE_LOCKS.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        },
    ))
}

/// Sections shorter than the channel's delay cost the holder no statement: 200
/// acquire+release cycles at once send a `GET_LOCK` only for the cycles that lasted the
/// delay (5 ms) or more, from the start of the acquire to the return of the release,
/// which on an idle machine is none. Every key taken is let go.
#[test]
fn short_sections_take_no_session_lock() {
    diesel::connection::set_default_instrumentation(count_session_locks).expect("instrumentation");
    let db = Db::mysql().isolated();
    let locks = db.locks();
    let name = unique_name("mysql-short");
    WATCHED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(key_of(&db, &name));
    // Warm: the table, the statements, the pool.
    locks
        .lock(&name)
        .acquire()
        .expect("acquire")
        .release()
        .expect("release");
    let mut slow = 0;
    for _ in 0..200 {
        let started = Instant::now();
        let guard = locks.lock(&name).acquire().expect("acquire");
        guard.release().expect("release");
        if started.elapsed() >= Duration::from_millis(5) {
            slow += 1;
        }
    }
    // A key taken by the last cycle is let go right after; give the thread a moment.
    assert!(eventually(STEP, || key_holder(&db, &name) == 0));
    let (taken, let_go) = (
        GET_LOCKS.load(Ordering::SeqCst),
        RELEASE_LOCKS.load(Ordering::SeqCst),
    );
    println!("200 cycles, {slow} of them 5 ms or longer: {taken} GET_LOCK, {let_go} RELEASE_LOCK");
    assert!(
        taken <= slow,
        "{taken} GET_LOCK for {slow} cycles that lasted the channel's delay"
    );
    assert_eq!(taken, let_go, "every key taken is let go");
}

/// The channel's connection killed from outside: its session lock goes with it and wakes
/// the waiter, whose attempt is refused (the row is the truth); the holder keeps its lock,
/// its channel takes the key again on a new connection, the waiter blocks on it again, and
/// the release still wakes it.
#[test]
fn a_killed_channel_connection_wakes_waiters_early_and_nothing_else() {
    let db = Db::mysql().isolated();
    let locks = db.locks();
    let name = unique_name("mysql-kill");
    let guard = locks
        .lock(&name)
        .lock_ttl(Some(Duration::from_secs(10)))
        .try_acquire()
        .expect("acquire")
        .expect("a new name is free");
    let held = guard.token().expect("a token");
    assert!(eventually(STEP, || key_holder(&db, &name) != 0));
    let first = key_holder(&db, &name);

    let (mut child, out, state) = waiter(&db, &name, 0, RETRY, "30", true);
    assert_eq!(state, "SessionLocks");
    assert!(
        eventually(STEP, || blocked_in_get_lock(&db) == 1),
        "the waiter never blocked in GET_LOCK"
    );
    db.exec(&format!("KILL {first}"));

    let mut second = 0;
    assert!(
        eventually(STEP, || {
            second = key_holder(&db, &name);
            second != 0 && second != first
        }),
        "the channel never took the key again"
    );
    assert!(
        eventually(STEP, || blocked_in_get_lock(&db) == 1),
        "the waiter never blocked on the new session lock"
    );
    assert!(
        out.try_recv().is_err(),
        "the waiter got a lock that is held"
    );
    assert!(!guard.is_lost());
    assert!(guard.verify().expect("verify"), "the holder keeps its lock");
    guard.release().expect("release");

    let (how, token, ms) = outcome(&mut child, &out);
    assert_eq!(how, "acquired", "the waiter timed out after {ms} ms");
    assert_eq!(token, Some(held + 1));
    assert!(ms < 30_000, "acquired after {ms} ms: at its deadline");
}

/// A holder process SIGKILLed: its session lock goes with its connection and wakes the
/// waiter early, but the row's lease still runs, so the waiter gets the lock only after it
/// by the database's clock, never before.
#[test]
fn a_killed_holder_is_succeeded_only_after_its_lease() {
    let db = Db::mysql().isolated();
    let name = unique_name("mysql-sigkill");
    let mut holder = std::process::Command::new(WAKE_HELPER)
        .args(["hold", &db.url, &name, "3"])
        .env_remove("DATABASE_LOCKS_NOTIFY")
        .env_remove("DATABASE_LOCKS_TRANSACTION_POOLING")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn wake-helper hold");
    let out = lines(holder.stdout.take().expect("stdout piped"));
    let line = expect_line(&out, "held ", STEP);
    let held: i64 = line["held ".len()..].parse().expect("token");
    assert!(eventually(STEP, || key_holder(&db, &name) != 0));

    let locks = db.locks();
    const TTL: Duration = Duration::from_secs(20);
    let waiter = std::thread::spawn({
        let (locks, name) = (locks.clone(), name.clone());
        move || {
            locks
                .lock(&name)
                .retry(Some(Duration::from_secs(60)))
                .timeout(Duration::from_secs(30))
                .lock_ttl(Some(TTL))
                .auto_renew(false)
                .acquire()
        }
    });
    assert!(
        eventually(STEP, || blocked_in_get_lock(&db) == 1),
        "the waiter never blocked in GET_LOCK"
    );
    holder.kill().expect("SIGKILL the holder");
    let _ = holder.wait();
    // Its lease as it stood when it died (renewals stop with it).
    let row = db.row(&name).expect("the row");
    let lease_end = row.expires_at.expect("held");

    let guard = waiter.join().expect("the waiter").expect("acquired");
    assert_eq!(guard.token(), Some(u64::try_from(held + 1).expect("token")));
    let row = db.row(&name).expect("the row");
    drop(guard);
    let acquired_at = row.expires_at.expect("held") - i64::try_from(TTL.as_micros()).expect("µs");
    assert!(
        acquired_at >= lease_end,
        "acquired {} µs before the dead holder's lease ended",
        lease_end - acquired_at
    );
}

/// Semaphore permits take no session lock and their waiters poll on MySQL: a waiter of a
/// semaphore whose permits are all held blocks in no `GET_LOCK`, and gets the permit
/// released at its next poll.
#[test]
fn a_semaphore_waiter_polls_and_gets_a_released_permit() {
    let db = Db::mysql().isolated();
    let locks = db.locks();
    let name = unique_name("mysql-sem");
    let mut permits: Vec<_> = (0..2)
        .map(|_| {
            locks
                .semaphore(&name, 2)
                .lock_ttl(None)
                .try_acquire()
                .expect("acquire a permit")
                .expect("a permit is free")
        })
        .collect();
    let (mut child, out, state) = waiter(&db, &name, 2, "0.2", "30", true);
    assert_eq!(state, "SessionLocks");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        blocked_in_get_lock(&db),
        0,
        "no session waits for a semaphore"
    );
    assert_eq!(key_holder(&db, &name), 0, "permits take no session lock");
    let first = permits.remove(0);
    let held = first.token().expect("a token");
    first.release().expect("release a permit");

    let (how, token, ms) = outcome(&mut child, &out);
    assert_eq!(how, "acquired", "the waiter timed out after {ms} ms");
    assert_eq!(token, Some(held + 1), "the freed slot, taken next");
    drop(permits);
}
