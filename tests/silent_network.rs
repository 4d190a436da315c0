//! Silent networks (issue 11): connections that stop answering without an error, as behind
//! a NAT or load balancer that forgot the flow, a cut cable or a dropped firewall rule. A
//! [`FaultProxy`] between a handle and its server black-holes them; the database itself is
//! always read through a direct connection of its own ([`read_row`]), never through the
//! proxy, and times are the database's absolute `expires_at`, not "time left" readings.
//!
//! Every call that could block runs on a thread of its own under a limit ([`within`]), so a
//! test that finds a hang fails with the figure instead of hanging. Figures are printed:
//! `cargo test --all-features --test silent_network -- --nocapture`.
//!
//! These tests define "done" for the lead's change (`Config::statement_timeout`, renewals
//! that abandon a silent connection, releases handed to a background thread). They compile
//! against today's API: [`statement_timeout`] is the one place to change when the setter
//! lands.

mod common;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{unique_name, Db};
use database_locks::{Config, Error, LockGuard, Locks, LostLock};
use database_locks_testkit::{host_port, read_row, FaultProxy, RawRow};

/// `config` with statements bounded by `limit`.
fn statement_timeout(config: Config, limit: Duration) -> Config {
    config.statement_timeout(limit)
}

/// The lease of the renewal scenarios: renewed every 2 s, given up 0.5 s before its end.
const TTL: Duration = Duration::from_secs(4);
const TTL_RENEW: Duration = Duration::from_secs(2);
const PERIOD: Duration = Duration::from_secs(2);

/// The statement and connect deadline of the scenarios that bound a blocking call.
const DEADLINE: Duration = Duration::from_secs(1);

/// How long a call that today blocks is given before the test calls it a hang: longer
/// than today's worst bounded figure (3 release attempts x 10 s connect timeout).
const HANG: Duration = Duration::from_secs(35);

/// A proxy in front of `db`'s server.
fn proxy_for(db: &Db) -> FaultProxy {
    let upstream = host_port(&db.url).unwrap_or_else(|| panic!("no host:port in {}", db.url));
    FaultProxy::start(&upstream)
}

/// Declared after the guards and handles of a test, so dropped before them: forwards new
/// connections and closes every old one, so that no teardown (and no thread left behind
/// by a failed bound) waits on a black hole.
struct Heal<'a>(&'a FaultProxy);

impl Drop for Heal<'_> {
    fn drop(&mut self) {
        self.0.pass();
        self.0.reset();
    }
}

/// Runs `f` on a thread of its own: its value and how long it took, or `Err` with the
/// time waited when it has not returned after `limit` (the thread is left behind; [`Heal`]
/// unblocks it). A panic in `f` fails the test.
fn within<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<(T, Duration), Duration> {
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    std::thread::spawn(move || {
        let value = f();
        let _ = tx.send((value, started.elapsed()));
    });
    match rx.recv_timeout(limit) {
        Ok(done) => Ok(done),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(started.elapsed()),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the call panicked"),
    }
}

/// `name`'s row, read directly.
fn row(db: &Db, name: &str) -> RawRow {
    read_row(db.kind, &db.url, name)
        .unwrap_or_else(|e| panic!("reading {name} on {}: {e}", db.url))
        .unwrap_or_else(|| panic!("no row for {name}"))
}

/// A `lost_lock_cb` report, with the row as the database showed it from inside the callback.
#[derive(Debug)]
struct Loss {
    name: String,
    at: Instant,
    reason: String,
    row: Result<Option<RawRow>, String>,
}

/// Records every loss of the locks it is given to; the default callback would end the
/// test process.
#[derive(Clone, Default)]
struct Losses(Arc<Mutex<Vec<Loss>>>);

impl Losses {
    fn callback(&self, db: &Db) -> impl Fn(&LostLock) + Send + Sync + 'static {
        let (kind, url, list) = (db.kind, db.url.clone(), Arc::clone(&self.0));
        move |lost: &LostLock| {
            let at = Instant::now();
            let row = read_row(kind, &url, &lost.name);
            list.lock().unwrap().push(Loss {
                name: lost.name.clone(),
                at,
                reason: lost.reason.clone(),
                row,
            });
        }
    }

    fn taken(&self) -> Vec<Loss> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    fn is_empty(&self) -> bool {
        self.0.lock().unwrap().is_empty()
    }
}

