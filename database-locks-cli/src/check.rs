//! The tool's own check that a held row is still its own: `run` and `leader` read it every
//! [`CHECK_PERIOD`], so that a force release or a theft stops the command within a
//! second, not at the next renewal.

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use database_locks::{LockGuard, Locks};

use crate::format;
use crate::session::{warn, Event, Loss};

/// How often `run` reads its row to see that the lock is still its own. The renewal
/// finds a force release too, but only every ttl - margin (8 s with the defaults), and a
/// lock with `--ttl none` is never renewed. One indexed single-row SELECT per second per
/// running command (a renewal is one UPDATE per 8 s): a thousand `run`s cost the database
/// a thousand primary-key reads per second, a small part of what one core serves.
pub const CHECK_PERIOD: Duration = Duration::from_secs(1);

/// Reads the lock's row at once and then every [`CHECK_PERIOD`], on a thread of its own
/// (a statement can hang on a dead connection). When the row is no longer this guard's
/// (force-released, or another owner or token), sends [`Event::Lost`] with the earliest
/// end of the lease that the previous reads showed. Dropping the returned sender stops it.
/// Errors are left to the library: its renewal retries and its watchdog reports a lease
/// that could not be renewed in time.
pub fn start(locks: &Locks, guard: &LockGuard, events: Sender<Event>) -> Option<Sender<()>> {
    let (Some(owner), Some(token)) = (guard.locked_by(), guard.token()) else {
        return None;
    };
    // A permit's lease is its slot's row.
    let row = guard
        .permit()
        .map_or_else(|| guard.name().to_owned(), |p| p.row);
    start_row(locks, &row, owner, token, events)
}

/// [`start`] for the row of `name` held as `owner` with `token`.
pub fn start_row(
    locks: &Locks,
    name: &str,
    owner: &str,
    token: u64,
    events: Sender<Event>,
) -> Option<Sender<()>> {
    let (locks, name, owner) = (locks.clone(), name.to_owned(), owner.to_owned());
    let token = i64::try_from(token).unwrap_or(i64::MAX);
    let (stop, stopped) = mpsc::channel::<()>();
    let spawned = thread::Builder::new().name("check".into()).spawn(move || {
        let mut ends_by = None;
        let mut wait = Duration::ZERO;
        while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(wait) {
            wait = CHECK_PERIOD;
            let sent = Instant::now();
            let what = match locks.inspect(&name) {
                Ok(Some(info))
                    if info.locked_by.as_deref() == Some(&owner) && info.token == token =>
                {
                    match info.expires_in {
                        // The database computed `left` after `sent`: the lease ends no earlier.
                        Some(left) if left.is_finite() && left > 0.0 => {
                            ends_by = Some(sent + Duration::from_secs_f64(left));
                            continue;
                        }
                        // Expired but still ours: the library's watchdog reports it.
                        Some(_) => continue,
                        None => "it was released by another process (release --force)".to_owned(),
                    }
                }
                Ok(Some(info)) => format!(
                    "the row now carries owner {:?}, token {}",
                    info.locked_by.as_deref().unwrap_or("?"),
                    info.token
                ),
                Ok(None) => "its row was deleted".to_owned(),
                Err(_) => continue,
            };
            let message = format!(
                "lock {name:?} (owner {owner:?}, token {token}) was lost: {what} \
                 (seen by the tool's check, every {})",
                format::seconds(CHECK_PERIOD.as_secs_f64())
            );
            let _ = events.send(Event::Lost(Loss { message, ends_by }));
            return;
        }
    });
    match spawned {
        Ok(_) => Some(stop),
        Err(err) => {
            warn(&format!(
                "cannot start a thread to check the lock ({err}); a force release is seen at the next renewal"
            ));
            None
        }
    }
}
