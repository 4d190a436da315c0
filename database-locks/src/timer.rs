//! Timers for async callers, kept by one thread of the crate for the whole process: a
//! [`Sleep`] registers its waker for an instant, and the thread wakes it then. No
//! executor's timer is needed, so the futures of this crate run on any executor.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::LazyLock;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

/// Wakers by when they are due (and a sequence number, to keep equal instants apart).
type Due = BTreeMap<(Instant, u64), Waker>;

#[derive(Default)]
struct Timers {
    /// The wakers, and the last sequence number given out.
    due: Mutex<(Due, u64)>,
    changed: Condvar,
    started: AtomicBool,
}

static TIMERS: LazyLock<Timers> = LazyLock::new(Timers::default);

impl Timers {
    fn register(&'static self, at: Instant, waker: Waker) -> (Instant, u64) {
        if !self.started.swap(true, Ordering::SeqCst) {
            let spawned = std::thread::Builder::new()
                .name("database-locks-timer".into())
                .spawn(move || self.run());
            if let Err(err) = spawned {
                self.started.store(false, Ordering::SeqCst);
                tracing::error!("cannot start the timer thread for async waits: {err}");
            }
        }
        let mut due = self.due.lock();
        due.1 += 1;
        let key = (at, due.1);
        let earliest = due.0.keys().next().is_none_or(|&(first, _)| at < first);
        due.0.insert(key, waker);
        if earliest {
            self.changed.notify_one();
        }
        key
    }

    fn cancel(&self, key: (Instant, u64)) {
        self.due.lock().0.remove(&key);
    }

    fn run(&self) {
        let mut due = self.due.lock();
        loop {
            let now = Instant::now();
            let mut ready = Vec::new();
            while let Some(entry) = due.0.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                ready.push(entry.remove());
            }
            if !ready.is_empty() {
                // Wakers run executor code: not under the lock.
                drop(due);
                ready.into_iter().for_each(Waker::wake);
                due = self.due.lock();
                continue;
            }
            match due.0.keys().next().map(|&(at, _)| at) {
                Some(at) => {
                    self.changed.wait_until(&mut due, at);
                }
                None => self.changed.wait(&mut due),
            }
        }
    }
}

/// Completes at `at`.
pub(crate) fn sleep_until(at: Instant) -> Sleep {
    Sleep { at, key: None }
}

/// A future that completes at an instant; see [`sleep_until`].
#[derive(Debug)]
pub(crate) struct Sleep {
    at: Instant,
    key: Option<(Instant, u64)>,
}

impl Sleep {
    pub(crate) fn at(&self) -> Instant {
        self.at
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if Instant::now() >= this.at {
            if let Some(key) = this.key.take() {
                TIMERS.cancel(key);
            }
            return Poll::Ready(());
        }
        // Registered afresh on every poll: the waker may have changed (the task moved).
        if let Some(key) = this.key.take() {
            TIMERS.cancel(key);
        }
        this.key = Some(TIMERS.register(this.at, cx.waker().clone()));
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            TIMERS.cancel(key);
        }
    }
}
