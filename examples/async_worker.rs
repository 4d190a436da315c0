//! A tokio worker that must run its job in one place at a time. Start two at once and
//! they take turns:
//!
//! ```text
//! cargo run --example async_worker & cargo run --example async_worker; wait
//! ```
//!
//! Arguments: `[NAME] [ROUNDS]` (default `async-worker`, 3). The database is the
//! embedded SQLite file unless `DATABASE_LOCKS_URL` names another.
//!
//! Each round takes the lock without blocking the runtime, does its work while watching
//! for the lock's loss (the work stops the moment the lock is lost), releases, and rests
//! long enough for a worker in another process, polling every 500 ms, to get its turn.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), database_locks::Error> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "async-worker".to_owned());
    let rounds: u32 = args.next().and_then(|r| r.parse().ok()).unwrap_or(3);
    let me = std::process::id();
    for round in 1..=rounds {
        let guard = database_locks::lock(&name)
            .timeout(Duration::from_secs(60))
            .lock_ttl(Some(Duration::from_secs(10)))
            .acquire_async()
            .await?;
        let token = guard.token().unwrap_or_default();
        println!(
            "{me} holds {name} round {round} token {token} from {}",
            millis()
        );
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(300)) => {}
            lost = guard.lost() => {
                eprintln!("{me}: {lost}; stopping the work");
                drop(guard);
                std::process::exit(database_locks::LOST_LOCK_EXIT_CODE);
            }
        }
        println!(
            "{me} releases {name} round {round} token {token} at {}",
            millis()
        );
        guard.release_async().await?;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    Ok(())
}
