//! Galera (MariaDB Galera Cluster, Percona XtraDB Cluster): the row-lock protocol across
//! the three nodes of the cluster that `scripts/galera start` runs. Node URLs come from
//! `GALERA_URLS` (three, comma-separated), defaulting to that script's ports; a node that
//! cannot be reached, or is not Synced in a cluster of three, fails the test and names its
//! URL. One test goes through the HAProxy that `scripts/haproxy start` runs in front of
//! the nodes (`HAPROXY_DATABASE_URL`); it fails, naming the URL, when that is not up.
//! Figures for docs/RELIABILITY.md: `cargo test --all-features --test galera --
//! --nocapture`.
//!
//! The tests take turns (`SERIAL`): some stop or isolate a node and bring it back, and the
//! others measure contention that a parallel test would disturb.
#![cfg(feature = "mysql")]

mod common;

use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use common::{eventually, expect_line, helper, lines, run_sections, unique_name, wait_exit, Db};
use database_locks::{Config, Error, LockGuard, Locks, Migration};
use diesel::connection::SimpleConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Error as PoolError, Pool};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{BigInt, Text};
use diesel::{Connection, MysqlConnection, QueryableByName, RunQueryDsl};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/galera");
const DEFAULT_URLS: [&str; 3] = [
    "mysql://root@127.0.0.1:23306/test",
    "mysql://root@127.0.0.1:23307/test",
    "mysql://root@127.0.0.1:23308/test",
];

static SERIAL: Mutex<()> = Mutex::new(());

/// The three nodes, held for one test at a time.
struct Cluster {
    nodes: Vec<Db>,
    _turn: MutexGuard<'static, ()>,
}

impl Cluster {
    fn urls(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.url.as_str()).collect()
    }
}

fn cluster() -> Cluster {
    let turn = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let urls: Vec<String> = match std::env::var("GALERA_URLS") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => DEFAULT_URLS.iter().map(|u| (*u).to_owned()).collect(),
    };
    assert_eq!(urls.len(), 3, "GALERA_URLS must name three nodes: {urls:?}");
    let nodes: Vec<Db> = urls.iter().map(|u| Db::mysql_at(u)).collect();
    // A node restarted by an earlier test may still be catching up.
    for node in &nodes {
        let synced = eventually(Duration::from_secs(60), || {
            wsrep(&node.url).is_ok_and(|w| w.size == 3 && w.state == "Synced")
        });
        assert!(
            synced,
            "{} is not Synced in a cluster of 3 ({:?}); run scripts/galera start",
            node.url,
            wsrep(&node.url)
        );
    }
    Cluster { nodes, _turn: turn }
}

#[derive(Debug, QueryableByName)]
struct Wsrep {
    #[diesel(sql_type = BigInt)]
    size: i64,
    #[diesel(sql_type = Text)]
    state: String,
}

fn wsrep(url: &str) -> Result<Wsrep, String> {
    let mut conn = MysqlConnection::establish(url).map_err(|e| e.to_string())?;
    diesel::sql_query(
        "SELECT CAST(COALESCE((SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS
                 WHERE VARIABLE_NAME = 'wsrep_cluster_size'), '0') AS SIGNED) AS size,
                CAST(COALESCE((SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS
                 WHERE VARIABLE_NAME = 'wsrep_local_state_comment'), 'not a Galera node') AS CHAR) AS state",
    )
    .get_result(&mut conn)
    .map_err(|e| e.to_string())
}

/// One number a query reads (`... AS n`).
#[derive(QueryableByName)]
struct Value {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn connect(url: &str) -> MysqlConnection {
    MysqlConnection::establish(url).unwrap_or_else(|e| panic!("cannot reach {url}: {e}"))
}

/// What one `try_acquire` on a node got.
enum Outcome {
    Acquired(LockGuard),
    /// Refused: the statement saw the lock held.
    Held,
    /// A certification conflict (1213), returned as the transient error it is.
    Conflict,
    /// Two inserts of a new name met on one node (1062), also transient.
    Duplicate,
    /// The node did not answer within the statement deadline (`Error::Unresponsive`): a
    /// Galera node can stall for seconds (flow control, a slow fsync on this VM). The
    /// attempt's outcome is unknown to its caller, which is why the winner's release is
    /// what proves that no late statement overwrote the winner.
    Unresponsive,
}

fn attempt(locks: &Locks, name: &str) -> Outcome {
    match locks.lock(name).try_acquire() {
        Ok(Some(guard)) => Outcome::Acquired(guard),
        Ok(None) => Outcome::Held,
        Err(Error::Database {
            source: DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, _),
            ..
        }) => Outcome::Conflict,
        Err(Error::Database {
            source: DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _),
            ..
        }) => Outcome::Duplicate,
        Err(Error::Unresponsive { .. }) => Outcome::Unresponsive,
        Err(err) => panic!("try_acquire {name}: {err:?}"),
    }
}

/// Mutual exclusion with the contenders spread over the three nodes.
#[test]
fn processes_on_three_nodes_exclude_each_other() {
    let cluster = cluster();
    let nodes: Vec<Db> = cluster.urls().iter().map(|url| Db::mysql_at(url)).collect();
    let nodes: Vec<&Db> = nodes.iter().collect();
    run_sections(&nodes, 6, 100, "galera-mutex");
}

/// A global status counter of one node (`wsrep_local_cert_failures`, ...).
fn status_counter(url: &str, variable: &str) -> i64 {
    let value: Value = diesel::sql_query(format!(
        "SELECT CAST(VARIABLE_VALUE AS SIGNED) AS n FROM information_schema.GLOBAL_STATUS \
         WHERE VARIABLE_NAME = '{variable}'"
    ))
    .get_result(&mut connect(url))
    .unwrap_or_else(|e| panic!("{variable} on {url}: {e}"));
    value.n
}

