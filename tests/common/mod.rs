//! Shared test support: databases for each backend, raw SQL, unique names.
//!
//! URLs come from `SQLITE_DATABASE_URL`, `PG_DATABASE_URL`, `MYSQL_DATABASE_URL` and
//! `PGBOUNCER_DATABASE_URL` (PostgreSQL through PgBouncer in transaction mode, started by
//! `scripts/pgbouncer`), defaulting to the local servers. A database that cannot be reached fails the test
//! and names the URL: nothing is skipped.
#![allow(dead_code)]

pub mod fenced;
pub mod global;
pub mod wake;

use std::time::{Duration, Instant};

use database_locks::{BackendKind, Config, Locks};

pub use database_locks_testkit::{
    env_url, unique_number, MYSQL_DEFAULT, PGBOUNCER_DEFAULT, PG_DEFAULT,
};

/// A database for one test: the shared server database, or an isolated schema
/// (PostgreSQL), database (MySQL) or file (SQLite) of its own.
pub struct Db {
    pub kind: BackendKind,
    pub url: String,
    /// Reached through a transaction pooler: handles use `Config::transaction_pooling`.
    pub pooled: bool,
    _dir: Option<tempfile::TempDir>,
    drop_sql: Option<(String, String)>,
}

impl Db {
    pub fn sqlite() -> Db {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = match std::env::var("SQLITE_DATABASE_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => dir.path().join("locks.sqlite3").display().to_string(),
        };
        Db {
            kind: BackendKind::Sqlite,
            url,
            pooled: false,
            _dir: Some(dir),
            drop_sql: None,
        }
    }

    pub fn postgres() -> Db {
        let url = env_url("PG_DATABASE_URL", PG_DEFAULT);
        let db = Db {
            kind: BackendKind::Postgres,
            url,
            pooled: false,
            _dir: None,
            drop_sql: None,
        };
        db.check_reachable();
        db
    }

    /// PostgreSQL through PgBouncer in transaction mode (`scripts/pgbouncer start`).
    pub fn pgbouncer() -> Db {
        let url = env_url("PGBOUNCER_DATABASE_URL", PGBOUNCER_DEFAULT);
        let db = Db {
            kind: BackendKind::Postgres,
            url,
            pooled: true,
            _dir: None,
            drop_sql: None,
        };
        db.check_reachable();
        db
    }

    /// The same server, database `database` (reached the same way).
    pub fn with_database(&self, database: &str) -> Db {
        Db {
            kind: self.kind,
            url: format!("{}/{database}", base_url(&self.url)),
            pooled: self.pooled,
            _dir: None,
            drop_sql: None,
        }
    }

    pub fn mysql() -> Db {
        let url = env_url("MYSQL_DATABASE_URL", MYSQL_DEFAULT);
        let db = Db {
            kind: BackendKind::Mysql,
            url,
            pooled: false,
            _dir: None,
            drop_sql: None,
        };
        db.check_reachable();
        db
    }

    /// The same backend with a lock table of its own, dropped afterwards.
    pub fn isolated(&self) -> Db {
        let tag = format!("dl_{}_{}", std::process::id(), unique_number());
        match self.kind {
            BackendKind::Sqlite => Db::sqlite(),
            // PgBouncer does not pass `options` (search_path) on: a database of its own,
            // reached through PgBouncer's wildcard entry.
            BackendKind::Postgres if self.pooled => {
                self.exec(&format!("CREATE DATABASE {tag}"));
                Db {
                    kind: self.kind,
                    url: format!("{}/{tag}", base_url(&self.url)),
                    pooled: true,
                    _dir: None,
                    drop_sql: Some((
                        self.url.clone(),
                        format!("DROP DATABASE {tag} WITH (FORCE)"),
                    )),
                }
            }
            BackendKind::Postgres => {
                self.exec(&format!("CREATE SCHEMA {tag}"));
                let sep = if self.url.contains('?') { '&' } else { '?' };
                Db {
                    kind: self.kind,
                    url: format!("{}{sep}options=-csearch_path%3D{tag}", self.url),
                    pooled: false,
                    _dir: None,
                    drop_sql: Some((self.url.clone(), format!("DROP SCHEMA {tag} CASCADE"))),
                }
            }
            BackendKind::Mysql => {
                self.exec(&format!("CREATE DATABASE {tag}"));
                Db {
                    kind: self.kind,
                    url: format!("{}/{tag}", base_url(&self.url)),
                    pooled: false,
                    _dir: None,
                    drop_sql: Some((self.url.clone(), format!("DROP DATABASE {tag}"))),
                }
            }
            _ => unreachable!(),
        }
    }

