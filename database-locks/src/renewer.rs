//! Lease keeping: one renewal thread and one watchdog thread per [`Locks`](crate::Locks)
//! handle, whatever the number of locks held.
//!
//! The renewal thread does the I/O: each tick renews every lease that is due in one
//! statement (up to [`MAX_BATCH`]). The watchdog never touches the database: it declares
//! a lease lost when its renewal has not succeeded by a margin before the lease ends,
//! even if the renewal thread is stuck in a statement on a dead connection.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::backend::pool::Store;
use crate::backend::Failure;
use crate::lease::{from_nanos, period, to_nanos, LeaseState, LossCause};
use crate::observe;

/// The most leases one renewal statement carries; a larger tick sends several.
pub(crate) const MAX_BATCH: usize = 10_000;

/// How long the threads sleep when there is nothing to do, at most.
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// Leases are keyed by the address of their state, which the schedule keeps alive.
fn key(lease: &Arc<LeaseState>) -> usize {
    Arc::as_ptr(lease) as usize
}

/// The leases of a handle, by when they are due. One ordered map and a few words per
/// lease: a handle may hold thousands.
#[derive(Default)]
struct Schedule {
    due: BTreeMap<(u64, usize), Arc<LeaseState>>,
    /// The leases the renewal statement running now carries: still watched.
    in_flight: Vec<Arc<LeaseState>>,
    /// The longest half period of any lease added: how far ahead a tick looks.
    horizon: Duration,
    /// When each thread will wake up next, so that `add` wakes it only for an earlier lease.
    renew_wake_at: Option<Instant>,
    watch_wake_at: Option<Instant>,
}

impl Schedule {
    fn schedule(&mut self, lease: Arc<LeaseState>, at: Instant) {
        self.unschedule(&lease);
        let at = to_nanos(at);
        lease.renew_at.store(at, Ordering::SeqCst);
        self.due.insert((at, key(&lease)), lease);
    }

    fn unschedule(&mut self, lease: &Arc<LeaseState>) {
        let at = lease.renew_at.swap(u64::MAX, Ordering::SeqCst);
        if at != u64::MAX {
            self.due.remove(&(at, key(lease)));
        }
    }

    /// Takes out of the schedule every lease a tick at `now` renews: those due, and those
    /// due within half their period, so that leases acquired at different moments share
    /// statements instead of each getting one. Renewing early only moves the end of a
    /// lease later.
    fn take_due(&mut self, now: Instant) -> Vec<Arc<LeaseState>> {
        let mut taken = Vec::new();
        let mut dead = Vec::new();
        let now_nanos = to_nanos(now);
        let horizon = to_nanos(now + self.horizon);
        for (&(at, _), lease) in &self.due {
            if at > horizon || taken.len() >= MAX_BATCH {
                break;
            }
            if lease.is_finished() || lease.lost.load(Ordering::SeqCst) {
                dead.push(Arc::clone(lease));
            } else if at <= now_nanos || at <= to_nanos(now + period(lease) / 2) {
                taken.push(Arc::clone(lease));
            }
        }
        for lease in dead.iter().chain(&taken) {
            self.unschedule(lease);
        }
        self.in_flight.clone_from(&taken);
        taken
    }
}

#[derive(Default)]
struct Shared {
    schedule: Mutex<Schedule>,
    renew_wake: Condvar,
    watch_wake: Condvar,
    /// Notified when a renewal statement has returned and `in_flight` is empty again.
    flight_done: Condvar,
    shutdown: AtomicBool,
}

/// The renewal and watchdog threads of one handle, started on first use.
pub(crate) struct Renewer {
    shared: Arc<Shared>,
}

impl fmt::Debug for Renewer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let schedule = self.shared.schedule.lock();
        f.debug_struct("Renewer")
            .field("leases", &(schedule.due.len() + schedule.in_flight.len()))
            .finish()
    }
}

