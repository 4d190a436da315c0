//! Issue 11: a process that used PostgreSQL over TLS crashed now and then on its way out.
//! At `exit`, OpenSSL's `atexit` handler (`OPENSSL_cleanup`, registered by libpq's first
//! TLS connection) freed OpenSSL's state while an r2d2 worker was in a TLS handshake:
//! SIGSEGV or SIGBUS in libcrypto. `Locks::new` now initialises OpenSSL without that handler.
//! A second race: libpq's default `gssencmode=prefer` calls GSSAPI on every connect, and
//! libgssapi_krb5's destructor at exit aborts a connect in progress; the library now
//! gives libpq `gssencmode=disable` unless the URL or `PGGSSENCMODE` says otherwise.
//!
//! Each run is a `lock-helper exit-race` process that returns from `main` at a random moment
//! while every background thread is busy with the database and its sessions are terminated
//! every few milliseconds, so r2d2's workers keep reconnecting. Before the fix, about 2 to 7
//! runs in 100 died by a signal on this machine; after it, none in 1,600.
#![cfg(feature = "postgres")]

mod common;

use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use common::Db;
use database_locks::BackendKind;

/// How hard one test drives the race.
struct Race {
    /// Processes in all.
    runs: usize,
    /// Processes at a time; each keeps at most `threads + 4` connections.
    parallel: usize,
    /// Threads per process that take and release locks.
    threads: &'static str,
    /// Each process returns from `main` at a random moment within this many milliseconds
    /// of holding its locks.
    max_ms: &'static str,
}

/// Runs the exits; returns the failures, each described in one line.
fn exit_races(url: &str, race: &Race) -> Vec<String> {
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..race.parallel {
            scope.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < race.runs {
                    let output = Command::new(common::HELPER)
                        .args(["exit-race", url, race.threads, race.max_ms])
                        .output()
                        .expect("spawn lock-helper");
                    if let Some(failure) = failure(&output) {
                        failures.lock().unwrap().push(failure);
                    }
                }
            });
        }
    });
    failures.into_inner().unwrap()
}

/// Why a run failed: killed by a signal, a status other than 0, or no final line.
fn failure(output: &Output) -> Option<String> {
    use std::os::unix::process::ExitStatusExt;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last_err = stderr.lines().last().unwrap_or_default();
    if let Some(signal) = output.status.signal() {
        return Some(format!("killed by signal {signal} ({last_err})"));
    }
    if !output.status.success() {
        return Some(format!("exited with {} ({last_err})", output.status));
    }
    // Releases may fail (the helper terminates its own sessions); the line still comes.
    if !stdout.lines().any(|l| l.starts_with("released")) {
        return Some(format!("no final line; stdout {stdout:?}"));
    }
    None
}

/// The URL with `extra` settings appended as query parameters.
fn with_params(url: &str, extra: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{extra}")
}

/// The race needs TLS: a server without it would make the test pass for nothing.
fn assert_tls(url: &str) {
    let sql = "SELECT 1 FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl";
    let rows = database_locks_testkit::try_exec(BackendKind::Postgres, url, sql)
        .unwrap_or_else(|e| panic!("cannot reach {url} over TLS ({e}); this test needs ssl = on"));
    assert_eq!(rows, 1, "connections to {url} are not TLS");
}

fn check(url: &str, race: &Race) {
    assert_tls(url);
    let started = Instant::now();
    let failures = exit_races(url, race);
    println!(
        "{} exits ({} at a time) in {:.1} s: {} failed",
        race.runs,
        race.parallel,
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} runs failed:\n{}",
        failures.len(),
        race.runs,
        failures.join("\n")
    );
}

/// OpenSSL's exit-time cleanup under TLS handshakes in progress, and GSSAPI's destructor
/// under connects in progress. The URL sets neither: the library initialises OpenSSL
/// without its exit handler and gives libpq `gssencmode=disable`. Before the OpenSSL fix,
/// 3 to 12 of these 200 runs died by SIGSEGV (56 in 8 runs of the test, 3.5 in 100): at
/// that rate all 200 survive by luck about once in 1,000 runs of the test; at the lowest
/// rate seen, 1 in 20. With the OpenSSL fix alone, 1 to 2 runs in 100 still aborted in
/// libgssapi_krb5 (`k5_mutex_lock: Assertion 'r == 0' failed`).
#[test]
fn exit_during_tls_handshakes_does_not_crash() {
    let db = Db::postgres();
    let race = Race {
        runs: 200,
        parallel: 4,
        threads: "3",
        max_ms: "100",
    };
    check(&with_params(&db.url, "sslmode=require"), &race);
}

/// What remains for a URL that asks for GSSAPI encryption (`gssencmode=prefer`, libpq's
/// own default): every TCP connection first asks GSSAPI for credentials
/// (`gss_acquire_cred`), and at exit libgssapi_krb5's destructor destroys the mutexes it
/// uses: SIGABRT, about 1 or 2 runs in 100 with these settings (5 of 300). A library
/// cannot fix that without an exit hook (unsafe code); README, "Exiting".
#[test]
#[ignore = "GSSAPI's destructor at exit races with connections being opened; documented limit"]
fn exit_during_gssapi_probe_does_not_crash() {
    let db = Db::postgres();
    let race = Race {
        runs: 300,
        parallel: 2,
        threads: "8",
        max_ms: "200",
    };
    check(
        &with_params(&db.url, "sslmode=require&gssencmode=prefer"),
        &race,
    );
}
