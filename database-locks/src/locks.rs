//! The handle: a pool, its settings, and the threads that keep its leases.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use diesel::r2d2::{ConnectionManager, ManageConnection, Pool};
use parking_lot::{Mutex, RwLock};

use crate::backend::pool::{Manager, OpError, PoolStore, Store, Suspect};
use crate::backend::{Failure, LockConnection, LockInfo, Migration};
use crate::builder::LockBuilder;
use crate::channel::Channel;
use crate::config::{BackendKind, Config};
use crate::error::{Error, Result};
use crate::leader::LeaderBuilder;
use crate::local::Local;
use crate::releaser::Releaser;
use crate::renewer::Renewer;

/// The settings a handle reads at each acquisition; [`Locks::set_enabled`] and friends
/// change them at run time.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub enabled: bool,
    pub default_ttl: Option<Duration>,
    pub default_ttl_renew: Duration,
    pub auto_migrate: bool,
}

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) settings: RwLock<Settings>,
    pub(crate) local: Local,
    /// MySQL with `notify`: the session locks that wake waiters elsewhere (`channel.rs`).
    channel: Option<Channel>,
    renewer: OnceLock<Renewer>,
    releaser: OnceLock<Releaser>,
    /// Set once the table is known to be usable.
    ready: Mutex<bool>,
}

/// A handle on the lock table of one database: its connection pool, its settings and
/// the threads that renew its leases. Cheap to clone; clones share everything.
///
/// ```no_run
/// # fn main() -> Result<(), database_locks::Error> {
/// use database_locks::{Config, Locks};
///
/// let locks = Locks::new(Config::new("postgres://app@db/app"))?;
/// let guard = locks.lock("nightly-report").acquire()?;
/// println!("holding {} with token {:?}", guard.name(), guard.token());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Locks {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for Locks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Locks")
            .field("backend", &self.inner.store.kind())
            .field("settings", &*self.inner.settings.read())
            .field("local", &self.inner.local)
            .finish()
    }
}

impl Locks {
    /// A handle on the database `config` names. Connects lazily: a bad URL is an error
    /// here, an unreachable database at the first lock.
    pub fn new(config: Config) -> Result<Self> {
        crate::observe::describe();
        #[cfg(feature = "postgres")]
        crate::backend::postgres::init_tls();
        let (kind, target) = config.target()?;
        let store: Arc<dyn Store> = match kind {
            #[cfg(feature = "postgres")]
            BackendKind::Postgres => own_pool::<diesel::pg::PgConnection>(
                &config,
                &crate::config::postgres_connection_string(&target, &config),
            ),
            #[cfg(feature = "mysql")]
            BackendKind::Mysql => own_pool::<diesel::mysql::MysqlConnection>(&config, &target),
            #[cfg(feature = "sqlite")]
            BackendKind::Sqlite => own_pool::<diesel::sqlite::SqliteConnection>(&config, &target),
            #[allow(unreachable_patterns)]
            kind => {
                return Err(Error::BackendDisabled {
                    url: crate::config::mask_url(&config.url),
                    feature: kind.feature(),
                })
            }
        };
        Ok(Self::from_store(store, &config))
    }

    /// A handle that takes connections from the application's own diesel r2d2 pool.
    /// The URL in `config` is only shown in messages; the pool settings (size, connect
    /// timeout) are the pool's. With [`Config::prepared_statements`]`(false)` (or
    /// [`Config::transaction_pooling`]), each connection the handle checks out has
    /// diesel's statement cache turned off; r2d2's own check on checkout runs before that,
    /// so behind PgBouncer configure the pool's connections too (README, "Behind
    /// PgBouncer").
    ///
    /// ```no_run
    /// # #[cfg(feature = "sqlite")] {
    /// use diesel::r2d2::{ConnectionManager, Pool};
    /// use diesel::SqliteConnection;
    /// use database_locks::{Config, Locks};
    ///
    /// let pool = Pool::new(ConnectionManager::<SqliteConnection>::new("app.db"))?;
    /// let locks = Locks::from_pool(pool, Config::new("app.db"));
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_pool<C: LockConnection>(pool: Pool<ConnectionManager<C>>, config: Config) -> Self {
        #[cfg(feature = "postgres")]
        crate::backend::postgres::init_tls();
        let store = Arc::new(PoolStore::new(
            pool,
            &config.url,
            config.prepared_statements,
            config.statement_timeout,
            Arc::new(Suspect::default()),
            None,
            None,
        ));
        Self::from_store(store, &config)
    }

