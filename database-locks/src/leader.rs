//! Leader election: a campaign that keeps trying to hold one lock, and says who leads.
//!
//! Nothing new underneath: a candidate waits in the lock's acquisition loop (the name's
//! queue, PostgreSQL's `NOTIFY`, one poll per retry period elsewhere), the leader's term is
//! a held [`LockGuard`](crate::LockGuard) (renewal, loss detection before the lease ends, release, the
//! fencing token), and a term ends when its guard is lost, released by a step-down, or
//! released when the campaign stops. See DESIGN.md, "Leader election".

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use diesel::result::Error as DieselError;
use parking_lot::{Condvar, Mutex};

use crate::backend::LockConnection;
use crate::builder::{default_margin, validate_lock_name, validate_owner, validate_ttl};
use crate::error::{Error, Result};
use crate::lease::LostLock;
use crate::locks::{default_owner, Locks};
use crate::{DEFAULT_RETRY, MAX_TTL};

mod campaign;

use campaign::{Plan, Shared, State};

type Elected = Arc<dyn Fn(&Term) + Send + Sync>;
type Demoted = Arc<dyn Fn(&Demotion) + Send + Sync>;

/// One term of leadership: one acquisition of the election's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Term {
    /// The election's name (the lock's name).
    pub name: String,
    /// The term's fencing token, the epoch: every acquisition of the row bumps it, so a
    /// later term always has a larger token than an earlier one, whoever led them. 0 when
    /// locking is disabled ([`Locks::set_enabled`]).
    pub token: u64,
    /// The owner id this candidate campaigns as.
    pub locked_by: String,
    /// When this process learned it was elected.
    pub elected_at: Instant,
}

/// The end of a term, as [`LeaderBuilder::on_demoted`] receives it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Demotion {
    /// The term that ended.
    pub term: Term,
    /// Why it ended.
    pub cause: DemotionCause,
}

/// Why a term ended.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum DemotionCause {
    /// The lease was lost: it could not be renewed in time ([`LossCause::Expired`]), or the
    /// row was taken or force-released ([`LossCause::Taken`]). Reported before the lease
    /// ends by the database's clock, except after `Taken` (someone else has it already).
    ///
    /// [`LossCause::Expired`]: crate::LossCause::Expired
    /// [`LossCause::Taken`]: crate::LossCause::Taken
    Lost(LostLock),
    /// [`Leader::step_down`]: the lock is released right after the demotion callback
    /// returns, and this candidate stays out for [`LeaderBuilder::step_down_pause`].
    SteppedDown,
    /// [`Leader::stop`] or the [`Leader`] dropped: released, no more campaigning.
    Stopped,
}

/// Options of one campaign, made by [`Locks::leader`] or [`leader`](crate::leader()).
///
/// | method | default |
/// |---|---|
/// | [`lock_ttl`](Self::lock_ttl) | the handle's default ttl (`DATABASE_LOCKS_DEFAULT_TTL`, 10 s); must be finite |
/// | [`lock_ttl_renew`](Self::lock_ttl_renew) | as for a lock: 2 s, at most half the ttl |
/// | [`locked_by`](Self::locked_by) | unique per campaign |
/// | [`retry`](Self::retry) | 500 ms, the candidates' polling period |
/// | [`step_down_pause`](Self::step_down_pause) | the ttl |
/// | [`on_elected`](Self::on_elected), [`on_demoted`](Self::on_demoted) | none |
#[must_use = "a leader builder does nothing until `start`"]
pub struct LeaderBuilder {
    handle: Result<Locks>,
    name: String,
    lock_ttl: Option<Duration>,
    lock_ttl_renew: Option<Duration>,
    locked_by: Option<String>,
    retry: Duration,
    step_down_pause: Option<Duration>,
    on_elected: Option<Elected>,
    on_demoted: Option<Demoted>,
}

