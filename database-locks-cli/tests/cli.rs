//! End-to-end: the built `database-locks` binary against each backend.
//!
//! Every wait polls for a condition with a deadline (`eventually`, `Running::finish`);
//! nothing asserts how long anything took.
#![cfg(unix)]

mod common;

use common::{eventually, process_ended, read_pid, unique_name, Db, Kind, Pty, Running};
use database_locks_testkit::on_each_backend;

const BUSY: i32 = 124;
const LOST: i32 = 75;
const SIGTERM_STATUS: i32 = 128 + libc::SIGTERM;

on_each_backend!(
    pgbouncer;
    two_runs_take_turns,
    try_exits_busy_while_held,
    sigterm_releases_the_lock_and_ends_the_command,
    sigterm_while_waiting_gives_up,
    on_a_terminal_waits_show_the_holder_and_ctrl_c_stops_the_command,
    list_json_matches_what_is_held,
    status_exit_codes,
    force_release_lets_a_waiter_in,
    release_by_owner,
    a_lost_lock_stops_the_command,
    run_exit_statuses_and_environment,
    at_least_keeps_the_lock_after_the_command,
    migrate_says_what_it_did,
    run_needs_a_name_before_the_separator,
    a_one_second_lease_is_renewed,
    ttl_renew_is_checked_against_the_lease,
    a_force_release_kills_a_command_that_ignores_sigterm_in_time,
    an_expiring_lease_kills_a_command_that_ignores_sigterm_in_time,
    the_command_dies_with_the_tool,
    run_verbose_says_acquired_renewed_released,
    list_watch_prints_snapshots_until_sigterm,
    status_watch_exits_with_the_last_status,
    metrics_expose_the_table_for_prometheus,
);

/// Two `run`s started together: one command runs, the other waits (each tool's status
/// file shows it: 2 held, 1 acquiring), and the commands' enter/exit lines never interleave.
fn two_runs_take_turns(db: &Db) {
    let name = unique_name("turns");
    let log = db.path("log");
    let go = db.path("go");
    let script = format!(
        "echo enter $$ >> '{log}'; while [ ! -e '{go}' ]; do sleep 0.02; done; echo exit $$ >> '{log}'",
        log = log.display(),
        go = go.display()
    );
    let status_files = [db.path("a.status"), db.path("b.status")];
    let tools: Vec<_> = status_files
        .iter()
        .map(|file| {
            db.spawn_with(&["run", &name, "--", "sh", "-c", &script], |cmd| {
                cmd.env("DATABASE_LOCKS_STATUS_FILE", file);
            })
        })
        .collect();
    let read = |i: usize| std::fs::read_to_string(&status_files[i]).unwrap_or_default();
    assert!(
        eventually(|| {
            let (a, b) = (read(0), read(1));
            (a.trim() == "2" && b.trim() == "1") || (a.trim() == "1" && b.trim() == "2")
        }),
        "the two tools never contended: status files {:?} {:?}",
        read(0),
        read(1)
    );
    std::fs::write(&go, "").expect("go file");
    for tool in tools {
        tool.finish().expect(0);
    }
    let lines = std::fs::read_to_string(&log).expect("log");
    let lines: Vec<(&str, &str)> = lines
        .lines()
        .map(|l| l.split_once(' ').expect("marker line"))
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(
        [lines[0].0, lines[1].0, lines[2].0, lines[3].0],
        ["enter", "exit", "enter", "exit"],
        "interleaved: {lines:?}"
    );
    assert_eq!(lines[0].1, lines[1].1, "{lines:?}");
    assert_eq!(lines[2].1, lines[3].1, "{lines:?}");
    assert_ne!(lines[0].1, lines[2].1, "{lines:?}");
}

fn try_exits_busy_while_held(db: &Db) {
    let name = unique_name("try");
    let holder = db.spawn(&["hold", &name, "--duration", "600"]);
    db.wait_held(&name);
    let marker = db.path("ran");
    let touch = format!("touch '{}'", marker.display());
    db.run(&["run", "--try", &name, "--", "sh", "-c", &touch])
        .expect(BUSY);
    assert!(!marker.exists(), "the command ran while the lock was held");
    db.run(&["hold", "--try", &name, "--duration", "0"])
        .expect(BUSY);
    db.run(&["run", "--timeout", "0.5", &name, "--", "sh", "-c", &touch])
        .expect(BUSY);
    assert!(!marker.exists(), "the command ran while the lock was held");

    holder.signal(libc::SIGTERM);
    holder.finish().expect(SIGTERM_STATUS);
    db.run(&["run", "--try", &name, "--", "sh", "-c", &touch])
        .expect(0);
    assert!(marker.exists());
}

/// SIGTERM to the tool reaches the command's whole process group (here a shell and the
/// `sleep` it started), and the lock is released.
fn sigterm_releases_the_lock_and_ends_the_command(db: &Db) {
    let name = unique_name("sigterm");
    let pid_file = db.path("sleep.pid");
    let script = format!("sleep 600 & echo $! > '{}'; wait", pid_file.display());
    let tool = db.spawn(&["run", &name, "--", "sh", "-c", &script]);
    let sleep_pid = read_pid(&pid_file);
    assert_eq!(db.status_code(&name), 0);

    tool.signal(libc::SIGTERM);
    let done = tool.finish().expect(SIGTERM_STATUS);
    assert!(
        eventually(|| process_ended(sleep_pid)),
        "the command's child {sleep_pid} survived: {done:#?}"
    );
    let status = db.run(&["status", &name]).expect(1);
    assert!(status.stdout.contains("released"), "{status:#?}");
}

/// `run NAME -- sh -c SCRIPT` started while `name` is held elsewhere, once its status file
/// shows that it waits (`1`).
fn waiting_run(db: &Db, name: &str, script: &str) -> Running {
    let status_file = db.path("waiter.status");
    let waiter = db.spawn_with(&["run", name, "--", "sh", "-c", script], |cmd| {
        cmd.env("DATABASE_LOCKS_STATUS_FILE", &status_file);
    });
    assert!(
        eventually(|| std::fs::read_to_string(&status_file).is_ok_and(|s| s.trim() == "1")),
        "the waiter never started waiting"
    );
    waiter
}

