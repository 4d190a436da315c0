//! The acquisition loop, one for both faces: [`Acquisition`] decides what comes next (an
//! attempt, a wait in the name's queue, or the outcome); the blocking face runs attempts
//! on the caller's thread and waits on a condition variable, the async face runs attempts
//! on the crate's threads and waits with a [`Waker`](std::task::Waker). Options, the
//! queue, the hand-off and the notifications are the same code for both.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use crate::backend::pool::OpError;
use crate::backend::{Attempt, Failure, Lease, Semaphore};
use crate::error::{Error, Result};
use crate::guard::LockGuard;
use crate::lease::{LeaseState, LostCallback};
use crate::local::{Waiter, Wake};
use crate::locks::{transient, Locks};
use crate::observe::{self, Outcome, Wakeup};
use crate::offload::offload;
use crate::timer::{sleep_until, Sleep};

/// The least time an attempt gets to answer, even when the acquisition's timeout is
/// about to run out.
const LAST_ATTEMPT: Duration = Duration::from_millis(250);

/// How long a waiter that is not at the front of its queue sleeps at most before looking
/// at its state again (it does not poll the database then).
const IDLE_CHECK: Duration = Duration::from_secs(3600);

/// What one acquisition asks for, checked.
pub(crate) struct Request {
    pub locks: Locks,
    /// The lock's name, or the semaphore's: what the queue is for.
    pub name: String,
    /// A permit of this semaphore rather than the lock `name`.
    pub semaphore: Option<Semaphore>,
    pub owner: String,
    pub ttl: Option<Duration>,
    pub ttl_renew: Duration,
    pub auto_renew: bool,
    /// `None`: one attempt only.
    pub retry: Option<Duration>,
    /// A single attempt that reports "held" as `Ok(None)` rather than an error.
    pub once: bool,
    pub timeout: Option<Duration>,
    pub callback: Option<LostCallback>,
    pub at_least: Option<Duration>,
    pub pinned: bool,
    /// The thread the guard is recorded on; `None` for an async acquisition.
    pub thread: Option<ThreadId>,
}

/// What to do next.
pub(crate) enum Step {
    /// Make an attempt now, sent at `sent`; its statement must answer by `limit`.
    Attempt {
        sent: Instant,
        limit: Option<Instant>,
    },
    /// Wait until handed a turn, promoted (`front` false), or `until`.
    Wait {
        until: Instant,
        front: bool,
    },
    Done(Result<Option<LockGuard>>),
}

/// One acquisition in progress, registered in its name's queue until dropped.
pub(crate) struct Acquisition {
    req: Request,
    waiter: Waiter,
    started: Instant,
    deadline: Option<Instant>,
    attempt: bool,
    holder: Option<String>,
    /// The holder's lease ends then: the front tries right after.
    wake_at: Option<Instant>,
    repaired: bool,
    /// Whether the database ever answered, and the last failure if it did not: an
    /// acquisition that timed out without an answer reports why.
    answered: bool,
    last_error: Option<Error>,
}

impl Acquisition {
    pub(crate) fn new(req: Request) -> Self {
        let started = Instant::now();
        // A timeout too long to represent waits for ever.
        let deadline = req.timeout.and_then(|t| started.checked_add(t));
        // Registered until dropped; a waiting acquisition joins the name's queue (see
        // `local.rs`): only its front polls, and a release hands the front the next
        // attempt.
        let (waiter, attempt) = req.locks.inner.local.enqueue(
            &req.name,
            &req.owner,
            req.retry.is_some(),
            req.semaphore.is_some(),
        );
        Acquisition {
            req,
            waiter,
            started,
            deadline,
            attempt,
            holder: None,
            wake_at: None,
            repaired: false,
            answered: false,
            last_error: None,
        }
    }

    pub(crate) fn next(&mut self) -> Step {
        if self.attempt {
            self.waiter.begin_attempt();
            let sent = Instant::now();
            self.wake_at = None;
            // An attempt made as the timeout runs out (the last look) still gets a moment
            // to answer.
            let limit = self.deadline.map(|d| d.max(sent + LAST_ATTEMPT));
            return Step::Attempt { sent, limit };
        }
        let Some(retry) = self.req.retry else {
            if self.req.once {
                return Step::Done(Ok(None));
            }
            return Step::Done(Err(Error::NotAcquired {
                name: self.req.name.clone(),
                holder: self.holder.take(),
            }));
        };
        let now = Instant::now();
        if self.deadline.is_some_and(|d| now >= d) {
            if let (false, Some(err)) = (self.answered, self.last_error.take()) {
                return Step::Done(Err(err));
            }
            return Step::Done(Err(Error::Timeout {
                name: self.req.name.clone(),
                waited: now - self.started,
                holder: self.holder.take(),
            }));
        }
        let locks = &self.req.locks;
        // Releases elsewhere wake waiters through the handle's listener (PostgreSQL),
        // started by the first wait; releases it missed while starting are made up for
        // by an attempt of every queue's front once it listens.
        locks.inner.local.listen(&locks.inner.store);
        // Only the front of the queue polls, at the retry period or right after the
        // holder's known expiry; the others wait to be handed an attempt.
        let front = self.waiter.is_front();
        let mut until = self.deadline.unwrap_or(now + IDLE_CHECK);
        if front {
            until = until.min(now.checked_add(retry).unwrap_or(until));
            if let Some(at) = self.wake_at {
                until = until.min(at);
            }
        }
        Step::Wait { until, front }
    }

