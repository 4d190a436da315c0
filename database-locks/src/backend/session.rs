//! MySQL/MariaDB: the wake-up channel. There is no `LISTEN`, but a session blocked in
//! `GET_LOCK(k, t)` is granted the moment the session holding `k` lets it go. So while a
//! guard holds the lock `N` for a few milliseconds, a connection of its handle (the
//! *channel*, `channel.rs`) holds the session lock `k(N)` ([`wake_key`]), and lets it go
//! right after the row's release statement returns; a handle with waiters for `N` keeps a
//! connection blocked in `GET_LOCK(k(N), t)` ([`SessionListener`]), and hands the front of
//! `N`'s queue the next attempt when it is granted.
//!
//! The row stays the only truth: a session lock only says "look now". A grant that comes
//! when nothing was released (the holder's channel lost its connection, a key collision)
//! costs one refused attempt. A release the channel does not announce (a holder without
//! a channel, a section shorter than the channel's delay) is found by the row read that
//! follows a grant made at once, or at the front's next poll.

use std::collections::HashMap;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use diesel::QueryResult;

use super::exec::Workers;
use super::{Heard, Listener};

/// What every session-lock key starts with: `database_locks:` and 32 hex digits, 47
/// characters, within MySQL's limit of 64.
const KEY_PREFIX: &str = "database_locks:";

/// The session lock that stands for the lock `name` of the table in `database`:
/// FNV-1a (128 bits) of the database name, a NUL and the lock name, in hex. A fixed
/// algorithm, so every process and every version agrees; the database is part of it
/// because session locks are server-wide. Two names with one key only wake each other's
/// waiters for nothing.
pub fn wake_key(database: &str, name: &str) -> String {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let mut hash = OFFSET;
    for byte in database.bytes().chain([0]).chain(name.bytes()) {
        hash ^= u128::from(byte);
        hash = hash.wrapping_mul(PRIME);
    }
    format!("{KEY_PREFIX}{hash:032x}")
}

/// A connection of its own (outside the pool) for session locks.
pub(crate) trait SessionConn: Send {
    /// The database it uses (part of every key).
    fn database(&self) -> &str;
    /// Whether the server is a Galera node: `GET_LOCK` is per node there, no channel.
    fn galera(&self) -> bool;
    /// `GET_LOCK(key, timeout_secs)`: whether it was granted.
    fn get_lock(&mut self, key: &str, timeout_secs: i64) -> QueryResult<bool>;
    /// `RELEASE_LOCK(key)`.
    fn release_lock(&mut self, key: &str) -> QueryResult<bool>;
    /// Whether the row of `name` is free now (released, expired or missing).
    fn row_free(&mut self, name: &str) -> QueryResult<bool>;
    /// A round trip, to find a connection that died while idle.
    fn ping(&mut self) -> QueryResult<()>;
}

/// Opens a [`SessionConn`] (on a worker: the caller bounds it with a deadline).
pub(crate) type Opener = Arc<dyn Fn() -> Result<Box<dyn SessionConn>, String> + Send + Sync>;

/// What the channel and the session-lock listener run on: connections of their own and
/// the handle's workers, so that every statement has a deadline (§7).
#[derive(Clone)]
pub(crate) struct Session {
    pub(crate) opener: Opener,
    pub(crate) workers: Arc<Workers>,
    pub(crate) statement_timeout: Duration,
}

impl Session {
    /// Runs `f` on `conn` (opened first when `None`) on a worker, waiting until
    /// `deadline`. The connection comes back only when `f` succeeded in time; otherwise it
    /// is closed (and with it the session locks it held) once its statement returns.
    pub(crate) fn run<R: Send + 'static>(
        &self,
        conn: &mut Option<Box<dyn SessionConn>>,
        deadline: Instant,
        f: impl FnOnce(&mut dyn SessionConn) -> QueryResult<R> + Send + 'static,
    ) -> Result<R, String> {
        let taken = conn.take();
        let opener = Arc::clone(&self.opener);
        type Out<R> = (Option<Box<dyn SessionConn>>, Result<R, String>);
        let job = move |reply: super::exec::Reply<Out<R>>| {
            let mut c = match taken.map_or_else(|| opener(), Ok) {
                Ok(c) => c,
                Err(err) => {
                    let _ = reply.deliver((None, Err(err)));
                    return;
                }
            };
            let out = f(c.as_mut()).map_err(|e| e.to_string());
            let back = out.is_ok().then_some(c);
            // Delivered too late: dropped here, which closes it.
            let _ = reply.deliver((back, out));
        };
        match self.workers.run(deadline, job) {
            Ok(Some((back, out))) => {
                *conn = back;
                out
            }
            Ok(None) => Err("the channel connection did not answer in time".into()),
            Err(err) => Err(format!("cannot start a thread: {err}")),
        }
    }

    /// Opens a connection, by `deadline`.
    pub(crate) fn open(&self, deadline: Instant) -> Result<Box<dyn SessionConn>, String> {
        let mut conn = None;
        self.run(&mut conn, deadline, |_| Ok(()))?;
        conn.ok_or_else(|| "no connection".into())
    }
}

