//! Exit statuses. `run` passes its command's status through, so the tool's own statuses sit
//! where commands rarely put theirs: 75 as in the library, 124 to 127 as `timeout(1)` and
//! `env(1)` use them, 128 + N for a command killed by signal N, as shells report it.

/// Success; for `run`, the command exited 0.
pub const OK: u8 = 0;
/// `status`: the lock is free. `release`: there was nothing to release.
pub const FREE: u8 = 1;
/// A usage error (any command), or an error of any command but `run` (configuration,
/// database).
pub const ERROR: u8 = 2;
/// `run`, `hold`: the lock was lost while held; the command was stopped. The library's
/// `LOST_LOCK_EXIT_CODE` (`EX_TEMPFAIL`).
pub const LOST: u8 = 75;
/// `run`, `hold`: another owner held the lock (`--try`), or still held it when `--timeout`
/// ran out. The command did not run.
pub const BUSY: u8 = 124;
/// `run`: the tool failed (configuration, database); the command did not run, or its
/// status is unknown.
pub const RUN_ERROR: u8 = 125;
/// `run`: the command was found but could not be executed.
pub const CANNOT_EXECUTE: u8 = 126;
/// `run`: the command was not found.
pub const NOT_FOUND: u8 = 127;

/// The status for death by signal `signal`, as shells report it.
pub fn signaled(signal: i32) -> u8 {
    u8::try_from(128 + signal.clamp(0, 127)).unwrap_or(u8::MAX)
}

/// The table `--help` shows.
pub const HELP: &str = "\
Exit status:
  0        success; for `run`, `leader`, the command's own status (128+N if signal N killed it)
  1        `status`: the lock is free; `release`: nothing was released
  2        usage error; for commands but `run`, also configuration, database
  75       `run`, `hold`: the lock was lost; the command was stopped (SIGTERM, then SIGKILL)
  124      `run`, `hold`: the lock is held by another owner (--try) or --timeout ran out
  125      `run`, `leader`: the tool failed (configuration, database)
  126, 127 `run`: the command cannot be executed / was not found
  128+N    `run`, `hold`, `leader`: interrupted by signal N while waiting for the lock";

#[cfg(test)]
mod tests {
    #[test]
    fn lost_is_the_library_status() {
        assert_eq!(i32::from(super::LOST), database_locks::LOST_LOCK_EXIT_CODE);
    }

    #[test]
    fn signals_map_as_shells_do() {
        assert_eq!(super::signaled(15), 143);
        assert_eq!(super::signaled(2), 130);
    }
}
