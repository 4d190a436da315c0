//! Configuration: the database URL and the settings the seed reads from Django's settings.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// The default of [`Config::statement_timeout`].
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The lock file used when neither `DATABASE_LOCKS_URL` nor `DATABASE_URL` is set.
pub const DEFAULT_SQLITE_FILE: &str = "database_locks.sqlite3";

/// Which database a URL points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendKind {
    /// PostgreSQL (`postgres://` or `postgresql://`).
    Postgres,
    /// MySQL or MariaDB (`mysql://`).
    Mysql,
    /// SQLite (`sqlite://relative.db`, `sqlite:///absolute.db` or a bare file path).
    Sqlite,
}

impl BackendKind {
    /// The crate feature that compiles this backend in.
    pub fn feature(self) -> &'static str {
        match self {
            BackendKind::Postgres => "postgres",
            BackendKind::Mysql => "mysql",
            BackendKind::Sqlite => "sqlite",
        }
    }
}

/// How a [`Locks`](crate::Locks) handle connects and what its locks default to.
///
/// Build one with [`Config::new`] or read it from the environment with [`Config::from_env`],
/// then adjust it with the setters:
///
/// ```
/// use std::time::Duration;
/// use database_locks::Config;
///
/// let config = Config::new("postgres://app@db/app")
///     .default_ttl(Some(Duration::from_secs(30)))
///     .status_file("/run/app/lock-status");
/// assert_eq!(config.get_default_ttl(), Some(Duration::from_secs(30)));
/// ```
#[derive(Clone, Debug)]
pub struct Config {
    pub(crate) url: String,
    pub(crate) enabled: bool,
    pub(crate) status_file: Option<PathBuf>,
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) default_ttl_renew: Duration,
    pub(crate) auto_migrate: bool,
    pub(crate) pool_max_size: u32,
    pub(crate) connect_timeout: Duration,
    pub(crate) statement_timeout: Duration,
    pub(crate) notify: bool,
    pub(crate) prepared_statements: bool,
}

impl Config {
    /// A configuration for the database at `url`, with every setting at its default:
    /// enabled, no status file, ttl 10 s, renew 2 s before expiry, tables created on first use.
    pub fn new(url: impl Into<String>) -> Self {
        Config {
            url: url.into(),
            enabled: true,
            status_file: None,
            default_ttl: Some(Duration::from_secs(10)),
            default_ttl_renew: Duration::from_secs(2),
            auto_migrate: true,
            pool_max_size: 10,
            connect_timeout: Duration::from_secs(10),
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
            notify: true,
            prepared_statements: true,
        }
    }

    /// Reads the configuration from the environment, as the seed reads Django's settings.
    ///
    /// | variable | meaning | default |
    /// |---|---|---|
    /// | `DATABASE_LOCKS_URL` | the database | `DATABASE_URL`, else the SQLite file `database_locks.sqlite3` |
    /// | `DATABASE_LOCKS_ENABLED` | `false` runs bodies without locking, with a warning | `true` |
    /// | `DATABASE_LOCKS_STATUS_FILE` | a file showing `0` idle, `1` acquiring, `2` held | none |
    /// | `DATABASE_LOCKS_DEFAULT_TTL` | lease length in seconds, or `none` for no expiry | `10` |
    /// | `DATABASE_LOCKS_DEFAULT_TTL_RENEW` | renew this many seconds before expiry (at most half the ttl) | `2` |
    /// | `DATABASE_LOCKS_STATEMENT_TIMEOUT` | seconds one statement may take before its connection is abandoned, see [`Config::statement_timeout`] | `10` |
    /// | `DATABASE_LOCKS_POOL_MAX_SIZE` | statements the handle runs at once, see [`Config::pool_max_size`] | `10` |
    /// | `DATABASE_LOCKS_TRANSACTION_POOLING` | `true`: behind PgBouncer in transaction mode, see [`Config::transaction_pooling`] | `false` |
    /// | `DATABASE_LOCKS_NOTIFY` | `false`: waiters are not woken by releases elsewhere (PostgreSQL `LISTEN`, SQLite `data_version`, MySQL session locks), see [`Config::notify`] | `true` |
    /// | `DATABASE_LOCKS_PREPARED_STATEMENTS` | `false`: no statement is prepared by name, see [`Config::prepared_statements`] | `true` |
    ///
    /// A malformed value is an [`Error::Config`] that names the variable.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads every setting but the URL from the environment, as [`Config::from_env`]; the
    /// URL is `url` (from a command line, say), and `DATABASE_LOCKS_URL` and `DATABASE_URL`
    /// are not read. A malformed `url` is an [`Error::Config`] whose variable is `url`.
    ///
    /// ```
    /// let config = database_locks::Config::from_env_with_url("postgres://app@db/app")?;
    /// assert_eq!(config.get_url(), "postgres://app@db/app");
    /// assert!(database_locks::Config::from_env_with_url("redis://cache/0").is_err());
    /// # Ok::<(), database_locks::Error>(())
    /// ```
    pub fn from_env_with_url(url: impl Into<String>) -> Result<Self> {
        Self::settings_from_lookup(("url", url.into()), |name| std::env::var(name).ok())
    }

