//! Connections: an r2d2 pool of the backend's diesel connection, and the error
//! classification every operation goes through.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::connection::CacheSize;
use diesel::r2d2::{ConnectionManager, ManageConnection, Pool, PooledConnection, R2D2Connection};
use diesel::{Connection, QueryResult};

use parking_lot::Mutex;

use super::exec::{Permit, Permits, Reply, Workers};
use super::session::{Session, SessionConn, SessionListener};
use super::watch::{self, FileWatch};
use super::{
    breaks_connection, classify, Attempt, Failure, Heard, Lease, Listener, LockConnection,
    LockInfo, Migration, Semaphore,
};
use crate::config::{mask_url, BackendKind};
use crate::error::Error;

/// An operation's error and whether waiting and trying again can help.
#[derive(Debug)]
pub(crate) struct OpError {
    pub failure: Failure,
    pub error: Error,
}

/// The leases of one renewal statement: name, owner, token, ttl.
pub(crate) type RenewBatch = Vec<(String, String, i64, Duration)>;

/// What to do with a renewal statement's outcome when it comes after its caller gave up
/// on it: the database did renew those leases, so the holder may count on them.
pub(crate) type LateRenewal = Box<dyn FnOnce(Vec<bool>) + Send>;

/// The operations of the protocol on one database, whatever its backend. Each finishes by
/// its `deadline` or fails with [`Error::Unresponsive`] (a transient failure): a silent
/// connection is abandoned, never waited for.
pub(crate) trait Store: Send + Sync + 'static {
    fn kind(&self) -> BackendKind;
    /// The longest a statement may take ([`Config::statement_timeout`](crate::Config::statement_timeout)).
    fn statement_timeout(&self) -> Duration;
    fn migrate(&self, deadline: Instant) -> Result<Migration, OpError>;
    fn columns(&self, deadline: Instant) -> Result<Vec<String>, OpError>;
    fn try_acquire(
        &self,
        deadline: Instant,
        name: &str,
        owner: &str,
        ttl: Option<Duration>,
    ) -> Result<Attempt, OpError>;
    /// One attempt at a permit of the semaphore; sets it up first when needed
    /// ([`Attempt::Mismatch`] when it is in use with another number of permits).
    fn try_acquire_permit(
        &self,
        deadline: Instant,
        semaphore: &Semaphore,
        owner: &str,
        ttl: Option<Duration>,
    ) -> Result<Attempt, OpError>;
    /// Runs on a connection kept for renewals, never one that acquisitions wait for. An
    /// outcome that comes after `deadline` goes to `late`.
    fn renew(
        &self,
        deadline: Instant,
        leases: RenewBatch,
        late: LateRenewal,
    ) -> Result<Vec<bool>, OpError>;
    fn release(
        &self,
        deadline: Instant,
        lease: Lease<'_>,
        keep_for: Option<Duration>,
    ) -> Result<bool, OpError>;
    fn verify(&self, deadline: Instant, lease: Lease<'_>) -> Result<bool, OpError>;
    fn list(&self, deadline: Instant, name: Option<&str>) -> Result<Vec<LockInfo>, OpError>;
    fn force_release(&self, deadline: Instant, name: &str) -> Result<bool, OpError>;
    /// Sends `payload` on the release channel (PostgreSQL), to test a listener.
    fn notify(&self, deadline: Instant, payload: &str) -> Result<(), OpError>;
    /// A connection of the pool, kept to listen for releases until dropped; `None` when
    /// the backend has no notifications.
    fn listener(&self, deadline: Instant) -> Option<Result<Box<dyn Listener>, OpError>>;
    /// MySQL, on a pool of this crate's own: what the wake-up channel runs on (connections
    /// of its own, `backend::session`). `None` elsewhere.
    fn session(&self) -> Option<Session> {
        None
    }

    /// `now + statement_timeout`, or `limit` if that comes first.
    fn deadline(&self, limit: Option<Instant>) -> Instant {
        let own = Instant::now()
            .checked_add(self.statement_timeout())
            .unwrap_or_else(far_future);
        limit.map_or(own, |limit| limit.min(own))
    }
}

/// An instant later than any deadline a caller can mean.
pub(crate) fn far_future() -> Instant {
    let now = Instant::now();
    // A century; `Instant` cannot represent much more on every platform.
    now.checked_add(Duration::from_secs(100 * 365 * 86_400))
        .unwrap_or(now)
}