/// A tool still waiting for the lock stops waiting on SIGTERM; its command never runs.
fn sigterm_while_waiting_gives_up(db: &Db) {
    let name = unique_name("wait-term");
    let holder = db.spawn(&["hold", &name, "--duration", "600"]);
    db.wait_held(&name);
    let marker = db.path("ran");
    let waiter = waiting_run(db, &name, &format!("touch '{}'", marker.display()));
    waiter.signal(libc::SIGTERM);
    let done = waiter.finish().expect(SIGTERM_STATUS);
    assert!(done.stderr.contains("SIGTERM"), "{done:#?}");
    assert!(
        !done.stderr.contains("waited"),
        "no progress off a terminal: {done:#?}"
    );
    assert!(!marker.exists(), "the command ran");
    db.run(&["status", &name]).expect(0);
    holder.signal(libc::SIGTERM);
    holder.finish().expect(SIGTERM_STATUS);
}

/// In a terminal's foreground: the wait shows the holder, and Ctrl-C (which the terminal
/// sends to the command itself) ends the command and releases the lock.
fn on_a_terminal_waits_show_the_holder_and_ctrl_c_stops_the_command(db: &Db) {
    let name = unique_name("terminal");
    let owner = format!("{name}.holder");
    let holder = db.spawn(&["hold", &name, "--owner", &owner, "--duration", "600"]);
    db.wait_held(&name);

    let mut pty = Pty::open();
    let mut cmd = db.tool();
    cmd.args([
        "run",
        &name,
        "--",
        "sh",
        "-c",
        "echo started; exec sleep 600",
    ]);
    pty.attach(&mut cmd);
    let mut tool = Running::adopt(&["run", &name], cmd.spawn().expect("the tool"));
    pty.wait_for(&format!("waiting for lock {name:?} (held by {owner}"));

    holder.signal(libc::SIGTERM);
    holder.finish().expect(SIGTERM_STATUS);
    pty.wait_for("started");
    assert!(!tool.exited());
    pty.type_in(b"\x03");
    tool.finish().expect(128 + libc::SIGINT);
    db.run(&["status", &name]).expect(1);
}

fn list_json_matches_what_is_held(db: &Db) {
    let held = unique_name("list-held");
    let forever = unique_name("list-forever");
    let released = unique_name("list-released");
    let (owner_a, owner_b) = (format!("{held}.owner"), format!("{forever}.owner"));
    db.run(&["run", &released, "--", "true"]).expect(0);
    let holder_a = db.spawn(&["hold", &held, "--owner", &owner_a, "--duration", "600"]);
    let holder_b = db.spawn(&[
        "hold",
        &forever,
        "--owner",
        &owner_b,
        "--ttl",
        "none",
        "--duration",
        "600",
    ]);
    db.wait_held(&held);
    db.wait_held(&forever);

    let list = db.run(&["list", "--json"]).expect(0);
    let json: serde_json::Value = serde_json::from_str(&list.stdout)
        .unwrap_or_else(|e| panic!("list --json is not JSON ({e}): {}", list.stdout));
    let locks = json["locks"].as_array().expect("a `locks` array");
    let find = |name: &str| {
        locks
            .iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {}", list.stdout))
    };

    let a = find(&held);
    assert_eq!(a["state"], "held");
    assert_eq!(a["locked_by"], owner_a.as_str());
    assert!(a["expires_in"].as_f64().is_some_and(|s| s > 0.0), "{a}");
    assert!(a["token"].as_i64().is_some_and(|t| t >= 1), "{a}");

    let b = find(&forever);
    assert_eq!(b["state"], "held");
    assert_eq!(b["locked_by"], owner_b.as_str());
    assert!(b["expires_in"].is_null(), "no expiry is null: {b}");

    let r = find(&released);
    assert_eq!(r["state"], "released");
    assert!(r["expires_in"].is_null(), "{r}");
    assert!(r["locked_by"].is_string(), "{r}");

    let table = db.run(&["list"]).expect(0);
    let row = table
        .stdout
        .lines()
        .find(|l| l.starts_with(held.as_str()))
        .unwrap_or_else(|| panic!("{held} not in the table: {}", table.stdout));
    assert!(row.contains("held") && row.contains(&owner_a), "{row}");

    for holder in [holder_a, holder_b] {
        holder.signal(libc::SIGTERM);
        holder.finish().expect(SIGTERM_STATUS);
    }
}

fn status_exit_codes(db: &Db) {
    let name = unique_name("status");
    // `status` never creates the table (a missing one is an error, see migrate_says_what_it_did).
    db.run(&["migrate"]).expect(0);
    let free = db.run(&["status", &name]).expect(1);
    assert!(free.stdout.contains("free"), "{free:#?}");

    let holder = db.spawn(&["hold", &name, "--owner", "status-owner", "--ttl", "3"]);
    db.wait_held(&name);
    let held = db.run(&["status", &name]).expect(0);
    assert!(held.stdout.contains("held by status-owner"), "{held:#?}");

    // Killed without a chance to release: the lease runs out and the lock is free again.
    holder.signal(libc::SIGKILL);
    holder.finish();
    assert!(
        eventually(|| db.status_code(&name) == 1),
        "the lease never expired"
    );
    let expired = db.run(&["status", &name]).expect(1);
    assert!(expired.stdout.contains("expired"), "{expired:#?}");

    let too_long = "x".repeat(256);
    let error = db.run(&["status", &too_long]).expect(2);
    assert_eq!(error.stderr.lines().count(), 1, "{error:#?}");
    let error = db
        .run_at("redis://u:secret@nowhere/0", &["status", &name])
        .expect(2);
    assert_eq!(error.stderr.lines().count(), 1, "{error:#?}");
    assert!(error.stderr.contains("--url"), "{error:#?}");
    assert!(!error.stderr.contains("secret"), "{error:#?}");
}