/// Certification failures and brute-force aborts, summed over the nodes.
fn conflicts_so_far(cluster: &Cluster) -> (i64, i64) {
    cluster.urls().iter().fold((0, 0), |(cert, bf), url| {
        (
            cert + status_counter(url, "wsrep_local_cert_failures"),
            bf + status_counter(url, "wsrep_local_bf_aborts"),
        )
    })
}

/// Sets `wsrep_retry_autocommit` on every node for the connections opened from now on,
/// and puts the old value back when dropped.
struct RetryAutocommit<'a> {
    cluster: &'a Cluster,
    old: i64,
}

impl<'a> RetryAutocommit<'a> {
    fn set(cluster: &'a Cluster, retries: i64) -> Self {
        let old: Value =
            diesel::sql_query("SELECT CAST(@@global.wsrep_retry_autocommit AS SIGNED) AS n")
                .get_result(&mut connect(cluster.urls()[0]))
                .unwrap();
        for node in &cluster.nodes {
            node.exec(&format!("SET GLOBAL wsrep_retry_autocommit = {retries}"));
        }
        RetryAutocommit {
            cluster,
            old: old.n,
        }
    }
}

impl Drop for RetryAutocommit<'_> {
    fn drop(&mut self) {
        for node in &self.cluster.nodes {
            let _ = node.try_exec(&format!("SET GLOBAL wsrep_retry_autocommit = {}", self.old));
        }
    }
}