    pub fn config(&self) -> Config {
        Config::new(self.url.clone()).transaction_pooling(self.pooled)
    }

    pub fn locks(&self) -> Locks {
        Locks::new(self.config()).unwrap_or_else(|e| panic!("handle for {}: {e}", self.url))
    }

    fn check_reachable(&self) {
        if let Err(e) = self.try_exec("SELECT 1") {
            panic!(
                "cannot reach the test database at {} ({e}); start it or set the URL variable",
                self.url
            );
        }
    }

    /// Runs raw SQL on a fresh connection, panicking with the URL on failure.
    pub fn exec(&self, sql: &str) -> usize {
        self.try_exec(sql)
            .unwrap_or_else(|e| panic!("{sql} on {}: {e}", self.url))
    }

    pub fn try_exec(&self, sql: &str) -> Result<usize, String> {
        database_locks_testkit::try_exec(self.kind, &self.url, sql)
    }

    /// The database's "now" plus `secs`, as an SQL expression in the column's type.
    pub fn now_plus(&self, secs: i64) -> String {
        match self.kind {
            BackendKind::Postgres => format!("clock_timestamp() + interval '{secs} seconds'"),
            BackendKind::Mysql => format!("UTC_TIMESTAMP(6) + INTERVAL {secs} SECOND"),
            _ => format!("strftime('%Y-%m-%d %H:%M:%f', 'now', '{secs:+} seconds') || '000'"),
        }
    }

    /// Writes another owner into the row behind the holder's back, keeping its expiry.
    pub fn steal(&self, name: &str, thief: &str) {
        let n = self.exec(&format!(
            "UPDATE database_locks_lock SET locked_by = '{thief}', token = token + 1 WHERE name = '{name}'"
        ));
        assert_eq!(n, 1, "stealing {name}");
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Some((url, sql)) = self.drop_sql.take() {
            let admin = Db {
                kind: self.kind,
                url,
                pooled: self.pooled,
                _dir: None,
                drop_sql: None,
            };
            let _ = admin.try_exec(&sql);
        }
    }
}

/// The URL without its database name.
fn base_url(url: &str) -> &str {
    url.rsplit_once('/').map(|(b, _)| b).unwrap_or(url)
}

/// When a `watch` helper was told of its loss: the `@MICROS` of its `lost @MICROS REASON`
/// line (Unix microseconds, the host's clock, which the test databases share).
pub fn told_at(lost_line: &str) -> i64 {
    lost_line
        .split_whitespace()
        .nth(1)
        .and_then(|t| t.strip_prefix('@'))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no time in {lost_line:?}"))
}

/// A lock name no other test or run uses.
pub fn unique_name(test: &str) -> String {
    database_locks_testkit::unique_name("test", test)
}

/// Polls `condition` until it holds or `limit` passes; returns whether it held.
pub fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Db {
    /// A URL for the same database whose connections `kill_connections` can find.
    pub fn tagged_url(&self, tag: &str) -> String {
        match self.kind {
            BackendKind::Postgres => {
                let sep = if self.url.contains('?') { '&' } else { '?' };
                format!("{}{sep}application_name={tag}", self.url)
            }
            _ => self.url.clone(),
        }
    }

    /// Terminates from outside every session of `tagged_url(tag)` (PostgreSQL) or of this
    /// database (MySQL, used with `isolated()`); returns how many were killed.
    pub fn kill_connections(&self, tag: &str) -> usize {
        match self.kind {
            BackendKind::Postgres => self.exec(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{tag}'"
            )),
            BackendKind::Mysql => {
                let db = self.url.rsplit('/').next().unwrap_or_default().to_owned();
                let mut killed = 0;
                for id in self.mysql_session_ids(&db) {
                    if self.try_exec(&format!("KILL {id}")).is_ok() {
                        killed += 1;
                    }
                }
                killed
            }
            _ => 0,
        }
    }

    #[cfg(feature = "mysql")]
    fn mysql_session_ids(&self, db: &str) -> Vec<i64> {
        use diesel::{Connection, QueryableByName, RunQueryDsl};
        #[derive(QueryableByName)]
        struct Id {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            id: i64,
        }
        let mut c = diesel::MysqlConnection::establish(&self.url).expect("admin connection");
        let ids: Vec<Id> = diesel::sql_query(format!(
            "SELECT CAST(id AS SIGNED) AS id FROM information_schema.processlist WHERE db = '{db}' AND id <> CONNECTION_ID()"
        ))
        .load(&mut c)
        .expect("processlist");
        ids.into_iter().map(|i| i.id).collect()
    }

    #[cfg(not(feature = "mysql"))]
    fn mysql_session_ids(&self, _db: &str) -> Vec<i64> {
        Vec::new()
    }
}

