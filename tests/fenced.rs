//! Fenced transactions (`LockGuard::transaction`) on each backend: writes commit only while
//! the lock is held, in one process and across processes that pause (`SIGSTOP`) or lose
//! their lease.
//!
//! Figures: `cargo test --all-features --test fenced -- --nocapture` prints each
//! multi-process run's counts.

mod common;

use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::fenced::{insert, paused_holder_is_refused, paused_inside, rows, BoxError, ROWS_TABLE};
use common::{eventually, output_of, unique_name, Db};
use database_locks::{Error, LockGuard, Locks};
use database_locks_testkit::AppConn;

const SEC: Duration = Duration::from_secs(1);

/// An isolated database with the application's table, a handle on it, and an
/// application connection.
fn setup<C: AppConn>(db: &Db) -> (Db, Locks, C) {
    let db = db.isolated();
    db.exec(ROWS_TABLE);
    let locks = db.locks();
    let conn = C::connect(&db.url).unwrap();
    (db, locks, conn)
}

/// A guard without auto-renewal whose loss is only recorded.
fn held(locks: &Locks, name: &str, ttl: Duration) -> LockGuard {
    locks
        .lock(name)
        .lock_ttl(Some(ttl))
        .auto_renew(false)
        .lost_lock_cb(|_| {})
        .acquire()
        .unwrap()
}

fn lock_error(err: &BoxError) -> &Error {
    err.downcast_ref::<Error>()
        .unwrap_or_else(|| panic!("not a lock error: {err}"))
}

fn commits_while_held_and_renews_the_lease<C: AppConn>(db: &Db) {
    let _timed = common::timed();
    let (db, locks, mut conn) = setup::<C>(db);
    let name = unique_name("fenced-commit");
    let guard = held(&locks, &name, 30 * SEC);
    let before = db.row(&name).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let value = guard
        .transaction(&mut conn, |conn| -> Result<i64, BoxError> {
            insert(conn, "A", 1)?;
            Ok(7)
        })
        .unwrap();
    assert_eq!(value, 7);
    assert_eq!(rows(&mut conn, "A"), 1);
    let after = db.row(&name).unwrap();
    assert_eq!(after.token, before.token, "a fence never changes the token");
    assert!(
        after.expires_at > before.expires_at,
        "the fence renewed the lease: {before:?} then {after:?}"
    );
    assert!(guard.verify().unwrap());
}

fn a_stolen_lock_refuses_the_transaction<C: AppConn>(db: &Db) {
    let (db, locks, mut conn) = setup::<C>(db);
    let name = unique_name("fenced-stolen");
    let guard = held(&locks, &name, 30 * SEC);
    db.steal(&name, "thief");
    let ran = AtomicBool::new(false);
    let err = guard
        .transaction(&mut conn, |conn| -> Result<(), BoxError> {
            ran.store(true, Ordering::SeqCst);
            insert(conn, "A", 1)
        })
        .unwrap_err();
    let token = guard.token().unwrap();
    match lock_error(&err) {
        Error::Fenced {
            name: n,
            token: t,
            current_token,
            holder,
        } => {
            assert_eq!(n, &name);
            assert_eq!(*t, token);
            assert_eq!(*current_token, token + 1);
            assert_eq!(holder.as_deref(), Some("thief"));
        }
        other => panic!("expected Fenced, got {other:?}"),
    }
    assert!(err.to_string().contains(&name), "{err}");
    assert!(!ran.load(Ordering::SeqCst), "the closure must not run");
    assert_eq!(rows(&mut conn, "A"), 0);
}

fn an_expired_lease_refuses_the_transaction<C: AppConn>(db: &Db) {
    let (db, locks, mut conn) = setup::<C>(db);
    let name = unique_name("fenced-expired");
    let guard = held(&locks, &name, SEC);
    // Expired by the database's clock; nobody has taken it.
    assert!(eventually(10 * SEC, || !guard.verify().unwrap()));
    let before = db.row(&name).unwrap();
    let err = guard
        .transaction(&mut conn, |conn| -> Result<(), BoxError> {
            insert(conn, "A", 1)
        })
        .unwrap_err();
    match lock_error(&err) {
        Error::Fenced {
            token,
            current_token,
            holder,
            ..
        } => {
            assert_eq!(token, current_token);
            assert_eq!(*holder, None, "the lease has ended");
        }
        other => panic!("expected Fenced, got {other:?}"),
    }
    assert_eq!(rows(&mut conn, "A"), 0);
    assert_eq!(
        db.row(&name).unwrap(),
        before,
        "a refused fence writes nothing"
    );
}

