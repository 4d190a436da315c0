//! Test support shared by the workspace's test suites (`tests/` and
//! `database-locks-cli/tests/`): where the test databases are, raw SQL on them, and
//! [`on_each_backend!`]. Each suite's own `common` module builds its `Db` on these. Never
//! published.
//!
//! A database that cannot be reached is an error the caller turns into a failed test that
//! names the URL: nothing is skipped.

use database_locks::BackendKind;

mod proxy;

pub use proxy::{host_port, FaultProxy};

/// PostgreSQL on this machine (trust auth): `PG_DATABASE_URL` overrides it.
pub const PG_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/test";

/// MariaDB on this machine: `MYSQL_DATABASE_URL` overrides it.
pub const MYSQL_DEFAULT: &str = "mysql://root@127.0.0.1:3306/test";

/// PostgreSQL through PgBouncer in transaction mode (`scripts/pgbouncer start`):
/// `PGBOUNCER_DATABASE_URL` overrides it.
pub const PGBOUNCER_DEFAULT: &str = "postgres://postgres@127.0.0.1:26432/test";

/// The URL in `var`, or `default` when it is unset or empty.
pub fn env_url(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// A number no other call in this process returns.
pub fn unique_number() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A lock name no other test or run uses (the server tables are shared):
/// `{suite}.{test}.{pid}.{nanos}.{n}`.
pub fn unique_name(suite: &str, test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "{suite}.{test}.{}.{nanos}.{}",
        std::process::id(),
        unique_number()
    )
}

/// Runs raw SQL on a fresh connection to `url`; returns the rows affected.
///
/// # Panics
///
/// When `kind`'s backend is not compiled in (its feature is off).
pub fn try_exec(kind: BackendKind, url: &str, sql: &str) -> Result<usize, String> {
    #[allow(unused_imports)]
    use diesel::{Connection, RunQueryDsl};
    match kind {
        #[cfg(feature = "sqlite")]
        BackendKind::Sqlite => {
            let mut c = diesel::SqliteConnection::establish(url).map_err(|e| e.to_string())?;
            diesel::sql_query("PRAGMA busy_timeout = 5000")
                .execute(&mut c)
                .map_err(|e| e.to_string())?;
            diesel::sql_query(sql)
                .execute(&mut c)
                .map_err(|e| e.to_string())
        }
        #[cfg(feature = "postgres")]
        BackendKind::Postgres => {
            let mut c = diesel::PgConnection::establish(url).map_err(|e| e.to_string())?;
            diesel::sql_query(sql)
                .execute(&mut c)
                .map_err(|e| e.to_string())
        }
        #[cfg(feature = "mysql")]
        BackendKind::Mysql => {
            let mut c = diesel::MysqlConnection::establish(url).map_err(|e| e.to_string())?;
            diesel::sql_query(sql)
                .execute(&mut c)
                .map_err(|e| e.to_string())
        }
        #[allow(unreachable_patterns)]
        other => panic!("backend {other:?} is not compiled in"),
    }
}

/// A lock's row as the database stores it, with the database's clock: absolute times, in
/// microseconds since the Unix epoch, so that two readings compare without the delay
/// between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRow {
    /// `locked_by`.
    pub locked_by: Option<String>,
    /// The fencing token.
    pub token: i64,
    /// `expires_at`; `None` when released.
    pub expires_at_us: Option<i64>,
    /// The database's clock when it read the row.
    pub now_us: i64,
}

impl RawRow {
    /// Whether the lease is live by the database's clock when it was read.
    pub fn is_held(&self) -> bool {
        self.expires_at_us.is_some_and(|at| at >= self.now_us)
    }
}