/// How long one blocking `GET_LOCK` waits before it is sent again: a connection is then
/// found silent within this plus the statement timeout, and one whose name is no longer
/// waited for is free again within this.
const WAIT_SECS: i64 = 5;

/// Back-off between looks that found the key free while the row was held (the holder's
/// channel has not taken it yet, or the holder has none): from 1 ms, doubling to 1 s.
/// A holder with a channel takes the key within its delay (5 ms), so a waiter blocks after
/// a few looks; a holder without one costs a waiting handle at most 3 statements a second
/// (probe, release, row read), fewer than the front's own poll.
const BACKOFF_MIN: Duration = Duration::from_millis(1);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// After a wake-up, the front attempts; the next look waits this long, so it does not
/// find the row still free before the front's attempt took it (and hand out a second
/// attempt for nothing).
const SETTLE: Duration = Duration::from_millis(10);

/// After a failed look: from 500 ms, doubling to 30 s.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// At most this many names are waited for on connections of their own per handle (one
/// connection each, `GET_LOCK` waits for one name at a time); waiters of more names at
/// once poll for the others.
pub(crate) const MAX_WATCHED: usize = 8;

/// How long a connection no name needs is kept, for the next name waited for.
const LINGER: Duration = Duration::from_secs(30);

/// How often `wait` returns, so that the caller can tell it of new names.
const SLICE: Duration = Duration::from_millis(5);

/// What one look found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// The key was held, then granted: its holder let it go (released the row, or lost
    /// its connection).
    Woken,
    /// The key was free and so was the row: released before the look.
    FreeAtOnce,
    /// The key was free but the row held: its holder has no channel (yet).
    HeldAtOnce,
    /// The key stayed held for [`WAIT_SECS`].
    StillHeld,
}

struct Done {
    gen: u64,
    name: String,
    conn: Option<Box<dyn SessionConn>>,
    seen: Result<Seen, String>,
}

/// One name waited for.
struct Watch {
    conn: Option<Box<dyn SessionConn>>,
    /// The look under way: its id and when it is given up.
    in_flight: Option<(u64, Instant)>,
    next_try: Instant,
    backoff: Duration,
    /// Whether the next look first tries the key at once (`GET_LOCK(k, 0)`): unless the
    /// last one saw it held, a grant would not tell a release from a free key.
    probe: bool,
    failures: u32,
    /// No longer waited for; dropped when its look returns.
    gone: bool,
}

/// The waiters' side (MySQL): one connection per name waited for, blocked in
/// `GET_LOCK(k, 5)`, each look on a worker with its deadline.
pub(crate) struct SessionListener {
    session: Session,
    watched: HashMap<String, Watch>,
    waited: Vec<String>,
    spare: Vec<(Box<dyn SessionConn>, Instant)>,
    tx: mpsc::Sender<Done>,
    rx: mpsc::Receiver<Done>,
    next_gen: u64,
}

impl SessionListener {
    /// A listener whose first connection is `first`; `None` on a Galera node.
    pub(crate) fn new(session: Session, first: Box<dyn SessionConn>) -> Option<Self> {
        if first.galera() {
            tracing::info!(
                "a Galera node: session locks are per node, so MySQL waiters poll at their \
                 retry period"
            );
            return None;
        }
        let (tx, rx) = mpsc::channel();
        Some(SessionListener {
            session,
            watched: HashMap::new(),
            waited: Vec::new(),
            spare: vec![(first, Instant::now())],
            tx,
            rx,
            next_gen: 0,
        })
    }