fn a_connection_to_another_database_is_refused<C: AppConn>(db: &Db) {
    let (_lock_db, locks, _) = setup::<C>(db);
    let name = unique_name("fenced-elsewhere");
    let guard = held(&locks, &name, 30 * SEC);
    let other = db.isolated();
    other.exec(ROWS_TABLE);
    let mut conn = C::connect(&other.url).unwrap();
    let ran = AtomicBool::new(false);
    let attempt = |conn: &mut C| {
        guard
            .transaction(conn, |conn| -> Result<(), BoxError> {
                ran.store(true, Ordering::SeqCst);
                insert(conn, "A", 1)
            })
            .unwrap_err()
    };
    // No lock table there...
    let err = attempt(&mut conn);
    assert!(
        matches!(lock_error(&err), Error::WrongDatabase { name: n } if *n == name),
        "{err}"
    );
    // ... and a lock table without the lock's row.
    other.locks().migrate().unwrap();
    let err = attempt(&mut conn);
    assert!(
        matches!(lock_error(&err), Error::WrongDatabase { .. }),
        "{err}"
    );
    assert!(!ran.load(Ordering::SeqCst));
    assert_eq!(rows(&mut conn, "A"), 0);
    assert!(guard.verify().unwrap());
}

fn a_panic_rolls_back_and_the_lock_stays_usable<C: AppConn>(db: &Db) {
    let (_db, locks, mut conn) = setup::<C>(db);
    let name = unique_name("fenced-panic");
    let guard = held(&locks, &name, 30 * SEC);
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        guard.transaction(&mut conn, |conn| -> Result<(), BoxError> {
            insert(conn, "A", 1)?;
            panic!("boom");
        })
    }));
    assert!(panicked.is_err());
    assert!(guard.verify().unwrap(), "still held");
    assert!(!guard.is_lost());
    // The connection is out of the transaction (nothing nested), and the row is free.
    assert_eq!(rows(&mut conn, "A"), 0);
    guard
        .transaction(&mut conn, |conn| insert(conn, "A", 2))
        .unwrap();
    assert_eq!(rows(&mut conn, "A"), 1);
    // Another handle can take the lock once it is released: no row lock was left behind.
    drop(guard);
    assert!(db_free(&locks, &name));
}

fn db_free(locks: &Locks, name: &str) -> bool {
    locks
        .lock(name)
        .timeout(10 * SEC)
        .acquire()
        .map(|g| g.is_held())
        .unwrap_or(false)
}

fn an_error_rolls_back_and_is_returned<C: AppConn>(db: &Db) {
    let (_db, locks, mut conn) = setup::<C>(db);
    let name = unique_name("fenced-error");
    let guard = held(&locks, &name, 30 * SEC);
    let err = guard
        .transaction(&mut conn, |conn| -> Result<(), BoxError> {
            insert(conn, "A", 1)?;
            Err("the application changed its mind".into())
        })
        .unwrap_err();
    assert_eq!(err.to_string(), "the application changed its mind");
    assert_eq!(rows(&mut conn, "A"), 0);
    assert!(guard.verify().unwrap());
}

fn a_connection_inside_a_transaction_is_refused<C: AppConn>(db: &Db) {
    let (_db, locks, mut conn) = setup::<C>(db);
    let name = unique_name("fenced-nested");
    let guard = held(&locks, &name, 30 * SEC);
    let ran = AtomicBool::new(false);
    let outer: Result<(), BoxError> = diesel::Connection::transaction(&mut conn, |conn| {
        let err = guard
            .transaction(conn, |_| -> Result<(), BoxError> {
                ran.store(true, Ordering::SeqCst);
                Ok(())
            })
            .unwrap_err();
        assert!(
            matches!(
                lock_error(&err),
                Error::InvalidInput {
                    what: "connection",
                    ..
                }
            ),
            "{err}"
        );
        Ok(())
    });
    outer.unwrap();
    assert!(!ran.load(Ordering::SeqCst));
}

