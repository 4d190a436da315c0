//! MySQL/MariaDB: the holder's side of the wake-up channel (`backend::session`).
//!
//! One thread (`database-locks-channel`) and one connection of its own per handle. Once a
//! guard of the handle has held the lock `N` for [`TAKE_AFTER`], the thread takes the
//! session lock `k(N)` on that connection (`GET_LOCK(k, 0)`); right after the row's release
//! statement returns, it lets it go (`RELEASE_LOCK(k)`), which wakes the waiters blocked in
//! `GET_LOCK(k, t)` in other processes. Lazily, never on the acquire's own path: an
//! acquire+release cycle shorter than the delay sends no statement more, and waiters find
//! such a short section by their row read (`session.rs`).
//!
//! The session locks are a signal only: if the connection breaks they vanish with it,
//! which wakes waiters early (their attempt is refused, the row being the truth); the
//! thread notices at its next statement or check ([`CHECK_EVERY`]) and takes them again
//! on a new connection. Semaphore permits take none: their waiters poll on MySQL.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::backend::pool::Store;
use crate::backend::session::{wake_key, Session, SessionConn};
use crate::lease::LeaseState;

/// How long a guard holds its lock before the channel takes the session lock: about five
/// uncontended acquire+release cycles on MariaDB here (one takes about 1 ms), so such a
/// cycle never pays for the channel, and short enough that a waiter that found the key
/// free blocks on it after a few looks (1 + 2 + 4 ms of back-off).
pub(crate) const TAKE_AFTER: Duration = Duration::from_millis(5);

/// While it holds session locks, the thread checks its connection this often: a killed
/// or dropped connection let them all go, and they are taken again on a new one.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// A connection that holds nothing is closed after this long.
const LINGER: Duration = Duration::from_secs(30);

/// When the key is held by another session (a waiter that was just granted it and lets
/// it go at once, or a name with the same key): tried again after 1 ms, doubling to 1 s.
const TAKE_RETRY_MIN: Duration = Duration::from_millis(1);
const TAKE_RETRY_MAX: Duration = Duration::from_secs(1);

/// After a failed statement: a new connection after 500 ms, doubling to 30 s.
const RECONNECT_MIN: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// One guard of the handle.
struct Entry {
    name: String,
    lease: Weak<LeaseState>,
    /// When to try to take the key.
    due: Instant,
    backoff: Duration,
    /// The key, once taken.
    key: Option<String>,
    /// The guard released the row: let the key go.
    released: bool,
}

#[derive(Default)]
struct State {
    entries: HashMap<u64, Entry>,
    started: bool,
    /// No channel: a Galera node, an application's pool, or no thread.
    off: bool,
    shutdown: bool,
    /// While the thread sleeps: until when (`None`: until told).
    asleep: Option<Option<Instant>>,
    /// A taken key's guard released its row: the thread lets it go before it takes more.
    release_pending: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

/// The wake-up channel of one MySQL handle.
#[derive(Default)]
pub(crate) struct Channel {
    shared: Arc<Shared>,
}

impl Channel {
    /// A guard (`id`) of the handle holds `lease`'s row now.
    pub(crate) fn held(&self, store: &Arc<dyn Store>, id: u64, lease: &Arc<LeaseState>) {
        if lease.name.contains(crate::backend::SEPARATOR) {
            return; // a semaphore's slot: its waiters poll
        }
        let due = Instant::now() + TAKE_AFTER;
        let mut state = self.shared.state.lock();
        if state.off || state.shutdown {
            return;
        }
        state.entries.insert(
            id,
            Entry {
                name: lease.name.clone(),
                lease: Arc::downgrade(lease),
                due,
                backoff: TAKE_RETRY_MIN,
                key: None,
                released: false,
            },
        );
        if !state.started {
            state.started = true;
            let Some(session) = store.session() else {
                state.off = true;
                state.entries.clear();
                return;
            };
            let shared = Arc::clone(&self.shared);
            let spawned = std::thread::Builder::new()
                .name("database-locks-channel".into())
                .spawn(move || run(&shared, &session));
            if let Err(err) = spawned {
                tracing::warn!("cannot start the wake-up channel ({err}); waiters elsewhere poll");
                state.off = true;
                state.entries.clear();
            }
            return;
        }
        // Told only when it would otherwise sleep past this one's time: a burst of short
        // sections costs the thread one wake-up per delay, not one per cycle.
        if let Some(until) = state.asleep {
            if until.is_none_or(|until| until > due) {
                self.shared.changed.notify_one();
            }
        }
    }

