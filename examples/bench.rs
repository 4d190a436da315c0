//! What a lock costs, against the database's own floor, measured in one run.
//!
//! ```text
//! cargo run --release --example bench --all-features -- [--backend pg|mysql|sqlite|all] [--quick] [--only SECTION,...]
//! ```
//!
//! Backends need their crate feature (`--all-features`, or `--features postgres`, ...);
//! SQLite, the default feature, runs on a temporary file. Servers come from
//! `PG_DATABASE_URL` and `MYSQL_DATABASE_URL` (default: the local test servers). The
//! program works in a schema (PostgreSQL) or database (MySQL) of its own,
//! `database_locks_bench`, and leaves it behind.
//!
//! Each backend gets one table. Rates that are compared are measured in alternating rounds
//! (floor, ours, reference, floor, ...) and each ratio is the median of the rounds' ratios,
//! so that a noisy neighbour slows both sides of a ratio alike.
//!
//! Statements are counted on the client: every diesel connection of this process, ours and
//! the floor's, gets a counting [`Instrumentation`] (diesel's default instrumentation hook),
//! so a count is what was sent to the database, whoever sent it.
//!
//! Memory per held lock is measured twice: the live heap (a counting global allocator:
//! what the guard, the lease and the handle's bookkeeping keep), and resident memory
//! (which also keeps what the renewal batches of thousands of leases allocated and freed).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use std::alloc::{GlobalAlloc, Layout, System};

use clap::Parser;
use database_locks::{BackendKind, Config, LockGuard, Locks};
use diesel::connection::{set_default_instrumentation, Instrumentation, InstrumentationEvent};

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "What a lock costs, against the database's own floor"
)]
struct Args {
    /// pg, mysql, sqlite or all
    #[arg(long, default_value = "all")]
    backend: String,
    /// Shorter runs (fewer rounds, fewer hand-offs, 2,000 instead of 10,000 locks)
    #[arg(long)]
    quick: bool,
    /// Only these sections, comma-separated: uncontended, metrics, fenced, pooling,
    /// handoff, async, semaphores, contended, waiters, processes, scale (default: all)
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Internal (the `processes` section): wait for the lock NAME at URL, say `waiting`
    /// once the first attempt was refused, then take it, release it and exit.
    #[arg(long, hide = true, num_args = 2, value_names = ["URL", "NAME"])]
    child_wait: Option<Vec<String>>,
}

/// Bytes allocated and not freed, by anyone in this process.
struct CountingAllocator;

static LIVE_BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Every statement sent by any diesel connection of this process.
static STATEMENTS: AtomicU64 = AtomicU64::new(0);
/// The batched renewal statements among them, counted while `WATCH_RENEWALS` is set
/// (telling them apart means formatting the SQL, which costs time).
static RENEWALS: AtomicU64 = AtomicU64::new(0);
static WATCH_RENEWALS: AtomicBool = AtomicBool::new(false);

/// The SQLite listener's statements, counted while `WATCH_LISTENER` is set: its looks
/// (`PRAGMA data_version`, a read of shared memory), its reads of which waited-for rows are
/// free after a commit elsewhere, and acquire attempts (`UPDATE ... SET locked_by`).
static LOOKS: AtomicU64 = AtomicU64::new(0);
static FREE_READS: AtomicU64 = AtomicU64::new(0);
static ATTEMPTS: AtomicU64 = AtomicU64::new(0);
static WATCH_LISTENER: AtomicBool = AtomicBool::new(false);

fn count_statements() -> Option<Box<dyn Instrumentation>> {
    Some(Box::new(|event: InstrumentationEvent<'_>| {
        if let InstrumentationEvent::StartQuery { query, .. } = event {
            STATEMENTS.fetch_add(1, Ordering::Relaxed);
            let renewals = WATCH_RENEWALS.load(Ordering::Relaxed);
            let listener = WATCH_LISTENER.load(Ordering::Relaxed);
            if !(renewals || listener) {
                return;
            }
            let sql = sql_prefix(query);
            if renewals && is_renewal(&sql) {
                RENEWALS.fetch_add(1, Ordering::Relaxed);
            }
            if listener {
                let sql = sql.trim_start();
                if sql.starts_with("PRAGMA data_version") {
                    LOOKS.fetch_add(1, Ordering::Relaxed);
                } else if sql.starts_with("SELECT l.name AS name FROM json_each(") {
                    FREE_READS.fetch_add(1, Ordering::Relaxed);
                } else if sql.starts_with("UPDATE database_locks_lock\n   SET locked_by") {
                    ATTEMPTS.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }))
}

/// The listener counters now: (looks, free-row reads, acquire attempts).
fn listener_counts() -> (u64, u64, u64) {
    (
        LOOKS.load(Ordering::Relaxed),
        FREE_READS.load(Ordering::Relaxed),
        ATTEMPTS.load(Ordering::Relaxed),
    )
}

/// CPU time this process's threads have used (`/proc/self/task/*/schedstat`, Linux), if
/// it can be read.
fn cpu_time() -> Option<Duration> {
    cpu_time_of("self")
}

/// CPU time the threads of process `pid` (`self` for this one) have used, if it can be
/// read.
fn cpu_time_of(pid: &str) -> Option<Duration> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        ns += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(ns))
}

/// The batched renewal statement of each backend (`DESIGN.md`).
fn is_renewal(sql: &str) -> bool {
    sql.trim_start().starts_with("UPDATE database_locks_lock")
        && ["unnest(", "json_each(", "JSON_TABLE("]
            .iter()
            .any(|f| sql.contains(f))
}

/// The first 400 bytes of a statement's text, without formatting its binds (a renewal
/// carries thousands).
fn sql_prefix(query: &dyn std::fmt::Display) -> String {
    struct Prefix(String);
    impl std::fmt::Write for Prefix {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let room = 400usize.saturating_sub(self.0.len());
            let mut end = s.len().min(room);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            self.0.push_str(&s[..end]);
            if end < s.len() {
                Err(std::fmt::Error)
            } else {
                Ok(())
            }
        }
    }
    let mut out = Prefix(String::new());
    let _ = std::fmt::write(&mut out, format_args!("{query}"));
    out.0
}

fn statements() -> u64 {
    STATEMENTS.load(Ordering::Relaxed)
}

struct Plan {
    /// The sections to run (`--only`); empty: all.
    only: Vec<String>,
    rounds: usize,
    round: Duration,
    handoffs: usize,
    contended: Duration,
    scale_locks: usize,
    scale_hold: Duration,
    waiters: usize,
    waiting: Duration,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Plan {
                only: Vec::new(),
                rounds: 3,
                round: Duration::from_millis(400),
                handoffs: 40,
                contended: Duration::from_secs(1),
                scale_locks: 2_000,
                scale_hold: Duration::from_secs(3),
                waiters: 100,
                waiting: Duration::from_secs(2),
            }
        } else {
            Plan {
                only: Vec::new(),
                rounds: 7,
                round: Duration::from_secs(1),
                handoffs: 200,
                contended: Duration::from_secs(3),
                scale_locks: 10_000,
                scale_hold: Duration::from_secs(6),
                waiters: 100,
                waiting: Duration::from_secs(5),
            }
        }
    }
}

