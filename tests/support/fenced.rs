//! `lock-helper` modes for fenced transactions (tests/fenced.rs, tests/galera.rs): the
//! application's connection is a diesel connection of the URL's backend, and its table is
//! `fenced_rows (writer, n)` or `fenced_counter (id, n)`, created by the test.

use std::io::BufRead;
use std::process::ExitCode;
use std::time::Duration;

use database_locks::{Error, LockGuard, Locks};
use database_locks_testkit::AppConn;

use crate::{handle, say, secs};

/// What a fenced closure returns as its error.
#[derive(Debug)]
enum AppError {
    Lock(Error),
    Db(diesel::result::Error),
}

impl From<Error> for AppError {
    fn from(e: Error) -> Self {
        AppError::Lock(e)
    }
}

impl From<diesel::result::Error> for AppError {
    fn from(e: diesel::result::Error) -> Self {
        AppError::Db(e)
    }
}

/// The outcome of a fenced transaction as a line: `committed`, `refused TOKEN CURRENT` or
/// `failed ERROR`.
fn outcome<T>(result: &Result<T, AppError>) -> String {
    match result {
        Ok(_) => "committed".into(),
        Err(AppError::Lock(Error::Fenced {
            token,
            current_token,
            ..
        })) => format!("refused {token} {current_token}"),
        Err(AppError::Lock(e)) => format!("failed {e}"),
        Err(AppError::Db(e)) => format!("failed {e}"),
    }
}

fn stdin_line() {
    let _ = std::io::stdin().lock().read_line(&mut String::new());
}

/// Runs `mode` on the connection type of `url`'s backend.
pub fn main(mode: &str, url: &str, args: &[&str]) -> ExitCode {
    #[cfg(feature = "postgres")]
    if url.starts_with("postgres") {
        return run::<diesel::PgConnection>(mode, url, args);
    }
    #[cfg(feature = "mysql")]
    if url.starts_with("mysql") {
        return run::<diesel::MysqlConnection>(mode, url, args);
    }
    #[cfg(feature = "sqlite")]
    return run::<diesel::SqliteConnection>(mode, url, args);
    #[allow(unreachable_code)]
    {
        say(&format!("error no backend for {url}"));
        ExitCode::from(2)
    }
}

fn run<C: AppConn>(mode: &str, url: &str, args: &[&str]) -> ExitCode {
    // The handle first: it initialises OpenSSL without the exit-time cleanup that crashes
    // a process exiting while a thread opens a TLS connection, which only works before
    // libpq's first connection (the crate's docs say so; this helper got it backwards).
    let locks = handle(url);
    let mut conn = C::connect(url).unwrap_or_else(|e| panic!("app connection: {e}"));
    match (mode, args) {
        ("fenced-pause", [name, ttl]) => pause(&locks, &mut conn, name, ttl),
        ("fenced-inside", [name, ttl]) => inside(&locks, &mut conn, name, ttl),
        ("count", [name, fenced, times, ttl]) => count(
            &locks,
            url,
            &mut conn,
            name,
            *fenced == "fenced",
            times.parse().expect("count"),
            secs(ttl),
        ),
        _ => {
            eprintln!("usage: see the comment at the top of tests/support/lock_helper.rs");
            ExitCode::from(2)
        }
    }
}

/// Acquires with auto-renewal and a `lost_lock_cb` that prints `lost ...`.
fn acquire(locks: &Locks, name: &str, ttl: &str) -> LockGuard {
    let guard = locks
        .lock(name)
        .lock_ttl(Some(secs(ttl)))
        .lost_lock_cb(|lost| say(&format!("lost {}", lost.reason)))
        .acquire()
        .unwrap_or_else(|e| panic!("acquire: {e}"));
    say(&format!("acquired {}", guard.token().unwrap_or_default()));
    guard
}

/// Holds NAME; on a line of stdin (sent while the process is stopped), one fenced
/// transaction inserts `('A', token)`.
fn pause<C: AppConn>(locks: &Locks, conn: &mut C, name: &str, ttl: &str) -> ExitCode {
    let guard = acquire(locks, name, ttl);
    stdin_line();
    let token = guard.token().unwrap_or_default();
    let result = guard.transaction(conn, |conn| -> Result<(), AppError> {
        conn.exec(&format!(
            "INSERT INTO fenced_rows (writer, n) VALUES ('A', {token})"
        ))?;
        Ok(())
    });
    say(&outcome(&result));
    drop(guard);
    say("released");
    ExitCode::SUCCESS
}