fn force_release_lets_a_waiter_in(db: &Db) {
    let name = unique_name("force");
    // No expiry: only the force release can let the waiter in.
    let holder = db.spawn(&["hold", &name, "--ttl", "none", "--duration", "600"]);
    db.wait_held(&name);
    let marker = db.path("in");
    let waiter = waiting_run(db, &name, &format!("echo in > '{}'", marker.display()));
    assert!(!marker.exists());

    let released = db.run(&["release", &name, "--force"]).expect(0);
    assert!(released.stdout.contains("released"), "{released:#?}");
    waiter.finish().expect(0);
    assert!(marker.exists(), "the waiter's command did not run");
    db.run(&["release", &name, "--force"]).expect(1);

    // The old holder's release now finds another token: it reports the loss.
    holder.signal(libc::SIGTERM);
    holder.finish().expect(LOST);
}

fn release_by_owner(db: &Db) {
    let name = unique_name("owner");
    let owner = format!("{name}.owner");
    let holder = db.spawn(&[
        "hold",
        &name,
        "--owner",
        &owner,
        "--ttl",
        "3",
        "--duration",
        "600",
    ]);
    db.wait_held(&name);
    let refused = db
        .run(&["release", &name, "--owner", "somebody-else"])
        .expect(1);
    assert!(refused.stdout.contains(&owner), "{refused:#?}");
    db.run(&["status", &name]).expect(0);

    db.run(&["release", &name, "--owner", &owner]).expect(0);
    db.run(&["status", &name]).expect(1);
    // The holder's next renewal finds a newer token: it stops with the lost status.
    let done = holder.finish().expect(LOST);
    assert!(done.stderr.contains("lost"), "{done:#?}");
}

