//! `#[locked]` on `impl Command for T` wraps `handle`: lock `<module>::Reindex`.
use std::process::ExitCode;

use database_locks::{locked, Command};

pub struct Reindex {
    pub index: String,
}

#[derive(Debug)]
pub enum ReindexError {
    Lock(database_locks::Error),
    Missing(String),
}

impl std::fmt::Display for ReindexError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReindexError::Lock(error) => write!(f, "{error}"),
            ReindexError::Missing(index) => write!(f, "no index {index}"),
        }
    }
}

impl std::error::Error for ReindexError {}

impl From<database_locks::Error> for ReindexError {
    fn from(error: database_locks::Error) -> Self {
        ReindexError::Lock(error)
    }
}

#[locked(lock_ttl = 60, auto_renew)]
impl Command for Reindex {
    type Error = ReindexError;

    /// Docs stay.
    fn handle(&mut self) -> Result<(), Self::Error> {
        if self.index.is_empty() {
            return Err(ReindexError::Missing(self.index.clone()));
        }
        Ok(())
    }
}

/// Generic commands, and commands written with the crate path.
pub struct Sweep<T>(T);

#[database_locks::locked(retry = None)]
impl<T: Send> database_locks::Command for Sweep<T> {
    type Error = database_locks::Error;

    fn handle(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

fn main() -> ExitCode {
    if std::env::args().count() > 100 {
        return Reindex {
            index: "products".into(),
        }
        .execute();
    }
    let _ = <Sweep<u8> as Command>::execute;
    ExitCode::SUCCESS
}