    pub(crate) fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let url = match get("DATABASE_LOCKS_URL").filter(|v| !v.is_empty()) {
            Some(url) => ("DATABASE_LOCKS_URL", url),
            None => match get("DATABASE_URL").filter(|v| !v.is_empty()) {
                Some(url) => ("DATABASE_URL", url),
                None => {
                    warn_default_file();
                    ("DATABASE_LOCKS_URL", DEFAULT_SQLITE_FILE.to_owned())
                }
            },
        };
        Self::settings_from_lookup(url, get)
    }

    /// The URL (named after where it came from, for errors) and every other setting from
    /// `get`.
    fn settings_from_lookup(
        (variable, url): (&str, String),
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        if let Err(Error::Config { reason, .. }) = parse_url(&url) {
            return Err(Error::config(
                variable,
                format!("{:?}: {reason}", mask_url(&url)),
            ));
        }
        let mut config = Config::new(url);
        if let Some(value) = get("DATABASE_LOCKS_ENABLED") {
            config.enabled = parse_bool("DATABASE_LOCKS_ENABLED", &value)?;
        }
        if let Some(value) = get("DATABASE_LOCKS_STATUS_FILE") {
            config.status_file = (!value.is_empty()).then(|| PathBuf::from(value));
        }
        if let Some(value) = get("DATABASE_LOCKS_DEFAULT_TTL") {
            config.default_ttl = match value.trim().to_ascii_lowercase().as_str() {
                "none" | "" => None,
                _ => Some(parse_seconds("DATABASE_LOCKS_DEFAULT_TTL", &value)?),
            };
        }
        if let Some(value) = get("DATABASE_LOCKS_DEFAULT_TTL_RENEW") {
            config.default_ttl_renew = parse_seconds("DATABASE_LOCKS_DEFAULT_TTL_RENEW", &value)?;
        }
        if let Some(value) = get("DATABASE_LOCKS_POOL_MAX_SIZE") {
            config.pool_max_size = value
                .trim()
                .parse()
                .ok()
                .filter(|&n: &u32| n >= 1)
                .ok_or_else(|| {
                    Error::config(
                        "DATABASE_LOCKS_POOL_MAX_SIZE",
                        format!("{value:?} is not a number of connections (1 or more)"),
                    )
                })?;
        }
        if let Some(value) = get("DATABASE_LOCKS_STATEMENT_TIMEOUT") {
            config.statement_timeout = parse_seconds("DATABASE_LOCKS_STATEMENT_TIMEOUT", &value)?;
        }
        // The umbrella first, so that the two settings it stands for can override it.
        if let Some(value) = get("DATABASE_LOCKS_TRANSACTION_POOLING") {
            let pooled = parse_bool("DATABASE_LOCKS_TRANSACTION_POOLING", &value)?;
            config = config.transaction_pooling(pooled);
        }
        if let Some(value) = get("DATABASE_LOCKS_NOTIFY") {
            config.notify = parse_bool("DATABASE_LOCKS_NOTIFY", &value)?;
        }
        if let Some(value) = get("DATABASE_LOCKS_PREPARED_STATEMENTS") {
            config.prepared_statements = parse_bool("DATABASE_LOCKS_PREPARED_STATEMENTS", &value)?;
        }
        Ok(config)
    }

    /// Replaces the database URL, e.g. after [`Config::from_env`] when the URL comes from a
    /// command line.
    ///
    /// ```
    /// let config = database_locks::Config::new("app.db").url("postgres://app@db/app");
    /// assert_eq!(config.get_url(), "postgres://app@db/app");
    /// ```
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    /// Turns locking on or off. Off, every lock "succeeds" at once without touching the
    /// database and a warning is logged (the seed's `DATABASE_LOCKS_ENABLED = False`).
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// A file that shows `0` when idle, `1` while acquiring and `2` while a lock is held.
    pub fn status_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.status_file = Some(path.into());
        self
    }

    /// The lease length for locks that do not set `lock_ttl`; `None` means no expiry.
    pub fn default_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.default_ttl = ttl;
        self
    }

    /// How long before expiry auto-renewal extends a lease, for locks that do not set
    /// `lock_ttl_renew`.
    pub fn default_ttl_renew(mut self, margin: Duration) -> Self {
        self.default_ttl_renew = margin;
        self
    }

    /// Whether the first acquisition creates or upgrades the table (default `true`).
    pub fn auto_migrate(mut self, auto_migrate: bool) -> Self {
        self.auto_migrate = auto_migrate;
        self
    }

    /// The most statements the handle's pool runs at once (default 10;
    /// `DATABASE_LOCKS_POOL_MAX_SIZE`). The pool may open as many connections again, for
    /// connections abandoned at a statement deadline that wait for their sockets to fail
    /// (and, under heavy load, for connections replaced because one of their generation
    /// went silent), so a handle can hold up to twice `size` connections, plus one for
    /// renewals and, on PostgreSQL and SQLite while it has waiters, one that listens. Count that
    /// against the server's connection limit when many processes share it.
    pub fn pool_max_size(mut self, size: u32) -> Self {
        self.pool_max_size = size;
        self
    }

    /// How long to wait for a connection before giving up (default 10 s). An acquisition
    /// with a [`timeout`](crate::LockBuilder::timeout) waits no longer than that timeout,
    /// connecting included. Before the handle's first connection succeeded, a refused
    /// connection, an unknown host or bad credentials are reported at once.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The longest one statement may take (default 10 s,
    /// `DATABASE_LOCKS_STATEMENT_TIMEOUT`). A connection that goes silent (a cut network,
    /// a NAT or load balancer that forgot it, a proxy that stopped forwarding) gives no
    /// error: its next read never returns. So every statement on PostgreSQL and MySQL runs
    /// with a deadline, and one that overruns is abandoned with
    /// [`Error::Unresponsive`]: its connection is never used again, the connections
    /// opened before it are checked out no more, and a waiting acquisition or a renewal
    /// goes on over a new one. A renewal's deadline is also at most three quarters of the
    /// time left before the lease must be given up, so that a second try on a fresh
    /// connection still fits; an acquisition's is at most its own timeout; a release on drop gets one
    /// attempt of at most 2 s before it is handed to a background thread. SQLite, a file
    /// on this host, cannot go silent and runs its statements on the caller's thread.
    ///
    /// ```
    /// use std::time::Duration;
    /// let config = database_locks::Config::new("postgres://app@db/app")
    ///     .statement_timeout(Duration::from_secs(2));
    /// assert_eq!(config.get_statement_timeout(), Duration::from_secs(2));
    /// ```
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// The longest one statement may take.
    pub fn get_statement_timeout(&self) -> Duration {
        self.statement_timeout
    }

    /// Whether waiters are woken by releases in other processes (default `true`). While a handle has waiters it keeps one connection out of
    /// its pool and reads it every millisecond, and wakes the first waiter of each
    /// released name, so a hand-off takes milliseconds instead of up to a retry period.
    /// PostgreSQL: each release sends `NOTIFY` and that connection `LISTEN`s. SQLite: the
    /// connection reads `PRAGMA data_version` (shared memory, a few microseconds); when
    /// another connection has committed, one `SELECT` finds which of the names waited
    /// for are free. On Linux it sleeps between looks until the database's files are
    /// written (inotify), about 20 looks a second while nothing is; elsewhere it looks
    /// every millisecond. Without it, waiters poll at their retry period, and the first
    /// wait on the handle logs so once.
    ///
    /// Turn it off where `LISTEN` cannot work: behind PgBouncer in transaction mode (see
    /// [`Config::transaction_pooling`], which turns it off). The listener would find out by
    /// itself (a second after it starts, it checks that a notification of its own arrives;
    /// if not, it logs a warning and the handle polls), but `LISTEN` through such a pooler
    /// leaves its registration on a server connection other clients get. Releases still
    /// send `NOTIFY`, for the processes that listen.
    ///
    /// MySQL/MariaDB: a lock held 5 ms or longer is announced through a session lock that
    /// a connection of the handle's own holds beside the row (`GET_LOCK`), let go right
    /// after the release; waiters elsewhere block on it, one connection per name waited
    /// for. Off, holders take none and waiters poll. A Galera node (session locks are per
    /// node) and a handle on an application's pool ([`Locks::from_pool`](crate::Locks::from_pool))
    /// poll whatever the setting. DESIGN.md §3 has the statements.
    ///
    /// ```
    /// let config = database_locks::Config::new("postgres://app@db:5432/app").notify(false);
    /// assert!(!config.get_notify());
    /// ```
    pub fn notify(mut self, notify: bool) -> Self {
        self.notify = notify;
        self
    }

    /// Whether waiters are woken by releases in other processes.
    pub fn get_notify(&self) -> bool {
        self.notify
    }

    /// Whether each connection prepares a statement once, by name, and reuses it (default
    /// `true`): one parse per connection instead of one per call.
    ///
    /// Off, every statement is sent with its text and binds in one message (PostgreSQL's
    /// unnamed statement: parse, bind and execute in one round trip), so nothing
    /// outlives the statement. Turn it off behind a pooler that hands each transaction to
    /// any server connection, where a statement prepared by name on one server connection
    /// is missing on the next, or is another client's statement of the same name (see
    /// [`Config::transaction_pooling`], which turns it off). PgBouncer 1.21 and later with
    /// `max_prepared_statements` set keeps named statements working, and only `notify`
    /// needs turning off.
    ///
    /// ```
    /// let config = database_locks::Config::new("postgres://app@db/app").prepared_statements(false);
    /// assert!(!config.get_prepared_statements());
    /// ```
    pub fn prepared_statements(mut self, prepared: bool) -> Self {
        self.prepared_statements = prepared;
        self
    }

    /// Whether statements are prepared by name and reused.
    pub fn get_prepared_statements(&self) -> bool {
        self.prepared_statements
    }

    /// The database is reached through a pooler in transaction mode: PgBouncer with
    /// `pool_mode = transaction` (or another pooler that may run each transaction on a
    /// different server connection: Supavisor, pgcat, RDS Proxy when not pinned).
    ///
    /// `true` keeps every operation free of session state: no statement prepared by name
    /// ([`Config::prepared_statements`]`(false)`) and no `LISTEN` ([`Config::notify`]`(false)`:
    /// waiters poll at their retry period, so a hand-off to another process takes up to
    /// that period). Every lock operation is already one statement, or one transaction
    /// (table creation), so nothing else depends on the session. `false` turns both back
    /// on. Environment: `DATABASE_LOCKS_TRANSACTION_POOLING=true`.
    ///
    /// Without it, behind such a pooler, named statements fail or, worse, run another
    /// client's statement of the same name: set it whenever a transaction pooler is in the
    /// path.
    ///
    /// ```
    /// let config = database_locks::Config::new("postgres://app@pgbouncer:6432/app")
    ///     .transaction_pooling(true);
    /// assert!(!config.get_notify() && !config.get_prepared_statements());
    /// ```
    pub fn transaction_pooling(mut self, pooled: bool) -> Self {
        self.notify = !pooled;
        self.prepared_statements = !pooled;
        self
    }

    /// The database URL.
    pub fn get_url(&self) -> &str {
        &self.url
    }

    /// Whether locking is on.
    pub fn get_enabled(&self) -> bool {
        self.enabled
    }

    /// The status file, if any.
    pub fn get_status_file(&self) -> Option<&std::path::Path> {
        self.status_file.as_deref()
    }

    /// The default lease length.
    pub fn get_default_ttl(&self) -> Option<Duration> {
        self.default_ttl
    }

    /// The default renewal margin.
    pub fn get_default_ttl_renew(&self) -> Duration {
        self.default_ttl_renew
    }

    /// Which backend the URL selects, and the connection string to hand to it.
    pub(crate) fn target(&self) -> Result<(BackendKind, String)> {
        parse_url(&self.url)
    }
}