    fn from_store(store: Arc<dyn Store>, config: &Config) -> Self {
        let channel = (store.kind() == BackendKind::Mysql && config.notify).then(Channel::default);
        Locks {
            inner: Arc::new(Inner {
                store,
                settings: RwLock::new(Settings {
                    enabled: config.enabled,
                    default_ttl: config.default_ttl,
                    default_ttl_renew: config.default_ttl_renew,
                    auto_migrate: config.auto_migrate,
                }),
                local: Local::new(config.status_file.clone(), config.notify),
                channel,
                renewer: OnceLock::new(),
                releaser: OnceLock::new(),
                ready: Mutex::new(false),
            }),
        }
    }

    /// A builder for the lock `name` on this handle.
    pub fn lock(&self, name: impl Into<String>) -> LockBuilder {
        LockBuilder::new(Ok(self.clone()), name.into())
    }

    /// A builder for one permit of the counting semaphore `name`, which lets at most
    /// `permits` holders in at once, across every process that uses it. It has every
    /// option of a lock ([`LockBuilder`]); its guard holds one slot, renewed, fenced and
    /// released like a lock. Every process must use the same `permits` for one name
    /// ([`Error::PermitsMismatch`](crate::Error::PermitsMismatch) otherwise); at most
    /// [`MAX_PERMITS`](crate::MAX_PERMITS).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), database_locks::Error> {
    /// let locks = database_locks::global()?;
    /// // At most 3 reports run at once, on every host.
    /// let permit = locks.semaphore("heavy-report", 3).acquire()?;
    /// println!("slot {:?} of 3", permit.permit().map(|p| p.slot));
    /// # Ok(()) }
    /// ```
    pub fn semaphore(&self, name: impl Into<String>, permits: u32) -> LockBuilder {
        LockBuilder::new(Ok(self.clone()), name.into()).permits(permits)
    }

    /// A leader election on the lock `name` of this handle: configure it, then
    /// [`start`](LeaderBuilder::start) campaigning.
    pub fn leader(&self, name: impl Into<String>) -> LeaderBuilder {
        LeaderBuilder::new(Ok(self.clone()), name.into())
    }

    /// Which backend this handle talks to.
    pub fn backend(&self) -> BackendKind {
        self.inner.store.kind()
    }

    /// Creates the table, or adds the `token` column to a table Django created. Safe to
    /// run from several processes at once; a no-op when the table is up to date.
    pub fn migrate(&self) -> Result<Migration> {
        self.refuse_foreign_table(None).map_err(|e| e.error)?;
        let outcome = self
            .inner
            .store
            .migrate(self.migrate_deadline())
            .map_err(|e| e.error)?;
        self.check_schema()?;
        *self.inner.ready.lock() = true;
        Ok(outcome)
    }

    /// Every lock in the table, with its state by the database's clock.
    pub fn list(&self) -> Result<Vec<LockInfo>> {
        self.ensure_ready()?;
        let store = self.store();
        store.list(store.deadline(None), None).map_err(|e| e.error)
    }

    /// The named lock's row, if it has one.
    pub fn inspect(&self, name: &str) -> Result<Option<LockInfo>> {
        crate::builder::validate_name(name)?;
        self.ensure_ready()?;
        let store = self.store();
        Ok(store
            .list(store.deadline(None), Some(name))
            .map_err(|e| e.error)?
            .into_iter()
            .next())
    }

    /// Releases `name` whoever holds it (for operators clearing a stuck lock). The holder,
    /// if alive, finds out at its next renewal. Returns whether a lease was cleared.
    pub fn force_release(&self, name: &str) -> Result<bool> {
        crate::builder::validate_name(name)?;
        self.ensure_ready()?;
        let store = self.store();
        store
            .force_release(store.deadline(None), name)
            .map_err(|e| e.error)
    }

