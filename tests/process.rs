//! Behaviour that needs a process of its own.

mod common;

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use common::{unique_name, Db};
use database_locks_testkit::on_each_backend;

/// The default `lost_lock_cb` ends the process with status 75, like the seed raising in
/// the main thread, before the lease would have run out.
fn default_lost_lock_cb_ends_the_process(db: &Db) {
    let name = unique_name("default-cb");
    let mut child = db
        .helper(&["hold", &db.url, &name, "4", "2", "60"])
        .spawn()
        .expect("spawn lock-helper");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("acquired"), "helper said {line:?}");
    db.steal(&name, "thief");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the holder kept running after its lock was stolen");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(database_locks::LOST_LOCK_EXIT_CODE));
}

on_each_backend!(pgbouncer; default_lost_lock_cb_ends_the_process);
