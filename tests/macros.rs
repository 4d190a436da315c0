//! `#[locked]` at run time, on each backend: exclusion between threads and between
//! processes (the `db_lock_it` example), the default names, config read at each call,
//! what a failed acquire turns into, and release on every way out of the body.
//!
//! `#[locked]` uses the process-wide global handle, so each test holds a [`Global`] while
//! it points the handle at a database of its own (`Db::isolated`): tests of this binary run
//! one at a time, whatever the harness's thread count.

mod common;

use std::io::{BufRead, BufReader};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::{Child, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use common::global::{held_names, Global};
use common::{eventually, Db};
use database_locks::{locked, Command, Error, LostLock};
use database_locks_testkit::on_each_backend;

fn row(name: &str) -> database_locks::LockInfo {
    let locks = database_locks::global().expect("global handle");
    locks
        .inspect(name)
        .expect("inspect")
        .unwrap_or_else(|| panic!("no row for {name}"))
}

/// The error type of the `Result` fns below.
#[derive(Debug)]
enum TaskError {
    Lock(Error),
    Task(&'static str),
}

impl From<Error> for TaskError {
    fn from(error: Error) -> Self {
        TaskError::Lock(error)
    }
}

fn lock_error(result: Result<impl std::fmt::Debug, TaskError>) -> Error {
    match result {
        Err(TaskError::Lock(error)) => error,
        other => panic!("expected the lock error, got {other:?}"),
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => match payload.downcast::<&str>() {
            Ok(message) => (*message).to_owned(),
            Err(_) => "<not a string>".to_owned(),
        },
    }
}

/// One fn per form, each returning the locks held while its body runs.
mod forms {
    use super::{held_names, locked, Command, TaskError};

    #[locked]
    pub fn nightly_report() -> Vec<String> {
        held_names()
    }

    #[locked]
    pub fn generic<T: Default>() -> (T, Vec<String>) {
        (T::default(), held_names())
    }

    #[locked("billing-run", timeout = 30, lock_ttl = 60, auto_renew, retry = 0.5)]
    pub fn billing() -> Result<Vec<String>, TaskError> {
        Ok(held_names())
    }

    #[locked(name = format!("tenant-{tenant}"))]
    pub fn per_tenant(tenant: u32) -> Vec<String> {
        held_names()
    }

    pub struct Mailer;

    impl Mailer {
        #[locked]
        pub fn flush(&self) -> Vec<String> {
            held_names()
        }

        #[locked]
        pub fn push(&mut self) -> Vec<String> {
            held_names()
        }

        #[locked]
        pub fn into_names(self) -> Vec<String> {
            held_names()
        }
    }

    /// Same method name, other type: another lock.
    pub struct Archiver;

    impl Archiver {
        #[locked(retry = None)]
        pub fn flush(&self) -> Result<Vec<String>, TaskError> {
            Ok(held_names())
        }
    }

    pub struct Wrapper<T>(pub T);

    impl<T> Wrapper<T> {
        #[locked]
        pub fn names(&self) -> Vec<String> {
            held_names()
        }
    }

    pub trait Job {
        #[locked]
        fn run(&self) -> Vec<String> {
            held_names()
        }
    }

    impl Job for Mailer {}

    pub struct Registry;

    #[locked]
    impl Registry {
        #[locked]
        pub fn purge() -> Vec<String> {
            held_names()
        }
    }

    pub struct Reindex {
        pub seen: Vec<String>,
    }

    #[locked]
    impl Command for Reindex {
        type Error = database_locks::Error;

        fn handle(&mut self) -> Result<(), Self::Error> {
            self.seen = held_names();
            Ok(())
        }
    }
}

/// Each form takes the lock its docs name, and only that one.
fn default_names(db: &Db) {
    use forms::*;
    let _global = Global::on(db);
    let only = |name: &str| vec![name.to_owned()];

    assert_eq!(nightly_report(), only("macros::forms::nightly_report"));
    assert_eq!(generic::<u8>().1, only("macros::forms::generic"));
    assert_eq!(billing().unwrap(), only("billing-run"));
    assert_eq!(per_tenant(7), only("tenant-7"));
    assert_eq!(Mailer.flush(), only("macros::forms::Mailer::flush"));
    assert_eq!(Mailer.push(), only("macros::forms::Mailer::push"));
    assert_eq!(
        Mailer.into_names(),
        only("macros::forms::Mailer::into_names")
    );
    assert_eq!(
        Archiver.flush().unwrap(),
        only("macros::forms::Archiver::flush")
    );
    assert_eq!(Wrapper(1u8).names(), only("macros::forms::Wrapper::names"));
    assert_eq!(Wrapper("x").names(), only("macros::forms::Wrapper::names"));
    assert_eq!(Mailer.run(), only("macros::forms::Mailer::run"));
    assert_eq!(Registry::purge(), only("macros::forms::Registry::purge"));
    let mut reindex = Reindex { seen: Vec::new() };
    reindex.handle().unwrap();
    assert_eq!(reindex.seen, only("macros::forms::Reindex"));
    assert_eq!(held_names(), Vec::<String>::new(), "all released");
}

/// Lets a test hold a lock on another thread: the `#[locked]` fn calls [`Gate::wait`]
/// inside its body, which says it is in and waits to be let out.
struct Gate {
    entered: mpsc::Sender<()>,
    leave: mpsc::Receiver<()>,
}

impl Gate {
    fn wait(self) {
        self.entered.send(()).expect("test waiting");
        let _ = self.leave.recv();
    }
}

/// A thread that runs `f` and is inside its lock when this returns; send to the sender to
/// let it out, then join it.
fn hold_in_thread(
    f: impl FnOnce(Gate) + Send + 'static,
) -> (mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (entered, entered_rx) = mpsc::channel();
    let (leave_tx, leave) = mpsc::channel();
    let thread = std::thread::spawn(move || f(Gate { entered, leave }));
    entered_rx
        .recv()
        .expect("the holder thread ended before it got in");
    (leave_tx, thread)
}

mod collide {
    use super::*;

    pub struct Mailer;

    impl Mailer {
        #[locked]
        pub fn flush(&self, gate: Gate) {
            gate.wait();
        }
    }

    pub struct Archiver;

    impl Archiver {
        #[locked(retry = None)]
        pub fn flush(&self) -> Result<Vec<String>, TaskError> {
            Ok(held_names())
        }
    }
}

/// `Mailer::flush` and `Archiver::flush` do not exclude each other (the seed names both
/// `module.flush`): the second is a single attempt while the first is held.
fn methods_of_different_types_do_not_collide(db: &Db) {
    let _global = Global::on(db);
    let (leave, holder) = hold_in_thread(|gate| collide::Mailer.flush(gate));
    let names = collide::Archiver
        .flush()
        .expect("Archiver::flush is another lock");
    leave.send(()).unwrap();
    holder.join().unwrap();
    assert_eq!(
        names,
        vec![
            "macros::collide::Archiver::flush".to_owned(),
            "macros::collide::Mailer::flush".to_owned()
        ]
    );
}

mod exclusive {
    use super::*;

    #[locked("macros-exclusive")]
    pub fn hold(gate: Gate) {
        gate.wait();
    }

    #[locked("macros-exclusive", retry = None)]
    pub fn try_once() -> Result<&'static str, TaskError> {
        Ok("entered")
    }

    #[locked("macros-exclusive", retry = None)]
    pub fn try_once_plain() -> &'static str {
        "entered"
    }

    /// The alias is not spelled `Result`: the error still goes through `From`.
    pub type Outcome = Result<&'static str, TaskError>;

    #[locked("macros-exclusive", retry = None)]
    pub fn try_once_alias() -> Outcome {
        Ok("entered")
    }

    #[locked("macros-exclusive", timeout = 0.2)]
    pub fn with_timeout() -> Result<(), TaskError> {
        Ok(())
    }
}