/// A pooled connection the protocol can run on.
pub(crate) trait PooledLockConnection: Send + 'static {
    type Conn: LockConnection;
    fn conn(&mut self) -> &mut Self::Conn;
    /// Keeps a connection that failed at the transport level out of the pool.
    fn mark_broken(&mut self);
    fn is_broken(&self) -> bool;
    /// Since when the connection has been idle (opened, or last given back); `None` when
    /// unknown (an application's pool).
    fn idle_since(&self) -> Option<Instant>;
    /// Records that it is given back now.
    fn touch(&mut self);
}

/// A connection of a pool this crate built: it can be marked broken.
pub(crate) struct Tracked<C> {
    conn: C,
    broken: bool,
    idle_since: Instant,
}

impl<C: LockConnection> PooledLockConnection for Tracked<C> {
    type Conn = C;
    fn conn(&mut self) -> &mut C {
        &mut self.conn
    }
    fn mark_broken(&mut self) {
        self.broken = true;
    }
    fn is_broken(&self) -> bool {
        self.broken
    }
    fn idle_since(&self) -> Option<Instant> {
        Some(self.idle_since)
    }
    fn touch(&mut self) {
        self.idle_since = Instant::now();
    }
}

/// A connection of the application's own pool: its `test_on_check_out` finds dead ones.
impl<C: LockConnection> PooledLockConnection for C {
    type Conn = C;
    fn conn(&mut self) -> &mut C {
        self
    }
    fn mark_broken(&mut self) {}
    fn is_broken(&self) -> bool {
        false
    }
    fn idle_since(&self) -> Option<Instant> {
        None
    }
    fn touch(&mut self) {}
}

/// Connections idle since before this moment are suspect: one of them went silent, and the
/// others, idle on the same network path (a NAT or load balancer that forgets idle flows
/// forgets them all), are dropped at checkout
/// instead of each costing a statement deadline to find out.
#[derive(Default)]
pub(crate) struct Suspect {
    before: AtomicU64,
}

impl Suspect {
    fn mark(&self, at: Instant) {
        self.before
            .fetch_max(crate::lease::to_nanos(at), Ordering::SeqCst);
    }

    fn includes(&self, idle_since: Option<Instant>) -> bool {
        let before = self.before.load(Ordering::SeqCst);
        idle_since.is_some_and(|at| before != 0 && crate::lease::to_nanos(at) < before)
    }
}

/// The manager of pools this crate builds: runs the backend's per-connection setup and
/// drops connections that failed, without a ping on every checkout.
pub(crate) struct Manager<C: R2D2Connection + 'static> {
    inner: ConnectionManager<C>,
    suspect: Arc<Suspect>,
}

impl<C: LockConnection> Manager<C> {
    pub(crate) fn new(url: &str, suspect: Arc<Suspect>) -> Self {
        Manager {
            inner: ConnectionManager::new(url),
            suspect,
        }
    }
}

impl<C: LockConnection> ManageConnection for Manager<C> {
    type Connection = Tracked<C>;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<Tracked<C>, Self::Error> {
        let idle_since = Instant::now();
        let mut conn = self.inner.connect()?;
        conn.setup().map_err(diesel::r2d2::Error::QueryError)?;
        Ok(Tracked {
            conn,
            broken: false,
            idle_since,
        })
    }

    /// No round trip: a connection is refused only when it is of a suspect generation.
    /// Silence is found by the statement deadlines, which a ping could not escape either.
    fn is_valid(&self, conn: &mut Tracked<C>) -> Result<(), Self::Error> {
        if self.suspect.includes(Some(conn.idle_since)) {
            return Err(diesel::r2d2::Error::ConnectionError(
                diesel::ConnectionError::BadConnection(
                    "idle since before a connection of the pool went silent".into(),
                ),
            ));
        }
        Ok(())
    }

    /// Called as a connection goes back to the pool: it is idle from now on.
    fn has_broken(&self, conn: &mut Tracked<C>) -> bool {
        conn.idle_since = Instant::now();
        conn.broken || self.inner.has_broken(&mut conn.conn)
    }
}

/// Opens a connection outside the pool, for renewals.
type Dedicated<M> = Box<
    dyn Fn() -> Result<<M as ManageConnection>::Connection, <M as ManageConnection>::Error>
        + Send
        + Sync,
>;