    /// Follows the names waited for: new ones get a watch, gone ones give their
    /// connection back to the spares.
    fn reconcile(&mut self, now: Instant) {
        let waited = std::mem::take(&mut self.waited);
        let gone: Vec<String> = self
            .watched
            .keys()
            .filter(|name| !waited.contains(name))
            .cloned()
            .collect();
        for name in gone {
            if let Some(watch) = self.watched.get_mut(&name) {
                if watch.in_flight.is_some() {
                    watch.gone = true;
                } else if let Some(watch) = self.watched.remove(&name) {
                    if let Some(conn) = watch.conn {
                        self.spare.push((conn, now));
                    }
                }
            }
        }
        for name in &waited {
            if let Some(watch) = self.watched.get_mut(name) {
                watch.gone = false;
            } else if self.watched.len() < MAX_WATCHED {
                self.watched.insert(
                    name.clone(),
                    Watch {
                        conn: None,
                        in_flight: None,
                        next_try: now,
                        backoff: BACKOFF_MIN,
                        probe: true,
                        failures: 0,
                        gone: false,
                    },
                );
            }
        }
        self.waited = waited;
        self.spare
            .retain(|(_, since)| now.duration_since(*since) < LINGER);
    }

    /// Starts the looks that are due.
    fn dispatch(&mut self, now: Instant) {
        for (name, watch) in &mut self.watched {
            if watch.in_flight.is_some() || watch.gone || watch.next_try > now {
                continue;
            }
            let conn = watch
                .conn
                .take()
                .or_else(|| self.spare.pop().map(|(c, _)| c));
            self.next_gen += 1;
            let gen = self.next_gen;
            let deadline =
                now + Duration::from_secs(WAIT_SECS as u64) + self.session.statement_timeout;
            let (tx, opener, name, probe) = (
                self.tx.clone(),
                Arc::clone(&self.session.opener),
                name.clone(),
                watch.probe,
            );
            let job = Box::new(move || {
                let mut conn = match conn.map_or_else(|| opener(), Ok) {
                    Ok(conn) => conn,
                    Err(err) => {
                        let _ = tx.send(Done {
                            gen,
                            name,
                            conn: None,
                            seen: Err(err),
                        });
                        return;
                    }
                };
                let seen = look(conn.as_mut(), &name, probe).map_err(|e| e.to_string());
                let conn = seen.is_ok().then_some(conn);
                let _ = tx.send(Done {
                    gen,
                    name,
                    conn,
                    seen,
                });
            });
            match self.session.workers.spawn(job) {
                Ok(()) => watch.in_flight = Some((gen, deadline)),
                Err(err) => {
                    tracing::debug!("cannot start a thread to wait on a session lock: {err}");
                    watch.next_try = now + RETRY_MAX;
                }
            }
        }
    }

    /// Takes in what a look found; pushes the names whose queue gets an attempt.
    fn take_in(&mut self, done: Done, now: Instant, woken: &mut Vec<String>) {
        let Some(watch) = self.watched.get_mut(&done.name) else {
            return;
        };
        if watch.in_flight.map(|(gen, _)| gen) != Some(done.gen) {
            return; // given up at its deadline; the connection is closed here
        }
        watch.in_flight = None;
        if watch.gone {
            if let Some(conn) = done.conn {
                self.spare.push((conn, now));
            }
            self.watched.remove(&done.name);
            return;
        }
        watch.conn = done.conn;
        match done.seen {
            Ok(Seen::Woken) => {
                woken.push(done.name);
                watch.probe = true;
                watch.backoff = BACKOFF_MIN;
                watch.failures = 0;
                watch.next_try = now + SETTLE;
            }
            Ok(Seen::FreeAtOnce) => {
                woken.push(done.name);
                watch.probe = true;
                watch.failures = 0;
                watch.next_try = now + SETTLE.max(watch.backoff);
                watch.backoff = (watch.backoff * 2).min(BACKOFF_MAX);
            }
            Ok(Seen::HeldAtOnce) => {
                watch.probe = true;
                watch.failures = 0;
                watch.next_try = now + watch.backoff;
                watch.backoff = (watch.backoff * 2).min(BACKOFF_MAX);
            }
            Ok(Seen::StillHeld) => {
                watch.probe = false;
                watch.backoff = BACKOFF_MIN;
                watch.failures = 0;
                watch.next_try = now;
            }
            Err(err) => {
                tracing::debug!(lock = %done.name, "waiting on the session lock failed: {err}");
                Self::failed(watch, &done.name, now, woken);
            }
        }
    }