/// Splits a lock URL into the backend it selects and the string the driver connects with.
pub(crate) fn parse_url(url: &str) -> Result<(BackendKind, String)> {
    let bad = |reason: &str| Error::config(format!("URL {:?}", mask_url(url)), reason);
    let url = url.trim();
    if url.is_empty() {
        return Err(bad("the URL is empty"));
    }
    if url.contains('\0') {
        return Err(bad("the URL contains a NUL byte"));
    }
    let (kind, target) = match url.split_once("://") {
        Some(("postgres" | "postgresql", rest)) => {
            if rest.is_empty() {
                return Err(bad("expected postgres://user@host:port/database"));
            }
            (BackendKind::Postgres, url.to_owned())
        }
        Some(("mysql" | "mariadb", rest)) => {
            if rest.is_empty() || rest.starts_with('/') {
                return Err(bad("expected mysql://user:password@host:port/database"));
            }
            (BackendKind::Mysql, format!("mysql://{rest}"))
        }
        Some(("sqlite", path)) => (BackendKind::Sqlite, path.to_owned()),
        Some((scheme, _)) => {
            return Err(bad(&format!(
                "unknown scheme {scheme:?}; use postgres://, postgresql://, mysql://, \
                 sqlite:// or a file path"
            )))
        }
        None if url.starts_with("sqlite:") => {
            (BackendKind::Sqlite, url["sqlite:".len()..].to_owned())
        }
        None => {
            if let Some(scheme) = misspelt_scheme(url) {
                return Err(bad(&format!(
                    "this looks like a {scheme} URL with a misspelt `://`; write \
                     {scheme}://user@host:port/database (a SQLite file path would not start \
                     with `{scheme}:` or `{scheme}//`)"
                )));
            }
            if looks_like_host_port(url) {
                return Err(bad("this looks like host:port, not a SQLite file; write \
                     postgres://user@HOST:PORT/database or mysql://user@HOST:PORT/database \
                     (or sqlite://NAME for a file that is really named so)"));
            }
            (BackendKind::Sqlite, url.to_owned())
        }
    };
    if kind == BackendKind::Sqlite {
        if target.is_empty() {
            return Err(bad("the SQLite URL names no file"));
        }
        if target.contains(":memory:") || target.contains("mode=memory") {
            return Err(bad(
                "an in-memory SQLite database is private to each connection, so locks in it \
                 exclude nothing; use a file",
            ));
        }
    }
    Ok((kind, target))
}

