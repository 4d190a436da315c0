//! End-to-end: `database-locks leader` against each backend. Every wait polls for a
//! condition with a deadline; nothing asserts how long anything took.
#![cfg(unix)]

mod common;

use common::{eventually, unique_name, Db};
use database_locks_testkit::on_each_backend;

on_each_backend!(
    two_hosts_take_turns_and_a_lost_term_stops_the_command,
    a_signal_while_campaigning_stops_the_tool,
    leader_refuses_bad_arguments_before_any_statement,
);

/// The command's log: `start TOKEN PID`, `term PID` (it got SIGTERM), `exit TOKEN PID`.
fn script(db: &Db) -> String {
    format!(
        "echo start $DATABASE_LOCKS_TOKEN $$ >> '{log}'; \
         trap 'echo term $$ >> \"{log}\"; exit 0' TERM; \
         while [ ! -e '{go}' ]; do sleep 0.02; done; \
         echo exit $DATABASE_LOCKS_TOKEN $$ >> '{log}'",
        log = db.path("log").display(),
        go = db.path("go").display()
    )
}

fn log(db: &Db) -> Vec<Vec<String>> {
    std::fs::read_to_string(db.path("log"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// Two tools campaign. The leader's row is stolen: its command gets SIGTERM and the tool
/// campaigns again instead of exiting. Then the `go` file lets each command finish: the
/// leader's tool exits 0, which hands over, and the other's command runs and exits.
/// Three terms from two tools: one of them led twice. The commands never overlap, and
/// each term's token is larger than the one before.
fn two_hosts_take_turns_and_a_lost_term_stops_the_command(db: &Db) {
    let name = unique_name("leader-turns");
    let script = script(db);
    let args = [
        "leader",
        &name,
        "--ttl",
        "2",
        "--retry",
        "0.2",
        "--kill-after",
        "1",
        "--",
        "sh",
        "-c",
        &script,
    ];
    let tools = [db.spawn(&args), db.spawn(&args)];
    assert!(
        eventually(|| log(db).len() == 1),
        "no command started: {:?}",
        log(db)
    );
    db.wait_held(&name);
    db.steal(&name, "thief");
    // The stolen term's command was told to stop, and the thief's lease ran out: the next
    // leader's command starts.
    assert!(
        eventually(|| log(db).iter().filter(|l| l[0] == "start").count() == 2),
        "no second term: {:?}",
        log(db)
    );
    std::fs::write(db.path("go"), "").unwrap();
    let mut stderr = String::new();
    for tool in tools {
        let done = tool.finish().expect(0);
        stderr.push_str(&done.stderr);
    }
    let lines = log(db);
    assert_eq!(
        lines.iter().map(|l| l[0].as_str()).collect::<Vec<_>>(),
        ["start", "term", "start", "exit", "start", "exit"],
        "{lines:?}\n{stderr}"
    );
    // Each start is followed by the end of that same command.
    for pair in lines.chunks(2) {
        assert_eq!(pair[0].last(), pair[1].last(), "{lines:?}");
    }
    let tokens: Vec<u64> = lines
        .iter()
        .filter(|l| l[0] == "start")
        .map(|l| l[1].parse().expect("DATABASE_LOCKS_TOKEN"))
        .collect();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
    assert!(stderr.contains("was lost"), "{stderr}");
    assert!(stderr.contains("campaigning again"), "{stderr}");
}

/// A tool that waits for another host's leadership ends on SIGTERM with 128+15, without
/// running its command.
fn a_signal_while_campaigning_stops_the_tool(db: &Db) {
    let name = unique_name("leader-sigterm");
    let script = script(db);
    let leader = db.spawn(&["leader", &name, "--", "sh", "-c", &script]);
    assert!(eventually(|| log(db).len() == 1), "{:?}", log(db));
    let status = db.path("waiting.status");
    let waiting = db.spawn_with(&["leader", &name, "--", "sh", "-c", &script], |cmd| {
        cmd.env("DATABASE_LOCKS_STATUS_FILE", &status);
    });
    // `1`: it is waiting in the lock's acquisition loop.
    assert!(
        eventually(|| std::fs::read_to_string(&status).is_ok_and(|s| s.trim() == "1")),
        "the second tool never campaigned"
    );
    waiting.signal(libc::SIGTERM);
    let done = waiting.finish().expect(128 + libc::SIGTERM);
    assert!(done.stderr.contains("while campaigning"), "{done:#?}");
    std::fs::write(db.path("go"), "").unwrap();
    leader.finish().expect(0);
    assert_eq!(log(db).len(), 2, "{:?}", log(db));
    db.run(&["status", &name]).expect(1);
}

fn leader_refuses_bad_arguments_before_any_statement(db: &Db) {
    let name = unique_name("leader-args");
    let done = db.run(&["leader", "--", "echo", "hi"]).expect(2);
    assert!(done.stderr.contains("needs the lock's NAME"), "{done:#?}");
    let done = db
        .run(&[
            "leader",
            &name,
            "--ttl",
            "2",
            "--ttl-renew",
            "2",
            "--",
            "true",
        ])
        .expect(2);
    assert!(done.stderr.contains("shorter than the lease"), "{done:#?}");
    let mut cmd = db.tool();
    cmd.env("DATABASE_LOCKS_DEFAULT_TTL", "none");
    let done = common::Done::from_command(cmd, &["leader", &name, "--", "true"]).expect(2);
    assert!(done.stderr.contains("lease that expires"), "{done:#?}");
    // Nothing reached the database: no row, and on SQLite not even the file.
    match db.kind {
        common::Kind::Sqlite => assert!(!std::path::Path::new(&db.url).exists()),
        _ => {
            db.run(&["status", &name]).expect(1);
        }
    }
}