/// While a thread is inside a `#[locked]` fn, another caller is refused: a `Result` fn
/// gets the lock error, a plain fn panics with its message, neither body runs.
fn excludes_a_concurrent_caller(db: &Db) {
    let _global = Global::on(db);
    let (leave, holder) = hold_in_thread(exclusive::hold);

    let error = lock_error(exclusive::try_once());
    assert!(matches!(error, Error::NotAcquired { .. }), "{error:?}");
    let error = lock_error(exclusive::try_once_alias());
    assert!(matches!(error, Error::NotAcquired { .. }), "{error:?}");
    let error = lock_error(exclusive::with_timeout());
    assert!(matches!(error, Error::Timeout { .. }), "{error:?}");
    let panic = catch_unwind(exclusive::try_once_plain).expect_err("a plain fn panics");
    let message = panic_message(panic);
    let expected = lock_error(exclusive::try_once()).to_string();
    assert_eq!(message, expected);

    leave.send(()).unwrap();
    holder.join().unwrap();
    assert_eq!(exclusive::try_once().unwrap(), "entered");
    assert_eq!(exclusive::try_once_plain(), "entered");
}

mod nested {
    use super::*;

    #[locked("macros-nested")]
    pub fn outer() -> Result<Error, TaskError> {
        Ok(lock_error(inner()))
    }

