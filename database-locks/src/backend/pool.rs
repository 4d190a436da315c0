//! Connections: an r2d2 pool of the backend's diesel connection, and the error
//! classification every operation goes through.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use diesel::connection::CacheSize;
use diesel::r2d2::{ConnectionManager, ManageConnection, Pool, PooledConnection, R2D2Connection};
use diesel::{Connection, QueryResult};

use super::{
    breaks_connection, classify, Attempt, Failure, Lease, Listener, LockConnection, LockInfo,
    Migration,
};
use crate::config::{mask_url, BackendKind};
use crate::error::Error;

/// An operation's error and whether waiting and trying again can help.
#[derive(Debug)]
pub(crate) struct OpError {
    pub failure: Failure,
    pub error: Error,
}

/// The operations of the protocol on one database, whatever its backend.
pub(crate) trait Store: Send + Sync + 'static {
    fn kind(&self) -> BackendKind;
    fn migrate(&self) -> Result<Migration, OpError>;
    fn columns(&self) -> Result<Vec<String>, OpError>;
    fn try_acquire(
        &self,
        name: &str,
        owner: &str,
        ttl: Option<Duration>,
    ) -> Result<Attempt, OpError>;
    fn renew(&self, leases: &[(Lease<'_>, Duration)]) -> Result<Vec<bool>, OpError>;
    fn release(&self, lease: Lease<'_>, keep_for: Option<Duration>) -> Result<bool, OpError>;
    fn verify(&self, lease: Lease<'_>) -> Result<bool, OpError>;
    fn list(&self, name: Option<&str>) -> Result<Vec<LockInfo>, OpError>;
    fn force_release(&self, name: &str) -> Result<bool, OpError>;
    /// Sends `payload` on the release channel (PostgreSQL), to test a listener.
    fn notify(&self, payload: &str) -> Result<(), OpError>;
    /// A connection of the pool, kept to listen for releases until dropped; `None` when
    /// the backend has no notifications.
    fn listener(&self) -> Option<Result<Box<dyn Listener>, OpError>>;
}

/// A pooled connection the protocol can run on.
pub(crate) trait PooledLockConnection: Send + 'static {
    type Conn: LockConnection;
    fn conn(&mut self) -> &mut Self::Conn;
    /// Keeps a connection that failed at the transport level out of the pool.
    fn mark_broken(&mut self);
}

/// A connection of a pool this crate built: it can be marked broken.
pub(crate) struct Tracked<C> {
    conn: C,
    broken: bool,
}

impl<C: LockConnection> PooledLockConnection for Tracked<C> {
    type Conn = C;
    fn conn(&mut self) -> &mut C {
        &mut self.conn
    }
    fn mark_broken(&mut self) {
        self.broken = true;
    }
}

/// A connection of the application's own pool: its `test_on_check_out` finds dead ones.
impl<C: LockConnection> PooledLockConnection for C {
    type Conn = C;
    fn conn(&mut self) -> &mut C {
        self
    }
    fn mark_broken(&mut self) {}
}

/// The manager of pools this crate builds: runs the backend's per-connection setup and
/// drops connections that failed, without a ping on every checkout.
pub(crate) struct Manager<C: R2D2Connection + 'static> {
    inner: ConnectionManager<C>,
}

impl<C: LockConnection> Manager<C> {
    pub(crate) fn new(url: &str) -> Self {
        Manager {
            inner: ConnectionManager::new(url),
        }
    }
}

impl<C: LockConnection> ManageConnection for Manager<C> {
    type Connection = Tracked<C>;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<Tracked<C>, Self::Error> {
        let mut conn = self.inner.connect()?;
        conn.setup().map_err(diesel::r2d2::Error::QueryError)?;
        Ok(Tracked {
            conn,
            broken: false,
        })
    }

    fn is_valid(&self, conn: &mut Tracked<C>) -> Result<(), Self::Error> {
        conn.conn.ping().map_err(diesel::r2d2::Error::QueryError)
    }

    fn has_broken(&self, conn: &mut Tracked<C>) -> bool {
        conn.broken || self.inner.has_broken(&mut conn.conn)
    }
}

/// The protocol on an r2d2 pool.
pub(crate) struct PoolStore<M: ManageConnection> {
    pool: Pool<M>,
    /// For messages: the password masked.
    url: String,
    /// Until the first connection succeeds, a connect error is a configuration problem
    /// (wrong host, credentials, database) and is reported at once; after that it is an
    /// outage, waited out like any transient failure.
    connected: AtomicBool,
    /// `false`: every connection runs with diesel's statement cache off, so no statement
    /// is prepared by name ([`Config::prepared_statements`](crate::Config::prepared_statements)).
    prepared_statements: bool,
}

impl<M> PoolStore<M>
where
    M: ManageConnection,
    M::Connection: PooledLockConnection,
{
    pub(crate) fn new(pool: Pool<M>, url: &str, prepared_statements: bool) -> Self {
        PoolStore {
            pool,
            url: mask_url(url),
            connected: AtomicBool::new(false),
            prepared_statements,
        }
    }

    fn checkout(&self) -> Result<PooledConnection<M>, OpError> {
        let mut pooled = self.pool.get().map_err(|e| {
            let message = e.to_string();
            let failure = if self.connected.load(Ordering::Relaxed) && !rejected(&message) {
                Failure::Transient
            } else {
                Failure::Persistent
            };
            OpError {
                failure,
                error: Error::Connect {
                    url: self.url.clone(),
                    message,
                },
            }
        })?;
        self.connected.store(true, Ordering::Relaxed);
        if !self.prepared_statements {
            // At every checkout, not once per connection: the pool may be the
            // application's own. Setting it again costs nothing.
            pooled
                .conn()
                .set_prepared_statement_cache_size(CacheSize::Disabled);
        }
        Ok(pooled)
    }

    fn run<R>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&mut <M::Connection as PooledLockConnection>::Conn) -> QueryResult<R>,
    ) -> Result<R, OpError> {
        let mut pooled = self.checkout()?;
        f(pooled.conn()).map_err(|source| op_error::<M::Connection>(&mut pooled, operation, source))
    }
}