    /// The attempt itself, blocking: on the caller's thread (blocking face) or a worker of
    /// the crate (async face).
    fn attempt(
        locks: &Locks,
        name: &str,
        semaphore: Option<&Semaphore>,
        owner: &str,
        ttl: Option<Duration>,
        limit: Option<Instant>,
    ) -> Result<Attempt, OpError> {
        let store = locks.store();
        locks.prepare(limit).and_then(|()| match semaphore {
            Some(semaphore) => {
                store.try_acquire_permit(store.deadline(limit), semaphore, owner, ttl)
            }
            None => store.try_acquire(store.deadline(limit), name, owner, ttl),
        })
    }

    /// Takes in the outcome of the attempt sent at `sent`: the acquisition's outcome, or
    /// `None` to go on.
    pub(crate) fn attempted(
        &mut self,
        sent: Instant,
        result: Result<Attempt, OpError>,
    ) -> Option<Result<Option<LockGuard>>> {
        let req = &self.req;
        match result {
            Ok(Attempt::Acquired { token }) => {
                let row = req.name.clone();
                return Some(self.granted(row, token, sent));
            }
            Ok(Attempt::Permit { row, token }) => return Some(self.granted(row, token, sent)),
            Ok(Attempt::Mismatch { permits }) => {
                return Some(Err(Error::PermitsMismatch {
                    name: req.name.clone(),
                    permits: req.semaphore.as_ref().map_or(0, |s| s.permits),
                    found: permits,
                }))
            }
            // Only inside the store's own attempt; a waiter looks again later.
            Ok(Attempt::SetupNeeded) => self.answered = true,
            Ok(Attempt::Held {
                holder: seen_holder,
                expires_in,
            }) => {
                self.holder = seen_holder.or(self.holder.take());
                self.answered = true;
                // The holder's lease ends before the next poll: try right after it.
                self.wake_at = expires_in
                    .and_then(|left| Instant::now().checked_add(left + Duration::from_millis(1)));
            }
            Err(err)
                if err.failure == Failure::MissingTable
                    && !self.repaired
                    && req.locks.settings().auto_migrate =>
            {
                self.repaired = true;
                req.locks.table_missing();
                // Straight to another attempt, which creates the table again.
                return None;
            }
            // Waited out only by an acquisition that waits; a single attempt reports it.
            Err(err) if transient(&err) && req.retry.is_some() => {
                tracing::debug!(lock = %req.name, "acquire attempt failed, will retry: {}", err.error);
                self.last_error = Some(err.error);
            }
            Err(err) => return Some(Err(err.error)),
        }
        self.waiter.end_attempt();
        self.attempt = false;
        None
    }

    /// The guard of a lease just granted on `row` (the lock's, or a semaphore's slot).
    fn granted(&self, row: String, token: i64, sent: Instant) -> Result<Option<LockGuard>> {
        let req = &self.req;
        let lease = Arc::new(LeaseState::new(
            row,
            req.owner.clone(),
            token,
            req.ttl,
            req.ttl_renew,
            sent,
            req.callback.clone(),
        ));
        if req.auto_renew && req.ttl.is_some() {
            match req.locks.renewer() {
                Ok(renewer) => renewer.add(Arc::clone(&lease), sent),
                Err(err) => {
                    // Not held without renewal: give the row back.
                    let store = req.locks.store();
                    let _ = store.release(store.deadline(None), lease.lease(), None);
                    return Err(err);
                }
            }
        }
        tracing::debug!(lock = %lease.name, owner = %lease.owner, token, "lock acquired");
        Ok(Some(LockGuard::held(
            req.locks.clone(),
            lease,
            req.at_least,
            req.pinned,
            req.thread,
        )))
    }

    /// After a wait that began with the waiter at the front (`front`) or not.
    pub(crate) fn woke(&mut self, wake: Wake, front: bool) {
        self.attempt = match wake {
            Wake::Turn => true,
            Wake::Promoted => false,
            // A waiter that is not at the front wakes on the deadline only.
            Wake::Timer => front || self.deadline.is_some_and(|d| Instant::now() >= d),
        };
        if front && wake == Wake::Timer {
            observe::wakeup(&self.req.name, Wakeup::Poll);
        }
    }

    /// The span of one acquisition; its outcome fields are filled in by [`Self::finish`].
    fn span(&self) -> tracing::Span {
        tracing::debug_span!(
            "acquire",
            lock = %self.req.name,
            owner = %self.req.owner,
            outcome = tracing::field::Empty,
            token = tracing::field::Empty,
            wait_seconds = tracing::field::Empty,
        )
    }

