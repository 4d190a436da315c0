//! The async face on each backend: tasks contend like threads, waiting blocks no executor
//! thread, cancellation leaves no lock behind, and `lost()` stops work in time. On tokio
//! (multi-thread and current-thread runtimes) and on `futures`' own executor.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, run_sections_with, unique_name, Db};
use database_locks::{LockGuard, Locks, LossCause};
use database_locks_testkit::on_each_backend;

const SEC: Duration = Duration::from_secs(1);

/// The futures go to `tokio::spawn`, and the guard is held across `.await`.
#[allow(dead_code, reason = "compiled, not run: the bounds are the test")]
fn futures_are_send_and_static(locks: &Locks, guard: LockGuard) {
    fn send_static<T: Send + 'static>(_: T) {}
    fn send<T: Send>(_: T) {}
    fn send_sync<T: Send + Sync>(_: &T) {}
    send_sync(&guard);
    send_static(locks.lock("n").acquire_async());
    send_static(locks.lock("n").try_acquire_async());
    send_static(guard.lost());
    send(guard.release_async());
}

/// Releases; a release that missed its statement deadline is finished by the library in
/// the background (the next acquirer waits for it), which is right, not a failure: a
/// loaded run stalled one of the 1,000 tasks' PostgreSQL releases past the 10 s deadline
/// (PostgreSQL commits a NOTIFY under a database-wide lock, on the WAL flush).
async fn release_or_finish_late(guard: LockGuard) {
    match guard.release_async().await {
        Ok(()) | Err(database_locks::Error::Unresponsive { .. }) => {}
        Err(e) => panic!("release: {e}"),
    }
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_time()
        .build()
        .unwrap()
}

/// Runs `f` on a thread of its own and fails if it has not finished within `limit`: a
/// wait that blocked the executor's only thread would otherwise hang the test run.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("did not finish within {limit:?}: a wait blocked the executor"))
}

/// The proof that waiting does not block the executor: on a runtime with one thread,
/// task A holds the lock and releases it only once task B is waiting for it. If B's wait
/// blocked the thread, A would never run again and B would never get the lock.
fn a_waiting_task_lets_the_holder_run_on_one_thread(db: &Db) {
    let locks = db.locks();
    let name = unique_name("async-one-thread");
    within(120 * SEC, move || {
        current_thread().block_on(async move {
            let a = locks.lock(&name).acquire_async().await.unwrap();
            let b = tokio::spawn({
                let (locks, name) = (locks.clone(), name.clone());
                async move {
                    let guard = locks
                        .lock(&name)
                        .retry(Some(Duration::from_secs(3600)))
                        .acquire_async()
                        .await
                        .unwrap();
                    let token = guard.token();
                    guard.release_async().await.unwrap();
                    token
                }
            });
            while common::in_progress(&locks) == 0 {
                tokio::task::yield_now().await;
            }
            let a_token = a.token().unwrap();
            a.release_async().await.unwrap();
            // B polls only every hour: the release handed it the lock.
            let b_token = b.await.unwrap().unwrap();
            assert!(b_token > a_token, "{b_token} after {a_token}");
        })
    });
}

