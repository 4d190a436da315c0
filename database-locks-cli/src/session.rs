//! `run` and `hold`: take a lock, keep it while something happens, give it back.
//!
//! Everything that can happen arrives as an [`Event`] on one channel, read by the main
//! thread: the acquisition's result (it blocks, so it runs on a thread of its own), signals
//! to the tool, the lock's loss (the library's `lost_lock_cb`, or the tool's own check that
//! the row is still its own), the command's exit.

use std::io::{IsTerminal, Write};
use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use database_locks::{Config, LockGuard, Locks, LossCause, LostLock};

use crate::check;
use crate::child::{self, Child};
use crate::cli::{HoldArgs, LockArgs, RunArgs, Ttl};
use crate::report::{chain, one_line};
use crate::signals::{self, Signal};
use crate::verbose;
use crate::{exit, format, Failure, Outcome};

#[derive(Debug)]
pub enum Event {
    Acquired(Acquisition),
    Signal(Signal),
    Lost(Loss),
    ChildExited,
    /// The tool's check found the lease renewed (`run -v`): it ends in `expires_in`
    /// seconds by the database's clock.
    Renewed {
        expires_in: f64,
    },
    /// A change of leadership (`leader`).
    Leader(crate::leader::Change),
}

/// A lost lock, as the library reported it or as the tool's own check found it.
#[derive(Debug)]
pub struct Loss {
    /// What happened, for the one line the tool prints.
    pub message: String,
    /// The earliest moment the lost lease may end by the database's clock: the command
    /// must be dead by then. `None`: unknown, or a lease without expiry.
    pub ends_by: Option<Instant>,
}

impl From<&LostLock> for Loss {
    fn from(lost: &LostLock) -> Self {
        let how = match lost.cause {
            LossCause::Expired => " (the database did not answer in time; the lease runs out)",
            LossCause::Taken => {
                " (force-released, or taken by another owner; found at the lease's renewal)"
            }
            _ => "",
        };
        Loss {
            message: format!("{lost}{how}"),
            // The library's bound: the send time of the last renewal that succeeded plus
            // the ttl. The database started its lease no earlier, so it ends no earlier.
            ends_by: lost.expires_by,
        }
    }
}

#[derive(Debug)]
pub enum Acquisition {
    Held(LockGuard),
    /// Another owner holds the lock. `message` says so when it must be said whatever the
    /// output is (a timeout); a `--try` that found the lock held is quiet unless on a
    /// terminal, like `flock -n`.
    Busy {
        message: Option<String>,
    },
    Failed(Failure),
}

/// How waiting for the lock ended, short of an error.
enum Took {
    Guard(LockGuard),
    Busy,
    Interrupted(Signal),
}

pub struct Session {
    pub locks: Locks,
    pub events: Receiver<Event>,
    pub sender: Sender<Event>,
    /// The loss reported by the library or the check, if any.
    pub lost: Option<Loss>,
    pub lost_announced: bool,
    /// Changes of leadership that arrived while the command was being stopped.
    pub pending: std::collections::VecDeque<crate::leader::Change>,
    /// `run -v`: the held lease as its lines name it.
    pub verbose: Option<String>,
}

impl Session {
    /// Catches signals first, so that none can end the tool while it holds the lock.
    pub fn start(config: Config) -> Result<Session, Failure> {
        let (sender, events) = mpsc::channel();
        signals::watch(sender.clone())
            .map_err(|err| Failure::caused("cannot catch signals", &err))?;
        Ok(Session {
            locks: Locks::new(config)?,
            events,
            sender,
            lost: None,
            lost_announced: false,
            pending: Default::default(),
            verbose: None,
        })
    }