/// What a statement runs on: a connection of the pool, or the renewal connection.
enum Checked<M: ManageConnection> {
    Pooled(PooledConnection<M>),
    Own(M::Connection),
}

impl<M> Checked<M>
where
    M: ManageConnection,
    M::Connection: PooledLockConnection,
{
    fn get(&mut self) -> &mut M::Connection {
        match self {
            Checked::Pooled(pooled) => pooled,
            Checked::Own(conn) => conn,
        }
    }
}

/// Which connections a statement may use.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// The pool's.
    Shared,
    /// The renewal connection, so that renewals never wait behind acquisitions for a
    /// connection of the pool.
    Renewal,
}

/// What the statements of one store share with the workers that run them.
struct Shared<M: ManageConnection> {
    pool: Pool<M>,
    /// For messages: the password masked.
    url: String,
    /// Until the first connection succeeds, a connect error is a configuration problem
    /// (wrong host, credentials, database, a closed port) and is reported at once; after
    /// that it is an outage, waited out like any transient failure.
    connected: AtomicBool,
    /// `false`: every connection runs with diesel's statement cache off, so no statement
    /// is prepared by name ([`Config::prepared_statements`](crate::Config::prepared_statements)).
    /// Turned off by itself when a transaction pooler shows.
    prepared_statements: AtomicBool,
    suspect: Arc<Suspect>,
    dedicated: Option<Dedicated<M>>,
    /// The renewal connection, between renewals (with `dedicated` only).
    renewal: Mutex<Option<M::Connection>>,
}

/// The protocol on an r2d2 pool.
pub(crate) struct PoolStore<M: ManageConnection> {
    shared: Arc<Shared<M>>,
    workers: Arc<Workers>,
    /// SQLite is a file on this host: no connection goes silent, and `busy_timeout`
    /// bounds every wait, so its statements run on the caller's thread.
    inline: bool,
    statement_timeout: Duration,
    /// How many statements may use the pool at once (this crate's own pools only).
    permits: Option<Arc<Permits>>,
}