    /// A look failed or overran: its connection is gone. A release may have been missed,
    /// so the front attempts once (on the first failure in a row only: an outage does not
    /// make it attempt at every retry).
    fn failed(watch: &mut Watch, name: &str, now: Instant, woken: &mut Vec<String>) {
        watch.conn = None;
        watch.in_flight = None;
        watch.probe = true;
        if watch.failures == 0 {
            woken.push(name.to_owned());
        }
        let factor = 1u32 << watch.failures.min(6);
        watch.next_try = now + (RETRY_MIN * factor).min(RETRY_MAX);
        watch.failures += 1;
    }

    /// Gives up looks past their deadline (a silent connection).
    fn overdue(&mut self, now: Instant, woken: &mut Vec<String>) {
        let late: Vec<String> = self
            .watched
            .iter()
            .filter(|(_, w)| w.in_flight.is_some_and(|(_, until)| until <= now))
            .map(|(name, _)| name.clone())
            .collect();
        for name in late {
            if let Some(watch) = self.watched.get_mut(&name) {
                tracing::info!(lock = %name, "a session-lock wait overran its deadline; reconnecting");
                if watch.gone {
                    self.watched.remove(&name);
                } else {
                    Self::failed(watch, &name, now, woken);
                }
            }
        }
    }

    /// When `wait` must look at its watches again.
    fn next_event(&self, until: Instant) -> Instant {
        self.watched
            .values()
            .map(|w| match w.in_flight {
                Some((_, deadline)) => deadline,
                None if w.gone => until,
                None => w.next_try,
            })
            .fold(until, Instant::min)
    }
}

/// One look at `name`'s key.
fn look(conn: &mut dyn SessionConn, name: &str, probe: bool) -> QueryResult<Seen> {
    let key = wake_key(conn.database(), name);
    if probe && conn.get_lock(&key, 0)? {
        conn.release_lock(&key)?;
        return Ok(if conn.row_free(name)? {
            Seen::FreeAtOnce
        } else {
            Seen::HeldAtOnce
        });
    }
    if conn.get_lock(&key, WAIT_SECS)? {
        // At once: the channel of the next holder must not find it taken.
        conn.release_lock(&key)?;
        Ok(Seen::Woken)
    } else {
        Ok(Seen::StillHeld)
    }
}

impl Listener for SessionListener {
    fn wait(&mut self, timeout: Duration) -> QueryResult<Heard> {
        let until = Instant::now() + timeout.min(SLICE);
        let mut woken = Vec::new();
        self.reconcile(Instant::now());
        loop {
            let now = Instant::now();
            self.overdue(now, &mut woken);
            self.dispatch(now);
            while let Ok(done) = self.rx.try_recv() {
                self.take_in(done, Instant::now(), &mut woken);
            }
            let now = Instant::now();
            if !woken.is_empty() || now >= until {
                return Ok(Heard::Released(woken));
            }
            let next = self.next_event(until).max(now);
            match self.rx.recv_timeout(next - now) {
                Ok(done) => self.take_in(done, Instant::now(), &mut woken),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // Not while this holds a sender.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Ok(Heard::Released(woken));
                }
            }
        }
    }

    fn watches_commits(&self) -> bool {
        false
    }

    fn free_rows(&mut self, _queues: &[String]) -> QueryResult<Vec<String>> {
        Ok(Vec::new())
    }

    fn session_locks(&self) -> bool {
        true
    }

    fn set_waited(&mut self, names: Vec<String>) {
        self.waited = names;
    }
}

#[cfg(test)]
mod tests {
    use super::wake_key;

    #[test]
    fn keys_fit_mysql_and_never_change() {
        let key = wake_key("app", "nightly-report");
        assert!(key.len() <= 64, "{key}");
        assert_eq!(key.len(), "database_locks:".len() + 32);
        assert_eq!(key, wake_key("app", "nightly-report"), "deterministic");
        // Pinned (FNV-1a 128, computed independently): every process, of any version,
        // must compute the same key.
        assert_eq!(key, "database_locks:83380615b760be3a544f87557b60c8ce");
        let long = "x".repeat(255);
        assert_eq!(wake_key(&"d".repeat(64), &long).len(), key.len());
        assert_eq!(wake_key("", "").len(), key.len());
        assert_eq!(wake_key("app", "é☃").len(), key.len());
    }

    #[test]
    fn keys_tell_names_and_databases_apart() {
        let keys = [
            wake_key("app", "a"),
            wake_key("app", "b"),
            wake_key("other", "a"),
            // The separator keeps ("ap", "pa") and ("app", "a") apart.
            wake_key("ap", "pa"),
            wake_key("app", "A"),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