/// Classifies a failed statement; a connection that failed at the transport level is kept
/// out of the pool.
fn op_error<P: PooledLockConnection>(
    pooled: &mut P,
    operation: &'static str,
    source: diesel::result::Error,
) -> OpError {
    if breaks_connection(&source) {
        pooled.mark_broken();
    }
    if named_statement_error(&source) {
        static HINTED: std::sync::Once = std::sync::Once::new();
        HINTED.call_once(|| {
            tracing::error!(
                "{source}: a statement prepared by name was not found on the server \
                 connection, as happens behind PgBouncer in transaction mode. Set \
                 DATABASE_LOCKS_TRANSACTION_POOLING=true (Config::transaction_pooling(true))"
            )
        });
    }
    let failure = classify::<P::Conn>(&source);
    let error = match failure {
        Failure::MissingTable => Error::MissingTable,
        _ => Error::Database { operation, source },
    };
    OpError { failure, error }
}

/// diesel names its statements `__diesel_stmt_N`: "does not exist" or "already exists"
/// means the session changed under the connection (a transaction pooler).
fn named_statement_error(source: &diesel::result::Error) -> bool {
    match source {
        diesel::result::Error::DatabaseError(_, info) => info
            .message()
            .contains("prepared statement \"__diesel_stmt_"),
        _ => false,
    }
}

/// Connect errors that no amount of waiting fixes.
fn rejected(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "password authentication failed",
        "access denied",
        "does not exist",
        "unknown database",
        "no pg_hba.conf entry",
        "invalid",
        "unable to open database file",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}