impl<M> PoolStore<M>
where
    M: ManageConnection,
    M::Connection: PooledLockConnection,
{
    pub(crate) fn new(
        pool: Pool<M>,
        url: &str,
        prepared_statements: bool,
        statement_timeout: Duration,
        suspect: Arc<Suspect>,
        dedicated: Option<Dedicated<M>>,
        in_use: Option<u32>,
    ) -> Self {
        let kind = <<M::Connection as PooledLockConnection>::Conn as LockConnection>::KIND;
        PoolStore {
            shared: Arc::new(Shared {
                pool,
                url: mask_url(url),
                connected: AtomicBool::new(false),
                prepared_statements: AtomicBool::new(prepared_statements),
                suspect,
                dedicated,
                renewal: Mutex::new(None),
            }),
            workers: Arc::new(Workers::default()),
            inline: kind == BackendKind::Sqlite,
            statement_timeout,
            permits: in_use.map(Permits::new),
        }
    }

    /// Runs `f` on a connection and waits for it until `deadline`.
    fn run<R, F>(&self, operation: &'static str, deadline: Instant, f: F) -> Result<R, OpError>
    where
        R: Send + 'static,
        F: Fn(&mut <M::Connection as PooledLockConnection>::Conn) -> QueryResult<R>
            + Send
            + 'static,
    {
        self.run_on(operation, deadline, Lane::Shared, f, |_, _| {})
    }

    /// [`run`](Self::run) on `lane`; `undo` gets what an abandoned statement returned
    /// when it returned after all, on its connection (a lock granted too late).
    fn run_on<R, F, U>(
        &self,
        operation: &'static str,
        deadline: Instant,
        lane: Lane,
        f: F,
        undo: U,
    ) -> Result<R, OpError>
    where
        R: Send + 'static,
        F: Fn(&mut <M::Connection as PooledLockConnection>::Conn) -> QueryResult<R>
            + Send
            + 'static,
        U: FnOnce(&mut <M::Connection as PooledLockConnection>::Conn, R) + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        let submitted = Instant::now();
        let permit = match (&self.permits, lane) {
            (Some(permits), Lane::Shared) => match permits.acquire(deadline) {
                Some(permit) => Some(permit),
                None => return Err(self.busy(operation, permits.limit())),
            },
            _ => None,
        };
        let held = permit.clone();
        let job = move |reply: Reply<Result<R, OpError>>| {
            let _permit = held;
            let mut checked = match shared.checkout(deadline, lane) {
                Ok(checked) => checked,
                Err(err) => {
                    let _ = reply.deliver(Err(err));
                    return;
                }
            };
            let mut outcome = run_statement(&shared, &mut checked, operation, &f);
            // A connection that died while it sat idle (killed, or closed by the server)
            // fails its next statement before it reaches the server: once more on
            // another connection.
            if outcome.is_err() && checked.get().is_broken() && Instant::now() < deadline {
                // Its siblings of the pool likely died with it (a server restart, a kill
                // of every session): none of them is handed out again.
                shared.suspect.mark(Instant::now());
                shared.give_back(checked, lane);
                checked = match shared.checkout(deadline, lane) {
                    Ok(checked) => checked,
                    Err(err) => {
                        let _ = reply.deliver(Err(err));
                        return;
                    }
                };
                outcome = run_statement(&shared, &mut checked, operation, &f);
            }
            if let Some(late) = reply.deliver(outcome) {
                // Nobody waits for it any more: the connection was too slow to trust.
                checked.get().mark_broken();
                tracing::debug!("{operation}: a statement abandoned at its deadline returned");
                if let Ok(value) = late {
                    undo(checked.get().conn(), value);
                }
            }
            shared.give_back(checked, lane);
        };
        self.dispatch(operation, submitted, deadline, job, permit.as_deref())
    }

    fn busy(&self, operation: &'static str, limit: u32) -> OpError {
        OpError {
            failure: Failure::Transient,
            error: Error::Connect {
                url: self.shared.url.clone(),
                message: format!(
                    "all {limit} connections of the pool were busy until the deadline of \
                     {operation} (Config::pool_max_size)"
                ),
            },
        }
    }

    /// Runs `job` here (SQLite) or on a worker, waiting for it until `deadline`.
    fn dispatch<R: Send + 'static>(
        &self,
        operation: &'static str,
        submitted: Instant,
        deadline: Instant,
        job: impl FnOnce(Reply<Result<R, OpError>>) + Send + 'static,
        permit: Option<&Permit>,
    ) -> Result<R, OpError> {
        let ran = if self.inline {
            Ok(Workers::here(job))
        } else {
            self.workers.run(deadline, job)
        };
        match ran {
            Ok(Some(outcome)) => outcome,
            Ok(None) => {
                if let Some(permit) = permit {
                    permit.release();
                }
                self.shared.suspect.mark(submitted);
                let waited = submitted.elapsed();
                tracing::warn!(
                    "{operation}: the database at {} did not answer within {waited:?}; \
                     abandoning the connection",
                    self.shared.url
                );
                Err(OpError {
                    failure: Failure::Transient,
                    error: Error::Unresponsive {
                        operation,
                        url: self.shared.url.clone(),
                        waited,
                    },
                })
            }
            Err(source) => Err(OpError {
                failure: Failure::Transient,
                error: Error::Thread {
                    thread: "database I/O",
                    source,
                },
            }),
        }
    }
}

/// Runs `f` on `checked`, classifying its error.
fn run_statement<M, R>(
    shared: &Shared<M>,
    checked: &mut Checked<M>,
    operation: &'static str,
    f: impl FnOnce(&mut <M::Connection as PooledLockConnection>::Conn) -> QueryResult<R>,
) -> Result<R, OpError>
where
    M: ManageConnection,
    M::Connection: PooledLockConnection,
{
    f(checked.get().conn()).map_err(|source| shared.op_error(checked.get(), operation, source))
}

/// How long one wait for a connection of the pool lasts before the pool's last connect
/// error is looked at again.
const CHECKOUT_SLICE: Duration = Duration::from_millis(100);