    #[locked("macros-nested")]
    pub fn inner() -> Result<(), TaskError> {
        Ok(())
    }
}

/// A `#[locked]` fn calling another of the same lock on the same thread fails at once
/// instead of waiting for itself for ever.
fn nested_call_of_the_same_lock_fails_fast(db: &Db) {
    let _global = Global::on(db);
    let error = nested::outer().unwrap();
    assert!(matches!(error, Error::WouldDeadlock { .. }), "{error:?}");
    nested::inner().unwrap();
}

struct Counter {
    value: AtomicU64,
    inside: AtomicBool,
    overlaps: AtomicU64,
}

/// A non-atomic read-modify-write: only the lock keeps updates from being lost.
#[locked("macros-counter")]
fn increment(counter: &Counter) {
    if counter.inside.swap(true, Ordering::SeqCst) {
        counter.overlaps.fetch_add(1, Ordering::SeqCst);
    }
    let value = counter.value.load(Ordering::SeqCst);
    std::thread::yield_now();
    counter.value.store(value + 1, Ordering::SeqCst);
    counter.inside.store(false, Ordering::SeqCst);
}

/// Threads calling one `#[locked]` fn take turns: no overlap, no lost update.
fn threads_take_turns(db: &Db) {
    let _global = Global::on(db);
    const THREADS: u64 = 4;
    const CALLS: u64 = 25;
    let counter = Counter {
        value: AtomicU64::new(0),
        inside: AtomicBool::new(false),
        overlaps: AtomicU64::new(0),
    };
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| (0..CALLS).for_each(|_| increment(&counter)));
        }
    });
    assert_eq!(counter.overlaps.load(Ordering::SeqCst), 0);
    assert_eq!(counter.value.load(Ordering::SeqCst), THREADS * CALLS);
}

mod config {
    use super::*;

    pub const NAME: &str = "macros-config";

    #[locked("macros-config", auto_renew = false)]
    pub fn expires_in() -> Option<f64> {
        row(NAME).expires_in
    }

    #[locked("macros-config", lock_ttl = None)]
    pub fn never_expires() -> Option<f64> {
        row(NAME).expires_in
    }

    #[locked("macros-config", retry = None)]
    pub fn try_once() -> Result<Vec<String>, TaskError> {
        Ok(held_names())
    }
}

/// Nothing is frozen at compile time: the default ttl, the enabled flag and the handle
/// itself are read at each call.
fn config_is_read_at_each_call(db: &Db) {
    let global = Global::on(db);
    let locks = database_locks::global().unwrap();

    locks.set_default_ttl(Some(Duration::from_secs(1000)));
    let left = config::expires_in().expect("held");
    assert!(left > 900.0 && left < 1001.0, "expires in {left} s");
    locks.set_default_ttl(Some(Duration::from_secs(300)));
    let left = config::expires_in().expect("held");
    assert!(left > 200.0 && left < 301.0, "expires in {left} s");
    assert_eq!(config::never_expires(), Some(f64::INFINITY));

    // Another handle holds the lock: enabled, the fn is refused; disabled, it runs
    // without taking anything.
    let other = global.db.locks();
    let held = other.lock(config::NAME).acquire().unwrap();
    let error = lock_error(config::try_once());
    assert!(matches!(error, Error::NotAcquired { .. }), "{error:?}");
    locks.set_enabled(false);
    assert_eq!(config::try_once().unwrap(), vec![config::NAME.to_owned()]);
    locks.set_enabled(true);
    lock_error(config::try_once());
    drop(held);

    // A new global handle, on another database, is used from the next call on.
    let elsewhere = db.isolated();
    database_locks::configure(elsewhere.config()).unwrap();
    assert_eq!(config::try_once().unwrap(), vec![config::NAME.to_owned()]);
    assert!(elsewhere.locks().inspect(config::NAME).unwrap().is_some());
}

mod failures {
    use super::*;

    pub static BODY_RAN: AtomicBool = AtomicBool::new(false);

    #[locked("macros-failures", timeout = seconds)]
    pub fn timed(seconds: f64) -> Result<(), TaskError> {
        BODY_RAN.store(true, Ordering::SeqCst);
        Ok(())
    }

