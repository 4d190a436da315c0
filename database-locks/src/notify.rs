//! Waking waiters when another process releases: PostgreSQL's `LISTEN`/`NOTIFY`, SQLite's
//! `PRAGMA data_version`, MySQL's session locks.
//!
//! Each handle that has waiters keeps ONE connection, taken out of its pool, read by one
//! thread (`database-locks-listen`) every millisecond, which hands the next attempt to the
//! first waiter of each released name ([`Hub::notified`]). The connection goes back to the
//! pool when nobody has waited for a while. Waiters never depend on it: the first waiter
//! of each name keeps polling at its retry period, so a release the listener does not see
//! (a Django process, `force_release` on PostgreSQL), a lost connection, or a pooler that
//! cannot deliver notifications only makes waiting slower.
//!
//! PostgreSQL: each release statement sends `NOTIFY database_locks_lock, '<name>'` at
//! commit; the connection `LISTEN`s on that channel (and `UNLISTEN`s before it goes
//! back). Once per handle, a second after it starts listening, the listener checks that
//! notifications arrive: it sends one through the handle's pool and waits for it. Behind
//! PgBouncer in transaction mode, `LISTEN` succeeds but nothing is ever delivered; the
//! check fails, a warning is logged once, and the handle waits by polling alone.
//!
//! SQLite: the connection reads `PRAGMA data_version`, which changes when another
//! connection commits to the file. On a change (and at the first look) it reads which of
//! the rows waited for are free now, one `SELECT`, and hands those names' queues the next
//! attempt. Between looks it sleeps until the file or its log is written (Linux,
//! `backend::watch`), so a process that waits while nothing is written looks about 20
//! times a second, not 1,000. A refused attempt writes nothing, so waiters do not wake each other; any
//! other commit (a renewal, another lock) costs each waiting process that one read. No
//! check is needed: nothing stands between the file and the reader.
//!
//! MySQL/MariaDB: holders' channels (`channel.rs`) hold a session lock beside each row
//! held for a few milliseconds; the listener blocks in `GET_LOCK` on the key of each
//! name waited for, one connection of its own each, and hands the name's queue the next
//! attempt when granted (`backend::session`). No check: nothing stands between the two
//! sessions. On a Galera node, or for a handle on an application's pool, there is no
//! listener and waiters poll.
//!
//! `Config::notify(false)` (`DATABASE_LOCKS_NOTIFY=false`) skips all of this.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::backend::pool::Store;
use crate::backend::{Heard, Listener};
use crate::local::{Hub, Notifications};

/// How long a check notification may take to come back before notifications are judged
/// not to work here.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the listener keeps its connection after the last waiter left, so that bursts
/// of waiting do not reconnect each time.
const LINGER: Duration = Duration::from_secs(30);

/// How often the listener reads its connection while nobody waits: notifications must be
/// consumed, or the server's notification queue would fill up behind this connection.
const IDLE_READ: Duration = Duration::from_millis(100);

/// The longest single wait for notifications while somebody waits: how soon the thread
/// sees that the last waiter left or the handle was dropped.
const BUSY_READ: Duration = Duration::from_millis(50);

/// Reconnection back-off after the listener connection failed.
const RECONNECT_MIN: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// Whether one handle listens for releases in other processes.
#[derive(Debug)]
pub(crate) enum Listening {
    /// Turned off by configuration.
    Off,
    /// The listener thread has been started.
    Started,
}

impl Listening {
    /// Starts the listener thread; it ends when the handle is dropped. When the backend has
    /// no notifications, or the thread cannot start, waiting just polls.
    pub(crate) fn start(hub: Arc<Hub>, store: Weak<dyn Store>) -> Self {
        let spawned = std::thread::Builder::new()
            .name("database-locks-listen".into())
            .spawn(move || listen_loop(&hub, &store));
        if let Err(err) = spawned {
            tracing::warn!("cannot start the notification listener, waiting by polling: {err}");
        }
        Listening::Started
    }
}