fn disabled_locking_runs_a_plain_transaction<C: AppConn>(db: &Db) {
    let (_db, locks, mut conn) = setup::<C>(db);
    locks.set_enabled(false);
    let guard = locks
        .lock(unique_name("fenced-disabled"))
        .acquire()
        .unwrap();
    assert!(!guard.is_held());
    guard
        .transaction(&mut conn, |conn| insert(conn, "A", 1))
        .unwrap();
    assert_eq!(rows(&mut conn, "A"), 1);
    // ... which still rolls back on error.
    let _ = guard.transaction(&mut conn, |conn| -> Result<(), BoxError> {
        insert(conn, "A", 2)?;
        Err("no".into())
    });
    assert_eq!(rows(&mut conn, "A"), 1);
}

/// A fenced transaction twice as long as the lease, with auto-renewal on: it commits,
/// no loss is reported, and a waiter gets the lock only after the guard is released.
fn a_transaction_longer_than_the_lease_commits_and_keeps_the_lock<C: AppConn>(db: &Db) {
    let _timed = common::timed();
    let (db, locks, mut conn) = setup::<C>(db);
    let name = unique_name("fenced-long");
    let lost = Arc::new(AtomicBool::new(false));
    let guard = {
        let lost = Arc::clone(&lost);
        // A 6 s lease renewed every second, each renewal with 4.5 s to get through: the
        // loaded run of c819460 stalled one renewal of a 1 s lease (0.375 s window) past
        // its end, and the loss, reported in time, is not what this test is about.
        locks
            .lock(&name)
            .lock_ttl(Some(6 * SEC))
            .lock_ttl_renew(5 * SEC)
            .lost_lock_cb(move |_| lost.store(true, Ordering::SeqCst))
            .acquire()
            .unwrap()
    };
    let released = Arc::new(AtomicBool::new(false));
    let (started_tx, started) = mpsc::channel();
    let waiter = {
        let (locks, name, released) = (db.locks(), name.clone(), Arc::clone(&released));
        std::thread::spawn(move || {
            started.recv().unwrap();
            let got = locks
                .lock(&name)
                .retry(Some(Duration::from_millis(50)))
                .timeout(60 * SEC)
                .acquire()
                .unwrap();
            (released.load(Ordering::SeqCst), got.token().unwrap())
        })
    };
    guard
        .transaction(&mut conn, |conn| -> Result<(), BoxError> {
            insert(conn, "A", 1)?;
            started_tx.send(()).unwrap();
            // Longer than the lease.
            std::thread::sleep(8 * SEC);
            insert(conn, "A", 2)
        })
        .unwrap();
    assert_eq!(rows(&mut conn, "A"), 2);
    assert!(
        !guard.is_lost(),
        "no loss while the transaction kept everyone out"
    );
    // Renewal resumed: the lease outlives several more renewal periods.
    let stood = db.row(&name).unwrap().expires_at.unwrap();
    db.renewed_past(&name, stood, 10 * SEC).unwrap();
    assert!(guard.verify().unwrap());
    assert!(!lost.load(Ordering::SeqCst), "lost_lock_cb ran");
    released.store(true, Ordering::SeqCst);
    let token = guard.token().unwrap();
    guard.release().unwrap();
    let (after_release, waiter_token) = waiter.join().unwrap();
    assert!(
        after_release,
        "the waiter got the lock while the guard held it"
    );
    assert!(waiter_token > token);
}

/// A is stopped inside its fenced transaction, longer than its lease: B's acquisition
/// waits for that transaction to end, and B's writes see A's.
fn holder_paused_inside_its_transaction_keeps_b_out<C: AppConn>(db: &Db) {
    let _timed = common::timed();
    let (db, _locks, _conn) = setup::<C>(db);
    let seen = paused_inside::<C>(&db, &db);
    assert!(
        !seen.got_while_stopped,
        "B took the lock while A's transaction held it"
    );
    assert_eq!(seen.outcome, "committed");
    // While its transaction held the row, A's lease could not be lost, paused or not.
    assert!(seen.lost.is_empty(), "A reported a loss: {:?}", seen.lost);
    // After the commit, A's 2 s lease must be renewed within 1.5 s of the extension its
    // transaction made last; on a loaded machine it sometimes is not, and the loss is
    // then reported. Either way A released what it held.
    assert!(
        seen.released == "released" || seen.released == "released after loss",
        "{seen:?}"
    );
    assert!(seen.b_token > seen.a_token);
    assert_eq!(seen.b_saw, 2, "B's transaction sees A's rows");
    assert_eq!((seen.a_rows, seen.b_rows), (2, 1));
}

