//! `--watch`: `list` or `status` again every S seconds until SIGINT, SIGTERM or SIGHUP.
//! On a terminal each snapshot replaces the last (the screen is cleared and redrawn, as
//! `watch(1)` does); otherwise each is printed after a blank line, so that the output can
//! be piped, logged or read by a test.

use std::io::{ErrorKind, IsTerminal, Write};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use crate::{format, report, signals, Failure, Outcome};

/// Cursor home, clear the screen.
const CLEAR: &str = "\x1b[H\x1b[2J";

/// Calls `snapshot` at once and then every `every`, printing what it wrote, until a
/// signal ends the watch; returns the last snapshot's status. A failure of the first
/// snapshot ends the watch with it (a wrong URL, no table: nothing will get better); a
/// later one is reported on stderr, and the watch goes on. A reader that went away (a
/// closed pipe) ends the watch too.
pub fn watch(
    every: Duration,
    title: &str,
    mut snapshot: impl FnMut(&mut Vec<u8>) -> Outcome,
) -> Outcome {
    let stop = signals::ending().map_err(|err| Failure::caused("cannot catch signals", &err))?;
    let terminal = std::io::stdout().is_terminal();
    let mut status = None;
    let mut next = Instant::now();
    loop {
        let mut page = Vec::new();
        if terminal {
            let every = format::seconds(every.as_secs_f64());
            page.extend_from_slice(format!("{CLEAR}Every {every}: {title}\n\n").as_bytes());
        } else if status.is_some() {
            page.push(b'\n');
        }
        let outcome = snapshot(&mut page);
        let written = {
            let mut out = std::io::stdout().lock();
            out.write_all(&page).and_then(|()| out.flush())
        };
        status = Some(match outcome {
            Ok(code) => code,
            Err(failure) if status.is_none() => return Err(failure),
            Err(failure) => {
                report::error(&failure.message);
                failure.status.unwrap_or(crate::exit::ERROR)
            }
        });
        let last = status.unwrap_or(crate::exit::ERROR);
        match written {
            Ok(()) => {}
            Err(err) if err.kind() == ErrorKind::BrokenPipe => return Ok(last),
            Err(err) => return Err(Failure::caused("cannot write to stdout", &err)),
        }
        // A fixed rhythm: a slow snapshot does not push the next ones back.
        next += every;
        let now = Instant::now();
        if next < now {
            next = now;
        }
        match stop.recv_timeout(next - now) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(_) | Err(RecvTimeoutError::Disconnected) => return Ok(last),
        }
    }
}
