//! Statements with a deadline.
//!
//! A statement on a network connection can wait for ever: a connection that went silent
//! (a cut cable, a NAT or load balancer that forgot it, a proxy that stopped forwarding)
//! gives no error, and its next read simply never returns. Neither libpq nor
//! libmysqlclient (as diesel opens them) can be interrupted from another thread, so a
//! statement that must finish by a deadline runs on a worker thread while its caller waits
//! for the result at most until that deadline. A statement that overruns is abandoned: the
//! caller goes on without it, and the worker, if the statement ever returns, is told so and
//! keeps the connection out of the pool (and undoes a lock granted too late).
//!
//! Workers are kept for reuse; one that has been idle for [`IDLE_EXIT`] ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// The idle workers, each by its id and the sender that reaches it.
type Idle = Arc<Mutex<Vec<(u64, mpsc::Sender<Job>)>>>;

/// How long an idle worker waits for another job before it ends.
const IDLE_EXIT: Duration = Duration::from_secs(30);

/// The idle workers of one handle.
#[derive(Default)]
pub(crate) struct Workers {
    idle: Idle,
    next_id: AtomicU64,
}

/// Where a worker leaves its result, or learns that nobody waits for it any more.
pub(crate) struct Reply<R> {
    slot: Arc<(Mutex<Slot<R>>, Condvar)>,
}

enum Slot<R> {
    Waiting,
    Done(R),
    Abandoned,
}

impl<R> Reply<R> {
    /// Hands `value` to the caller; gives it back when the caller has stopped waiting, for
    /// the worker to clean up after.
    pub(crate) fn deliver(self, value: R) -> Option<R> {
        let (slot, ready) = &*self.slot;
        let mut slot = slot.lock();
        match *slot {
            Slot::Abandoned => Some(value),
            _ => {
                *slot = Slot::Done(value);
                ready.notify_one();
                None
            }
        }
    }
}

impl Workers {
    /// Runs `job` on a worker and waits for what it delivers until `deadline`. `None`: the
    /// deadline passed first, and the job has been told that nobody waits for it.
    /// `Err` only when no worker thread could be started.
    pub(crate) fn run<R: Send + 'static>(
        &self,
        deadline: Instant,
        job: impl FnOnce(Reply<R>) + Send + 'static,
    ) -> std::io::Result<Option<R>> {
        let slot = Arc::new((Mutex::new(Slot::Waiting), Condvar::new()));
        let reply = Reply {
            slot: Arc::clone(&slot),
        };
        self.submit(Box::new(move || job(reply)))?;
        let (state, ready) = &*slot;
        let mut state = state.lock();
        loop {
            if matches!(*state, Slot::Done(_)) {
                return match std::mem::replace(&mut *state, Slot::Abandoned) {
                    Slot::Done(value) => Ok(Some(value)),
                    _ => Ok(None),
                };
            }
            if ready.wait_until(&mut state, deadline).timed_out()
                && !matches!(*state, Slot::Done(_))
            {
                *state = Slot::Abandoned;
                return Ok(None);
            }
        }
    }

    /// Runs `job` on this thread, for statements that cannot hang (SQLite).
    pub(crate) fn here<R>(job: impl FnOnce(Reply<R>)) -> Option<R> {
        let slot = Arc::new((Mutex::new(Slot::Waiting), Condvar::new()));
        job(Reply {
            slot: Arc::clone(&slot),
        });
        let mut state = slot.0.lock();
        match std::mem::replace(&mut *state, Slot::Abandoned) {
            Slot::Done(value) => Some(value),
            _ => None,
        }
    }

    /// Runs `job` on a worker, without waiting for it.
    pub(crate) fn spawn(&self, job: Job) -> std::io::Result<()> {
        self.submit(job)
    }

    /// Gives `job` to an idle worker, or to a new one.
    fn submit(&self, mut job: Job) -> std::io::Result<()> {
        loop {
            let Some((_, worker)) = self.idle.lock().pop() else {
                break;
            };
            match worker.send(job) {
                Ok(()) => return Ok(()),
                // It ended between being listed and being handed the job.
                Err(mpsc::SendError(returned)) => job = returned,
            }
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let idle = Arc::clone(&self.idle);
        std::thread::Builder::new()
            .name("database-locks-io".into())
            .spawn(move || {
                // The worker keeps a sender to list itself as idle again after each job.
                job();
                loop {
                    idle.lock().push((id, tx.clone()));
                    loop {
                        match rx.recv_timeout(IDLE_EXIT) {
                            Ok(job) => {
                                job();
                                break;
                            }
                            Err(_) => {
                                let mut list = idle.lock();
                                if let Some(at) = list.iter().position(|(i, _)| *i == id) {
                                    list.swap_remove(at);
                                    return;
                                }
                                // Taken for a job that is on its way: wait for it.
                            }
                        }
                    }
                }
            })?;
        Ok(())
    }
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("idle", &self.idle.lock().len())
            .finish()
    }
}

/// At most `limit` statements of a pool at once. A statement abandoned at its deadline
/// gives its place back at once, though its connection stays out of the pool until its
/// socket fails: the pool has room beyond `limit` for such connections, so that a few
/// silent ones do not starve the live ones.
#[derive(Debug)]
pub(crate) struct Permits {
    used: Mutex<u32>,
    freed: Condvar,
    limit: u32,
}

/// One place among the [`Permits`]; given back once, by whoever comes first: the statement
/// when it ends, or its caller when it abandons it.
#[derive(Debug)]
pub(crate) struct Permit {
    permits: Arc<Permits>,
    held: std::sync::atomic::AtomicBool,
}

impl Permits {
    pub(crate) fn new(limit: u32) -> Arc<Self> {
        Arc::new(Permits {
            used: Mutex::new(0),
            freed: Condvar::new(),
            limit: limit.max(1),
        })
    }

    /// A place by `deadline`, or `None`.
    pub(crate) fn acquire(self: &Arc<Self>, deadline: Instant) -> Option<Arc<Permit>> {
        let mut used = self.used.lock();
        while *used >= self.limit {
            if self.freed.wait_until(&mut used, deadline).timed_out() && *used >= self.limit {
                return None;
            }
        }
        *used += 1;
        Some(Arc::new(Permit {
            permits: Arc::clone(self),
            held: std::sync::atomic::AtomicBool::new(true),
        }))
    }

    pub(crate) fn limit(&self) -> u32 {
        self.limit
    }
}

impl Permit {
    pub(crate) fn release(&self) {
        if self.held.swap(false, Ordering::SeqCst) {
            *self.permits.used.lock() -= 1;
            self.permits.freed.notify_one();
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.release();
    }
}
