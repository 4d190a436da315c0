//! The campaign's thread: candidate, leader, candidate again, until stopped. What it
//! shares with the [`Leader`](super::Leader) handle is [`Shared`].

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::{Demoted, Demotion, DemotionCause, Elected, Term};
use crate::error::Error;
use crate::guard::LockGuard;
use crate::lease::LostLock;
use crate::locks::Locks;

/// The checked options, owned by the campaign's thread.
pub(super) struct Plan {
    pub(super) locks: Locks,
    pub(super) owner: String,
    pub(super) ttl: Duration,
    pub(super) ttl_renew: Duration,
    pub(super) retry: Duration,
    pub(super) pause: Duration,
    pub(super) on_elected: Option<Elected>,
    pub(super) on_demoted: Option<Demoted>,
}

/// What the campaign's thread and the [`Leader`] share.
pub(super) struct Shared {
    pub(super) name: String,
    pub(super) owner: String,
    pub(super) state: Mutex<State>,
    /// Signalled at every change of state, for [`Leader::wait_elected`].
    pub(super) changed: Condvar,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) current: Option<Current>,
    pub(super) step_down: bool,
    pub(super) stop: bool,
    /// The loss of the current term, reported by its `lost_lock_cb`.
    pub(super) lost: Option<LostLock>,
    /// The campaign's thread has finished.
    pub(super) ended: bool,
    /// The campaign's thread, to wake it; set when it starts.
    pub(super) campaign: Option<Thread>,
    /// Tasks awaiting [`Leader::elected`].
    pub(super) wakers: Vec<Waker>,
}

pub(super) struct Current {
    pub(super) term: Term,
    /// Shared with fenced transactions in flight; the release waits for them.
    pub(super) guard: Arc<LockGuard>,
}

impl State {
    /// The current term if it still leads.
    pub(super) fn leading(&self) -> Option<&Current> {
        self.current
            .as_ref()
            .filter(|c| !self.step_down && !self.stop && self.lost.is_none() && !c.guard.is_lost())
    }

    pub(super) fn wake_campaign(&self) {
        if let Some(thread) = &self.campaign {
            thread.unpark();
        }
    }

    fn wake_tasks(&mut self) {
        self.wakers.drain(..).for_each(Waker::wake);
    }
}

/// How a candidacy ended.
pub(super) enum Candidacy {
    Elected(LockGuard),
    Stopped,
    Failed(Error),
}

