//! `guard = name`: the body sees its guard, e.g. to run a fenced transaction.
use database_locks::{locked, Command, LockGuard};
use diesel::SqliteConnection;

#[derive(Debug)]
pub enum AppError {
    Lock(database_locks::Error),
    Db(diesel::result::Error),
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::Lock(e) => write!(f, "{e}"),
            AppError::Db(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for AppError {}

impl From<database_locks::Error> for AppError {
    fn from(error: database_locks::Error) -> Self {
        AppError::Lock(error)
    }
}

impl From<diesel::result::Error> for AppError {
    fn from(error: diesel::result::Error) -> Self {
        AppError::Db(error)
    }
}

#[locked("ledger", guard = lock)]
fn post(conn: &mut SqliteConnection, amount: i64) -> Result<i64, AppError> {
    let held: &LockGuard = lock;
    held.transaction(conn, |_conn| Ok(amount))
}

struct Ledger;

impl Ledger {
    #[locked(guard = ledger_lock, lock_ttl = 30)]
    fn close(&self) -> Result<Option<u64>, AppError> {
        Ok(ledger_lock.token())
    }
}

struct Reindex;

#[locked(lock_ttl = 60, guard = this_lock)]
impl Command for Reindex {
    type Error = AppError;

    fn handle(&mut self) -> Result<(), Self::Error> {
        let _ = this_lock.name();
        Ok(())
    }
}

/// Nested bodies each name their own guard.
#[locked("outer", guard = outer)]
fn nested() -> Result<(), AppError> {
    inner(outer.name())
}

#[locked("inner", guard = inner_lock)]
fn inner(outer_name: &str) -> Result<(), AppError> {
    assert_ne!(outer_name, inner_lock.name());
    Ok(())
}

fn main() {
    let _ = (post, Ledger::close, Reindex, nested);
}