impl Renewer {
    pub(crate) fn start(store: Weak<dyn Store>) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let for_renew = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("database-locks-renew".into())
            .spawn(move || renew_loop(&for_renew, &store))?;
        let for_watch = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("database-locks-watchdog".into())
            .spawn(move || watch_loop(&for_watch))?;
        Ok(Renewer { shared })
    }

    /// Starts renewing `lease` every `ttl - ttl_renew`, from `sent`.
    pub(crate) fn add(&self, lease: Arc<LeaseState>, sent: Instant) {
        if lease.ttl.is_none() {
            return;
        }
        let renew_at = sent + period(&lease);
        let mut schedule = self.shared.schedule.lock();
        schedule.horizon = schedule.horizon.max(period(&lease) / 2);
        self.schedule_and_wake(&mut schedule, lease, renew_at);
    }

    fn schedule_and_wake(
        &self,
        schedule: &mut Schedule,
        lease: Arc<LeaseState>,
        renew_at: Instant,
    ) {
        let give_up_at = lease.give_up_at();
        schedule.schedule(lease, renew_at);
        // Waking a thread costs a context switch per acquisition: only when it would
        // otherwise sleep past this lease's first deadline.
        if schedule.renew_wake_at.is_none_or(|at| renew_at < at) {
            self.shared.renew_wake.notify_one();
        }
        if give_up_at.is_some_and(|g| schedule.watch_wake_at.is_none_or(|at| g < at)) {
            self.shared.watch_wake.notify_one();
        }
    }

    /// Takes `lease` off the schedule for a fenced transaction, after a renewal of it that
    /// is under way has returned (it would otherwise wait for the transaction's row lock).
    fn pause(&self, lease: &Arc<LeaseState>) {
        let mut schedule = self.shared.schedule.lock();
        // A renewal statement returns by its deadline; this bound only guards against a
        // renewal thread that ended with the handle.
        let until = Instant::now() + MAX_FLIGHT_WAIT;
        while schedule.in_flight.iter().any(|l| Arc::ptr_eq(l, lease)) {
            if self
                .shared
                .flight_done
                .wait_until(&mut schedule, until)
                .timed_out()
            {
                break;
            }
        }
        if lease.fenced.fetch_add(1, Ordering::SeqCst) == 0 {
            let scheduled = lease.renew_at.load(Ordering::SeqCst) != u64::MAX;
            schedule.unschedule(lease);
            lease.fence_scheduled.store(scheduled, Ordering::SeqCst);
        }
    }

    /// Puts `lease` back on the schedule when its last fenced transaction has ended:
    /// renewed a period after `committed` (the statement that last extended it, in a
    /// transaction that committed), or now after a rollback, which undid the extension.
    fn resume(&self, lease: &Arc<LeaseState>, committed: Option<Instant>) {
        let mut schedule = self.shared.schedule.lock();
        if lease.fenced.fetch_sub(1, Ordering::SeqCst) != 1
            || !lease.fence_scheduled.swap(false, Ordering::SeqCst)
            || lease.is_finished()
            || lease.lost.load(Ordering::SeqCst)
        {
            return;
        }
        let renew_at = committed.map_or_else(Instant::now, |sent| sent + period(lease));
        self.schedule_and_wake(&mut schedule, Arc::clone(lease), renew_at);
    }

    /// Stops renewing `lease` (already marked finished by its guard).
    pub(crate) fn remove(&self, lease: &Arc<LeaseState>) {
        self.shared.schedule.lock().unschedule(lease);
    }
}

impl Drop for Renewer {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.renew_wake.notify_all();
        self.shared.watch_wake.notify_all();
    }
}

fn renew_loop(shared: &Arc<Shared>, store: &Weak<dyn Store>) {
    while !shared.shutdown.load(Ordering::SeqCst) {
        let due = {
            let mut schedule = shared.schedule.lock();
            let now = Instant::now();
            let first_due = schedule.due.keys().next().map(|&(at, _)| from_nanos(at));
            let due = match first_due {
                Some(at) if at <= now => schedule.take_due(now),
                _ => Vec::new(),
            };
            if due.is_empty() {
                let next = schedule
                    .due
                    .keys()
                    .next()
                    .map_or(now + IDLE_WAIT, |&(at, _)| {
                        from_nanos(at).min(now + IDLE_WAIT)
                    });
                schedule.renew_wake_at = Some(next);
                shared.renew_wake.wait_until(&mut schedule, next);
                schedule.renew_wake_at = None;
                continue;
            }
            let deadline = renewal_deadline(&schedule, &due, now);
            (due, deadline)
        };
        let (due, deadline) = due;
        let Some(store) = store.upgrade() else { return };
        renew_batch(shared, store.as_ref(), &due, deadline);
    }
}

