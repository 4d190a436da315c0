//! The behaviour behind the performance targets, against real databases: who is woken by
//! a release, and how renewals are batched. Nothing here asserts a duration; where a test
//! must prove that a wake-up came from a release and not from polling, the waiter polls
//! only once an hour and the test gives up long before.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{eventually, unique_name, Db};
use database_locks::{Config, LockGuard, Locks};
use database_locks_testkit::on_each_backend;
use diesel::connection::{set_default_instrumentation, Instrumentation, InstrumentationEvent};

/// A poll period no test waits for.
const HOUR: Duration = Duration::from_secs(3600);
/// How long a test waits for something that should happen at once.
const BOUND: Duration = Duration::from_secs(60);

/// The text (SQL and binds) of every statement sent by any connection of this test
/// process that mentions a string a test watches.
static WATCHED: Mutex<Vec<String>> = Mutex::new(Vec::new());
static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn capture() -> Option<Box<dyn Instrumentation>> {
    Some(Box::new(|event: InstrumentationEvent<'_>| {
        if let InstrumentationEvent::StartQuery { query, .. } = event {
            let text = query.to_string();
            let watched = WATCHED.lock().unwrap();
            if watched.iter().any(|w| text.contains(w.as_str())) {
                SEEN.lock().unwrap().push(text);
            }
        }
    }))
}

/// Starts recording the statements that mention `what`; handles made afterwards are
/// instrumented.
fn watch(what: &str) {
    set_default_instrumentation(capture).expect("instrumentation");
    WATCHED.lock().unwrap().push(what.to_owned());
}

fn statements_mentioning(what: &str) -> Vec<String> {
    SEEN.lock()
        .unwrap()
        .iter()
        .filter(|s| s.contains(what))
        .cloned()
        .collect()
}

/// Whether `sql` is the SQLite listener's read of which waited-for rows are free (after a
/// commit by another connection): a read, not an attempt.
fn is_listener_read(sql: &str) -> bool {
    sql.trim_start()
        .starts_with("SELECT l.name AS name FROM json_each(")
}

/// Whether `sql` is the batched renewal statement of one of the backends (`DESIGN.md`).
fn is_renewal(sql: &str) -> bool {
    sql.trim_start().starts_with("UPDATE database_locks_lock")
        && ["unnest(", "json_each(", "JSON_TABLE("]
            .iter()
            .any(|f| sql.contains(f))
}

/// A release through a handle hands the lock to a waiter of the same handle at once: the
/// waiter polls once an hour and its holder's lease lasts ten minutes, and it still gets
/// the lock within the test's bound.
fn release_wakes_a_same_handle_waiter(db: &Db) {
    let locks = db.locks();
    let name = unique_name("wake-same");
    let holder = locks
        .lock(&name)
        .lock_ttl(Some(Duration::from_secs(600)))
        .acquire()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let waiter = {
        let (locks, name) = (locks.clone(), name.clone());
        thread::spawn(move || {
            let got = locks.lock(&name).retry(Some(HOUR)).acquire();
            let _ = tx.send(got.map(|guard| guard.token()));
        })
    };
    assert!(
        eventually(BOUND, || common::in_progress(&locks) == 1),
        "the waiter never started waiting"
    );
    let held_token = holder.token();
    holder.release().unwrap();
    let got = rx
        .recv_timeout(BOUND)
        .expect("the waiter was not woken by the release")
        .expect("the waiter's acquisition failed");
    assert!(got > held_token, "the waiter holds a newer token");
    waiter.join().unwrap();
}