    /// Guard `id` released its row (whether the statement succeeded or not), or gave up
    /// on it: let its key go.
    pub(crate) fn released(&self, id: u64) {
        let mut state = self.shared.state.lock();
        let Some(entry) = state.entries.get_mut(&id) else {
            return;
        };
        if entry.key.is_some() {
            entry.released = true;
            state.release_pending = true;
            self.shared.changed.notify_one();
        } else {
            // Not taken (or being taken: the thread lets it go when it finds it gone).
            state.entries.remove(&id);
        }
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.shared.state.lock().shutdown = true;
        self.shared.changed.notify_all();
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.state.lock();
        f.debug_struct("Channel")
            .field("off", &state.off)
            .field(
                "taken",
                &state.entries.values().filter(|e| e.key.is_some()).count(),
            )
            .finish()
    }
}

/// What the thread does next, decided under the lock.
struct Work {
    release: Vec<String>,
    take: Vec<(u64, String)>,
    check: bool,
    close: bool,
}

impl Work {
    fn is_empty(&self) -> bool {
        self.release.is_empty() && self.take.is_empty() && !self.check && !self.close
    }
}

/// The thread: takes keys that are due, lets released ones go, checks its connection.
fn run(shared: &Shared, session: &Session) {
    let mut conn: Option<Box<dyn SessionConn>> = None;
    let mut idle_since = Instant::now();
    let mut checked_at = Instant::now();
    let mut reconnect_at: Option<Instant> = None;
    let mut reconnect = RECONNECT_MIN;
    loop {
        let work = {
            let mut state = shared.state.lock();
            loop {
                if state.shutdown {
                    return; // dropping the connection lets its session locks go
                }
                let now = Instant::now();
                let work = plan(
                    &mut state,
                    conn.is_some(),
                    now,
                    reconnect_at,
                    checked_at,
                    idle_since,
                );
                if !work.is_empty() {
                    break work;
                }
                let wake = next_wake(&state, conn.is_some(), reconnect_at, checked_at, idle_since);
                state.asleep = Some(wake);
                match wake {
                    Some(at) => {
                        shared.changed.wait_until(&mut state, at);
                    }
                    None => shared.changed.wait(&mut state),
                }
                state.asleep = None;
            }
        };
        if work.close {
            tracing::debug!("the wake-up channel holds nothing: closing its connection");
            conn = None;
            continue;
        }
        let mut failed = None;
        for key in work.release {
            let deadline = Instant::now() + session.statement_timeout;
            if let Err(err) = session.run(&mut conn, deadline, move |c| c.release_lock(&key)) {
                failed = Some(err);
                break;
            }
        }
        if failed.is_none() && !work.take.is_empty() {
            failed = take(shared, session, &mut conn, work.take).err();
        }
        if failed.is_none() && work.check {
            let deadline = Instant::now() + session.statement_timeout;
            failed = session.run(&mut conn, deadline, |c| c.ping()).err();
            checked_at = Instant::now();
        }
        let mut state = shared.state.lock();
        if state.off {
            return;
        }
        match failed {
            Some(err) => {
                // The connection is closed: its session locks are gone (waiters wake
                // early and are refused). Taken again on a new one.
                tracing::info!("the wake-up channel's connection failed ({err}); reconnecting in {reconnect:?}");
                conn = None;
                let now = Instant::now();
                reconnect_at = Some(now + reconnect);
                reconnect = (reconnect * 2).min(RECONNECT_MAX);
                for entry in state.entries.values_mut() {
                    entry.key = None;
                    entry.due = entry.due.max(now);
                }
                state.entries.retain(|_, e| !e.released);
            }
            None => {
                reconnect_at = None;
                reconnect = RECONNECT_MIN;
                if state.entries.values().all(|e| e.key.is_none()) {
                    idle_since = Instant::now();
                }
            }
        }
    }
}

/// Under the lock: the keys to let go (forgetting their entries), the keys due, whether
/// to check or close the connection.
fn plan(
    state: &mut State,
    connected: bool,
    now: Instant,
    reconnect_at: Option<Instant>,
    checked_at: Instant,
    idle_since: Instant,
) -> Work {
    let mut release = Vec::new();
    state.release_pending = false;
    state.entries.retain(|_, e| {
        // A lease lost meanwhile is somebody else's row now: do not stand in its way.
        let done = e.released || e.lease.upgrade().is_none_or(|l| l.is_lost());
        if done {
            release.extend(e.key.take());
        }
        !done
    });
    let may_take = reconnect_at.is_none_or(|at| at <= now);
    let take = if may_take {
        state
            .entries
            .iter()
            .filter(|(_, e)| e.key.is_none() && e.due <= now)
            .map(|(id, e)| (*id, e.name.clone()))
            .collect()
    } else {
        Vec::new()
    };
    let taken = state.entries.values().any(|e| e.key.is_some());
    Work {
        release,
        take,
        check: connected && taken && now.duration_since(checked_at) >= CHECK_EVERY,
        close: connected
            && !taken
            && state.entries.is_empty()
            && now.duration_since(idle_since) >= LINGER,
    }
}

/// When the thread must look again by itself (`None`: only when told).
fn next_wake(
    state: &State,
    connected: bool,
    reconnect_at: Option<Instant>,
    checked_at: Instant,
    idle_since: Instant,
) -> Option<Instant> {
    let due = state
        .entries
        .values()
        .filter(|e| e.key.is_none())
        .map(|e| reconnect_at.map_or(e.due, |at| e.due.max(at)))
        .min();
    let taken = state.entries.values().any(|e| e.key.is_some());
    let check = (connected && taken).then(|| checked_at + CHECK_EVERY);
    let close = (connected && !taken).then(|| idle_since + LINGER);
    // Leases are looked at (lost ones let go) at least at each check.
    [due, check, close].into_iter().flatten().min()
}

/// Takes the keys of `due` guards; one that is released or gone meanwhile is let go at
/// once. Stops early when a taken key's guard released its row, so that a waiter is not
/// kept waiting behind a long run of takes (a handle that just acquired thousands of
/// locks); the rest are taken next time round. `Err` when the connection failed.
fn take(
    shared: &Shared,
    session: &Session,
    conn: &mut Option<Box<dyn SessionConn>>,
    due: Vec<(u64, String)>,
) -> Result<(), String> {
    for (id, name) in due {
        if shared.state.lock().release_pending {
            return Ok(());
        }
        let deadline = Instant::now() + session.statement_timeout;
        if conn.is_none() {
            let opened = session.open(deadline)?;
            if opened.galera() {
                tracing::info!(
                    "a Galera node: session locks are per node, so this handle takes none \
                     and waiters elsewhere poll"
                );
                let mut state = shared.state.lock();
                state.off = true;
                state.entries.clear();
                return Ok(());
            }
            *conn = Some(opened);
        }
        let database = conn.as_ref().map_or("", |c| c.database()).to_owned();
        let key = wake_key(&database, &name);
        let wanted = key.clone();
        let granted = session.run(conn, deadline, move |c| c.get_lock(&wanted, 0))?;
        let mut state = shared.state.lock();
        let now = Instant::now();
        match state.entries.get_mut(&id) {
            Some(entry) if granted && !entry.released => entry.key = Some(key),
            Some(entry) if !granted => {
                entry.due = now + entry.backoff;
                entry.backoff = (entry.backoff * 2).min(TAKE_RETRY_MAX);
            }
            _ if granted => {
                // Released while it was being taken.
                state.entries.remove(&id);
                drop(state);
                let deadline = Instant::now() + session.statement_timeout;
                session.run(conn, deadline, move |c| c.release_lock(&key))?;
            }
            _ => {}
        }
    }
    Ok(())
}