    /// Turns locking on or off at run time (see [`Config::enabled`]).
    pub fn set_enabled(&self, enabled: bool) {
        self.inner.settings.write().enabled = enabled;
    }

    /// Changes the default lease length at run time.
    pub fn set_default_ttl(&self, ttl: Option<Duration>) {
        self.inner.settings.write().default_ttl = ttl;
    }

    /// Changes the default renewal margin at run time.
    pub fn set_default_ttl_renew(&self, margin: Duration) {
        self.inner.settings.write().default_ttl_renew = margin;
    }

    /// Changes the status file at run time (`None`: no file).
    pub fn set_status_file(&self, path: Option<PathBuf>) {
        self.inner.local.set_status_file(path);
    }

    pub(crate) fn settings(&self) -> Settings {
        self.inner.settings.read().clone()
    }

    /// Makes sure the table exists and has our columns, once per handle.
    pub(crate) fn ensure_ready(&self) -> Result<()> {
        self.prepare(None).map_err(|e| e.error)
    }

    /// [`ensure_ready`](Self::ensure_ready), keeping whether a failure is transient so that
    /// a waiting acquisition can wait it out.
    /// `limit`: the caller's deadline, if it comes before the statements' own.
    pub(crate) fn prepare(&self, limit: Option<Instant>) -> Result<(), OpError> {
        let mut ready = self.inner.ready.lock();
        if *ready {
            return Ok(());
        }
        if self.settings().auto_migrate {
            self.refuse_foreign_table(limit)?;
            let deadline =
                limit.map_or(self.migrate_deadline(), |l| l.min(self.migrate_deadline()));
            self.inner.store.migrate(deadline)?;
        }
        self.check_schema_op(limit)?;
        *ready = true;
        Ok(())
    }

    /// Forgets that the table was ready (it was dropped behind our back).
    pub(crate) fn table_missing(&self) {
        *self.inner.ready.lock() = false;
    }

    fn check_schema(&self) -> Result<()> {
        self.check_schema_op(None).map_err(|e| e.error)
    }

    /// A table of that name that is not a lock table (missing Django's columns) is left
    /// alone: no DDL runs on it.
    fn refuse_foreign_table(&self, limit: Option<Instant>) -> Result<(), OpError> {
        let columns = self.store().columns(self.store().deadline(limit))?;
        match missing_columns(&columns, &["name", "locked_by", "expires_at"]) {
            missing if columns.is_empty() || missing.is_empty() => Ok(()),
            missing => Err(OpError {
                failure: Failure::Persistent,
                error: Error::Schema {
                    reason: format!(
                        "missing column(s) {}; it is not a lock table",
                        missing.join(", ")
                    ),
                },
            }),
        }
    }

    fn check_schema_op(&self, limit: Option<Instant>) -> Result<(), OpError> {
        let columns = self.store().columns(self.store().deadline(limit))?;
        let persistent = |error| OpError {
            failure: Failure::Persistent,
            error,
        };
        if columns.is_empty() {
            return Err(persistent(Error::MissingTable));
        }
        let missing = missing_columns(&columns, &["name", "locked_by", "expires_at", "token"]);
        if missing.is_empty() {
            Ok(())
        } else if missing == ["token"] {
            Err(persistent(Error::Schema {
                reason: "no `token` column (a table created by Django); run `migrate()` or enable auto_migrate".into(),
            }))
        } else {
            Err(persistent(Error::Schema {
                reason: format!("missing column(s) {}", missing.join(", ")),
            }))
        }
    }

    pub(crate) fn renewer(&self) -> Result<&Renewer> {
        if let Some(renewer) = self.inner.renewer.get() {
            return Ok(renewer);
        }
        let weak: Weak<dyn Store> = Arc::downgrade(&self.inner.store);
        let renewer = Renewer::start(weak).map_err(|source| Error::Thread {
            thread: "lease renewal",
            source,
        })?;
        Ok(self.inner.renewer.get_or_init(|| renewer))
    }