fn main() {
    let args = Args::parse();
    if let Some([url, name]) = args.child_wait.as_deref() {
        std::process::exit(match child_wait(url, name) {
            Ok(()) => 0,
            Err(err) => {
                eprintln!("waiting child: {err}");
                1
            }
        });
    }
    let plan = Plan {
        only: args.only.clone(),
        ..Plan::new(args.quick)
    };
    if set_default_instrumentation(count_statements).is_err() {
        eprintln!("cannot install the statement counter");
        std::process::exit(1);
    }
    let wanted: Vec<&str> = match args.backend.as_str() {
        "all" => vec!["pg", "mysql", "sqlite"],
        "pg" | "postgres" => vec!["pg"],
        "mysql" | "mariadb" => vec!["mysql"],
        "sqlite" => vec!["sqlite"],
        other => {
            eprintln!("unknown backend {other:?}: use pg, mysql, sqlite or all");
            std::process::exit(2);
        }
    };
    println!(
        "database-locks bench{}, {} cores",
        if args.quick { " (--quick)" } else { "" },
        thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut failed = false;
    for backend in wanted {
        let Some(target) = Target::new(backend) else {
            println!("\n## {backend}: not compiled in (build with --all-features)");
            continue;
        };
        println!("\n## {} ({})", target.title, target.shown_url);
        if let Err(err) = run(&target, &plan) {
            println!("failed: {err}");
            failed = true;
        }
    }
    if failed {
        std::process::exit(1);
    }
}

type Res<T> = Result<T, String>;

/// One database to measure.
struct Target {
    kind: BackendKind,
    title: &'static str,
    /// The URL handles connect with (our schema/database/file).
    url: String,
    shown_url: String,
    _dir: Option<tempfile::TempDir>,
}

impl Target {
    fn new(backend: &str) -> Option<Target> {
        let env = |var: &str, default: &str| {
            std::env::var(var)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        match backend {
            #[cfg(feature = "postgres")]
            "pg" => {
                let base = env("PG_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test");
                let sep = if base.contains('?') { '&' } else { '?' };
                Some(Target {
                    kind: BackendKind::Postgres,
                    title: "PostgreSQL",
                    url: format!("{base}{sep}options=-csearch_path%3Ddatabase_locks_bench"),
                    shown_url: base,
                    _dir: None,
                })
            }
            #[cfg(feature = "mysql")]
            "mysql" => {
                let base = env("MYSQL_DATABASE_URL", "mysql://root@127.0.0.1:3306/test");
                let root = base.rsplit_once('/').map_or(base.as_str(), |(r, _)| r);
                Some(Target {
                    kind: BackendKind::Mysql,
                    title: "MySQL/MariaDB",
                    url: format!("{root}/database_locks_bench"),
                    shown_url: base.clone(),
                    _dir: None,
                })
            }
            #[cfg(feature = "sqlite")]
            "sqlite" => {
                let dir = tempfile::tempdir().ok()?;
                let url = dir.path().join("bench.sqlite3").display().to_string();
                Some(Target {
                    kind: BackendKind::Sqlite,
                    title: "SQLite (WAL, synchronous = NORMAL)",
                    shown_url: url.clone(),
                    url,
                    _dir: Some(dir),
                })
            }
            _ => None,
        }
    }

    fn locks(&self) -> Res<Locks> {
        Locks::new(Config::new(self.url.clone())).map_err(|e| e.to_string())
    }
}

/// A plain diesel connection of the target's backend, set up as our pool sets up its own:
/// the floor and the reference run on it.
enum Raw {
    #[cfg(feature = "postgres")]
    Pg(diesel::PgConnection),
    #[cfg(feature = "mysql")]
    My(diesel::MysqlConnection),
    #[cfg(feature = "sqlite")]
    Lite(diesel::SqliteConnection),
}

diesel::table! {
    bench_scratch (id) {
        id -> Integer,
        v -> BigInt,
    }
}

#[cfg(feature = "postgres")]
diesel::define_sql_function!(fn pg_try_advisory_lock(key: diesel::sql_types::BigInt) -> diesel::sql_types::Bool);
#[cfg(feature = "postgres")]
diesel::define_sql_function!(fn pg_advisory_unlock(key: diesel::sql_types::BigInt) -> diesel::sql_types::Bool);
#[cfg(feature = "mysql")]
diesel::define_sql_function! {
    #[sql_name = "GET_LOCK"]
    fn get_lock(name: diesel::sql_types::Text, timeout: diesel::sql_types::Integer) -> diesel::sql_types::Nullable<diesel::sql_types::Integer>;
}
#[cfg(feature = "mysql")]
diesel::define_sql_function! {
    #[sql_name = "RELEASE_LOCK"]
    fn release_lock(name: diesel::sql_types::Text) -> diesel::sql_types::Nullable<diesel::sql_types::Integer>;
}

impl Raw {
    /// Creates the namespace and the scratch table (on an admin connection when needed),
    /// then connects to the target.
    fn open(target: &Target) -> Res<Raw> {
        use diesel::connection::SimpleConnection;
        use diesel::Connection;
        let err = |e: &dyn std::fmt::Display| format!("{}: {e}", target.shown_url);
        match target.kind {
            #[cfg(feature = "postgres")]
            BackendKind::Postgres => {
                let mut admin =
                    diesel::PgConnection::establish(&target.shown_url).map_err(|e| err(&e))?;
                admin
                    .batch_execute("CREATE SCHEMA IF NOT EXISTS database_locks_bench")
                    .map_err(|e| err(&e))?;
                let mut conn = diesel::PgConnection::establish(&target.url).map_err(|e| err(&e))?;
                conn.batch_execute(
                    "CREATE TABLE IF NOT EXISTS bench_scratch (id integer PRIMARY KEY, v bigint NOT NULL);
                     INSERT INTO bench_scratch VALUES (1, 0) ON CONFLICT DO NOTHING;",
                )
                .map_err(|e| err(&e))?;
                Ok(Raw::Pg(conn))
            }
            #[cfg(feature = "mysql")]
            BackendKind::Mysql => {
                let mut admin =
                    diesel::MysqlConnection::establish(&target.shown_url).map_err(|e| err(&e))?;
                admin
                    .batch_execute("CREATE DATABASE IF NOT EXISTS database_locks_bench")
                    .map_err(|e| err(&e))?;
                let mut conn =
                    diesel::MysqlConnection::establish(&target.url).map_err(|e| err(&e))?;
                conn.batch_execute(
                    "CREATE TABLE IF NOT EXISTS bench_scratch (id integer PRIMARY KEY, v bigint NOT NULL) ENGINE=InnoDB;
                     INSERT IGNORE INTO bench_scratch VALUES (1, 0);",
                )
                .map_err(|e| err(&e))?;
                Ok(Raw::My(conn))
            }
            #[cfg(feature = "sqlite")]
            BackendKind::Sqlite => {
                let mut conn =
                    diesel::SqliteConnection::establish(&target.url).map_err(|e| err(&e))?;
                // What our pool runs on each of its connections.
                conn.batch_execute(
                    "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
                     CREATE TABLE IF NOT EXISTS bench_scratch (id integer PRIMARY KEY, v bigint NOT NULL);
                     INSERT OR IGNORE INTO bench_scratch VALUES (1, 0);",
                )
                .map_err(|e| err(&e))?;
                Ok(Raw::Lite(conn))
            }
            #[allow(unreachable_patterns)]
            _ => Err("backend not compiled in".into()),
        }
    }

    fn exec(&mut self, sql: &str) -> Res<()> {
        use diesel::connection::SimpleConnection;
        let r = match self {
            #[cfg(feature = "postgres")]
            Raw::Pg(c) => c.batch_execute(sql),
            #[cfg(feature = "mysql")]
            Raw::My(c) => c.batch_execute(sql),
            #[cfg(feature = "sqlite")]
            Raw::Lite(c) => c.batch_execute(sql),
        };
        r.map_err(|e| e.to_string())
    }

    /// The floor: two single-row autocommit UPDATEs, prepared once.
    fn floor_pair(&mut self) -> Res<()> {
        use bench_scratch::dsl::{bench_scratch as t, id, v};
        use diesel::{ExpressionMethods, QueryDsl, RunQueryDsl};
        for _ in 0..2 {
            let q = diesel::update(t.filter(id.eq(1))).set(v.eq(v + 1));
            let n = match self {
                #[cfg(feature = "postgres")]
                Raw::Pg(c) => q.execute(c),
                #[cfg(feature = "mysql")]
                Raw::My(c) => q.execute(c),
                #[cfg(feature = "sqlite")]
                Raw::Lite(c) => q.execute(c),
            }
            .map_err(|e| e.to_string())?;
            if n != 1 {
                return Err(format!("the scratch UPDATE changed {n} rows"));
            }
        }
        Ok(())
    }

    /// The reference: a session lock and its release (none on SQLite).
    fn reference_pair(&mut self) -> Res<bool> {
        use diesel::RunQueryDsl;
        match self {
            #[cfg(feature = "postgres")]
            Raw::Pg(c) => {
                let got: bool = diesel::select(pg_try_advisory_lock(4_242))
                    .get_result(c)
                    .map_err(|e| e.to_string())?;
                let freed: bool = diesel::select(pg_advisory_unlock(4_242))
                    .get_result(c)
                    .map_err(|e| e.to_string())?;
                Ok(got && freed)
            }
            #[cfg(feature = "mysql")]
            Raw::My(c) => {
                let got: Option<i32> = diesel::select(get_lock("database_locks_bench", 0))
                    .get_result(c)
                    .map_err(|e| e.to_string())?;
                let freed: Option<i32> = diesel::select(release_lock("database_locks_bench"))
                    .get_result(c)
                    .map_err(|e| e.to_string())?;
                Ok(got == Some(1) && freed == Some(1))
            }
            #[cfg(feature = "sqlite")]
            Raw::Lite(_) => Ok(false),
        }
    }

    /// One transaction that increments the scratch row: a plain diesel transaction, or a
    /// fenced one under `guard`.
    fn scratch_transaction(&mut self, guard: Option<&LockGuard>) -> Res<()> {
        type BoxError = Box<dyn std::error::Error + Send + Sync>;
        macro_rules! transaction {
            ($conn:expr, $ty:ty) => {{
                let body = |c: &mut $ty| -> Result<(), BoxError> {
                    use bench_scratch::dsl::{bench_scratch as t, id, v};
                    use diesel::{ExpressionMethods, QueryDsl, RunQueryDsl};
                    diesel::update(t.filter(id.eq(1)))
                        .set(v.eq(v + 1))
                        .execute(c)?;
                    Ok(())
                };
                match guard {
                    Some(guard) => guard.transaction($conn, body),
                    None => diesel::Connection::transaction($conn, body),
                }
            }};
        }
        match self {
            #[cfg(feature = "postgres")]
            Raw::Pg(c) => transaction!(c, diesel::PgConnection),
            #[cfg(feature = "mysql")]
            Raw::My(c) => transaction!(c, diesel::MysqlConnection),
            #[cfg(feature = "sqlite")]
            Raw::Lite(c) => transaction!(c, diesel::SqliteConnection),
        }
        .map_err(|e| e.to_string())
    }

    fn has_reference(&self) -> bool {
        match self {
            #[cfg(feature = "sqlite")]
            Raw::Lite(_) => false,
            #[allow(unreachable_patterns)]
            _ => true,
        }
    }
}

/// Runs `step` for `duration`; returns how many times per second it ran, and how many
/// statements each run sent.
fn rate(duration: Duration, mut step: impl FnMut() -> Res<()>) -> Res<(f64, f64)> {
    let before = statements();
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < duration {
        step()?;
        n += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    let sent = statements() - before;
    Ok((n as f64 / secs, sent as f64 / n.max(1) as f64))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// The printed table: metric, value, comment.
struct Table(Vec<(String, String, String)>);

impl Table {
    fn row(
        &mut self,
        metric: impl Into<String>,
        value: impl Into<String>,
        note: impl Into<String>,
    ) {
        let row = (metric.into(), value.into(), note.into());
        println!("  {:<58} {:>16}  {}", row.0, row.1, row.2);
        self.0.push(row);
    }

    fn print_markdown(&self) {
        println!("\n| measure | value | notes |\n|---|---:|---|");
        for (m, v, n) in &self.0 {
            println!("| {m} | {v} | {n} |");
        }
    }
}

fn run(target: &Target, plan: &Plan) -> Res<()> {
    let mut raw = Raw::open(target)?;
    let locks = target.locks()?;
    locks.migrate().map_err(|e| e.to_string())?;
    raw.exec("DELETE FROM database_locks_lock")?;
    let mut table = Table(Vec::new());

    let on = |section: &str| plan.only.is_empty() || plan.only.iter().any(|s| s == section);
    if on("uncontended") {
        uncontended(target, plan, &mut raw, &locks, &mut table)?;
    }
    if on("metrics") {
        metrics_cost(plan, &locks, &mut table)?;
    }
    if on("fenced") {
        fenced(plan, &mut raw, &locks, &mut table)?;
    }
    #[cfg(feature = "postgres")]
    if on("pooling") && target.kind == BackendKind::Postgres {
        pooling(target, plan, &mut raw, &mut table)?;
    }
    if on("handoff") {
        handoff(target, plan, &locks, &mut table)?;
    }
    if on("async") {
        asynchronous(target, plan, &locks, &mut table)?;
    }
    if on("semaphores") {
        semaphores(plan, &locks, &mut table)?;
    }
    if on("contended") {
        contended(plan, &locks, &mut table)?;
    }
    if on("waiters") {
        waiters(target, plan, &mut table)?;
    }
    if on("processes") && target.kind == BackendKind::Sqlite {
        processes(target, plan, &mut table)?;
    }
    if on("scale") {
        scale(target, plan, &mut table)?;
    }
    table.print_markdown();
    Ok(())
}

/// (1) and (2): one thread, acquire+release, against the floor and the reference.
/// One uncontended cycle on `name` per call: acquire, then release.
fn acquire_release(locks: &Locks, name: &'static str, renew: bool) -> impl FnMut() -> Res<()> {
    let locks = locks.clone();
    move || {
        let guard = locks
            .lock(name)
            .auto_renew(renew)
            .acquire()
            .map_err(|e| e.to_string())?;
        guard.release().map_err(|e| e.to_string())
    }
}

fn uncontended(
    target: &Target,
    plan: &Plan,
    raw: &mut Raw,
    locks: &Locks,
    table: &mut Table,
) -> Res<()> {
    let cycle = |renew: bool| acquire_release(locks, "bench.uncontended", renew);
    // Warm up: connections, prepared statements, the renewal thread.
    rate(Duration::from_millis(200), cycle(true))?;
    rate(Duration::from_millis(200), || raw.floor_pair())?;
    let mut series: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut per_cycle: BTreeMap<&str, f64> = BTreeMap::new();
    let has_reference = raw.has_reference();
    for _ in 0..plan.rounds {
        let (floor, f_st) = rate(plan.round, || raw.floor_pair())?;
        let (off, off_st) = rate(plan.round, cycle(false))?;
        let (on, on_st) = rate(plan.round, cycle(true))?;
        series.entry("floor").or_default().push(floor);
        series.entry("off").or_default().push(off);
        series.entry("on").or_default().push(on);
        series.entry("off/floor").or_default().push(off / floor);
        series.entry("on/floor").or_default().push(on / floor);
        per_cycle.insert("floor", f_st);
        per_cycle.insert("off", off_st);
        per_cycle.insert("on", on_st);
        if has_reference {
            let (reference, r_st) = rate(plan.round, || {
                if raw.reference_pair()? {
                    Ok(())
                } else {
                    Err("the session lock was not granted".into())
                }
            })?;
            series.entry("ref").or_default().push(reference);
            series
                .entry("ref/floor")
                .or_default()
                .push(reference / floor);
            per_cycle.insert("ref", r_st);
        }
    }
    let get = |k: &str| median(series.get(k).cloned().unwrap_or_default());
    table.row(
        "floor: 2 autocommit UPDATEs of a scratch row, pairs/s",
        format!("{:.0}", get("floor")),
        format!("{:.0} statements per pair", per_cycle["floor"]),
    );
    table.row(
        "acquire+release, auto_renew off, cycles/s",
        format!("{:.0}", get("off")),
        format!(
            "{:.2} x floor (target >= 0.8); {:.1} statements per cycle",
            get("off/floor"),
            per_cycle["off"]
        ),
    );
    table.row(
        "acquire+release, auto_renew on, cycles/s",
        format!("{:.0}", get("on")),
        format!(
            "{:.2} x floor; {:.1} statements per cycle",
            get("on/floor"),
            per_cycle["on"]
        ),
    );
    if target.kind == BackendKind::Mysql {
        channel_cost(target, plan, locks, table)?;
    }
    if has_reference {
        let what = match target.kind {
            BackendKind::Postgres => "pg_try_advisory_lock + pg_advisory_unlock",
            _ => "GET_LOCK + RELEASE_LOCK",
        };
        table.row(
            format!("reference: {what}, pairs/s"),
            format!("{:.0}", get("ref")),
            format!(
                "{:.2} x floor; session-bound, writes nothing, gone with the session",
                get("ref/floor")
            ),
        );
    }
    Ok(())
}

/// MySQL: what the wake-up channel (session locks, `channel.rs`) costs an uncontended
/// cycle, in alternating rounds against a handle with `notify(false)`, which has none.
/// Sections shorter than its delay (5 ms) take no session lock; what is left is its
/// bookkeeping and the thread's wake-ups.
fn channel_cost(target: &Target, plan: &Plan, locks: &Locks, table: &mut Table) -> Res<()> {
    let quiet =
        Locks::new(Config::new(target.url.clone()).notify(false)).map_err(|e| e.to_string())?;
    let mut with = acquire_release(locks, "bench.channel", true);
    let mut without = acquire_release(&quiet, "bench.channel", true);
    rate(Duration::from_millis(200), &mut with)?;
    rate(Duration::from_millis(200), &mut without)?;
    let (mut on, mut off, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    let (mut on_st, mut off_st) = (0.0, 0.0);
    for round in 0..plan.rounds {
        // ABBA: neither side always runs first in its round.
        let ((a, a_st), (b, b_st)) = if round % 2 == 0 {
            let a = rate(plan.round, &mut with)?;
            (a, rate(plan.round, &mut without)?)
        } else {
            let b = rate(plan.round, &mut without)?;
            (rate(plan.round, &mut with)?, b)
        };
        on.push(a);
        off.push(b);
        ratio.push(a / b);
        (on_st, off_st) = (a_st, b_st);
    }
    table.row(
        "acquire+release, wake-up channel on / off, cycles/s",
        format!("{:.0} / {:.0}", median(on), median(off)),
        format!(
            "{:.3} x (target >= 0.95), alternating rounds (ABBA); {on_st:.1} / {off_st:.1} statements per cycle",
            median(ratio)
        ),
    );
    Ok(())
}

/// What the `metrics` feature costs an uncontended cycle, in alternating rounds: with the
/// feature compiled in but no recorder installed (the facade's no-op), and with a
/// Prometheus recorder (metrics-exporter-prometheus, its registry only, no listener) as
/// the thread's recorder. Without the feature the calls are not compiled at all
/// (`src/observe.rs`), so the first figure bounds what the feature costs when unused.
#[cfg(feature = "metrics")]
fn metrics_cost(plan: &Plan, locks: &Locks, table: &mut Table) -> Res<()> {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let mut cycle = acquire_release(locks, "bench.metrics", false);
    rate(Duration::from_millis(200), &mut cycle)?;
    let (mut plain, mut recorded, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..plan.rounds {
        let (off, _) = rate(plan.round, &mut cycle)?;
        let (on, _) = metrics::with_local_recorder(&recorder, || rate(plan.round, &mut cycle))?;
        plain.push(off);
        recorded.push(on);
        ratio.push(on / off);
    }
    table.row(
        "acquire+release, metrics compiled in, no recorder, cycles/s",
        format!("{:.0}", median(plain)),
        "the `metrics` feature on, nothing installed",
    );
    table.row(
        "acquire+release, recorded by a Prometheus recorder, cycles/s",
        format!("{:.0}", median(recorded)),
        format!("{:.2} x without a recorder", median(ratio)),
    );
    Ok(())
}

#[cfg(not(feature = "metrics"))]
fn metrics_cost(_: &Plan, _: &Locks, _: &mut Table) -> Res<()> {
    Ok(())
}

/// What the fence costs: a transaction of one `UPDATE`, plain and fenced (under a held
/// lock without auto-renewal, so that only the transaction's own statements count), in
/// alternating rounds.
fn fenced(plan: &Plan, raw: &mut Raw, locks: &Locks, table: &mut Table) -> Res<()> {
    let guard = locks
        .lock("bench.fenced")
        .lock_ttl(Some(Duration::from_secs(600)))
        .auto_renew(false)
        .acquire()
        .map_err(|e| e.to_string())?;
    rate(Duration::from_millis(200), || {
        raw.scratch_transaction(Some(&guard))
    })?;
    let (mut plain, mut fenced, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut plain_st, mut fenced_st) = (0.0, 0.0);
    for _ in 0..plan.rounds {
        let (p, p_st) = rate(plan.round, || raw.scratch_transaction(None))?;
        let (f, f_st) = rate(plan.round, || raw.scratch_transaction(Some(&guard)))?;
        plain.push(p);
        fenced.push(f);
        ratios.push(f / p);
        (plain_st, fenced_st) = (p_st, f_st);
    }
    table.row(
        "transaction of 1 UPDATE, plain, per s",
        format!("{:.0}", median(plain)),
        format!("{plain_st:.1} statements per transaction (BEGIN and COMMIT included)"),
    );
    table.row(
        "same, fenced (guard.transaction), per s",
        format!("{:.0}", median(fenced)),
        format!(
            "{:.2} x plain; {fenced_st:.1} statements per transaction",
            median(ratios)
        ),
    );
    guard.release().map_err(|e| e.to_string())
}

/// What transaction pooling costs: acquire+release (auto_renew off) with unnamed
/// statements directly, and through PgBouncer in transaction mode (`PGBOUNCER_DATABASE_URL`,
/// default `scripts/pgbouncer`'s port; on its database's own `database_locks_lock`, as
/// PgBouncer does not pass `search_path` on), each against the floor in the same rounds.
#[cfg(feature = "postgres")]
fn pooling(target: &Target, plan: &Plan, raw: &mut Raw, table: &mut Table) -> Res<()> {
    let unnamed = Locks::new(Config::new(target.url.clone()).prepared_statements(false))
        .map_err(|e| e.to_string())?;
    let bouncer_url = std::env::var("PGBOUNCER_DATABASE_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:26432/test".to_owned());
    let bouncer = Locks::new(Config::new(bouncer_url.clone()).transaction_pooling(true))
        .map_err(|e| e.to_string())?;
    let cycle = |locks: &Locks| acquire_release(locks, "bench.pooling", false);
    rate(Duration::from_millis(200), cycle(&unnamed))?;
    let reachable = match rate(Duration::from_millis(200), cycle(&bouncer)) {
        Ok(_) => true,
        Err(err) => {
            table.row(
                "through PgBouncer (transaction mode)",
                "-",
                format!("not measured: {bouncer_url}: {err}"),
            );
            false
        }
    };
    // The floor where statements cannot be prepared by name: the same two UPDATEs, each
    // parsed on every call (an unnamed statement, what diesel sends for `sql_query`),
    // directly and through the same PgBouncer.
    let mut unprepared_direct = UnpreparedFloor::connect(&target.url)?;
    let mut unprepared_bouncer = if reachable {
        Some(UnpreparedFloor::connect(&bouncer_url)?)
    } else {
        None
    };
    let mut series: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut per_cycle: BTreeMap<&str, f64> = BTreeMap::new();
    for _ in 0..plan.rounds {
        let (floor, _) = rate(plan.round, || raw.floor_pair())?;
        let (floor_unprepared, _) = rate(plan.round, || unprepared_direct.pair())?;
        let (direct, d_st) = rate(plan.round, cycle(&unnamed))?;
        series.entry("unnamed").or_default().push(direct);
        series
            .entry("unnamed/floor")
            .or_default()
            .push(direct / floor);
        series
            .entry("unnamed/unprepared floor")
            .or_default()
            .push(direct / floor_unprepared);
        per_cycle.insert("unnamed", d_st);
        if let Some(floor_bouncer) = unprepared_bouncer.as_mut() {
            let (floor_bouncer, _) = rate(plan.round, || floor_bouncer.pair())?;
            let (pooled, p_st) = rate(plan.round, cycle(&bouncer))?;
            series.entry("bouncer").or_default().push(pooled);
            series
                .entry("bouncer/floor")
                .or_default()
                .push(pooled / floor);
            series
                .entry("bouncer floor")
                .or_default()
                .push(floor_bouncer);
            series
                .entry("bouncer/bouncer floor")
                .or_default()
                .push(pooled / floor_bouncer);
            per_cycle.insert("bouncer", p_st);
        }
    }
    let get = |k: &str| median(series.get(k).cloned().unwrap_or_default());
    table.row(
        "acquire+release, prepared_statements(false), cycles/s",
        format!("{:.0}", get("unnamed")),
        format!(
            "{:.2} x floor, {:.2} x the floor unprepared; {:.1} statements per cycle, each \
             parsed every time",
            get("unnamed/floor"),
            get("unnamed/unprepared floor"),
            per_cycle["unnamed"]
        ),
    );
    if reachable {
        table.row(
            "floor through PgBouncer: two unprepared UPDATEs, pairs/s",
            format!("{:.0}", get("bouncer floor")),
            "what any client pays there: no statement can be prepared by name".to_string(),
        );
        table.row(
            "acquire+release through PgBouncer, transaction_pooling, cycles/s",
            format!("{:.0}", get("bouncer")),
            format!(
                "{:.2} x the floor through the same PgBouncer (target >= 0.8), {:.2} x the \
                 direct floor; {:.1} statements per cycle",
                get("bouncer/bouncer floor"),
                get("bouncer/floor"),
                per_cycle["bouncer"]
            ),
        );
    }
    Ok(())
}

/// Two single-row autocommit UPDATEs of the scratch row, neither prepared by name: the
/// floor behind a transaction pooler.
#[cfg(feature = "postgres")]
struct UnpreparedFloor(diesel::PgConnection);

#[cfg(feature = "postgres")]
impl UnpreparedFloor {
    fn connect(url: &str) -> Res<Self> {
        use diesel::Connection;
        diesel::PgConnection::establish(url)
            .map(UnpreparedFloor)
            .map_err(|e| format!("{url}: {e}"))
    }

    fn pair(&mut self) -> Res<()> {
        use diesel::RunQueryDsl;
        for _ in 0..2 {
            let n = diesel::sql_query(
                "UPDATE database_locks_bench.bench_scratch SET v = v + 1 WHERE id = $1",
            )
            .bind::<diesel::sql_types::Integer, _>(1)
            .execute(&mut self.0)
            .map_err(|e| e.to_string())?;
            if n != 1 {
                return Err(format!("the scratch UPDATE changed {n} rows"));
            }
        }
        Ok(())
    }
}

/// A tiny deterministic generator, to spread release moments over the poll period.
struct Lcg(u64);

impl Lcg {
    fn next_below(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % bound.max(1)
    }
}

/// (3): a waiter blocked on a held lock, default settings; release returned -> acquire
/// returned. Once with the waiter on another handle (how another process sees it), once
/// on the same handle as the holder.
fn handoff(target: &Target, plan: &Plan, locks: &Locks, table: &mut Table) -> Res<()> {
    let other = target.locks()?;
    // MySQL: the same run without the wake-up channel, for comparison.
    let quiet =
        Locks::new(Config::new(target.url.clone()).notify(false)).map_err(|e| e.to_string())?;
    let mut handles = vec![("another handle", &other), ("the same handle", locks)];
    if target.kind == BackendKind::Mysql {
        handles.insert(1, ("another handle, notify(false)", &quiet));
    }
    // Another handle has its own pool and listener: what another process sees.
    for (label, waiter_locks) in handles {
        let name = format!("bench.handoff.{}", label.replace(' ', "-"));
        let mut latencies = Vec::with_capacity(plan.handoffs);
        let mut rng = Lcg(7);
        WATCH_LISTENER.store(true, Ordering::Relaxed);
        let before = statements();
        let (looks_before, _, _) = listener_counts();
        for _ in 0..plan.handoffs {
            let guard = locks.lock(&name).acquire().map_err(|e| e.to_string())?;
            let (tx, rx) = std::sync::mpsc::channel();
            let waiter = {
                let waiter_locks = waiter_locks.clone();
                let name = name.clone();
                thread::spawn(move || -> Res<Instant> {
                    let _ = tx.send(());
                    let guard = waiter_locks
                        .lock(&name)
                        .acquire()
                        .map_err(|e| e.to_string())?;
                    let got = Instant::now();
                    guard.release().map_err(|e| e.to_string())?;
                    Ok(got)
                })
            };
            rx.recv().map_err(|e| e.to_string())?;
            // Release at a random point of the waiter's poll period (default 500 ms).
            thread::sleep(Duration::from_millis(20 + rng.next_below(500)));
            guard.release().map_err(|e| e.to_string())?;
            let released = Instant::now();
            let got = waiter
                .join()
                .map_err(|_| "the waiter panicked".to_string())??;
            latencies.push(got.saturating_duration_since(released));
        }
        let looks = listener_counts().0 - looks_before;
        WATCH_LISTENER.store(false, Ordering::Relaxed);
        let sent = statements() - before - looks;
        latencies.sort();
        let how = match (target.kind, label) {
            (_, "the same handle") => "woken by the release in this process",
            (_, "another handle, notify(false)") => "polls every 500 ms (default retry)",
            (BackendKind::Mysql, _) => {
                "woken by the session lock (GET_LOCK) the holder's channel lets go"
            }
            (BackendKind::Postgres, _) => "woken by NOTIFY",
            (BackendKind::Sqlite, _) => {
                "woken by the commit (inotify on the file, then PRAGMA data_version, not counted)"
            }
            _ => "polls every 500 ms (default retry)",
        };
        table.row(
            format!(
                "hand-off from {label}, p50 / p99 / max ({} runs)",
                latencies.len()
            ),
            format!(
                "{} / {} / {}",
                ms(percentile(&latencies, 50.0)),
                ms(percentile(&latencies, 99.0)),
                ms(percentile(&latencies, 100.0))
            ),
            format!(
                "{how}; {:.1} statements per hand-off",
                sent as f64 / latencies.len().max(1) as f64
            ),
        );
    }
    Ok(())
}

/// Semaphores: an uncontended permit cycle (one of 3 permits) against a lock's cycle in
/// alternating rounds, with the statements each sends; and 6 threads of one handle on 3
/// permits, each holding its permit 1 ms.
fn semaphores(plan: &Plan, locks: &Locks, table: &mut Table) -> Res<()> {
    let mut lock = acquire_release(locks, "bench.semaphore.lock", true);
    let mut permit = {
        let locks = locks.clone();
        move || -> Res<()> {
            let guard = locks
                .semaphore("bench.semaphore", 3)
                .acquire()
                .map_err(|e| e.to_string())?;
            guard.release().map_err(|e| e.to_string())
        }
    };
    rate(Duration::from_millis(200), &mut permit)?;
    let (mut rates, mut ratios, mut sent) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..plan.rounds {
        let (l, _) = rate(plan.round, &mut lock)?;
        let (p, per) = rate(plan.round, &mut permit)?;
        rates.push(p);
        ratios.push(p / l);
        sent.push(per);
    }
    table.row(
        "semaphore permit acquire+release (3 permits), uncontended, cycles/s",
        format!("{:.0}", median(rates)),
        format!(
            "{:.2} x a lock's cycle in alternating rounds; {:.1} statements per cycle",
            median(ratios),
            median(sent)
        ),
    );
    let stop = Instant::now() + plan.round;
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let locks = locks.clone();
            std::thread::spawn(move || -> Res<u64> {
                let mut n = 0;
                while Instant::now() < stop {
                    let guard = locks
                        .semaphore("bench.semaphore.contended", 3)
                        .retry(Some(Duration::from_millis(500)))
                        .acquire()
                        .map_err(|e| e.to_string())?;
                    std::thread::sleep(Duration::from_millis(1));
                    guard.release().map_err(|e| e.to_string())?;
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for t in threads {
        total += t
            .join()
            .map_err(|_| "a bench thread panicked".to_string())??;
    }
    table.row(
        "semaphore, 6 threads of one handle on 3 permits, 1 ms held, permits/s",
        format!("{:.0}", total as f64 / plan.round.as_secs_f64()),
        "releases hand the freed slot to the next waiter of the handle (no polling)".to_string(),
    );
    Ok(())
}

/// The async face against the blocking one, in the same run: uncontended cycles in
/// alternating rounds, hand-off between two tasks of one process against two threads,
/// and what 10,000 waiting tasks cost in threads and memory.
fn asynchronous(target: &Target, plan: &Plan, locks: &Locks, table: &mut Table) -> Res<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .map_err(|e| e.to_string())?;
    let name = "bench.async.uncontended";
    let blocking = acquire_release(locks, name, true);
    let asynchronous = || -> Res<()> {
        runtime.block_on(async {
            let guard = locks
                .lock(name)
                .acquire_async()
                .await
                .map_err(|e| e.to_string())?;
            guard.release_async().await.map_err(|e| e.to_string())
        })
    };
    // What an async cycle cannot avoid, with no statement at all: the attempt and the
    // release each handed to another thread, and the task woken when it is done.
    let hop = Hop::start()?;
    let hops = || -> Res<()> {
        runtime.block_on(async {
            hop.round_trip().await?;
            hop.round_trip().await
        })
    };
    let (mut blocking, mut asynchronous, mut hops) = (blocking, asynchronous, hops);
    rate(Duration::from_millis(200), &mut asynchronous)?;
    let (mut b_rates, mut a_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut hop_rates = Vec::new();
    for _ in 0..plan.rounds {
        let (b, _) = rate(plan.round, &mut blocking)?;
        let (a, _) = rate(plan.round, &mut asynchronous)?;
        let (h, _) = rate(plan.round, &mut hops)?;
        b_rates.push(b);
        a_rates.push(a);
        ratios.push(a / b);
        hop_rates.push(h);
    }
    let (b_us, h_us) = (1e6 / median(b_rates.clone()), 1e6 / median(hop_rates));
    table.row(
        "async acquire+release (tokio), uncontended, cycles/s",
        format!("{:.0}", median(a_rates)),
        format!(
            "{:.2} x the blocking path's {:.0} in alternating rounds (target >= 0.8)",
            median(ratios),
            median(b_rates)
        ),
    );
    table.row(
        "two round trips to a thread, no statement, µs",
        format!("{h_us:.1}"),
        format!(
            "a bare channel and waker, the least an async cycle adds; against the blocking \
             cycle's {b_us:.1} µs: {:.2} x (0.8 x needs under {:.1} µs)",
            b_us / (b_us + h_us),
            b_us / 4.0
        ),
    );

    // Hand-off inside one process: tasks against threads, the same releases.
    let mut rng = Lcg(11);
    let (mut tasks, mut threads) = (Vec::new(), Vec::new());
    for i in 0..plan.handoffs {
        let pause = Duration::from_millis(1 + rng.next_below(20));
        let name = format!("bench.async.handoff.{}", i % 4);
        tasks.push(runtime.block_on(async {
            let guard = locks
                .lock(&name)
                .acquire_async()
                .await
                .map_err(|e| e.to_string())?;
            let waiter = tokio::spawn({
                let (locks, name) = (locks.clone(), name.clone());
                async move {
                    let guard = locks
                        .lock(&name)
                        .acquire_async()
                        .await
                        .map_err(|e| e.to_string())?;
                    let got = Instant::now();
                    guard.release_async().await.map_err(|e| e.to_string())?;
                    Ok::<_, String>(got)
                }
            });
            tokio::time::sleep(pause).await;
            guard.release_async().await.map_err(|e| e.to_string())?;
            let released = Instant::now();
            let got = waiter.await.map_err(|e| e.to_string())??;
            Ok::<_, String>(got.saturating_duration_since(released))
        })?);
        let guard = locks.lock(&name).acquire().map_err(|e| e.to_string())?;
        let waiter = {
            let (locks, name) = (locks.clone(), name.clone());
            thread::spawn(move || -> Res<Instant> {
                let guard = locks.lock(&name).acquire().map_err(|e| e.to_string())?;
                let got = Instant::now();
                guard.release().map_err(|e| e.to_string())?;
                Ok(got)
            })
        };
        thread::sleep(pause);
        guard.release().map_err(|e| e.to_string())?;
        let released = Instant::now();
        let got = waiter
            .join()
            .map_err(|_| "the waiter panicked".to_string())??;
        threads.push(got.saturating_duration_since(released));
    }
    tasks.sort();
    threads.sort();
    table.row(
        format!(
            "hand-off between two tasks of one process, p50 / p99 ({} runs)",
            tasks.len()
        ),
        format!(
            "{} / {}",
            ms(percentile(&tasks, 50.0)),
            ms(percentile(&tasks, 99.0))
        ),
        format!(
            "two threads, the same runs: {} / {} (target: tasks' p50 within 2 x)",
            ms(percentile(&threads, 50.0)),
            ms(percentile(&threads, 99.0))
        ),
    );

    // 10,000 waiting tasks on one held lock.
    let waiting_locks = target.locks()?;
    let name = "bench.async.waiting";
    let holder = locks.lock(name).acquire().map_err(|e| e.to_string())?;
    let (threads_before, rss_before) = (named_threads(""), rss_bytes());
    let waiters: Vec<_> = (0..10_000)
        .map(|_| {
            let locks = waiting_locks.clone();
            runtime.spawn(async move {
                let guard = locks
                    .lock(name)
                    .acquire_async()
                    .await
                    .map_err(|e| e.to_string())?;
                guard.release_async().await.map_err(|e| e.to_string())
            })
        })
        .collect();
    while !format!("{waiting_locks:?}").contains("waiting: 10000") {
        thread::sleep(Duration::from_millis(20));
    }
    WATCH_LISTENER.store(true, Ordering::Relaxed);
    let before = statements();
    let (looks_before, _, _) = listener_counts();
    let started = Instant::now();
    thread::sleep(plan.waiting);
    let looks = listener_counts().0 - looks_before;
    WATCH_LISTENER.store(false, Ordering::Relaxed);
    let per_sec = (statements() - before - looks) as f64 / started.elapsed().as_secs_f64();
    let (threads_during, rss_during) = (named_threads(""), rss_bytes());
    holder.release().map_err(|e| e.to_string())?;
    let drained = Instant::now();
    for waiter in waiters {
        runtime.block_on(waiter).map_err(|e| e.to_string())??;
    }
    table.row(
        "10,000 tasks waiting on a held lock: threads added, memory per task",
        format!(
            "{} threads, {:.1} KiB",
            threads_during.saturating_sub(threads_before),
            rss_during.saturating_sub(rss_before) as f64 / 10_000.0 / 1024.0
        ),
        format!(
            "{per_sec:.1} statements/s while they wait (SQLite's looks at data_version not \
             counted); then all took it in turn in {}",
            ms(drained.elapsed())
        ),
    );
    Ok(())
}

/// A worker thread that runs jobs handed to it and wakes the task waiting for each: the
/// least any async face on blocking statements pays per call (the crate's `offload`
/// does this and runs the statement in between).
struct Hop {
    jobs: std::sync::mpsc::Sender<tokio::sync::oneshot::Sender<()>>,
}

impl Hop {
    fn start() -> Res<Hop> {
        let (jobs, inbox) = std::sync::mpsc::channel::<tokio::sync::oneshot::Sender<()>>();
        thread::Builder::new()
            .name("bench-hop".into())
            .spawn(move || {
                for done in inbox {
                    let _ = done.send(());
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(Hop { jobs })
    }

    async fn round_trip(&self) -> Res<()> {
        let (done, finished) = tokio::sync::oneshot::channel();
        self.jobs.send(done).map_err(|e| e.to_string())?;
        finished.await.map_err(|e| e.to_string())
    }
}

/// Critical sections per second and statements per critical section for `threads`
/// threads looping over `names` names on one handle.
fn throughput(locks: &Locks, threads: usize, names: usize, duration: Duration) -> Res<(f64, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let inside = Arc::new(Mutex::new(vec![0u32; names]));
    let start = Arc::new(Barrier::new(threads + 1));
    let workers: Vec<_> = (0..threads)
        .map(|i| {
            let (locks, stop, done, inside, start) = (
                locks.clone(),
                Arc::clone(&stop),
                Arc::clone(&done),
                Arc::clone(&inside),
                Arc::clone(&start),
            );
            thread::spawn(move || -> Res<()> {
                let slot = i % names;
                let name = format!("bench.contended.{names}.{slot}");
                start.wait();
                while !stop.load(Ordering::Relaxed) {
                    let guard = locks.lock(&name).acquire().map_err(|e| e.to_string())?;
                    {
                        let mut inside = inside.lock().map_err(|e| e.to_string())?;
                        inside[slot] += 1;
                        if inside[slot] != 1 {
                            return Err(format!("two holders of {name} at once"));
                        }
                        inside[slot] -= 1;
                    }
                    guard.release().map_err(|e| e.to_string())?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    start.wait();
    let before = statements();
    let count_before = done.load(Ordering::Relaxed);
    let started = Instant::now();
    thread::sleep(duration);
    let n = done.load(Ordering::Relaxed) - count_before;
    let sent = statements() - before;
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker
            .join()
            .map_err(|_| "a worker panicked".to_string())??;
    }
    Ok((n as f64 / secs, sent as f64 / n.max(1) as f64))
}

/// (4): 16 threads on one name and on 16 names, against one thread.
fn contended(plan: &Plan, locks: &Locks, table: &mut Table) -> Res<()> {
    throughput(locks, 1, 1, Duration::from_millis(200))?;
    let mut ratios = Vec::new();
    let (mut one_rate, mut one_st, mut many_rate, mut many_st, mut solo_rate) =
        (Vec::new(), 0.0, Vec::new(), 0.0, Vec::new());
    let rounds = plan.rounds.min(3);
    for _ in 0..rounds {
        let (solo, _) = throughput(locks, 1, 1, plan.contended / 2)?;
        let (one, st1) = throughput(locks, 16, 1, plan.contended)?;
        let (many, st16) = throughput(locks, 16, 16, plan.contended)?;
        ratios.push(one / solo);
        solo_rate.push(solo);
        one_rate.push(one);
        many_rate.push(many);
        one_st = st1;
        many_st = st16;
    }
    table.row(
        "16 threads, 1 name: critical sections/s",
        format!("{:.0}", median(one_rate)),
        format!(
            "{:.2} x one thread's {:.0}/s (target >= 0.5); {:.2} statements per critical section",
            median(ratios),
            median(solo_rate),
            one_st
        ),
    );
    table.row(
        "16 threads, 16 names: critical sections/s",
        format!("{:.0}", median(many_rate)),
        format!("{many_st:.2} statements per critical section"),
    );
    Ok(())
}

/// How many threads of this process have a name starting with `prefix` (Linux shows 15
/// bytes of a name: `database-locks-renew` reads `database-locks-`).
fn named_threads(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|comm| comm.starts_with(prefix))
                })
                .count()
        })
        .unwrap_or(0)
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

/// (6): many threads waiting on one held lock: what they cost the database.
fn waiters(target: &Target, plan: &Plan, table: &mut Table) -> Res<()> {
    let variants: Vec<(&str, bool)> = match target.kind {
        BackendKind::Postgres => vec![("LISTEN/NOTIFY on", true), ("notify(false)", false)],
        BackendKind::Sqlite => vec![("data_version on", true), ("notify(false)", false)],
        _ => vec![("", false)],
    };
    for (label, notify) in variants {
        let holder = target.locks()?;
        let waiting = Locks::new(Config::new(target.url.clone()).notify(notify))
            .map_err(|e| e.to_string())?;
        let name = format!("bench.waiters.{notify}");
        let guard = holder.lock(&name).acquire().map_err(|e| e.to_string())?;
        let start = Arc::new(Barrier::new(plan.waiters + 1));
        let acquired = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..plan.waiters)
            .map(|_| {
                let (waiting, name, start, acquired) = (
                    waiting.clone(),
                    name.clone(),
                    Arc::clone(&start),
                    Arc::clone(&acquired),
                );
                thread::spawn(move || -> Res<()> {
                    start.wait();
                    let guard = waiting.lock(&name).acquire().map_err(|e| e.to_string())?;
                    acquired.fetch_add(1, Ordering::Relaxed);
                    guard.release().map_err(|e| e.to_string())
                })
            })
            .collect();
        start.wait();
        // Everyone has made its first attempt.
        thread::sleep(Duration::from_secs(1));
        WATCH_LISTENER.store(true, Ordering::Relaxed);
        let before = statements();
        let (looks_before, _, _) = listener_counts();
        let started = Instant::now();
        thread::sleep(plan.waiting);
        let secs = started.elapsed().as_secs_f64();
        let looks = listener_counts().0 - looks_before;
        let per_sec = (statements() - before - looks) as f64 / secs;
        // CPU in a window of its own: telling the statements apart formats their SQL.
        WATCH_LISTENER.store(false, Ordering::Relaxed);
        let cpu_before = cpu_time();
        let cpu_started = Instant::now();
        thread::sleep(plan.waiting);
        let cpu = cpu_time().zip(cpu_before).map(|(after, before)| {
            after.saturating_sub(before).as_secs_f64() / cpu_started.elapsed().as_secs_f64()
        });
        WATCH_LISTENER.store(true, Ordering::Relaxed);
        let commits = if target.kind == BackendKind::Sqlite {
            // Commits elsewhere (another lock's acquire and release, on the holder's
            // handle): what each costs a process whose waiters wait for a held lock.
            // Spaced 5 ms apart so that the listener sees each one (commits closer than
            // its 1 ms look cost one read together).
            let cycles = 100u64;
            let (_, reads_before, attempts_before) = listener_counts();
            for _ in 0..cycles {
                let other = holder
                    .lock("bench.waiters.other")
                    .acquire()
                    .map_err(|e| e.to_string())?;
                other.release().map_err(|e| e.to_string())?;
                thread::sleep(Duration::from_millis(5));
            }
            let (_, reads, attempts) = listener_counts();
            format!(
                "; {:.0} looks/s (PRAGMA data_version, not counted above, {}); process CPU {} \
                 of a core; {cycles} acquire+release cycles of another lock, 5 ms apart: \
                 {:.2} listener reads and {:.2} waiter attempts per cycle",
                looks as f64 / secs,
                look_cost(&target.url),
                cpu.map_or("n/a".into(), |c| format!("{:.1}%", c * 100.0)),
                (reads - reads_before) as f64 / cycles as f64,
                // The holder's own acquires are attempts too.
                (attempts - attempts_before).saturating_sub(cycles) as f64 / cycles as f64,
            )
        } else {
            String::new()
        };
        let drain_before = statements();
        let (looks_before, _, _) = listener_counts();
        let drain_started = Instant::now();
        guard.release().map_err(|e| e.to_string())?;
        for t in threads {
            t.join().map_err(|_| "a waiter panicked".to_string())??;
        }
        let drained = drain_started.elapsed();
        let looks = listener_counts().0 - looks_before;
        WATCH_LISTENER.store(false, Ordering::Relaxed);
        let drain_per = (statements() - drain_before - looks) as f64 / plan.waiters as f64;
        let label = if label.is_empty() {
            String::new()
        } else {
            format!(" ({label})")
        };
        table.row(
            format!("{} threads waiting on a held lock{label}: statements/s", plan.waiters),
            format!("{per_sec:.1}"),
            format!(
                "naive polling: {:.0}/s; then all {} took it in turn in {} with {drain_per:.2} statements each{commits}",
                plan.waiters as f64 * 2.0,
                acquired.load(Ordering::Relaxed),
                ms(drained)
            ),
        );
    }
    Ok(())
}

/// SQLite: `plan.waiters` processes (this program, `--child-wait`) waiting for one held
/// lock with the default settings: the CPU their waiting costs (their listeners sleep
/// until the file is written), and how long after the release all of them have had the
/// lock in turn.
fn processes(target: &Target, plan: &Plan, table: &mut Table) -> Res<()> {
    use std::io::BufRead;
    let holder = target.locks()?;
    let name = "bench.processes";
    let guard = holder
        .lock(name)
        .lock_ttl(None)
        .acquire()
        .map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut children = Vec::with_capacity(plan.waiters);
    for _ in 0..plan.waiters {
        let mut child = std::process::Command::new(&exe)
            .args(["--child-wait", &target.url, name])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        children.push((child, std::io::BufReader::new(stdout)));
    }
    for (_, out) in &mut children {
        let mut line = String::new();
        out.read_line(&mut line).map_err(|e| e.to_string())?;
        if line.trim() != "waiting" {
            return Err(format!("a waiting child said {line:?}"));
        }
    }
    let pids: Vec<String> = children.iter().map(|(c, _)| c.id().to_string()).collect();
    let cpu = || -> Option<Duration> { pids.iter().map(|pid| cpu_time_of(pid)).sum() };
    thread::sleep(Duration::from_secs(1));
    let before = cpu();
    let started = Instant::now();
    thread::sleep(plan.waiting);
    let share = cpu().zip(before).map(|(after, before)| {
        after.saturating_sub(before).as_secs_f64() / started.elapsed().as_secs_f64()
    });
    let released = Instant::now();
    guard.release().map_err(|e| e.to_string())?;
    for (mut child, _) in children {
        let status = child.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("a waiting child failed: {status}"));
        }
    }
    table.row(
        format!(
            "{} processes waiting on a held lock: CPU, in all",
            plan.waiters
        ),
        share.map_or("n/a".into(), |c| format!("{:.1}% of a core", c * 100.0)),
        format!(
            "default settings; each listener sleeps until the file is written (inotify); \
             after the release all {} had the lock in turn within {}",
            plan.waiters,
            ms(released.elapsed())
        ),
    );
    Ok(())
}

/// `--child-wait`: one waiting process of [`processes`].
fn child_wait(url: &str, name: &str) -> Res<()> {
    use std::io::Write;
    let locks = Locks::new(Config::new(url)).map_err(|e| e.to_string())?;
    let said = thread::spawn({
        let locks = locks.clone();
        move || {
            let until = Instant::now() + Duration::from_secs(60);
            while Instant::now() < until {
                let shown = format!("{locks:?}");
                if shown.contains("waiting: 1") && shown.contains("notifications: Watching,") {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "waiting");
                    let _ = out.flush();
                    return;
                }
                thread::sleep(Duration::from_millis(5));
            }
        }
    });
    let guard = locks
        .lock(name)
        .timeout(Duration::from_secs(120))
        .acquire()
        .map_err(|e| e.to_string())?;
    guard.release().map_err(|e| e.to_string())?;
    said.join()
        .map_err(|_| "the reporting thread panicked".to_string())
}

/// What one look of the SQLite listener costs: `PRAGMA data_version` on a connection of
/// its own, in a tight loop.
fn look_cost(url: &str) -> String {
    #[cfg(feature = "sqlite")]
    {
        use diesel::{Connection, RunQueryDsl};
        #[derive(diesel::QueryableByName)]
        struct Version {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            #[allow(dead_code)]
            data_version: i64,
        }
        let Ok(mut conn) = diesel::SqliteConnection::establish(url) else {
            return "look cost n/a".into();
        };
        let n = 20_000u32;
        let started = Instant::now();
        for _ in 0..n {
            if diesel::sql_query("PRAGMA data_version")
                .load::<Version>(&mut conn)
                .is_err()
            {
                return "look cost n/a".into();
            }
        }
        format!(
            "{:.1} µs each in a tight loop",
            started.elapsed().as_secs_f64() * 1e6 / f64::from(n)
        )
    }
    #[cfg(not(feature = "sqlite"))]
    {
        let _ = url;
        String::new()
    }
}

/// (5): one handle holding many auto-renewing locks.
fn scale(target: &Target, plan: &Plan, table: &mut Table) -> Res<()> {
    // The handles of the scenarios before have been dropped; let their threads end.
    thread::sleep(Duration::from_millis(500));
    let threads_before = named_threads("database-locks");
    let locks = target.locks()?;
    let lost = Arc::new(AtomicUsize::new(0));
    let ttl = Duration::from_secs(3);
    let renew = Duration::from_millis(1_500);
    let half = plan.scale_locks / 2;
    let mut guards = Vec::with_capacity(plan.scale_locks);
    // From this one thread, so that the memory measured is the locks', not other threads'
    // stacks and allocator arenas. Memory per lock is the growth over the second half:
    // connections, prepared statements and the threads are there already by then.
    let started = Instant::now();
    let (mut rss_half, mut heap_half) = (0, 0);
    for i in 0..plan.scale_locks {
        if i == half {
            rss_half = rss_bytes();
            heap_half = LIVE_BYTES.load(Ordering::Relaxed);
        }
        let lost = Arc::clone(&lost);
        guards.push(
            locks
                .lock(format!("bench.scale.{i}"))
                .lock_ttl(Some(ttl))
                .lock_ttl_renew(renew)
                .lost_lock_cb(move |_| {
                    lost.fetch_add(1, Ordering::Relaxed);
                })
                .acquire()
                .map_err(|e| e.to_string())?,
        );
    }
    let acquired_in = started.elapsed();
    let rss_full = rss_bytes();
    let heap_full = LIVE_BYTES.load(Ordering::Relaxed);
    let threads_held = named_threads("database-locks");
    WATCH_RENEWALS.store(true, Ordering::Relaxed);
    let renewals_before = RENEWALS.load(Ordering::Relaxed);
    let hold_started = Instant::now();
    thread::sleep(plan.scale_hold);
    let renew_stmts = RENEWALS.load(Ordering::Relaxed) - renewals_before;
    WATCH_RENEWALS.store(false, Ordering::Relaxed);
    let hold = hold_started.elapsed().as_secs_f64();
    let still_held = guards.iter().filter(|g| !g.is_lost()).count();
    let n = guards.len();
    drop(guards);
    table.row(
        format!("{n} held auto-renewing locks (ttl 3 s, renewed every 1.5 s)"),
        format!("{still_held} held"),
        format!(
            "acquired in {:.1} s by one thread; {} lost",
            acquired_in.as_secs_f64(),
            lost.load(Ordering::Relaxed)
        ),
    );
    table.row(
        "  threads the handle added",
        format!("{}", threads_held.saturating_sub(threads_before)),
        "renewal, watchdog and the I/O workers that give statements their deadlines (one per \
         statement in flight; SQLite: none), none per lock (plus r2d2's 3 pool workers, as \
         any r2d2 pool)",
    );
    table.row(
        "  renewal statements/s while holding them",
        format!("{:.2}", renew_stmts as f64 / hold),
        format!(
            "{renew_stmts} statements in {hold:.1} s for {} lease renewals",
            (hold / renew.as_secs_f64()).floor() as usize * n
        ),
    );
    let second_half = (n - half).max(1) as u64;
    table.row(
        "  memory per held lock: live heap / resident",
        format!(
            "{} B / {} B",
            heap_full.saturating_sub(heap_half) / second_half,
            rss_full.saturating_sub(rss_half) / second_half
        ),
        format!(
            "growth over the last {} acquisitions (guard in a Vec included); resident also \
             keeps what renewal batches of thousands of leases allocated and freed",
            n - half
        ),
    );
    Ok(())
}
