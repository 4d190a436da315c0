//! The lock protocol on each backend: acquire, refuse, expire, renew, lose, release.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::{eventually, unique_name, Db};
use database_locks::{Error, Locks, LossCause, Migration};
use database_locks_testkit::on_each_backend;

const SEC: Duration = Duration::from_secs(1);

fn acquire_and_release(db: &Db) {
    let locks = db.locks();
    let name = unique_name("acquire");
    let guard = locks.lock(&name).locked_by("worker-1").acquire().unwrap();
    assert!(guard.is_held());
    assert_eq!(guard.name(), name);
    assert_eq!(guard.locked_by(), Some("worker-1"));
    assert!(guard.token().unwrap() >= 1);
    assert!(guard.verify().unwrap());
    let row = locks.inspect(&name).unwrap().expect("row written");
    assert_eq!(row.state(), "held");
    assert_eq!(row.locked_by.as_deref(), Some("worker-1"));
    assert_eq!(row.token as u64, guard.token().unwrap());
    guard.release().unwrap();
    let row = locks
        .inspect(&name)
        .unwrap()
        .expect("row kept after release");
    assert_eq!(row.state(), "released");
    assert_eq!(row.expires_in, None);
}

fn second_owner_waits_for_release(db: &Db) {
    let locks = db.locks();
    let name = unique_name("second");
    let first = locks.lock(&name).acquire().unwrap();
    assert!(locks.lock(&name).try_acquire().unwrap().is_none());
    let other = db.locks();
    match other.lock(&name).retry(None).acquire() {
        Err(Error::NotAcquired { holder, .. }) => assert_eq!(holder.as_deref(), first.locked_by()),
        other => panic!("expected NotAcquired, got {other:?}"),
    }
    let first_token = first.token().unwrap();
    drop(first);
    let second = other
        .lock(&name)
        .try_acquire()
        .unwrap()
        .expect("free after release");
    assert!(second.token().unwrap() > first_token, "tokens grow");
}

fn expiry_lets_another_owner_in(db: &Db) {
    let locks = db.locks();
    let name = unique_name("expiry");
    let first = locks
        .lock(&name)
        .lock_ttl(Some(SEC))
        .auto_renew(false)
        .acquire()
        .unwrap();
    assert!(locks.lock(&name).try_acquire().unwrap().is_none());
    let second = db
        .locks()
        .lock(&name)
        .timeout(Duration::from_secs(20))
        .acquire()
        .expect("the expired lease is taken over");
    assert!(first.is_lost(), "the first guard knows its lease ran out");
    assert!(!first.verify().unwrap());
    // The old holder's release must not touch the new holder's lease.
    assert!(matches!(first.release(), Err(Error::Lost { .. })));
    assert!(second.verify().unwrap());
    assert_eq!(locks.inspect(&name).unwrap().unwrap().state(), "held");
}

fn same_explicit_owner_reacquires(db: &Db) {
    let locks = db.locks();
    let name = unique_name("same-owner");
    let first = locks
        .lock(&name)
        .locked_by("restarted-worker")
        .acquire()
        .unwrap();
    let second = db
        .locks()
        .lock(&name)
        .locked_by("restarted-worker")
        .try_acquire()
        .unwrap()
        .expect("same owner re-acquires while the lease runs");
    assert!(second.token() > first.token());
    assert!(
        !first.verify().unwrap(),
        "the older guard of that owner no longer validates"
    );
    assert!(second.verify().unwrap());
    // A release by the stale guard (not the row's owner+token any more) changes nothing.
    assert!(matches!(first.release(), Err(Error::Lost { .. })));
    let row = locks.inspect(&name).unwrap().unwrap();
    assert_eq!(row.state(), "held");
    assert_eq!(row.token as u64, second.token().unwrap());
    // Another owner is still refused.
    assert!(locks.lock(&name).try_acquire().unwrap().is_none());
}

