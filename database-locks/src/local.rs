//! What one handle knows without asking the database: which thread holds which name (to
//! refuse a self-deadlock), who waits for which name and whose turn it is to try, and the
//! status file.
//!
//! Waiters of one name form a queue, first come first served. Only the front of the queue
//! polls the database; a release through this handle, or a notification that the name was
//! released elsewhere, hands the front (and nobody else) the next attempt. So a release
//! costs one attempt per waiting handle, not one per waiting thread, and a thread that
//! releases and acquires again queues behind the waiters instead of barging past them.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll, Waker};
use std::thread::ThreadId;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use crate::backend::pool::Store;
use crate::notify::Listening;
use crate::observe::{self, Wakeup};
use crate::status::StatusFile;

/// One waiting acquisition in a name's queue.
struct Waiting {
    id: u64,
    /// Set when a release or a notification hands this waiter the next attempt.
    turn: bool,
    /// While its attempt runs: newcomers must not barge in meanwhile.
    attempting: bool,
    /// A permit of a semaphore of this name, not the lock.
    permit: bool,
    wake: Arc<Signal>,
}

/// How a waiter is woken: a blocking one sleeps on the condition variable, an async one
/// leaves its task's waker. Both are signalled under the state lock, after the state
/// changed, so that a waiter that looked at the state under the lock misses nothing.
#[derive(Default)]
struct Signal {
    thread: Condvar,
    task: Mutex<Option<Waker>>,
}

impl Signal {
    fn notify(&self) {
        self.thread.notify_one();
        if let Some(waker) = self.task.lock().take() {
            waker.wake();
        }
    }
}

/// A guard of this handle. The owner is kept as a hash: a handle may hold thousands of
/// locks, and the owner id itself lives in the lease.
#[derive(Clone, Copy)]
struct Holder {
    /// The thread that acquired it; `None` for an async acquisition, whose task may be
    /// on any thread.
    thread: Option<ThreadId>,
    owner: u64,
    id: u64,
    /// A guard `#[locked]` keeps in its body's frame: it cannot leave the thread it was
    /// acquired on. Any other guard may have been sent to another thread since.
    pinned: bool,
}

/// Whether a waiting acquisition would wait for a guard of its own thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SelfWait {
    /// No guard acquired on this thread holds the name with another owner.
    No,
    /// A `#[locked]` body on this thread holds it: the wait would never end.
    Certain,
    /// A guard acquired on this thread holds it; it may have been moved to another
    /// thread, which can still release it.
    Possible,
}

/// The guards of one name: nearly always one, so no allocation for it.
enum Holders {
    One(Holder),
    Many(Vec<Holder>),
}

impl Holders {
    fn iter(&self) -> std::slice::Iter<'_, Holder> {
        match self {
            Holders::One(h) => std::slice::from_ref(h).iter(),
            Holders::Many(v) => v.iter(),
        }
    }

    fn push(&mut self, holder: Holder) {
        match self {
            Holders::One(h) => *self = Holders::Many(vec![*h, holder]),
            Holders::Many(v) => v.push(holder),
        }
    }

    /// Removes guard `id`; returns whether it was there.
    fn remove(&mut self, id: u64) -> bool {
        match self {
            Holders::One(h) => h.id == id,
            Holders::Many(v) => {
                let before = v.len();
                v.retain(|h| h.id != id);
                let removed = v.len() < before;
                if v.len() == 1 {
                    let only = v[0];
                    *self = Holders::One(only);
                }
                removed
            }
        }
    }
}

fn owner_hash(owner: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    owner.hash(&mut hasher);
    hasher.finish()
}

#[derive(Default)]
struct State {
    /// Only names somebody here holds or waits for: the maps do not grow with every name
    /// ever used.
    held: HashMap<String, Holders>,
    /// Waiting acquisitions per name, in arrival order.
    queues: HashMap<String, VecDeque<Waiting>>,
    /// Acquisitions in progress, queued or not (for the status file).
    waiting: usize,
    /// Acquisitions in a queue (the listener works while there are any).
    queued: usize,
    holding: usize,
    next_id: u64,
}

impl State {
    /// Whether a waiter for `name` has been handed the next attempt, or is making it.
    fn turn_taken(&self, name: &str) -> bool {
        self.queues
            .get(name)
            .is_some_and(|q| q.iter().any(|w| w.turn || w.attempting))
    }