/// The row is stolen behind the holder's back; the command ignores SIGTERM, so it and its
/// child only end with the SIGKILL that follows.
fn a_lost_lock_stops_the_command(db: &Db) {
    let name = unique_name("lost");
    let pid_file = db.path("sleep.pid");
    let script = format!(
        "trap '' TERM; sleep 600 & echo $! > '{}'; wait",
        pid_file.display()
    );
    let tool = db.spawn(&[
        "run",
        &name,
        "--ttl",
        "3",
        "--kill-after",
        "1",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let sleep_pid = read_pid(&pid_file);
    db.wait_held(&name);
    db.steal(&name, "thief");
    let done = tool.finish().expect(LOST);
    assert!(done.stderr.contains("was lost"), "{done:#?}");
    assert!(
        eventually(|| process_ended(sleep_pid)),
        "the command's child {sleep_pid} survived: {done:#?}"
    );
}

fn run_exit_statuses_and_environment(db: &Db) {
    let name = unique_name("statuses");
    db.run(&["run", &name, "--", "sh", "-c", "exit 3"])
        .expect(3);
    db.run(&["run", &name, "sh", "-c", "kill -TERM $$"])
        .expect(SIGTERM_STATUS);
    let env = db
        .run(&[
            "run",
            &name,
            "--owner",
            "env-owner",
            "--",
            "sh",
            "-c",
            "echo \"$DATABASE_LOCKS_NAME|$DATABASE_LOCKS_OWNER|$DATABASE_LOCKS_TOKEN\"",
        ])
        .expect(0);
    let fields: Vec<&str> = env.stdout.trim().split('|').collect();
    assert_eq!(fields[..2], [name.as_str(), "env-owner"], "{env:#?}");
    assert!(
        fields[2].parse::<u64>().is_ok_and(|t| t >= 3),
        "the third acquisition's token: {env:#?}"
    );

    let missing = db
        .run(&["run", &name, "--", "/nonexistent/command"])
        .expect(127);
    assert_eq!(missing.stderr.lines().count(), 1, "{missing:#?}");
    let not_executable = db.path("not-executable");
    std::fs::write(&not_executable, "#!/bin/sh\n").expect("file");
    let path = not_executable.display().to_string();
    db.run(&["run", &name, "--", &path]).expect(126);
    let error = db
        .run_at("redis://nowhere", &["run", &name, "--", "true"])
        .expect(125);
    assert_eq!(error.stderr.lines().count(), 1, "{error:#?}");
    db.run(&["status", &name]).expect(1);
}

fn at_least_keeps_the_lock_after_the_command(db: &Db) {
    let name = unique_name("at-least");
    db.run(&["run", &name, "--at-least", "600", "--", "true"])
        .expect(0);
    db.run(&["status", &name]).expect(0);
    db.run(&["run", "--try", &name, "--", "true"]).expect(BUSY);
    db.run(&["release", &name, "--force"]).expect(0);
}

fn migrate_says_what_it_did(db: &Db) {
    if db.kind == Kind::Sqlite {
        // A fresh file: the read-only commands do not create the table, and say how to.
        let list = db.run(&["list"]).expect(2);
        assert!(list.stderr.contains("database-locks migrate"), "{list:#?}");
        let created = db.run(&["migrate"]).expect(0);
        assert!(created.stdout.contains("created"), "{created:#?}");
        let again = db.run(&["migrate"]).expect(0);
        assert!(again.stdout.contains("up to date"), "{again:#?}");
    } else {
        let done = db.run(&["migrate"]).expect(0);
        assert!(done.stdout.contains("database_locks_lock"), "{done:#?}");
    }
}

/// `run -- echo hi` has no NAME: refused as a usage error before the database is touched
/// (clap alone would lock "echo" and run `hi`).
fn run_needs_a_name_before_the_separator(db: &Db) {
    db.run(&["migrate"]).expect(0);
    let name = unique_name("no-name");
    let marker = db.path("ran");
    let touch = format!("touch '{}'", marker.display());
    let refused = db.run(&["run", "--", &name, "sh", "-c", &touch]).expect(2);
    assert!(refused.stderr.contains("NAME before `--`"), "{refused:#?}");
    assert!(!marker.exists(), "the command ran");
    let status = db.run(&["status", &name]).expect(1);
    assert!(
        status.stdout.contains("never taken"),
        "a row was created: {status:#?}"
    );
    // With the NAME first, the same command runs.
    db.run(&["run", &name, "--", "sh", "-c", &touch]).expect(0);
    assert!(marker.exists());
}

/// A command running for three one-second leases under `--ttl 1` keeps the lock: the row's
/// `expires_at`, read from the database, keeps moving past the database's clock.
///
/// A renewal has a few hundred milliseconds to get through at this ttl, and a loaded
/// machine can stall the tool or the database for longer (seen: MariaDB under `stress`).
/// No lease survives that; what must hold then is that the tool saw the loss in time: it
/// reports it and stops the command with exit 75 (a lease that ran out unseen fails the
/// test). Renewal itself must be shown at least once in three tries, so a tool that never
/// renews still fails every time.
fn a_one_second_lease_is_renewed(db: &Db) {
    let mut losses = Vec::new();
    for _ in 0..3 {
        match renewed_for_three_leases(db) {
            Ok(()) => return,
            Err(lost) => losses.push(lost),
        }
    }
    panic!("lost in each of 3 tries: {losses:#?}");
}

/// Ok: renewed for three leases. Err: the lease ran out, and the tool had seen the loss.
fn renewed_for_three_leases(db: &Db) -> Result<(), String> {
    let name = unique_name("ttl-1");
    let go = db.path(&format!("go-{name}"));
    let script = format!("while [ ! -e '{}' ]; do sleep 0.02; done", go.display());
    let mut tool = db.spawn(&["run", "--ttl", "1", &name, "--", "sh", "-c", &script]);
    db.wait_held(&name);
    let mut conn = db.conn();
    let (start, first) = db.times(&mut conn, &name);
    let first = first.expect("a held lease has an expiry");
    let (now, expires_at) = loop {
        let (now, expires_at) = db.times(&mut conn, &name);
        let expires_at = expires_at.expect("the lease was cleared");
        if now > expires_at {
            // The tool must have seen it: it stops the command and exits 75.
            let done = tool.finish();
            assert!(
                done.code == 75 && done.stderr.contains("was lost"),
                "the lease ran out at {expires_at} (database clock {now}) unseen: {done:#?}"
            );
            return Err(done.stderr);
        }
        if now >= start + 3.0 {
            break (now, expires_at);
        }
        if tool.exited() {
            let done = tool.finish();
            assert_eq!(done.code, 75, "the tool exited: {done:#?}");
            return Err(done.stderr);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert!(
        expires_at >= first + 2.0,
        "expires_at {first} -> {expires_at} by {now}"
    );
    std::fs::write(&go, "").expect("go file");
    let done = tool.finish();
    if done.code == 75 {
        return Err(done.stderr);
    }
    assert_eq!(done.code, 0, "{done:#?}");
    assert!(!done.stderr.contains("lost"), "{done:#?}");
    Ok(())
}

/// `--ttl-renew` must be positive and shorter than the lease; refused before the row is
/// touched. Accepted, it is passed on (the library refuses a margin not shorter than ttl).
fn ttl_renew_is_checked_against_the_lease(db: &Db) {
    db.run(&["migrate"]).expect(0);
    let name = unique_name("ttl-renew");
    let marker = db.path("ran");
    let touch = format!("touch '{}'", marker.display());
    for (args, says) in [
        (
            &["--ttl", "1", "--ttl-renew", "1"][..],
            "shorter than the lease (--ttl 1.0s)",
        ),
        (&["--ttl", "none", "--ttl-renew", "1"][..], "never"),
        (&["--ttl-renew", "0"][..], "must be positive"),
        (&["--ttl-renew", "soon"][..], "not a number"),
    ] {
        let line: Vec<&str> = ["run", &name]
            .into_iter()
            .chain(args.iter().copied())
            .chain(["--", "sh", "-c", &touch])
            .collect();
        let refused = db.run(&line).expect(2);
        assert!(refused.stderr.contains(says), "{refused:#?}");
        assert!(!marker.exists(), "the command ran: {refused:#?}");
    }
    let mut env = db.tool();
    env.env("DATABASE_LOCKS_DEFAULT_TTL", "2");
    let refused = common::Done::from_command(
        env,
        &["run", &name, "--ttl-renew", "3", "--", "sh", "-c", &touch],
    )
    .expect(2);
    assert!(
        refused.stderr.contains("DATABASE_LOCKS_DEFAULT_TTL 2.0s"),
        "{refused:#?}"
    );
    let status = db.run(&["status", &name]).expect(1);
    assert!(
        status.stdout.contains("never taken"),
        "a row was created: {status:#?}"
    );
    db.run(&[
        "run",
        &name,
        "--ttl",
        "3",
        "--ttl-renew",
        "2.5",
        "--",
        "sh",
        "-c",
        &touch,
    ])
    .expect(0);
    assert!(marker.exists());
    db.run(&[
        "hold",
        &name,
        "--ttl",
        "3",
        "--ttl-renew",
        "4",
        "--duration",
        "0",
    ])
    .expect(2);
}

/// The command of the SIGTERM-ignoring kind: `run` must SIGKILL it. Writes its pid (the
/// one `run` started: `exec` keeps it) to `pid_file`.
fn stubborn_command(pid_file: &std::path::Path) -> String {
    format!(
        "trap '' TERM; echo $$ > '{}'; exec sleep 600",
        pid_file.display()
    )
}

/// After `release --force`, a command that ignores SIGTERM is dead before the lease that
/// was cleared would have ended, whatever `--kill-after` says (the next holder may already
/// run). The lease's end is the row's `expires_at` read just before the release.
fn a_force_release_kills_a_command_that_ignores_sigterm_in_time(db: &Db) {
    let name = unique_name("force-stubborn");
    let pid_file = db.path("cmd.pid");
    let script = stubborn_command(&pid_file);
    let tool = db.spawn(&[
        "run",
        "--ttl",
        "3",
        "--kill-after",
        "60",
        &name,
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let pid = read_pid(&pid_file);
    db.wait_held(&name);
    let mut conn = db.conn();
    let (_, expires_at) = db.times(&mut conn, &name);
    let expires_at = expires_at.expect("a held lease has an expiry");
    let released = db.run(&["release", &name, "--force"]).expect(0);
    let at = std::time::Instant::now();
    let spare = db.assert_ended_before(pid, expires_at);
    eprintln!(
        "force release to death: at most {:?}; {spare:.3}s before the lease's end",
        at.elapsed()
    );
    assert!(released.stdout.contains("finds out"), "{released:#?}");
    let done = tool.finish().expect(LOST);
    assert!(done.stderr.contains("was lost"), "{done:#?}");
    assert!(done.stderr.contains("SIGKILL after"), "{done:#?}");
}

/// Renewals that cannot get through (the row, or SQLite's file, held locked by the test:
/// what a database that stopped answering looks like): the command, which ignores
/// SIGTERM, is dead before the row's `expires_at` by the database's clock, though
/// `--kill-after` asks for 60 s.
fn an_expiring_lease_kills_a_command_that_ignores_sigterm_in_time(db: &Db) {
    let name = unique_name("expire-stubborn");
    let pid_file = db.path("cmd.pid");
    let script = stubborn_command(&pid_file);
    let tool = db.spawn(&[
        "run",
        "--ttl",
        "3",
        "--kill-after",
        "60",
        &name,
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let pid = read_pid(&pid_file);
    db.wait_held(&name);
    let frozen = db.freeze(&name);
    // No renewal can change it now.
    let mut conn = db.conn();
    let (_, expires_at) = db.times(&mut conn, &name);
    let expires_at = expires_at.expect("a held lease has an expiry");
    let spare = db.assert_ended_before(pid, expires_at);
    eprintln!("expiring lease: the command was dead {spare:.3}s before the lease's end");
    drop(frozen);
    let done = tool.finish().expect(LOST);
    assert!(done.stderr.contains("did not answer in time"), "{done:#?}");
    assert!(done.stderr.contains("before the lease ends"), "{done:#?}");
}

/// `kill -9` of the tool: its command dies with it (Linux), before the lease the tool held
/// runs out and anyone else can take the lock.
fn the_command_dies_with_the_tool(db: &Db) {
    let name = unique_name("orphan");
    let pid_file = db.path("cmd.pid");
    let script = format!("echo $$ > '{}'; exec sleep 60", pid_file.display());
    let tool = db.spawn(&["run", "--ttl", "3", &name, "--", "sh", "-c", &script]);
    let pid = read_pid(&pid_file);
    db.wait_held(&name);
    tool.signal(libc::SIGKILL);
    tool.finish().expect(128 + libc::SIGKILL);
    let mut conn = db.conn();
    let (_, expires_at) = db.times(&mut conn, &name);
    let expires_at = expires_at.expect("the killed tool could not release");
    if cfg!(target_os = "linux") {
        let spare = db.assert_ended_before(pid, expires_at);
        eprintln!("killed tool: its command was dead {spare:.3}s before the lease's end");
    } else {
        // The documented limit: nothing kills it; do not leave it behind.
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// `run -v`: acquired with the fencing token and the lease's end, renewals, released with
/// the same token. The command runs until the tool's stderr shows a renewal (the tool
/// tells of one only when its check sees the row's end move), so nothing depends on how
/// fast the machine is.
fn run_verbose_says_acquired_renewed_released(db: &Db) {
    let name = unique_name("verbose");
    let err = db.path("verbose.err");
    let script = format!(
        "echo $DATABASE_LOCKS_TOKEN; n=0; until grep -q '^database-locks: renewed' '{}'; do \
         n=$((n+1)); [ $n -gt 1200 ] && exit 9; sleep 0.05; done",
        err.display()
    );
    let tool = db.spawn_with(
        &["run", "-v", "--ttl", "3", &name, "--", "sh", "-c", &script],
        |cmd| {
            cmd.stderr(std::fs::File::create(&err).expect("stderr file"));
        },
    );
    let done = tool.finish().expect(0);
    let stderr = std::fs::read_to_string(&err).expect("stderr");
    let token = done.stdout.trim();
    assert!(token.parse::<u64>().is_ok(), "{done:#?}");
    let lease = format!("lock {name:?} (token {token})");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.len() >= 3, "{stderr}");
    let acquired = format!("database-locks: acquired {lease} as owner ");
    assert!(lines[0].starts_with(&acquired), "{stderr}");
    assert!(lines[0].contains("; the lease ends in "), "{stderr}");
    let renewed = format!("database-locks: renewed {lease}; the lease now ends in ");
    for line in &lines[1..lines.len() - 1] {
        assert!(line.starts_with(&renewed), "{stderr}");
    }
    assert_eq!(
        lines[lines.len() - 1],
        format!("database-locks: released {lease}"),
        "{stderr}"
    );

    // Without -v, nothing of that.
    let quiet = db.run(&["run", &name, "--", "true"]).expect(0);
    assert_eq!(quiet.stderr, "", "{quiet:#?}");
}

/// The snapshots a `--watch` printed so far, off a terminal: separated by blank lines.
/// The last one may still be being written.
fn snapshots(tool: &Running) -> Vec<String> {
    let out = tool.stdout();
    out.split("\n\n").map(str::to_owned).collect()
}

/// `list --watch` off a terminal: a snapshot per interval after a blank line, no escape
/// codes; a lock taken meanwhile shows up in a later one; SIGTERM ends it with 0.
fn list_watch_prints_snapshots_until_sigterm(db: &Db) {
    db.run(&["migrate"]).expect(0);
    let name = unique_name("watch");
    let watcher = db.spawn(&["list", "--watch=0.2"]);
    // The first snapshot is whole once the second has begun.
    assert!(
        eventually(|| snapshots(&watcher).len() >= 2),
        "no second snapshot: {:?}",
        watcher.stdout()
    );
    let holder = db.spawn(&["hold", &name, "--duration", "600"]);
    db.wait_held(&name);
    // `begun` snapshots have begun printing (the last perhaps not whole), each from a table
    // read before now; snapshot `begun` may be reading the table at this moment, before
    // the hold is visible to it (a CI run behind PgBouncer found the lock missing from the
    // one this test used to check). Snapshot `begun + 1` reads it after; it is whole once
    // the one after it has begun.
    let seen = snapshots(&watcher).len() + 1;
    assert!(
        eventually(|| snapshots(&watcher).len() >= seen + 2),
        "no more snapshots: {:?}",
        watcher.stdout()
    );
    let all = snapshots(&watcher);
    assert!(!all[0].contains(&name), "{all:#?}");
    assert!(
        all[0].starts_with("NAME") || all[0].starts_with("no locks"),
        "{all:#?}"
    );
    let later = all[seen].lines().find(|line| line.starts_with(&name));
    assert!(
        later.is_some_and(|line| line.contains("held")),
        "{name} not held in snapshot {seen}: {all:#?}"
    );
    watcher.signal(libc::SIGTERM);
    let done = watcher.finish().expect(0);
    assert!(!done.stdout.contains('\x1b'), "{done:#?}");
    assert_eq!(done.stderr, "", "{done:#?}");
    holder.signal(libc::SIGTERM);
    holder.finish().expect(SIGTERM_STATUS);
}

/// `status --watch` ends on a signal with the status of its last snapshot: 0 while the
/// lock is held, 1 once it is free.
fn status_watch_exits_with_the_last_status(db: &Db) {
    let name = unique_name("watch-status");
    let holder = db.spawn(&["hold", &name, "--duration", "600"]);
    db.wait_held(&name);
    let watcher = db.spawn(&["status", "--watch=0.2", &name]);
    assert!(
        eventually(|| watcher.stdout().contains("held by")),
        "{:?}",
        watcher.stdout()
    );
    watcher.signal(libc::SIGINT);
    watcher.finish().expect(0);

    let watcher = db.spawn(&["status", "--watch=0.2", &name]);
    assert!(
        eventually(|| watcher.stdout().contains("held by")),
        "{:?}",
        watcher.stdout()
    );
    holder.signal(libc::SIGTERM);
    holder.finish().expect(SIGTERM_STATUS);
    // A snapshot that says free, and one after it (so the last one says free too).
    assert!(
        eventually(|| {
            let all = snapshots(&watcher);
            all.iter()
                .position(|s| s.contains("free"))
                .is_some_and(|i| i + 2 < all.len())
        }),
        "{:?}",
        watcher.stdout()
    );
    watcher.signal(libc::SIGTERM);
    let done = watcher.finish().expect(1);
    assert!(
        done.stdout.starts_with(&format!("{name}: held by")),
        "{done:#?}"
    );
}

/// On a terminal `list --watch` redraws in place (clear screen, a title line) and
/// Ctrl-C ends it with 0.
#[cfg(feature = "sqlite")]
#[test]
fn list_watch_redraws_on_a_terminal() {
    let db = Db::sqlite();
    db.run(&["migrate"]).expect(0);
    let mut pty = Pty::open();
    let mut cmd = db.tool();
    cmd.args(["list", "--watch=0.2"]);
    pty.attach(&mut cmd);
    let tool = Running::adopt(&["list", "--watch"], cmd.spawn().expect("the tool"));
    let redraw = "\x1b[H\x1b[2JEvery 0.2s: database-locks list";
    assert!(
        eventually(|| pty.output().matches(redraw).count() >= 2),
        "{:?}",
        pty.output()
    );
    pty.type_in(b"\x03");
    tool.finish().expect(0);
}

/// One sample line of the text exposition format: `name{label="value",...} value`.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Parses an exposition strictly, line by line: `# HELP` and `# TYPE` once per family,
/// before its samples; a family's samples together; every other line a sample whose
/// label values are escaped as the format says. Panics, naming the line, otherwise.
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut helped = std::collections::HashSet::new();
    let mut typed = std::collections::HashSet::new();
    let mut ended = std::collections::HashSet::new();
    let mut current: Option<String> = None;
    let mut samples = Vec::new();
    assert!(text.ends_with('\n'), "no final line feed: {text:?}");
    let is_name = |name: &str| {
        !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for line in text.lines() {
        let family = if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or_else(|| panic!("{line:?}"));
            assert!(!help.is_empty(), "{line:?}");
            assert!(helped.insert(name.to_owned()), "second HELP: {line:?}");
            name.to_owned()
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("{line:?}"));
            assert_eq!(kind, "gauge", "{line:?}");
            assert!(typed.insert(name.to_owned()), "second TYPE: {line:?}");
            name.to_owned()
        } else {
            let sample = parse_sample(line);
            assert!(
                helped.contains(&sample.name) && typed.contains(&sample.name),
                "a sample before its HELP and TYPE: {line:?}"
            );
            let name = sample.name.clone();
            samples.push(sample);
            name
        };
        assert!(is_name(&family), "{line:?}");
        if current.as_deref() != Some(family.as_str()) {
            assert!(!ended.contains(&family), "family {family} split: {line:?}");
            if let Some(previous) = current.replace(family) {
                ended.insert(previous);
            }
        }
    }
    assert_eq!(helped, typed, "{text}");
    samples
}

fn parse_sample(line: &str) -> Sample {
    let (head, value) = line
        .rsplit_once(' ')
        .unwrap_or_else(|| panic!("no value: {line:?}"));
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().unwrap_or_else(|_| panic!("bad value: {line:?}")),
    };
    let Some((name, labels)) = head.split_once('{') else {
        return Sample {
            name: head.to_owned(),
            labels: Vec::new(),
            value,
        };
    };
    let mut parsed = Vec::new();
    let mut rest = labels;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            assert_eq!(after, "", "text after the labels: {line:?}");
            break;
        }
        let (label, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("bad label: {line:?}"));
        let mut chars = after.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => panic!("bad escape {other:?}: {line:?}"),
                },
                Some((at, '"')) => break at,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value: {line:?}"),
            }
        };
        parsed.push((label.to_owned(), value));
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    Sample {
        name: name.to_owned(),
        labels: parsed,
        value,
    }
}

/// The value of `metric` for `name` (or of the unlabelled `metric` with `None`).
fn sample(samples: &[Sample], metric: &str, name: Option<&str>) -> Option<f64> {
    let labels: Vec<(String, String)> = name
        .map(|n| vec![("name".to_owned(), n.to_owned())])
        .unwrap_or_default();
    let mut found = samples
        .iter()
        .filter(|s| s.name == metric && s.labels == labels);
    let value = found.next().map(|s| s.value);
    assert!(found.next().is_none(), "{metric} {name:?} twice");
    value
}

/// `metrics`: every line parses, each family has its HELP and TYPE once, values match
/// the locks taken here (a name with `"`, `\` and a line feed comes back whole), and
/// `--output` replaces the file by renaming, leaving no temporary file, and leaves it
/// alone when the table cannot be read.
fn metrics_expose_the_table_for_prometheus(db: &Db) {
    db.run(&["migrate"]).expect(0);
    let held = unique_name("metrics-held");
    let forever = unique_name("metrics-forever");
    let released = unique_name("metrics-released");
    let weird = format!("{}-we\"ird\\name\nline", unique_name("metrics"));
    let sem = unique_name("metrics-sem");
    db.run(&["run", &released, "--", "true"]).expect(0);
    let holders = [
        db.spawn(&["hold", &held, "--duration", "600"]),
        db.spawn(&["hold", &forever, "--ttl", "none", "--duration", "600"]),
        db.spawn(&["hold", &weird, "--duration", "600"]),
        db.spawn(&["hold", &sem, "--permits", "2", "--duration", "600"]),
    ];
    for name in [&held, &forever, &weird] {
        db.wait_held(name);
    }
    assert!(
        eventually(|| {
            let list = db.run(&["list"]).expect(0);
            list.stdout.lines().any(|line| {
                line.starts_with(&format!("{sem} ")) && line.contains("semaphore, 1 of 2 held")
            })
        }),
        "the semaphore's permit was never held"
    );

    let done = db.run(&["metrics"]).expect(0);
    assert_eq!(done.stderr, "", "{done:#?}");
    let samples = parse_exposition(&done.stdout);
    let value = |metric: &str, name: &str| sample(&samples, metric, Some(name));
    for name in [&held, &forever, &weird] {
        assert_eq!(
            value("database_locks_lock_held", name),
            Some(1.0),
            "{name:?}"
        );
        assert!(value("database_locks_lock_token", name).is_some_and(|t| t >= 1.0));
    }
    assert_eq!(value("database_locks_lock_held", &released), Some(0.0));
    assert_eq!(
        value("database_locks_lock_expires_in_seconds", &released),
        None
    );
    assert!(value("database_locks_lock_token", &released).is_some_and(|t| t >= 1.0));
    let left = value("database_locks_lock_expires_in_seconds", &held);
    assert!(left.is_some_and(|s| s > 0.0 && s <= 10.0), "{left:?}");
    assert_eq!(
        value("database_locks_lock_expires_in_seconds", &forever),
        Some(f64::INFINITY)
    );
    assert_eq!(value("database_locks_semaphore_permits", &sem), Some(2.0));
    assert_eq!(
        value("database_locks_semaphore_permits_held", &sem),
        Some(1.0)
    );
    // No semaphore row shows as a lock.
    assert!(samples.iter().all(|s| s
        .labels
        .iter()
        .all(|(_, v)| !v.contains(database_locks::SEPARATOR))));
    // The totals agree with the samples (other tests' locks share a server's table).
    let of = |metric: &str, value: f64| {
        samples
            .iter()
            .filter(|s| s.name == metric && s.value == value)
            .count() as f64
    };
    let locks = sample(&samples, "database_locks_locks", None);
    let locks_held = sample(&samples, "database_locks_locks_held", None);
    assert_eq!(
        locks,
        Some(of("database_locks_lock_held", 0.0) + of("database_locks_lock_held", 1.0))
    );
    assert_eq!(locks_held, Some(of("database_locks_lock_held", 1.0)));
    if db.kind == Kind::Sqlite {
        assert_eq!((locks, locks_held), (Some(4.0), Some(3.0)));
    }
    let scraped = sample(&samples, "database_locks_scrape_timestamp_seconds", None);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(scraped.is_some_and(|t| t > 0.0 && t <= now), "{scraped:?}");

    // --output: the same, in the file; nothing on stdout, nothing else in the directory.
    let dir = db.path("textfile");
    std::fs::create_dir(&dir).expect("dir");
    let file = dir.join("database_locks.prom");
    let output = file.display().to_string();
    let written = db.run(&["metrics", "--output", &output]).expect(0);
    assert_eq!((written.stdout.as_str(), written.stderr.as_str()), ("", ""));
    let before = std::fs::read_to_string(&file).expect("the file");
    let again = parse_exposition(&before);
    assert_eq!(
        sample(&again, "database_locks_lock_held", Some(&weird)),
        Some(1.0)
    );
    let entries = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .expect("dir")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort();
        names
    };
    assert_eq!(entries(), ["database_locks.prom"]);

    // Replaced by a rename: a reader that had the old file open still reads it whole.
    let mut old = std::fs::File::open(&file).expect("open");
    db.run(&["release", &held, "--force"]).expect(0);
    db.run(&["metrics", "--output", &output]).expect(0);
    let after = parse_exposition(&std::fs::read_to_string(&file).expect("the file"));
    assert_eq!(
        sample(&after, "database_locks_lock_held", Some(&held)),
        Some(0.0)
    );
    let mut kept = String::new();
    std::io::Read::read_to_string(&mut old, &mut kept).expect("read");
    assert_eq!(kept, before, "the file was rewritten in place");
    assert_eq!(entries(), ["database_locks.prom"]);

    // A table that cannot be read: an error, and the file is left as it was.
    let replaced = std::fs::read_to_string(&file).expect("the file");
    let missing = db.path("missing.sqlite3").display().to_string();
    let failed = db
        .run_at(&missing, &["metrics", "--output", &output])
        .expect(2);
    assert_eq!(failed.stderr.lines().count(), 1, "{failed:#?}");
    assert_eq!(std::fs::read_to_string(&file).expect("file"), replaced);
    assert_eq!(entries(), ["database_locks.prom"]);
    // A directory that does not exist: the error names the file.
    let nowhere = dir.join("no/such.prom").display().to_string();
    let failed = db.run(&["metrics", "--output", &nowhere]).expect(2);
    assert!(failed.stderr.contains(&nowhere), "{failed:#?}");
    assert_eq!(failed.stderr.lines().count(), 1, "{failed:#?}");

    for holder in holders {
        holder.signal(libc::SIGTERM);
        holder.finish();
    }
}

/// `list`, `status` and `release` on a SQLite file that does not exist say so and leave
/// no file behind (SQLite would create an empty one on opening it).
#[cfg(feature = "sqlite")]
#[test]
fn read_only_commands_leave_no_sqlite_file_behind() {
    let db = Db::sqlite();
    let missing = db.path("missing.sqlite3");
    let shown = missing.display().to_string();
    for url in [shown.clone(), format!("sqlite://{shown}")] {
        for args in [
            &["list"][..],
            &["list", "--json"][..],
            &["status", "x"][..],
            &["release", "x", "--force"][..],
            &["release", "x", "--owner", "o"][..],
        ] {
            let refused = db.run_at(&url, args).expect(2);
            assert!(
                refused
                    .stderr
                    .contains(&format!("no lock database at {shown}")),
                "{refused:#?}"
            );
            assert_eq!(refused.stderr.lines().count(), 1, "{refused:#?}");
            let left: Vec<_> = std::fs::read_dir(db.dir.path())
                .expect("scratch dir")
                .filter_map(|e| e.ok().map(|e| e.file_name()))
                .filter(|f| f.to_string_lossy().starts_with("missing"))
                .collect();
            assert!(left.is_empty(), "{args:?} at {url} left {left:?}");
        }
    }
    // `migrate` creates it; then the table exists and `list` works.
    db.run_at(&shown, &["migrate"]).expect(0);
    db.run_at(&shown, &["list"]).expect(0);
}

/// With no --url, DATABASE_LOCKS_URL or DATABASE_URL, every command warns that it uses
/// ./database_locks.sqlite3 and names it by its absolute path; with any of them, it is
/// quiet.
#[cfg(feature = "sqlite")]
#[test]
fn without_a_url_the_tool_names_the_file_it_falls_back_to() {
    let db = Db::sqlite();
    let file = std::fs::canonicalize(db.dir.path())
        .expect("scratch dir")
        .join(database_locks::DEFAULT_SQLITE_FILE);
    let warning = format!("using the SQLite file {}", file.display());
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = db.tool_without_url();
        for (var, value) in env {
            cmd.env(var, value);
        }
        common::Done::from_command(cmd, args)
    };

    // Nothing there yet: the warning, and `list` creates no file.
    let list = run(&["list"], &[]).expect(2);
    assert!(list.stderr.contains(&warning), "{list:#?}");
    assert!(list.stderr.contains("no lock database at"), "{list:#?}");
    assert!(!file.exists(), "list created {}", file.display());

    let name = unique_name("default-file");
    let done = run(&["run", &name, "--", "true"], &[]).expect(0);
    assert_eq!(done.stderr.matches(&warning).count(), 1, "{done:#?}");
    assert!(file.exists());
    // An empty variable counts as unset, as in the library.
    let done = run(&["status", &name], &[("DATABASE_LOCKS_URL", "")]).expect(1);
    assert!(done.stderr.contains(&warning), "{done:#?}");

    let path = file.display().to_string();
    for env in [
        &[("DATABASE_LOCKS_URL", path.as_str())][..],
        &[("DATABASE_URL", path.as_str())][..],
    ] {
        let quiet = run(&["status", &name], env).expect(1);
        assert_eq!(quiet.stderr, "", "{env:?}: {quiet:#?}");
    }
    let quiet = db.run_at(&path, &["status", &name]).expect(1);
    assert_eq!(quiet.stderr, "", "{quiet:#?}");
}