impl<M> Shared<M>
where
    M: ManageConnection,
    M::Connection: PooledLockConnection,
{
    fn checkout(&self, deadline: Instant, lane: Lane) -> Result<Checked<M>, OpError> {
        let mut checked = match (lane, &self.dedicated) {
            (Lane::Renewal, Some(connect)) => {
                let kept = self.renewal.lock().take();
                match kept.filter(|c| !c.is_broken() && !self.suspect.includes(c.idle_since())) {
                    Some(conn) => Checked::Own(conn),
                    None => Checked::Own(connect().map_err(|e| self.connect_error(e.to_string()))?),
                }
            }
            _ => Checked::Pooled(self.checkout_pooled(deadline)?),
        };
        self.connected.store(true, Ordering::Relaxed);
        if !self.prepared_statements.load(Ordering::Relaxed) {
            // At every checkout, not once per connection: the pool may be the
            // application's own. Setting it again costs nothing.
            checked
                .get()
                .conn()
                .set_prepared_statement_cache_size(CacheSize::Disabled);
        }
        Ok(checked)
    }

    /// A connection of the pool by `deadline`. A connect error that waiting cannot fix
    /// (a refused connection before the first success, bad credentials) comes at once.
    fn checkout_pooled(&self, deadline: Instant) -> Result<PooledConnection<M>, OpError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .pool
                .get_timeout(left.min(CHECKOUT_SLICE).max(Duration::from_millis(1)))
            {
                Ok(pooled) => return Ok(pooled),
                Err(err) => {
                    let error = self.connect_error(err.to_string());
                    if error.failure == Failure::Persistent || Instant::now() >= deadline {
                        return Err(error);
                    }
                }
            }
        }
    }

    fn connect_error(&self, message: String) -> OpError {
        let never_connected = !self.connected.load(Ordering::Relaxed);
        let failure = if rejected(&message) || never_connected && unreachable(&message) {
            Failure::Persistent
        } else {
            Failure::Transient
        };
        OpError {
            failure,
            error: Error::Connect {
                url: self.url.clone(),
                message,
            },
        }
    }

    fn give_back(&self, checked: Checked<M>, lane: Lane) {
        match checked {
            Checked::Own(mut conn) if lane == Lane::Renewal && !conn.is_broken() => {
                conn.touch();
                *self.renewal.lock() = Some(conn);
            }
            // Broken ones are dropped; the pool's go back to it (and it drops broken ones).
            _ => {}
        }
    }

    /// Classifies a failed statement; a connection that failed at the transport level is
    /// kept out of the pool.
    fn op_error<P: PooledLockConnection>(
        &self,
        conn: &mut P,
        operation: &'static str,
        source: diesel::result::Error,
    ) -> OpError {
        if breaks_connection(&source) {
            conn.mark_broken();
        }
        if named_statement_error(&source) {
            return self.transaction_pooler_found(operation, source);
        }
        let failure = classify::<P::Conn>(&source);
        let error = match failure {
            Failure::MissingTable => Error::MissingTable,
            _ => Error::Database { operation, source },
        };
        OpError { failure, error }
    }

    /// A statement prepared by name went missing or clashed: a transaction pooler is in
    /// the path. The handle stops preparing statements by name, and the attempt is worth
    /// repeating.
    fn transaction_pooler_found(
        &self,
        operation: &'static str,
        source: diesel::result::Error,
    ) -> OpError {
        if self.prepared_statements.swap(false, Ordering::SeqCst) {
            tracing::warn!(
                "{source}: the connection to {} goes through a pooler in transaction mode \
                 (PgBouncer's pool_mode = transaction); this handle no longer prepares \
                 statements by name. Set DATABASE_LOCKS_TRANSACTION_POOLING=true \
                 (Config::transaction_pooling(true)) so that it never does",
                self.url
            );
        }
        OpError {
            failure: Failure::Transient,
            error: Error::TransactionPooler { operation, source },
        }
    }
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

/// Connect errors that mean nothing is there (a closed port, an unknown host): permanent
/// until the first connection succeeded, an outage after.
fn unreachable(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "connection refused",
        "(111)",
        // libmysqlclient and MariaDB Connector/C, for a closed port or no such host.
        "can't connect to",
        "could not translate host name",
        "unknown server host",
        "unknown mysql server host",
        "name or service not known",
        "no such file or directory",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}

/// Owned copies of a lease's identity, for a statement that may outlive its caller.
fn owned(lease: Lease<'_>) -> (String, String, i64) {
    (lease.name.to_owned(), lease.owner.to_owned(), lease.token)
}

fn lease_of<'a>((name, owner, token): &'a (String, String, i64)) -> Lease<'a> {
    Lease {
        name,
        owner,
        token: *token,
    }
}