    /// Hands the next attempt to the front of `name`'s queue, if nobody here holds the
    /// name and none is handed out yet. A front that is attempting gets one more after
    /// it: the release announced may have come after its statement looked.
    ///
    /// `name` is a row's: a semaphore's slot hands the turn to the semaphore's queue (a
    /// guard of this handle on that slot would hold it, not the semaphore).
    fn give_turn(&mut self, name: &str, why: Wakeup) {
        if self.held.contains_key(name) {
            return;
        }
        let queue_name = crate::backend::queue_key(name);
        if let Some(queue) = self.queues.get_mut(queue_name) {
            if give_turn(queue) {
                observe::wakeup(queue_name, why);
            }
        }
    }
}

/// Hands the front of `queue` the next attempt; whether it woke a waiter (not when a
/// turn is out already, or nobody waits).
fn give_turn(queue: &mut VecDeque<Waiting>) -> bool {
    if queue.iter().any(|w| w.turn) {
        return false;
    }
    match queue.front_mut() {
        Some(front) => {
            front.turn = true;
            front.wake.notify();
            true
        }
        None => false,
    }
}

/// The part the listener thread shares.
#[derive(Default)]
pub(crate) struct Hub {
    state: Mutex<State>,
    /// Signalled when the first waiter queues, and at shutdown.
    queued_changed: Condvar,
    shutdown: AtomicBool,
    /// What the listener found out, for `Debug` (tests and diagnostics).
    notifications: Mutex<Notifications>,
    status: StatusFile,
}

/// Where release notifications from other processes stand for one handle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Notifications {
    /// Nobody has waited yet, or the backend has none.
    #[default]
    NotStarted,
    /// Turned off by configuration: waiters poll.
    Off,
    /// Listening; the check notification has not come back yet.
    Listening,
    /// The check notification came back: releases wake waiters.
    Delivered,
    /// The check notification never came back (a transaction pooler): waiters poll.
    NotDelivered,
    /// SQLite: the listener watches the file's commits (`PRAGMA data_version`); nothing
    /// between can lose one, so there is nothing to check.
    Watching,
    /// MySQL/MariaDB: the listener waits on the session locks (`GET_LOCK`) that holders'
    /// channels take beside their rows (`backend::session`).
    SessionLocks,
    /// MySQL/MariaDB without a channel: a Galera node (session locks are per node), or a
    /// handle on an application's pool. Waiters poll.
    NoChannel,
}

impl Hub {
    pub(crate) fn set_notifications(&self, state: Notifications) {
        *self.notifications.lock() = state;
    }

    /// A release of `name` was announced by the database: hand its queue the next attempt.
    pub(crate) fn notified(&self, name: &str) {
        self.state.lock().give_turn(name, Wakeup::Notify);
    }

    /// Notifications may have been missed (the listener just started or reconnected):
    /// every queue gets one attempt.
    pub(crate) fn wake_fronts(&self) {
        let mut state = self.state.lock();
        let State { held, queues, .. } = &mut *state;
        for (name, queue) in queues.iter_mut() {
            if !held.contains_key(name) && give_turn(queue) {
                observe::wakeup(name, Wakeup::Notify);
            }
        }
    }

    /// The names waited for that no guard of this handle holds: what a listener that saw
    /// a commit reads.
    pub(crate) fn queue_names(&self) -> Vec<String> {
        let state = self.state.lock();
        state
            .queues
            .keys()
            .filter(|name| !state.held.contains_key(*name))
            .cloned()
            .collect()
    }