/// How long a fenced transaction waits for a renewal of its lease that is under way.
const MAX_FLIGHT_WAIT: Duration = Duration::from_secs(30);

/// Keeps the renewer and the watchdog off a lease while a fenced transaction holds its
/// row: a renewal would wait for that transaction's row lock (on the handle's renewal
/// connection, a self-deadlock until the statement deadline), and nobody else can take the
/// lock meanwhile, so the lease cannot be lost. Ends with the transaction (on unwind too).
pub(crate) struct FencePause<'a> {
    lease: &'a Arc<LeaseState>,
    renewer: Option<&'a Renewer>,
    committed: Option<Instant>,
}

impl<'a> FencePause<'a> {
    pub(crate) fn new(lease: &'a Arc<LeaseState>, renewer: Option<&'a Renewer>) -> Self {
        match renewer {
            Some(renewer) => renewer.pause(lease),
            None => {
                lease.fenced.fetch_add(1, Ordering::SeqCst);
            }
        }
        FencePause {
            lease,
            renewer,
            committed: None,
        }
    }

    /// The transaction committed; the last statement that extended the lease in it was
    /// sent at `sent`.
    pub(crate) fn committed(&mut self, sent: Instant) {
        self.lease.extended(sent);
        self.committed = Some(sent);
    }
}