    /// Reports how the acquisition ended: metrics, and the span's fields.
    fn finish(&self, span: &tracing::Span, done: &Result<Option<LockGuard>>) {
        let (outcome, waited) = (Outcome::of(done), self.started.elapsed());
        observe::acquisition(&self.req.name, outcome, waited);
        span.record("outcome", outcome.as_str());
        span.record("wait_seconds", waited.as_secs_f64());
        if let Ok(Some(guard)) = done {
            if let Some(token) = guard.token() {
                span.record("token", token);
            }
        }
    }

    /// The blocking face: attempts and waits on this thread.
    pub(crate) fn run_blocking(self) -> Result<Option<LockGuard>> {
        let span = self.span();
        let _entered = span.enter();
        self.blocking(&span)
    }

    fn blocking(mut self, span: &tracing::Span) -> Result<Option<LockGuard>> {
        let done = loop {
            match self.next() {
                Step::Attempt { sent, limit } => {
                    let req = &self.req;
                    let result = Self::attempt(
                        &req.locks,
                        &req.name,
                        req.semaphore.as_ref(),
                        &req.owner,
                        req.ttl,
                        limit,
                    );
                    if let Some(done) = self.attempted(sent, result) {
                        break done;
                    }
                }
                Step::Wait { until, front } => {
                    let wake = self.waiter.wait(until, front);
                    self.woke(wake, front);
                }
                Step::Done(done) => break done,
            }
        };
        self.finish(span, &done);
        done
    }

    /// The async face: attempts on the crate's threads, waits as a task. Dropping the
    /// future at any point leaves no lock behind: an attempt that was granted after the
    /// future went is released by the worker that ran it.
    pub(crate) fn run_async(self) -> impl Future<Output = Result<Option<LockGuard>>> + Send {
        use tracing::Instrument;
        let span = self.span();
        let inner = span.clone();
        async move {
            let (done, this) = self.in_tasks().await;
            this.finish(&inner, &done);
            done
        }
        .instrument(span)
    }

    /// The async face's loop; gives the acquisition back for [`Self::finish`].
    async fn in_tasks(mut self) -> (Result<Option<LockGuard>>, Self) {
        let done = loop {
            match self.next() {
                Step::Attempt { sent, limit } => {
                    let req = &self.req;
                    let (locks, name, semaphore, owner, ttl) = (
                        req.locks.clone(),
                        req.name.clone(),
                        req.semaphore.clone(),
                        req.owner.clone(),
                        req.ttl,
                    );
                    let undo_locks = locks.clone();
                    let (undo_name, undo_owner) = (name.clone(), owner.clone());
                    let undo = Box::new(move |result: Result<Attempt, OpError>| {
                        let granted = match result {
                            Ok(Attempt::Acquired { token }) => Some((undo_name, token)),
                            Ok(Attempt::Permit { row, token }) => Some((row, token)),
                            _ => None,
                        };
                        if let Some((undo_name, token)) = granted {
                            let store = undo_locks.store();
                            let lease = Lease {
                                name: &undo_name,
                                owner: &undo_owner,
                                token,
                            };
                            if let Err(err) = store.release(store.deadline(None), lease, None) {
                                tracing::warn!(lock = %undo_name, "releasing a lock granted to a cancelled acquisition failed; its lease will expire: {}", err.error);
                            }
                            // The row is free again: the next waiter here may try.
                            undo_locks.inner.local.hub().notified(&undo_name);
                        }
                    });
                    let result = offload(
                        move || {
                            Self::attempt(&locks, &name, semaphore.as_ref(), &owner, ttl, limit)
                        },
                        Some(undo),
                    )
                    .await
                    .map_err(|source| Error::Thread {
                        thread: "async worker",
                        source,
                    });
                    let done = match result {
                        Ok(result) => self.attempted(sent, result),
                        Err(err) => Some(Err(err)),
                    };
                    if let Some(done) = done {
                        break done;
                    }
                }
                Step::Wait { until, front } => {
                    let wake = TurnOrTime {
                        waiter: &self.waiter,
                        front,
                        sleep: sleep_until(until),
                    }
                    .await;
                    self.woke(wake, front);
                }
                Step::Done(done) => break done,
            }
        };
        (done, self)
    }
}

/// A task's wait in the queue: a turn, a promotion, or the time.
struct TurnOrTime<'a> {
    waiter: &'a Waiter,
    front: bool,
    sleep: Sleep,
}

impl Future for TurnOrTime<'_> {
    type Output = Wake;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Wake> {
        let this = self.get_mut();
        if let Poll::Ready(wake) = this.waiter.poll_wait(cx, this.sleep.at(), this.front) {
            return Poll::Ready(wake);
        }
        match Pin::new(&mut this.sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Wake::Timer),
            Poll::Pending => Poll::Pending,
        }
    }
}
