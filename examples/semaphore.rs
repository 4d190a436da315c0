//! At most 2 of 5 workers inside at once: a counting semaphore on the embedded SQLite
//! database (the same on PostgreSQL or MySQL, and across processes and hosts).
//!
//! ```text
//! cargo run --example semaphore
//! ```
//!
//! Set `DATABASE_LOCKS_URL` (e.g. `postgres://...`) to use a server instead.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

fn main() -> Result<(), database_locks::Error> {
    let inside = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (1..=5)
        .map(|worker| {
            let inside = Arc::clone(&inside);
            thread::spawn(move || -> Result<(), database_locks::Error> {
                for _ in 0..2 {
                    // One of 2 permits: the other workers wait for a slot to come free.
                    let permit = database_locks::semaphore("semaphore-example", 2)
                        .lock_ttl(Some(Duration::from_secs(10)))
                        .timeout(Duration::from_secs(60))
                        .acquire()?;
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    let slot = permit.permit().map(|p| p.slot).unwrap_or_default();
                    println!(
                        "worker {worker}: in slot {slot} (token {}), {now} inside",
                        permit.token().unwrap_or_default()
                    );
                    assert!(now <= 2, "{now} workers inside a semaphore of 2");
                    thread::sleep(Duration::from_millis(100)); // the work at most 2 may do
                    inside.fetch_sub(1, Ordering::SeqCst);
                    permit.release()?;
                }
                Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker thread panicked")?;
    }
    println!("done: never more than 2 inside");
    Ok(())
}
