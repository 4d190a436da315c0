//! What one process knows without asking the database: which thread holds which name
//! (to refuse a self-deadlock), waking waiters when a lock is released here, and the
//! status file.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::thread::ThreadId;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

#[derive(Default)]
struct State {
    /// Per name, the guards held in this process: (holding thread, owner, guard id).
    held: HashMap<String, Vec<(ThreadId, String, u64)>>,
    /// Per name, a counter bumped by every release in this process.
    releases: HashMap<String, u64>,
    waiting: usize,
    holding: usize,
    next_guard: u64,
}

/// Process-local bookkeeping of one handle.
pub(crate) struct Local {
    state: Mutex<State>,
    released: Condvar,
    status_file: Mutex<Option<PathBuf>>,
    last_status: Mutex<Option<u8>>,
}

impl fmt::Debug for Local {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        f.debug_struct("Local")
            .field("waiting", &state.waiting)
            .field("holding", &state.holding)
            .finish_non_exhaustive()
    }
}

impl Local {
    pub(crate) fn new(status_file: Option<PathBuf>) -> Self {
        let local = Local {
            state: Mutex::new(State::default()),
            released: Condvar::new(),
            status_file: Mutex::new(status_file),
            last_status: Mutex::new(None),
        };
        local.write_status(0);
        local
    }

    pub(crate) fn set_status_file(&self, path: Option<PathBuf>) {
        *self.status_file.lock() = path;
        *self.last_status.lock() = None;
        let status = {
            let state = self.state.lock();
            status_of(&state)
        };
        self.write_status(status);
    }

    /// Whether this thread holds `name` through a guard whose owner is not `owner`.
    pub(crate) fn would_deadlock(&self, name: &str, owner: Option<&str>) -> bool {
        let me = std::thread::current().id();
        let state = self.state.lock();
        state.held.get(name).is_some_and(|guards| {
            guards
                .iter()
                .any(|(thread, held_owner, _)| *thread == me && Some(held_owner.as_str()) != owner)
        })
    }

    /// The release counter of `name`, read before an attempt so that a release between the
    /// attempt and the wait is not missed.
    pub(crate) fn release_count(&self, name: &str) -> u64 {
        self.state.lock().releases.get(name).copied().unwrap_or(0)
    }

    /// Sleeps until `deadline` or until `name` is released in this process.
    pub(crate) fn wait_for_release(&self, name: &str, seen: u64, deadline: Instant) {
        let mut state = self.state.lock();
        while state.releases.get(name).copied().unwrap_or(0) == seen {
            if self.released.wait_until(&mut state, deadline).timed_out() {
                return;
            }
        }
    }

    pub(crate) fn start_waiting(&self) {
        let status = {
            let mut state = self.state.lock();
            state.waiting += 1;
            status_of(&state)
        };
        self.write_status(status);
    }

    pub(crate) fn stop_waiting(&self) {
        let status = {
            let mut state = self.state.lock();
            state.waiting = state.waiting.saturating_sub(1);
            status_of(&state)
        };
        self.write_status(status);
    }

    /// Records a guard; returns its id.
    pub(crate) fn acquired(&self, name: &str, owner: &str) -> u64 {
        let (id, status) = {
            let mut state = self.state.lock();
            state.next_guard += 1;
            let id = state.next_guard;
            let me = std::thread::current().id();
            state
                .held
                .entry(name.to_owned())
                .or_default()
                .push((me, owner.to_owned(), id));
            state.holding += 1;
            (id, status_of(&state))
        };
        self.write_status(status);
        id
    }

    /// Forgets a guard and wakes this process's waiters for `name`.
    pub(crate) fn released(&self, name: &str, guard: u64) {
        let status = {
            let mut state = self.state.lock();
            if let Some(guards) = state.held.get_mut(name) {
                guards.retain(|(_, _, id)| *id != guard);
                if guards.is_empty() {
                    state.held.remove(name);
                }
            }
            *state.releases.entry(name.to_owned()).or_default() += 1;
            state.holding = state.holding.saturating_sub(1);
            status_of(&state)
        };
        self.released.notify_all();
        self.write_status(status);
    }

    fn write_status(&self, status: u8) {
        let Some(path) = self.status_file.lock().clone() else {
            return;
        };
        let mut last = self.last_status.lock();
        if *last == Some(status) {
            return;
        }
        match std::fs::write(&path, status.to_string()) {
            Ok(()) => *last = Some(status),
            Err(err) => {
                tracing::warn!(path = %path.display(), "cannot write the lock status file: {err}")
            }
        }
    }
}

/// `2` while any lock is held, else `1` while any acquisition waits, else `0`.
fn status_of(state: &State) -> u8 {
    if state.holding > 0 {
        2
    } else if state.waiting > 0 {
        1
    } else {
        0
    }
}