impl<M> Store for PoolStore<M>
where
    M: ManageConnection,
    M::Connection: PooledLockConnection,
{
    fn kind(&self) -> BackendKind {
        <<M::Connection as PooledLockConnection>::Conn as LockConnection>::KIND
    }

    fn statement_timeout(&self) -> Duration {
        self.statement_timeout
    }

    fn migrate(&self, deadline: Instant) -> Result<Migration, OpError> {
        self.run("migrate", deadline, |c| c.migrate())
    }

    fn columns(&self, deadline: Instant) -> Result<Vec<String>, OpError> {
        self.run("schema check", deadline, |c| c.columns())
    }

    fn try_acquire(
        &self,
        deadline: Instant,
        name: &str,
        owner: &str,
        ttl: Option<Duration>,
    ) -> Result<Attempt, OpError> {
        let (name, owner) = (name.to_owned(), owner.to_owned());
        let undo_ids = (name.clone(), owner.clone());
        self.run_on(
            "acquire",
            deadline,
            Lane::Shared,
            move |c| c.try_acquire(&name, &owner, ttl),
            // Granted after its caller gave up: nobody holds it, so let it go at once.
            move |c, attempt| {
                if let Attempt::Acquired { token } = attempt {
                    let lease = (undo_ids.0, undo_ids.1, token);
                    if let Err(err) = c.release(lease_of(&lease), None) {
                        tracing::debug!("releasing a lock granted too late: {err}");
                    }
                }
            },
        )
    }

    fn try_acquire_permit(
        &self,
        deadline: Instant,
        semaphore: &Semaphore,
        owner: &str,
        ttl: Option<Duration>,
    ) -> Result<Attempt, OpError> {
        let (semaphore, owner) = (semaphore.clone(), owner.to_owned());
        let undo_owner = owner.clone();
        self.run_on(
            "acquire",
            deadline,
            Lane::Shared,
            move |c| match c.try_acquire_permit(&semaphore, &owner, ttl)? {
                Attempt::SetupNeeded => match c.setup_semaphore(&semaphore)? {
                    Some(permits) => Ok(Attempt::Mismatch { permits }),
                    None => match c.try_acquire_permit(&semaphore, &owner, ttl)? {
                        // Changed again in between: a waiter looks again later.
                        Attempt::SetupNeeded => Ok(Attempt::Held {
                            holder: None,
                            expires_in: None,
                        }),
                        attempt => Ok(attempt),
                    },
                },
                attempt => Ok(attempt),
            },
            // Granted after its caller gave up: nobody holds it, so let it go at once.
            move |c, attempt| {
                if let Attempt::Permit { row, token } = attempt {
                    let lease = (row, undo_owner, token);
                    if let Err(err) = c.release(lease_of(&lease), None) {
                        tracing::debug!("releasing a permit granted too late: {err}");
                    }
                }
            },
        )
    }

    fn renew(
        &self,
        deadline: Instant,
        leases: RenewBatch,
        late: LateRenewal,
    ) -> Result<Vec<bool>, OpError> {
        self.run_on(
            "renew",
            deadline,
            Lane::Renewal,
            move |c| {
                let batch: Vec<_> = leases
                    .iter()
                    .map(|(name, owner, token, ttl)| {
                        (
                            Lease {
                                name,
                                owner,
                                token: *token,
                            },
                            *ttl,
                        )
                    })
                    .collect();
                c.renew(&batch)
            },
            move |_, renewed| late(renewed),
        )
    }

    fn release(
        &self,
        deadline: Instant,
        lease: Lease<'_>,
        keep_for: Option<Duration>,
    ) -> Result<bool, OpError> {
        let lease = owned(lease);
        self.run("release", deadline, move |c| {
            c.release(lease_of(&lease), keep_for)
        })
    }

    fn verify(&self, deadline: Instant, lease: Lease<'_>) -> Result<bool, OpError> {
        let lease = owned(lease);
        self.run("verify", deadline, move |c| c.verify(lease_of(&lease)))
    }

    fn list(&self, deadline: Instant, name: Option<&str>) -> Result<Vec<LockInfo>, OpError> {
        let name = name.map(str::to_owned);
        self.run("list", deadline, move |c| c.list(name.as_deref()))
    }

    fn force_release(&self, deadline: Instant, name: &str) -> Result<bool, OpError> {
        let name = name.to_owned();
        self.run("force release", deadline, move |c| c.force_release(&name))
    }

    fn notify(&self, deadline: Instant, payload: &str) -> Result<(), OpError> {
        let payload = payload.to_owned();
        self.run("notify", deadline, move |c| c.notify(&payload))
    }

    fn session(&self) -> Option<Session> {
        self.session_of()
    }

    fn listener(&self, deadline: Instant) -> Option<Result<Box<dyn Listener>, OpError>> {
        if self.kind() == BackendKind::Mysql {
            // Session locks, on connections of its own; an application's pool polls.
            let session = self.session()?;
            return match session.open(deadline) {
                Ok(first) => SessionListener::new(session, first)
                    .map(|l| Ok(Box::new(l) as Box<dyn Listener>)),
                Err(message) => Some(Err(OpError {
                    failure: Failure::Transient,
                    error: Error::Connect {
                        url: self.shared.url.clone(),
                        message,
                    },
                })),
            };
        }
        let shared = Arc::clone(&self.shared);
        type Listening<M> = Option<(PooledConnection<M>, Option<std::path::PathBuf>)>;
        let job = move |reply: Reply<Result<Listening<M>, OpError>>| {
            let outcome = (|| {
                let mut checked = shared.checkout(deadline, Lane::Shared)?;
                let listening = run_statement(&shared, &mut checked, "listen", |c| c.listen())?;
                // SQLite: the file whose writes wake the listener; elsewhere no statement.
                let file = run_statement(&shared, &mut checked, "listen", |c| c.database_file())?;
                match checked {
                    Checked::Pooled(pooled) if listening => Ok(Some((pooled, file))),
                    _ => Ok(None),
                }
            })();
            if let Some(Ok(Some((mut late, _)))) = reply.deliver(outcome) {
                late.mark_broken();
            }
        };
        match self.dispatch("listen", Instant::now(), deadline, job, None) {
            Ok(Some((pooled, file))) => Some(Ok(Box::new(PooledListener {
                pooled: Some(pooled),
                workers: Arc::clone(&self.workers),
                statement_timeout: self.statement_timeout,
                data_version: None,
                watch: file.as_deref().and_then(FileWatch::new),
                hot_until: None,
            }))),
            Ok(None) => None,
            Err(err) => Some(Err(err)),
        }
    }
}