/// Holds NAME and, inside one fenced transaction, inserts `('A', 1)`, prints `inside`,
/// waits for a line of stdin, inserts `('A', 2)` and commits; then releases.
fn inside<C: AppConn>(locks: &Locks, conn: &mut C, name: &str, ttl: &str) -> ExitCode {
    let guard = acquire(locks, name, ttl);
    let result = guard.transaction(conn, |conn| -> Result<(), AppError> {
        conn.exec("INSERT INTO fenced_rows (writer, n) VALUES ('A', 1)")?;
        say("inside");
        stdin_line();
        conn.exec("INSERT INTO fenced_rows (writer, n) VALUES ('A', 2)")?;
        Ok(())
    });
    say(&outcome(&result));
    let lost = guard.is_lost();
    match guard.release() {
        Ok(()) if !lost => say("released"),
        Ok(()) => say("released after loss"),
        Err(e) => say(&format!("release failed {e}")),
    }
    ExitCode::SUCCESS
}

/// COUNT read-modify-write increments of `fenced_counter` row 1 (fenced) or 2 (plain
/// writes under the guard), each under a fresh acquisition of NAME with TTL and no
/// auto-renewal. Each reads the value, waits 5 to 15 ms and writes it plus one. Every
/// tenth section (at a phase of its own) first sleeps 1.5 TTL (a pause past its lease, after the acquisition that
/// it believes still holds), so that others take the lock meanwhile. An increment that
/// fails with a database error (a server restarted by another test, say) is counted as an
/// error, after which the connection is replaced. Prints `ok N refused M errors K`.
fn count<C: AppConn>(
    locks: &Locks,
    url: &str,
    conn: &mut C,
    name: &str,
    fenced: bool,
    count: u32,
    ttl: Duration,
) -> ExitCode {
    let row = if fenced { 1 } else { 2 };
    let read = format!("SELECT n FROM fenced_counter WHERE id = {row}");
    let (mut ok, mut refused, mut errors) = (0u32, 0u32, 0u32);
    let mut seed = u64::from(std::process::id()) | 1;
    for i in 0..count {
        let guard = locks
            .lock(name)
            .lock_ttl(Some(ttl))
            .auto_renew(false)
            .retry(Some(Duration::from_millis(10)))
            .timeout(Duration::from_secs(300))
            .acquire()
            .unwrap_or_else(|e| panic!("acquire: {e}"));
        // Each process pauses at its own phase (its pid's): were they all to pause at the
        // same `i`, the process that takes over from a paused one would itself be pausing
        // then, and nothing would be written beside the late write (seen with 4 processes:
        // no plain update lost in 200).
        if (i + std::process::id()).is_multiple_of(10) {
            std::thread::sleep(ttl * 3 / 2);
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let gap = Duration::from_micros(5000 + seed % 10_000);
        let increment = |conn: &mut C| -> Result<(), AppError> {
            let value = conn.number(&read)?;
            std::thread::sleep(gap);
            conn.exec(&format!(
                "UPDATE fenced_counter SET n = {} WHERE id = {row}",
                value + 1
            ))?;
            Ok(())
        };
        let result = if fenced {
            guard.transaction(conn, increment)
        } else {
            increment(conn)
        };
        match result {
            Ok(()) => ok += 1,
            Err(AppError::Lock(Error::Fenced { .. })) => refused += 1,
            Err(AppError::Db(e)) => {
                errors += 1;
                eprintln!("increment failed: {e}");
                *conn = reconnect(url);
            }
            Err(e) => panic!("increment: {e:?}"),
        }
        drop(guard);
    }
    say(&format!("ok {ok} refused {refused} errors {errors}"));
    ExitCode::SUCCESS
}

/// A new connection to `url`, trying for up to two minutes.
fn reconnect<C: AppConn>(url: &str) -> C {
    let mut last = String::new();
    for _ in 0..240 {
        match C::connect(url) {
            Ok(conn) => return conn,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("cannot reconnect: {last}")
}
