//! Fenced transactions across processes, shared by tests/fenced.rs and tests/galera.rs:
//! a holder in a `lock-helper` process that is stopped (`SIGSTOP`) for longer than its
//! lease, before or inside its fenced transaction, and a second holder B in the test.

use std::process::{Child, ChildStdin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use database_locks_testkit::AppConn;

use super::{expect_line, lines, unique_name, wait_exit, Db};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

const SEC: Duration = Duration::from_secs(1);

/// The application's table: what the holders write.
pub const ROWS_TABLE: &str =
    "CREATE TABLE fenced_rows (writer varchar(16) NOT NULL, n bigint NOT NULL)";

pub fn rows<C: AppConn>(conn: &mut C, writer: &str) -> i64 {
    conn.number(&format!(
        "SELECT COUNT(*) AS n FROM fenced_rows WHERE writer = '{writer}'"
    ))
    .unwrap()
}

pub fn insert<C: AppConn>(conn: &mut C, writer: &str, n: i64) -> Result<(), BoxError> {
    conn.exec(&format!(
        "INSERT INTO fenced_rows (writer, n) VALUES ('{writer}', {n})"
    ))?;
    Ok(())
}

pub fn kill(child: &Child, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal}");
}

pub fn send_line(stdin: &mut ChildStdin) {
    use std::io::Write;
    stdin.write_all(b"go\n").unwrap();
    stdin.flush().unwrap();
}

