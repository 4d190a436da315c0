//! Test support, not part of the public API: one candidate of a leader election in a
//! process of its own, so that tests can run several, kill the leader and read the log.
//!
//! ```text
//! leader-helper URL NAME DIR TTL RENEW RETRY LEAD PAUSE
//! ```
//! Campaigns for NAME until stdin closes (then stops, releasing if leading). Times are
//! seconds. LEAD: step down after leading this long (`none`: lead until demoted); PAUSE:
//! the step-down pause. Appends one line per event to `DIR/terms` (one `write` each, so
//! lines of several processes do not mix), times in microseconds since the Unix epoch,
//! `wall` from this process's clock and `db` from the database's:
//!
//! ```text
//! elected PID TOKEN WALL DB_NOW           DB_NOW read right after on_elected was called
//! stepping PID TOKEN WALL DB_EXPIRES_AT   the term's row, read just before step_down
//! demoted PID TOKEN WALL CAUSE            CAUSE: lost-expired, lost-taken, stepped-down, stopped
//! ```
//! It prints `elected TOKEN` and `demoted TOKEN CAUSE` on stdout as they happen.
//! Settings other than the URL come from the environment (`Config::from_env_with_url`).

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use database_locks::{Config, DemotionCause, Locks, LossCause};
use database_locks_testkit::read_row;

fn secs(arg: &str) -> Duration {
    Duration::from_secs_f64(arg.parse().unwrap_or_else(|_| panic!("not seconds: {arg}")))
}

fn wall_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn append(path: &Path, line: &str) {
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("terms log");
    log.write_all(format!("{line}\n").as_bytes())
        .expect("append to the terms log");
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, name, dir, ttl, renew, retry, lead, pause] = args.as_slice() else {
        eprintln!("usage: see the comment at the top of tests/support/leader_helper.rs");
        return ExitCode::from(2);
    };
    let config = Config::from_env_with_url(url).unwrap_or_else(|e| panic!("settings: {e}"));
    let locks = Locks::new(config).unwrap_or_else(|e| panic!("handle for {url}: {e}"));
    let kind = locks.backend();
    let log: Arc<PathBuf> = Arc::new(Path::new(dir).join("terms"));
    let pid = std::process::id();
    let (url_e, name_e, log_e) = (url.clone(), name.clone(), Arc::clone(&log));
    let log_d = Arc::clone(&log);
    let leader = locks
        .leader(name.clone())
        .lock_ttl(secs(ttl))
        .lock_ttl_renew(secs(renew))
        .retry(secs(retry))
        .step_down_pause(secs(pause))
        .on_elected(move |term| {
            let wall = wall_us();
            let db_now = read_row(kind, &url_e, &name_e)
                .ok()
                .flatten()
                .map_or(-1, |row| row.now_us);
            append(
                &log_e,
                &format!("elected {pid} {} {wall} {db_now}", term.token),
            );
            say(&format!("elected {}", term.token));
        })
        .on_demoted(move |demotion| {
            let wall = wall_us();
            let cause = match &demotion.cause {
                DemotionCause::Lost(lost) if lost.cause == LossCause::Expired => "lost-expired",
                DemotionCause::Lost(_) => "lost-taken",
                DemotionCause::SteppedDown => "stepped-down",
                DemotionCause::Stopped => "stopped",
                _ => "other",
            };
            let token = demotion.term.token;
            append(&log_d, &format!("demoted {pid} {token} {wall} {cause}"));
            say(&format!("demoted {token} {cause}"));
        })
        .start()
        .unwrap_or_else(|e| panic!("campaign: {e}"));
    let leader = Arc::new(leader);
    if lead != "none" {
        let (leader, lead) = (Arc::clone(&leader), secs(lead));
        let (url, name, log) = (url.clone(), name.clone(), Arc::clone(&log));
        std::thread::spawn(move || {
            while let Some(term) = leader.wait_elected(Duration::from_secs(3600)) {
                std::thread::sleep(lead);
                let expires = read_row(kind, &url, &name)
                    .ok()
                    .flatten()
                    .and_then(|row| row.expires_at_us)
                    .unwrap_or(-1);
                append(
                    &log,
                    &format!("stepping {pid} {} {} {expires}", term.token, wall_us()),
                );
                leader.step_down();
                // Until the demotion went through: `wait_elected` would see the term again.
                while leader.token() == Some(term.token) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
    }
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    leader.stop();
    ExitCode::SUCCESS
}
