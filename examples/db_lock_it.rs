//! The seed's own test command, `manage.py db_lock_it`, as a [`Command`]: takes the lock
//! named on the command line, sleeps, releases.
//!
//! ```text
//! cargo run --example db_lock_it -- nightly -d 5 & cargo run --example db_lock_it -- nightly -d 5
//! ```
//!
//! Two copies started at once against one database take turns: each prints
//! `Got the lock, sleeping 5 seconds`, then `Releasing lock`, one after the other. The
//! database is `DATABASE_LOCKS_URL` (else `DATABASE_URL`, else the SQLite file
//! `database_locks.sqlite3` here). The exit status is 0, or 1 with the error on stderr.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use database_locks::{locked, Command};

/// Lock it!
#[derive(Debug, Parser)]
#[command(name = "db_lock_it")]
struct DbLockIt {
    /// lock name to be used
    lock_name: String,

    /// Owner to be registered with the lock (used to renew and persist lock - unique per
    /// run by default)
    #[arg(short, long)]
    owner: Option<String>,

    /// Lock duration (in seconds)
    #[arg(short, long, default_value = "10", value_parser = seconds)]
    duration: f64,
}

// The seed's command: `with lock(options['lock_name'], locked_by=options['owner'])`.
#[locked(name = self.lock_name.as_str(), locked_by = self.owner.as_deref())]
impl Command for DbLockIt {
    type Error = database_locks::Error;

    fn handle(&mut self) -> Result<(), Self::Error> {
        println!("Got the lock, sleeping {} seconds", self.duration);
        std::thread::sleep(Duration::from_secs_f64(self.duration));
        println!("Releasing lock");
        Ok(())
    }
}

fn seconds(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds >= 0.0 => Ok(seconds),
        _ => Err(format!("{value:?} is not a number of seconds")),
    }
}

fn main() -> ExitCode {
    DbLockIt::parse().execute()
}