impl<M> Store for PoolStore<M>
where
    M: ManageConnection,
    M::Connection: PooledLockConnection,
{
    fn kind(&self) -> BackendKind {
        <<M::Connection as PooledLockConnection>::Conn as LockConnection>::KIND
    }

    fn migrate(&self) -> Result<Migration, OpError> {
        self.run("migrate", |c| c.migrate())
    }

    fn columns(&self) -> Result<Vec<String>, OpError> {
        self.run("schema check", |c| c.columns())
    }

    fn try_acquire(
        &self,
        name: &str,
        owner: &str,
        ttl: Option<Duration>,
    ) -> Result<Attempt, OpError> {
        self.run("acquire", |c| c.try_acquire(name, owner, ttl))
    }

    fn renew(&self, leases: &[(Lease<'_>, Duration)]) -> Result<Vec<bool>, OpError> {
        self.run("renew", |c| c.renew(leases))
    }

    fn release(&self, lease: Lease<'_>, keep_for: Option<Duration>) -> Result<bool, OpError> {
        self.run("release", |c| c.release(lease, keep_for))
    }

    fn verify(&self, lease: Lease<'_>) -> Result<bool, OpError> {
        self.run("verify", |c| c.verify(lease))
    }

    fn list(&self, name: Option<&str>) -> Result<Vec<LockInfo>, OpError> {
        self.run("list", |c| c.list(name))
    }

    fn force_release(&self, name: &str) -> Result<bool, OpError> {
        self.run("force release", |c| c.force_release(name))
    }

    fn notify(&self, payload: &str) -> Result<(), OpError> {
        self.run("notify", |c| c.notify(payload))
    }

    fn listener(&self) -> Option<Result<Box<dyn Listener>, OpError>> {
        let mut pooled = match self.checkout() {
            Ok(pooled) => pooled,
            Err(err) => return Some(Err(err)),
        };
        match pooled.conn().listen() {
            Ok(true) => Some(Ok(Box::new(PooledListener { pooled }))),
            Ok(false) => None,
            Err(source) => Some(Err(op_error::<M::Connection>(
                &mut pooled,
                "listen",
                source,
            ))),
        }
    }
}

/// How often a listener looks for notifications that arrived. diesel does not expose the
/// connection's socket, so it cannot block on it; a look is a non-blocking read on the
/// client, and nothing reaches the server.
const LISTEN_POLL: Duration = Duration::from_millis(1);

/// A pooled connection that listens while it is out of the pool. It is one the pool
/// already has, so starting to listen needs no new connection (and no TLS handshake, which
/// a process exiting meanwhile could crash); it goes back clean (`UNLISTEN`).
struct PooledListener<M>
where
    M: ManageConnection,
    M::Connection: PooledLockConnection,
{
    pooled: PooledConnection<M>,
}

impl<M> Listener for PooledListener<M>
where
    M: ManageConnection,
    M::Connection: PooledLockConnection,
{
    fn wait(&mut self, timeout: Duration) -> QueryResult<Vec<String>> {
        let until = Instant::now() + timeout;
        loop {
            let names = self.pooled.conn().notifications().inspect_err(|source| {
                if breaks_connection(source) {
                    self.pooled.mark_broken();
                }
            })?;
            let now = Instant::now();
            if !names.is_empty() || now >= until {
                return Ok(names);
            }
            std::thread::sleep(LISTEN_POLL.min(until - now));
        }
    }
}

impl<M> Drop for PooledListener<M>
where
    M: ManageConnection,
    M::Connection: PooledLockConnection,
{
    fn drop(&mut self) {
        if let Err(err) = self.pooled.conn().unlisten() {
            tracing::debug!("closing the notification listener's connection: {err}");
            self.pooled.mark_broken();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::named_statement_error;
    use diesel::result::{DatabaseErrorKind, Error};

    fn database_error(message: &str) -> Error {
        Error::DatabaseError(DatabaseErrorKind::Unknown, Box::new(message.to_owned()))
    }

    #[test]
    fn named_statement_errors_are_recognised() {
        for message in [
            "prepared statement \"__diesel_stmt_1\" does not exist",
            "prepared statement \"__diesel_stmt_12\" already exists",
        ] {
            assert!(named_statement_error(&database_error(message)), "{message}");
        }
        for other in [
            database_error("prepared statement \"mine\" does not exist"),
            database_error("relation \"database_locks_lock\" does not exist"),
            Error::NotFound,
        ] {
            assert!(!named_statement_error(&other), "{other}");
        }
    }
}
