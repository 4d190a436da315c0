//! The row-lock protocol's statements, one file per backend, behind a common trait.
//!
//! Each backend states its SQL once; [`LockConnection`] is what the rest of the crate
//! calls. Every time comes from the database server's clock.

use std::time::Duration;

use diesel::r2d2::R2D2Connection;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{BigInt, Double, Nullable, Text};
use diesel::{QueryResult, QueryableByName};

use crate::config::BackendKind;

#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

pub(crate) mod exec;
pub(crate) mod pool;
pub(crate) mod session;
mod watch;

// A lock without expiry gets `expires_at` 9999-01-01 00:00:00 UTC: far enough to never
// pass, early enough that Django can still turn it into a `datetime` in any time zone.

/// What one acquisition attempt found.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    /// The row is ours now, with this fencing token.
    Acquired {
        /// The fencing token.
        token: i64,
    },
    /// A permit of a semaphore is ours now: the slot row `row`, with this fencing token.
    Permit {
        /// The slot's row name (`semaphore` + [`SEPARATOR`] + slot number).
        row: String,
        /// The slot's fencing token.
        token: i64,
    },
    /// The semaphore's rows are missing, or were set up for another number of permits:
    /// [`LockConnection::setup_semaphore`] comes next.
    SetupNeeded,
    /// The semaphore is in use with this other number of permits.
    Mismatch {
        /// The number of permits its live holders use.
        permits: i64,
    },
    /// Another owner holds it.
    Held {
        /// The holder, when the statement reported it.
        holder: Option<String>,
        /// How long until the holder's lease runs out, when known.
        expires_in: Option<Duration>,
    },
}

/// The identity of one held lease: what renew and release match on.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct Lease<'a> {
    pub(crate) name: &'a str,
    pub(crate) owner: &'a str,
    pub(crate) token: i64,
}

/// Separates a semaphore's name from the rest of its rows' names: `name␟1` ... `name␟K`
/// are its slots, `name␟permits` records K. Lock and semaphore names may not contain it,
/// so these rows cannot collide with a lock (U+241F, SYMBOL FOR UNIT SEPARATOR: printable,
/// so that every collation compares it, unlike the control character U+001F that some
/// MySQL collations ignore).
pub const SEPARATOR: char = '\u{241F}';

/// A semaphore's rows, as an acquire attempt names them.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct Semaphore {
    /// The row that records the number of permits (in its `token` column).
    pub(crate) header: String,
    /// The slot rows, `1..=permits`.
    pub(crate) slots: Vec<String>,
    pub(crate) permits: u32,
}

impl Semaphore {
    pub(crate) fn new(name: &str, permits: u32) -> Self {
        Semaphore {
            header: format!("{name}{SEPARATOR}permits"),
            slots: (1..=permits).map(|i| slot_row(name, i)).collect(),
            permits,
        }
    }

    /// The slot rows of the semaphore set up for `permits` (found in its header row).
    pub(crate) fn slots_of(&self, permits: i64) -> Vec<String> {
        let name = queue_key(&self.header);
        (1..=permits.clamp(0, i64::from(crate::builder::MAX_PERMITS)))
            .filter_map(|i| u32::try_from(i).ok())
            .map(|i| slot_row(name, i))
            .collect()
    }
}

/// The row of slot `slot` (from 1) of semaphore `name`.
pub(crate) fn slot_row(name: &str, slot: u32) -> String {
    format!("{name}{SEPARATOR}{slot}")
}

/// What waiters of a row queue under: a lock's name, or a slot's semaphore.
pub(crate) fn queue_key(row: &str) -> &str {
    row.split_once(SEPARATOR).map_or(row, |(name, _)| name)
}

/// What [`migrate`](crate::Locks::migrate) did to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Migration {
    /// The table did not exist and was created.
    Created,
    /// The table existed without the `token` column (created by Django) and got it.
    Upgraded,
    /// The table was already as this crate needs it.
    UpToDate,
}