    /// What a session-lock listener waits on (MySQL): the locks (a semaphore's waiters
    /// poll there) that no guard of this handle holds and whose queue waits for a holder
    /// elsewhere: not while one of its waiters has been handed the next attempt or makes
    /// one (a hand-off within the handle, which a look would only slow down).
    pub(crate) fn lock_queue_names(&self) -> Vec<String> {
        let state = self.state.lock();
        state
            .queues
            .iter()
            .filter(|(name, queue)| {
                !state.held.contains_key(*name)
                    && queue.iter().any(|w| !w.permit)
                    && !queue.iter().any(|w| w.turn || w.attempting)
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    pub(crate) fn queued(&self) -> usize {
        self.state.lock().queued
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// Sleeps until somebody queues, shutdown, or `until`.
    pub(crate) fn wait_for_waiters(&self, until: Instant) {
        let mut state = self.state.lock();
        while state.queued == 0 && !self.is_shut_down() {
            if self
                .queued_changed
                .wait_until(&mut state, until)
                .timed_out()
            {
                return;
            }
        }
    }
}

/// Process-local bookkeeping of one handle.
pub(crate) struct Local {
    hub: Arc<Hub>,
    /// Whether waiters may listen for releases elsewhere.
    notify: bool,
    listening: OnceLock<Listening>,
}

// tests/performance.rs reads `waiting: N` from a handle's `Debug` to know a waiter waits.
impl fmt::Debug for Local {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.hub.state.lock();
        f.debug_struct("Local")
            .field("waiting", &state.waiting)
            .field("holding", &state.holding)
            .field("notify", &self.notify)
            .field("notifications", &*self.hub.notifications.lock())
            .finish_non_exhaustive()
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        self.hub.shutdown.store(true, Ordering::SeqCst);
        self.hub.queued_changed.notify_all();
    }
}

/// What ended a [`Waiter::wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// A release here or elsewhere handed this waiter the next attempt.
    Turn,
    /// The time asked for came.
    Timer,
    /// The waiter moved to the front of its queue: it polls from now on.
    Promoted,
}

/// A waiting acquisition, registered with its handle until dropped.
pub(crate) struct Waiter {
    hub: Arc<Hub>,
    name: String,
    id: u64,
    queued: bool,
    wake: Arc<Signal>,
}

impl Local {
    pub(crate) fn new(status_file: Option<PathBuf>, notify: bool) -> Self {
        let hub = Hub {
            status: StatusFile::new(status_file),
            ..Hub::default()
        };
        let local = Local {
            hub: Arc::new(hub),
            notify,
            listening: OnceLock::new(),
        };
        local.hub.write_status();
        local
    }

    pub(crate) fn hub(&self) -> &Hub {
        &self.hub
    }

    pub(crate) fn set_status_file(&self, path: Option<PathBuf>) {
        self.hub.status.set_path(path);
        self.hub.write_status();
    }

    /// Whether this thread holds `name` through a guard whose owner is not `owner`.
    pub(crate) fn would_deadlock(&self, name: &str, owner: Option<&str>) -> SelfWait {
        let me = Some(std::thread::current().id());
        let owner = owner.map(owner_hash);
        let state = self.hub.state.lock();
        let mut mine = state
            .held
            .get(name)
            .into_iter()
            .flat_map(Holders::iter)
            .filter(|h| h.thread == me && Some(h.owner) != owner);
        match mine.next() {
            None => SelfWait::No,
            Some(first) if first.pinned || mine.any(|h| h.pinned) => SelfWait::Certain,
            Some(_) => SelfWait::Possible,
        }
    }

    /// Starts listening for releases in other processes, once per handle, if `notify` is
    /// on (on MySQL only where the handle has a channel: see `notify.rs`).
    /// With `notify` off, says once per handle that waiting polls.
    pub(crate) fn listen(&self, store: &Arc<dyn Store>) {
        self.listening.get_or_init(|| {
            if !self.notify {
                tracing::info!(
                    "release notifications are off (notify(false) or transaction \
                     pooling): waiters poll at their retry period"
                );
                self.hub.set_notifications(Notifications::Off);
                return Listening::Off;
            }
            let store: Weak<dyn Store> = Arc::downgrade(store);
            Listening::start(Arc::clone(&self.hub), store)
        });
    }

    /// Registers an acquisition of `name` (a lock, or a semaphore: `permit`) by `owner`.
    /// One that waits (`queued`) joins the name's queue. Returns the registration and whether to attempt at once: not when a
    /// guard of this handle with another owner holds the name (the database would refuse)
    /// or another waiter has been handed the next attempt (that would be barging).
    pub(crate) fn enqueue(
        &self,
        name: &str,
        owner: &str,
        queued: bool,
        permit: bool,
    ) -> (Waiter, bool) {
        let wake = Arc::new(Signal::default());
        let (id, attempt) = {
            let mut state = self.hub.state.lock();
            state.next_id += 1;
            let id = state.next_id;
            state.waiting += 1;
            let mut attempt = true;
            if queued {
                let owner = owner_hash(owner);
                let held_by_other = state
                    .held
                    .get(name)
                    .is_some_and(|holders| holders.iter().any(|h| h.owner != owner));
                attempt = !(held_by_other || state.turn_taken(name));
                state
                    .queues
                    .entry(name.to_owned())
                    .or_default()
                    .push_back(Waiting {
                        id,
                        turn: false,
                        attempting: false,
                        permit,
                        wake: Arc::clone(&wake),
                    });
                state.queued += 1;
                if state.queued == 1 {
                    self.hub.queued_changed.notify_all();
                }
            }
            (id, attempt)
        };
        self.hub.write_status();
        let waiter = Waiter {
            hub: Arc::clone(&self.hub),
            name: name.to_owned(),
            id,
            queued,
            wake,
        };
        (waiter, attempt)
    }

    /// Records a guard (`pinned`, `thread`: see [`Holder`]); returns its id.
    pub(crate) fn acquired(
        &self,
        name: &str,
        owner: &str,
        pinned: bool,
        thread: Option<ThreadId>,
    ) -> u64 {
        let id = {
            let mut state = self.hub.state.lock();
            state.next_id += 1;
            let id = state.next_id;
            let holder = Holder {
                thread,
                owner: owner_hash(owner),
                id,
                pinned,
            };
            match state.held.get_mut(name) {
                Some(holders) => holders.push(holder),
                None => {
                    state.held.insert(name.to_owned(), Holders::One(holder));
                }
            }
            state.holding += 1;
            id
        };
        self.hub.write_status();
        id
    }

    /// Forgets a guard, and hands the next attempt to the first waiter for `name`.
    pub(crate) fn released(&self, name: &str, guard: u64) {
        {
            let mut state = self.hub.state.lock();
            let mut found = false;
            if let Some(holders) = state.held.get_mut(name) {
                found = holders.remove(guard);
                if found && matches!(holders, Holders::One(h) if h.id == guard) {
                    state.held.remove(name);
                }
            }
            if found {
                state.holding = state.holding.saturating_sub(1);
            }
            state.give_turn(name, Wakeup::Local);
        }
        self.hub.write_status();
    }
}

impl Hub {
    /// Brings the status file up to date with the state as it is now.
    fn write_status(&self) {
        self.status.update(|| status_of(&self.state.lock()));
    }
}

impl Waiter {
    fn queue<'s>(&self, state: &'s State) -> Option<&'s VecDeque<Waiting>> {
        state.queues.get(&self.name)
    }