impl fmt::Debug for LeaderBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaderBuilder")
            .field("name", &self.name)
            .field("lock_ttl", &self.lock_ttl)
            .field("lock_ttl_renew", &self.lock_ttl_renew)
            .field("locked_by", &self.locked_by)
            .field("retry", &self.retry)
            .field("step_down_pause", &self.step_down_pause)
            .finish_non_exhaustive()
    }
}

impl LeaderBuilder {
    pub(crate) fn new(handle: Result<Locks>, name: String) -> Self {
        LeaderBuilder {
            handle,
            name,
            lock_ttl: None,
            lock_ttl_renew: None,
            locked_by: None,
            retry: DEFAULT_RETRY,
            step_down_pause: None,
            on_elected: None,
            on_demoted: None,
        }
    }

    /// The leader's lease: a leader that stops renewing (crashed, cut off) is replaced
    /// about this long after its last renewal. It must be finite.
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = Some(ttl);
        self
    }

    /// How long before the lease ends it is renewed, as [`LockBuilder::lock_ttl_renew`].
    /// A leader that cannot renew is demoted a quarter of this (at most 500 ms) before its
    /// lease ends.
    ///
    /// [`LockBuilder::lock_ttl_renew`]: crate::LockBuilder::lock_ttl_renew
    pub fn lock_ttl_renew(mut self, margin: Duration) -> Self {
        self.lock_ttl_renew = Some(margin);
        self
    }

    /// The owner id this candidate writes into the row. Each candidate needs its own: a
    /// candidate with the leader's owner id would take the row over (see
    /// [`LockBuilder::locked_by`]). Default: unique per campaign.
    ///
    /// [`LockBuilder::locked_by`]: crate::LockBuilder::locked_by
    pub fn locked_by(mut self, owner: impl Into<String>) -> Self {
        self.locked_by = Some(owner.into());
        self
    }

    /// How often a candidate asks the database whether the lock is free (default 500 ms),
    /// when nothing wakes it sooner: a release through the same handle, the leader's
    /// known expiry, or (PostgreSQL) a `NOTIFY` from the release. Must be positive.
    pub fn retry(mut self, retry: Duration) -> Self {
        self.retry = retry;
        self
    }

    /// After [`Leader::step_down`], how long this candidate stays out before campaigning
    /// again, so that another candidate gets the lock (default: the ttl). Zero campaigns
    /// again at once: then this candidate may well be elected again.
    pub fn step_down_pause(mut self, pause: Duration) -> Self {
        self.step_down_pause = Some(pause);
        self
    }

    /// Called when this candidate is elected, with the new term.
    ///
    /// Callbacks run on the campaign's thread, one at a time, in order: elected, demoted,
    /// elected, ... never two "elected" without a "demoted" between. Keep them short
    /// (start the leader's work elsewhere): while one runs, the campaign waits.
    pub fn on_elected(mut self, callback: impl Fn(&Term) + Send + Sync + 'static) -> Self {
        self.on_elected = Some(Arc::new(callback));
        self
    }

    /// Called when a term ends, with the cause. [`Leader::is_leader`] is already false.
    /// After a step-down or a stop the lock is released only once this returns, so the
    /// next leader cannot be elected while this one is still stopping its work. After a
    /// loss it comes before the lease ends by the database's clock (but after
    /// [`LossCause::Taken`](crate::LossCause::Taken), someone else may lead already).
    pub fn on_demoted(mut self, callback: impl Fn(&Demotion) + Send + Sync + 'static) -> Self {
        self.on_demoted = Some(Arc::new(callback));
        self
    }

    /// Checks the options (a typed [`Error::InvalidInput`] before any statement is sent)
    /// and starts campaigning on a thread of the crate (`database-locks-leader`, one per
    /// campaign). The campaign runs until [`Leader::stop`] or the [`Leader`] is dropped.
    pub fn start(self) -> Result<Leader> {
        let locks = self.handle?;
        validate_lock_name(&self.name)?;
        if let Some(owner) = &self.locked_by {
            validate_owner(owner)?;
        }
        let settings = locks.settings();
        let ttl = self.lock_ttl.or(settings.default_ttl).ok_or_else(|| {
            Error::invalid(
                "lock_ttl",
                "a leader needs a lease that expires (the handle's default ttl is none): \
                 set lock_ttl",
            )
        })?;
        let ttl_renew = self
            .lock_ttl_renew
            .unwrap_or_else(|| default_margin(settings.default_ttl_renew, Some(ttl)));
        validate_ttl(Some(ttl), true, ttl_renew)?;
        if self.retry.is_zero() {
            return Err(Error::invalid(
                "retry",
                "a candidate's polling period must be positive",
            ));
        }
        let pause = self.step_down_pause.unwrap_or(ttl);
        if pause > MAX_TTL {
            return Err(Error::invalid(
                "step_down_pause",
                format!("{pause:?} is longer than the maximum {MAX_TTL:?}"),
            ));
        }
        let plan = Plan {
            locks,
            owner: self.locked_by.unwrap_or_else(default_owner),
            ttl,
            ttl_renew,
            retry: self.retry,
            pause,
            on_elected: self.on_elected,
            on_demoted: self.on_demoted,
        };
        let shared = Arc::new(Shared {
            name: self.name,
            owner: plan.owner.clone(),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let campaign = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("database-locks-leader".into())
            .spawn(move || campaign.run(plan))
            .map_err(|source| Error::Thread {
                thread: "leader election",
                source,
            })?;
        Ok(Leader {
            shared,
            campaign: Mutex::new(Some(thread)),
        })
    }
}

/// A running campaign. It says whether this process leads, waits for leadership, steps
/// down, and runs fenced transactions of the current term. Dropping it stops the
/// campaign (as [`stop`](Self::stop)). `Send + Sync`: share it in an `Arc`.
///
/// ```no_run
/// # fn main() -> Result<(), database_locks::Error> {
/// use std::time::Duration;
///
/// let leader = database_locks::leader("scheduler")
///     .lock_ttl(Duration::from_secs(10))
///     .on_elected(|term| println!("leading, term {}", term.token))
///     .on_demoted(|demotion| println!("no longer leading: {:?}", demotion.cause))
///     .start()?;
/// if let Some(term) = leader.wait_elected(Duration::from_secs(60)) {
///     // ... while leader.is_leader(): do the work only one process may do ...
/// #   let _ = term;
/// }
/// leader.stop(); // releases at once if leading; dropping it does too
/// # Ok(()) }
/// ```
pub struct Leader {
    shared: Arc<Shared>,
    campaign: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for Leader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leader")
            .field("name", &self.shared.name)
            .field("locked_by", &self.shared.owner)
            .field("term", &self.term())
            .finish()
    }
}