impl Drop for FencePause<'_> {
    fn drop(&mut self) {
        match self.renewer {
            Some(renewer) => renewer.resume(self.lease, self.committed),
            None => {
                self.lease.fenced.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// The shortest deadline a renewal statement gets.
const MIN_RENEW_DEADLINE: Duration = Duration::from_millis(100);

/// When a renewal statement started at `now` must have answered: three quarters of the
/// time left before the first lease of the handle (in the batch or not) must be given up.
/// A slow but live database gets most of the time (a statement abandoned at its deadline
/// is not applied even if it commits later), and the last quarter is left for one more try
/// on a fresh connection if this one went silent; a statement stuck on a silent connection
/// delays no other lease's renewal past that lease's own last quarter.
fn renewal_deadline(schedule: &Schedule, batch: &[Arc<LeaseState>], now: Instant) -> Instant {
    let first_give_up = batch
        .iter()
        .chain(schedule.due.values())
        .filter_map(|l| l.give_up_at())
        .min();
    let budget = first_give_up.map_or(IDLE_WAIT, |at| at.saturating_duration_since(now) * 3 / 4);
    now + budget.max(MIN_RENEW_DEADLINE)
}

/// Renews `due` in one statement and applies each lease's outcome.
fn renew_batch(
    shared: &Arc<Shared>,
    store: &dyn Store,
    due: &[Arc<LeaseState>],
    deadline: Instant,
) {
    // One span per statement: its leases' events (renewed, lost) come inside it, each with
    // the lock's name and owner.
    let span = tracing::debug_span!(
        "renew",
        leases = due.len(),
        lock = due.first().map(|l| l.name.as_str()),
        owner = due.first().map(|l| l.owner.as_str()),
    );
    let _entered = span.enter();
    let sent = Instant::now();
    let leases: Vec<_> = due
        .iter()
        .filter_map(|l| {
            l.ttl
                .map(|ttl| (l.name.clone(), l.owner.clone(), l.token, ttl))
        })
        .collect();
    let late = {
        let (shared, due) = (Arc::clone(shared), due.to_vec());
        Box::new(move |renewed: Vec<bool>| apply_late(&shared, &due, &renewed, sent))
    };
    let outcome = store.renew(store.deadline(Some(deadline)), leases, late);
    let mut schedule = shared.schedule.lock();
    schedule.in_flight.clear();
    shared.flight_done.notify_all();
    for (index, lease) in due.iter().enumerate() {
        if lease.is_finished() {
            // Released while the statement ran.
            continue;
        }
        match &outcome {
            Ok(renewed) if renewed.get(index).copied().unwrap_or(false) => {
                if lease.is_lost() {
                    // Renewed too late: the holder has already been told it may not
                    // hold the lock. Stop renewing; the guard's release clears the row.
                    lease.declare_lost(
                        LossCause::Expired,
                        "the lease could not be renewed before it ran out".to_owned(),
                    );
                    continue;
                }
                lease.extended(sent);
                lease.backoff.store(0, Ordering::SeqCst);
                schedule.schedule(Arc::clone(lease), sent + period(lease));
                observe::renewal(&lease.name, true);
                tracing::trace!(lock = %lease.name, owner = %lease.owner, token = lease.token, "lease renewed");
            }
            Ok(_) => lease.declare_lost(
                LossCause::Taken,
                "the renewal found another owner or token, or an expired lease".to_owned(),
            ),
            Err(err) if err.failure == Failure::Transient => {
                observe::renewal(&lease.name, false);
                let backoff = (Duration::from_nanos(lease.backoff.load(Ordering::SeqCst)) * 2)
                    .clamp(Duration::from_millis(50), Duration::from_millis(500));
                lease.backoff.store(
                    u64::try_from(backoff.as_nanos()).unwrap_or(u64::MAX),
                    Ordering::SeqCst,
                );
                schedule.schedule(Arc::clone(lease), Instant::now() + backoff);
                tracing::debug!(lock = %lease.name, "renewal failed, retrying: {}", err.error);
            }
            Err(err) => {
                observe::renewal(&lease.name, false);
                lease.declare_lost(
                    LossCause::Failed,
                    format!("the renewal failed: {}", err.error),
                );
            }
        }
    }
}

/// A renewal statement abandoned at its deadline answered after all: the leases it renewed
/// are extended from its send time, unless they were lost or released meanwhile (a lease
/// once declared lost stays lost: the holder has been told).
fn apply_late(shared: &Shared, due: &[Arc<LeaseState>], renewed: &[bool], sent: Instant) {
    let mut schedule = shared.schedule.lock();
    for (lease, _) in due
        .iter()
        .zip(renewed)
        .filter(|(lease, ok)| **ok && !lease.is_finished() && !lease.is_lost())
    {
        lease.extended(sent);
        let next = sent + period(lease);
        // Scheduled for a retry sooner than that: the retry is not needed any more. In
        // flight (not scheduled): the statement running now schedules it.
        let at = lease.renew_at.load(Ordering::SeqCst);
        if at != u64::MAX && at < to_nanos(next) {
            schedule.schedule(Arc::clone(lease), next);
        }
        observe::renewal(&lease.name, true);
        tracing::debug!(lock = %lease.name, "a renewal that answered after its deadline counts");
    }
}

fn watch_loop(shared: &Shared) {
    let mut schedule = shared.schedule.lock();
    while !shared.shutdown.load(Ordering::SeqCst) {
        let now = Instant::now();
        let mut next = now + IDLE_WAIT;
        for lease in schedule.due.values().chain(&schedule.in_flight) {
            if lease.is_finished() || lease.lost.load(Ordering::SeqCst) {
                continue;
            }
            match lease.give_up_at() {
                Some(at) if at <= now => lease.declare_lost(
                    LossCause::Expired,
                    "the lease could not be renewed before it ran out".to_owned(),
                ),
                Some(at) => next = next.min(at),
                None => {}
            }
        }
        schedule.watch_wake_at = Some(next);
        shared.watch_wake.wait_until(&mut schedule, next);
        schedule.watch_wake_at = None;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::backend::pool::{LateRenewal, OpError, RenewBatch};
    use crate::backend::{Attempt, Lease, Listener, LockInfo, Migration};
    use crate::config::BackendKind;
    use crate::lease::{LostCallback, LostLock};

    /// Renews what it is given, except names listed; reports each batch's names.
    struct FakeStore {
        refuse: Vec<String>,
        batches: Mutex<mpsc::Sender<Vec<String>>>,
    }

    impl Store for FakeStore {
        fn kind(&self) -> BackendKind {
            BackendKind::Sqlite
        }
        fn statement_timeout(&self) -> Duration {
            Duration::from_secs(5)
        }
        fn renew(
            &self,
            _: Instant,
            leases: RenewBatch,
            _: LateRenewal,
        ) -> Result<Vec<bool>, OpError> {
            let names = leases.iter().map(|(name, ..)| name.clone()).collect();
            let _ = self.batches.lock().send(names);
            Ok(leases
                .iter()
                .map(|(name, ..)| !self.refuse.iter().any(|r| r == name))
                .collect())
        }
        fn migrate(&self, _: Instant) -> Result<Migration, OpError> {
            unimplemented!()
        }
        fn columns(&self, _: Instant) -> Result<Vec<String>, OpError> {
            unimplemented!()
        }
        fn try_acquire(
            &self,
            _: Instant,
            _: &str,
            _: &str,
            _: Option<Duration>,
        ) -> Result<Attempt, OpError> {
            unimplemented!()
        }
        fn try_acquire_permit(
            &self,
            _: Instant,
            _: &crate::backend::Semaphore,
            _: &str,
            _: Option<Duration>,
        ) -> Result<Attempt, OpError> {
            unimplemented!()
        }
        fn release(&self, _: Instant, _: Lease<'_>, _: Option<Duration>) -> Result<bool, OpError> {
            unimplemented!()
        }
        fn verify(&self, _: Instant, _: Lease<'_>) -> Result<bool, OpError> {
            unimplemented!()
        }
        fn list(&self, _: Instant, _: Option<&str>) -> Result<Vec<LockInfo>, OpError> {
            unimplemented!()
        }
        fn force_release(&self, _: Instant, _: &str) -> Result<bool, OpError> {
            unimplemented!()
        }
        fn notify(&self, _: Instant, _: &str) -> Result<(), OpError> {
            unimplemented!()
        }
        fn listener(&self, _: Instant) -> Option<Result<Box<dyn Listener>, OpError>> {
            None
        }
    }

    const TTL: Duration = Duration::from_secs(10);
    const RENEW: Duration = Duration::from_secs(2);

    /// `n` leases acquired a renewal period ago, so all due now; losses are sent on `lost`.
    fn due_leases(n: usize, lost: &mpsc::Sender<String>) -> Vec<Arc<LeaseState>> {
        let sent = Instant::now()
            .checked_sub(TTL - RENEW)
            .expect("the clock is past one period");
        (0..n)
            .map(|i| {
                let lost = Mutex::new(lost.clone());
                let callback: LostCallback = Arc::new(move |l: &LostLock| {
                    let _ = lost.lock().send(l.name.clone());
                });
                Arc::new(LeaseState::new(
                    format!("lease-{i}"),
                    "owner".into(),
                    1,
                    Some(TTL),
                    RENEW,
                    sent,
                    Some(callback),
                ))
            })
            .collect()
    }

    fn renewer(refuse: &[&str]) -> (Renewer, Arc<dyn Store>, mpsc::Receiver<Vec<String>>) {
        let (tx, rx) = mpsc::channel();
        let store: Arc<dyn Store> = Arc::new(FakeStore {
            refuse: refuse.iter().map(|s| s.to_string()).collect(),
            batches: Mutex::new(tx),
        });
        let renewer = Renewer::start(Arc::downgrade(&store)).expect("threads");
        (renewer, store, rx)
    }

    const BOUND: Duration = Duration::from_secs(30);

    /// Whether `condition` holds within [`BOUND`], looking every few milliseconds.
    fn eventually(condition: impl Fn() -> bool) -> bool {
        let until = Instant::now() + BOUND;
        while Instant::now() < until {
            if condition() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Schedules `leases` as due now, under one hold of the schedule's lock, so that the
    /// first tick sees them all.
    fn schedule_now(renewer: &Renewer, leases: &[Arc<LeaseState>]) {
        let now = Instant::now();
        schedule_at(renewer, leases.iter().map(|l| (Arc::clone(l), now)));
    }

    /// Schedules each lease for renewal at its instant, under one hold of the schedule's
    /// lock (as `Renewer::add` does one at a time), so that the first tick sees them all.
    fn schedule_at(
        renewer: &Renewer,
        leases: impl IntoIterator<Item = (Arc<LeaseState>, Instant)>,
    ) {
        let mut schedule = renewer.shared.schedule.lock();
        for (lease, at) in leases {
            schedule.horizon = schedule.horizon.max(period(&lease) / 2);
            schedule.schedule(lease, at);
        }
        renewer.shared.renew_wake.notify_one();
    }

    #[test]
    fn due_leases_are_renewed_in_one_statement() {
        let (renewer, _store, batches) = renewer(&[]);
        let (lost_tx, lost) = mpsc::channel();
        let leases = due_leases(500, &lost_tx);
        schedule_now(&renewer, &leases);
        let batch = batches.recv_timeout(BOUND).expect("a renewal");
        assert_eq!(batch.len(), 500);
        // The outcomes are applied after the statement returns.
        assert!(eventually(
            || renewer.shared.schedule.lock().due.len() == 500
        ));
        assert!(lost.try_recv().is_err());
        for lease in &leases {
            assert!(!lease.is_lost());
        }
    }

    #[test]
    fn leases_due_soon_join_the_statement_of_those_due_now() {
        let (renewer, _store, batches) = renewer(&[]);
        let (lost_tx, _lost) = mpsc::channel();
        let now = Instant::now();
        let period = TTL - RENEW;
        // One due now, one due in a quarter period, one in three quarters. Scheduled at
        // once: added one by one, the first could be renewed alone before the second came.
        let leases = due_leases(3, &lost_tx)
            .into_iter()
            .zip([Duration::ZERO, period / 4, period * 3 / 4])
            .map(|(lease, ahead)| (lease, now + ahead));
        schedule_at(&renewer, leases);
        let batch = batches.recv_timeout(BOUND).expect("a renewal");
        assert_eq!(batch, ["lease-0", "lease-1"]);
    }

    /// A fenced transaction takes its lease off the schedule and the watchdog's view; the
    /// lease is not lost past its deadline meanwhile, and goes back when it ends.
    #[test]
    fn a_fenced_transaction_pauses_renewal_and_loss() {
        let (renewer, _store, batches) = renewer(&[]);
        let (lost_tx, lost) = mpsc::channel();
        let lease = due_leases(1, &lost_tx).remove(0);
        // Due in a moment; its deadline passes while it is paused.
        let lease = Arc::new(LeaseState::new(
            lease.name.clone(),
            lease.owner.clone(),
            1,
            Some(Duration::from_millis(400)),
            Duration::from_millis(200),
            Instant::now(),
            lease.callback.clone(),
        ));
        renewer.add(Arc::clone(&lease), Instant::now());
        let pause = FencePause::new(&lease, Some(&renewer));
        assert!(renewer.shared.schedule.lock().due.is_empty());
        assert!(eventually(|| lease
            .give_up_at()
            .is_some_and(|g| Instant::now() > g)));
        assert!(!lease.is_lost(), "paused: nobody can take the lock");
        assert!(batches.try_recv().is_err(), "renewed while paused");
        // Rolled back: the lease goes back, past its deadline, and is lost.
        drop(pause);
        assert_eq!(lost.recv_timeout(BOUND).expect("a loss"), "lease-0");
        assert!(lease.is_lost());
    }

    #[test]
    fn a_committed_fenced_transaction_reschedules_a_period_after_its_last_renewal() {
        let (renewer, _store, _batches) = renewer(&[]);
        let (lost_tx, _lost) = mpsc::channel();
        let lease = due_leases(1, &lost_tx).remove(0);
        renewer.add(Arc::clone(&lease), Instant::now());
        let mut pause = FencePause::new(&lease, Some(&renewer));
        let sent = Instant::now();
        pause.committed(sent);
        drop(pause);
        let at = lease.renew_at.load(Ordering::SeqCst);
        assert_eq!(at, to_nanos(sent + period(&lease)));
        assert_eq!(renewer.shared.schedule.lock().due.len(), 1);
        assert!(!lease.is_lost());
    }

    #[test]
    fn a_refused_lease_among_many_is_lost_alone() {
        let (renewer, _store, batches) = renewer(&["lease-3"]);
        let (lost_tx, lost) = mpsc::channel();
        let leases = due_leases(20, &lost_tx);
        schedule_now(&renewer, &leases);
        assert_eq!(batches.recv_timeout(BOUND).expect("a renewal").len(), 20);
        assert_eq!(lost.recv_timeout(BOUND).expect("a loss"), "lease-3");
        for (i, lease) in leases.iter().enumerate() {
            assert_eq!(lease.is_lost(), i == 3, "lease-{i}");
        }
        // Only the others stay scheduled.
        assert!(eventually(|| renewer.shared.schedule.lock().due.len() == 19));
        let schedule = renewer.shared.schedule.lock();
        assert!(schedule.due.values().all(|l| l.name != "lease-3"));
    }
}