    /// Whether this waiter is first in its name's queue (the one that polls).
    pub(crate) fn is_front(&self) -> bool {
        let state = self.hub.state.lock();
        self.queued
            && self
                .queue(&state)
                .and_then(VecDeque::front)
                .is_some_and(|w| w.id == self.id)
    }

    /// Called before each attempt: the turn, if this waiter had it, is used up.
    pub(crate) fn begin_attempt(&self) {
        self.mark(|me| {
            me.turn = false;
            me.attempting = true;
        });
    }

    /// Called after each attempt that did not acquire.
    pub(crate) fn end_attempt(&self) {
        self.mark(|me| me.attempting = false);
    }

    fn mark(&self, f: impl FnOnce(&mut Waiting)) {
        let mut state = self.hub.state.lock();
        if let Some(me) = state
            .queues
            .get_mut(&self.name)
            .and_then(|q| q.iter_mut().find(|w| w.id == self.id))
        {
            f(me);
        }
    }

    /// Sleeps until this waiter is handed the next attempt, moves to the front of its
    /// queue (when it was not there: `was_front`), or `until`.
    pub(crate) fn wait(&self, until: Instant, was_front: bool) -> Wake {
        let mut state = self.hub.state.lock();
        loop {
            if let Some(queue) = self.queue(&state) {
                if queue.iter().any(|w| w.id == self.id && w.turn) {
                    return Wake::Turn;
                }
                if !was_front && queue.front().is_some_and(|w| w.id == self.id) {
                    return Wake::Promoted;
                }
            }
            if Instant::now() >= until {
                return Wake::Timer;
            }
            self.wake.thread.wait_until(&mut state, until);
        }
    }