    fn acquire(&mut self, args: &LockArgs) -> Result<Took, Failure> {
        let mut builder = match args.permits {
            Some(permits) => self.locks.semaphore(args.name.clone(), permits),
            None => self.locks.lock(args.name.clone()),
        };
        if let Some(timeout) = args.timeout {
            builder = builder.timeout(timeout);
        }
        if let Some(Ttl(ttl)) = args.ttl {
            builder = builder.lock_ttl(ttl);
        }
        if let Some(margin) = args.ttl_renew {
            builder = builder.lock_ttl_renew(margin);
        }
        if let Some(owner) = &args.owner {
            builder = builder.locked_by(owner.clone());
        }
        if let Some(at_least) = args.at_least {
            builder = builder.lock_at_least_for(at_least);
        }
        // Instead of the library's default, which ends the process: the command must be
        // stopped first, and the tool's exit status must say what happened.
        let sender = self.sender.clone();
        builder = builder.lost_lock_cb(move |lost| {
            let _ = sender.send(Event::Lost(Loss::from(lost)));
        });
        let try_once = args.try_once;
        let sender = self.sender.clone();
        thread::Builder::new()
            .name("acquire".into())
            .spawn(move || {
                // A panic must still end the wait, or the main thread would wait for ever.
                let result = panic::catch_unwind(AssertUnwindSafe(|| {
                    if try_once {
                        builder.try_acquire()
                    } else {
                        builder.acquire().map(Some)
                    }
                }));
                let acquisition = match result {
                    Ok(Ok(Some(guard))) => Acquisition::Held(guard),
                    Ok(Ok(None)) => Acquisition::Busy { message: None },
                    Ok(Err(err)) if err.is_contention() => Acquisition::Busy {
                        message: Some(err.to_string()),
                    },
                    Ok(Err(err)) => Acquisition::Failed(Failure::from(err)),
                    Err(_) => Acquisition::Failed(Failure::from(
                        "internal error: acquiring the lock panicked".to_owned(),
                    )),
                };
                let _ = sender.send(Event::Acquired(acquisition));
            })
            .map_err(|err| Failure::caused("cannot start a thread", &err))?;
        self.wait_for_lock(&args.name)
    }

    fn wait_for_lock(&mut self, name: &str) -> Result<Took, Failure> {
        let started = Instant::now();
        let mut progress = Progress::new(name);
        loop {
            let event = match progress.next {
                Some(at) => self
                    .events
                    .recv_timeout(at.saturating_duration_since(Instant::now())),
                None => self
                    .events
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected),
            };
            match event {
                Ok(Event::Acquired(Acquisition::Held(guard))) => {
                    progress.clear();
                    return Ok(Took::Guard(guard));
                }
                Ok(Event::Acquired(Acquisition::Busy { message })) => {
                    progress.clear();
                    match message {
                        Some(message) => warn(&message),
                        None if progress.enabled => warn(&self.held_elsewhere(name)),
                        None => {}
                    }
                    return Ok(Took::Busy);
                }
                Ok(Event::Acquired(Acquisition::Failed(failure))) => {
                    progress.clear();
                    return Err(failure);
                }
                Ok(Event::Signal(signal)) if signal.interrupts() => {
                    progress.clear();
                    warn(&format!(
                        "{} while waiting for lock {name:?}; giving up",
                        signals::name(signal.number)
                    ));
                    // An acquisition that succeeded meanwhile is given back at once.
                    while let Ok(event) = self.events.try_recv() {
                        if let Event::Acquired(Acquisition::Held(guard)) = event {
                            let _ = guard.release();
                        }
                    }
                    return Ok(Took::Interrupted(signal));
                }
                // SIGUSR1, SIGUSR2: nobody to pass them to yet.
                Ok(Event::Signal(_))
                | Ok(Event::ChildExited)
                | Ok(Event::Renewed { .. })
                | Ok(Event::Leader(_)) => {}
                Ok(Event::Lost(lost)) => self.lost = Some(lost),
                Err(RecvTimeoutError::Timeout) => progress.show(&self.locks, started),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Failure::from(
                        "internal error: the event channel closed".to_owned(),
                    ));
                }
            }
        }
    }

    /// "lock X is held by Y, ...", for a `--try` on a terminal.
    fn held_elsewhere(&self, name: &str) -> String {
        match self.locks.inspect(name) {
            Ok(Some(info)) if info.is_held() => format!(
                "lock {name:?} is held by {} (lease ends {})",
                info.locked_by.as_deref().unwrap_or("?"),
                format::expiry(info.expires_in)
            ),
            _ => format!("lock {name:?} is held by another owner"),
        }
    }

    pub fn announce_loss(&mut self, consequence: &str) {
        if let (Some(lost), false) = (&self.lost, self.lost_announced) {
            warn(&format!("{}; {consequence}", lost.message));
            self.lost_announced = true;
        }
    }

    /// Waits for the command to exit, passing signals on. On a lost lock, stops it.
    fn supervise(&mut self, child: &Child, kill_after: Duration) {
        if self.lost.is_some() {
            return self.stop(child, kill_after);
        }
        loop {
            match self.events.recv() {
                Ok(Event::ChildExited) | Err(_) => return,
                Ok(Event::Signal(signal)) => pass_on(child, signal),
                Ok(Event::Lost(lost)) => {
                    self.lost = Some(lost);
                    return self.stop(child, kill_after);
                }
                Ok(Event::Renewed { expires_in }) => {
                    if let Some(lease) = &self.verbose {
                        note(&verbose::renewed(lease, expires_in));
                    }
                }
                Ok(Event::Acquired(_)) | Ok(Event::Leader(_)) => {}
            }
        }
    }

    /// SIGTERM, then SIGKILL after `kill_after` or sooner, so that the command is dead
    /// before the lease ends, then SIGKILL to anything the command left behind in its
    /// process group: nothing may go on working without the lock.
    pub fn stop(&mut self, child: &Child, kill_after: Duration) {
        let now = Instant::now();
        let ends_by = self.lost.as_ref().and_then(|lost| lost.ends_by);
        let mut deadline = kill_deadline(now, kill_after, ends_by);
        let grace = format::seconds(deadline.saturating_duration_since(now).as_secs_f64());
        let shortened = if deadline < now + kill_after {
            ", before the lease ends"
        } else {
            ""
        };
        self.announce_loss(&format!(
            "stopping the command (SIGTERM, SIGKILL after {grace}{shortened})"
        ));
        child.signal(libc::SIGTERM);
        let mut killed = false;
        loop {
            let event = if killed {
                self.events
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                self.events
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            };
            match event {
                Ok(Event::ChildExited) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(Event::Signal(signal)) => pass_on(child, signal),
                // The library's report after the check's: it may know an earlier end.
                Ok(Event::Lost(lost)) => {
                    deadline =
                        deadline.min(kill_deadline(Instant::now(), kill_after, lost.ends_by));
                }
                // `leader`: the library's demotion after the check's loss; kept for later.
                Ok(Event::Leader(change)) => {
                    if let Some(ends_by) = change.ends_by() {
                        deadline =
                            deadline.min(kill_deadline(Instant::now(), kill_after, Some(ends_by)));
                    }
                    self.pending.push_back(change);
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    child.signal(libc::SIGKILL);
                    killed = true;
                }
            }
        }
        child.kill_leftovers();
    }

    /// Releases the lock and picks the exit status.
    fn finish(&mut self, guard: LockGuard, status: u8) -> u8 {
        // A loss reported while the command was exiting still counts.
        while let Ok(event) = self.events.try_recv() {
            if let Event::Lost(lost) = event {
                self.lost.get_or_insert(lost);
            }
        }
        let released = guard.release();
        if self.lost.is_some() {
            self.announce_loss("the command ran without it for part of its run");
            return exit::LOST;
        }
        match released {
            Ok(()) => {
                if let Some(lease) = &self.verbose {
                    note(&verbose::released(lease));
                }
                status
            }
            Err(err @ database_locks::Error::Lost { .. }) => {
                warn(&format!(
                    "{}; the command ran without it for part of its run",
                    chain(&err)
                ));
                exit::LOST
            }
            Err(err) => {
                warn(&format!(
                    "releasing the lock failed: {}; it ends when its lease runs out",
                    chain(&err)
                ));
                status
            }
        }
    }
}

