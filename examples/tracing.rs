//! The crate's spans and events through a `tracing` subscriber: run with
//! `cargo run --example tracing` (SQLite in a temporary directory, or `DATABASE_LOCKS_URL`).
//!
//! Shows, at DEBUG, the `acquire` span (lock, owner, then outcome, token, wait_seconds),
//! the `renew` span of each renewal statement, and the `release` span.

use std::time::Duration;

use database_locks::{Config, Locks};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        // Each event with the spans it happened in, and each span's fields when it closes.
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .init();
    let dir = tempfile::tempdir()?;
    let url = std::env::var("DATABASE_LOCKS_URL")
        .unwrap_or_else(|_| dir.path().join("locks.sqlite3").display().to_string());
    let locks = Locks::new(Config::new(url))?;
    let guard = locks
        .lock("tracing-example")
        .lock_ttl(Some(Duration::from_secs(2)))
        .lock_ttl_renew(Duration::from_millis(1500))
        .acquire()?;
    // The renewal thread renews every ttl - ttl_renew = 0.5 s; a renewal by hand is a
    // `renew` span too.
    std::thread::sleep(Duration::from_millis(1200));
    guard.renew()?;
    guard.release()?;
    Ok(())
}
