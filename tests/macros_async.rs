//! `#[locked]` on `async fn` at run time, on each backend: the forms and their default
//! names, exclusion between tasks spawned on a multi-thread runtime, two tasks contending
//! on a current-thread runtime, what a failed acquire turns into, `guard = name`, and
//! release when the body ends, panics or its task is aborted.
//!
//! Every fn here is run through `tokio::spawn`, which needs its future to be `Send`.

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::global::{held_names, Global};
use common::{eventually, Db};
use database_locks::{locked, Error};
use database_locks_testkit::on_each_backend;
use tokio::runtime::{Builder, Runtime};
use tokio::sync::oneshot;

fn multi_thread() -> Runtime {
    Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn current_thread() -> Runtime {
    Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The error type of the `Result` fns below.
#[derive(Debug)]
enum TaskError {
    Lock(Error),
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

/// A guard dropped by a task is released on a thread of the crate, just after the fn
/// returns: wait for it.
fn all_released() -> bool {
    eventually(Duration::from_secs(10), || held_names().is_empty())
}

/// One fn per form, each returning the locks held while its body runs, after an await.
mod forms {
    use super::*;

    #[locked]
    pub async fn nightly_report() -> Vec<String> {
        tokio::task::yield_now().await;
        held_names()
    }

    #[locked("async-billing", timeout = 30, lock_ttl = 60, auto_renew, retry = 0.5)]
    pub async fn billing() -> Result<Vec<String>, TaskError> {
        tokio::task::yield_now().await;
        Ok(held_names())
    }

    #[locked(name = format!("async-tenant-{tenant}"))]
    pub async fn per_tenant(tenant: u32) -> Vec<String> {
        tokio::task::yield_now().await;
        held_names()
    }

    pub struct Mailer {
        pub sent: usize,
    }

    impl Mailer {
        #[locked]
        pub async fn flush(&self) -> Vec<String> {
            tokio::task::yield_now().await;
            held_names()
        }

        #[locked]
        pub async fn push(&mut self) -> Vec<String> {
            tokio::task::yield_now().await;
            self.sent += 1;
            held_names()
        }
    }

    /// A trait whose futures are `Send`, implemented with `#[locked] async fn`.
    pub trait Job {
        fn run(&self) -> impl Future<Output = Vec<String>> + Send;
    }

    impl Job for Mailer {
        #[locked]
        async fn run(&self) -> Vec<String> {
            tokio::task::yield_now().await;
            held_names()
        }
    }

    pub struct Registry;

    #[locked]
    impl Registry {
        #[locked]
        pub async fn purge() -> Vec<String> {
            tokio::task::yield_now().await;
            held_names()
        }
    }

    /// `guard = lock`: the body sees its guard, and can wait on its loss.
    #[locked("async-guard", guard = lock)]
    pub async fn watched() -> Result<(String, bool), TaskError> {
        let lost = tokio::select! {
            _ = lock.lost() => true,
            _ = tokio::time::sleep(Duration::from_millis(50)) => false,
        };
        Ok((lock.name().to_owned(), lost))
    }
}

/// Each async form takes the lock its docs name, and only that one, from a spawned task.
fn default_names(db: &Db) {
    use forms::*;
    let _global = Global::on(db);
    let only = |name: &str| vec![name.to_owned()];
    let rt = multi_thread();

    assert_eq!(
        rt.block_on(rt.spawn(nightly_report())).unwrap(),
        only("macros_async::forms::nightly_report")
    );
    assert!(all_released());
    assert_eq!(
        rt.block_on(rt.spawn(billing())).unwrap().unwrap(),
        only("async-billing")
    );
    assert!(all_released());
    assert_eq!(
        rt.block_on(rt.spawn(per_tenant(7))).unwrap(),
        only("async-tenant-7")
    );
    assert!(all_released());
    // One task each: a guard is released just after its fn returns, on a thread of the
    // crate, so a next fn in the same task could still see it held.
    assert_eq!(
        rt.block_on(rt.spawn(async { Mailer { sent: 0 }.flush().await }))
            .unwrap(),
        only("macros_async::forms::Mailer::flush")
    );
    assert!(all_released());
    let pushed = rt.block_on(rt.spawn(async {
        let mut mailer = Mailer { sent: 0 };
        let names = mailer.push().await;
        (names, mailer.sent)
    }));
    assert_eq!(
        pushed.unwrap(),
        (only("macros_async::forms::Mailer::push"), 1)
    );
    assert!(all_released());
    assert_eq!(
        rt.block_on(rt.spawn(async { Mailer { sent: 0 }.run().await }))
            .unwrap(),
        only("macros_async::forms::Mailer::run")
    );
    assert!(all_released());
    assert_eq!(
        rt.block_on(rt.spawn(Registry::purge())).unwrap(),
        only("macros_async::forms::Registry::purge")
    );
    assert!(all_released());
    let (name, lost) = rt.block_on(rt.spawn(watched())).unwrap().unwrap();
    assert_eq!((name.as_str(), lost), ("async-guard", false));
    assert!(all_released(), "all released");
}

#[derive(Default)]
struct Counter {
    value: AtomicU64,
    inside: AtomicBool,
    overlaps: AtomicU64,
}

impl Counter {
    /// A read-modify-write with an await in the middle: only the lock keeps updates from
    /// being lost, and the task may resume on another thread.
    async fn read_modify_write(&self) {
        if self.inside.swap(true, Ordering::SeqCst) {
            self.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        let value = self.value.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.value.store(value + 1, Ordering::SeqCst);
        self.inside.store(false, Ordering::SeqCst);
    }

    #[locked("async-counter")]
    async fn bump(&self) {
        self.read_modify_write().await;
    }
}

#[locked("async-counter")]
async fn increment(counter: Arc<Counter>) {
    counter.read_modify_write().await;
}

/// Tasks on a multi-thread runtime calling one `#[locked]` async fn and method (one lock)
/// take turns: no overlap, no lost update.
fn spawned_tasks_take_turns(db: &Db) {
    let _global = Global::on(db);
    const TASKS: u64 = 4;
    const CALLS: u64 = 25;
    let counter = Arc::new(Counter::default());
    let rt = multi_thread();
    rt.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    for call in 0..CALLS {
                        if (task + call) % 2 == 0 {
                            increment(Arc::clone(&counter)).await;
                        } else {
                            counter.bump().await;
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
    });
    assert_eq!(counter.overlaps.load(Ordering::SeqCst), 0);
    assert_eq!(counter.value.load(Ordering::SeqCst), TASKS * CALLS);
    assert!(all_released());
}

mod contend {
    use super::*;

    #[locked("async-current-thread")]
    pub async fn hold(entered: oneshot::Sender<()>, leave: oneshot::Receiver<()>) {
        entered.send(()).expect("test waiting");
        let _ = leave.await;
    }

    /// Waits (polling every 50 ms) for at most 30 s.
    #[locked("async-current-thread", timeout = 30, retry = 0.05)]
    pub async fn wait_for_it(counter: Arc<Counter>) -> Result<(), TaskError> {
        counter.read_modify_write().await;
        Ok(())
    }
}

/// On a current-thread runtime, task A holds the lock and lets go only after task B has
/// started waiting for it: B's wait does not block the thread A needs to release, and B is
/// not refused as a deadlock of its own thread. Then many tasks of that one thread take
/// turns with an exact count.
fn current_thread_tasks_contend(db: &Db) {
    let _global = Global::on(db);
    let rt = current_thread();
    let counter = Arc::new(Counter::default());
    rt.block_on(async {
        let (entered, entered_rx) = oneshot::channel();
        let (leave, leave_rx) = oneshot::channel();
        let a = tokio::spawn(contend::hold(entered, leave_rx));
        entered_rx.await.expect("A got in");
        let b = tokio::spawn(contend::wait_for_it(Arc::clone(&counter)));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!b.is_finished(), "B got in while A held the lock");
        leave.send(()).expect("A waiting");
        a.await.expect("A");
        b.await.expect("B").expect("B got the lock once A let go");
        assert_eq!(counter.value.load(Ordering::SeqCst), 1);

        let tasks: Vec<_> = (0..20)
            .map(|_| tokio::spawn(contend::wait_for_it(Arc::clone(&counter))))
            .collect();
        for task in tasks {
            task.await.expect("task").expect("lock");
        }
    });
    assert_eq!(counter.overlaps.load(Ordering::SeqCst), 0);
    assert_eq!(counter.value.load(Ordering::SeqCst), 21);
    assert!(all_released());
}

mod refused {
    use super::*;

    pub static BODY_RAN: AtomicBool = AtomicBool::new(false);

    #[locked("async-refused", timeout = 0.2)]
    pub async fn with_timeout() -> Result<(), TaskError> {
        BODY_RAN.store(true, Ordering::SeqCst);
        Ok(())
    }

    #[locked("async-refused", retry = None)]
    pub async fn try_once() -> Result<&'static str, TaskError> {
        BODY_RAN.store(true, Ordering::SeqCst);
        Ok("entered")
    }

    /// The alias is not spelled `Result`: the error still goes through `From`.
    pub type Outcome = Result<&'static str, TaskError>;

    #[locked("async-refused", retry = None)]
    pub async fn try_once_alias() -> Outcome {
        BODY_RAN.store(true, Ordering::SeqCst);
        Ok("entered")
    }

    #[locked("async-refused", retry = None)]
    pub async fn try_once_plain() -> &'static str {
        BODY_RAN.store(true, Ordering::SeqCst);
        "entered"
    }
}

/// While another handle holds the lock, a `Result` async fn gets the lock error through
/// `From` (a timeout, a refused single attempt) and a plain one panics in its task with
/// the error's message; no body runs. Once released, they all get in.
fn a_held_lock_fails_like_the_blocking_form(db: &Db) {
    let global = Global::on(db);
    let rt = multi_thread();
    refused::BODY_RAN.store(false, Ordering::SeqCst);
    let other = global.db.locks();
    let held = other.lock("async-refused").acquire().unwrap();

    let error = lock_error(rt.block_on(rt.spawn(refused::with_timeout())).unwrap());
    assert!(matches!(error, Error::Timeout { .. }), "{error:?}");
    let error = lock_error(rt.block_on(rt.spawn(refused::try_once())).unwrap());
    assert!(matches!(error, Error::NotAcquired { .. }), "{error:?}");
    let expected = error.to_string();
    let error = lock_error(rt.block_on(rt.spawn(refused::try_once_alias())).unwrap());
    assert!(matches!(error, Error::NotAcquired { .. }), "{error:?}");
    let panic = rt
        .block_on(rt.spawn(refused::try_once_plain()))
        .expect_err("a plain fn panics");
    let payload = panic.into_panic();
    let message = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("<not a string>");
    assert_eq!(message, expected);
    assert!(!refused::BODY_RAN.load(Ordering::SeqCst));

    drop(held);
    assert_eq!(
        rt.block_on(rt.spawn(refused::try_once())).unwrap().unwrap(),
        "entered"
    );
    assert!(all_released());
    assert_eq!(
        rt.block_on(rt.spawn(refused::try_once_plain())).unwrap(),
        "entered"
    );
    assert!(refused::BODY_RAN.load(Ordering::SeqCst));
}

mod exits {
    use super::*;

    #[locked("async-exits")]
    pub async fn panics() {
        tokio::task::yield_now().await;
        panic!("the body panicked");
    }

    #[locked("async-exits")]
    pub async fn forever(entered: oneshot::Sender<()>) {
        entered.send(()).expect("test waiting");
        std::future::pending::<()>().await;
    }
}

/// The lock is released when the body panics and when its task is aborted mid-body
/// (the future, and with it the guard, is dropped).
fn released_on_panic_and_cancellation(db: &Db) {
    let _global = Global::on(db);
    let rt = multi_thread();
    let panicked = rt.block_on(rt.spawn(exits::panics()));
    assert!(panicked.expect_err("panics").is_panic());
    assert!(all_released(), "released after the panic");

    let (entered, entered_rx) = oneshot::channel();
    let task = rt.spawn(exits::forever(entered));
    rt.block_on(entered_rx).expect("got in");
    assert_eq!(held_names(), vec!["async-exits".to_owned()]);
    task.abort();
    assert!(rt.block_on(task).expect_err("aborted").is_cancelled());
    assert!(all_released(), "released after the abort");
}

on_each_backend!(
    default_names,
    spawned_tasks_take_turns,
    current_thread_tasks_contend,
    a_held_lock_fails_like_the_blocking_form,
    released_on_panic_and_cancellation,
);