/// A handle on `db` through `proxy`.
fn proxied(db: &Db, proxy: &FaultProxy, config: impl FnOnce(Config) -> Config) -> Locks {
    let config = config(Config::new(proxy.url_for(&db.url)).transaction_pooling(db.pooled));
    Locks::new(config).expect("a handle through the proxy")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn ms_between(later_us: i64, earlier_us: i64) -> f64 {
    (later_us - earlier_us) as f64 / 1000.0
}

/// Acquires with the renewal scenarios' lease, giving up (failing the test) after 15 s.
fn take(locks: &Locks, name: &str, losses: &Losses, db: &Db) -> (LockGuard, Duration) {
    let builder = locks
        .lock(name)
        .lock_ttl(Some(TTL))
        .lock_ttl_renew(TTL_RENEW)
        .lost_lock_cb(losses.callback(db));
    match within(Duration::from_secs(15), move || builder.acquire()) {
        Ok((Ok(guard), took)) => (guard, took),
        Ok((Err(e), _)) => panic!("acquiring {name}: {e}"),
        Err(waited) => panic!("acquiring {name} did not return within {waited:?}"),
    }
}

/// (a) A black hole on the connections open now (the handle's pooled ones) must not stop
/// renewals: neither the lock held then (A) nor one taken afterwards over a fresh
/// connection (C) is lost, and the database shows both still held, by the same owner and
/// token, with an `expires_at` later than the one right after each was taken.
fn stale_connections_do_not_stop_renewals(db: &Db) {
    let proxy = proxy_for(db);
    // Two connections at most: an abandoned connection must give its place back.
    let locks = proxied(db, &proxy, |c| {
        statement_timeout(c, DEADLINE)
            .connect_timeout(Duration::from_secs(2))
            .pool_max_size(2)
    });
    let losses = Losses::default();
    let (name_a, name_c) = (unique_name("stale.a"), unique_name("stale.c"));
    let (a, _) = take(&locks, &name_a, &losses, db);
    let a_first = row(db, &name_a);
    let open = proxy.open_connections();
    proxy.blackhole_existing();
    let holed_at = Instant::now();
    let _heal = Heal(&proxy);
    // C is taken at once: its first attempt lands on a stale pooled connection, as an
    // acquisition does after an idle connection was forgotten on the way, and must go on
    // over a fresh one; A's renewals meet the black hole too if their connection was open.
    let (c, took_c) = take(&locks, &name_c, &losses, db);
    let into_hole = holed_at.elapsed();
    assert!(
        proxy.swallowed_bytes() > 0,
        "C's first attempt went to one of the {open} black-holed connection(s)"
    );
    let c_taken = Instant::now();
    let c_first = row(db, &name_c);
    // Held for three renewal periods of C; the outcome is in the rows and the losses.
    let hold_until = c_taken + 3 * PERIOD + Duration::from_millis(500);
    std::thread::sleep(hold_until.saturating_duration_since(Instant::now()));
    let a_last = row(db, &name_a);
    let c_last = row(db, &name_c);
    let lost = losses.taken();
    println!(
        "stale [{:?}]: {open} connection(s) open when black-holed; C taken {:.0} ms after the black hole; \
         C taken in {:.0} ms over {} new connection(s); A expires_at moved {:+.0} ms, C {:+.0} ms; \
         losses: {}",
        db.kind,
        ms(into_hole),
        ms(took_c),
        proxy.accepted().saturating_sub(open as u64),
        ms_between(a_last.expires_at_us.unwrap_or(0), a_first.expires_at_us.unwrap_or(0)),
        ms_between(c_last.expires_at_us.unwrap_or(0), c_first.expires_at_us.unwrap_or(0)),
        lost.iter()
            .map(|l| format!(
                "{} lost {:.0} ms after C was taken ({})",
                if l.name == name_a { "A" } else { "C" },
                ms(l.at.saturating_duration_since(c_taken)),
                l.reason
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    assert!(lost.is_empty(), "reported lost: {lost:?}");
    for (label, guard, first, last) in [("A", &a, &a_first, &a_last), ("C", &c, &c_first, &c_last)]
    {
        assert!(
            !guard.is_lost(),
            "{label}: the guard believes it lost the lock"
        );
        assert_eq!(
            last.locked_by.as_deref(),
            guard.locked_by(),
            "{label}: the owner"
        );
        assert_eq!(Some(last.token as u64), guard.token(), "{label}: the token");
        assert!(
            last.is_held(),
            "{label}: not held by the database's clock: {last:?}"
        );
        assert!(
            last.expires_at_us > first.expires_at_us,
            "{label}: never renewed: expires_at {last:?}, right after acquiring {first:?}"
        );
    }
}

/// (b) With every connection black-holed, the holder is told before its lease ends by the
/// database's clock, and a waiter on a direct connection gets the lock only after that end.
fn blackhole_reports_loss_before_the_lease_ends(db: &Db) {
    let proxy = proxy_for(db);
    let locks = proxied(db, &proxy, |c| {
        statement_timeout(c, DEADLINE).connect_timeout(DEADLINE)
    });
    let losses = Losses::default();
    let name = unique_name("blackhole.loss");
    let (guard, _) = take(&locks, &name, &losses, db);
    let first = row(db, &name);
    proxy.blackhole_all();
    let holed_at = Instant::now();
    let _heal = Heal(&proxy);
    let waiter_ttl = Duration::from_secs(30);
    let (tx, waiter) = mpsc::channel();
    {
        let (direct, name) = (db.locks(), name.clone());
        std::thread::spawn(move || {
            let got = direct
                .lock(&name)
                .lock_ttl(Some(waiter_ttl))
                .retry(Some(Duration::from_millis(50)))
                .timeout(Duration::from_secs(30))
                .lost_lock_cb(|_| {})
                .acquire();
            let _ = tx.send((got, Instant::now()));
        });
    }
    let reported = common::eventually(TTL + Duration::from_secs(5), || !losses.is_empty());
    let lost = losses.taken();
    let (got, got_at) = waiter
        .recv_timeout(Duration::from_secs(60))
        .expect("the waiter returns");
    let waiter_guard = got.expect("the waiter acquires once the lease has ended");
    let after = row(db, &name);
    assert!(
        reported,
        "no loss reported within {:?}",
        TTL + Duration::from_secs(5)
    );
    let loss = &lost[0];
    let seen = loss
        .row
        .as_ref()
        .expect("the row, read from inside lost_lock_cb")
        .as_ref()
        .expect("a row");
    let left_ms = ms_between(seen.expires_at_us.unwrap_or(i64::MIN), seen.now_us);
    // When the waiter's lease began by the database's clock: its expires_at minus its ttl.
    let waiter_began_us = after.expires_at_us.unwrap() - waiter_ttl.as_micros() as i64;
    let old_end_us = seen.expires_at_us.unwrap_or(i64::MAX);
    println!(
        "blackhole loss [{:?}]: lost {:.0} ms after the black hole ({}), with {left_ms:.0} ms of \
         the lease left by the database's clock; the direct waiter got it {:.0} ms after the \
         old lease ended (database clock), {:.0} ms after the loss report (client clock)",
        db.kind,
        ms(loss.at.saturating_duration_since(holed_at)),
        loss.reason,
        ms_between(waiter_began_us, old_end_us),
        ms(got_at.saturating_duration_since(loss.at)),
    );
    assert_eq!(seen.locked_by.as_deref(), guard.locked_by(), "{seen:?}");
    assert_eq!(seen.token, first.token, "{seen:?}");
    assert!(
        seen.expires_at_us.is_some_and(|at| at > seen.now_us),
        "reported lost only after the lease ended by the database's clock: {seen:?}"
    );
    assert!(guard.is_lost());
    // 1 ms for the float seconds the ttl is bound as.
    assert!(
        waiter_began_us + 1000 > old_end_us,
        "the waiter got in before the old lease ended: began {waiter_began_us} us, old end {old_end_us} us"
    );
    assert!(after.token > first.token);
    drop(waiter_guard);
}

/// (b, continued) Once the network is back, the same handle takes a new lock and keeps
/// it: nothing of the handle (its renewal thread, its pool) is left stuck in the black hole.
fn renewals_resume_after_a_black_hole(db: &Db) {
    let proxy = proxy_for(db);
    let locks = proxied(db, &proxy, |c| {
        statement_timeout(c, DEADLINE)
            .connect_timeout(Duration::from_secs(2))
            .pool_max_size(2)
    });
    let losses = Losses::default();
    let (name_a, name_b) = (unique_name("resume.a"), unique_name("resume.b"));
    let (a, _) = take(&locks, &name_a, &losses, db);
    proxy.blackhole_all();
    let _heal = Heal(&proxy);
    let reported = common::eventually(TTL + Duration::from_secs(5), || !losses.is_empty());
    assert!(reported, "A: no loss reported in the black hole");
    let lost_a = losses.taken();
    proxy.pass();
    let (b, took_b) = take(&locks, &name_b, &losses, db);
    let b_taken = Instant::now();
    let b_first = row(db, &name_b);
    let hold_until = b_taken + 3 * PERIOD + Duration::from_millis(500);
    std::thread::sleep(hold_until.saturating_duration_since(Instant::now()));
    let b_last = row(db, &name_b);
    let lost = losses.taken();
    println!(
        "resume [{:?}]: A lost in the black hole ({}); after pass() B taken in {:.0} ms; B \
         expires_at moved {:+.0} ms over {:.1} s; losses of B: {}",
        db.kind,
        lost_a[0].reason,
        ms(took_b),
        ms_between(
            b_last.expires_at_us.unwrap_or(0),
            b_first.expires_at_us.unwrap_or(0)
        ),
        (hold_until - b_taken).as_secs_f64(),
        lost.iter()
            .map(|l| format!(
                "{:.0} ms after B was taken ({})",
                ms(l.at.saturating_duration_since(b_taken)),
                l.reason
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    assert!(lost.is_empty(), "reported lost: {lost:?}");
    assert!(!b.is_lost());
    assert!(a.is_lost());
    assert_eq!(b_last.locked_by.as_deref(), b.locked_by());
    assert_eq!(Some(b_last.token as u64), b.token());
    assert!(
        b_last.is_held(),
        "B not held by the database's clock: {b_last:?}"
    );
    assert!(
        b_last.expires_at_us > b_first.expires_at_us,
        "B never renewed: {b_last:?}, right after acquiring {b_first:?}"
    );
}

/// Takes a lock through the proxy with a 30 s lease (no renewal is due during the test) and
/// the short deadlines, then black-holes everything. Returns the handle, the guard and the
/// row right after acquiring.
fn held_then_blackholed(
    db: &Db,
    proxy: &FaultProxy,
    name: &str,
    losses: &Losses,
) -> (Locks, LockGuard, RawRow) {
    // Two connections at most: the background release must not wait for a slot that an
    // abandoned connection still holds.
    let locks = proxied(db, proxy, |c| {
        statement_timeout(c, DEADLINE)
            .connect_timeout(DEADLINE)
            .pool_max_size(2)
    });
    let builder = locks
        .lock(name)
        .lock_ttl(Some(Duration::from_secs(30)))
        .lock_ttl_renew(Duration::from_secs(10))
        .lost_lock_cb(losses.callback(db));
    let guard = match within(Duration::from_secs(15), move || builder.acquire()) {
        Ok((Ok(guard), _)) => guard,
        other => panic!("acquiring {name}: {other:?}"),
    };
    let first = row(db, name);
    proxy.blackhole_all();
    (locks, guard, first)
}

/// After the network is back, another owner takes `name` directly; the lock must have been
/// released (by a background thread of the library) before its lease `first` would have
/// ended. Returns how long after the network came back and how early by the database.
fn taken_over_after_heal(db: &Db, proxy: &FaultProxy, name: &str, first: &RawRow) -> (f64, f64) {
    proxy.pass();
    let healed = Instant::now();
    let ttl = Duration::from_secs(30);
    let direct = db.locks();
    let got = direct
        .lock(name)
        .lock_ttl(Some(ttl))
        .retry(Some(Duration::from_millis(50)))
        .timeout(Duration::from_secs(45))
        .lost_lock_cb(|_| {})
        .acquire()
        .expect("another owner takes the lock once the network is back");
    let after_heal = ms(healed.elapsed());
    let now = row(db, name);
    let began_us = now.expires_at_us.unwrap() - ttl.as_micros() as i64;
    let early = ms_between(first.expires_at_us.unwrap(), began_us);
    assert!(now.token > first.token);
    got.release().expect("the new owner releases");
    (after_heal, early)
}

/// (c) `drop(guard)` with the network black-holed returns within a short bound, and the
/// lock is released in the background once the network is back, before its lease ends.
fn drop_returns_on_a_blackholed_network(db: &Db) {
    let proxy = proxy_for(db);
    let losses = Losses::default();
    let name = unique_name("blackhole.drop");
    let (_locks, guard, first) = held_then_blackholed(db, &proxy, &name, &losses);
    let limit = 3 * DEADLINE;
    let dropped = within(HANG, move || drop(guard));
    match dropped {
        Ok(((), took)) => {
            println!(
                "drop on a black hole [{:?}]: returned in {:.0} ms (bound {limit:?})",
                db.kind,
                ms(took)
            );
            assert!(took < limit, "drop took {took:?}, bound {limit:?}");
        }
        Err(waited) => {
            let _heal = Heal(&proxy);
            panic!(
                "drop on a black hole [{:?}]: had not returned after {waited:?} (bound {limit:?})",
                db.kind
            );
        }
    }
    let (after_heal, early) = taken_over_after_heal(db, &proxy, &name, &first);
    println!(
        "drop on a black hole [{:?}]: another owner got the lock {after_heal:.0} ms after the \
         network came back, {early:.0} ms before the old lease would have ended",
        db.kind
    );
    assert!(
        early > 0.0,
        "the lock expired ({early:.0} ms) instead of being released in the background"
    );
    let _heal = Heal(&proxy);
}

/// (c) `guard.release()` with the network black-holed returns an error within a short
/// bound; the row is released in the background once the network is back.
fn release_fails_fast_on_a_blackholed_network(db: &Db) {
    let proxy = proxy_for(db);
    let losses = Losses::default();
    let name = unique_name("blackhole.release");
    let (_locks, guard, first) = held_then_blackholed(db, &proxy, &name, &losses);
    // One attempt on the black-holed pooled connection, then new connections that cannot
    // be made: a statement and a connect deadline, three times over.
    let limit = 3 * (DEADLINE + DEADLINE);
    match within(HANG, move || guard.release()) {
        Ok((outcome, took)) => {
            println!(
                "release on a black hole [{:?}]: returned {outcome:?} in {:.0} ms (bound {limit:?})",
                db.kind,
                ms(took)
            );
            assert!(took < limit, "release took {took:?}, bound {limit:?}");
            assert!(outcome.is_err(), "release reported success on a black hole");
        }
        Err(waited) => {
            let _heal = Heal(&proxy);
            panic!(
                "release on a black hole [{:?}]: had not returned after {waited:?} (bound {limit:?})",
                db.kind
            );
        }
    }
    let (after_heal, early) = taken_over_after_heal(db, &proxy, &name, &first);
    println!(
        "release on a black hole [{:?}]: another owner got the lock {after_heal:.0} ms after \
         the network came back, {early:.0} ms before the old lease would have ended",
        db.kind
    );
    assert!(
        early > 0.0,
        "the lock expired ({early:.0} ms) instead of being released in the background"
    );
    let _heal = Heal(&proxy);
}

/// The acquisition deadline of (d).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs `acquire().timeout(ACQUIRE_TIMEOUT)` for `name` on `locks`; the error and how long
/// it took, or a failure naming `label` when it did not come within the bound.
fn acquire_with_deadline(db: &Db, locks: Locks, name: &str, label: &str) -> (Error, Duration) {
    let limit = 3 * ACQUIRE_TIMEOUT;
    let name = name.to_owned();
    let outcome = within(HANG, move || {
        locks
            .lock(&name)
            .timeout(ACQUIRE_TIMEOUT)
            .lost_lock_cb(|_| {})
            .acquire()
    });
    match outcome {
        Ok((Ok(guard), _)) => panic!("{label} [{:?}]: acquired {guard:?}", db.kind),
        Ok((Err(e), took)) => {
            println!(
                "{label} [{:?}]: {:.0} ms to {e} (deadline {ACQUIRE_TIMEOUT:?}, bound {limit:?})",
                db.kind,
                ms(took)
            );
            assert!(took < limit, "{label}: {took:?}, bound {limit:?}");
            (e, took)
        }
        Err(waited) => panic!(
            "{label} [{:?}]: no answer after {waited:?} (deadline {ACQUIRE_TIMEOUT:?}, bound {limit:?})",
            db.kind
        ),
    }
}

fn is_timeout_or_connect(e: &Error) -> bool {
    matches!(
        e,
        Error::Timeout { .. } | Error::Connect { .. } | Error::Unresponsive { .. }
    )
}

/// (d) A waiting acquisition whose pooled connections go silent keeps its deadline, with
/// the default statement and connect timeouts (5 s, 10 s), which are longer.
fn acquire_deadline_holds_on_a_blackholed_network(db: &Db) {
    let proxy = proxy_for(db);
    let name = unique_name("blackhole.acquire");
    let holder = db
        .locks()
        .lock(&name)
        .lock_ttl(Some(Duration::from_secs(60)))
        .lost_lock_cb(|_| {})
        .acquire()
        .expect("the direct holder");
    let locks = proxied(db, &proxy, |c| c);
    // The handle's pool has a working connection, refused the lock over it, and kept it.
    let tried = within(Duration::from_secs(15), {
        let (locks, name) = (locks.clone(), name.clone());
        move || locks.lock(&name).try_acquire().map(|g| g.is_none())
    });
    assert!(
        matches!(tried, Ok((Ok(true), _))),
        "refused while held: {tried:?}"
    );
    proxy.blackhole_all();
    let _heal = Heal(&proxy);
    let (e, _) = acquire_with_deadline(db, locks, &name, "acquire, pooled connection silent");
    assert!(is_timeout_or_connect(&e), "{e:?}");
    drop(holder);
}

/// (d) An upstream that accepts connections and never answers (a handle that never got a
/// byte back): the acquisition keeps its deadline.
fn acquire_deadline_holds_on_a_silent_upstream(db: &Db) {
    let proxy = proxy_for(db);
    proxy.blackhole_all();
    let _heal = Heal(&proxy);
    let locks = proxied(db, &proxy, |c| c);
    let name = unique_name("silent.upstream");
    let (e, _) = acquire_with_deadline(db, locks, &name, "acquire, silent upstream");
    assert!(is_timeout_or_connect(&e), "{e:?}");
    assert!(proxy.accepted() > 0, "the handle did try to connect");
}

/// (d) A closed port (connection refused): `Error::Connect` at once, not after the
/// connect timeout or the acquisition deadline.
fn acquire_on_a_closed_port_fails_at_once(db: &Db) {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let upstream = host_port(&db.url).unwrap();
    let url = db.url.replacen(&upstream, &format!("127.0.0.1:{port}"), 1);
    let locks = Locks::new(Config::new(url.clone())).unwrap();
    let limit = Duration::from_millis(1500);
    let deadline = Duration::from_secs(5);
    let outcome = within(HANG, move || {
        locks
            .lock("closed.port")
            .timeout(deadline)
            .lost_lock_cb(|_| {})
            .acquire()
    });
    match outcome {
        Ok((Err(e), took)) => {
            println!(
                "closed port [{:?}]: {:.0} ms to {e} (deadline {deadline:?}, bound {limit:?})",
                db.kind,
                ms(took)
            );
            assert!(matches!(e, Error::Connect { .. }), "{e:?}");
            assert!(took < limit, "refused after {took:?}, bound {limit:?}");
        }
        other => panic!("closed port {url}: {other:?}"),
    }
}

macro_rules! on_each_server {
    ($($test:ident),* $(,)?) => {
        #[cfg(feature = "postgres")]
        mod postgres {
            $( #[test] fn $test() { super::$test(&crate::common::Db::postgres()) } )*
        }
        #[cfg(feature = "mysql")]
        mod mysql {
            $( #[test] fn $test() { super::$test(&crate::common::Db::mysql()) } )*
        }
    };
}

on_each_server!(
    stale_connections_do_not_stop_renewals,
    blackhole_reports_loss_before_the_lease_ends,
    renewals_resume_after_a_black_hole,
    drop_returns_on_a_blackholed_network,
    release_fails_fast_on_a_blackholed_network,
    acquire_deadline_holds_on_a_blackholed_network,
    acquire_deadline_holds_on_a_silent_upstream,
    acquire_on_a_closed_port_fails_at_once,
);