impl Db {
    /// The MySQL/MariaDB database at `url` (a Galera node, say), checked reachable: one
    /// that cannot be reached fails the test and names the URL.
    pub fn mysql_at(url: &str) -> Db {
        let db = Db {
            kind: BackendKind::Mysql,
            url: url.to_owned(),
            pooled: false,
            _dir: None,
            drop_sql: None,
        };
        db.check_reachable();
        db
    }
}

/// A lock's row as stored, read on a fresh connection. `expires_at` is absolute (the
/// database's clock), so readings taken at different moments compare; two "time left"
/// readings do not, since each is taken at its own moment.
#[derive(Debug, Clone, PartialEq, diesel::QueryableByName)]
pub struct Row {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub locked_by: Option<String>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub token: i64,
    /// Microseconds since 1970-01-01 UTC; `None` when released.
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    pub expires_at: Option<i64>,
}

impl Db {
    /// The row of `name`, if any. On Galera the read waits until the node has applied
    /// what the cluster committed before it (`wsrep_sync_wait`).
    pub fn row(&self, name: &str) -> Option<Row> {
        self.try_row(name)
            .unwrap_or_else(|e| panic!("reading {name} on {}: {e}", self.url))
    }

    /// The row of `name` now, then the first row read within `within` whose expiry is later
    /// than now's: a renewal written after this call. `Err` names the rows when none came.
    pub fn next_renewal(&self, name: &str, within: Duration) -> Result<(Row, Row), String> {
        let before = self.row(name).ok_or_else(|| format!("no row {name}"))?;
        let stood = before
            .expires_at
            .ok_or_else(|| format!("{name} is released"))?;
        let renewed = self.renewed_past(name, stood, within)?;
        Ok((before, renewed))
    }

    /// The first row of `name` read within `within` whose expiry is later than `stood`
    /// (microseconds, as in [`Row`]). `Err` names the last row seen when none came.
    pub fn renewed_past(&self, name: &str, stood: i64, within: Duration) -> Result<Row, String> {
        let mut last = None;
        if eventually(within, || {
            last = self.row(name);
            last.as_ref()
                .is_some_and(|r| r.expires_at.is_some_and(|at| at > stood))
        }) {
            last.ok_or_else(|| format!("no row {name}"))
        } else {
            Err(format!(
                "the expiry stayed at or before {stood} µs for {within:?}; last {last:?}"
            ))
        }
    }