fn lost_updates<C: AppConn>(db: &Db) {
    let db = db.isolated();
    db.exec("CREATE TABLE fenced_counter (id integer NOT NULL PRIMARY KEY, n bigint NOT NULL)");
    db.exec("INSERT INTO fenced_counter (id, n) VALUES (1, 0), (2, 0)");
    db.locks().migrate().unwrap();
    let read = |row: i64| {
        let mut conn = C::connect(&db.url).unwrap();
        conn.number(&format!("SELECT n FROM fenced_counter WHERE id = {row}"))
            .unwrap()
    };
    let plain_run = run_increments(&db, false);
    let plain = read(2);
    let fenced_run = run_increments(&db, true);
    let fenced = read(1);
    println!(
        "lost updates [{:?}]: 4 processes x 100 increments, ttl 0.3 s, every tenth section \
         paused 0.45 s first, 5-15 ms between read and write. Plain writes under the guard: \
         {} Ok ({} errors), counter {plain}: at least {} lost. Fenced: {} Ok, {} refused \
         ({} errors), counter {fenced}",
        db.kind,
        plain_run.ok,
        plain_run.errors,
        plain_run.ok as i64 - plain,
        fenced_run.ok,
        fenced_run.refused,
        fenced_run.errors,
    );
    // An increment whose connection failed may still have committed: it counts in the
    // counter but not in `ok`.
    assert!(
        plain < plain_run.ok as i64,
        "the unfenced run lost no update: this test cannot tell the fence from luck"
    );
    let fenced_ok = fenced_run.ok as i64;
    assert!(
        (fenced_ok..=fenced_ok + fenced_run.errors as i64).contains(&fenced),
        "lost or extra updates with fenced writes"
    );
    assert_eq!(fenced_run.ok + fenced_run.refused + fenced_run.errors, 400);
    assert!(
        fenced_run.refused > 10,
        "only {} transactions were refused",
        fenced_run.refused
    );
}

/// What the helpers of one run printed, summed.
struct Run {
    ok: u64,
    refused: u64,
    errors: u64,
}

/// 4 helpers of 100 increments each: 40 paused sections per run. Each fenced one is refused
/// (its lease ran out during the pause); about one plain one in four loses an update (one
/// in twenty when every fifth section paused: the lock then sat mostly with a sleeper).
fn run_increments(db: &Db, fenced: bool) -> Run {
    let _alone = common::heavy();
    let name = unique_name(if fenced {
        "fenced-count"
    } else {
        "plain-count"
    });
    let mode = if fenced { "fenced" } else { "plain" };
    let mut children: Vec<Child> = (0..4)
        .map(|_| {
            db.helper(&["count", &db.url, &name, mode, "100", "0.3"])
                // One thread each needs few connections, and 8 pools of the default size
                // may hold up to 8 x 20 under load: more than PostgreSQL's 100 (seen in a
                // loaded run: 15 to 23 per helper, most idle since they connected).
                .env("DATABASE_LOCKS_POOL_MAX_SIZE", "2")
                .spawn()
                .unwrap()
        })
        .collect();
    let mut run = Run {
        ok: 0,
        refused: 0,
        errors: 0,
    };
    for child in &mut children {
        let out = output_of(child, 600 * SEC);
        let line = out.lines().find(|l| l.starts_with("ok ")).expect(&out);
        let numbers: Vec<u64> = line.split(' ').filter_map(|w| w.parse().ok()).collect();
        run.ok += numbers[0];
        run.refused += numbers[1];
        run.errors += numbers[2];
    }
    run
}

fn paused_holder_on_one_database<C: AppConn>(db: &Db) {
    let _timed = common::timed();
    let (db, _locks, _conn) = setup::<C>(db);
    paused_holder_is_refused::<C>(&db, &db);
}

