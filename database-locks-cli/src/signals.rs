//! Signals to the tool become events of the session, delivered by a thread of their own
//! (signal-hook's iterator: the handler only writes to a pipe, the thread does the rest).

use std::io;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;

use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::exfiltrator::WithOrigin;
use signal_hook::iterator::SignalsInfo;
use signal_hook::low_level::siginfo::Cause;

use crate::session::Event;

/// The signals the tool catches and passes on to its command.
const CAUGHT: [i32; 6] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2];

/// One signal the tool received.
#[derive(Debug, Clone, Copy)]
pub struct Signal {
    pub number: i32,
    /// Sent by the kernel, not by a process: on Linux, a terminal's Ctrl-C, Ctrl-\ or
    /// hangup, which reached every process of the terminal's foreground group at once.
    pub from_terminal: bool,
}

impl Signal {
    /// Whether it ends a wait for the lock, or a `hold` (the ones that would end the tool
    /// by default and that people use to stop things).
    pub fn interrupts(self) -> bool {
        matches!(self.number, SIGINT | SIGTERM | SIGHUP | SIGQUIT)
    }
}

/// From now on the signals in [`CAUGHT`] no longer end the tool: each becomes an
/// [`Event::Signal`] on `events`.
pub fn watch(events: Sender<Event>) -> io::Result<()> {
    let mut signals = SignalsInfo::<WithOrigin>::new(CAUGHT)?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for origin in signals.forever() {
                let signal = Signal {
                    number: origin.signal,
                    from_terminal: origin.cause == Cause::Kernel,
                };
                if events.send(Event::Signal(signal)).is_err() {
                    break;
                }
            }
        })?;
    Ok(())
}

/// The signals that end a `--watch`, each delivered on the returned channel; they no
/// longer end the tool by themselves.
pub fn ending() -> io::Result<Receiver<i32>> {
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let (sender, receiver) = mpsc::channel();
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if sender.send(signal).is_err() {
                    break;
                }
            }
        })?;
    Ok(receiver)
}

/// The signal's name, for messages.
pub fn name(signal: i32) -> String {
    let name = match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        SIGQUIT => "SIGQUIT",
        SIGUSR1 => "SIGUSR1",
        SIGUSR2 => "SIGUSR2",
        libc::SIGKILL => "SIGKILL",
        other => return format!("signal {other}"),
    };
    name.into()
}
