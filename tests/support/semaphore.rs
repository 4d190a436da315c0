//! `lock-helper` modes for semaphores (`tests/semaphore.rs`):
//!
//! ```text
//! lock-helper sem-cs URL NAME PERMITS COUNT DIR   COUNT sections, each inside one permit
//! lock-helper sem-hold URL NAME PERMITS TTL       one permit until stdin closes (or a kill)
//! ```
//! `sem-cs` appends `enter exit pid row token` to `DIR/intervals` for every section, and
//! `row token nanos` to `DIR/losses` when a permit is reported lost; it ends with
//! `losses N`. `sem-hold` prints `acquired ROW TOKEN`.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use database_locks::Error;

use super::{handle, now_nanos, say, secs};

pub fn main(mode: &str, url: &str, rest: &[&str]) -> ExitCode {
    match (mode, rest) {
        ("sem-cs", [name, permits, count, dir]) => sections(
            url,
            name,
            permits.parse().expect("permits"),
            count.parse().expect("count"),
            Path::new(dir),
        ),
        ("sem-hold", [name, permits, ttl]) => {
            hold(url, name, permits.parse().expect("permits"), ttl)
        }
        _ => {
            eprintln!("usage: see tests/support/semaphore.rs");
            ExitCode::from(2)
        }
    }
}

/// One `write` of the whole line: with `O_APPEND` it lands whole, whatever the other
/// processes append at the same time (`writeln!` may split it into several writes).
fn append(path: &Path, line: &str) {
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open log");
    log.write_all(format!("{line}\n").as_bytes())
        .expect("append");
}

fn sections(url: &str, name: &str, permits: u32, count: u32, dir: &Path) -> ExitCode {
    let locks = handle(url);
    let (intervals, losses_at) = (dir.join("intervals"), dir.join("losses"));
    let losses = Arc::new(AtomicU32::new(0));
    let mut seed = (std::process::id() as u64) ^ (now_nanos() as u64) | 1;
    for _ in 0..count {
        let (losses, losses_at) = (Arc::clone(&losses), losses_at.clone());
        // A loss is allowed (a loaded machine can stall a process past its lease); it must
        // be reported in time, which the checker verifies from `losses`.
        let guard = locks
            .semaphore(name, permits)
            .retry(Some(Duration::from_millis(50)))
            // No timeout: the test checks exclusion, not throughput, and the test waits at
            // most 600 s for each process. A loaded machine can make every release slow:
            // PostgreSQL commits a NOTIFY under a database-wide lock, so releases take
            // turns on the WAL flush, which took 2.6 s each while another suite ran.
            .lost_lock_cb(move |lost| {
                losses.fetch_add(1, Ordering::SeqCst);
                eprintln!("sem-cs: {lost}");
                append(
                    &losses_at,
                    &format!("{} {} {}", lost.name, lost.token, now_nanos()),
                );
            })
            .acquire()
            .unwrap_or_else(|e| panic!("acquire: {e}"));
        let permit = guard.permit().expect("a permit");
        let token = guard.token().unwrap_or_default();
        let entered = now_nanos();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(5 + seed % 20));
        append(
            &intervals,
            &format!(
                "{entered} {} {} {} {token}",
                now_nanos(),
                std::process::id(),
                permit.row
            ),
        );
        match guard.release() {
            Ok(()) | Err(Error::Lost { .. } | Error::Unresponsive { .. }) => {}
            Err(e) => panic!("release: {e}"),
        }
    }
    say(&format!("losses {}", losses.load(Ordering::SeqCst)));
    ExitCode::SUCCESS
}

fn hold(url: &str, name: &str, permits: u32, ttl: &str) -> ExitCode {
    let guard = match handle(url)
        .semaphore(name, permits)
        .lock_ttl(Some(secs(ttl)))
        .lost_lock_cb(|lost| say(&format!("lost {}", lost.reason)))
        .acquire()
    {
        Ok(guard) => guard,
        Err(err) => {
            say(&format!("error {err}"));
            return ExitCode::from(1);
        }
    };
    let row = guard.permit().map(|p| p.row).unwrap_or_default();
    say(&format!(
        "acquired {row} {}",
        guard.token().unwrap_or_default()
    ));
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
    match guard.release() {
        Ok(()) => {
            say("released");
            ExitCode::SUCCESS
        }
        Err(err) => {
            say(&format!("error {err}"));
            ExitCode::from(1)
        }
    }
}