/// Three nodes race for one lock at the same instant, `rounds` times: never more than
/// one wins, whether the row is new (three inserts of one key) or released (three
/// conditional updates). A loser either sees the winner's row (also when Galera re-runs
/// its autocommit statement after a conflict) or gets the certification conflict (1213)
/// as a transient error.
fn race(cluster: &Cluster, rounds: usize, label: &str) {
    let handles: Vec<Locks> = cluster.nodes.iter().map(Db::locks).collect();
    for locks in &handles {
        locks.inspect("warm-up").unwrap();
    }
    let before = conflicts_so_far(cluster);
    let (mut won, mut held, mut conflicts, mut duplicates, mut none) = (0, 0, 0, 0, 0);
    let mut unanswered = 0;
    for round in 0..rounds {
        let name = unique_name("galera-race");
        let fresh = round % 2 == 0;
        if !fresh {
            handles[0].lock(&name).acquire().unwrap().release().unwrap();
            // Every node has the released row, so each attempt is the conditional UPDATE.
            let everywhere = eventually(Duration::from_secs(30), || {
                handles.iter().all(|l| {
                    l.inspect(&name)
                        .unwrap()
                        .is_some_and(|r| r.state() == "released")
                })
            });
            assert!(everywhere, "the released row reached every node");
        }
        let barrier = Barrier::new(handles.len());
        let outcomes: Vec<Outcome> = std::thread::scope(|s| {
            let running: Vec<_> = handles
                .iter()
                .map(|locks| {
                    let (barrier, name) = (&barrier, &name);
                    s.spawn(move || {
                        barrier.wait();
                        attempt(locks, name)
                    })
                })
                .collect();
            running.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let mut winners = Vec::new();
        for outcome in outcomes {
            match outcome {
                Outcome::Acquired(guard) => winners.push(guard),
                Outcome::Held => held += 1,
                Outcome::Conflict => conflicts += 1,
                Outcome::Duplicate => duplicates += 1,
                Outcome::Unresponsive => unanswered += 1,
            }
        }
        assert!(
            winners.len() <= 1,
            "round {round} ({}): {} nodes took {name} at once",
            if fresh { "new row" } else { "released row" },
            winners.len()
        );
        match winners.pop() {
            Some(guard) => {
                won += 1;
                // Nobody's re-run (or late, unanswered) statement overwrote the winner:
                // its release finds its own owner and token in the row.
                guard.release().unwrap();
            }
            None => none += 1,
        }
    }
    let after = conflicts_so_far(cluster);
    println!(
        "race [Galera, {label}]: {rounds} rounds of 3 nodes at once: {won} won, {none} rounds \
         without a winner; losers: {held} refused, {conflicts} certification conflicts \
         (1213), {duplicates} duplicate keys, {unanswered} unanswered within the deadline; \
         the cluster counted {} certification failures \
         and {} brute-force aborts",
        after.0 - before.0,
        after.1 - before.1
    );
}

#[test]
fn racing_acquirers_on_three_nodes_never_both_win() {
    let cluster = cluster();
    race(&cluster, 120, "wsrep_retry_autocommit=1");
}

/// The same with `wsrep_retry_autocommit = 10`. MariaDB 10.11 re-runs only statements sent
/// as text, not prepared ones like the crate's, so the conflicts still reach the client
/// here; `a_re_run_acquire_statement_never_takes_a_held_lock` covers the re-runs.
#[test]
fn racing_acquirers_with_autocommit_retries_never_both_win() {
    let cluster = cluster();
    let _retries = RetryAutocommit::set(&cluster, 10);
    race(&cluster, 120, "wsrep_retry_autocommit=10");
}

/// The MySQL acquire statement of DESIGN.md (§2, Acquire) with its values written in, so
/// that it can be sent as plain text (COM_QUERY). Galera re-runs a conflicting autocommit
/// statement sent that way (`wsrep_retry_autocommit`) without telling the client; the
/// crate's prepared statements get the conflict (1213) instead.
fn acquire_text(name: &str, owner: &str) -> String {
    format!(
        "UPDATE database_locks_lock
            SET token = LAST_INSERT_ID(token + 1), locked_by = '{owner}',
                expires_at = COALESCE(UTC_TIMESTAMP(6) + INTERVAL 60000000 MICROSECOND, '9999-01-01 00:00:00')
          WHERE name = '{name}' AND (expires_at IS NULL OR expires_at < UTC_TIMESTAMP(6)
                OR CAST(locked_by AS BINARY) = '{owner}')"
    )
}

/// Sends `statement` as text on each node's connection at the same instant; returns,
/// per node, the rows it matched (`None`: it failed, with a conflict).
fn race_text(
    conns: &mut [MysqlConnection],
    statement: impl Fn(usize) -> String,
) -> Vec<Option<i64>> {
    let barrier = Barrier::new(conns.len());
    std::thread::scope(|s| {
        let running: Vec<_> = conns
            .iter_mut()
            .enumerate()
            .map(|(i, conn)| {
                let (barrier, sql) = (&barrier, statement(i));
                s.spawn(move || {
                    barrier.wait();
                    // One round trip: the count is gone after any other command.
                    conn.batch_execute(&format!("{sql}; SET @matched = ROW_COUNT()"))
                        .ok()?;
                    let value: Value = diesel::sql_query("SELECT CAST(@matched AS SIGNED) AS n")
                        .get_result(conn)
                        .unwrap();
                    Some(value.n)
                })
            })
            .collect();
        running.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

/// The acquire statement, re-run by Galera after a conflict, never takes a held lock: it
/// evaluates its condition again against the winner's row. The cluster's conflict
/// counters show that statements were aborted, and since no conflict reached the client,
/// each was re-run.
#[test]
fn a_re_run_acquire_statement_never_takes_a_held_lock() {
    let cluster = cluster();
    let _retries = RetryAutocommit::set(&cluster, 10);
    let mut conns: Vec<MysqlConnection> = cluster.urls().iter().map(|u| connect(u)).collect();
    let rounds = 100;
    let (mut reported, mut aborted, mut refused) = (0, 0, 0);
    for round in 0..rounds {
        let name = unique_name("galera-rerun");
        cluster.nodes[0].exec(&format!(
            "INSERT INTO database_locks_lock (name, locked_by, expires_at, token) \
             VALUES ('{name}', NULL, NULL, 0)"
        ));
        let exists = format!("SELECT 1 FROM database_locks_lock WHERE name = '{name}'");
        assert!(
            eventually(Duration::from_secs(30), || conns.iter_mut().all(|c| {
                diesel::sql_query(&exists).execute(c).is_ok_and(|n| n == 1)
            })),
            "the free row reached every node"
        );
        let before = conflicts_so_far(&cluster);
        let matched = race_text(&mut conns, |i| {
            acquire_text(&name, &format!("node{}", i + 1))
        });
        let after = conflicts_so_far(&cluster);
        aborted += (after.0 - before.0) + (after.1 - before.1);
        reported += matched.iter().filter(|m| m.is_none()).count();
        refused += matched.iter().filter(|m| **m == Some(0)).count();
        let winners: Vec<usize> = (0..matched.len())
            .filter(|&i| matched[i] == Some(1))
            .collect();
        assert!(
            winners.len() <= 1,
            "round {round}: nodes {winners:?} all took {name}: {matched:?}"
        );
    }
    println!(
        "re-run [Galera, wsrep_retry_autocommit=10, text protocol]: {rounds} rounds of 3 \
         nodes: never two winners; {refused} refused, {reported} conflicts reached the \
         client, {aborted} certification failures and brute-force aborts in the cluster"
    );
    assert!(
        aborted > 0,
        "no statement was aborted, so nothing was re-run and this test showed nothing"
    );
}

/// A holder on node 1, a waiter on node 2: the waiter is refused while the lock is held
/// and takes it once node 1 releases.
#[test]
fn a_waiter_on_node_2_takes_over_when_node_1_releases() {
    let cluster = cluster();
    let name = unique_name("galera-handoff");
    let holder = cluster.nodes[0].locks();
    let guard = holder.lock(&name).acquire().unwrap();
    let token = guard.token().unwrap();
    for node in &cluster.nodes[1..] {
        if let Outcome::Acquired(_) = attempt(&node.locks(), &name) {
            panic!("{} took {name} while node 1 held it", node.url);
        }
    }
    let waiter = cluster.nodes[1].locks();
    let waiter_handle = waiter.clone();
    let acquired = Arc::new(AtomicBool::new(false));
    let (flag, wanted) = (Arc::clone(&acquired), name.clone());
    let waiting = std::thread::spawn(move || {
        let result = waiter
            .lock(&wanted)
            .retry(Some(Duration::from_millis(50)))
            .timeout(Duration::from_secs(60))
            .acquire();
        flag.store(true, Ordering::SeqCst);
        (result, Instant::now())
    });
    // Whatever the waiter did meanwhile, it must not have got in while node 1 held it.
    std::thread::sleep(Duration::from_secs(1));
    assert!(!acquired.load(Ordering::SeqCst), "the waiter got in");
    assert!(guard.verify().unwrap(), "node 1 still holds it");
    // No wake-up channel on Galera (GET_LOCK is per node): the holder, in for a second
    // (the channel would take its session lock after 5 ms), took none on its node, and
    // the waiter's listener found out that it must poll.
    let key = database_locks::__private::wake_key(
        cluster.nodes[0].url.rsplit('/').next().unwrap(),
        &name,
    );
    let rows: Vec<Value> = diesel::sql_query(format!(
        "SELECT CAST(COALESCE(IS_USED_LOCK('{key}'), 0) AS SIGNED) AS n"
    ))
    .load(&mut connect(&cluster.nodes[0].url))
    .unwrap();
    assert_eq!(rows[0].n, 0, "a session on node 1 holds {key}");
    assert!(
        eventually(Duration::from_secs(10), || format!("{waiter_handle:?}")
            .contains("NoChannel")),
        "the waiter's listener knows it must poll: {waiter_handle:?}"
    );
    let released = Instant::now();
    // The row still carried node 1's owner and token: nobody took it meanwhile.
    guard.release().unwrap();
    let (result, at) = waiting.join().unwrap();
    let second = result.unwrap();
    println!(
        "hand-off [Galera]: node 1 -> node 2 in {:.3} s (waiter polling every 50 ms)",
        at.duration_since(released).as_secs_f64()
    );
    assert_eq!(second.token(), Some(token + 1));
    assert!(second.verify().unwrap());
    second.release().unwrap();
}

/// A database of its own for one test, created through node 1 (replicated), and the same
/// database seen through node 2; it is dropped with the first. It holds the application's
/// `fenced_rows`.
///
/// Node 2 applies what node 1 committed a moment later, DDL included: connecting to the
/// new database through node 2 at once failed once in a loaded run ("Unknown database").
/// A causal read there (`wsrep_sync_wait`) waits until node 2 has applied everything
/// node 1 had committed, so the database and its tables exist when the test reaches them.
fn isolated_on_two_nodes(cluster: &Cluster) -> (Db, Db) {
    let first = cluster.nodes[0].isolated();
    first.exec(common::fenced::ROWS_TABLE);
    first.locks().migrate().unwrap();
    let database = first.url.rsplit('/').next().unwrap_or_default();
    let mut node2 = connect(&cluster.nodes[1].url);
    diesel::sql_query("SET SESSION wsrep_sync_wait = @@global.wsrep_sync_wait | 1")
        .execute(&mut node2)
        .expect("causal reads on node 2");
    let tables: Vec<Value> = diesel::sql_query(
        "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_schema = ?",
    )
    .bind::<Text, _>(database)
    .load(&mut node2)
    .expect("node 2 lists the tables");
    assert_eq!(
        tables.first().map(|c| c.n),
        Some(2),
        "node 2 has applied the lock table and the rows table"
    );
    let base = cluster.nodes[1].url.rsplit_once('/').map_or("", |(b, _)| b);
    let second = Db::mysql_at(&format!("{base}/{database}"));
    (first, second)
}

/// The paused holder across nodes: A on node 1 is stopped past its lease, B takes the
/// lock on node 2 and writes through fenced transactions; A, continued, is refused by its
/// own node: zero stale commits.
#[test]
fn a_paused_holder_on_node_1_is_fenced_off_by_node_2() {
    let cluster = cluster();
    let (first, second) = isolated_on_two_nodes(&cluster);
    common::fenced::paused_holder_is_refused::<MysqlConnection>(&first, &second);
}

/// A is stopped inside its fenced transaction on node 1. Nothing there holds B off on node
/// 2 (a row lock does not cross nodes): B takes the lock once A's committed lease ends and
/// writes. Its write set then meets A's open transaction on node 1, which loses
/// certification: A's next statement fails, and nothing of A's transaction commits.
#[test]
fn a_holder_stopped_inside_its_transaction_on_node_1_commits_nothing_after_node_2_took_over() {
    let cluster = cluster();
    let (first, second) = isolated_on_two_nodes(&cluster);
    let seen = common::fenced::paused_inside::<MysqlConnection>(&first, &second);
    assert!(
        seen.got_while_stopped,
        "B on node 2 should not wait for A's row lock on node 1"
    );
    assert!(
        seen.outcome.starts_with("failed") && seen.outcome.to_lowercase().contains("deadlock"),
        "A's transaction: {}",
        seen.outcome
    );
    assert_eq!(seen.a_rows, 0, "a stale commit on node 1");
    assert_eq!((seen.b_saw, seen.b_rows), (0, 1));
    assert!(seen.b_token > seen.a_token);
}

/// A lock stolen through node 3 (another owner and token written into the row) is
/// reported lost by its holder on node 1 at its next renewal, while the original lease
/// still runs by the database's clock; its token no longer verifies.
#[test]
fn a_lock_stolen_through_node_3_is_reported_lost_on_node_1() {
    let cluster = cluster();
    let locks = cluster.nodes[0].locks();
    let observer = cluster.nodes[0].locks();
    let name = unique_name("galera-stolen");
    let (tx, rx) = mpsc::channel();
    let calls = Arc::new(AtomicUsize::new(0));
    let (counted, observed) = (Arc::clone(&calls), name.clone());
    let guard = locks
        .lock(&name)
        .lock_ttl(Some(Duration::from_secs(3)))
        .lock_ttl_renew(Duration::from_millis(1500))
        .lost_lock_cb(move |lost| {
            counted.fetch_add(1, Ordering::SeqCst);
            // The renewal through node 1 saw the theft, so node 1 has applied it.
            let left = observer
                .inspect(&observed)
                .ok()
                .flatten()
                .and_then(|r| r.expires_in);
            let _ = tx.send((lost.clone(), left));
        })
        .acquire()
        .unwrap();
    let token = guard.token().unwrap();
    let thief = &cluster.nodes[2];
    // The row reaches node 3 shortly after node 1 committed it.
    assert!(
        eventually(Duration::from_secs(10), || {
            thief
                .try_exec(&format!(
                    "UPDATE database_locks_lock SET locked_by = 'thief', token = token + 1 \
                     WHERE name = '{name}' AND token = {token}"
                ))
                .is_ok_and(|n| n == 1)
        }),
        "stole the row through node 3"
    );
    let (lost, left) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("lost_lock_cb ran");
    println!(
        "stolen [Galera]: stolen through node 3, reported on node 1 with {left:?} s of the \
         original lease left: {}",
        lost.reason
    );
    assert_eq!(lost.name, name);
    assert_eq!(lost.token, token);
    assert!(
        left.is_some_and(|s| s > 0.0),
        "reported with {left:?} s of the original lease left"
    );
    assert!(guard.is_lost());
    assert!(!guard.verify().unwrap(), "the old token still verifies");
    assert!(matches!(guard.release(), Err(Error::Lost { .. })));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // The thief's row is what every node ends up with.
    for node in &cluster.nodes {
        let locks = node.locks();
        assert!(
            eventually(Duration::from_secs(10), || {
                locks.inspect(&name).unwrap().is_some_and(|r| {
                    r.locked_by.as_deref() == Some("thief") && r.token as u64 == token + 1
                })
            }),
            "{} has the thief's row",
            node.url
        );
    }
}

/// How many of `rounds` `verify()` calls through `holder` (node 1) still say "ours" right
/// after a theft committed through node 3. Each round waits until node 3 has the holder's
/// row, steals it there, then asks node 1 at once.
fn stale_verifies(holder: &Locks, thief_url: &str, rounds: usize) -> usize {
    let mut thief = connect(thief_url);
    // The thief's UPDATE waits until node 3 has applied what the cluster committed before
    // it, the holder's row included (bits 1 and 2: reads, updates and deletes). Without
    // it the steal was retried until node 3 had the row, and on a loaded machine once
    // found no row within 10 s.
    thief
        .batch_execute("SET SESSION wsrep_sync_wait = 3")
        .unwrap_or_else(|e| panic!("wsrep_sync_wait on {thief_url}: {e}"));
    let mut stale = 0;
    for _ in 0..rounds {
        let name = unique_name("galera-verify");
        let guard = holder
            .lock(&name)
            .auto_renew(false)
            .lock_ttl(Some(Duration::from_secs(60)))
            .acquire()
            .unwrap();
        let token = guard.token().unwrap();
        let steal = format!(
            "UPDATE database_locks_lock SET locked_by = 'thief', token = token + 1 \
             WHERE name = '{name}' AND token = {token}"
        );
        let mut last = String::new();
        assert!(
            eventually(Duration::from_secs(10), || {
                match diesel::sql_query(&steal).execute(&mut thief) {
                    Ok(n) => {
                        last = format!("{n} rows matched");
                        n == 1
                    }
                    Err(e) => {
                        last = e.to_string();
                        false
                    }
                }
            }),
            "stole {name} through node 3 (last try: {last})"
        );
        if guard.verify().unwrap() {
            stale += 1;
        }
        assert!(matches!(guard.release(), Err(Error::Lost { .. })));
    }
    stale
}

/// `verify()` is the one read whose answer a caller acts on: after a theft has committed
/// anywhere in the cluster, it must not say "ours". A node answers reads from what it has
/// applied so far, unless `wsrep_sync_wait` makes the read wait for the cluster first.
/// Fails until the crate's MySQL connections set it (docs/galera-readme-section.md).
#[test]
fn verify_right_after_a_theft_on_another_node() {
    let cluster = cluster();
    let rounds = 300;
    let stale = stale_verifies(&cluster.nodes[0].locks(), &cluster.nodes[2].url, rounds);
    println!(
        "verify [Galera]: {stale} of {rounds} verify() calls through node 1 right after a \
         theft committed through node 3 still said \"ours\""
    );
    assert_eq!(
        stale, 0,
        "verify() answered from a node that had not applied the theft yet"
    );
}

/// Makes every read of the connection wait until the node has applied what the cluster
/// committed before it (bit 1 of `wsrep_sync_wait`), keeping the server's other bits.
#[derive(Debug)]
struct SyncWait;

impl CustomizeConnection<MysqlConnection, PoolError> for SyncWait {
    fn on_acquire(&self, conn: &mut MysqlConnection) -> Result<(), PoolError> {
        diesel::sql_query("SET SESSION wsrep_sync_wait = @@global.wsrep_sync_wait | 1")
            .execute(conn)
            .map(drop)
            .map_err(PoolError::QueryError)
    }
}

/// The same with an application pool whose connections set `wsrep_sync_wait`: the
/// setting README recommends on Galera.
#[test]
fn verify_with_wsrep_sync_wait_sees_a_theft_at_once() {
    let cluster = cluster();
    let url = &cluster.nodes[0].url;
    let pool = Pool::builder()
        .connection_customizer(Box::new(SyncWait))
        .build(ConnectionManager::<MysqlConnection>::new(url))
        .unwrap_or_else(|e| panic!("pool for {url}: {e}"));
    let holder = Locks::from_pool(pool, Config::new(url.as_str()));
    let rounds = 300;
    let stale = stale_verifies(&holder, &cluster.nodes[2].url, rounds);
    println!(
        "verify [Galera, wsrep_sync_wait=1]: {stale} of {rounds} verify() calls said \"ours\" \
         after the theft"
    );
    assert_eq!(stale, 0, "verify() answered from a stale node");
}

/// Processes on the three nodes upgrade a table created by Django's migration at the
/// same moment. `GET_LOCK`, which serialises migrations on one server, is per node on
/// Galera, so each may find the `token` column missing and add it. Fails until `migrate`
/// takes "Duplicate column name" as done (docs/galera-readme-section.md).
#[test]
fn three_nodes_upgrade_a_django_table_at_once() {
    let cluster = cluster();
    let admin = &cluster.nodes[0];
    for round in 0..3 {
        let database = format!("dl_galera_{}_{round}", std::process::id());
        admin.exec(&format!("CREATE DATABASE {database}"));
        let _dropped = DropDatabase(admin, &database);
        admin.exec(&format!(
            "CREATE TABLE {database}.`database_locks_lock` (`id` integer AUTO_INCREMENT NOT NULL PRIMARY KEY, \
             `name` varchar(255) NOT NULL UNIQUE, `locked_by` longtext NULL, `expires_at` datetime(6) NULL)"
        ));
        let urls: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("{}/{database}", n.url.rsplit_once('/').unwrap().0))
            .collect();
        for url in &urls {
            assert!(
                eventually(Duration::from_secs(30), || {
                    MysqlConnection::establish(url).is_ok_and(|mut c| {
                        diesel::sql_query("SELECT 1 FROM database_locks_lock LIMIT 1")
                            .execute(&mut c)
                            .is_ok()
                    })
                }),
                "{url} has Django's table"
            );
        }
        let handles: Vec<Locks> = urls
            .iter()
            .map(|u| Locks::new(Config::new(u.as_str())).unwrap())
            .collect();
        let barrier = Barrier::new(handles.len());
        let results: Vec<Result<Migration, Error>> = std::thread::scope(|s| {
            let running: Vec<_> = handles
                .iter()
                .map(|locks| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        locks.migrate()
                    })
                })
                .collect();
            running.into_iter().map(|t| t.join().unwrap()).collect()
        });
        println!("migrate [Galera] round {round}: {results:?}");
        for (url, result) in urls.iter().zip(&results) {
            assert!(
                result.is_ok(),
                "migrating through {url} while the other nodes did too: {result:?}"
            );
        }
        let guard = handles[1].lock("after-upgrade").acquire().unwrap();
        guard.release().unwrap();
    }
}

struct DropDatabase<'a>(&'a Db, &'a str);

impl Drop for DropDatabase<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .try_exec(&format!("DROP DATABASE IF EXISTS {}", self.1));
    }
}

