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
///
/// With `renewals`, also sends [`Event::Renewed`] when a read finds that the lease ends
/// later than the previous read showed: the library renews without telling, and a lease
/// that ends later with the same owner and token was renewed. Renewals less than a
/// period apart show as one.
pub fn start(
    locks: &Locks,
    guard: &LockGuard,
    renewals: bool,
    events: Sender<Event>,
) -> Option<Sender<()>> {
    let (Some(owner), Some(token)) = (guard.locked_by(), guard.token()) else {
        return None;
    };
    // A permit's lease is its slot's row.
    let row = guard
        .permit()
        .map_or_else(|| guard.name().to_owned(), |p| p.row);
    start_row(locks, &row, owner, token, renewals, events)
}

/// [`start`] for the row of `name` held as `owner` with `token`.
pub fn start_row(
    locks: &Locks,
    name: &str,
    owner: &str,
    token: u64,
    renewals: bool,
    events: Sender<Event>,
) -> Option<Sender<()>> {
    let (locks, name, owner) = (locks.clone(), name.to_owned(), owner.to_owned());
    let token = i64::try_from(token).unwrap_or(i64::MAX);
    let (stop, stopped) = mpsc::channel::<()>();
    let spawned = thread::Builder::new().name("check".into()).spawn(move || {
        let mut ends_by = None;
        let mut last: Option<Expiry> = None;
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
                            let expiry = Expiry::read(sent, Instant::now(), left);
                            if renewals && last.is_some_and(|before| expiry.is_later(&before)) {
                                let _ = events.send(Event::Renewed { expires_in: left });
                            }
                            last = Some(expiry);
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

/// Where the end of a lease lies on this host's monotonic clock, from one reading of the
/// time it had left. The database computed `expires_at - now` at some instant between
/// sending the statement and getting the answer, so the end is between `sent + left` and
/// `answered + left`, however far the two clocks are apart. Two such readings are two
/// absolute expiries: unlike the times left, they only move when the row is written.
#[derive(Debug, Clone, Copy)]
struct Expiry {
    earliest: Instant,
    latest: Instant,
}

impl Expiry {
    /// What the databases' clocks and the conversion to seconds can blur: SQLite's
    /// `julianday('now')` has milliseconds; clock rates may differ by a few hundred parts
    /// per million. A renewal moves the end by ttl - margin, far more.
    const BLUR: Duration = Duration::from_millis(5);

    fn read(sent: Instant, answered: Instant, left: f64) -> Self {
        let left = Duration::from_secs_f64(left);
        Expiry {
            earliest: sent + left,
            latest: answered.max(sent) + left,
        }
    }

    /// Whether the lease certainly ends later than `before` showed: it was renewed since.
    fn is_later(&self, before: &Expiry) -> bool {
        self.earliest > before.latest + Self::BLUR
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_end_that_moved_is_a_renewal() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let first = Expiry::read(t0, t0 + ms(3), 3.0);
        // A second later, a second less left: the same end, read with other delays.
        let same = Expiry::read(t0 + ms(1000), t0 + ms(1010), 2.0);
        assert!(!same.is_later(&first));
        let blurred = Expiry::read(t0 + ms(1000), t0 + ms(1001), 2.004);
        assert!(!blurred.is_later(&first));
        // Renewed by 1.5 s in between.
        let renewed = Expiry::read(t0 + ms(1000), t0 + ms(1020), 3.5);
        assert!(renewed.is_later(&first));
        assert!(!first.is_later(&renewed));
    }
}