/// One row of the lock table, as [`Locks::list`](crate::Locks::list) reports it.
///
/// ```no_run
/// # fn main() -> Result<(), database_locks::Error> {
/// let locks = database_locks::global()?;
/// for row in locks.list()? {
///     println!("{} {} by {:?}, token {}", row.name, row.state(), row.locked_by, row.token);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LockInfo {
    /// The lock's name.
    pub name: String,
    /// The last owner written into the row.
    pub locked_by: Option<String>,
    /// Seconds until the lease expires by the database's clock: negative when it has
    /// expired, `None` when it was released, [`f64::INFINITY`] when it never expires.
    pub expires_in: Option<f64>,
    /// The fencing token of the last acquisition.
    pub token: i64,
}

/// What a row of a semaphore is, from its name ([`LockInfo::semaphore`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SemaphoreRow<'a> {
    /// One of its slots (from 1): a lease like a lock's.
    Slot {
        /// The semaphore's name.
        semaphore: &'a str,
        /// The slot's number, from 1.
        slot: u32,
    },
    /// The row that records its number of permits, in `token`; never held.
    Permits {
        /// The semaphore's name.
        semaphore: &'a str,
        /// The number of permits it was set up with.
        permits: i64,
    },
}

impl LockInfo {
    /// Whether this row belongs to a semaphore ([`Locks::semaphore`](crate::Locks::semaphore)),
    /// and what it is there; `None` for a lock.
    ///
    /// ```
    /// # use database_locks::{LockInfo, SemaphoreRow};
    /// fn describe(row: &LockInfo) -> String {
    ///     match row.semaphore() {
    ///         None => format!("lock {}", row.name),
    ///         Some(SemaphoreRow::Slot { semaphore, slot }) => format!("{semaphore}, slot {slot}"),
    ///         Some(SemaphoreRow::Permits { semaphore, permits }) => format!("{semaphore}: {permits} permits"),
    ///         Some(_) => String::new(),
    ///     }
    /// }
    /// ```
    pub fn semaphore(&self) -> Option<SemaphoreRow<'_>> {
        let (semaphore, rest) = self.name.split_once(SEPARATOR)?;
        if rest == "permits" {
            return Some(SemaphoreRow::Permits {
                semaphore,
                permits: self.token,
            });
        }
        let slot = rest.parse().ok().filter(|&s: &u32| s >= 1)?;
        Some(SemaphoreRow::Slot { semaphore, slot })
    }

    /// Whether an owner holds the lock now.
    pub fn is_held(&self) -> bool {
        matches!(self.expires_in, Some(left) if left >= 0.0)
    }

    /// `"held"`, `"expired"` or `"released"`.
    pub fn state(&self) -> &'static str {
        match self.expires_in {
            None => "released",
            Some(left) if left >= 0.0 => "held",
            Some(_) => "expired",
        }
    }
}

/// Seconds left as the databases report them; anything past a century is "no expiry".
pub(crate) fn expires_in_from_secs(secs: Option<f64>) -> Option<f64> {
    secs.map(|s| {
        if s > 100.0 * 365.0 * 86_400.0 {
            f64::INFINITY
        } else {
            s
        }
    })
}

/// Whether a failed statement is worth retrying (connection dropped, deadlock,
/// serialization failure, busy database) or means something is wrong for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    Transient,
    Persistent,
    MissingTable,
}