/// Reads `name`'s row on a fresh connection to `url` (not through any handle's pool).
///
/// # Panics
///
/// When `kind`'s backend is not compiled in (its feature is off).
pub fn read_row(kind: BackendKind, url: &str, name: &str) -> Result<Option<RawRow>, String> {
    #[allow(unused_imports)]
    use diesel::{sql_types, Connection, OptionalExtension, QueryableByName, RunQueryDsl};
    #[derive(QueryableByName)]
    #[allow(dead_code)]
    struct Row {
        #[diesel(sql_type = sql_types::Nullable<sql_types::Text>)]
        locked_by: Option<String>,
        #[diesel(sql_type = sql_types::BigInt)]
        token: i64,
        #[diesel(sql_type = sql_types::Nullable<sql_types::BigInt>)]
        expires_at_us: Option<i64>,
        #[diesel(sql_type = sql_types::BigInt)]
        now_us: i64,
    }
    #[allow(unreachable_code)]
    let row: Option<Row> = match kind {
        #[cfg(feature = "sqlite")]
        BackendKind::Sqlite => {
            let mut c = diesel::SqliteConnection::establish(url).map_err(|e| e.to_string())?;
            diesel::sql_query(
                "SELECT locked_by, token, \
                 CAST((julianday(expires_at) - 2440587.5) * 86400000000 AS integer) AS expires_at_us, \
                 CAST((julianday('now') - 2440587.5) * 86400000000 AS integer) AS now_us \
                 FROM database_locks_lock WHERE name = ?",
            )
            .bind::<sql_types::Text, _>(name)
            .get_result(&mut c)
            .optional()
            .map_err(|e| e.to_string())?
        }
        #[cfg(feature = "postgres")]
        BackendKind::Postgres => {
            let mut c = diesel::PgConnection::establish(url).map_err(|e| e.to_string())?;
            diesel::sql_query(
                "SELECT locked_by, token, \
                 CAST(EXTRACT(EPOCH FROM expires_at) * 1000000 AS bigint) AS expires_at_us, \
                 CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS bigint) AS now_us \
                 FROM database_locks_lock WHERE name = $1",
            )
            .bind::<sql_types::Text, _>(name)
            .get_result(&mut c)
            .optional()
            .map_err(|e| e.to_string())?
        }
        #[cfg(feature = "mysql")]
        BackendKind::Mysql => {
            let mut c = diesel::MysqlConnection::establish(url).map_err(|e| e.to_string())?;
            diesel::sql_query(
                "SELECT CAST(locked_by AS CHAR) AS locked_by, token, \
                 CAST(TIMESTAMPDIFF(MICROSECOND, '1970-01-01', expires_at) AS SIGNED) AS expires_at_us, \
                 CAST(TIMESTAMPDIFF(MICROSECOND, '1970-01-01', UTC_TIMESTAMP(6)) AS SIGNED) AS now_us \
                 FROM database_locks_lock WHERE name = ?",
            )
            .bind::<sql_types::Text, _>(name)
            .get_result(&mut c)
            .optional()
            .map_err(|e| e.to_string())?
        }
        #[allow(unreachable_patterns)]
        other => panic!("backend {other:?} is not compiled in"),
    };
    Ok(row.map(|r| RawRow {
        locked_by: r.locked_by,
        token: r.token,
        expires_at_us: r.expires_at_us,
        now_us: r.now_us,
    }))
}

/// Instantiates each listed `fn(&Db)` once per compiled-in backend, with `Db` the calling
/// test crate's `crate::common::Db` (its `sqlite()`, `postgres()` and `mysql()`); with
/// `pgbouncer;` first, a second time on PostgreSQL through PgBouncer in transaction mode
/// (`Db::pgbouncer()`). The features are the calling crate's.
// `crate::common::Db` is meant to be the calling crate's own `Db`.
#[allow(clippy::crate_in_macro_def)]
#[macro_export]
macro_rules! on_each_backend {
    (pgbouncer; $($test:ident),* $(,)?) => {
        $crate::on_each_backend!($($test),*);
        #[cfg(feature = "postgres")]
        mod pgbouncer {
            $( #[test] fn $test() { super::$test(&crate::common::Db::pgbouncer()) } )*
        }
    };
    ($($test:ident),* $(,)?) => {
        #[cfg(feature = "sqlite")]
        mod sqlite {
            $( #[test] fn $test() { super::$test(&crate::common::Db::sqlite()) } )*
        }
        #[cfg(feature = "postgres")]
        mod postgres {
            $( #[test] fn $test() { super::$test(&crate::common::Db::postgres()) } )*
        }
        #[cfg(feature = "mysql")]
        mod mysql {
            $( #[test] fn $test() { super::$test(&crate::common::Db::mysql()) } )*
        }
    };
}

/// An application's own diesel connection, for tests of fenced transactions: the same few
/// calls on every backend, so that one test body runs on each.
pub trait AppConn: database_locks::LockConnection + Sized {
    /// A new connection to `url` (SQLite: with a `busy_timeout`, like the crate's own).
    fn connect(url: &str) -> Result<Self, String>;

    /// Runs `sql`; the affected-row count.
    fn exec(&mut self, sql: &str) -> diesel::QueryResult<usize>;

    /// Runs a query whose first row has a `bigint` column `n`; that value (0 without rows).
    fn number(&mut self, sql: &str) -> diesel::QueryResult<i64>;
}

#[derive(diesel::QueryableByName)]
struct Number {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

macro_rules! app_conn {
    ($feature:literal, $conn:ty, $setup:expr) => {
        #[cfg(feature = $feature)]
        impl AppConn for $conn {
            fn connect(url: &str) -> Result<Self, String> {
                use diesel::Connection;
                let mut conn = <$conn>::establish(url).map_err(|e| format!("{url}: {e}"))?;
                if let Some(setup) = $setup {
                    diesel::connection::SimpleConnection::batch_execute(&mut conn, setup)
                        .map_err(|e| format!("{url}: {e}"))?;
                }
                Ok(conn)
            }

            fn exec(&mut self, sql: &str) -> diesel::QueryResult<usize> {
                diesel::RunQueryDsl::execute(diesel::sql_query(sql), self)
            }

            fn number(&mut self, sql: &str) -> diesel::QueryResult<i64> {
                let rows: Vec<Number> = diesel::RunQueryDsl::load(diesel::sql_query(sql), self)?;
                Ok(rows.first().map_or(0, |r| r.n))
            }
        }
    };
}
app_conn!(
    "sqlite",
    diesel::SqliteConnection,
    Some("PRAGMA busy_timeout = 5000")
);
app_conn!("postgres", diesel::PgConnection, None::<&str>);
app_conn!("mysql", diesel::MysqlConnection, None::<&str>);