fn renewal_keeps_the_lock_past_its_ttl(db: &Db) {
    let locks = db.locks();
    let name = unique_name("renew");
    let lost = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&lost);
    // A 6 s lease renewed every second, held for 8 s: past its ttl, through seven
    // renewals, each with 4.5 s to get through. (A 1 s lease left each renewal 0.45 s, less
    // than the stalls a loaded machine shows; those the library reports as a loss, rightly.)
    let guard = locks
        .lock(&name)
        .lock_ttl(Some(6 * SEC))
        .lock_ttl_renew(5 * SEC)
        .lost_lock_cb(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .acquire()
        .unwrap();
    let until = Instant::now() + 8 * SEC;
    while Instant::now() < until {
        assert!(
            db.locks().lock(&name).try_acquire().unwrap().is_none(),
            "renewed lease refused others"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(guard.verify().unwrap());
    assert!(!guard.is_lost());
    assert_eq!(lost.load(Ordering::SeqCst), 0);
    guard.release().unwrap();
}

fn stolen_lock_is_reported_lost_before_the_lease_ends(db: &Db) {
    let locks = db.locks();
    let name = unique_name("stolen");
    let (tx, rx) = mpsc::channel();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let observer = db.locks();
    let observed_name = name.clone();
    // The renewal that finds the theft comes 2 s in, with 7.5 s to get through before the
    // watchdog would give the lease up as Expired (which a stall on a loaded machine
    // caused in the async twin of this test, with a shorter lease).
    let guard = locks
        .lock(&name)
        .lock_ttl(Some(Duration::from_secs(10)))
        .lock_ttl_renew(Duration::from_secs(8))
        .lost_lock_cb(move |lost| {
            counted.fetch_add(1, Ordering::SeqCst);
            // By the database's clock, how much of the original lease was left.
            let left = observer
                .inspect(&observed_name)
                .unwrap()
                .unwrap()
                .expires_in;
            let _ = tx.send((lost.clone(), left));
        })
        .acquire()
        .unwrap();
    db.steal(&name, "thief");
    let (lost, left) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("lost_lock_cb ran");
    assert_eq!(lost.name, name);
    assert_eq!(lost.token, guard.token().unwrap());
    assert_eq!(lost.cause, LossCause::Taken);
    assert!(lost.expires_by.is_some(), "a lease with a ttl has an end");
    println!(
        "stolen [{:?}]: reported with {left:?} s of the original lease left",
        db.kind
    );
    assert!(
        left.unwrap() > 0.0,
        "reported with {left:?} s of the original lease left"
    );
    assert!(guard.is_lost());
    assert!(!guard.verify().unwrap());
    // Once, not once per renewal period.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(matches!(guard.release(), Err(Error::Lost { .. })));
    assert_eq!(
        locks.inspect(&name).unwrap().unwrap().locked_by.as_deref(),
        Some("thief")
    );
}

/// A closure that ran while its lock was lost is not a clean success: `run` returns the
/// loss (it used to log the release error and return the value).
fn run_reports_a_loss_while_the_closure_ran(db: &Db) {
    let locks = db.locks();
    let name = unique_name("run-lost");
    let (tx, rx) = mpsc::channel();
    let outcome = locks
        .lock(&name)
        .lock_ttl(Some(Duration::from_secs(3)))
        .lock_ttl_renew(Duration::from_millis(1500))
        .lost_lock_cb(move |lost| {
            let _ = tx.send(lost.cause);
        })
        .run(|| {
            db.steal(&name, "thief");
            // The loss is known before the closure returns.
            rx.recv_timeout(Duration::from_secs(10))
                .expect("lost_lock_cb ran while the closure ran")
        });
    match outcome {
        Err(Error::Lost { name: lost, .. }) => assert_eq!(lost, name),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        locks.inspect(&name).unwrap().unwrap().locked_by.as_deref(),
        Some("thief"),
        "the thief's row is left alone"
    );
    // Nothing lost: the value comes back.
    assert_eq!(locks.lock(unique_name("run-ok")).run(|| 7).unwrap(), 7);
}

fn panic_in_the_critical_section_releases(db: &Db) {
    let locks = db.locks();
    let name = unique_name("panic");
    let (l, n) = (locks.clone(), name.clone());
    let outcome = std::thread::spawn(move || {
        let _guard = l.lock(&n).acquire().unwrap();
        panic!("boom inside the critical section");
    })
    .join();
    assert!(outcome.is_err(), "the thread panicked");
    assert_eq!(locks.inspect(&name).unwrap().unwrap().state(), "released");
    assert!(db.locks().lock(&name).try_acquire().unwrap().is_some());

    let result = std::panic::catch_unwind(|| {
        locks.lock(&name).run(|| panic!("boom in run")).unwrap();
    });
    assert!(result.is_err());
    assert_eq!(locks.inspect(&name).unwrap().unwrap().state(), "released");
}

fn timeout_gives_up_with_a_timeout_error(db: &Db) {
    let locks = db.locks();
    let name = unique_name("timeout");
    let _holder = locks.lock(&name).locked_by("holder").acquire().unwrap();
    let timeout = Duration::from_millis(700);
    let started = Instant::now();
    match db
        .locks()
        .lock(&name)
        .timeout(timeout)
        .retry(Some(Duration::from_millis(100)))
        .acquire()
    {
        Err(Error::Timeout { waited, holder, .. }) => {
            assert!(waited >= timeout, "waited {waited:?}");
            assert!(
                started.elapsed() < timeout + Duration::from_secs(10),
                "gave up"
            );
            assert_eq!(holder.as_deref(), Some("holder"));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

fn lock_at_least_for_keeps_the_lock_after_release(db: &Db) {
    let locks = db.locks();
    let name = unique_name("at-least");
    let guard = locks
        .lock(&name)
        .lock_at_least_for(Duration::from_secs(2))
        .acquire()
        .unwrap();
    guard.release().unwrap();
    let row = locks.inspect(&name).unwrap().unwrap();
    assert_eq!(row.state(), "held", "kept after an early release");
    // Kept for what is left of the 2 s (SQLite's clock counts whole milliseconds).
    assert!(row.expires_in.unwrap() <= 2.01, "{:?}", row.expires_in);
    assert!(locks.lock(&name).try_acquire().unwrap().is_none());
    let later = locks
        .lock(&name)
        .timeout(Duration::from_secs(20))
        .acquire()
        .unwrap();
    assert!(later.is_held());
    drop(later);
    // Released after the minimum: free at once.
    let quick = locks
        .lock(&name)
        .lock_at_least_for(Duration::from_millis(100))
        .acquire()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    quick.release().unwrap();
    assert_eq!(locks.inspect(&name).unwrap().unwrap().state(), "released");
}

fn disabled_mode_runs_without_a_lock(db: &Db) {
    let locks = Locks::new(db.config().enabled(false)).unwrap();
    let name = unique_name("disabled");
    let a = locks.lock(&name).acquire().unwrap();
    let b = locks
        .lock(&name)
        .try_acquire()
        .unwrap()
        .expect("no exclusion when disabled");
    assert!(!a.is_held() && !b.is_held());
    assert_eq!(a.token(), None);
    assert_eq!(a.locked_by(), None);
    assert!(!a.is_lost());
    drop((a, b));
    assert_eq!(
        db.locks().inspect(&name).unwrap(),
        None,
        "the table is untouched"
    );
    // Turned on at run time, the same handle locks.
    locks.set_enabled(true);
    let c = locks.lock(&name).acquire().unwrap();
    assert!(c.is_held());
    assert!(locks.lock(&name).try_acquire().unwrap().is_none());
}

fn status_file_shows_each_state(db: &Db) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("status");
    let read = || std::fs::read_to_string(&path).unwrap_or_default();
    let locks = Locks::new(db.config().status_file(&path)).unwrap();
    assert_eq!(read(), "0", "idle before acquiring");
    let name = unique_name("status");
    let holder = db.locks().lock(&name).acquire().unwrap();
    // The waiter keeps the lock until the test has seen "2", however long that takes.
    let (seen, until_seen) = mpsc::channel::<()>();
    let waiter = {
        let (locks, name) = (locks.clone(), name.clone());
        std::thread::spawn(move || {
            let guard = locks
                .lock(&name)
                .retry(Some(Duration::from_millis(50)))
                .acquire()
                .unwrap();
            let _ = until_seen.recv();
            drop(guard);
        })
    };
    assert!(
        eventually(10 * SEC, || read() == "1"),
        "1 while waiting, saw {:?}",
        read()
    );
    drop(holder);
    assert!(
        eventually(10 * SEC, || read() == "2"),
        "2 while held, saw {:?}",
        read()
    );
    drop(seen);
    waiter.join().unwrap();
    assert_eq!(read(), "0", "0 after release");
}

fn status_file_write_failure_is_not_fatal(db: &Db) {
    let locks = Locks::new(db.config().status_file("/nonexistent-dir/status")).unwrap();
    let guard = locks.lock(unique_name("status-fail")).acquire().unwrap();
    assert!(guard.is_held());
}

fn bad_input_is_a_typed_error_and_touches_nothing(db: &Db) {
    let isolated = db.isolated();
    let locks = isolated.locks();
    locks.migrate().unwrap();
    let before = locks.list().unwrap();
    let long = "x".repeat(256);
    let cases: Vec<(&str, database_locks::LockBuilder)> = vec![
        ("empty name", locks.lock("")),
        ("256 characters", locks.lock(long.as_str())),
        ("NUL byte", locks.lock("a\0b")),
        ("zero ttl", locks.lock("ok").lock_ttl(Some(Duration::ZERO))),
        (
            "huge ttl",
            locks
                .lock("ok")
                .lock_ttl(Some(Duration::from_secs(u64::MAX / 4))),
        ),
        (
            "renew not below ttl",
            locks.lock("ok").lock_ttl(Some(SEC)).lock_ttl_renew(SEC),
        ),
        (
            "zero renew margin",
            locks.lock("ok").lock_ttl_renew(Duration::ZERO),
        ),
        ("empty owner", locks.lock("ok").locked_by("")),
        (
            "huge at-least",
            locks
                .lock("ok")
                .lock_at_least_for(Duration::from_secs(u64::MAX / 4)),
        ),
    ];
    for (what, builder) in cases {
        match builder.acquire() {
            Err(Error::InvalidInput { .. }) => {}
            other => panic!("{what}: expected InvalidInput, got {other:?}"),
        }
    }
    assert_eq!(locks.list().unwrap(), before, "the table is as it was");
    // 255 non-ASCII characters fit.
    let wide = "é".repeat(255);
    assert!(locks.lock(&wide).acquire().unwrap().is_held());
    // Names are bound, never spliced into SQL.
    let evil = "x'; DROP TABLE database_locks_lock; --";
    locks.lock(evil).acquire().unwrap().release().unwrap();
    assert!(locks.inspect(evil).unwrap().is_some());
}

fn reacquiring_on_the_same_thread_does_not_hang(db: &Db) {
    let locks = db.locks();
    let name = unique_name("reentrant");
    let guard = locks.lock(&name).acquire().unwrap();
    // A guard may have moved to another thread, so the thread that took it may wait for
    // it: a timeout ends the wait (a `#[locked]` body, which cannot move, is refused at
    // once: tests/macros.rs).
    assert!(matches!(
        locks
            .lock(&name)
            .timeout(Duration::from_millis(300))
            .acquire(),
        Err(Error::Timeout { .. })
    ));
    // Moved to another thread and released there, it is the waiter's.
    let token = guard.token();
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        guard.release().unwrap();
    });
    let again = locks
        .lock(&name)
        .timeout(Duration::from_secs(30))
        .acquire()
        .unwrap();
    assert!(again.token() > token);
    releaser.join().unwrap();
    drop(again);
    // With the same explicit owner it is a deliberate re-acquisition.
    let _a = locks
        .lock(format!("{name}-2"))
        .locked_by("me")
        .acquire()
        .unwrap();
    assert!(locks
        .lock(format!("{name}-2"))
        .locked_by("me")
        .acquire()
        .is_ok());
}

fn missing_table_with_auto_migrate_off_is_an_error(db: &Db) {
    let isolated = db.isolated();
    let locks = Locks::new(isolated.config().auto_migrate(false)).unwrap();
    assert!(matches!(
        locks.lock("x").acquire(),
        Err(Error::MissingTable)
    ));
    assert_eq!(locks.migrate().unwrap(), Migration::Created);
    assert_eq!(locks.migrate().unwrap(), Migration::UpToDate);
    assert!(locks.lock("x").acquire().unwrap().is_held());
}

fn eight_threads_exclude_each_other(db: &Db) {
    let locks = db.locks();
    let name = unique_name("threads");
    let counter = Arc::new(AtomicU64::new(0));
    let inside = Arc::new(AtomicBool::new(false));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (locks, name) = (locks.clone(), name.clone());
            let (counter, inside, overlaps) = (counter.clone(), inside.clone(), overlaps.clone());
            std::thread::spawn(move || {
                for _ in 0..100 {
                    let guard = locks
                        .lock(&name)
                        .retry(Some(Duration::from_millis(20)))
                        .acquire()
                        .unwrap();
                    if inside.swap(true, Ordering::SeqCst) {
                        overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                    // A read-modify-write that loses updates unless the lock excludes.
                    let seen = counter.load(Ordering::SeqCst);
                    std::thread::yield_now();
                    counter.store(seen + 1, Ordering::SeqCst);
                    inside.store(false, Ordering::SeqCst);
                    guard.release().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(overlaps.load(Ordering::SeqCst), 0);
    assert_eq!(counter.load(Ordering::SeqCst), 800);
}

fn django_table_is_upgraded_and_shared(db: &Db) {
    let isolated = db.isolated();
    // Django's DDL, as `manage.py sqlmigrate database_locks 0001` prints it.
    match db.kind {
        database_locks::BackendKind::Postgres => {
            isolated.exec(r#"CREATE TABLE "database_locks_lock" ("id" integer NOT NULL PRIMARY KEY GENERATED BY DEFAULT AS IDENTITY, "name" varchar(255) NOT NULL UNIQUE, "locked_by" text NULL, "expires_at" timestamp with time zone NULL)"#);
            isolated.exec(r#"CREATE INDEX "database_locks_lock_name_b8cfc81a_like" ON "database_locks_lock" ("name" varchar_pattern_ops)"#);
        }
        database_locks::BackendKind::Mysql => {
            isolated.exec("CREATE TABLE `database_locks_lock` (`id` integer AUTO_INCREMENT NOT NULL PRIMARY KEY, `name` varchar(255) NOT NULL UNIQUE, `locked_by` longtext NULL, `expires_at` datetime(6) NULL)");
        }
        _ => {
            isolated.exec(r#"CREATE TABLE "database_locks_lock" ("id" integer NOT NULL PRIMARY KEY AUTOINCREMENT, "name" varchar(255) NOT NULL UNIQUE, "locked_by" text NULL, "expires_at" datetime NULL)"#);
        }
    }
    // Rows the way the seed writes them: one held by a Django process, one released.
    isolated.exec(&format!(
        "INSERT INTO database_locks_lock (name, locked_by, expires_at) VALUES ('django-held', 'web-1.4242', {})",
        isolated.now_plus(60)
    ));
    isolated.exec("INSERT INTO database_locks_lock (name, locked_by, expires_at) VALUES ('django-free', 'web-1.4242', NULL)");

    let off = Locks::new(isolated.config().auto_migrate(false)).unwrap();
    assert!(matches!(
        off.lock("django-free").acquire(),
        Err(Error::Schema { .. })
    ));
    let locks = isolated.locks();
    assert_eq!(locks.migrate().unwrap(), Migration::Upgraded);
    assert_eq!(locks.migrate().unwrap(), Migration::UpToDate);

    match locks.lock("django-held").retry(None).acquire() {
        Err(Error::NotAcquired { holder, .. }) => assert_eq!(holder.as_deref(), Some("web-1.4242")),
        other => panic!("a Django holder must keep its lock: {other:?}"),
    }
    let guard = locks.lock("django-free").acquire().unwrap();
    assert_eq!(guard.token(), Some(1));
    // A Django process sees our lease as an active lock: not NULL and in the future.
    let active = isolated.exec(&format!(
        "UPDATE database_locks_lock SET name = name WHERE name = 'django-free' AND expires_at IS NOT NULL AND expires_at > {}",
        isolated.now_plus(0)
    ));
    assert_eq!(active, 1);
    drop(guard);
    // ... and takes the released row the way the seed does; we are then refused.
    isolated.exec(&format!(
        "UPDATE database_locks_lock SET locked_by = 'web-2.77', expires_at = {} WHERE name = 'django-free'",
        isolated.now_plus(60)
    ));
    assert!(locks.lock("django-free").try_acquire().unwrap().is_none());
}

// The PostgreSQL runs a second time through PgBouncer in transaction mode (none of these
// kills a backend).
on_each_backend!(
    pgbouncer;
    acquire_and_release,
    second_owner_waits_for_release,
    expiry_lets_another_owner_in,
    same_explicit_owner_reacquires,
    renewal_keeps_the_lock_past_its_ttl,
    stolen_lock_is_reported_lost_before_the_lease_ends,
    run_reports_a_loss_while_the_closure_ran,
    panic_in_the_critical_section_releases,
    timeout_gives_up_with_a_timeout_error,
    lock_at_least_for_keeps_the_lock_after_release,
    disabled_mode_runs_without_a_lock,
    status_file_shows_each_state,
    status_file_write_failure_is_not_fatal,
    bad_input_is_a_typed_error_and_touches_nothing,
    reacquiring_on_the_same_thread_does_not_hang,
    missing_table_with_auto_migrate_off_is_an_error,
    eight_threads_exclude_each_other,
    django_table_is_upgraded_and_shared,
);