impl<M> PoolStore<M>
where
    M: ManageConnection,
    M::Connection: PooledLockConnection,
{
    fn session_of(&self) -> Option<Session> {
        if self.kind() != BackendKind::Mysql || self.shared.dedicated.is_none() {
            return None;
        }
        let shared = Arc::clone(&self.shared);
        let opener = move || -> Result<Box<dyn SessionConn>, String> {
            let connect = shared
                .dedicated
                .as_ref()
                .ok_or_else(|| "no connection of its own".to_owned())?;
            let mut conn = connect().map_err(|e| e.to_string())?;
            let (database, galera) = conn
                .conn()
                .session_info()
                .map_err(|e| e.to_string())?
                .unwrap_or_default();
            Ok(Box::new(SideConn::<M> {
                conn,
                database,
                galera,
            }))
        };
        Some(Session {
            opener: Arc::new(opener),
            workers: Arc::clone(&self.workers),
            statement_timeout: self.statement_timeout,
        })
    }
}

/// A connection of the wake-up channel, opened outside the pool like the renewal lane's:
/// it never takes a place acquisitions wait for, and closing it lets go of its session
/// locks.
struct SideConn<M: ManageConnection> {
    conn: M::Connection,
    database: String,
    galera: bool,
}

impl<M> SessionConn for SideConn<M>
where
    M: ManageConnection,
    M::Connection: PooledLockConnection,
{
    fn database(&self) -> &str {
        &self.database
    }

    fn galera(&self) -> bool {
        self.galera
    }

    fn get_lock(&mut self, key: &str, timeout_secs: i64) -> QueryResult<bool> {
        self.conn.conn().get_session_lock(key, timeout_secs)
    }

    fn release_lock(&mut self, key: &str) -> QueryResult<bool> {
        self.conn.conn().release_session_lock(key)
    }

    fn row_free(&mut self, name: &str) -> QueryResult<bool> {
        let rows = self.conn.conn().list(Some(name))?;
        Ok(rows.first().is_none_or(|row| !row.is_held()))
    }

    fn ping(&mut self) -> QueryResult<()> {
        R2D2Connection::ping(self.conn.conn())
    }
}