    /// Creating the table may wait for another process's migration (MySQL's `GET_LOCK`
    /// waits up to 60 s) on top of the statements themselves.
    fn migrate_deadline(&self) -> Instant {
        self.store().deadline(None) + Duration::from_secs(60)
    }

    pub(crate) fn releaser(&self) -> Result<&Releaser> {
        if let Some(releaser) = self.inner.releaser.get() {
            return Ok(releaser);
        }
        let weak: Weak<dyn Store> = Arc::downgrade(&self.inner.store);
        let releaser = Releaser::start(weak).map_err(|source| Error::Thread {
            thread: "background release",
            source,
        })?;
        Ok(self.inner.releaser.get_or_init(|| releaser))
    }

    pub(crate) fn store(&self) -> &dyn Store {
        self.inner.store.as_ref()
    }
}

fn missing_columns(have: &[String], need: &[&'static str]) -> Vec<&'static str> {
    need.iter()
        .copied()
        .filter(|c| !have.iter().any(|h| h.eq_ignore_ascii_case(c)))
        .collect()
}

pub(crate) fn transient(err: &OpError) -> bool {
    err.failure == Failure::Transient
}

fn own_pool<C: LockConnection>(config: &Config, target: &str) -> Arc<dyn Store> {
    let suspect = Arc::new(Suspect::default());
    let in_use = config.pool_max_size.max(2);
    let pool = Pool::builder()
        // Room for as many connections again, abandoned at a statement deadline and
        // waiting for their sockets to fail (see `Permits`).
        .max_size(in_use.saturating_mul(2))
        .min_idle(Some(0))
        // No round trip: the manager only refuses connections of a suspect generation.
        .test_on_check_out(true)
        // A connection idle this long may have been forgotten by a NAT or a load
        // balancer on the way (some drop idle flows after 350 s): close it first.
        .idle_timeout(Some(POOL_IDLE_TIMEOUT))
        .connection_timeout(config.connect_timeout)
        .error_handler(Box::new(QuietErrors))
        .build_unchecked(Manager::<C>::new(target, Arc::clone(&suspect)));
    let renewals = Manager::<C>::new(target, Arc::clone(&suspect));
    Arc::new(PoolStore::new(
        pool,
        &config.url,
        config.prepared_statements,
        config.statement_timeout,
        suspect,
        Some(Box::new(move || renewals.connect())),
        Some(in_use),
    ))
}

/// How long a connection of the handle's own pool may stay idle before it is closed.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// r2d2 logs every failed background connect at error level; an outage is already
/// reported by the operations that wait it out.
#[derive(Debug)]
struct QuietErrors;

impl<E: fmt::Display> r2d2::HandleError<E> for QuietErrors {
    fn handle_error(&self, error: E) {
        tracing::debug!("connection attempt failed: {error}");
    }
}

static GLOBAL: RwLock<Option<Locks>> = RwLock::new(None);

/// Sets the handle that [`lock`](crate::lock) and `#[locked]` use, replacing any earlier
/// one (guards taken through the old one keep working until dropped).
///
/// ```no_run
/// database_locks::configure(database_locks::Config::new("mysql://app@db/app"))?;
/// # Ok::<(), database_locks::Error>(())
/// ```
pub fn configure(config: Config) -> Result<()> {
    let locks = Locks::new(config)?;
    *GLOBAL.write() = Some(locks);
    Ok(())
}

/// Makes `locks` the handle that [`lock`](crate::lock) and `#[locked]` use.
pub fn set_global(locks: Locks) {
    *GLOBAL.write() = Some(locks);
}

/// The global handle: the one [`configure`] set, else one built from
/// [`Config::from_env`] on first use.
pub fn global() -> Result<Locks> {
    if let Some(locks) = GLOBAL.read().as_ref() {
        return Ok(locks.clone());
    }
    let mut slot = GLOBAL.write();
    if let Some(locks) = slot.as_ref() {
        return Ok(locks.clone());
    }
    let locks = Locks::new(Config::from_env()?)?;
    *slot = Some(locks.clone());
    Ok(locks)
}

/// A builder for the lock `name` on the global handle: the counterpart of the seed's
/// `lock()` context manager.
///
/// ```no_run
/// use std::time::Duration;
///
/// let guard = database_locks::lock("nightly-report")
///     .lock_ttl(Some(Duration::from_secs(60)))
///     .acquire()?;
/// // ... only one process at a time runs this ...
/// guard.release()?;
/// # Ok::<(), database_locks::Error>(())
/// ```
pub fn lock(name: impl Into<String>) -> LockBuilder {
    LockBuilder::new(global(), name.into())
}

/// A builder for one permit of the semaphore `name` on the global handle: see
/// [`Locks::semaphore`].
///
/// ```no_run
/// # fn main() -> Result<(), database_locks::Error> {
/// // At most 4 workers call the rate-limited API at once.
/// let _permit = database_locks::semaphore("partner-api", 4).acquire()?;
/// # Ok(()) }
/// ```
pub fn semaphore(name: impl Into<String>, permits: u32) -> LockBuilder {
    LockBuilder::new(global(), name.into()).permits(permits)
}

/// A leader election on the lock `name` of the global handle (see [`Locks::leader`]).
///
/// ```no_run
/// let leader = database_locks::leader("scheduler").start()?;
/// if leader.is_leader() {
///     println!("leading, term {:?}", leader.token());
/// }
/// # Ok::<(), database_locks::Error>(())
/// ```
pub fn leader(name: impl Into<String>) -> LeaderBuilder {
    LeaderBuilder::new(global(), name.into())
}

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// The default owner id: `<host>.<pid>.<nonce>.<n>`, unique per acquisition. The seed's
/// `<host>.<pid>` would let two threads of one process both hold a lock.
pub(crate) fn default_owner() -> String {
    static PREFIX: OnceLock<String> = OnceLock::new();
    let prefix = PREFIX.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .or_else(|| std::env::var("COMPUTERNAME").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        // A restarted process can get the same pid (pid 1 in a container): the nonce
        // keeps it from taking over the dead one's lease.
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default()
            ^ (std::ptr::addr_of!(SEQUENCE) as u64).rotate_left(32);
        format!("{host}.{}.{:08x}", std::process::id(), nonce as u32)
    });
    format!("{prefix}.{}", SEQUENCE.fetch_add(1, Ordering::Relaxed) + 1)
}

impl Locks {
    pub(crate) fn inner_renewer(&self) -> Option<&Renewer> {
        self.inner.renewer.get()
    }

    /// Guard `id` of this handle holds `lease`'s row: its channel (MySQL) takes the
    /// session lock once it has held it a moment.
    pub(crate) fn channel_held(&self, id: u64, lease: &Arc<crate::lease::LeaseState>) {
        if let Some(channel) = &self.inner.channel {
            channel.held(&self.inner.store, id, lease);
        }
    }

    /// Guard `id` released its row, or gave it up: the channel lets the session lock go.
    pub(crate) fn channel_released(&self, id: u64) {
        if let Some(channel) = &self.inner.channel {
            channel.released(id);
        }
    }
}

// Nothing a panic can interrupt leaves a handle inconsistent: its mutexes do not poison
// and every guard releases on unwind.
impl std::panic::UnwindSafe for Locks {}
impl std::panic::RefUnwindSafe for Locks {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(not(all(feature = "postgres", feature = "mysql", feature = "sqlite")))]
    fn a_url_for_a_disabled_backend_names_the_feature() {
        for (url, feature) in [
            ("postgres://u@h/db", "postgres"),
            ("mysql://u@h/db", "mysql"),
            ("locks.db", "sqlite"),
        ] {
            if cfg!(feature = "postgres") && feature == "postgres"
                || cfg!(feature = "mysql") && feature == "mysql"
                || cfg!(feature = "sqlite") && feature == "sqlite"
            {
                continue;
            }
            match Locks::new(Config::new(url)) {
                Err(err @ Error::BackendDisabled { .. }) => {
                    assert!(
                        err.to_string().contains(&format!("`{feature}` feature")),
                        "{err}"
                    )
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn default_owners_are_unique_and_name_the_host_and_pid() {
        let (a, b) = (default_owner(), default_owner());
        assert_ne!(a, b);
        assert!(a.contains(&format!(".{}.", std::process::id())), "{a}");
    }
}