/// A payload no lock name can equal (names are at most 255 characters), unique per check.
fn probe_payload() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}database-locks-probe.{}.{}",
        "~".repeat(256),
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn listen_loop(hub: &Hub, store: &Weak<dyn Store>) {
    let mut probe = Probe::Due;
    let mut backoff = RECONNECT_MIN;
    let mut missed = false;
    loop {
        // Nobody waits: no connection.
        while hub.queued() == 0 {
            if hub.is_shut_down() {
                return;
            }
            hub.wait_for_waiters(Instant::now() + Duration::from_secs(60));
        }
        if hub.is_shut_down() {
            return;
        }
        let connected = match store.upgrade() {
            Some(store) => store.listener(store.deadline(None)),
            None => return,
        };
        let mut listener = match connected {
            None => {
                // MySQL on a Galera node or on an application's pool: no channel.
                hub.set_notifications(Notifications::NoChannel);
                return;
            }
            Some(Ok(listener)) => listener,
            Some(Err(err)) => {
                tracing::info!(
                    "cannot start the notification listener ({}); \
                     waiting by polling, retrying in {backoff:?}",
                    err.error
                );
                sleep_unless_shut_down(hub, backoff);
                backoff = (backoff * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        backoff = RECONNECT_MIN;
        if missed {
            // Releases while the connection was down were not seen: every queue tries once.
            // Not on a first start: the window between a waiter's refused attempt and the
            // LISTEN is a fraction of a millisecond, covered by the front's polling, and
            // an attempt now would take a second connection from the pool at once.
            hub.wake_fronts();
            missed = false;
        }
        tracing::debug!("listening for lock releases");
        if listener.watches_commits() {
            probe = Probe::NotNeeded;
            hub.set_notifications(Notifications::Watching);
        } else if listener.session_locks() {
            // Nothing between the two sessions can lose a grant: no check either.
            probe = Probe::NotNeeded;
            hub.set_notifications(Notifications::SessionLocks);
        } else if matches!(probe, Probe::Due) {
            hub.set_notifications(Notifications::Listening);
        }
        match serve(hub, store, listener.as_mut(), &mut probe) {
            Served::ShutDown => return,
            Served::Idle => {}
            Served::Failed => {
                missed = true;
                sleep_unless_shut_down(hub, RECONNECT_MIN);
            }
            Served::NotDelivered => {
                hub.set_notifications(Notifications::NotDelivered);
                tracing::warn!(
                    "release notifications (LISTEN/NOTIFY) do not reach this process, e.g. \
                     behind PgBouncer in transaction mode; waiting by polling only. Set \
                     DATABASE_LOCKS_NOTIFY=false (Config::notify(false)) to skip this check"
                );
                return;
            }
        }
    }
}

/// The check that notifications arrive, made once per handle.
enum Probe {
    /// To be sent once the listener has listened for [`PROBE_AFTER`].
    Due,
    /// Sent; must come back before the deadline.
    Sent { payload: String, until: Instant },
    /// It came back.
    Delivered,
    /// The listener watches the database's commits itself (SQLite), or waits on session
    /// locks (MySQL).
    NotNeeded,
}

/// How long the listener listens before it checks that notifications arrive. Not at once:
/// the check takes a second connection from the pool, which may have to be opened, and
/// a wait that just began is when a process is most likely to be told to stop (a TLS
/// handshake in progress while the process exits can crash inside OpenSSL).
const PROBE_AFTER: Duration = Duration::from_secs(1);

enum Served {
    ShutDown,
    /// Nobody waited for [`LINGER`].
    Idle,
    Failed,
    /// The check notification never came back.
    NotDelivered,
}

/// Reads notifications and hands them to the waiters, until the connection fails, the
/// handle is dropped, or nobody waited for [`LINGER`]. Checks once that notifications
/// arrive at all.
fn serve(
    hub: &Hub,
    store: &Weak<dyn Store>,
    listener: &mut dyn Listener,
    probe: &mut Probe,
) -> Served {
    let listening_since = Instant::now();
    let mut idle_since: Option<Instant> = None;
    loop {
        if hub.is_shut_down() {
            return Served::ShutDown;
        }
        let busy = hub.queued() > 0;
        if listener.session_locks() {
            listener.set_waited(hub.lock_queue_names());
        }
        match probe {
            Probe::Due if busy && listening_since.elapsed() >= PROBE_AFTER => {
                let payload = probe_payload();
                let sent = match store.upgrade() {
                    Some(store) => store.notify(store.deadline(None), &payload),
                    None => return Served::ShutDown,
                };
                match sent {
                    Ok(()) => {
                        *probe = Probe::Sent {
                            payload,
                            until: Instant::now() + PROBE_TIMEOUT,
                        }
                    }
                    Err(err) => {
                        tracing::debug!("cannot check the notification listener: {}", err.error)
                    }
                }
            }
            Probe::Sent { until, .. } if Instant::now() >= *until => {
                return Served::NotDelivered;
            }
            _ => {}
        }
        let read = if busy {
            idle_since = None;
            listener.wait(BUSY_READ)
        } else {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= LINGER {
                tracing::debug!("no waiters for {LINGER:?}: closing the notification listener");
                return Served::Idle;
            }
            // A commit watcher has nothing to drain: it reads again once somebody waits,
            // and its first look then reports whatever was committed meanwhile.
            let read = if listener.watches_commits() {
                Ok(Heard::Released(Vec::new()))
            } else {
                listener.wait(Duration::ZERO)
            };
            hub.wait_for_waiters(Instant::now() + IDLE_READ);
            read
        };
        let names = match read {
            Ok(Heard::Released(names)) => names,
            Ok(Heard::Committed) => {
                let queues = hub.queue_names();
                if queues.is_empty() {
                    continue;
                }
                match listener.free_rows(&queues) {
                    Ok(rows) => rows,
                    Err(err) => {
                        // What this read would have found is unknown: every queue tries.
                        hub.wake_fronts();
                        tracing::info!(
                            "the notification listener cannot read the lock table ({err}); \
                             reconnecting"
                        );
                        return Served::Failed;
                    }
                }
            }
            Err(err) => {
                tracing::info!("the notification listener connection failed ({err}); reconnecting");
                return Served::Failed;
            }
        };
        for name in names {
            match probe {
                Probe::Sent { payload, .. } if *payload == name => {
                    *probe = Probe::Delivered;
                    hub.set_notifications(Notifications::Delivered);
                }
                _ => hub.notified(&name),
            }
        }
    }
}

fn sleep_unless_shut_down(hub: &Hub, duration: Duration) {
    let until = Instant::now() + duration;
    while !hub.is_shut_down() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
    }
}
