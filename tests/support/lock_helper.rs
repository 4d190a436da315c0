//! Test support, not part of the public API: takes a lock in a process of its own so
//! tests can run, kill and observe real processes.
//!
//! ```text
//! lock-helper hold URL NAME TTL_SECS RENEW_SECS HOLD_SECS
//! ```
//! Acquires NAME with the default `lost_lock_cb` (which ends the process), prints
//! `acquired TOKEN`, holds for HOLD_SECS, prints `released` and exits 0.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use database_locks::{Config, Locks};

fn secs(arg: &str) -> Duration {
    Duration::from_secs_f64(arg.parse().unwrap_or_else(|_| panic!("not seconds: {arg}")))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["hold", url, name, ttl, renew, hold] => {
            let locks = Locks::new(Config::new(*url)).expect("handle");
            let guard = locks
                .lock(*name)
                .lock_ttl(Some(secs(ttl)))
                .lock_ttl_renew(secs(renew))
                .acquire()
                .expect("acquire");
            println!("acquired {}", guard.token().unwrap_or_default());
            let _ = std::io::stdout().flush();
            std::thread::sleep(secs(hold));
            guard.release().expect("release");
            println!("released");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: lock-helper hold URL NAME TTL_SECS RENEW_SECS HOLD_SECS");
            ExitCode::from(2)
        }
    }
}