/// When SIGKILL follows SIGTERM: `kill_after` later, but no later than halfway from now to
/// the earliest end of the lease (`ends_by`), so that the command is dead before anybody
/// else can take the lock. The other half is the safety margin: the time for SIGKILL to
/// take effect, and for this thread to be woken late on a loaded machine. With the
/// defaults (ttl 10 s, margin 2 s) the library reports an expiring lease 500 ms before its
/// end, so SIGKILL comes about 250 ms after SIGTERM and 250 ms before the end.
fn kill_deadline(now: Instant, kill_after: Duration, ends_by: Option<Instant>) -> Instant {
    let wanted = now + kill_after;
    match ends_by {
        Some(end) => wanted.min(now + end.saturating_duration_since(now) / 2),
        None => wanted,
    }
}

/// Passes a signal to the command, unless the terminal already sent it there.
pub fn pass_on(child: &Child, signal: Signal) {
    if !(signal.from_terminal && child.shares_terminal()) {
        child.signal(signal.number);
    }
}

pub fn run(config: Config, args: RunArgs) -> Outcome {
    let mut session = Session::start(config)?;
    let guard = match session.acquire(&args.lock)? {
        Took::Guard(guard) => guard,
        Took::Busy => return Ok(exit::BUSY),
        Took::Interrupted(signal) => return Ok(exit::signaled(signal.number)),
    };
    let env = match (guard.locked_by(), guard.token()) {
        (Some(owner), Some(token)) => {
            let mut env = vec![
                ("DATABASE_LOCKS_NAME", guard.name().to_owned()),
                ("DATABASE_LOCKS_OWNER", owner.to_owned()),
                ("DATABASE_LOCKS_TOKEN", token.to_string()),
            ];
            if let Some(permit) = guard.permit() {
                env.push(("DATABASE_LOCKS_SLOT", permit.slot.to_string()));
            }
            env
        }
        _ => {
            warn("locking is disabled (DATABASE_LOCKS_ENABLED); running without the lock");
            Vec::new()
        }
    };
    if args.verbose {
        session.verbose = verbose::lease(&guard);
        if let Some(lease) = &session.verbose {
            note(&verbose::acquired(&session.locks, &guard, lease));
        }
    }
    let child = match Child::spawn(&args.command, env, session.sender.clone()) {
        Ok(child) => child,
        Err(failure) => {
            let _ = guard.release();
            return Err(failure);
        }
    };
    let check = check::start(&session.locks, &guard, args.verbose, session.sender.clone());
    session.supervise(&child, args.kill_after);
    drop(check);
    let status = match child.reap() {
        Ok(status) => child::status_code(status),
        Err(err) => {
            warn(&format!("cannot read the command's exit status: {err}"));
            exit::RUN_ERROR
        }
    };
    Ok(session.finish(guard, status))
}