    #[locked("macros-failures", lock_ttl = ttl)]
    pub fn timed_plain(ttl: i64) {
        BODY_RAN.store(true, Ordering::SeqCst);
    }
}

/// A value the macro cannot check at compile time fails the call like the lock would,
/// before any SQL runs.
fn bad_runtime_values_fail_like_the_lock(db: &Db) {
    let _global = Global::on(db);
    failures::BODY_RAN.store(false, Ordering::SeqCst);
    let error = lock_error(failures::timed(-1.0));
    assert!(
        matches!(
            error,
            Error::InvalidInput {
                what: "timeout",
                ..
            }
        ),
        "{error:?}"
    );
    lock_error(failures::timed(f64::NAN));
    let panic = catch_unwind(|| failures::timed_plain(-5)).expect_err("a plain fn panics");
    assert!(
        panic_message(panic).contains("lock_ttl"),
        "the message names the argument"
    );
    assert!(!failures::BODY_RAN.load(Ordering::SeqCst));
    let locks = database_locks::global().unwrap();
    assert!(locks.inspect("macros-failures").unwrap().is_none());
    failures::timed(1.5).unwrap();
    assert!(failures::BODY_RAN.load(Ordering::SeqCst));
}

mod exits {
    use super::*;

    pub enum Exit {
        Normal,
        Return,
        Question,
        Panic,
    }

    #[locked("macros-exits")]
    pub fn exit(how: Exit) -> Result<u32, TaskError> {
        assert_eq!(held_names(), vec!["macros-exits".to_owned()]);
        match how {
            Exit::Normal => {}
            Exit::Return => return Ok(1),
            Exit::Question => Err(TaskError::Task("failed"))?,
            Exit::Panic => panic!("the body panicked"),
        }
        Ok(0)
    }
}

/// The lock is released however the body is left: its value, `return`, `?`, a panic.
fn released_on_every_way_out(db: &Db) {
    use exits::{exit, Exit};
    let _global = Global::on(db);
    let free = || held_names().is_empty();
    assert_eq!(exit(Exit::Normal).unwrap(), 0);
    assert!(free());
    assert_eq!(exit(Exit::Return).unwrap(), 1);
    assert!(free());
    assert!(matches!(
        exit(Exit::Question),
        Err(TaskError::Task("failed"))
    ));
    assert!(free());
    let panic = catch_unwind(AssertUnwindSafe(|| exit(Exit::Panic))).expect_err("panics");
    assert_eq!(panic_message(panic), "the body panicked");
    assert!(free());
}

mod passed_through {
    use super::*;

    pub static LOST: Mutex<Option<String>> = Mutex::new(None);

    pub fn on_lost(lost: &LostLock) {
        *LOST.lock().unwrap() = Some(lost.locked_by.clone());
    }

    #[locked("macros-owner", locked_by = owner)]
    pub fn owned_by(owner: &str) -> Option<String> {
        row("macros-owner").locked_by
    }

    #[locked("macros-at-least", lock_at_least_for = 600)]
    pub fn at_least() {}

    /// Renewed every second; a steal behind its back is found at the next renewal.
    #[locked("macros-lost", lock_ttl = 2, lock_ttl_renew = 1, lost_lock_cb = on_lost, locked_by = "victim")]
    pub fn lost(db: &Db) -> bool {
        db.steal("macros-lost", "thief");
        eventually(Duration::from_secs(30), || LOST.lock().unwrap().is_some())
    }
}

/// `locked_by`, `lock_at_least_for` and `lost_lock_cb` reach the lock.
fn arguments_reach_the_lock(db: &Db) {
    let global = Global::on(db);
    assert_eq!(
        passed_through::owned_by("worker-7").as_deref(),
        Some("worker-7")
    );
    passed_through::at_least();
    assert!(
        row("macros-at-least").is_held(),
        "kept after the fn returned"
    );
    *passed_through::LOST.lock().unwrap() = None;
    assert!(
        passed_through::lost(&global.db),
        "lost_lock_cb ran after the steal"
    );
    assert_eq!(
        passed_through::LOST.lock().unwrap().as_deref(),
        Some("victim")
    );
}