    pub fn try_row(&self, name: &str) -> Result<Option<Row>, String> {
        #[allow(unused_imports)]
        use diesel::{connection::SimpleConnection, Connection, RunQueryDsl};
        let expires_at = match self.kind {
            BackendKind::Postgres => "CAST(EXTRACT(EPOCH FROM expires_at) * 1000000 AS bigint)",
            BackendKind::Mysql => {
                "CAST(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', expires_at) AS SIGNED)"
            }
            // Stored as `2026-11-26 10:59:52.711000`.
            _ => {
                "CAST(strftime('%s', expires_at) AS INTEGER) * 1000000 \
                 + CAST(substr(expires_at, 21, 6) AS INTEGER)"
            }
        };
        let sql = format!(
            "SELECT locked_by, token, {expires_at} AS expires_at FROM database_locks_lock \
             WHERE name = '{name}'"
        );
        let rows: Vec<Row> = match self.kind {
            #[cfg(feature = "sqlite")]
            BackendKind::Sqlite => {
                let mut c =
                    diesel::SqliteConnection::establish(&self.url).map_err(|e| e.to_string())?;
                diesel::sql_query(sql).load(&mut c)
            }
            #[cfg(feature = "postgres")]
            BackendKind::Postgres => {
                let mut c =
                    diesel::PgConnection::establish(&self.url).map_err(|e| e.to_string())?;
                diesel::sql_query(sql).load(&mut c)
            }
            #[cfg(feature = "mysql")]
            BackendKind::Mysql => {
                let mut c =
                    diesel::MysqlConnection::establish(&self.url).map_err(|e| e.to_string())?;
                // Plain MariaDB accepts the setting and ignores it; MySQL does not know it.
                let _ =
                    c.batch_execute("SET SESSION wsrep_sync_wait = @@global.wsrep_sync_wait | 1");
                diesel::sql_query(sql).load(&mut c)
            }
            #[allow(unreachable_patterns)]
            other => panic!("backend {other:?} is not compiled in"),
        }
        .map_err(|e| e.to_string())?;
        Ok(rows.into_iter().next())
    }
}

// Driving the `lock-helper` binary from multi-process tests.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;

/// The workspace's test helper binary (tests/support/lock_helper.rs).
pub const HELPER: &str = env!("CARGO_BIN_EXE_lock-helper");

/// Tests of one binary that start many busy processes take [`heavy`] and run alone; tests
/// whose outcome depends on a lease being renewed in time take [`timed`], so that they run
/// beside each other but never beside a heavy one. A loaded run (stress --cpu 2) of
/// reliability.rs ran both backends' 8-process `processes_exclude_each_other` at once
/// (load average 29 on 2 cores, psql taking 5 s to answer): the MariaDB outage tests
/// beside them got no renewal through for a whole 12 s lease and no loss report within
/// 10 s, while the library did what it should with the time it got. The stress is the
/// load these tests must stand; 16 processes of the same binary hammering the servers
/// they time against are not.
static LOAD: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Runs alone in its test binary while the guard lives (see [`LOAD`]).
pub fn heavy() -> std::sync::RwLockWriteGuard<'static, ()> {
    LOAD.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Never beside a [`heavy`] test while the guard lives (see [`LOAD`]).
pub fn timed() -> std::sync::RwLockReadGuard<'static, ()> {
    LOAD.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How many acquisitions of the handle are in progress (attempting or waiting), from its
/// `Debug` (`waiting: N`).
pub fn in_progress(locks: &Locks) -> usize {
    let shown = format!("{locks:?}");
    shown
        .split("waiting: ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no waiting count in {shown}"))
}

/// The built `examples/NAME.rs` (`cargo test` builds the examples beside the helper).
pub fn example(name: &str) -> std::path::PathBuf {
    let example = std::path::Path::new(HELPER)
        .with_file_name("examples")
        .join(name);
    assert!(
        example.exists(),
        "{} is missing: `cargo test` builds the examples; with a test filter, build it with \
         `cargo build --all-features --example {name}`",
        example.display()
    );
    example
}

impl Db {
    /// `lock-helper ARGS...` for this database: told to use transaction pooling settings
    /// when the database is behind PgBouncer.
    pub fn helper(&self, args: &[&str]) -> Command {
        let mut command = helper(args);
        command.env(
            "DATABASE_LOCKS_TRANSACTION_POOLING",
            if self.pooled { "true" } else { "false" },
        );
        command
    }
}

/// `lock-helper ARGS...` with its stdout piped.
pub fn helper(args: &[&str]) -> Command {
    let mut command = Command::new(HELPER);
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    command
}

/// Lines a child prints, delivered through a channel so reads can time out.
pub fn lines(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

pub fn expect_line(rx: &mpsc::Receiver<String>, prefix: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with(prefix) => return line,
            Ok(_) => continue,
            Err(_) => panic!("no line starting with {prefix:?} within {within:?}"),
        }
    }
}