impl Shared {
    pub(super) fn id(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    /// The campaign: candidate, leader, candidate again, until stopped.
    pub(super) fn run(self: Arc<Self>, plan: Plan) {
        self.state.lock().campaign = Some(std::thread::current());
        let mut pause_until = None;
        loop {
            if let Some(until) = pause_until.take() {
                self.sleep_until(until);
            }
            if self.state.lock().stop {
                break;
            }
            match self.candidacy(&plan) {
                Candidacy::Stopped => break,
                Candidacy::Failed(err) => {
                    tracing::warn!(election = %self.name, "campaigning failed, trying again in {:?}: {err}", plan.retry);
                    pause_until = Instant::now().checked_add(plan.retry);
                }
                Candidacy::Elected(guard) => {
                    if let DemotionCause::SteppedDown = self.lead(&plan, guard) {
                        pause_until = Instant::now().checked_add(plan.pause);
                    }
                }
            }
        }
        let mut state = self.state.lock();
        state.ended = true;
        state.wake_tasks();
        self.changed.notify_all();
    }

    /// Waits until `until` or a stop.
    fn sleep_until(&self, until: Instant) {
        loop {
            let now = Instant::now();
            if now >= until || self.state.lock().stop {
                return;
            }
            std::thread::park_timeout(until - now);
        }
    }

    /// Waits for the lock in its acquisition loop, driving the async acquisition on this
    /// thread so that a stop can cancel it (cancel-safe: a lock granted to it is released).
    fn candidacy(self: &Arc<Self>, plan: &Plan) -> Candidacy {
        let weak = Arc::downgrade(self);
        let builder = plan
            .locks
            .lock(self.name.clone())
            .lock_ttl(Some(plan.ttl))
            .lock_ttl_renew(plan.ttl_renew)
            .locked_by(plan.owner.clone())
            .retry(Some(plan.retry))
            // Instead of the default, which ends the process: the loss demotes.
            .lost_lock_cb(move |lost| report_loss(&weak, lost));
        let mut acquisition = pin!(builder.acquire_async());
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        loop {
            if self.state.lock().stop {
                return Candidacy::Stopped;
            }
            if let Poll::Ready(outcome) = acquisition.as_mut().poll(&mut cx) {
                return match outcome {
                    Ok(guard) => Candidacy::Elected(guard),
                    Err(err) => Candidacy::Failed(err),
                };
            }
            std::thread::park();
        }
    }

    /// One term: announce it, wait for its end, announce that, release.
    fn lead(&self, plan: &Plan, guard: LockGuard) -> DemotionCause {
        let term = Term {
            name: self.name.clone(),
            token: guard.token().unwrap_or(0),
            locked_by: plan.owner.clone(),
            elected_at: Instant::now(),
        };
        let guard = Arc::new(guard);
        {
            let mut state = self.state.lock();
            state.lost = None;
            state.step_down = false;
            state.current = Some(Current {
                term: term.clone(),
                guard: Arc::clone(&guard),
            });
            state.wake_tasks();
            self.changed.notify_all();
        }
        tracing::info!(election = %self.name, token = term.token, "elected");
        if let Some(callback) = &plan.on_elected {
            deliver(&self.name, || callback(&term));
        }
        let cause = self.wait_for_end(&guard);
        let current = {
            let mut state = self.state.lock();
            state.step_down = false;
            state.lost = None;
            self.changed.notify_all();
            state.current.take()
        };
        drop(current);
        tracing::info!(election = %self.name, token = term.token, "demoted: {cause:?}");
        let demotion = Demotion {
            term,
            cause: cause.clone(),
        };
        if let Some(callback) = &plan.on_demoted {
            deliver(&self.name, || callback(&demotion));
        }
        // Fenced transactions of the term in flight end first.
        let mut guard = guard;
        let guard = loop {
            match Arc::try_unwrap(guard) {
                Ok(guard) => break guard,
                Err(shared) => {
                    guard = shared;
                    std::thread::park_timeout(Duration::from_millis(10));
                }
            }
        };
        if let DemotionCause::Lost(_) = cause {
            // One short attempt (the row may be ours still, expired or about to be): a
            // database that does not answer must not keep this candidate out long.
            drop(guard);
        } else if let Err(err) = guard.release() {
            tracing::warn!(election = %self.name, "releasing the lock at the end of the term failed: {err}");
        }
        cause
    }

    /// Parks until the term ends: a loss reported by the lock, its local deadline passed
    /// (the watchdog declares it too, a moment later), a step-down or a stop.
    fn wait_for_end(&self, guard: &LockGuard) -> DemotionCause {
        loop {
            {
                let mut state = self.state.lock();
                if let Some(lost) = state.lost.take() {
                    return DemotionCause::Lost(lost);
                }
                if let Some((_, lease)) = guard.lease() {
                    if let Some(lost) = lease.loss() {
                        return DemotionCause::Lost(lost);
                    }
                }
                if state.stop {
                    return DemotionCause::Stopped;
                }
                if state.step_down {
                    return DemotionCause::SteppedDown;
                }
            }
            let wake = guard
                .lease()
                .and_then(|(_, lease)| lease.give_up_at())
                .map_or(Duration::from_secs(1), |at| {
                    at.saturating_duration_since(Instant::now())
                        .min(Duration::from_secs(1))
                });
            std::thread::park_timeout(wake);
        }
    }
}

/// The term's `lost_lock_cb`: marks the term lost (so [`Leader::is_leader`] is false from
/// here on) and wakes the campaign, which demotes. A late report of an earlier term
/// (its token) is ignored.
pub(super) fn report_loss(shared: &Weak<Shared>, lost: &LostLock) {
    let Some(shared) = shared.upgrade() else {
        return;
    };
    let mut state = shared.state.lock();
    if state
        .current
        .as_ref()
        .is_some_and(|c| c.term.token == lost.token)
    {
        state.lost = Some(lost.clone());
        state.wake_campaign();
        shared.changed.notify_all();
    }
}

/// Runs a user's callback; a panic in it is logged, and the campaign goes on.
pub(super) fn deliver(name: &str, callback: impl FnOnce()) {
    if std::panic::catch_unwind(AssertUnwindSafe(callback)).is_err() {
        tracing::error!(election = %name, "a leader election callback panicked");
    }
}

/// Wakes the campaign's thread, which drives the candidate's acquisition.
pub(super) struct Unpark(pub(super) Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}