/// Starts the cluster's missing nodes again (`scripts/galera start`), also when the test
/// fails half-way, so the cluster is left healthy.
struct Restore {
    done: bool,
}

impl Restore {
    fn run() -> Result<(), String> {
        let out = Command::new(SCRIPT)
            .arg("start")
            .output()
            .map_err(|e| format!("{SCRIPT}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{SCRIPT} start: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn now(&mut self) {
        self.done = true;
        Restore::run().unwrap();
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = Restore::run() {
                eprintln!("could not restore the cluster: {e}");
            }
        }
    }
}

/// A `lock-helper watch` process holding `name` through `url` (`[ttl, renew, hold]` in
/// seconds; hold `stdin`: until its stdin, piped, is closed), once `observer` (another
/// node) sees its row. Returns the process, its lines and its fencing token.
fn watching_holder(
    url: &str,
    name: &str,
    [ttl, renew, hold]: [&str; 3],
    observer: &Locks,
) -> (Child, mpsc::Receiver<String>, i64) {
    let mut child = helper(&["watch", url, name, ttl, renew, hold])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines(child.stdout.take().unwrap());
    let acquired = expect_line(&rx, "acquired", Duration::from_secs(30));
    let token: i64 = acquired["acquired ".len()..].parse().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || observer
            .inspect(name)
            .unwrap()
            .is_some_and(|r| r.token == token)),
        "the observing node has the holder's row"
    );
    (child, rx, token)
}