/// A release wakes one waiter, not all of them: eight waiters of one handle take the lock
/// in turn with one acquire and one release each, and not one refused attempt.
fn a_release_wakes_one_waiter_not_all(db: &Db) {
    let name = unique_name("no-herd");
    watch(&name);
    let locks = db.locks();
    let holder = locks
        .lock(&name)
        .lock_ttl(Some(Duration::from_secs(600)))
        .acquire()
        .unwrap();
    let waiters = 8;
    let done = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..waiters)
        .map(|_| {
            let (locks, name, done) = (locks.clone(), name.clone(), Arc::clone(&done));
            thread::spawn(move || {
                let guard = locks.lock(&name).retry(Some(HOUR)).acquire().unwrap();
                guard.release().unwrap();
                done.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    assert!(
        eventually(BOUND, || common::in_progress(&locks) == waiters),
        "the waiters never all started waiting"
    );
    let before = statements_mentioning(&name).len();
    holder.release().unwrap();
    assert!(
        eventually(BOUND, || done.load(Ordering::SeqCst) == waiters),
        "the waiters did not all get the lock in turn"
    );
    for t in threads {
        t.join().unwrap();
    }
    // The holder's release, then per waiter the statement that took the lock and the
    // release (MySQL's token read does not name the lock). A herd would add refused
    // attempts, each naming the lock. The SQLite listener's reads name it too: they are
    // not attempts.
    let after: Vec<String> = statements_mentioning(&name)[before..]
        .iter()
        .filter(|s| !is_listener_read(s))
        .cloned()
        .collect();
    assert_eq!(
        after.len(),
        1 + 2 * waiters,
        "statements naming the lock after the release: {after:#?}"
    );
}

/// The renewal thread renews the leases it holds together: forty locks acquired together
/// are renewed by a few statements, not forty.
fn renewer_renews_many_locks_in_one_statement(db: &Db) {
    let prefix = unique_name("renew-many");
    watch(&prefix);
    let locks = db.locks();
    let n = 40;
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}/{i}/")).collect();
    // Renewed every 4 s; a renewal takes along every lease due in the next 2 s.
    let guards: Vec<LockGuard> = names
        .iter()
        .map(|name| {
            locks
                .lock(name)
                .lock_ttl(Some(Duration::from_secs(8)))
                .lock_ttl_renew(Duration::from_secs(4))
                // Not the default (exit): a loss shows in `is_lost` below.
                .lost_lock_cb(|_| {})
                .acquire()
                .unwrap()
        })
        .collect();
    let renewals = || -> Vec<String> {
        statements_mentioning(&prefix)
            .into_iter()
            .filter(|s| is_renewal(s))
            .collect()
    };
    let renewed = |name: &str| renewals().iter().any(|s| s.contains(name));
    assert!(
        eventually(BOUND, || names.iter().all(|name| renewed(name))),
        "not every lease was renewed"
    );
    let statements = renewals();
    let largest = statements
        .iter()
        .map(|s| {
            names
                .iter()
                .filter(|name| s.contains(name.as_str()))
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(
        largest >= n / 2,
        "the largest renewal carried {largest} of {n} leases: {statements:#?}"
    );
    assert!(
        statements.len() <= 4,
        "{} renewal statements for {n} leases",
        statements.len()
    );
    for guard in &guards {
        assert!(!guard.is_lost());
        assert!(guard.verify().unwrap());
    }
}

/// One stolen lease among many renewed together is reported lost, and only that one: the
/// others stay held and keep being renewed.
fn a_lost_lock_among_many_is_reported_for_that_lock_alone(db: &Db) {
    let locks = db.locks();
    let prefix = unique_name("lost-one");
    let lost: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let names: Vec<String> = (0..20).map(|i| format!("{prefix}/{i}/")).collect();
    let guards: Vec<LockGuard> = names
        .iter()
        .map(|name| {
            let lost = Arc::clone(&lost);
            locks
                .lock(name)
                .lock_ttl(Some(Duration::from_secs(4)))
                .lock_ttl_renew(Duration::from_secs(2))
                .lost_lock_cb(move |l| {
                    lost.lock()
                        .unwrap()
                        .push((l.name.clone(), l.reason.clone()))
                })
                .acquire()
                .unwrap()
        })
        .collect();
    let stolen = &names[7];
    db.steal(stolen, "thief");
    assert!(
        eventually(BOUND, || !lost.lock().unwrap().is_empty()),
        "the stolen lock was never reported lost"
    );
    // Every other lease is renewed after the loss: its expiry (the database's clock) moves
    // past the one that stood when the loss was seen.
    let others: Vec<&String> = names.iter().filter(|n| *n != stolen).collect();
    let at_loss: Vec<i64> = others
        .iter()
        .map(|n| db.row(n).and_then(|r| r.expires_at).expect("held"))
        .collect();
    for (name, stood) in others.iter().zip(&at_loss) {
        if let Err(e) = db.renewed_past(name, *stood, BOUND) {
            panic!("{name} was not renewed after the loss: {e}");
        }
    }
    let reported = lost.lock().unwrap().clone();
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert_eq!(&reported[0].0, stolen);
    assert!(reported[0].1.contains("another owner"), "{reported:?}");
    for (name, guard) in names.iter().zip(&guards) {
        if name == stolen {
            assert!(guard.is_lost());
        } else {
            assert!(!guard.is_lost(), "{name} reported lost");
            assert!(guard.verify().unwrap(), "{name} no longer held");
        }
    }
}

// Through PgBouncer too: none of these needs notifications from another process.
on_each_backend!(
    pgbouncer;
    release_wakes_a_same_handle_waiter,
    a_release_wakes_one_waiter_not_all,
    renewer_renews_many_locks_in_one_statement,
    a_lost_lock_among_many_is_reported_for_that_lock_alone,
);

/// PostgreSQL: a release in this process wakes a waiter in another process through
/// `NOTIFY`. The waiter polls once an hour and the holder's lease lasts ten minutes.
#[cfg(feature = "postgres")]
#[test]
fn notify_wakes_a_waiter_in_another_process() {
    let db = Db::postgres();
    let locks = db.locks();
    let name = unique_name("notify-wakes");
    let holder = locks
        .lock(&name)
        .lock_ttl(Some(Duration::from_secs(600)))
        .acquire()
        .unwrap();
    let tag = format!("dl_notify_{}", std::process::id());
    let mut child = Command::new(env!("CARGO_BIN_EXE_lock-helper"))
        .args(["wait", &db.tagged_url(&tag), &name, "3600"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn lock-helper");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    // The waiter listens once it has been refused: its listener connection's last
    // statement is the LISTEN.
    let listening = format!(
        "SELECT 1 FROM pg_stat_activity WHERE application_name = '{tag}' \
         AND query = 'LISTEN database_locks_lock'"
    );
    if !eventually(BOUND, || db.exec(&listening) == 1) {
        let _ = child.kill();
        panic!("the waiting process never listened");
    }
    holder.release().unwrap();
    let line = rx.recv_timeout(BOUND);
    if !matches!(&line, Ok(l) if l.starts_with("acquired")) {
        let _ = child.kill();
        panic!("the waiting process was not woken by the release: {line:?}");
    }
    assert!(child.wait().unwrap().success());
}

/// PostgreSQL with notifications off (as behind PgBouncer in transaction mode): waiting
/// still works, by polling.
#[cfg(feature = "postgres")]
#[test]
fn without_notifications_waiters_poll() {
    let db = Db::postgres();
    let name = unique_name("notify-off");
    let holder = db
        .locks()
        .lock(&name)
        .lock_ttl(Some(Duration::from_secs(600)))
        .acquire()
        .unwrap();
    let tag = format!("dl_notify_off_{}", std::process::id());
    let waiting = Locks::new(Config::new(db.tagged_url(&tag)).notify(false)).unwrap();
    let (tx, rx) = mpsc::channel();
    {
        let (waiting, name) = (waiting.clone(), name.clone());
        thread::spawn(move || {
            let got = waiting
                .lock(&name)
                .retry(Some(Duration::from_millis(200)))
                .acquire();
            let _ = tx.send(got.map(|g| g.token()));
        });
    }
    assert!(eventually(BOUND, || common::in_progress(&waiting) == 1));
    holder.release().unwrap();
    rx.recv_timeout(BOUND)
        .expect("the waiter never got the lock")
        .expect("the waiter's acquisition failed");
    let listening = format!(
        "SELECT 1 FROM pg_stat_activity WHERE application_name = '{tag}' \
         AND query LIKE 'LISTEN%'"
    );
    assert_eq!(
        db.exec(&listening),
        0,
        "a handle with notify(false) listened"
    );
}
