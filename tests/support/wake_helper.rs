//! Test support for `tests/sqlite_wake.rs` and `tests/mysql_wake.rs`, not part of the
//! public API: one waiter in a process of its own, which says when its first attempt has
//! been refused; or one holder.
//!
//! ```text
//! wake-helper wait URL NAME PERMITS RETRY TIMEOUT
//! wake-helper hold URL NAME TTL
//! ```
//! Waits for the lock NAME (PERMITS 0), or for a permit of the semaphore NAME of PERMITS,
//! polling every RETRY seconds and giving up after TIMEOUT. Settings other than the URL
//! come from the environment (`DATABASE_LOCKS_NOTIFY`). Lines on stdout:
//! - `waiting STATE` once the handle's `Debug` shows where release notifications stand
//!   (`Watching`, `Off`): the handle sets that only after the first attempt was refused;
//! - then `acquired TOKEN MS`, `timeout MS` or `error ...`, MS counted from the start of
//!   the acquisition; then it releases and exits.
//!
//! `hold` takes the lock NAME with a lease of TTL seconds (renewed), prints `held TOKEN`
//! and sleeps until killed.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use database_locks::{Config, Error, Locks};

fn secs(arg: &str) -> Duration {
    Duration::from_secs_f64(arg.parse().unwrap_or_else(|_| panic!("not seconds: {arg}")))
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Prints `waiting STATE` once the handle has chosen how it learns of releases.
fn report_waiting(locks: Locks, limit: Duration) {
    std::thread::spawn(move || {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            let debug = format!("{locks:?}");
            for state in [
                "Watching",
                "SessionLocks",
                "NoChannel",
                "Off",
                "Listening",
                "Delivered",
                "NotDelivered",
            ] {
                if debug.contains(&format!("notifications: {state},")) {
                    say(&format!("waiting {state}"));
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
}

fn wait(url: &str, name: &str, permits: u32, retry: Duration, timeout: Duration) -> ExitCode {
    let config = Config::from_env_with_url(url).unwrap_or_else(|e| panic!("settings: {e}"));
    let locks = Locks::new(config).unwrap_or_else(|e| panic!("handle for {url}: {e}"));
    report_waiting(locks.clone(), timeout);
    let builder = if permits == 0 {
        locks.lock(name)
    } else {
        locks.semaphore(name, permits)
    };
    let started = Instant::now();
    let acquired = builder.retry(Some(retry)).timeout(timeout).acquire();
    let ms = started.elapsed().as_millis();
    match acquired {
        Ok(guard) => {
            say(&format!(
                "acquired {} {ms}",
                guard.token().unwrap_or_default()
            ));
            let _ = guard.release();
            ExitCode::SUCCESS
        }
        Err(Error::Timeout { .. }) => {
            say(&format!("timeout {ms}"));
            ExitCode::SUCCESS
        }
        Err(err) => {
            say(&format!("error {err}"));
            ExitCode::from(1)
        }
    }
}

fn hold(url: &str, name: &str, ttl: Duration) -> ExitCode {
    let config = Config::from_env_with_url(url).unwrap_or_else(|e| panic!("settings: {e}"));
    let locks = Locks::new(config).unwrap_or_else(|e| panic!("handle for {url}: {e}"));
    match locks.lock(name).lock_ttl(Some(ttl)).try_acquire() {
        Ok(Some(guard)) => {
            say(&format!("held {}", guard.token().unwrap_or_default()));
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        Ok(None) => {
            say("busy");
            ExitCode::from(1)
        }
        Err(err) => {
            say(&format!("error {err}"));
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["wait", url, name, permits, retry, timeout] => wait(
            url,
            name,
            permits.parse().expect("permits"),
            secs(retry),
            secs(timeout),
        ),
        ["hold", url, name, ttl] => hold(url, name, secs(ttl)),
        _ => {
            eprintln!("usage: wake-helper wait URL NAME PERMITS RETRY TIMEOUT | hold URL NAME TTL");
            ExitCode::from(2)
        }
    }
}
