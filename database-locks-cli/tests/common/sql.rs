//! Connections of the test's own: the database's clock and a lock row's `expires_at` read
//! directly (times are compared there, never on the test's clock), and a row or file held
//! locked so that the tool's renewals cannot get through.

use std::time::Instant;

use diesel::sql_types::{Double, Nullable};
#[allow(unused_imports)]
use diesel::{Connection, QueryableByName, RunQueryDsl};

use super::{process_ended, Db, Kind, PATIENCE};

#[derive(QueryableByName)]
struct Times {
    #[diesel(sql_type = Double)]
    now: f64,
    #[diesel(sql_type = Nullable<Double>)]
    expires_at: Option<f64>,
}

/// One connection to the test database.
pub enum Conn {
    #[cfg(feature = "sqlite")]
    Sqlite(diesel::SqliteConnection),
    #[cfg(feature = "postgres")]
    Postgres(diesel::PgConnection),
    #[cfg(feature = "mysql")]
    Mysql(diesel::MysqlConnection),
}

macro_rules! with_conn {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            #[cfg(feature = "sqlite")]
            Conn::Sqlite($c) => $body,
            #[cfg(feature = "postgres")]
            Conn::Postgres($c) => $body,
            #[cfg(feature = "mysql")]
            Conn::Mysql($c) => $body,
        }
    };
}

/// Seconds since the epoch of a timestamp expression, by backend (MySQL's `expires_at` is
/// naive UTC, read without any time zone conversion).
fn epoch(kind: Kind, expr: &str) -> String {
    match kind {
        Kind::Sqlite => format!("(julianday({expr}) - 2440587.5) * 86400.0"),
        Kind::Postgres => format!("EXTRACT(EPOCH FROM {expr})::float8"),
        _ => format!("TIMESTAMPDIFF(MICROSECOND, '1970-01-01', {expr}) * 1e-6"),
    }
}

fn now_expr(kind: Kind) -> &'static str {
    match kind {
        Kind::Sqlite => "'now'",
        Kind::Postgres => "clock_timestamp()",
        _ => "UTC_TIMESTAMP(6)",
    }
}

impl Db {
    /// A connection of the test's own, to [`Db::own_url`] (SQLite with a busy timeout, as
    /// the testkit's).
    pub fn conn(&self) -> Conn {
        let url = self.own_url.as_str();
        let fail = |e: &dyn std::fmt::Display| -> ! { panic!("connecting to {url}: {e}") };
        match self.kind {
            #[cfg(feature = "sqlite")]
            Kind::Sqlite => {
                let mut c = diesel::SqliteConnection::establish(url).unwrap_or_else(|e| fail(&e));
                diesel::sql_query("PRAGMA busy_timeout = 5000")
                    .execute(&mut c)
                    .unwrap_or_else(|e| fail(&e));
                Conn::Sqlite(c)
            }
            #[cfg(feature = "postgres")]
            Kind::Postgres => {
                Conn::Postgres(diesel::PgConnection::establish(url).unwrap_or_else(|e| fail(&e)))
            }
            #[cfg(feature = "mysql")]
            Kind::Mysql => {
                Conn::Mysql(diesel::MysqlConnection::establish(url).unwrap_or_else(|e| fail(&e)))
            }
            #[allow(unreachable_patterns)]
            other => panic!("backend {other:?} is not compiled in"),
        }
    }

    /// The database's clock and the lock's `expires_at` (`None`: released, or no row), in
    /// seconds since the epoch, read by one statement.
    pub fn times(&self, conn: &mut Conn, name: &str) -> (f64, Option<f64>) {
        let sql = format!(
            "SELECT {} AS now, (SELECT {} FROM database_locks_lock WHERE name = '{name}') AS expires_at",
            epoch(self.kind, now_expr(self.kind)),
            epoch(self.kind, "expires_at"),
        );
        let rows: Vec<Times> = with_conn!(conn, c => diesel::sql_query(&sql).load(c))
            .unwrap_or_else(|e| panic!("{sql} on {}: {e}", self.own_url));
        let row = rows.first().expect("one row");
        (row.now, row.expires_at)
    }

    /// The database's clock, in seconds since the epoch.
    pub fn now(&self, conn: &mut Conn) -> f64 {
        self.times(conn, "").0
    }

    /// Asserts that process `pid` has ended before the database's clock reaches `deadline`
    /// (seconds since the epoch). Each round reads the clock, looks at the process, reads
    /// the clock again: alive after a reading at or past `deadline` fails, ended before a
    /// reading short of it passes. Returns how long before `deadline` it was seen ended.
    #[track_caller]
    pub fn assert_ended_before(&self, pid: i32, deadline: f64) -> f64 {
        let mut conn = self.conn();
        let give_up = Instant::now() + PATIENCE;
        loop {
            let before = self.now(&mut conn);
            let ended = process_ended(pid);
            let after = self.now(&mut conn);
            if ended {
                assert!(
                    after < deadline,
                    "process {pid} was seen ended only {:.3}s after the lease's end (database clock)",
                    after - deadline
                );
                return deadline - after;
            }
            assert!(
                before < deadline,
                "process {pid} still ran {:.3}s after the lease ended (database clock)",
                before - deadline
            );
            assert!(Instant::now() < give_up, "process {pid} never ended");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Holds what the tool's renewals of `name` need, until dropped: the row (`SELECT ...
    /// FOR UPDATE` in an open transaction) on the servers, the whole file (`BEGIN
    /// EXCLUSIVE`) on SQLite. Renewals then hang or time out, as when the database does
    /// not answer; reads still work.
    pub fn freeze(&self, name: &str) -> Frozen {
        let mut conn = self.conn();
        let statements = match self.kind {
            Kind::Sqlite => vec!["BEGIN EXCLUSIVE".to_owned()],
            _ => vec![
                "BEGIN".to_owned(),
                format!(
                    "SELECT {} AS now, NULL AS expires_at FROM database_locks_lock \
                     WHERE name = '{name}' FOR UPDATE",
                    epoch(self.kind, now_expr(self.kind))
                ),
            ],
        };
        for sql in &statements {
            let done = if sql.starts_with("SELECT") {
                with_conn!(&mut conn, c => diesel::sql_query(sql).load::<Times>(c).map(|rows| rows.len()))
            } else {
                with_conn!(&mut conn, c => diesel::sql_query(sql).execute(c))
            };
            let n = done.unwrap_or_else(|e| panic!("{sql} on {}: {e}", self.own_url));
            if sql.starts_with("SELECT") {
                assert_eq!(n, 1, "{sql}: no row to lock");
            }
        }
        Frozen { conn }
    }
}

/// A row or file held locked by the test: see [`Db::freeze`].
pub struct Frozen {
    conn: Conn,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = with_conn!(&mut self.conn, c => diesel::sql_query("ROLLBACK").execute(c));
    }
}
