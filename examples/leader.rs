//! Two replicas campaign to lead; the leader steps down a few times and the other takes
//! over. Each replica has a handle of its own, so the hand-off goes through the database
//! as between two processes.
//!
//! ```text
//! cargo run --example leader                                   # embedded SQLite
//! cargo run --release --example leader --features postgres -- postgres://postgres@127.0.0.1/test
//! ```
//!
//! The URL is the first argument, else `DATABASE_LOCKS_URL`, else the SQLite file
//! `database_locks.sqlite3` here. It prints each hand-off's delay: from the old leader's
//! `on_demoted` to the new one's `on_elected`.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use database_locks::{Config, Leader, Locks};

fn replica(
    config: &Config,
    name: &str,
    events: mpsc::Sender<(&'static str, u64, Instant)>,
) -> Result<Leader, database_locks::Error> {
    let (elected, demoted) = (events.clone(), events);
    Locks::new(config.clone())?
        .leader("example-leader")
        .lock_ttl(Duration::from_secs(10))
        .retry(Duration::from_millis(250))
        .step_down_pause(Duration::from_millis(300))
        .locked_by(name)
        .on_elected(move |term| {
            let _ = elected.send(("elected", term.token, Instant::now()));
        })
        .on_demoted(move |demotion| {
            println!(
                "  {:?} ends term {}: {:?}",
                demotion.term.locked_by, demotion.term.token, demotion.cause
            );
            let _ = demoted.send(("demoted", demotion.term.token, Instant::now()));
        })
        .start()
}

fn main() -> Result<(), database_locks::Error> {
    let config = match std::env::args().nth(1) {
        Some(url) => Config::from_env_with_url(&url)?,
        None => Config::from_env()?,
    };
    let (tx, events) = mpsc::channel();
    let owner = |i| format!("replica-{i}.{}", std::process::id());
    let replicas = [
        replica(&config, &owner(1), tx.clone())?,
        replica(&config, &owner(2), tx)?,
    ];
    let mut demoted_at = None;
    for round in 0..8 {
        let (_, token, at) = events
            .iter()
            .find(|e| e.0 == "elected")
            .expect("the replicas keep campaigning");
        let leader = replicas
            .iter()
            .find(|r| r.token() == Some(token))
            .expect("one leads");
        let delay = demoted_at.map(|d: Instant| {
            format!(
                ", {:.1} ms after the step-down",
                (at - d).as_secs_f64() * 1e3
            )
        });
        println!(
            "{} leads, term {token}{}",
            leader.term().map(|t| t.locked_by).unwrap_or_default(),
            delay.unwrap_or_default()
        );
        // The work only the leader does; its length varies, so that the hand-offs below
        // land at different points of the other replica's polling period.
        std::thread::sleep(Duration::from_millis(400 + 70 * round));
        leader.step_down();
        demoted_at = events.iter().find(|e| e.0 == "demoted").map(|e| e.2);
    }
    for replica in &replicas {
        replica.stop(); // releases at once if it leads (dropping it does too)
    }
    Ok(())
}