    /// [`wait`](Self::wait) for a task: `Pending` leaves the task's waker to be woken by
    /// the next turn or promotion; the caller wakes it at `until`.
    pub(crate) fn poll_wait(
        &self,
        cx: &mut Context<'_>,
        until: Instant,
        was_front: bool,
    ) -> Poll<Wake> {
        let state = self.hub.state.lock();
        if let Some(queue) = self.queue(&state) {
            if queue.iter().any(|w| w.id == self.id && w.turn) {
                return Poll::Ready(Wake::Turn);
            }
            if !was_front && queue.front().is_some_and(|w| w.id == self.id) {
                return Poll::Ready(Wake::Promoted);
            }
        }
        if Instant::now() >= until {
            return Poll::Ready(Wake::Timer);
        }
        let mut task = self.wake.task.lock();
        if !task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *task = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        {
            let mut state = self.hub.state.lock();
            state.waiting = state.waiting.saturating_sub(1);
            if self.queued {
                state.queued = state.queued.saturating_sub(1);
                let held = state.held.contains_key(&self.name);
                if let Some(queue) = state.queues.get_mut(&self.name) {
                    let was_front = queue.front().is_some_and(|w| w.id == self.id);
                    let had_turn = queue
                        .iter()
                        .any(|w| w.id == self.id && (w.turn || w.attempting));
                    queue.retain(|w| w.id != self.id);
                    if had_turn && !held {
                        // Leaving with a turn unused (timeout, error): the next waiter gets
                        // it. After acquiring, the name is held here and nobody does.
                        give_turn(queue);
                    }
                    if was_front {
                        // The new front polls from now on: let it set its timer.
                        if let Some(front) = queue.front() {
                            front.wake.notify();
                        }
                    }
                    if queue.is_empty() {
                        state.queues.remove(&self.name);
                    }
                }
            }
        }
        self.hub.write_status();
    }
}