/// How often a listener looks for notifications that arrived. diesel does not expose the
/// connection's socket, so it cannot block on it; a look is a non-blocking read on the
/// client, and nothing reaches the server. On SQLite a look reads `PRAGMA data_version`
/// (shared memory, no file I/O); where the database's files can be watched (Linux), it
/// looks this often only just after a write to them, and otherwise sleeps until one.
const LISTEN_POLL: Duration = Duration::from_millis(1);

/// A pooled connection that listens while it is out of the pool. It is one the pool
/// already has, so starting to listen needs no new connection (and no TLS handshake, which
/// a process exiting meanwhile could crash); it goes back clean (`UNLISTEN`), or is closed
/// when that does not finish in time.
struct PooledListener<M>
where
    M: ManageConnection,
    M::Connection: PooledLockConnection,
{
    pooled: Option<PooledConnection<M>>,
    workers: Arc<Workers>,
    statement_timeout: Duration,
    /// SQLite: the `data_version` last read; `None` until the first look.
    data_version: Option<i64>,
    /// SQLite: what wakes `wait` between looks, a write to the database's files
    /// (`watch.rs`). Without one (not SQLite, or the files cannot be watched) it looks
    /// every [`LISTEN_POLL`].
    watch: Option<FileWatch>,
    /// Until when, after a write, it looks every [`LISTEN_POLL`] ([`watch::HOT`]).
    hot_until: Option<Instant>,
}

impl<M> Listener for PooledListener<M>
where
    M: ManageConnection,
    M::Connection: PooledLockConnection,
{
    fn wait(&mut self, timeout: Duration) -> QueryResult<Heard> {
        let Some(pooled) = self.pooled.as_mut() else {
            return Ok(Heard::Released(Vec::new()));
        };
        let until = Instant::now() + timeout;
        loop {
            // A look at what has arrived: a non-blocking read, nothing is sent.
            let names = pooled.conn().notifications().inspect_err(|source| {
                if breaks_connection(source) {
                    pooled.mark_broken();
                }
            })?;
            if !names.is_empty() {
                return Ok(Heard::Released(names));
            }
            // The first look reports a commit too: a release between the waiter's refused
            // attempt and this look is then found by the read that follows.
            let version = pooled.conn().data_version().inspect_err(|source| {
                if breaks_connection(source) {
                    pooled.mark_broken();
                }
            })?;
            if let Some(version) = version {
                if self.data_version.replace(version) != Some(version) {
                    return Ok(Heard::Committed);
                }
            }
            let now = Instant::now();
            if now >= until {
                return Ok(Heard::Released(Vec::new()));
            }
            let left = until - now;
            let hot = self.hot_until.is_some_and(|hot| now < hot);
            let Some(watch) = self.watch.as_mut().filter(|_| !hot) else {
                std::thread::sleep(LISTEN_POLL.min(left));
                continue;
            };
            match watch.wait(left) {
                Ok(true) => self.hot_until = Some(Instant::now() + watch::HOT),
                // The caller's next wait looks first.
                Ok(false) => {
                    self.hot_until = None;
                    return Ok(Heard::Released(Vec::new()));
                }
                Err(err) => {
                    tracing::debug!("stopped watching the database file ({err})");
                    self.watch = None;
                }
            }
        }
    }

    fn watches_commits(&self) -> bool {
        <<M::Connection as PooledLockConnection>::Conn as LockConnection>::KIND
            == BackendKind::Sqlite
    }

    fn free_rows(&mut self, queues: &[String]) -> QueryResult<Vec<String>> {
        let Some(pooled) = self.pooled.as_mut() else {
            return Ok(Vec::new());
        };
        pooled.conn().free_rows(queues).inspect_err(|source| {
            if breaks_connection(source) {
                pooled.mark_broken();
            }
        })
    }
}

impl<M> Drop for PooledListener<M>
where
    M: ManageConnection,
    M::Connection: PooledLockConnection,
{
    fn drop(&mut self) {
        let Some(mut pooled) = self.pooled.take() else {
            return;
        };
        let deadline = Instant::now() + self.statement_timeout;
        let job = move |reply: Reply<()>| {
            if let Err(err) = pooled.conn().unlisten() {
                tracing::debug!("closing the notification listener's connection: {err}");
                pooled.mark_broken();
            }
            if reply.deliver(()).is_some() {
                pooled.mark_broken();
            }
        };
        if !matches!(self.workers.run(deadline, job), Ok(Some(()))) {
            tracing::debug!(
                "the notification listener's connection did not answer UNLISTEN in time"
            );
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