/// Shuts `node` down (SQL `SHUTDOWN`) and waits until it no longer answers.
fn shut_down(node: &Db) {
    // SHUTDOWN answers before the server goes away, or the connection drops first.
    let _ = node.try_exec("SHUTDOWN");
    assert!(
        eventually(Duration::from_secs(120), || node
            .try_exec("SELECT 1")
            .is_err()),
        "{} still answers after SHUTDOWN",
        node.url
    );
}

/// The node a holder renews through is shut down while it holds the lock (its URL names
/// that one node). Renewal fails, and the holder reports the loss while the lease still
/// runs by the other nodes' clock; once it ends, a process on another node takes the
/// lock. The node is started again afterwards and catches up.
#[test]
fn a_holder_whose_node_stops_reports_the_loss_before_its_lease_ends() {
    let cluster = cluster();
    let (node1, node2, node3) = (&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]);
    let name = unique_name("galera-node-down");
    let observer = node1.locks();
    let (mut child, rx, token) = watching_holder(&node3.url, &name, ["4", "2", "120"], &observer);
    let mut restore = Restore { done: false };
    let stopped = Instant::now();
    shut_down(node3);
    let lost = expect_line(&rx, "lost", Duration::from_secs(30));
    let reported = stopped.elapsed();
    let row = observer.inspect(&name).unwrap().unwrap();
    // The instant the holder was told against the row's absolute expiry on node 1 (not the
    // time left when this test read the line, which a loaded machine delays).
    let expires_at = node1
        .row(&name)
        .and_then(|r| r.expires_at)
        .expect("an expiry");
    let left = (expires_at - common::told_at(&lost)) as f64 / 1e6;
    println!(
        "node down [Galera]: holder on node 3 reported {lost:?} {:.2} s after the shutdown, \
         with {left:.3} s of its lease left by node 1's clock",
        reported.as_secs_f64()
    );
    assert!(left > 0.0, "reported after the lease ran out");
    assert_eq!(row.token, token, "nobody else got in meanwhile");
    // The two remaining nodes go on: once the lease is over, node 2 takes the lock. It is
    // held without expiry, so without renewals: node 3's rejoin below can stop writes on
    // node 2 for as long as a state transfer takes (a donor), and under load a renewal then
    // missed its lease, which ended the whole test binary with exit 75 (loaded run of
    // a3d2b68). What this test checks is that the rejoined node sees this holder.
    let second = node2
        .locks()
        .lock(&name)
        .lock_ttl(None)
        .timeout(Duration::from_secs(30))
        .acquire()
        .unwrap();
    assert_eq!(second.token(), Some(token as u64 + 1));
    let back = Instant::now();
    restore.now();
    println!(
        "node down [Galera]: node 3 rejoined and Synced in {:.1} s",
        back.elapsed().as_secs_f64()
    );
    // The restarted node caught up: it sees the new holder and refuses the lock.
    let rejoined = node3.locks();
    assert!(
        eventually(Duration::from_secs(30), || rejoined
            .inspect(&name)
            .unwrap()
            .is_some_and(|r| r.token == token + 1)),
        "node 3 has the new holder's row"
    );
    assert!(matches!(
        attempt(&rejoined, &name),
        Outcome::Held | Outcome::Conflict
    ));
    let _ = child.kill();
    let _ = child.wait();
    assert!(second.verify().unwrap());
    second.release().unwrap();
}