/// `2` while any lock is held, else `1` while any acquisition waits, else `0`.
fn status_of(state: &State) -> u8 {
    if state.holding > 0 {
        2
    } else if state.waiting > 0 {
        1
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No real waiting: `wait` with a past deadline only reports what woke the waiter.
    fn woken(waiter: &Waiter, was_front: bool) -> Wake {
        waiter.wait(Instant::now(), was_front)
    }

    #[test]
    fn a_release_hands_the_next_attempt_to_the_first_waiter_only() {
        let local = Local::new(None, false);
        let guard = local.acquired("n", "a", false, Some(std::thread::current().id()));
        let (first, attempt) = local.enqueue("n", "b", true, false);
        assert!(!attempt, "held here by another owner: no attempt");
        let (second, _) = local.enqueue("n", "c", true, false);
        assert!(first.is_front() && !second.is_front());
        assert_eq!(woken(&first, true), Wake::Timer);
        local.released("n", guard);
        assert_eq!(woken(&first, true), Wake::Turn);
        assert_eq!(woken(&second, false), Wake::Timer);
    }

    #[test]
    fn a_newcomer_does_not_barge_past_a_waiter_given_the_turn() {
        let local = Local::new(None, false);
        let guard = local.acquired("n", "a", false, Some(std::thread::current().id()));
        let (first, _) = local.enqueue("n", "b", true, false);
        local.released("n", guard);
        assert!(
            !local.enqueue("n", "c", true, false).1,
            "the turn is handed out"
        );
        first.begin_attempt();
        assert!(
            !local.enqueue("n", "c", true, false).1,
            "the turn is being used"
        );
        first.end_attempt();
        assert!(
            local.enqueue("n", "c", true, false).1,
            "refused: held elsewhere, anyone may look"
        );
        assert!(
            local.enqueue("n", "c", false, false).1,
            "a single attempt never waits"
        );
    }

    #[test]
    fn the_same_owner_attempts_at_once() {
        let local = Local::new(None, false);
        let _guard = local.acquired("n", "a", false, Some(std::thread::current().id()));
        assert!(local.enqueue("n", "a", true, false).1);
        assert!(!local.enqueue("n", "b", true, false).1);
    }

    #[test]
    fn a_waiter_leaving_with_the_turn_passes_it_on() {
        let local = Local::new(None, false);
        let guard = local.acquired("n", "a", false, Some(std::thread::current().id()));
        let (first, _) = local.enqueue("n", "b", true, false);
        let (second, _) = local.enqueue("n", "c", true, false);
        local.released("n", guard);
        drop(first);
        assert!(second.is_front());
        assert_eq!(woken(&second, false), Wake::Turn);
    }

    #[test]
    fn the_next_waiter_is_promoted_when_the_front_acquires() {
        let local = Local::new(None, false);
        let (first, _) = local.enqueue("n", "b", true, false);
        let (second, _) = local.enqueue("n", "c", true, false);
        first.begin_attempt();
        let _guard = local.acquired("n", "b", false, Some(std::thread::current().id()));
        drop(first);
        // Promoted, not handed an attempt: the name is held here.
        assert_eq!(woken(&second, false), Wake::Promoted);
        assert_eq!(woken(&second, true), Wake::Timer);
    }

    #[test]
    fn notifications_wake_the_front_unless_the_name_is_held_here() {
        let local = Local::new(None, false);
        let guard = local.acquired("n", "a", false, Some(std::thread::current().id()));
        let (waiter, _) = local.enqueue("n", "b", true, false);
        local.hub.notified("n");
        assert_eq!(woken(&waiter, true), Wake::Timer);
        local.released("n", guard);
        waiter.begin_attempt();
        waiter.end_attempt();
        local.hub.notified("n");
        assert_eq!(woken(&waiter, true), Wake::Turn);
        waiter.begin_attempt();
        waiter.end_attempt();
        local.hub.wake_fronts();
        assert_eq!(woken(&waiter, true), Wake::Turn);
    }

    /// What a MySQL listener waits on: a lock whose front was refused, not one held here,
    /// handed over within the handle, or a semaphore's.
    #[test]
    fn the_session_listener_waits_only_for_holders_elsewhere() {
        let local = Local::new(None, false);
        let (waiter, _) = local.enqueue("n", "b", true, false);
        let (_permit, _) = local.enqueue("sem", "c", true, true);
        assert_eq!(local.hub.lock_queue_names(), ["n"]);
        waiter.begin_attempt();
        assert!(local.hub.lock_queue_names().is_empty(), "attempting");
        waiter.end_attempt();
        assert_eq!(
            local.hub.lock_queue_names(),
            ["n"],
            "refused: held elsewhere"
        );
        let guard = local.acquired("n", "a", false, Some(std::thread::current().id()));
        assert!(local.hub.lock_queue_names().is_empty(), "held here");
        local.released("n", guard);
        assert!(
            local.hub.lock_queue_names().is_empty(),
            "handed the next attempt"
        );
    }

    #[test]
    fn names_are_forgotten_when_nobody_holds_or_waits() {
        let local = Local::new(None, false);
        let guard = local.acquired("n", "a", false, Some(std::thread::current().id()));
        let (waiter, _) = local.enqueue("n", "b", true, false);
        local.released("n", guard);
        drop(waiter);
        let state = local.hub.state.lock();
        assert!(state.held.is_empty() && state.queues.is_empty());
        assert_eq!((state.waiting, state.queued, state.holding), (0, 0, 0));
    }

    #[test]
    fn two_guards_of_one_name_are_both_tracked() {
        let local = Local::new(None, false);
        let one = local.acquired("n", "a", false, Some(std::thread::current().id()));
        let two = local.acquired("n", "a", false, Some(std::thread::current().id()));
        local.released("n", one);
        assert!(
            !local.enqueue("n", "b", true, false).1,
            "still held by the second"
        );
        local.released("n", two);
        assert!(local.hub.state.lock().held.is_empty());
    }

    /// Threads that take and give back guards while others wait: whatever the order in
    /// which their writes land, the file ends showing the final state, and only whole
    /// values are ever read. (Before, each thread wrote the status it computed before
    /// dropping the state lock, so a late "2" could land after the last release's "0".)
    #[test]
    fn the_status_file_ends_with_the_last_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status");
        for round in 0..20 {
            let local = Arc::new(Local::new(Some(path.clone()), false));
            let stop = Arc::new(AtomicBool::new(false));
            let reader = {
                let (path, stop) = (path.clone(), Arc::clone(&stop));
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let read = std::fs::read_to_string(&path).unwrap();
                        assert!(["0", "1", "2"].contains(&read.as_str()), "read {read:?}");
                    }
                })
            };
            let workers: Vec<_> = (0..4)
                .map(|t| {
                    let local = Arc::clone(&local);
                    std::thread::spawn(move || {
                        let name = format!("n{t}");
                        for _ in 0..200 {
                            let (waiter, _) = local.enqueue(&name, "o", false, false);
                            let id = local.acquired(
                                &name,
                                "o",
                                false,
                                Some(std::thread::current().id()),
                            );
                            drop(waiter);
                            local.released(&name, id);
                        }
                    })
                })
                .collect();
            for worker in workers {
                worker.join().unwrap();
            }
            stop.store(true, Ordering::SeqCst);
            reader.join().unwrap();
            let last = std::fs::read_to_string(&path).unwrap();
            assert_eq!(last, "0", "round {round}: nothing held or waited for");
            let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
            assert_eq!(leftovers, 1, "no temporary file left behind");
        }
    }
}