/// Says, once per process, that locks went to the embedded default: they exclude only
/// processes on this host that run in the same directory.
fn warn_default_file() {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        let path = std::env::current_dir()
            .map(|dir| dir.join(DEFAULT_SQLITE_FILE))
            .unwrap_or_else(|_| PathBuf::from(DEFAULT_SQLITE_FILE));
        tracing::warn!(
            file = %path.display(),
            "neither DATABASE_LOCKS_URL nor DATABASE_URL is set: locks are kept in the SQLite \
             file {}, so they exclude only processes on this host that run in this directory; \
             set DATABASE_LOCKS_URL to share them",
            path.display()
        );
    });
}

/// `postgres//host/db`, `postgres:/host/db`, `mysql:host`: a scheme whose `://` went wrong.
fn misspelt_scheme(url: &str) -> Option<&'static str> {
    let lower = url.to_ascii_lowercase();
    ["postgresql", "postgres", "mysql", "mariadb"]
        .into_iter()
        .find(|scheme| {
            lower
                .strip_prefix(scheme)
                .is_some_and(|rest| rest.starts_with(':') || rest.starts_with("//"))
        })
}

/// `127.0.0.1:5432`, `db.internal:3306/app`, `[::1]:5432`: a host and a port, not a path.
fn looks_like_host_port(url: &str) -> bool {
    let authority = url.split('/').next().unwrap_or(url);
    let Some((host, port)) = authority.rsplit_once(':') else {
        return false;
    };
    let host_ok = !host.is_empty()
        && (host.starts_with('[') && host.ends_with(']')
            || host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_'));
    host_ok && !port.is_empty() && port.len() <= 5 && port.chars().all(|c| c.is_ascii_digit())
}

/// The connection string libpq gets: the URL plus TCP settings that let the kernel find a
/// dead peer (keepalives on an idle connection, `tcp_user_timeout` for data left
/// unacknowledged), a connect timeout and `gssencmode=disable`, each only where the URL
/// (or, for the last, `PGGSSENCMODE`) does not set it. They
/// bound how long a worker stays stuck on a connection that a real network dropped; the
/// statement deadlines ([`Config::statement_timeout`]) already keep callers from waiting.
// Only the PostgreSQL backend connects with it; the unit tests run on every feature set.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn postgres_connection_string(url: &str, config: &Config) -> String {
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let settings = [
        (
            "connect_timeout",
            config.connect_timeout.as_secs().max(2).to_string(),
        ),
        ("keepalives", "1".to_owned()),
        ("keepalives_idle", "10".to_owned()),
        ("keepalives_interval", "5".to_owned()),
        ("keepalives_count", "3".to_owned()),
        (
            "tcp_user_timeout",
            millis(config.statement_timeout.saturating_mul(2))
                .max(1000)
                .to_string(),
        ),
    ];
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let mut out = url.to_owned();
    // libpq's default `gssencmode=prefer` asks GSSAPI for credentials on every TCP
    // connect, and at exit libgssapi_krb5's destructor destroys the mutexes a connect in
    // progress on another thread still takes: the process aborts (tests/exit.rs). Who
    // uses GSSAPI encryption says so in the URL or in PGGSSENCMODE.
    let gss = std::env::var_os("PGGSSENCMODE")
        .is_none()
        .then(|| ("gssencmode", "disable".to_owned()));
    for (key, value) in settings.into_iter().chain(gss) {
        let present = query
            .split('&')
            .any(|pair| pair.split('=').next() == Some(key));
        if !present {
            out.push(if out.contains('?') { '&' } else { '?' });
            out.push_str(&format!("{key}={value}"));
        }
    }
    out
}

