//! `leader`: campaign for a name, run the command while this host leads, stop it (with
//! `run`'s SIGTERM / SIGKILL rules) when leadership is lost, and campaign again.
//!
//! The library's [`Leader`] campaigns on a thread of its own; its callbacks become
//! [`Event::Leader`] on the session's channel, next to signals, the command's exit and the
//! tool's own check of the row (the same check as `run`'s, every second).

use std::sync::mpsc::{self, SyncSender};
use std::time::{Duration, Instant};

use database_locks::{Config, Demotion, DemotionCause, Leader, Term};

use crate::check;
use crate::child::{self, Child};
use crate::cli::LeaderArgs;
use crate::session::{pass_on, warn, Event, Loss, Session};
use crate::signals;
use crate::{exit, Outcome};

/// A change of leadership, as the library's callbacks report it.
#[derive(Debug)]
pub enum Change {
    Elected(Term),
    /// After a loss, the campaign waits (at most the time to stop the command) until the
    /// `ack` is dropped, so that it cannot be elected again while the command still runs.
    Demoted {
        demotion: Demotion,
        ack: Option<SyncSender<()>>,
    },
}

impl Change {
    /// The earliest end of a lost lease, for the command's SIGKILL deadline.
    pub fn ends_by(&self) -> Option<Instant> {
        match self {
            Change::Demoted {
                demotion:
                    Demotion {
                        cause: DemotionCause::Lost(lost),
                        ..
                    },
                ..
            } => lost.expires_by,
            _ => None,
        }
    }
}

/// How a term ended for the tool.
enum Ended {
    /// The command exited by itself, with this status.
    Exited(u8),
    /// Leadership was lost; the command was stopped.
    Lost,
}

pub fn leader(config: Config, args: LeaderArgs) -> Outcome {
    let mut session = Session::start(config)?;
    let leader = campaign(&session, &args)?;
    loop {
        let term = match next_term(&mut session) {
            Ok(term) => term,
            Err(status) => {
                leader.stop();
                return Ok(status);
            }
        };
        match lead(&mut session, &leader, &args, &term)? {
            Ended::Exited(status) => {
                // Releases at once (the next candidate takes over) and stops campaigning.
                leader.stop();
                return Ok(status);
            }
            Ended::Lost => {
                session.lost = None;
                session.lost_announced = false;
                warn(&format!("campaigning again for {:?}", args.name));
            }
        }
    }
}

fn campaign(session: &Session, args: &LeaderArgs) -> Result<Leader, crate::Failure> {
    let mut builder = session
        .locks
        .leader(args.name.clone())
        .retry(args.retry)
        // After the tool's own check found the row taken, it steps down: campaign again
        // after a poll period.
        .step_down_pause(args.retry);
    if let Some(ttl) = args.ttl {
        builder = builder.lock_ttl(ttl);
    }
    if let Some(margin) = args.ttl_renew {
        builder = builder.lock_ttl_renew(margin);
    }
    if let Some(owner) = &args.owner {
        builder = builder.locked_by(owner.clone());
    }
    let (elected, demoted) = (session.sender.clone(), session.sender.clone());
    // Long enough for the command to be stopped: SIGKILL comes at `kill_after` at the
    // latest.
    let stopping = args.kill_after + Duration::from_secs(5);
    let leader = builder
        .on_elected(move |term| {
            let _ = elected.send(Event::Leader(Change::Elected(term.clone())));
        })
        .on_demoted(move |demotion| {
            let lost = matches!(demotion.cause, DemotionCause::Lost(_));
            let (ack, acked) = mpsc::sync_channel(0);
            let change = Change::Demoted {
                demotion: demotion.clone(),
                ack: lost.then_some(ack),
            };
            if demoted.send(Event::Leader(change)).is_ok() && lost {
                // Dropped by the main thread once the command is dead.
                let _ = acked.recv_timeout(stopping);
            }
        })
        .start()?;
    Ok(leader)
}

/// Waits to be elected; `Err` with the exit status when a signal ends the wait.
fn next_term(session: &mut Session) -> Result<Term, u8> {
    loop {
        let event = match session.pending.pop_front() {
            Some(change) => Event::Leader(change),
            None => session.events.recv().map_err(|_| exit::RUN_ERROR)?,
        };
        match event {
            Event::Leader(Change::Elected(term)) => return Ok(term),
            // A demotion that came while the command was being stopped: acknowledged by
            // dropping it.
            Event::Leader(Change::Demoted { .. }) => {}
            Event::Signal(signal) if signal.interrupts() => {
                warn(&format!(
                    "{} while campaigning; stopping",
                    signals::name(signal.number)
                ));
                return Err(exit::signaled(signal.number));
            }
            _ => {}
        }
    }
}

/// One term: runs the command until it exits or leadership is lost.
fn lead(
    session: &mut Session,
    leader: &Leader,
    args: &LeaderArgs,
    term: &Term,
) -> Result<Ended, crate::Failure> {
    let env = if term.token == 0 {
        warn("locking is disabled (DATABASE_LOCKS_ENABLED); running without the lock");
        Vec::new()
    } else {
        vec![
            ("DATABASE_LOCKS_NAME", term.name.clone()),
            ("DATABASE_LOCKS_OWNER", term.locked_by.clone()),
            ("DATABASE_LOCKS_TOKEN", term.token.to_string()),
        ]
    };
    let child = match Child::spawn(&args.command, env, session.sender.clone()) {
        Ok(child) => child,
        Err(failure) => {
            leader.stop();
            return Err(failure);
        }
    };
    let check = (term.token != 0)
        .then(|| {
            check::start_row(
                &session.locks,
                &term.name,
                &term.locked_by,
                term.token,
                false,
                session.sender.clone(),
            )
        })
        .flatten();
    let lost = loop {
        match session.events.recv() {
            Ok(Event::ChildExited) | Err(_) => break false,
            Ok(Event::Signal(signal)) => pass_on(&child, signal),
            // The tool's check: the row is no longer this term's.
            Ok(Event::Lost(loss)) => {
                session.lost = Some(loss);
                session.stop(&child, args.kill_after);
                // Ends the library's term too, which would notice at its next renewal.
                leader.step_down();
                break true;
            }
            Ok(Event::Leader(Change::Demoted { demotion, ack })) => {
                if let DemotionCause::Lost(lost) = &demotion.cause {
                    session.lost = Some(Loss::from(lost));
                }
                session.stop(&child, args.kill_after);
                drop(ack);
                break true;
            }
            Ok(_) => {}
        }
    };
    drop(check);
    let status = match child.reap() {
        Ok(status) => child::status_code(status),
        Err(err) => {
            warn(&format!("cannot read the command's exit status: {err}"));
            exit::RUN_ERROR
        }
    };
    Ok(if lost {
        Ended::Lost
    } else {
        Ended::Exited(status)
    })
}