fn port_of(url: &str) -> u16 {
    let rest = url.split_once('@').map_or(url, |(_, r)| r);
    let host_port = rest.split('/').next().unwrap();
    host_port
        .rsplit_once(':')
        .map_or(3306, |(_, p)| p.parse().unwrap())
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

/// A TCP proxy that hands each new connection to the first of `upstreams` that accepts
/// it, as HAProxy or ProxySQL in front of a Galera cluster would. Returns its port.
fn failover_proxy(upstreams: Vec<u16>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Some(server) = upstreams
                .iter()
                .find_map(|p| TcpStream::connect(("127.0.0.1", *p)).ok())
            else {
                continue;
            };
            pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
            pipe(server, client);
        }
    });
    port
}

/// The holder reaches the cluster through a proxy that prefers node 3 and falls back to
/// node 1. Node 3 is shut down while it holds the lock: renewal reconnects through the
/// proxy to node 1, where the row is, and the lock is kept: same owner and token, and an
/// expiry later than the one that stood once node 3 had stopped (absolute times by node
/// 1's clock; every commit made through node 3 had reached node 1 by then).
#[test]
fn a_holder_behind_a_failover_proxy_keeps_its_lock_when_its_node_stops() {
    let cluster = cluster();
    let (node1, node3) = (&cluster.nodes[0], &cluster.nodes[2]);
    let proxy = failover_proxy(vec![port_of(&node3.url), port_of(&node1.url)]);
    let url = node3
        .url
        .replace(&format!(":{}/", port_of(&node3.url)), &format!(":{proxy}/"));
    let name = unique_name("galera-failover");
    // Renewal every 3 s; held until the test has seen a renewal through node 1.
    let observer = node1.locks();
    let (child, rx, token) = watching_holder(&url, &name, ["6", "3", "stdin"], &observer);
    let mut restore = Restore { done: false };
    let stopping = Instant::now();
    shut_down(node3);
    println!(
        "failover [Galera]: node 3 stopped answering {:.1} s after SHUTDOWN",
        stopping.elapsed().as_secs_f64()
    );
    kept_through_another_node(node1, &name, token, &rx, "after node 3 stopped");
    still_held_then_released(&observer, &name, child, &rx, "failover");
    restore.now();
}

