//! PostgreSQL through PgBouncer in transaction pooling mode (`scripts/pgbouncer start`:
//! 127.0.0.1:26432, 3 server connections shared by every client).
//!
//! `tests/lock.rs` runs the whole runtime suite a second time through PgBouncer; this
//! file adds what is particular to a transaction pooler: exclusion between processes,
//! hand-off between processes, no session state left on the server connections, the
//! automatic fallback from `LISTEN` to polling and its log lines.
//!
//! The tests run one at a time (`SERIAL`): one of them leaves a `LISTEN` on a server
//! connection on purpose, and another checks that none is there.

mod common;

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use common::{eventually, expect_line, lines, run_sections, unique_name, wait_exit, Db};
use database_locks::{Config, Locks};
use diesel::connection::SimpleConnection;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel::sql_types::BigInt;
use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl};

/// Server connections PgBouncer opens for one database (`max_db_connections`).
const SERVERS: usize = 3;

fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Runs `f` on every server connection PgBouncer has for the database: one client per
/// server, each inside a transaction, so that each is pinned to a server of its own
/// (checked) while `f` runs on it. Returns what `f` returned, per server.
fn on_every_server<T>(db: &Db, mut f: impl FnMut(&mut PgConnection) -> T) -> Vec<T> {
    let mut clients: Vec<PgConnection> = (0..SERVERS)
        .map(|_| PgConnection::establish(&db.url).expect("a client of PgBouncer"))
        .collect();
    let mut pids: Vec<i64> = clients
        .iter_mut()
        .map(|client| {
            client.batch_execute("BEGIN").expect("BEGIN");
            count(client, "SELECT CAST(pg_backend_pid() AS bigint) AS n")
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(
        pids.len(),
        SERVERS,
        "each client must be pinned to its own server"
    );
    let results = clients.iter_mut().map(&mut f).collect();
    for client in &mut clients {
        client.batch_execute("COMMIT").expect("COMMIT");
    }
    results
}

/// The `bigint` column `n` of the first row of `sql`.
fn count(client: &mut PgConnection, sql: &str) -> i64 {
    let rows: Vec<Count> = diesel::sql_query(sql).load(client).expect(sql);
    rows.first().map_or(0, |c| c.n)
}

/// Named statements and `LISTEN` registrations left on PgBouncer's server connections.
fn session_state(db: &Db) -> (Vec<i64>, Vec<i64>) {
    on_every_server(db, |client| {
        (
            count(
                client,
                "SELECT COUNT(*) AS n FROM pg_prepared_statements WHERE name LIKE '\\_\\_diesel\\_stmt\\_%'",
            ),
            count(client, "SELECT COUNT(*) AS n FROM pg_listening_channels()"),
        )
    })
    .into_iter()
    .unzip()
}

/// Processes through PgBouncer exclude each other: 8 processes x 100 sections, exact
/// count, no overlap.
#[test]
fn processes_exclude_each_other_through_pgbouncer() {
    let _serial = serial();
    let db = Db::pgbouncer();
    run_sections(&[&db], 8, 100, "pgbouncer-mutex");
}

/// A holder in another process releases; a waiter here, behind PgBouncer (so polling at
/// its retry period of 0.2 s), gets the lock, with the next fencing token.
#[test]
fn hand_off_between_processes_through_pgbouncer() {
    let _serial = serial();
    let db = Db::pgbouncer();
    let locks = db.locks();
    let mut latencies = Vec::new();
    for round in 0..5 {
        let name = unique_name("pgbouncer-handoff");
        // Holds of 0.50, 0.57, ... s: the release falls at a different point of the
        // waiter's 0.2 s polling period each round.
        let hold = format!("{:.2}", 0.5 + 0.07 * f64::from(round));
        let mut holder = db
            .helper(&["hold", &db.url, &name, "10", "2", &hold])
            .spawn()
            .unwrap();
        let rx = lines(holder.stdout.take().unwrap());
        let token: u64 = expect_line(&rx, "acquired", Duration::from_secs(30))
            .trim_start_matches("acquired ")
            .parse()
            .unwrap();
        let (tx, released) = std::sync::mpsc::channel();
        let watcher = std::thread::spawn(move || {
            expect_line(&rx, "released", Duration::from_secs(30));
            let _ = tx.send(Instant::now());
        });
        let guard = locks
            .lock(name.as_str())
            .retry(Some(Duration::from_millis(200)))
            .timeout(Duration::from_secs(30))
            .acquire()
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let acquired = Instant::now();
        watcher.join().unwrap();
        let released = released.recv().unwrap();
        assert!(acquired >= released, "round {round}: acquired while held");
        assert_eq!(guard.token(), Some(token + 1), "round {round}");
        assert!(wait_exit(&mut holder, Duration::from_secs(30)).success());
        latencies.push(acquired - released);
        guard.release().unwrap();
    }
    latencies.sort();
    println!(
        "hand-off through PgBouncer (polling, retry 0.2 s): min {:?}, median {:?}, max {:?}",
        latencies[0],
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
}

/// With transaction pooling on, a workload of acquisitions, renewals, waits and releases
/// leaves no named statement and no `LISTEN` on any server connection.
#[test]
fn no_session_state_is_left_on_server_connections() {
    let _serial = serial();
    let db = Db::pgbouncer();
    clear_session_state(&db);
    let locks = db.locks();
    let name = unique_name("pgbouncer-state");
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (locks, name) = (locks.clone(), name.clone());
            std::thread::spawn(move || {
                for _ in 0..5 {
                    let guard = locks
                        .lock(name.as_str())
                        .lock_ttl(Some(Duration::from_secs(1)))
                        .lock_ttl_renew(Duration::from_millis(700))
                        .retry(Some(Duration::from_millis(50)))
                        .acquire()
                        .unwrap();
                    std::thread::sleep(Duration::from_millis(40));
                    guard.release().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(locks.lock(name.as_str()).try_acquire().unwrap().is_some());
    let (prepared, listening) = session_state(&db);
    assert_eq!(prepared, vec![0; SERVERS], "named statements left behind");
    assert_eq!(listening, vec![0; SERVERS], "LISTEN left behind");
}

/// An application's own pool works through PgBouncer once the handle is told: diesel's
/// statement cache, on by default, is turned off on each checkout. (r2d2's check on
/// checkout runs before that and uses a named statement, so an application behind
/// PgBouncer turns that check off or turns the cache off in a connection customizer.)
#[test]
fn an_application_pool_works_through_pgbouncer() {
    let _serial = serial();
    let db = Db::pgbouncer();
    clear_session_state(&db);
    let pool = Pool::builder()
        .max_size(4)
        .test_on_check_out(false)
        .build(ConnectionManager::<PgConnection>::new(&db.url))
        .unwrap();
    let locks = Locks::from_pool(pool, Config::new(&db.url).transaction_pooling(true));
    let name = unique_name("pgbouncer-app-pool");
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (locks, name) = (locks.clone(), name.clone());
            std::thread::spawn(move || {
                for _ in 0..10 {
                    let guard = locks
                        .lock(name.as_str())
                        .retry(Some(Duration::from_millis(20)))
                        .acquire()
                        .unwrap();
                    assert!(guard.verify().unwrap());
                    guard.release().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let (prepared, _) = session_state(&db);
    assert_eq!(prepared, vec![0; SERVERS], "named statements left behind");
}

/// Without the setting, the listener finds by itself that notifications never arrive
/// through PgBouncer: it says so once (a warning) and the waiters poll, and still get the
/// lock. Directly on PostgreSQL the same check finds them delivered. With transaction
/// pooling on, nothing listens and one line says that waiters poll.
#[test]
fn waiting_falls_back_to_polling_and_says_so_once() {
    let _serial = serial();
    let logs = capture_logs();
    let pgbouncer = Db::pgbouncer();

    // Notifications on, named statements off: the listener's check fails.
    let listening = Locks::new(
        pgbouncer
            .config()
            .transaction_pooling(false)
            .prepared_statements(false),
    )
    .unwrap();
    let holder = pgbouncer.locks();
    let before = logs.count(NOT_DELIVERED);
    let outcome = wait_behind(&holder, &listening, |locks| {
        format!("{locks:?}").contains("notifications: NotDelivered")
    });
    assert!(
        outcome,
        "the check did not give up on notifications: {listening:?}"
    );
    assert_eq!(
        logs.count(NOT_DELIVERED) - before,
        1,
        "warned once per handle"
    );
    drop(listening);
    clear_session_state(&pgbouncer);

    // Directly on PostgreSQL the same check sees its notification come back.
    let direct = Db::postgres();
    let listening = direct.locks();
    let outcome = wait_behind(&direct.locks(), &listening, |locks| {
        format!("{locks:?}").contains("notifications: Delivered")
    });
    assert!(
        outcome,
        "notifications not delivered directly: {listening:?}"
    );

    // Transaction pooling: no listener, one line per handle however many waits.
    let polling = pgbouncer.locks();
    let before = logs.count(NOTIFY_OFF);
    for _ in 0..3 {
        assert!(wait_behind(&holder, &polling, |locks| {
            format!("{locks:?}").contains("notifications: Off")
        }));
    }
    assert_eq!(logs.count(NOTIFY_OFF) - before, 1, "said once per handle");
}

const NOT_DELIVERED: &str = "release notifications (LISTEN/NOTIFY) do not reach this process";
const NOTIFY_OFF: &str = "release notifications are off";

/// `holder` takes a lock; two threads wait for it through `waiting`; once `seen` holds
/// for `waiting` (or 15 s pass) the holder releases and both waiters must get the lock in
/// turn. Returns whether `seen` held.
fn wait_behind(holder: &Locks, waiting: &Locks, seen: impl Fn(&Locks) -> bool) -> bool {
    let name = unique_name("pgbouncer-fallback");
    let guard = holder.lock(name.as_str()).acquire().unwrap();
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let (locks, name) = (waiting.clone(), name.clone());
            std::thread::spawn(move || {
                let guard = locks
                    .lock(name.as_str())
                    .retry(Some(Duration::from_millis(200)))
                    .timeout(Duration::from_secs(60))
                    .acquire()
                    .unwrap();
                guard.release().unwrap();
            })
        })
        .collect();
    let held = eventually(Duration::from_secs(15), || seen(waiting));
    guard.release().unwrap();
    for w in waiters {
        w.join().unwrap();
    }
    held
}

/// Removes named statements and `LISTEN`s left on PgBouncer's server connections (by the
/// fallback test, which leaves a `LISTEN` on purpose, or by an earlier run of anything
/// that prepared statements through PgBouncer).
fn clear_session_state(db: &Db) {
    // Inside the pinning transaction: DEALLOCATE acts at once, UNLISTEN at the commit.
    on_every_server(db, |client| {
        client
            .batch_execute("UNLISTEN *; DEALLOCATE ALL")
            .expect("UNLISTEN, DEALLOCATE")
    });
}

// Log capture: a minimal global `tracing` subscriber that keeps every event's message.

#[derive(Default)]
struct Logs(Mutex<Vec<String>>);

impl Logs {
    fn count(&self, needle: &str) -> usize {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|m| m.contains(needle))
            .count()
    }
}

fn capture_logs() -> Arc<Logs> {
    static LOGS: OnceLock<Arc<Logs>> = OnceLock::new();
    Arc::clone(LOGS.get_or_init(|| {
        let logs = Arc::new(Logs::default());
        tracing::subscriber::set_global_default(Capture(Arc::clone(&logs)))
            .expect("no other subscriber in this test binary");
        logs
    }))
}

struct Capture(Arc<Logs>);

struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut message = Message(String::new());
        event.record(&mut message);
        let line = format!("{} {}", event.metadata().level(), message.0);
        self.0
             .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(line);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Without `DATABASE_LOCKS_TRANSACTION_POOLING`, the first statement that finds its named
/// prepared statement missing or clashing tells the handle it is behind a transaction
/// pooler: it stops preparing statements by name, warns once naming the setting, and the
/// work goes on. (Before: 4 threads got 9 of 200 cycles, and failed releases left locks
/// held until their leases ran out.)
#[test]
fn without_the_setting_the_pooler_is_detected_and_the_handle_switches() {
    let _serial = serial();
    let logs = capture_logs();
    // Database `test` over a single server connection (scripts/pgbouncer): the second of
    // the handle's connections to prepare a statement by name runs into the first one's
    // `__diesel_stmt_0` on that server connection, so the collision is certain.
    let single = Db::pgbouncer().with_database("test_single");
    let before = logs.count(SWITCHED);
    let locks = Locks::new(single.config().transaction_pooling(false)).unwrap();
    let name = unique_name("pgbouncer-detect");
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (locks, name) = (locks.clone(), name.clone());
            std::thread::spawn(move || {
                let mut errors = Vec::new();
                for _ in 0..50 {
                    match locks
                        .lock(name.as_str())
                        .retry(Some(Duration::from_millis(20)))
                        .timeout(Duration::from_secs(60))
                        .acquire()
                    {
                        Ok(guard) => {
                            if let Err(e) = guard.release() {
                                errors.push(format!("release: {e}"));
                            }
                        }
                        Err(e) => errors.push(format!("acquire: {e}")),
                    }
                }
                errors
            })
        })
        .collect();
    let errors: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert!(
        errors.is_empty(),
        "{} of 200 cycles failed: {errors:?}",
        errors.len()
    );
    let row = locks.inspect(&name).unwrap().expect("the row");
    assert_eq!(row.state(), "released", "{row:?}");
    assert_eq!(row.token, 200, "every cycle took the lock once");
    let warnings = logs.count(SWITCHED) - before;
    assert_eq!(
        warnings, 1,
        "the collision is detected, and warned about once"
    );
    println!("pooler detection: 200 of 200 cycles, {warnings} warning(s)");
}

const SWITCHED: &str = "this handle no longer prepares statements by name. Set DATABASE_LOCKS_TRANSACTION_POOLING=true";