pub fn spawn_holder(db: &Db, mode: &str, name: &str) -> (Child, mpsc::Receiver<String>) {
    let mut child = db
        .helper(&[mode, &db.url, name, "2"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = lines(child.stdout.take().unwrap());
    (child, out)
}

pub fn token_of(line: &str) -> u64 {
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// A holds with ttl 2 s and auto-renewal and is stopped for 5 s; B, on `b_db` (another
/// Galera node, or the same database), takes the lock and writes through fenced
/// transactions; A is continued and at once runs a fenced transaction: refused, and only
/// B's rows are in the table.
pub fn paused_holder_is_refused<C: AppConn>(a_db: &Db, b_db: &Db) {
    let name = unique_name("fenced-paused");
    let (mut a, a_out) = spawn_holder(a_db, "fenced-pause", &name);
    let a_token = token_of(&expect_line(&a_out, "acquired", 30 * SEC));
    kill(&a, "-STOP");
    let b_locks = b_db.locks();
    // B is a bystander here: it holds the lock through A's pause and A's attempt (5 s and
    // more), and on a loaded machine a renewal can go unanswered for longer than the
    // default lease's 1.5 s window (seen: commits waiting seconds for the WAL's fsync).
    // A loss of B is then reported, not fatal to the test binary, and changes nothing
    // for A: B's acquisition already moved the token past A's.
    let b_lost = Arc::new(AtomicBool::new(false));
    let b = b_locks
        .lock(&name)
        .timeout(30 * SEC)
        .lost_lock_cb({
            let b_lost = Arc::clone(&b_lost);
            move |lost| {
                eprintln!("paused holder: B {lost}");
                b_lost.store(true, Ordering::SeqCst);
            }
        })
        .acquire()
        .expect("B takes the lock once A's lease has ended");
    let mut b_conn = C::connect(&b_db.url).unwrap();
    for n in 0..3 {
        b.transaction(&mut b_conn, |conn| insert(conn, "B", n))
            .unwrap();
    }
    // A's stdin line waits for it; it runs the transaction as soon as it is continued.
    send_line(a.stdin.as_mut().unwrap());
    std::thread::sleep(5 * SEC);
    kill(&a, "-CONT");
    let outcome = expect_line(&a_out, "", 60 * SEC);
    let outcome = if outcome.starts_with("lost") {
        expect_line(&a_out, "refused", 60 * SEC)
    } else {
        outcome
    };
    println!(
        "paused holder [{:?}]: A token {a_token}, B token {}, A's transaction: {outcome}",
        a_db.kind,
        b.token().unwrap()
    );
    assert_eq!(
        outcome,
        format!("refused {a_token} {}", b.token().unwrap()),
        "A's transaction"
    );
    wait_exit(&mut a, 60 * SEC);
    assert_eq!(rows(&mut b_conn, "A"), 0, "a stale commit");
    assert_eq!(rows(&mut b_conn, "B"), 3);
    match b.release() {
        Err(database_locks::Error::Lost { .. }) if b_lost.load(Ordering::SeqCst) => {}
        other => other.unwrap(),
    }
}

/// What [`paused_inside`] saw.
#[derive(Debug)]
pub struct Inside {
    pub a_token: u64,
    /// A's transaction: `committed`, `refused ...` or `failed ...`.
    pub outcome: String,
    /// The `lost ...` lines A printed before its transaction's outcome.
    pub lost: Vec<String>,
    /// Those it printed after it.
    pub lost_after: Vec<String>,
    /// A's last line: `released`, `released after loss` or `release failed ...`.
    pub released: String,
    /// Whether B had the lock before A was continued.
    pub got_while_stopped: bool,
    pub b_token: u64,
    /// The rows of A that B's fenced transaction saw.
    pub b_saw: i64,
    /// The rows of A and of B in the table at the end.
    pub a_rows: i64,
    pub b_rows: i64,
}

/// A (on `a_db`) takes the lock with ttl 2 s and auto-renewal, inserts a row in a fenced
/// transaction and is stopped there for 5 s; B (on `b_db`) tries to take the lock
/// meanwhile and, once it has it, inserts a row in a fenced transaction. A is continued,
/// inserts a second row, commits if it can, and releases.
pub fn paused_inside<C: AppConn>(a_db: &Db, b_db: &Db) -> Inside {
    let name = unique_name("fenced-inside");
    let (mut a, a_out) = spawn_holder(a_db, "fenced-inside", &name);
    let a_token = token_of(&expect_line(&a_out, "acquired", 30 * SEC));
    expect_line(&a_out, "inside", 30 * SEC);
    kill(&a, "-STOP");
    let got = Arc::new(AtomicBool::new(false));
    let b = {
        let (locks, name, got) = (b_db.locks(), name.clone(), Arc::clone(&got));
        let url = b_db.url.clone();
        std::thread::spawn(move || {
            let guard = locks
                .lock(&name)
                .retry(Some(Duration::from_millis(50)))
                .timeout(120 * SEC)
                .acquire()
                .unwrap();
            got.store(true, Ordering::SeqCst);
            let mut conn = C::connect(&url).unwrap();
            let seen = guard
                .transaction(&mut conn, |conn| -> Result<i64, BoxError> {
                    let seen = rows(conn, "A");
                    insert(conn, "B", 1)?;
                    Ok(seen)
                })
                .unwrap();
            (guard.token().unwrap(), seen)
        })
    };
    std::thread::sleep(5 * SEC);
    let got_while_stopped = got.load(Ordering::SeqCst);
    send_line(a.stdin.as_mut().unwrap());
    kill(&a, "-CONT");
    wait_exit(&mut a, 60 * SEC);
    let printed: Vec<String> = a_out.try_iter().collect();
    // The lines up to A's outcome, and the losses A reported before it.
    let outcome_at = printed
        .iter()
        .position(|l| !l.starts_with("lost"))
        .unwrap_or(printed.len());
    let lost_before = printed[..outcome_at].to_vec();
    let (lost_after, rest): (Vec<String>, Vec<String>) = printed[outcome_at..]
        .iter()
        .cloned()
        .partition(|l| l.starts_with("lost"));
    let (b_token, b_saw) = b.join().unwrap();
    let mut conn = C::connect(&b_db.url).unwrap();
    let seen = Inside {
        a_token,
        outcome: rest.first().cloned().unwrap_or_default(),
        lost: lost_before,
        lost_after,
        released: rest.last().cloned().unwrap_or_default(),
        got_while_stopped,
        b_token,
        b_saw,
        a_rows: rows(&mut conn, "A"),
        b_rows: rows(&mut conn, "B"),
    };
    println!(
        "holder paused inside its transaction [{:?}]: {seen:?}",
        a_db.kind
    );
    seen
}
