//! The command `run` supervises.
//!
//! Where it runs: in a process group of its own, so that a lost lock or a signal passed on
//! reaches everything it started (a shell script's `pg_dump` as well as the shell). But a
//! process group that is not the terminal's foreground group cannot read the terminal, so
//! when the tool runs in the foreground of a terminal the command stays in the tool's group:
//! it reads the terminal, gets Ctrl-C from it directly, and signals go to it alone.
//!
//! If the tool itself dies (SIGKILL, the OOM killer, a container stop that kills only the
//! main process), nobody is left to stop the command, and it would go on running without
//! the lock. On Linux the command gets SIGKILL then (`PR_SET_PDEATHSIG`). Limits: only
//! the command itself, not what it started (a script's `pg_dump` survives its shell); the
//! kernel clears the setting when the command executes a set-user-ID program. On other
//! Unix systems there is no such setting and the command outlives the tool.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::ExitStatus;
use std::sync::mpsc::Sender;
use std::thread;

use crate::exit;
use crate::session::Event;
use crate::Failure;

#[derive(Debug)]
pub struct Child {
    process: std::process::Child,
    pid: libc::pid_t,
    own_group: bool,
}

impl Child {
    /// Starts `command` with `env` added to the tool's environment. When it exits,
    /// [`Event::ChildExited`] arrives on `events`; it stays a zombie (so its pid cannot be
    /// reused and signals cannot reach a stranger) until [`reap`](Self::reap).
    pub fn spawn(
        command: &[OsString],
        env: Vec<(&'static str, String)>,
        events: Sender<Event>,
    ) -> Result<Child, Failure> {
        let (program, args) = command
            .split_first()
            .ok_or_else(|| Failure::with_status(exit::RUN_ERROR, "no command to run"))?;
        let own_group = !in_terminal_foreground();
        let mut cmd = std::process::Command::new(program);
        cmd.args(args).envs(env);
        if own_group {
            cmd.process_group(0);
        }
        #[cfg(target_os = "linux")]
        die_with_the_tool(&mut cmd);
        let shown = program.to_string_lossy();
        let process = cmd.spawn().map_err(|err| {
            let status = match err.kind() {
                io::ErrorKind::NotFound => exit::NOT_FOUND,
                io::ErrorKind::PermissionDenied => exit::CANNOT_EXECUTE,
                _ if err.raw_os_error() == Some(libc::ENOEXEC) => exit::CANNOT_EXECUTE,
                _ => exit::RUN_ERROR,
            };
            let why = crate::report::chain(&err);
            Failure::with_status(status, format!("cannot run {shown}: {why}"))
        })?;
        let mut child = Child {
            pid: libc::pid_t::try_from(process.id()).unwrap_or(libc::pid_t::MAX),
            process,
            own_group,
        };
        let pid = child.pid;
        let waiter = thread::Builder::new()
            .name("child-exit".into())
            .spawn(move || {
                wait_for_exit(pid);
                let _ = events.send(Event::ChildExited);
            });
        if let Err(err) = waiter {
            child.signal(libc::SIGKILL);
            let _ = child.process.wait();
            return Err(Failure::with_status(
                exit::RUN_ERROR,
                format!("cannot start a thread to wait for {shown}: {err}"),
            ));
        }
        Ok(child)
    }

    /// Whether the command gets the terminal's signals (Ctrl-C) itself.
    pub fn shares_terminal(&self) -> bool {
        !self.own_group
    }

    /// Sends `signal` to the command (its whole process group when it has one).
    /// Only called before [`reap`](Self::reap), so the pid is still the command's.
    pub fn signal(&self, signal: i32) {
        let target = if self.own_group { -self.pid } else { self.pid };
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(target, signal);
        }
    }

    /// SIGKILL to whatever is left of the command's process group after the command
    /// itself exited; called after a lost lock, before [`reap`](Self::reap) (the zombie
    /// keeps the group id from being reused).
    pub fn kill_leftovers(&self) {
        if self.own_group {
            self.signal(libc::SIGKILL);
        }
    }

    /// Collects the exit status once [`Event::ChildExited`] arrived.
    pub fn reap(mut self) -> io::Result<ExitStatus> {
        self.process.wait()
    }
}

/// Makes the command get SIGKILL when the tool dies. The kernel sends it when the *thread*
/// that forked exits: `spawn` runs on the main thread, which lives as long as the tool.
#[cfg(target_os = "linux")]
fn die_with_the_tool(cmd: &mut std::process::Command) {
    // SAFETY: getpid has no preconditions.
    let tool = unsafe { libc::getpid() };
    // SAFETY: the hook runs between fork and exec and calls only prctl and getppid, which
    // are async-signal-safe; it allocates nothing (the error is a raw OS error).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The tool died before the setting took effect: the signal will never come.
            if libc::getppid() != tool {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// The status `run` exits with for the command's status.
pub fn status_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => (code & 0xff) as u8,
        (None, Some(signal)) => exit::signaled(signal),
        (None, None) => exit::RUN_ERROR,
    }
}

/// Blocks until `pid` has exited, without reaping it.
fn wait_for_exit(pid: libc::pid_t) {
    let Ok(id) = libc::id_t::try_from(pid) else {
        return;
    };
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value, and waitid only writes into it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid, writable siginfo_t.
        let rc = unsafe { libc::waitid(libc::P_PID, id, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

/// Whether the tool runs in the foreground process group of a terminal (one of its
/// standard streams is a terminal whose foreground group is the tool's).
fn in_terminal_foreground() -> bool {
    // SAFETY: isatty, tcgetpgrp and getpgrp only read process state.
    (0..=2).any(|fd| unsafe { libc::isatty(fd) == 1 && libc::tcgetpgrp(fd) == libc::getpgrp() })
}