impl Leader {
    /// The election's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Whether this process leads now: elected, and the term's lease neither lost nor
    /// past its local deadline, nor being stepped down from. It turns false before the
    /// lease ends by the database's clock.
    pub fn is_leader(&self) -> bool {
        self.shared.state.lock().leading().is_some()
    }

    /// The current term while this process leads.
    pub fn term(&self) -> Option<Term> {
        self.shared.state.lock().leading().map(|c| c.term.clone())
    }

    /// The current term's fencing token while this process leads (see [`Term::token`]).
    pub fn token(&self) -> Option<u64> {
        self.term().map(|t| t.token)
    }

    /// Blocks until this process leads, for at most `timeout`; the term, or `None` at the
    /// timeout or when the campaign has stopped.
    pub fn wait_elected(&self, timeout: Duration) -> Option<Term> {
        let deadline = Instant::now().checked_add(timeout);
        let mut state = self.shared.state.lock();
        loop {
            if let Some(current) = state.leading() {
                return Some(current.term.clone());
            }
            if state.ended {
                return None;
            }
            // Wakes at each change of state; the local deadline of a term is checked on
            // the next look.
            match deadline {
                Some(deadline) => {
                    if self
                        .shared
                        .changed
                        .wait_until(&mut state, deadline)
                        .timed_out()
                    {
                        return state.leading().map(|c| c.term.clone());
                    }
                }
                None => self.shared.changed.wait(&mut state),
            }
        }
    }