/// A diesel connection type the lock protocol runs on: `PgConnection`, `MysqlConnection`
/// or `SqliteConnection`, depending on the crate features.
///
/// This trait is sealed; its methods are an implementation detail.
pub trait LockConnection: R2D2Connection + Send + 'static + sealed::Sealed {
    #[doc(hidden)]
    const KIND: BackendKind;

    /// Per-connection settings run once after connecting (SQLite pragmas).
    #[doc(hidden)]
    fn setup(&mut self) -> QueryResult<()> {
        Ok(())
    }

    /// Creates or upgrades the table; safe when several processes run it at once.
    #[doc(hidden)]
    fn migrate(&mut self) -> QueryResult<Migration>;

    /// The names of the table's columns, empty when the table is missing.
    #[doc(hidden)]
    fn columns(&mut self) -> QueryResult<Vec<String>>;

    /// One attempt: takes the row iff it is missing, released, expired or `owner`'s.
    #[doc(hidden)]
    fn try_acquire(
        &mut self,
        name: &str,
        owner: &str,
        ttl: Option<Duration>,
    ) -> QueryResult<Attempt>;

    /// One attempt at a permit of `semaphore`: takes a slot row that is released, expired or
    /// `owner`'s, in one statement where the backend allows (PostgreSQL, SQLite; MySQL reads
    /// the token and slot back in a second). [`Attempt::SetupNeeded`] when the header row
    /// does not record `semaphore.permits` or a slot row is missing.
    #[doc(hidden)]
    fn try_acquire_permit(
        &mut self,
        semaphore: &Semaphore,
        owner: &str,
        ttl: Option<Duration>,
    ) -> QueryResult<Attempt>;

    /// Creates the semaphore's missing rows and records its number of permits, in one
    /// transaction. If the header records another number and one of that setup's slots
    /// is held, nothing changes: `Ok(Some(that number))`.
    #[doc(hidden)]
    fn setup_semaphore(&mut self, semaphore: &Semaphore) -> QueryResult<Option<i64>>;

    /// Extends each lease by its ttl if owner and token still match and it has not expired;
    /// returns, per lease, whether it was extended. One statement for the whole batch.
    #[doc(hidden)]
    fn renew(&mut self, leases: &[(Lease<'_>, Duration)]) -> QueryResult<Vec<bool>>;

    /// Releases the lease (or keeps it `keep_for` longer) if owner and token still match.
    #[doc(hidden)]
    fn release(&mut self, lease: Lease<'_>, keep_for: Option<Duration>) -> QueryResult<bool>;

    /// The first statement of a fenced transaction: writes the lease's row (extends it by
    /// `ttl`, or rewrites the far-future expiry of a lock without one) iff name, owner and
    /// token match and the lease is live by the database's clock. From then on the
    /// transaction holds the row. Whether it matched.
    #[doc(hidden)]
    fn fence(&mut self, lease: Lease<'_>, ttl: Option<Duration>) -> QueryResult<bool>;

    /// The last statement of a fenced transaction that ran past its lease's renewal time:
    /// extends the lease by `ttl` from now, matching name, owner and token only (the
    /// transaction has held the row since [`fence`](Self::fence), so its expiry may have
    /// passed without anyone being able to take it).
    #[doc(hidden)]
    fn fence_renew(&mut self, lease: Lease<'_>, ttl: Duration) -> QueryResult<bool>;

    /// Runs `f` in the transaction a fence needs: diesel's `transaction` (SQLite: `BEGIN
    /// IMMEDIATE`, so the write lock is taken before anything is read).
    #[doc(hidden)]
    fn fenced_transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Self) -> Result<T, E>,
        E: From<DieselError>,
    {
        self.transaction(f)
    }

    /// Whether the connection is inside a transaction already.
    #[doc(hidden)]
    fn in_transaction(&mut self) -> QueryResult<bool> {
        use diesel::connection::TransactionManager;
        let status =
            <Self::TransactionManager as TransactionManager<Self>>::transaction_manager_status_mut(
                self,
            );
        Ok(status.transaction_depth()?.is_some())
    }

    /// Whether the lease is still live and ours.
    #[doc(hidden)]
    fn verify(&mut self, lease: Lease<'_>) -> QueryResult<bool>;

    /// The rows of the table, or the one named.
    #[doc(hidden)]
    fn list(&mut self, name: Option<&str>) -> QueryResult<Vec<LockInfo>>;

    /// Releases the named lock whoever holds it.
    #[doc(hidden)]
    fn force_release(&mut self, name: &str) -> QueryResult<bool>;

    /// Sends `payload` on the release channel (PostgreSQL; elsewhere nothing listens).
    #[doc(hidden)]
    fn notify(&mut self, _payload: &str) -> QueryResult<()> {
        Ok(())
    }

    /// Starts listening on the release channel; false when the backend has no
    /// notifications.
    #[doc(hidden)]
    fn listen(&mut self) -> QueryResult<bool> {
        Ok(false)
    }

    /// The names carried by the notifications that have arrived, without waiting.
    #[doc(hidden)]
    fn notifications(&mut self) -> QueryResult<Vec<String>> {
        Ok(Vec::new())
    }

    /// Stops listening, before the connection goes back to its pool.
    #[doc(hidden)]
    fn unlisten(&mut self) -> QueryResult<()> {
        Ok(())
    }

    /// SQLite: `PRAGMA data_version`, which changes when another connection commits to the
    /// file (a read of shared memory, no file I/O). `None` where there is no such thing.
    #[doc(hidden)]
    fn data_version(&mut self) -> QueryResult<Option<i64>> {
        Ok(None)
    }

    /// SQLite: the path of the database file, for watching its writes (`backend::watch`);
    /// `None` for an in-memory or temporary database, and on the other backends.
    #[doc(hidden)]
    fn database_file(&mut self) -> QueryResult<Option<std::path::PathBuf>> {
        Ok(None)
    }

    /// The rows free now (released or expired) among those waiters of `queues` wait for:
    /// the lock of that name, or the slots of the semaphore of that name. Reads only.
    #[doc(hidden)]
    fn free_rows(&mut self, _queues: &[String]) -> QueryResult<Vec<String>> {
        Ok(Vec::new())
    }

    /// MySQL: the current database and whether this server is a Galera node (`@@wsrep_on`),
    /// read once per wake-up channel connection (`backend::session`). `None` elsewhere.
    #[doc(hidden)]
    fn session_info(&mut self) -> QueryResult<Option<(String, bool)>> {
        Ok(None)
    }

    /// MySQL: `GET_LOCK(key, timeout)`: whether it was granted within `timeout` (whole
    /// seconds; 0 tries once). Elsewhere never granted.
    #[doc(hidden)]
    fn get_session_lock(&mut self, _key: &str, _timeout_secs: i64) -> QueryResult<bool> {
        Ok(false)
    }

    /// MySQL: `RELEASE_LOCK(key)`: whether this session held it.
    #[doc(hidden)]
    fn release_session_lock(&mut self, _key: &str) -> QueryResult<bool> {
        Ok(false)
    }

    /// Backend-specific messages that mark an error as transient.
    #[doc(hidden)]
    fn transient_message(message: &str) -> bool;

    /// Backend-specific messages that mark a missing table.
    #[doc(hidden)]
    fn missing_table_message(message: &str) -> bool;
}

/// What a listener heard.
#[doc(hidden)]
#[derive(Debug, PartialEq, Eq)]
pub enum Heard {
    /// Releases of these rows (PostgreSQL's `NOTIFY` payloads); empty when none came.
    Released(Vec<String>),
    /// Another connection committed (SQLite's `data_version` changed, or the listener just
    /// started to watch): any row may have been released since the last look.
    Committed,
}

/// A connection kept for receiving release notifications.
#[doc(hidden)]
pub trait Listener: Send {
    /// Waits at most `timeout` for notifications. An error means the connection is gone.
    fn wait(&mut self, timeout: Duration) -> QueryResult<Heard>;

    /// Whether it watches the database's commits itself (SQLite) rather than receiving
    /// messages (PostgreSQL). Nothing between can then lose what it hears, so no check
    /// that notifications arrive is needed, and nothing queues up behind it while it does
    /// not read, so it reads only while somebody waits.
    fn watches_commits(&self) -> bool;

    /// After [`Heard::Committed`]: which of the rows waited for are free now
    /// ([`LockConnection::free_rows`], on the listener's connection).
    fn free_rows(&mut self, queues: &[String]) -> QueryResult<Vec<String>>;

    /// Whether it waits on the session locks holders take beside their rows (MySQL,
    /// `backend::session`), for the names given by [`set_waited`](Self::set_waited).
    fn session_locks(&self) -> bool {
        false
    }

    /// The lock names waited for now (not semaphores, not held by this handle); told
    /// before each [`wait`](Self::wait). Only a session-lock listener uses them.
    fn set_waited(&mut self, _names: Vec<String>) {}
}

pub(crate) mod sealed {
    pub trait Sealed {}
}

/// Sorts a statement error into transient, persistent or missing-table.
pub(crate) fn classify<C: LockConnection>(error: &DieselError) -> Failure {
    match error {
        DieselError::DatabaseError(kind, info) => {
            if C::missing_table_message(info.message()) {
                return Failure::MissingTable;
            }
            match kind {
                DatabaseErrorKind::SerializationFailure
                | DatabaseErrorKind::ClosedConnection
                | DatabaseErrorKind::UnableToSendCommand => Failure::Transient,
                // Two acquirers inserting the same new name: the loser retries.
                DatabaseErrorKind::UniqueViolation => Failure::Transient,
                _ if C::transient_message(info.message()) => Failure::Transient,
                _ => Failure::Persistent,
            }
        }
        DieselError::BrokenTransactionManager => Failure::Transient,
        _ => Failure::Persistent,
    }
}

/// Whether the error means this connection should not be reused: its transport failed, or
/// the server behind it will refuse every statement from now on, so only a new connection
/// (which a proxy may send to another server) can get through.
pub(crate) fn breaks_connection(error: &DieselError) -> bool {
    match error {
        DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
            _,
        ) => true,
        DieselError::DatabaseError(_, info) => {
            let m = info.message().to_ascii_lowercase();
            let transport = [
                "terminat",
                "server closed",
                "gone away",
                "lost connection",
                "connection was killed",
                "no connection",
            ]
            .iter()
            .any(|needle| m.contains(needle));
            #[cfg(feature = "mysql")]
            let transport = transport || mysql::unusable_session_message(&m);
            transport
        }
        DieselError::BrokenTransactionManager => true,
        _ => false,
    }
}

/// `verify`, `list` and `force_release` of [`LockConnection`]: the same Rust on every
/// backend, each backend stating its own SQL. Expands inside `impl LockConnection for ..`.
macro_rules! lease_queries {
    (
        verify: $verify:expr,
        list: $list:expr,
        list_one: $list_one:expr,
        force_release: $force_release:expr $(,)?
    ) => {
        fn verify(&mut self, lease: $crate::backend::Lease<'_>) -> diesel::QueryResult<bool> {
            use $crate::stmt::{Bind, Stmt};
            let binds = [
                Bind::Text(lease.name),
                Bind::Text(lease.owner),
                Bind::BigInt(lease.token),
            ];
            let rows: Vec<$crate::backend::Count> =
                diesel::RunQueryDsl::load(Stmt::new($verify, &binds), self)?;
            Ok(rows.first().is_some_and(|c| c.n > 0))
        }

        fn list(
            &mut self,
            name: Option<&str>,
        ) -> diesel::QueryResult<Vec<$crate::backend::LockInfo>> {
            use $crate::stmt::{Bind, Stmt};
            let rows: Vec<$crate::backend::InfoRow> = match name {
                Some(name) => {
                    diesel::RunQueryDsl::load(Stmt::new($list_one, &[Bind::Text(name)]), self)?
                }
                None => diesel::RunQueryDsl::load(Stmt::new($list, &[]), self)?,
            };
            Ok(rows
                .into_iter()
                .map($crate::backend::LockInfo::from)
                .collect())
        }

        fn force_release(&mut self, name: &str) -> diesel::QueryResult<bool> {
            use $crate::stmt::{Bind, Stmt};
            diesel::RunQueryDsl::execute(Stmt::new($force_release, &[Bind::Text(name)]), self)
                .map($crate::backend::matched)
        }
    };
}
pub(crate) use lease_queries;

/// A count of affected rows as "did it match".
pub(crate) fn matched(rows: usize) -> bool {
    rows > 0
}

#[derive(QueryableByName)]
pub(crate) struct InfoRow {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Nullable<Text>)]
    locked_by: Option<String>,
    #[diesel(sql_type = Nullable<Double>)]
    expires_in: Option<f64>,
    #[diesel(sql_type = BigInt)]
    token: i64,
}

impl From<InfoRow> for LockInfo {
    fn from(row: InfoRow) -> Self {
        LockInfo {
            name: row.name,
            locked_by: row.locked_by,
            expires_in: expires_in_from_secs(row.expires_in),
            token: row.token,
        }
    }
}

#[derive(QueryableByName)]
pub(crate) struct Count {
    #[diesel(sql_type = BigInt)]
    pub(crate) n: i64,
}

#[derive(QueryableByName)]
pub(crate) struct Column {
    #[diesel(sql_type = Text)]
    pub(crate) name: String,
}

/// A slot taken by a permit attempt (MySQL, SQLite).
#[derive(QueryableByName)]
#[allow(dead_code)]
pub(crate) struct PermitRow {
    #[diesel(sql_type = Text)]
    pub(crate) name: String,
    #[diesel(sql_type = BigInt)]
    pub(crate) token: i64,
}

/// Why a permit attempt took no slot (MySQL, SQLite): whether the header records the
/// permits asked for, how many slot rows exist and how many are free, and the slot whose
/// lease ends first.
#[derive(QueryableByName)]
#[allow(dead_code)]
pub(crate) struct PermitState {
    #[diesel(sql_type = BigInt)]
    pub(crate) header: i64,
    #[diesel(sql_type = BigInt)]
    pub(crate) slots: i64,
    #[diesel(sql_type = BigInt)]
    pub(crate) free: i64,
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) holder: Option<String>,
    #[diesel(sql_type = Nullable<Double>)]
    pub(crate) expires_in: Option<f64>,
}

impl PermitState {
    /// The attempt's outcome, or `None` when a slot was free after all (taken by a
    /// concurrent attempt between the two reads, and released again): try once more.
    #[allow(dead_code)]
    pub(crate) fn outcome(self, semaphore: &Semaphore) -> Option<Attempt> {
        if self.header == 0 || self.slots < i64::from(semaphore.permits) {
            return Some(Attempt::SetupNeeded);
        }
        if self.free > 0 {
            return None;
        }
        Some(Attempt::Held {
            holder: self.holder,
            expires_in: self
                .expires_in
                .and_then(|s| Duration::try_from_secs_f64(s.max(0.0)).ok()),
        })
    }
}

/// A semaphore's slot names as one JSON bind, `[["name␟1"], ...]` (MySQL, SQLite).
#[allow(dead_code)]
pub(crate) fn slots_json(slots: &[String]) -> String {
    crate::stmt::json_rows(slots, |slot, row| {
        row.text(slot);
    })
}

/// A refused attempt, as the name's row shows it.
// Which backends use it depends on the features.
#[allow(dead_code)]
pub(crate) fn held_by(row: LockInfo) -> Attempt {
    Attempt::Held {
        holder: row.locked_by,
        expires_in: row
            .expires_in
            .and_then(|s| Duration::try_from_secs_f64(s.max(0.0)).ok()),
    }
}

/// What a migration did, judged by the columns the table had before it.
pub(crate) fn migration_outcome(before: &[String]) -> Migration {
    if before.is_empty() {
        Migration::Created
    } else if before.iter().any(|c| c == "token") {
        Migration::UpToDate
    } else {
        Migration::Upgraded
    }
}

#[cfg(test)]
mod tests {
    use super::breaks_connection;
    use diesel::result::{DatabaseErrorKind, Error};

    fn database_error(kind: DatabaseErrorKind, message: &str) -> Error {
        Error::DatabaseError(kind, Box::new(message.to_owned()))
    }

    #[test]
    fn transport_failures_break_the_connection() {
        for message in [
            "server closed the connection unexpectedly",
            "MySQL server has gone away",
            "Lost connection to server during query",
        ] {
            let error = database_error(DatabaseErrorKind::Unknown, message);
            assert!(breaks_connection(&error), "{message}");
        }
        for other in [
            database_error(DatabaseErrorKind::SerializationFailure, "Deadlock found"),
            database_error(DatabaseErrorKind::UniqueViolation, "Duplicate entry"),
            Error::NotFound,
        ] {
            assert!(!breaks_connection(&other), "{other}");
        }
    }

    /// A MariaDB that is shutting down (1053) or a Galera node outside the Primary
    /// component (1047, and 1180 for the commit under way when it left) refuses every
    /// statement of the session: the connection is dropped, and the failure stays
    /// transient, so renewal retries on a new connection.
    #[cfg(feature = "mysql")]
    #[test]
    fn a_server_that_refuses_the_session_breaks_the_connection() {
        use super::{classify, Failure};
        use diesel::MysqlConnection;
        for message in [
            "Server shutdown in progress",
            "WSREP has not yet prepared node for application use",
            "Error while appending streaming replication fragment(provider status: Not \
             connected to Primary Component)",
        ] {
            let error = database_error(DatabaseErrorKind::Unknown, message);
            assert!(breaks_connection(&error), "{message}");
            assert_eq!(
                classify::<MysqlConnection>(&error),
                Failure::Transient,
                "{message}"
            );
        }
        // A certification conflict is lost by this statement only: the session is fine.
        let conflict = database_error(
            DatabaseErrorKind::SerializationFailure,
            "WSREP detected deadlock/conflict and aborted the transaction. Try restarting the transaction",
        );
        assert!(!breaks_connection(&conflict));
    }
}

#[cfg(test)]
mod semaphore_rows {
    use super::*;

    fn info(name: &str, token: i64) -> LockInfo {
        LockInfo {
            name: name.to_owned(),
            locked_by: None,
            expires_in: None,
            token,
        }
    }

    #[test]
    fn rows_name_their_semaphore() {
        let sem = Semaphore::new("jobs", 3);
        assert_eq!(sem.header, "jobs\u{241F}permits");
        assert_eq!(
            sem.slots,
            ["jobs\u{241F}1", "jobs\u{241F}2", "jobs\u{241F}3"]
        );
        assert_eq!(sem.slots_of(2), ["jobs\u{241F}1", "jobs\u{241F}2"]);
        assert!(sem.slots_of(0).is_empty() && sem.slots_of(-1).is_empty());
        assert_eq!(queue_key("jobs\u{241F}2"), "jobs");
        assert_eq!(queue_key("jobs"), "jobs");
        assert_eq!(
            info("jobs\u{241F}2", 7).semaphore(),
            Some(SemaphoreRow::Slot {
                semaphore: "jobs",
                slot: 2
            })
        );
        assert_eq!(
            info("jobs\u{241F}permits", 3).semaphore(),
            Some(SemaphoreRow::Permits {
                semaphore: "jobs",
                permits: 3
            })
        );
        for lock in ["jobs", "jobs\u{241F}", "jobs\u{241F}0", "jobs\u{241F}x"] {
            assert_eq!(info(lock, 1).semaphore(), None, "{lock:?}");
        }
    }
}
