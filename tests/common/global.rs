//! The process-wide global handle, for `#[locked]` tests: each test holds [`Global`] while
//! it points the handle at a database of its own, so the tests of one binary run one at a
//! time, whatever the harness's thread count.

use std::sync::{Mutex, MutexGuard, PoisonError};

use super::Db;

static GLOBAL: Mutex<()> = Mutex::new(());

/// Holds the global handle, pointed at a database of this test's own.
pub struct Global {
    pub db: Db,
    _serial: MutexGuard<'static, ()>,
}

impl Global {
    pub fn on(db: &Db) -> Global {
        let serial = GLOBAL.lock().unwrap_or_else(PoisonError::into_inner);
        let db = db.isolated();
        database_locks::configure(db.config())
            .unwrap_or_else(|e| panic!("configure {}: {e}", db.url));
        database_locks::global()
            .and_then(|locks| locks.migrate())
            .unwrap_or_else(|e| panic!("create the lock table in {}: {e}", db.url));
        Global {
            db,
            _serial: serial,
        }
    }
}

/// The names of the locks held now on the global handle, by the database's clock, sorted.
pub fn held_names() -> Vec<String> {
    let locks = database_locks::global().expect("global handle");
    let mut names: Vec<String> = locks
        .list()
        .expect("list locks")
        .into_iter()
        .filter(|row| row.is_held())
        .map(|row| row.name)
        .collect();
    names.sort();
    names
}