pub fn hold(config: Config, args: HoldArgs) -> Outcome {
    let mut session = Session::start(config)?;
    let guard = match session.acquire(&args.lock)? {
        Took::Guard(guard) => guard,
        Took::Busy => return Ok(exit::BUSY),
        Took::Interrupted(signal) => return Ok(exit::signaled(signal.number)),
    };
    if !guard.is_held() {
        warn("locking is disabled (DATABASE_LOCKS_ENABLED); holding nothing");
    }
    // The seed's db_lock_it says the same.
    say(&format!(
        "Got the lock, sleeping {} seconds",
        args.duration.as_secs_f64()
    ));
    let deadline = Instant::now() + args.duration;
    let ending = loop {
        if session.lost.is_some() {
            break None;
        }
        match session
            .events
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Err(_) => break Some(exit::OK),
            Ok(Event::Signal(signal)) if signal.interrupts() => {
                warn(&format!(
                    "{}: releasing the lock",
                    signals::name(signal.number)
                ));
                break Some(exit::signaled(signal.number));
            }
            Ok(Event::Lost(lost)) => session.lost = Some(lost),
            Ok(_) => {}
        }
    };
    let Some(status) = ending else {
        session.announce_loss("stopping");
        return Ok(exit::LOST);
    };
    if status == exit::OK {
        say("Releasing lock");
    }
    match guard.release() {
        Ok(()) => Ok(status),
        Err(err @ database_locks::Error::Lost { .. }) => {
            warn(&chain(&err));
            Ok(exit::LOST)
        }
        Err(err) => Err(err.into()),
    }
}

/// What a long wait shows on a terminal, redrawn each second: the holder and its time left.
struct Progress<'a> {
    name: &'a str,
    enabled: bool,
    shown: bool,
    next: Option<Instant>,
}

impl<'a> Progress<'a> {
    const PERIOD: Duration = Duration::from_secs(1);

    fn new(name: &'a str) -> Self {
        let enabled = std::io::stderr().is_terminal();
        Progress {
            name,
            enabled,
            shown: false,
            next: enabled.then(|| Instant::now() + Self::PERIOD),
        }
    }

    fn show(&mut self, locks: &Locks, started: Instant) {
        let name = self.name;
        let holder = match locks.inspect(name) {
            Ok(Some(info)) if info.is_held() => format!(
                "held by {}, lease ends {}",
                info.locked_by.as_deref().unwrap_or("?"),
                format::expiry(info.expires_in)
            ),
            Ok(_) => "being released".into(),
            Err(err) => format!("cannot see the holder: {}", one_line(&chain(&err))),
        };
        let waited = format::seconds(started.elapsed().as_secs_f64());
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[Kwaiting for lock {name:?} ({holder}); waited {waited}"
        );
        let _ = err.flush();
        self.shown = true;
        self.next = Some(Instant::now() + Self::PERIOD);
    }

    fn clear(&mut self) {
        if self.shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
            self.shown = false;
        }
        self.next = None;
    }
}

pub fn warn(message: &str) {
    eprintln!("database-locks: {}", one_line(message));
}

/// A line of `run -v` on stderr: not a warning, but said the same way.
pub fn note(message: &str) {
    warn(message);
}

/// A line on stdout, flushed at once (whoever reads it may be waiting for it).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigkill_comes_before_the_lease_ends() {
        let now = Instant::now();
        let sec = Duration::from_secs(1);
        assert_eq!(kill_deadline(now, 5 * sec, None), now + 5 * sec);
        assert_eq!(
            kill_deadline(now, 5 * sec, Some(now + 20 * sec)),
            now + 5 * sec
        );
        assert_eq!(kill_deadline(now, 5 * sec, Some(now + sec)), now + sec / 2);
        assert_eq!(kill_deadline(now, Duration::ZERO, Some(now + sec)), now);
        // Noticed after the end (a stalled machine): at once.
        assert_eq!(kill_deadline(now + sec, 5 * sec, Some(now)), now + sec);
    }
}