/// From async code: the guard, taken with `acquire_async`, and the application's
/// connection move into `spawn_blocking` (diesel is blocking) and come back after the
/// fenced transaction; a guard that was lost meanwhile is refused there as anywhere.
fn async_code_runs_fenced_transactions_in_spawn_blocking<C: AppConn + 'static>(db: &Db) {
    let (db, locks, conn) = setup::<C>(db);
    let name = unique_name("fenced-async");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    runtime.block_on(async {
        let guard = locks
            .lock(&name)
            .lock_ttl(Some(30 * SEC))
            .lost_lock_cb(|_| {})
            .acquire_async()
            .await
            .unwrap();
        let (guard, mut conn, committed) = tokio::task::spawn_blocking(move || {
            let mut conn = conn;
            let committed = guard.transaction(&mut conn, |conn| insert(conn, "A", 1));
            (guard, conn, committed)
        })
        .await
        .unwrap();
        committed.unwrap();
        assert_eq!(rows(&mut conn, "A"), 1);
        // Taken by someone else: the same call refuses, and nothing is written.
        assert!(db.locks().force_release(&name).unwrap());
        let _thief = db.locks().lock(&name).try_acquire().unwrap().unwrap();
        let (guard, mut conn, refused) = tokio::task::spawn_blocking(move || {
            let mut conn = conn;
            let refused = guard.transaction(&mut conn, |conn| insert(conn, "A", 2));
            (guard, conn, refused)
        })
        .await
        .unwrap();
        let err = refused.unwrap_err();
        assert!(matches!(lock_error(&err), Error::Fenced { .. }), "{err}");
        assert_eq!(rows(&mut conn, "A"), 1);
        drop(guard);
    });
}

macro_rules! on_each_connection {
    ($($test:ident),* $(,)?) => {
        #[cfg(feature = "sqlite")]
        mod sqlite {
            $( #[test] fn $test() { super::$test::<diesel::SqliteConnection>(&crate::common::Db::sqlite()) } )*
        }
        #[cfg(feature = "postgres")]
        mod postgres {
            $( #[test] fn $test() { super::$test::<diesel::PgConnection>(&crate::common::Db::postgres()) } )*
        }
        #[cfg(feature = "mysql")]
        mod mysql {
            $( #[test] fn $test() { super::$test::<diesel::MysqlConnection>(&crate::common::Db::mysql()) } )*
        }
    };
}

on_each_connection!(
    commits_while_held_and_renews_the_lease,
    a_stolen_lock_refuses_the_transaction,
    an_expired_lease_refuses_the_transaction,
    a_connection_to_another_database_is_refused,
    a_panic_rolls_back_and_the_lock_stays_usable,
    an_error_rolls_back_and_is_returned,
    a_connection_inside_a_transaction_is_refused,
    disabled_locking_runs_a_plain_transaction,
    a_transaction_longer_than_the_lease_commits_and_keeps_the_lock,
    paused_holder_on_one_database,
    holder_paused_inside_its_transaction_keeps_b_out,
    lost_updates,
    async_code_runs_fenced_transactions_in_spawn_blocking,
);

/// A guard of one backend and a connection of another: refused before any SQL.
#[cfg(all(feature = "sqlite", feature = "postgres"))]
#[test]
fn a_connection_of_another_backend_is_refused() {
    let pg = Db::postgres();
    let locks = pg.locks();
    let guard = held(&locks, &unique_name("fenced-other-backend"), 30 * SEC);
    let sqlite = Db::sqlite();
    let mut conn = diesel::SqliteConnection::connect(&sqlite.url).unwrap();
    let err = guard
        .transaction(&mut conn, |_| -> Result<(), BoxError> { Ok(()) })
        .unwrap_err();
    assert!(
        matches!(lock_error(&err), Error::WrongDatabase { .. }),
        "{err}"
    );
}

/// `#[locked(guard = lock)]`: the body runs fenced transactions under its own lock, and a
/// lock lost before one is refused there like any other.
#[cfg(feature = "sqlite")]
#[test]
fn a_locked_body_runs_fenced_transactions_through_its_guard() {
    use database_locks::locked;
    use diesel::SqliteConnection;

    #[locked(name = name, guard = lock, auto_renew = false, lost_lock_cb = |_| {})]
    fn deposit(
        name: &str,
        conn: &mut SqliteConnection,
        before: impl FnOnce(&str),
    ) -> Result<u64, BoxError> {
        before(lock.name());
        lock.transaction(conn, |conn| insert(conn, "M", 1))?;
        Ok(lock.token().unwrap_or_default())
    }

    let (db, locks, mut conn) = setup::<SqliteConnection>(&Db::sqlite());
    database_locks::set_global(locks);
    let name = unique_name("fenced-locked");
    let token = deposit(&name, &mut conn, |_| {}).unwrap();
    assert!(token >= 1);
    assert_eq!(rows(&mut conn, "M"), 1);
    let err = deposit(&name, &mut conn, |held| db.steal(held, "thief")).unwrap_err();
    assert!(
        matches!(lock_error(&err), Error::Fenced { token: t, .. } if *t == token + 1),
        "{err}"
    );
    assert_eq!(rows(&mut conn, "M"), 1);
}
