//! The crate's own threads for async callers: a blocking job (an acquisition attempt, a
//! release) runs on a worker of the crate, never on the thread that polls, and a future
//! completes with its result. No executor is involved: the worker wakes the future's
//! [`Waker`] when it is done.
//!
//! A future dropped before its job has delivered abandons the job's result: the job then
//! hands it to its `undo` (a lock granted to an acquisition that nobody waits for any
//! more is released), on the worker, so that dropping never blocks.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use crate::backend::exec::Workers;

/// The workers of every handle's async calls. Each job blocks one of them for as long as
/// it runs; only the front of each queue makes attempts, so few run at once.
static WORKERS: LazyLock<Workers> = LazyLock::new(Workers::default);

type Undo<R> = Box<dyn FnOnce(R) + Send>;

enum State<R> {
    /// The job runs; the waker of the last poll, if any.
    Running(Option<Waker>),
    Done(R),
    /// Taken by the future, or abandoned by it.
    Gone,
}

struct Shared<R> {
    state: Mutex<State<R>>,
    undo: Mutex<Option<Undo<R>>>,
}

/// Runs `job` on a worker; the future completes with what it returns. `undo` receives the
/// result instead when the future was dropped before taking it.
pub(crate) fn offload<R: Send + 'static>(
    job: impl FnOnce() -> R + Send + 'static,
    undo: Option<Undo<R>>,
) -> Offload<R> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::Running(None)),
        undo: Mutex::new(undo),
    });
    let for_job = Arc::clone(&shared);
    let run = move || {
        let value = job();
        let mut state = for_job.state.lock();
        match std::mem::replace(&mut *state, State::Gone) {
            State::Running(waker) => {
                *state = State::Done(value);
                drop(state);
                if let Some(waker) = waker {
                    waker.wake();
                }
            }
            // Abandoned: nobody will take it.
            _ => {
                drop(state);
                if let Some(undo) = for_job.undo.lock().take() {
                    undo(value);
                }
            }
        }
    };
    let started = WORKERS.spawn(Box::new(run));
    Offload {
        shared,
        failed: started.err(),
    }
}

/// Runs `job` on a worker, and nobody waits for it.
pub(crate) fn detach(job: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    WORKERS.spawn(Box::new(job))
}

/// The result of an [`offload`]ed job.
pub(crate) struct Offload<R: Send + 'static> {
    shared: Arc<Shared<R>>,
    /// The worker could not be started: the future completes with this error.
    failed: Option<std::io::Error>,
}

impl<R: Send + 'static> Future for Offload<R> {
    type Output = std::io::Result<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(err) = this.failed.take() {
            return Poll::Ready(Err(err));
        }
        let mut state = this.shared.state.lock();
        match &mut *state {
            State::Running(waker) => {
                match waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            State::Done(_) | State::Gone => match std::mem::replace(&mut *state, State::Gone) {
                State::Done(value) => Poll::Ready(Ok(value)),
                // Polled again after completing.
                _ => Poll::Pending,
            },
        }
    }
}

impl<R: Send + 'static> Drop for Offload<R> {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock();
        match std::mem::replace(&mut *state, State::Gone) {
            // Delivered but never taken: undo it on a worker, not here.
            State::Done(value) => {
                drop(state);
                if let Some(undo) = self.shared.undo.lock().take() {
                    if let Err(err) = WORKERS.spawn(Box::new(move || undo(value))) {
                        tracing::warn!("cannot start a thread to undo an abandoned call: {err}");
                    }
                }
            }
            State::Running(_) | State::Gone => {}
        }
    }
}

impl<R: Send + 'static> std::fmt::Debug for Offload<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offload").finish_non_exhaustive()
    }
}