/// 1,000 tasks on one lock on a current-thread runtime: each does a read-modify-write
/// with an `.await` between the read and the write; none is lost.
fn a_thousand_tasks_on_one_thread(db: &Db) {
    let locks = db.locks();
    let name = unique_name("async-thousand");
    let counter = Arc::new(AtomicU64::new(0));
    let inside = Arc::new(AtomicBool::new(false));
    current_thread().block_on(async {
        let tasks: Vec<_> = (0..1000)
            .map(|_| {
                let (locks, name) = (locks.clone(), name.clone());
                let (counter, inside) = (counter.clone(), inside.clone());
                tokio::spawn(async move {
                    let guard = locks
                        .lock(&name)
                        .timeout(Duration::from_secs(600))
                        .acquire_async()
                        .await
                        .unwrap();
                    assert!(!inside.swap(true, Ordering::SeqCst), "two tasks inside");
                    let value = counter.load(Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    counter.store(value + 1, Ordering::SeqCst);
                    inside.store(false, Ordering::SeqCst);
                    release_or_finish_late(guard).await;
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    assert_eq!(counter.load(Ordering::SeqCst), 1000);
    assert_eq!(common::in_progress(&locks), 0);
}

/// 4 processes x 4 tasks (tokio, multi-thread), 100 sections per process on one name:
/// the same checker as the blocking processes' (`lock-helper async-cs`).
fn tasks_of_processes_exclude_each_other(db: &Db) {
    run_sections_with(&[db], 4, 100, "async-mutex", &["async-cs", "4"]);
}

/// `tokio::time::timeout` around `acquire_async` of a held lock, 100 times, while the
/// holder releases and takes it again: no cancelled acquisition keeps the row, and a
/// blocking acquirer gets the lock at once afterwards.
fn cancelled_acquisitions_leave_nothing_behind(db: &Db) {
    let locks = db.locks();
    let name = unique_name("async-cancel");
    let stop = Arc::new(AtomicBool::new(false));
    let holder = std::thread::spawn({
        let (locks, name, stop) = (db.locks(), name.clone(), stop.clone());
        move || {
            let mut cycles = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let guard = locks.lock(&name).timeout(60 * SEC).acquire().unwrap();
                std::thread::sleep(Duration::from_millis(3));
                guard.release().unwrap();
                cycles += 1;
            }
            cycles
        }
    });
    let mut acquired = 0;
    let mut cancelled = 0;
    multi_thread().block_on(async {
        for i in 0..100u64 {
            let attempt = locks
                .lock(&name)
                .retry(Some(Duration::from_millis(1 + i % 7)))
                .acquire_async();
            match tokio::time::timeout(Duration::from_micros(300 + 97 * i), attempt).await {
                Ok(guard) => {
                    acquired += 1;
                    drop(guard.unwrap());
                }
                Err(_) => cancelled += 1,
            }
        }
    });
    stop.store(true, Ordering::SeqCst);
    let cycles = holder.join().unwrap();
    println!(
        "cancel [{:?}]: {cancelled} cancelled, {acquired} acquired, holder cycles {cycles}",
        db.kind
    );
    assert!(cancelled > 0, "no acquisition was cancelled");
    // A lock granted to a cancelled acquisition is released by the worker that ran the
    // attempt, and a dropped guard by another worker: both soon after.
    assert!(
        eventually(30 * SEC, || db
            .row(&name)
            .is_some_and(|row| row.expires_at.is_none())),
        "the row stayed held: {:?}",
        db.row(&name)
    );
    let other = db.locks();
    let guard = other.lock(&name).try_acquire().unwrap();
    assert!(
        guard.is_some(),
        "a blocking acquirer did not get the free lock"
    );
}

/// `lost()` completes when the lock is force-released, and a `select!` between the work
/// and `lost()` stops the work while the lease is still live by the database's clock.
fn lost_stops_the_work_in_time(db: &Db) {
    let locks = db.locks();
    let name = unique_name("async-lost");
    multi_thread().block_on(async {
        // Force-released: the next renewal finds the row gone. The renewal is the guard's
        // own (`renew()`, no auto-renewal, a 60 s lease), bounded only by the statement
        // timeout: with the renewal thread's, a loaded run delayed PostgreSQL's commits
        // past the 7.5 s a renewal had before the lease is given up, and the loss came as
        // Expired (in time, and right, but not a detected theft). The renewal thread's
        // detection of a theft is tests/lock.rs's.
        let guard = locks
            .lock(&name)
            .lock_ttl(Some(60 * SEC))
            .auto_renew(false)
            .lost_lock_cb(|_| {})
            .acquire_async()
            .await
            .unwrap();
        let lost = guard.lost();
        assert!(db.locks().force_release(&name).unwrap());
        assert!(
            matches!(guard.renew(), Err(database_locks::Error::Lost { .. })),
            "the renewal did not find the theft"
        );
        let loss = tokio::time::timeout(30 * SEC, lost)
            .await
            .expect("lost() did not complete");
        assert_eq!(loss.cause, LossCause::Taken);
        assert_eq!(Some(loss.token), guard.token());
        assert!(guard.is_lost());
        drop(guard);

        // Not renewed: the work stops before the lease ends by the database's clock.
        let guard = locks
            .lock(&name)
            .lock_ttl(Some(2 * SEC))
            .auto_renew(false)
            .acquire_async()
            .await
            .unwrap();
        let work = async {
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let loss = tokio::select! {
            () = work => unreachable!("the work never ends by itself"),
            loss = guard.lost() => loss,
        };
        let stopped = std::time::Instant::now();
        assert_eq!(loss.cause, LossCause::Expired);
        // The lease ends by the database's clock no earlier than `expires_by` (the send
        // time of the acquiring statement plus the ttl, since the database set the expiry
        // from its clock after that): the work stopped before it. Compared as absolute
        // instants: a read of the row's time left, a round trip later, would measure the
        // round trip too.
        let ends = loss.expires_by.expect("a lease with a ttl");
        assert!(
            stopped < ends,
            "the work stopped {:?} after the lease could end",
            stopped - ends
        );
        assert!(db.row(&name).expect("row").expires_at.is_some());
    });
}

/// A guard released normally never completes `lost()`, even after its lease would have
/// ended.
fn lost_never_completes_after_release(db: &Db) {
    let locks = db.locks();
    let name = unique_name("async-released");
    multi_thread().block_on(async {
        let guard = locks
            .lock(&name)
            .lock_ttl(Some(SEC))
            .acquire_async()
            .await
            .unwrap();
        let lost = guard.lost();
        guard.release_async().await.unwrap();
        assert!(
            tokio::time::timeout(3 * SEC, lost).await.is_err(),
            "lost() completed for a released guard"
        );
    });
}

/// A guard dropped in a task that panics, or in one that is aborted, is released.
fn guards_of_panicking_and_aborted_tasks_are_released(db: &Db) {
    let locks = db.locks();
    let (panicking, aborted) = (unique_name("async-panic"), unique_name("async-abort"));
    multi_thread().block_on(async {
        let task = tokio::spawn({
            let (locks, name) = (locks.clone(), panicking.clone());
            async move {
                let _guard = locks.lock(&name).acquire_async().await.unwrap();
                panic!("the task fails while holding the lock");
            }
        });
        assert!(task.await.unwrap_err().is_panic());

        let (held_tx, held_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn({
            let (locks, name) = (locks.clone(), aborted.clone());
            async move {
                let _guard = locks.lock(&name).acquire_async().await.unwrap();
                let _ = held_tx.send(());
                std::future::pending::<()>().await;
            }
        });
        held_rx.await.unwrap();
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
    });
    for name in [&panicking, &aborted] {
        assert!(
            eventually(30 * SEC, || db
                .row(name)
                .is_some_and(|row| row.expires_at.is_none())),
            "{name} stayed held: {:?}",
            db.row(name)
        );
    }
}

/// No tokio: `futures`' executor drives the same futures (the crate's threads wake them).
fn another_executor_drives_the_same_futures(db: &Db) {
    let locks = db.locks();
    let name = unique_name("async-futures");
    futures::executor::block_on(async {
        let first = locks.lock(&name).acquire_async().await.unwrap();
        assert!(locks
            .lock(&name)
            .try_acquire_async()
            .await
            .unwrap()
            .is_none());
        // A waiter in another thread's executor gets it when this one releases.
        let waiter = std::thread::spawn({
            let (locks, name) = (locks.clone(), name.clone());
            move || {
                futures::executor::block_on(async {
                    let guard: LockGuard = locks
                        .lock(&name)
                        .retry(Some(Duration::from_secs(3600)))
                        .acquire_async()
                        .await
                        .unwrap();
                    guard.token()
                })
            }
        });
        while common::in_progress(&locks) == 0 {
            std::thread::yield_now();
        }
        let token = first.token();
        first.release_async().await.unwrap();
        assert!(waiter.join().unwrap() > token);
        // A timer of the crate's: an acquisition that times out.
        let _held = locks.lock(&name).acquire_async().await.unwrap();
        let err = locks
            .lock(&name)
            .timeout(Duration::from_millis(300))
            .retry(Some(Duration::from_millis(50)))
            .acquire_async()
            .await
            .unwrap_err();
        assert!(
            matches!(err, database_locks::Error::Timeout { .. }),
            "{err}"
        );
    });
}

/// The options mean what they mean for the blocking builder: disabled mode and the
/// status file among them.
fn options_mean_the_same(db: &Db) {
    let dir = tempfile::tempdir().unwrap();
    let status = dir.path().join("status");
    let locks = db.locks();
    locks.set_status_file(Some(status.clone()));
    let name = unique_name("async-options");
    multi_thread().block_on(async {
        let guard = locks
            .lock(&name)
            .locked_by("async-owner")
            .lock_ttl(Some(30 * SEC))
            .acquire_async()
            .await
            .unwrap();
        assert_eq!(std::fs::read_to_string(&status).unwrap(), "2");
        assert_eq!(guard.locked_by(), Some("async-owner"));
        let row = db.row(&name).unwrap();
        assert_eq!(row.locked_by.as_deref(), Some("async-owner"));
        // The same owner takes it again (the seed's re-entry by owner id).
        let again = locks
            .lock(&name)
            .locked_by("async-owner")
            .try_acquire_async()
            .await
            .unwrap()
            .expect("the same owner re-acquires");
        assert!(again.token() > guard.token());
        again.release_async().await.unwrap();
        // The older guard's row now carries the newer token: its release says so.
        assert!(matches!(
            guard.release_async().await,
            Err(database_locks::Error::Lost { .. })
        ));
        assert_eq!(std::fs::read_to_string(&status).unwrap(), "0");

        // A bad option is the blocking builder's typed error, and leaves no row.
        let bad = unique_name("async-bad");
        let err = locks
            .lock(&bad)
            .lock_ttl(Some(SEC))
            .lock_ttl_renew(2 * SEC)
            .acquire_async()
            .await
            .unwrap_err();
        assert!(
            matches!(err, database_locks::Error::InvalidInput { .. }),
            "{err}"
        );
        assert!(db.row(&bad).is_none());

        locks.set_enabled(false);
        let guard = locks.lock(&name).acquire_async().await.unwrap();
        assert!(!guard.is_held());
        locks.set_enabled(true);
    });
}

/// The threads of this process, from `/proc/self/status`.
fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("Threads: in /proc/self/status")
}

/// 10,000 tasks awaiting one held lock cost no thread each: the process has a handful
/// more threads than before they began. Then they are cancelled (aborted while queued),
/// which leaves the queue empty and the lock free for the next comer.
fn ten_thousand_waiting_tasks_use_a_handful_of_threads(db: &Db) {
    let locks = db.locks();
    let name = unique_name("async-10k");
    let runtime = current_thread();
    let holder = runtime.block_on(locks.lock(&name).acquire_async()).unwrap();
    let before = threads();
    let tasks: Vec<_> = (0..10_000)
        .map(|_| {
            let (locks, name) = (locks.clone(), name.clone());
            runtime.spawn(async move {
                let guard = locks.lock(&name).acquire_async().await.unwrap();
                guard.release_async().await.unwrap();
            })
        })
        .collect();
    runtime.block_on(async {
        while common::in_progress(&locks) < 10_000 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let during = threads();
    println!(
        "10k waiting tasks [{:?}]: threads {before} before, {during} while they wait",
        db.kind
    );
    assert!(
        during <= before + 8,
        "{during} threads with 10,000 waiting tasks ({before} before)"
    );
    runtime.block_on(async {
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            assert!(task.await.unwrap_err().is_cancelled());
        }
        assert_eq!(common::in_progress(&locks), 0);
        holder.release_async().await.unwrap();
        let next = locks.lock(&name).try_acquire_async().await.unwrap();
        assert!(
            next.is_some(),
            "the lock was not free after the waiters went"
        );
    });
}

/// `examples/async_worker.rs`, two processes at once: they take turns (each holds the
/// lock in some rounds), and no two holds overlap.
fn two_async_workers_take_turns(db: &Db) {
    let example = common::example("async_worker");
    let name = unique_name("async-worker");
    let workers: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new(&example)
                .args([name.as_str(), "3"])
                .env("DATABASE_LOCKS_URL", &db.url)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut holds: Vec<(u128, u128, u64, u32)> = Vec::new();
    for mut worker in workers {
        let pid = worker.id();
        let out = common::output_of(&mut worker, 300 * SEC);
        let mut from = None;
        for line in out.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                [_, "holds", _, "round", _, "token", token, "from", at] => {
                    from = Some((at.parse().unwrap(), token.parse().unwrap()));
                }
                [_, "releases", _, "round", _, "token", _, "at", at] => {
                    let (start, token) = from.take().expect("a release after a hold");
                    holds.push((start, at.parse().unwrap(), token, pid));
                }
                _ => panic!("unexpected line {line:?}"),
            }
        }
    }
    assert_eq!(holds.len(), 6, "{holds:?}");
    holds.sort();
    for pair in holds.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "overlapping holds: {pair:?}");
        assert!(pair[0].2 < pair[1].2, "tokens out of order: {pair:?}");
    }
    let turns = holds.windows(2).filter(|p| p[0].3 != p[1].3).count();
    println!(
        "async workers [{:?}]: 6 holds, {turns} hand-offs between the processes",
        db.kind
    );
    assert!(turns >= 1, "one worker held every round: {holds:?}");
}

on_each_backend!(
    a_waiting_task_lets_the_holder_run_on_one_thread,
    a_thousand_tasks_on_one_thread,
    tasks_of_processes_exclude_each_other,
    cancelled_acquisitions_leave_nothing_behind,
    lost_stops_the_work_in_time,
    lost_never_completes_after_release,
    guards_of_panicking_and_aborted_tasks_are_released,
    another_executor_drives_the_same_futures,
    options_mean_the_same,
    ten_thousand_waiting_tasks_use_a_handful_of_threads,
    two_async_workers_take_turns,
);