pub fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("lock-helper did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Everything `child` prints on stdout until it exits, which it must do successfully
/// within `within`.
pub fn output_of(child: &mut Child, within: Duration) -> String {
    use std::io::Read;
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout piped")
        .read_to_string(&mut out)
        .unwrap();
    let status = wait_exit(child, within);
    assert!(
        status.success(),
        "a process failed: {status}; it printed {out}"
    );
    out
}

/// Runs `procs` processes (process i on `dbs[i % dbs.len()]`) of `sections` critical
/// sections each on one name (`lock-helper cs`), and checks the shared counter and the
/// enter/exit intervals: no two sections overlap unless the earlier one's holder was told
/// of its loss before the later one began, and no increment is lost but by such an
/// overlap. A loss is allowed (a process on a loaded machine can stall for longer than its
/// lease); a holder that is not told of it in time is not.
pub fn run_sections(dbs: &[&Db], procs: usize, sections: u32, label: &str) {
    run_sections_with(dbs, procs, sections, label, &["cs"]);
}

/// [`run_sections`] with another helper mode: `mode[0]` is the command and the rest of
/// `mode` comes after `URL NAME COUNT DIR` (`async-cs` takes a number of tasks).
pub fn run_sections_with(dbs: &[&Db], procs: usize, sections: u32, label: &str, mode: &[&str]) {
    let _alone = heavy();
    let dir = tempfile::tempdir().unwrap();
    let name = unique_name(label);
    let started = Instant::now();
    let dir_arg = dir.path().display().to_string();
    let count = sections.to_string();
    let mut children: Vec<Child> = (0..procs)
        .map(|i| {
            let db = dbs[i % dbs.len()];
            let mut args = vec![mode[0], &db.url, &name, &count, &dir_arg];
            args.extend_from_slice(&mode[1..]);
            db.helper(&args).spawn().unwrap()
        })
        .collect();
    let mut losses = 0u32;
    for child in &mut children {
        let out = output_of(child, Duration::from_secs(600));
        let reported: u32 = out
            .lines()
            .find_map(|l| l.strip_prefix("losses "))
            .expect("loss count")
            .parse()
            .unwrap();
        losses += reported;
    }
    let elapsed = started.elapsed();
    let total = procs as u64 * u64::from(sections);
    let counter: u64 = std::fs::read_to_string(dir.path().join("counter"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (excused, unexcused) = overlapping_intervals(dir.path());
    println!(
        "{label} [{:?}{}, {} URL(s)]: {procs} processes x {sections} sections: counter \
         {counter}/{total}, overlapping intervals {unexcused} (+{excused} after a reported \
         loss), losses {losses}, {:.1} s ({:.0} sections/s)",
        dbs[0].kind,
        if dbs[0].pooled { " via PgBouncer" } else { "" },
        dbs.len(),
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(unexcused, 0, "two holders were inside at once");
    assert!(
        counter <= total && counter + excused as u64 >= total,
        "lost updates: {counter}/{total} with {excused} excused overlap(s)"
    );
}

/// The overlaps among the `enter exit pid token` intervals in `dir/intervals`: those that
/// follow a loss the earlier holder had been told of (`dir/losses`) before the later one
/// entered, and the others.
fn overlapping_intervals(dir: &std::path::Path) -> (usize, usize) {
    let mut intervals: Vec<(u128, u128, u64)> = std::fs::read_to_string(dir.join("intervals"))
        .unwrap()
        .lines()
        .map(|l| {
            let parts: Vec<u128> = l.split_whitespace().map(|p| p.parse().unwrap()).collect();
            (parts[0], parts[1], parts[3] as u64)
        })
        .collect();
    let losses: std::collections::HashMap<u64, u128> = std::fs::read_to_string(dir.join("losses"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut parts = l.split_whitespace().map(|p| p.parse::<u128>().unwrap());
            (parts.next().unwrap() as u64, parts.next().unwrap())
        })
        .collect();
    intervals.sort();
    let (mut excused, mut unexcused) = (0, 0);
    for (i, earlier) in intervals.iter().enumerate() {
        for later in intervals[i + 1..].iter().take_while(|l| l.0 < earlier.1) {
            match losses.get(&earlier.2) {
                Some(&told) if told <= later.0 => excused += 1,
                _ => {
                    eprintln!("overlap: {earlier:?} and {later:?}");
                    unexcused += 1;
                }
            }
        }
    }
    (excused, unexcused)
}