/// Others are still refused; then the holder, told to release (its stdin closed), exits
/// with status 0 and no loss reported, and the row is released.
fn still_held_then_released(
    observer: &Locks,
    name: &str,
    mut child: Child,
    rx: &mpsc::Receiver<String>,
    label: &str,
) {
    assert!(matches!(
        attempt(observer, name),
        Outcome::Held | Outcome::Conflict
    ));
    drop(child.stdin.take());
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let rest: Vec<String> = rx.try_iter().collect();
    println!("{label} [Galera]: the holder then: {status}, {rest:?}");
    assert!(status.success(), "holder exited {status}: {rest:?}");
    assert!(!rest.iter().any(|l| l.starts_with("lost")), "{rest:?}");
    assert_eq!(observer.inspect(name).unwrap().unwrap().state(), "released");
}

/// Waits until `node` shows the lease of `name` renewed past the expiry it has now, by the
/// same owner and token. Call it once the holder's node can no longer commit: a later
/// expiry then proves a renewal through another node. Panics, with the holder's lines,
/// when none comes within 30 s (a lease of these tests is shorter).
fn kept_through_another_node(
    node: &Db,
    name: &str,
    token: i64,
    holder: &mpsc::Receiver<String>,
    when: &str,
) {
    let renewal = node.next_renewal(name, Duration::from_secs(30));
    let said: Vec<String> = holder.try_iter().collect();
    let (before, after) = renewal.unwrap_or_else(|e| {
        panic!("not renewed through another node {when}: {e}; the holder said {said:?}")
    });
    println!(
        "[Galera] renewed through another node {when}: expiry {:.3} s later",
        after.expires_at.unwrap_or_default() as f64 / 1e6
            - before.expires_at.unwrap_or_default() as f64 / 1e6
    );
    assert_eq!(before.token, token, "nobody else got in {when}");
    assert_eq!(after.token, token, "same token after the renewal");
    assert_eq!(
        after.locked_by, before.locked_by,
        "same owner after the renewal"
    );
    assert!(
        !said.iter().any(|l| l.starts_with("lost")),
        "the holder reported a loss: {said:?}"
    );
}

/// HAProxy in front of the cluster (`scripts/haproxy start`): `HAPROXY_DATABASE_URL`
/// overrides it.
const HAPROXY_DEFAULT: &str = "mysql://root@127.0.0.1:23316/test";

