//! Two workers contend for one lock on the embedded SQLite database.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! With no configuration the lock table lives in `database_locks.sqlite3` in the working
//! directory; set `DATABASE_LOCKS_URL` (e.g. `postgres://...`) to use a server instead.

use std::thread;
use std::time::Duration;

fn main() -> Result<(), database_locks::Error> {
    let workers: Vec<_> = ["worker-a", "worker-b"]
        .into_iter()
        .map(|worker| {
            thread::spawn(move || -> Result<(), database_locks::Error> {
                for round in 1..=3 {
                    let guard = database_locks::lock("quickstart")
                        .lock_ttl(Some(Duration::from_secs(10)))
                        .timeout(Duration::from_secs(30))
                        .acquire()?;
                    println!(
                        "{worker}: holds {:?} (round {round}, fencing token {})",
                        guard.name(),
                        guard.token().unwrap_or_default()
                    );
                    thread::sleep(Duration::from_millis(200)); // the work only one worker may do
                    println!("{worker}: releasing");
                    guard.release()?;
                }
                Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker thread panicked")?;
    }
    Ok(())
}
