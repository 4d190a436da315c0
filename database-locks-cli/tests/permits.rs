//! End-to-end: `run --permits K` (a semaphore) and how `list` shows semaphores.
#![cfg(unix)]

mod common;

use common::{eventually, unique_name, Db};
use database_locks_testkit::on_each_backend;

const BUSY: i32 = 124;

on_each_backend!(
    pgbouncer;
    k_copies_run_at_once_and_list_shows_them,
);

/// The semaphore `name` in `list --json`: its permits and held slots' numbers.
fn listed(db: &Db, name: &str) -> Option<(i64, Vec<u64>)> {
    let list = db.run(&["list", "--json"]).expect(0);
    let json: serde_json::Value = serde_json::from_str(&list.stdout)
        .unwrap_or_else(|e| panic!("list --json is not JSON ({e}): {}", list.stdout));
    assert!(
        json["locks"]
            .as_array()
            .expect("locks")
            .iter()
            .all(|l| !l["name"].as_str().unwrap_or("").starts_with(name)),
        "a semaphore's rows are listed as locks: {}",
        list.stdout
    );
    let sem = json["semaphores"]
        .as_array()
        .expect("a `semaphores` array")
        .iter()
        .find(|s| s["name"] == name)?;
    let slots = sem["held"]
        .as_array()
        .expect("held")
        .iter()
        .map(|h| h["slot"].as_u64().expect("slot"))
        .collect();
    Some((sem["permits"].as_i64().expect("permits"), slots))
}

/// Two `run --permits 2` run their commands together, each in its own slot (told by
/// DATABASE_LOCKS_SLOT); a third is busy; `list` shows the semaphore with both holders;
/// another number of permits is refused while they run; when they finish the slots are
/// free again.
fn k_copies_run_at_once_and_list_shows_them(db: &Db) {
    db.run(&["migrate"]).expect(0);
    let name = unique_name("permits");
    let go = db.path("go");
    let script = format!(
        "touch '{dir}/slot-'$DATABASE_LOCKS_SLOT; while [ ! -e '{go}' ]; do sleep 0.02; done",
        dir = db.path("").display(),
        go = go.display()
    );
    let runs: Vec<_> = (0..2)
        .map(|_| db.spawn(&["run", "--permits", "2", &name, "--", "sh", "-c", &script]))
        .collect();
    assert!(
        eventually(|| db.path("slot-1").exists() && db.path("slot-2").exists()),
        "both commands did not run at once: slot-1 {}, slot-2 {}",
        db.path("slot-1").exists(),
        db.path("slot-2").exists()
    );
    assert_eq!(listed(db, &name), Some((2, vec![1, 2])));
    let table = db.run(&["list"]).expect(0);
    assert!(
        table.stdout.contains("semaphore, 2 of 2 held") && table.stdout.contains("  permit 2"),
        "{}",
        table.stdout
    );
    let third = db.path("third");
    let touch = format!("touch '{}'", third.display());
    db.run(&[
        "run",
        "--permits",
        "2",
        "--try",
        &name,
        "--",
        "sh",
        "-c",
        &touch,
    ])
    .expect(BUSY);
    assert!(!third.exists(), "a third command ran");
    let refused = db
        .run(&[
            "run",
            "--permits",
            "3",
            "--try",
            &name,
            "--",
            "sh",
            "-c",
            &touch,
        ])
        .expect(125);
    assert!(
        refused.stderr.contains("in use with 2 permits, not 3"),
        "{refused:#?}"
    );
    assert!(
        !third.exists(),
        "the command ran with another number of permits"
    );
    std::fs::write(&go, "").unwrap();
    for run in runs {
        run.finish().expect(0);
    }
    assert_eq!(listed(db, &name), Some((2, vec![])));
    db.run(&[
        "run",
        "--permits",
        "2",
        "--try",
        &name,
        "--",
        "sh",
        "-c",
        &touch,
    ])
    .expect(0);
    assert!(third.exists());
    // Out of range: a usage error before the database is touched.
    let usage = db
        .run(&["run", "--permits", "0", &name, "--", "true"])
        .expect(2);
    assert!(usage.stderr.contains("--permits"), "{usage:#?}");
}
