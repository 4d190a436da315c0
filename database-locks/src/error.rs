//! The one error type of the crate.

use std::time::Duration;

/// Everything that can go wrong when taking, renewing or releasing a lock.
///
/// Each message says what happened and, where there is something to do, what to do.
/// Errors from the database driver are kept as the [`source`](std::error::Error::source).
///
/// ```no_run
/// use std::time::Duration;
/// use database_locks::Error;
///
/// match database_locks::lock("report").timeout(Duration::from_secs(5)).acquire() {
///     Ok(guard) => { /* ... */ drop(guard) }
///     // Somebody else has it: not a failure for a cron job.
///     Err(Error::Timeout { holder, .. }) => eprintln!("busy, held by {holder:?}"),
///     Err(err) => eprintln!("cannot lock: {err}"),
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The lock is held by another owner and the acquisition was a single attempt
    /// (`retry(None)` or [`try_acquire`](crate::LockBuilder::try_acquire)).
    #[error("lock {name:?} is held by another owner{}", holder_suffix(.holder))]
    NotAcquired {
        /// The lock's name.
        name: String,
        /// The current holder, when the database reported it.
        holder: Option<String>,
    },

    /// The lock was still held by another owner when the timeout ran out.
    #[error("timed out after {waited:?} waiting for lock {name:?}{}", holder_suffix(.holder))]
    Timeout {
        /// The lock's name.
        name: String,
        /// How long the acquisition waited.
        waited: Duration,
        /// The holder seen on the last attempt, when the database reported it.
        holder: Option<String>,
    },

    /// This thread is inside a `#[locked]` body that holds the lock (with a different owner
    /// id), so waiting for it would wait for ever. A guard from
    /// [`acquire`](crate::LockBuilder::acquire) may have been sent to another thread, so
    /// waiting on the thread that took it is allowed (with a warning in the log).
    #[error(
        "lock {name:?} is already held by this thread; acquiring it again would wait for ever \
         (drop the first guard, or pass the same explicit `locked_by` to re-acquire)"
    )]
    WouldDeadlock {
        /// The lock's name.
        name: String,
    },

    /// The lock was lost: the renewal failed or found another owner, or the lease ran out.
    #[error("lock {name:?} was lost: {reason}")]
    Lost {
        /// The lock's name.
        name: String,
        /// Why the guard no longer holds it.
        reason: String,
    },

    /// A fenced transaction ([`LockGuard::transaction`](crate::LockGuard::transaction)) was
    /// refused: the lock row no longer carries this guard's owner and token, or its lease
    /// had ended by the database's clock. Nothing of the transaction ran or was written.
    /// The lock is lost: stop the work it protected, or acquire it again.
    #[error(
        "lock {name:?} was lost: a fenced transaction with token {token} was refused and \
         rolled back{}",
        fenced_suffix(*.current_token, .holder)
    )]
    Fenced {
        /// The lock's name.
        name: String,
        /// The token of the guard whose transaction was refused.
        token: u64,
        /// The token the row carries now (larger when someone acquired the lock since).
        current_token: u64,
        /// The owner holding the lease now; `None` when the row's lease has ended (expired
        /// or released).
        holder: Option<String>,
    },

    /// A leader's fenced transaction ([`Leader::transaction`](crate::Leader::transaction))
    /// was asked for while this process does not lead: not elected yet, demoted, or the
    /// campaign stopped. Nothing was sent.
    #[error("this process does not lead election {name:?} (not elected yet, demoted, or stopped); nothing ran")]
    NotLeader {
        /// The election's name.
        name: String,
    },

    /// A fenced transaction ran on a connection that cannot see the lock's row: a
    /// connection to another database (or schema) than the one the lock lives in. Nothing
    /// ran. A fence only works in the database that holds the lock table; for other
    /// databases, check the guard's [`token`](crate::LockGuard::token) in the write itself.
    #[error(
        "lock {name:?} is not in the database of this connection (no such row or lock table \
         is visible on it); a fenced transaction must run on the lock's own database"
    )]
    WrongDatabase {
        /// The lock's name.
        name: String,
    },

    /// The semaphore is in use with another number of permits: a process holds one of its
    /// permits under a setup of `found` permits, and this acquisition asked for `permits`.
    /// Two numbers for one semaphore would make its limit the larger of them, so this one
    /// is refused; nothing was changed. Once no permit of the other setup is held, the next
    /// acquisition sets the semaphore up anew with its own number.
    #[error(
        "semaphore {name:?} is in use with {found} permits, not {permits}; every process must \
         use the same number (or wait until no permit of the other setup is held)"
    )]
    PermitsMismatch {
        /// The semaphore's name.
        name: String,
        /// The number of permits this acquisition asked for.
        permits: u32,
        /// The number its live holders use.
        found: i64,
    },

    /// An argument is out of range (name, ttl, renew margin). Nothing was sent to the database.
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// Which argument.
        what: &'static str,
        /// What is wrong with it and what is allowed.
        reason: String,
    },

    /// The configuration (a URL or an environment variable) is malformed.
    #[error("invalid configuration {variable}: {reason}")]
    Config {
        /// The environment variable or setting that holds the bad value.
        variable: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The URL names a backend whose crate feature is not enabled.
    #[error(
        "the URL {url:?} needs the `{feature}` feature of database-locks; enable it in Cargo.toml"
    )]
    BackendDisabled {
        /// The URL, with any password masked.
        url: String,
        /// The feature to enable.
        feature: &'static str,
    },

    /// The lock table is missing and `auto_migrate` is off.
    #[error(
        "the lock table `database_locks_lock` does not exist; run `migrate()` \
         or enable `auto_migrate`"
    )]
    MissingTable,

    /// The lock table exists but does not have the columns this crate needs.
    #[error("the table `database_locks_lock` has the wrong schema: {reason}")]
    Schema {
        /// What is missing or wrong.
        reason: String,
    },

    /// A connection to the database could not be made.
    #[error("cannot connect to the lock database at {url}: {message}")]
    Connect {
        /// The URL, with any password masked.
        url: String,
        /// What the driver or the pool said.
        message: String,
    },

    /// A background thread the handle needs could not be started.
    #[error("cannot start the {thread} thread: {source}")]
    Thread {
        /// Which thread.
        thread: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A statement failed.
    #[error("lock database error during {operation}: {source}")]
    Database {
        /// What the crate was doing.
        operation: &'static str,
        /// The driver's error.
        #[source]
        source: diesel::result::Error,
    },

    /// The database did not answer in time: the connection went silent (a cut network, a
    /// NAT or load balancer that dropped it, a stopped proxy) or the server is stalled.
    /// The connection was abandoned and is never used again; a waiting acquisition or a
    /// renewal tries again on another one.
    #[error(
        "the lock database at {url} did not answer {operation} within {waited:?}; the \
         connection was abandoned (see Config::statement_timeout)"
    )]
    Unresponsive {
        /// What the crate was doing.
        operation: &'static str,
        /// The URL, with any password masked.
        url: String,
        /// How long it waited.
        waited: Duration,
    },

    /// A statement prepared by name was missing on the server connection, or was another
    /// client's: a pooler in transaction mode (PgBouncer's `pool_mode = transaction`) is
    /// between the handle and PostgreSQL. The handle has stopped preparing statements by
    /// name and the operation can be repeated; set `DATABASE_LOCKS_TRANSACTION_POOLING=true`
    /// so that it never prepares one.
    #[error(
        "lock database error during {operation}: {source}; the connection goes through a \
         pooler in transaction mode (PgBouncer): set DATABASE_LOCKS_TRANSACTION_POOLING=true \
         (Config::transaction_pooling(true))"
    )]
    TransactionPooler {
        /// What the crate was doing.
        operation: &'static str,
        /// The driver's error.
        #[source]
        source: diesel::result::Error,
    },
}

fn fenced_suffix(current_token: u64, holder: &Option<String>) -> String {
    match holder {
        Some(holder) => format!(" (the row now carries token {current_token}, owner {holder:?})"),
        None => format!(" (the row now carries token {current_token}; its lease has ended)"),
    }
}

fn holder_suffix(holder: &Option<String>) -> String {
    match holder {
        Some(holder) => format!(" (held by {holder:?})"),
        None => String::new(),
    }
}

impl Error {
    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            what,
            reason: reason.into(),
        }
    }

    pub(crate) fn config(variable: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            variable: variable.into(),
            reason: reason.into(),
        }
    }

    /// True when the lock was simply held by someone else (a single attempt that failed, or a
    /// timeout), as opposed to a configuration, input or database error.
    pub fn is_contention(&self) -> bool {
        matches!(self, Error::NotAcquired { .. } | Error::Timeout { .. })
    }
}

/// Lets a function returning `std::io::Result` use `?` on lock errors (and `#[locked]`
/// hand them back through such a function).
impl From<Error> for std::io::Error {
    fn from(error: Error) -> Self {
        std::io::Error::other(error)
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
