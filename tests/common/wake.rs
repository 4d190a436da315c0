//! The waiting process of the cross-process wake-up tests (`sqlite_wake.rs`,
//! `mysql_wake.rs`): `wake-helper wait`, which polls so rarely that only a wake-up lets it
//! in before its timeout.

use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use super::{expect_line, lines, wait_exit, Db};

pub const WAKE_HELPER: &str = env!("CARGO_BIN_EXE_wake-helper");

/// The waiter's poll: longer than anything a test waits, so a poll cannot pass it.
pub const RETRY: &str = "60";

/// How long a step may take on a loaded machine before the test calls it broken.
pub const STEP: Duration = Duration::from_secs(60);

/// Starts `wake-helper wait` on `db` (`notify` sets `DATABASE_LOCKS_NOTIFY`) and returns
/// it once its first attempt has been refused, with the listener state it reported.
pub fn waiter(
    db: &Db,
    name: &str,
    permits: u32,
    retry: &str,
    timeout: &str,
    notify: bool,
) -> (Child, Receiver<String>, String) {
    let mut child = Command::new(WAKE_HELPER)
        .args(["wait", &db.url, name, &permits.to_string(), retry, timeout])
        .env("DATABASE_LOCKS_NOTIFY", notify.to_string())
        .env_remove("DATABASE_LOCKS_TRANSACTION_POOLING")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn wake-helper");
    let out = lines(child.stdout.take().expect("stdout piped"));
    let waiting = expect_line(&out, "waiting ", STEP);
    let state = waiting["waiting ".len()..].to_owned();
    (child, out, state)
}

/// The waiter's outcome: `("acquired", Some(token), ms)` or `("timeout", None, ms)`.
pub fn outcome(child: &mut Child, out: &Receiver<String>) -> (String, Option<u64>, u64) {
    let line = out
        .recv_timeout(STEP)
        .expect("the waiter says how it ended");
    let words: Vec<&str> = line.split(' ').collect();
    let status = wait_exit(child, STEP);
    assert!(status.success(), "the waiter failed ({status}): {line}");
    match words.as_slice() {
        ["acquired", token, ms] => (
            "acquired".into(),
            Some(token.parse().expect("token")),
            ms.parse().expect("ms"),
        ),
        ["timeout", ms] => ("timeout".into(), None, ms.parse().expect("ms")),
        _ => panic!("unexpected line from the waiter: {line}"),
    }
}