/// The URL with its password replaced by `***`, for messages and logs.
pub(crate) fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => match authority[..at].split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***{}", &rest[at..]),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

fn parse_bool(variable: &str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(Error::config(
            variable,
            format!("{value:?} is not a boolean; use true or false"),
        )),
    }
}

fn parse_seconds(variable: &str, value: &str) -> Result<Duration> {
    let seconds: f64 = value
        .trim()
        .parse()
        .map_err(|_| Error::config(variable, format!("{value:?} is not a number of seconds")))?;
    if seconds.is_nan() || seconds <= 0.0 {
        return Err(Error::config(
            variable,
            format!("{value:?} must be a positive number of seconds"),
        ));
    }
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| Error::config(variable, format!("{value:?} is too large")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Result<Config> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn env_defaults_to_a_sqlite_file() {
        let config = from(&[]).unwrap();
        assert_eq!(config.url, DEFAULT_SQLITE_FILE);
        assert!(config.enabled);
        assert_eq!(config.default_ttl, Some(Duration::from_secs(10)));
        assert_eq!(config.default_ttl_renew, Duration::from_secs(2));
        assert_eq!(config.status_file, None);
        assert!(config.notify);
        assert!(config.prepared_statements);
    }

    #[test]
    fn a_given_url_replaces_the_environments() {
        let lookup = |name: &str| match name {
            "DATABASE_LOCKS_URL" => Some("redis://not/read".to_owned()),
            "DATABASE_LOCKS_DEFAULT_TTL" => Some("3".to_owned()),
            _ => None,
        };
        let config =
            Config::settings_from_lookup(("url", "mysql://root@h/db".to_owned()), lookup).unwrap();
        assert_eq!(config.url, "mysql://root@h/db");
        assert_eq!(config.default_ttl, Some(Duration::from_secs(3)));
        let err = Config::settings_from_lookup(("url", "redis://u:secret@h/0".to_owned()), lookup)
            .unwrap_err();
        assert!(
            matches!(&err, Error::Config { variable, .. } if variable == "url"),
            "{err}"
        );
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn env_pool_size_is_a_positive_number() {
        assert_eq!(from(&[]).unwrap().pool_max_size, 10);
        let config = from(&[("DATABASE_LOCKS_POOL_MAX_SIZE", " 3 ")]).unwrap();
        assert_eq!(config.pool_max_size, 3);
        for bad in ["0", "-1", "many", ""] {
            let err = from(&[("DATABASE_LOCKS_POOL_MAX_SIZE", bad)]).unwrap_err();
            assert!(
                matches!(&err, Error::Config { variable, .. } if variable == "DATABASE_LOCKS_POOL_MAX_SIZE"),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn env_transaction_pooling_turns_off_session_state() {
        let config = from(&[("DATABASE_LOCKS_TRANSACTION_POOLING", "true")]).unwrap();
        assert!(!config.notify);
        assert!(!config.prepared_statements);
        // The finer settings override the umbrella, whatever their order in the environment.
        let config = from(&[
            ("DATABASE_LOCKS_PREPARED_STATEMENTS", "yes"),
            ("DATABASE_LOCKS_TRANSACTION_POOLING", "1"),
        ])
        .unwrap();
        assert!(!config.notify);
        assert!(config.prepared_statements);
        let config = from(&[("DATABASE_LOCKS_PREPARED_STATEMENTS", "false")]).unwrap();
        assert!(config.notify);
        assert!(!config.prepared_statements);
    }

    #[test]
    fn env_reads_every_setting() {
        let config = from(&[
            ("DATABASE_URL", "postgres://other/db"),
            ("DATABASE_LOCKS_URL", "mysql://root@h/db"),
            ("DATABASE_LOCKS_ENABLED", "False"),
            ("DATABASE_LOCKS_STATUS_FILE", "/tmp/s"),
            ("DATABASE_LOCKS_DEFAULT_TTL", "2.5"),
            ("DATABASE_LOCKS_DEFAULT_TTL_RENEW", "0.5"),
            ("DATABASE_LOCKS_NOTIFY", "off"),
        ])
        .unwrap();
        assert!(!config.notify);
        assert_eq!(config.url, "mysql://root@h/db");
        assert!(!config.enabled);
        assert_eq!(config.status_file, Some(PathBuf::from("/tmp/s")));
        assert_eq!(config.default_ttl, Some(Duration::from_millis(2500)));
        assert_eq!(config.default_ttl_renew, Duration::from_millis(500));
        let config = from(&[
            ("DATABASE_URL", "postgres://other/db"),
            ("DATABASE_LOCKS_DEFAULT_TTL", "None"),
        ])
        .unwrap();
        assert_eq!(config.url, "postgres://other/db");
        assert_eq!(config.default_ttl, None);
    }

    #[test]
    fn env_errors_name_the_variable() {
        for (var, value) in [
            ("DATABASE_LOCKS_ENABLED", "maybe"),
            ("DATABASE_LOCKS_DEFAULT_TTL", "ten"),
            ("DATABASE_LOCKS_DEFAULT_TTL", "-1"),
            ("DATABASE_LOCKS_DEFAULT_TTL", "0"),
            ("DATABASE_LOCKS_DEFAULT_TTL_RENEW", "NaN"),
            ("DATABASE_LOCKS_DEFAULT_TTL_RENEW", "1e300"),
            ("DATABASE_LOCKS_NOTIFY", "sometimes"),
            ("DATABASE_LOCKS_TRANSACTION_POOLING", "pgbouncer"),
            ("DATABASE_LOCKS_PREPARED_STATEMENTS", "2"),
        ] {
            let err = from(&[(var, value)]).unwrap_err();
            assert!(
                matches!(&err, Error::Config { variable, .. } if variable == var),
                "{var}={value}: {err}"
            );
            assert!(err.to_string().contains(var));
        }
    }

    #[test]
    fn a_malformed_url_names_its_variable() {
        for var in ["DATABASE_LOCKS_URL", "DATABASE_URL"] {
            let err = from(&[(var, "redis://u:secret@h/0")]).unwrap_err();
            assert!(
                matches!(&err, Error::Config { variable, .. } if variable == var),
                "{err}"
            );
            assert!(!err.to_string().contains("secret"));
        }
    }

    #[test]
    fn urls_select_the_backend() {
        let cases = [
            (
                "postgres://u@h/db",
                BackendKind::Postgres,
                "postgres://u@h/db",
            ),
            (
                "postgresql://u@h/db",
                BackendKind::Postgres,
                "postgresql://u@h/db",
            ),
            (
                "mysql://root@h:3306/db",
                BackendKind::Mysql,
                "mysql://root@h:3306/db",
            ),
            (
                "mariadb://root@h/db",
                BackendKind::Mysql,
                "mysql://root@h/db",
            ),
            ("sqlite://relative.db", BackendKind::Sqlite, "relative.db"),
            ("sqlite:///abs/path.db", BackendKind::Sqlite, "/abs/path.db"),
            ("sqlite:file.db", BackendKind::Sqlite, "file.db"),
            ("locks.sqlite3", BackendKind::Sqlite, "locks.sqlite3"),
            (
                "/var/lib/app/locks.db",
                BackendKind::Sqlite,
                "/var/lib/app/locks.db",
            ),
        ];
        for (url, kind, target) in cases {
            assert_eq!(parse_url(url).unwrap(), (kind, target.to_owned()), "{url}");
        }
    }

    #[test]
    fn malformed_urls_are_config_errors() {
        for url in [
            "",
            "redis://h",
            "http://x",
            "postgres://",
            "mysql://",
            "sqlite://",
            ":memory:",
            "sqlite://:memory:",
        ] {
            assert!(
                matches!(parse_url(url), Err(Error::Config { .. })),
                "{url:?}"
            );
        }
    }

    #[test]
    fn host_port_and_misspelt_schemes_are_not_taken_for_sqlite_files() {
        for (url, says) in [
            ("127.0.0.1:5432", "host:port"),
            ("localhost:3306", "host:port"),
            ("db.internal:5432/app", "host:port"),
            ("[::1]:5432", "host:port"),
            ("postgres//host/db", "postgres URL"),
            ("postgres:/host/db", "postgres URL"),
            ("postgresql:host/db", "postgresql URL"),
            ("MYSQL//root@h/db", "mysql URL"),
            ("mariadb:root@h/db", "mariadb URL"),
        ] {
            match parse_url(url) {
                Err(Error::Config { reason, .. }) => {
                    assert!(reason.contains(says), "{url}: {reason}")
                }
                other => panic!("{url}: {other:?}"),
            }
        }
        // What is a path stays one.
        for path in [
            "locks.db",
            "./db:5432",
            "data/locks:1.db",
            "postgres/locks.db",
            "mysql-locks.db",
        ] {
            assert_eq!(parse_url(path).unwrap().0, BackendKind::Sqlite, "{path}");
        }
    }

    #[test]
    fn libpq_gets_tcp_settings_the_url_does_not_set() {
        let config = Config::new("x").statement_timeout(Duration::from_secs(3));
        let plain = postgres_connection_string("postgres://u@h/db", &config);
        assert_eq!(
            plain,
            "postgres://u@h/db?connect_timeout=10&keepalives=1&keepalives_idle=10\
             &keepalives_interval=5&keepalives_count=3&tcp_user_timeout=6000\
             &gssencmode=disable"
        );
        let own = postgres_connection_string(
            "postgres://u@h/db?sslmode=disable&keepalives_idle=60&connect_timeout=3",
            &config,
        );
        assert!(own.starts_with("postgres://u@h/db?sslmode=disable&keepalives_idle=60&connect_timeout=3&keepalives=1&"), "{own}");
        assert_eq!(own.matches("keepalives_idle").count(), 1, "{own}");
        assert_eq!(own.matches("connect_timeout").count(), 1, "{own}");
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            mask_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(mask_url("mysql://root@h/db"), "mysql://root@h/db");
        assert_eq!(mask_url("file.db"), "file.db");
        let err = parse_url("redis://u:secret@h").unwrap_err().to_string();
        assert!(!err.contains("secret"), "{err}");
    }
}