/// The tool's own errors: one line, `database-locks: error: ` and the cause, without
/// escape codes when stderr is not a terminal (here a pipe), whatever NO_COLOR says.
#[cfg(feature = "sqlite")]
#[test]
fn errors_are_one_line_with_their_cause() {
    let db = Db::sqlite();
    let unreachable = db.path("no-such-dir/locks.sqlite3").display().to_string();
    let failed = db
        .run_at(
            &unreachable,
            &["--connect-timeout", "1", "run", "x", "--", "true"],
        )
        .expect(125);
    assert_eq!(failed.stderr.lines().count(), 1, "{failed:#?}");
    assert!(
        failed
            .stderr
            .starts_with("database-locks: error: cannot connect to the lock database at "),
        "{failed:#?}"
    );
    // The driver's reason, after the pool's.
    assert!(
        failed.stderr.contains(": unable to open database file"),
        "{failed:#?}"
    );
    assert!(!failed.stderr.contains('\x1b'), "{failed:#?}");

    let mut cmd = db.tool_without_url();
    cmd.env_remove("NO_COLOR").env_remove("TERM");
    cmd.args(["--url", &unreachable]);
    let missing = common::Done::from_command(cmd, &["status", "x"]).expect(2);
    assert_eq!(missing.stderr.lines().count(), 1, "{missing:#?}");
    assert!(
        missing
            .stderr
            .starts_with("database-locks: error: no lock database at "),
        "{missing:#?}"
    );
    assert!(!missing.stderr.contains('\x1b'), "{missing:#?}");
}

/// On a terminal `error:` is red, unless NO_COLOR is set to something.
#[cfg(feature = "sqlite")]
#[test]
fn errors_on_a_terminal_are_red_unless_no_color() {
    let db = Db::sqlite();
    let missing = db.path("missing.sqlite3").display().to_string();
    for (no_color, red) in [(None, true), (Some(""), true), (Some("1"), false)] {
        let mut pty = Pty::open();
        let mut cmd = db.tool_without_url();
        cmd.args(["--url", &missing, "status", "x"])
            .env("TERM", "xterm");
        match no_color {
            Some(value) => cmd.env("NO_COLOR", value),
            None => cmd.env_remove("NO_COLOR"),
        };
        pty.attach(&mut cmd);
        let tool = Running::adopt(&["status", "x"], cmd.spawn().expect("the tool"));
        pty.wait_for("no lock database at");
        tool.finish().expect(2);
        let shown = pty.output();
        assert_eq!(
            shown.contains("database-locks: \x1b[1;31merror:\x1b[0m no lock database at"),
            red,
            "NO_COLOR={no_color:?}: {shown:?}"
        );
        assert_eq!(
            shown.contains('\x1b'),
            red,
            "NO_COLOR={no_color:?}: {shown:?}"
        );
    }
}