/// `execute` runs `handle` under the lock and turns a refusal into exit status 1.
fn command_execute_reports_the_lock(db: &Db) {
    let global = Global::on(db);
    assert_eq!(
        forms::Reindex { seen: Vec::new() }.execute(),
        ExitCode::SUCCESS
    );
    let other = global.db.locks();
    let held = other.lock("macros::forms::Reindex").acquire().unwrap();
    // Waits for ever by default: refuse from a single attempt instead, through the same
    // lock name, to see what `execute` makes of a lock error.
    struct Once;
    #[locked(name = "macros::forms::Reindex", retry = None)]
    impl Command for Once {
        type Error = database_locks::Error;
        fn handle(&mut self) -> Result<(), Self::Error> {
            Ok(())
        }
    }
    assert_eq!(Once.execute(), ExitCode::FAILURE);
    assert!(matches!(Once.handle(), Err(Error::NotAcquired { .. })));
    drop(held);
    let mut reindex = forms::Reindex { seen: Vec::new() };
    reindex.handle().unwrap();
    assert_eq!(reindex.seen, vec!["macros::forms::Reindex".to_owned()]);
}

/// The `db_lock_it` example, built by `cargo test` next to this test's binary. Refused
/// when older than a source it is built from: `cargo test --test macros` alone does not
/// rebuild examples, and a stale one would test old code.
fn db_lock_it() -> std::process::Command {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = dir
        .join("examples")
        .join(format!("db_lock_it{}", std::env::consts::EXE_SUFFIX));
    let rebuild = "build it with `cargo build --example db_lock_it` and the same features \
                   (a plain `cargo test` does)";
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("{} is missing: {rebuild}", path.display()));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for source in [
        "examples/db_lock_it.rs",
        "database-locks/src",
        "database-locks-macros/src",
    ] {
        if let Some(newer) = newer_file(&root.join(source), built) {
            panic!(
                "{} is older than {}: {rebuild}",
                path.display(),
                newer.display()
            );
        }
    }
    std::process::Command::new(path)
}

/// A file under `path` modified after `time`, if any.
fn newer_file(path: &std::path::Path, time: std::time::SystemTime) -> Option<std::path::PathBuf> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_dir() {
        std::fs::read_dir(path)
            .ok()?
            .filter_map(Result::ok)
            .find_map(|entry| newer_file(&entry.path(), time))
    } else {
        (meta.modified().ok()? > time).then(|| path.to_owned())
    }
}

fn wait_success(mut child: Child, what: &str) {
    let status = child.wait().expect("wait for db_lock_it");
    assert!(status.success(), "{what} exited with {status}");
}

/// Two copies of the example started at once, writing to one pipe, take turns: each
/// `Got the lock` line is followed by its `Releasing lock` before the other's.
fn two_processes_take_turns(db: &Db) {
    let db = db.isolated();
    let (reader, writer) = std::io::pipe().expect("pipe");
    let start = |writer: std::io::PipeWriter| {
        db_lock_it()
            .args(["macros-two-processes", "-d", "1"])
            .env("DATABASE_LOCKS_URL", &db.url)
            .env_remove("DATABASE_URL")
            .stdout(Stdio::from(writer))
            .spawn()
            .expect("spawn db_lock_it")
    };
    let first = start(writer.try_clone().expect("clone pipe"));
    let second = start(writer);
    let lines: Vec<String> = BufReader::new(reader)
        .lines()
        .collect::<Result<_, _>>()
        .expect("read output");
    wait_success(first, "the first copy");
    wait_success(second, "the second copy");
    let turn = ["Got the lock, sleeping 1 seconds", "Releasing lock"];
    assert_eq!(lines, [turn, turn].concat(), "the copies overlapped");
}

/// The example's `-o/--owner` is written into the lock's row.
fn example_passes_its_owner(db: &Db) {
    let db = db.isolated();
    let mut child = db_lock_it()
        .args(["macros-owner-arg", "-o", "owner-a", "-d", "600"])
        .env("DATABASE_LOCKS_URL", &db.url)
        .env_remove("DATABASE_URL")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn db_lock_it");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("read output");
    let row = db.locks().inspect("macros-owner-arg").unwrap();
    child.kill().expect("stop db_lock_it");
    let _ = child.wait();
    assert_eq!(line, "Got the lock, sleeping 600 seconds\n");
    let row = row.expect("row written");
    assert!(row.is_held());
    assert_eq!(row.locked_by.as_deref(), Some("owner-a"));
}

on_each_backend!(
    default_names,
    methods_of_different_types_do_not_collide,
    excludes_a_concurrent_caller,
    nested_call_of_the_same_lock_fails_fast,
    threads_take_turns,
    config_is_read_at_each_call,
    bad_runtime_values_fail_like_the_lock,
    released_on_every_way_out,
    arguments_reach_the_lock,
    command_execute_reports_the_lock,
    two_processes_take_turns,
    example_passes_its_owner,
);