/// The SQL port of the node that answers a new connection to `url`.
fn served_by(url: &str) -> Result<u16, String> {
    #[derive(QueryableByName)]
    struct Port {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let mut conn = MysqlConnection::establish(url).map_err(|e| e.to_string())?;
    let port: Port = diesel::sql_query("SELECT CAST(@@port AS SIGNED) AS n")
        .get_result(&mut conn)
        .map_err(|e| e.to_string())?;
    u16::try_from(port.n).map_err(|e| e.to_string())
}

/// `wsrep_cluster_status` of one node (`Primary`, `non-Primary`, ...). `SHOW`, because a
/// node outside the Primary component refuses other reads (error 1047).
fn cluster_status(url: &str) -> Result<String, String> {
    #[derive(QueryableByName)]
    struct Status {
        #[diesel(sql_type = Text, column_name = Value)]
        value: String,
    }
    let mut conn = MysqlConnection::establish(url).map_err(|e| e.to_string())?;
    let status: Status = diesel::sql_query("SHOW GLOBAL STATUS LIKE 'wsrep_cluster_status'")
        .get_result(&mut conn)
        .map_err(|e| e.to_string())?;
    Ok(status.value)
}

/// One node cut off from the other two (`gmcast.isolate=1`): it closes its group
/// connections and, once the others' suspect timeout (5 s) has passed, is alone outside
/// the Primary component, refusing statements with error 1047 while its clients stay
/// connected. The node rejoins when dropped (`gmcast.isolate=0`, IST), and is restarted
/// when it does not, so the cluster is left with three Synced nodes.
struct Isolated<'a> {
    cluster: &'a Cluster,
    node: usize,
    done: bool,
}

impl<'a> Isolated<'a> {
    fn start(cluster: &'a Cluster, node: usize) -> Self {
        cluster.nodes[node].exec("SET GLOBAL wsrep_provider_options = 'gmcast.isolate=1'");
        Isolated {
            cluster,
            node,
            done: false,
        }
    }

    fn all_synced(&self) -> bool {
        self.cluster.nodes.iter().all(|n| {
            wsrep(&n.url).is_ok_and(|w| w.size == 3 && w.state == "Synced")
                && cluster_status(&n.url).is_ok_and(|s| s == "Primary")
        })
    }

    fn rejoin(&mut self) -> Result<(), String> {
        self.done = true;
        let node = &self.cluster.nodes[self.node];
        let back = node
            .try_exec("SET GLOBAL wsrep_provider_options = 'gmcast.isolate=0'")
            .is_ok()
            && eventually(Duration::from_secs(60), || self.all_synced());
        if back {
            return Ok(());
        }
        eprintln!("{} did not rejoin: restarting it", node.url);
        let _ = node.try_exec("SHUTDOWN");
        if !eventually(Duration::from_secs(120), || {
            node.try_exec("SELECT 1").is_err()
        }) {
            return Err(format!("{} still answers after SHUTDOWN", node.url));
        }
        Restore::run()
    }
}

impl Drop for Isolated<'_> {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = self.rejoin() {
                eprintln!("could not restore the cluster: {e}");
            }
        }
    }
}

/// The holder reaches the cluster through HAProxy as Galera users deploy it
/// (scripts/haproxy): all connections to node 3, nodes 1 and 2 as backups, a health check
/// that takes a node out once it is not Primary and Synced, and sessions left open on a
/// node marked down (no `on-marked-down shutdown-sessions`). Node 3 leaves the Primary
/// component while the process holds the lock. Its connection stays up, but every
/// statement on it fails with 1047; the renewal must drop that connection so that the new
/// one HAProxy opens reaches node 1. The lock is kept: same owner and token, and an expiry
/// later than the one that stood once node 3 was out (absolute times by node 1's clock).
/// Before connections were dropped on 1047, renewal retried on the dead session until the
/// lease was reported lost.
#[test]
fn a_holder_behind_haproxy_keeps_its_lock_when_its_node_leaves_the_primary_component() {
    let cluster = cluster();
    let (node1, node3) = (&cluster.nodes[0], &cluster.nodes[2]);
    let haproxy = Db::mysql_at(&common::env_url("HAPROXY_DATABASE_URL", HAPROXY_DEFAULT));
    // Node 3 may have rejoined moments ago; HAProxy takes it back after two checks.
    assert!(
        eventually(Duration::from_secs(30), || served_by(&haproxy.url)
            == Ok(port_of(&node3.url))),
        "{} does not lead to node 3 ({:?}); run scripts/haproxy start",
        haproxy.url,
        served_by(&haproxy.url)
    );
    let name = unique_name("galera-haproxy");
    let observer = node1.locks();
    // Renewal every 5 s, with 14.5 s to get through: the other nodes take 5 s (Galera's
    // suspect timeout) to leave node 3 out, and HAProxy about 1 s more to mark it down.
    let (child, rx, token) = watching_holder(&haproxy.url, &name, ["20", "15", "stdin"], &observer);
    let isolating = Instant::now();
    let mut isolated = Isolated::start(&cluster, 2);
    assert!(
        eventually(Duration::from_secs(60), || cluster_status(&node3.url)
            .is_ok_and(|s| s != "Primary")),
        "node 3 did not leave the Primary component ({:?})",
        cluster_status(&node3.url)
    );
    println!(
        "HAProxy [Galera]: node 3 out of the Primary component {:.1} s after the isolation",
        isolating.elapsed().as_secs_f64()
    );
    kept_through_another_node(
        node1,
        &name,
        token,
        &rx,
        "after node 3 left the Primary component",
    );
    println!(
        "HAProxy [Galera]: new connections now reach port {:?}",
        served_by(&haproxy.url)
    );
    still_held_then_released(&observer, &name, child, &rx, "HAProxy");
    let rejoining = Instant::now();
    isolated.rejoin().unwrap();
    println!(
        "HAProxy [Galera]: node 3 rejoined and Synced in {:.1} s",
        rejoining.elapsed().as_secs_f64()
    );
}