    /// Completes when this process leads, with the term, or with `None` when the campaign
    /// has stopped. Woken by the campaign's thread: it needs no particular executor, and
    /// dropping it leaves nothing behind.
    pub fn elected(&self) -> impl Future<Output = Option<Term>> + Send + 'static {
        ElectedFuture {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Ends the current term, if any: [`is_leader`](Self::is_leader) turns false at once,
    /// the campaign's thread calls `on_demoted` ([`DemotionCause::SteppedDown`]) and then
    /// releases the lock, which wakes the other candidates (through the handle's queue and,
    /// on PostgreSQL, `NOTIFY`; elsewhere they see it at their next poll). This candidate
    /// then stays out for [`LeaderBuilder::step_down_pause`] before campaigning again.
    /// Returns at once; returns whether there was a term to end.
    pub fn step_down(&self) -> bool {
        let mut state = self.shared.state.lock();
        if state.leading().is_none() {
            return false;
        }
        state.step_down = true;
        self.shared.changed.notify_all();
        state.wake_campaign();
        true
    }

    /// Stops campaigning. A current term ends with [`DemotionCause::Stopped`] (`on_demoted`
    /// runs, then the lock is released). Blocks until the campaign's thread has finished,
    /// except when called from the campaign's own callbacks or from inside
    /// [`transaction`](Self::transaction) of this leader, where it only asks (the release
    /// then follows the transaction).
    pub fn stop(&self) {
        {
            let mut state = self.shared.state.lock();
            state.stop = true;
            state.wake_campaign();
            self.shared.changed.notify_all();
        }
        let Some(thread) = self.campaign.lock().take() else {
            return;
        };
        let own_thread = thread.thread().id() == std::thread::current().id();
        if own_thread || IN_TRANSACTION.with(|t| t.borrow().contains(&self.shared.id())) {
            return;
        }
        if thread.join().is_err() {
            tracing::error!(election = %self.shared.name, "the campaign's thread panicked");
        }
    }

    /// Runs `f` in a fenced transaction of the current term (see
    /// [`LockGuard::transaction`](crate::LockGuard::transaction)): it commits only while this term's lease holds, so a
    /// leader that was replaced cannot commit, however long it paused. Fails with
    /// [`Error::NotLeader`] (nothing sent) when this process does not lead, and with
    /// [`Error::Fenced`] when the term ended meanwhile. The term's release waits for the
    /// transaction to end.
    pub fn transaction<C, T, E, F>(&self, conn: &mut C, f: F) -> Result<T, E>
    where
        C: LockConnection,
        F: FnOnce(&mut C) -> Result<T, E>,
        E: From<Error> + From<DieselError>,
    {
        let guard = match self.shared.state.lock().leading() {
            Some(current) => Arc::clone(&current.guard),
            None => {
                return Err(Error::NotLeader {
                    name: self.shared.name.clone(),
                }
                .into())
            }
        };
        let id = self.shared.id();
        IN_TRANSACTION.with(|t| t.borrow_mut().push(id));
        let outcome = guard.transaction(conn, f);
        IN_TRANSACTION.with(|t| {
            let mut ids = t.borrow_mut();
            if let Some(at) = ids.iter().rposition(|&i| i == id) {
                ids.remove(at);
            }
        });
        drop(guard);
        // A demotion may be waiting for this transaction to end before it releases.
        self.shared.state.lock().wake_campaign();
        outcome
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.stop();
    }
}

thread_local! {
    /// The campaigns whose fenced transaction this thread is inside (`stop` must not wait
    /// for a release that waits for the transaction).
    static IN_TRANSACTION: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// The future of [`Leader::elected`].
struct ElectedFuture {
    shared: Arc<Shared>,
}

impl Future for ElectedFuture {
    type Output = Option<Term>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Term>> {
        let mut state = self.shared.state.lock();
        if let Some(current) = state.leading() {
            return Poll::Ready(Some(current.term.clone()));
        }
        if state.ended {
            return Poll::Ready(None);
        }
        if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            state.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

const _: () = {
    const fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<Leader>();
};

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::campaign::Unpark;
    use super::*;
    use crate::Config;
    use std::pin::pin;
    use std::task::Waker;

    const SEC: Duration = Duration::from_secs(1);

    fn handle(file: &std::path::Path) -> Locks {
        Locks::new(Config::new(file.display().to_string())).expect("handle")
    }

    #[test]
    fn bad_options_are_refused_before_any_statement() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("locks.sqlite3");
        let locks = handle(&file);
        let cases: Vec<(&str, LeaderBuilder)> = vec![
            ("lock name", locks.leader("")),
            ("lock name", locks.leader("x".repeat(256))),
            // A semaphore's rows are named with U+241F: no election can take one.
            ("lock name", locks.leader("reports\u{241F}1")),
            ("locked_by", locks.leader("a").locked_by("")),
            ("lock_ttl", locks.leader("a").lock_ttl(Duration::ZERO)),
            ("lock_ttl", locks.leader("a").lock_ttl(MAX_TTL + SEC)),
            (
                "lock_ttl_renew",
                locks.leader("a").lock_ttl(SEC).lock_ttl_renew(SEC),
            ),
            ("retry", locks.leader("a").retry(Duration::ZERO)),
            (
                "step_down_pause",
                locks.leader("a").step_down_pause(MAX_TTL + SEC),
            ),
        ];
        for (what, builder) in cases {
            match builder.start() {
                Err(Error::InvalidInput { what: got, .. }) => assert_eq!(got, what),
                other => panic!("{what}: {other:?}"),
            }
        }
        locks.set_default_ttl(None);
        match locks.leader("a").start() {
            Err(Error::InvalidInput { what, .. }) => assert_eq!(what, "lock_ttl"),
            other => panic!("{other:?}"),
        }
        // Nothing was sent: the database file was never even created.
        assert!(!file.exists(), "a refused campaign touched the database");
    }

    #[derive(Debug, Clone, PartialEq)]
    enum Seen {
        Elected(u64),
        Demoted(u64, &'static str),
    }

    type Log = Arc<std::sync::Mutex<Vec<(usize, Seen)>>>;

    fn candidate(locks: &Locks, name: &str, id: usize, log: &Log) -> Leader {
        let (elected, demoted) = (Arc::clone(log), Arc::clone(log));
        locks
            .leader(name)
            .lock_ttl(2 * SEC)
            .retry(Duration::from_millis(50))
            .step_down_pause(Duration::from_millis(300))
            .on_elected(move |term| {
                elected
                    .lock()
                    .unwrap()
                    .push((id, Seen::Elected(term.token)))
            })
            .on_demoted(move |d| {
                let cause = match &d.cause {
                    DemotionCause::Lost(_) => "lost",
                    DemotionCause::SteppedDown => "stepped down",
                    DemotionCause::Stopped => "stopped",
                };
                demoted
                    .lock()
                    .unwrap()
                    .push((id, Seen::Demoted(d.term.token, cause)));
            })
            .start()
            .expect("campaign")
    }

    fn wait_for(log: &Log, what: impl Fn(&[(usize, Seen)]) -> bool) {
        let deadline = Instant::now() + 30 * SEC;
        while !what(&log.lock().unwrap()) {
            assert!(
                Instant::now() < deadline,
                "waited 30 s; saw {:?}",
                log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn terms_alternate_and_every_cause_is_reported_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("locks.sqlite3");
        let log: Log = Arc::default();
        // Two handles: the hand-off goes through the database, as between processes.
        let (la, lb) = (handle(&file), handle(&file));
        let a = candidate(&la, "election", 0, &log);
        let first = a.wait_elected(30 * SEC).expect("a elected");
        assert!(a.is_leader());
        assert_eq!(a.token(), Some(first.token));
        let b = candidate(&lb, "election", 1, &log);
        assert!(b.wait_elected(Duration::from_millis(200)).is_none());
        assert!(!b.is_leader(), "two leaders");

        assert!(a.step_down());
        assert!(!a.is_leader(), "still leading right after step_down");
        let second = b
            .wait_elected(30 * SEC)
            .expect("b elected after a stepped down");
        assert!(second.token > first.token);

        // A candidate that is not leading stops without an event.
        a.stop();
        assert!(a.wait_elected(SEC).is_none(), "a stopped campaign says so");

        // A loss: the row is released behind b's back (an operator's force release); its
        // next renewal finds out, and b campaigns again. (With another candidate waiting,
        // it could be elected before b's renewal: a force release is what fencing is for.)
        assert!(la.force_release("election").unwrap());
        wait_for(&log, |l| {
            l.iter().any(|e| e.1 == Seen::Demoted(second.token, "lost"))
        });
        let third = b.wait_elected(30 * SEC).expect("b elected again");
        assert!(third.token > second.token);
        drop(b);

        let log = log.lock().unwrap().clone();
        for id in [0, 1] {
            let mine: Vec<&Seen> = log.iter().filter(|e| e.0 == id).map(|e| &e.1).collect();
            for (i, seen) in mine.iter().enumerate() {
                match (i % 2, seen) {
                    (0, Seen::Elected(_)) => {}
                    (1, Seen::Demoted(token, _)) => {
                        assert_eq!(mine[i - 1], &Seen::Elected(*token), "{log:?}")
                    }
                    _ => panic!("candidate {id} out of order: {log:?}"),
                }
            }
            assert!(matches!(mine.last(), Some(Seen::Demoted(..))), "{log:?}");
        }
        // Across candidates: a term begins only after the previous one was announced over,
        // with a larger token.
        let mut leading: Option<u64> = None;
        let mut last = 0;
        for (_, seen) in &log {
            match *seen {
                Seen::Elected(token) => {
                    assert!(leading.is_none(), "two terms at once: {log:?}");
                    assert!(token > last, "{log:?}");
                    (leading, last) = (Some(token), token);
                }
                Seen::Demoted(token, _) => {
                    assert_eq!(leading, Some(token), "{log:?}");
                    leading = None;
                }
            }
        }
        let causes: Vec<&str> = log
            .iter()
            .filter_map(|e| match e.1 {
                Seen::Demoted(_, cause) => Some(cause),
                _ => None,
            })
            .collect();
        assert_eq!(causes, ["stepped down", "lost", "stopped"], "{log:?}");
    }

    #[test]
    fn the_async_wait_and_fenced_transactions_follow_the_term() {
        use diesel::Connection;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("locks.sqlite3");
        let locks = handle(&file);
        let leader = locks
            .leader("fenced")
            .lock_ttl(2 * SEC)
            .step_down_pause(60 * SEC)
            .start()
            .expect("campaign");
        let term = block_on(leader.elected()).expect("elected");
        let mut conn = diesel::SqliteConnection::establish(&file.display().to_string()).unwrap();
        let ran: Result<u64, Failed> = leader.transaction(&mut conn, |_| Ok(term.token));
        assert_eq!(ran.unwrap(), term.token);
        leader.step_down();
        let refused: Result<(), Failed> = leader.transaction(&mut conn, |_| Ok(()));
        assert!(
            matches!(refused, Err(Failed::Lock(Error::NotLeader { .. }))),
            "{refused:?}"
        );
        leader.stop();
        assert_eq!(block_on(leader.elected()), None);
    }

    #[derive(Debug)]
    enum Failed {
        Lock(Error),
        #[allow(dead_code)]
        Db(DieselError),
    }

    impl From<Error> for Failed {
        fn from(e: Error) -> Self {
            Failed::Lock(e)
        }
    }

    impl From<DieselError> for Failed {
        fn from(e: DieselError) -> Self {
            Failed::Db(e)
        }
    }

    /// A minimal executor: the future's waker unparks this thread.
    fn block_on<F: Future>(future: F) -> F::Output {
        let mut future = pin!(future);
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        loop {
            if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                return out;
            }
            std::thread::park();
        }
    }
}
