//! Counting semaphores (`Locks::semaphore`): at most K holders at once, across processes.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::{output_of, unique_name, Db};
use database_locks::{Error, LockInfo, SemaphoreRow, SEPARATOR};
use database_locks_testkit::on_each_backend;

/// One section as `sem-cs` logged it: `enter exit pid row token`.
#[derive(Debug, Clone)]
struct Section {
    enter: u128,
    exit: u128,
    row: String,
    token: u64,
}

fn read_sections(dir: &std::path::Path) -> Vec<Section> {
    std::fs::read_to_string(dir.join("intervals"))
        .expect("intervals")
        .lines()
        .map(|l| {
            let p: Vec<&str> = l.split_whitespace().collect();
            Section {
                enter: p[0].parse().unwrap(),
                exit: p[1].parse().unwrap(),
                row: p[3].to_owned(),
                token: p[4].parse().unwrap(),
            }
        })
        .collect()
}

/// `(row, token)` -> when the holder was told the permit was lost.
fn read_losses(dir: &std::path::Path) -> HashMap<(String, u64), u128> {
    std::fs::read_to_string(dir.join("losses"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let p: Vec<&str> = l.split_whitespace().collect();
            (
                (p[0].to_owned(), p[1].parse().unwrap()),
                p[2].parse().unwrap(),
            )
        })
        .collect()
}

/// The most sections inside at once, by a sweep over enter and exit instants (an exit
/// at the same instant as an enter counts first). A section whose holder was told of its
/// loss counts only until it was told: after that the library has said it holds nothing.
fn most_inside(sections: &[Section], losses: &HashMap<(String, u64), u128>) -> usize {
    let mut events: Vec<(u128, i32)> = Vec::new();
    for s in sections {
        let end = losses
            .get(&(s.row.clone(), s.token))
            .map_or(s.exit, |&told| told.min(s.exit));
        events.push((s.enter, 1));
        events.push((end, -1));
    }
    events.sort();
    let (mut inside, mut most) = (0i32, 0i32);
    for (_, step) in events {
        inside += step;
        most = most.max(inside);
    }
    most as usize
}

/// 12 processes, 25 sections each, on a semaphore of 3: never more than 3 inside at once,
/// 3 at once reached, every section ran, and each slot's tokens grow in the order its
/// holders entered.
fn twelve_processes_share_three_permits(db: &Db) {
    let _alone = common::heavy();
    let dir = tempfile::tempdir().unwrap();
    let name = unique_name("sem-12x25");
    let dir_arg = dir.path().display().to_string();
    let mut children: Vec<_> = (0..12)
        .map(|_| {
            db.helper(&["sem-cs", &db.url, &name, "3", "25", &dir_arg])
                // 12 single-threaded processes: small pools, so that they stay far below
                // the server's connection limit even when a loaded machine churns them.
                .env("DATABASE_LOCKS_POOL_MAX_SIZE", "2")
                .spawn()
                .unwrap()
        })
        .collect();
    let mut losses = 0u32;
    for child in &mut children {
        let out = output_of(child, Duration::from_secs(600));
        losses += out
            .lines()
            .find_map(|l| l.strip_prefix("losses "))
            .unwrap_or_else(|| panic!("no loss count: {out}"))
            .parse::<u32>()
            .unwrap();
    }
    let sections = read_sections(dir.path());
    let lost = read_losses(dir.path());
    assert_eq!(sections.len(), 300, "every section ran once");
    let most = most_inside(&sections, &lost);
    let most_raw = most_inside(&sections, &HashMap::new());
    println!(
        "semaphore [{:?}]: 12 processes x 25 sections on 3 permits: at most {most} inside \
         ({most_raw} counting sections after a reported loss), {losses} loss(es)",
        db.kind
    );
    assert!(most <= 3, "{most} holders inside a semaphore of 3");
    assert!(most_raw >= 3, "3 at once was never reached");
    let mut by_row: HashMap<&str, Vec<&Section>> = HashMap::new();
    for s in &sections {
        assert!(
            s.row.starts_with(&format!("{name}{SEPARATOR}")),
            "row {:?} is not a slot of {name}",
            s.row
        );
        by_row.entry(&s.row).or_default().push(s);
    }
    assert!(by_row.len() <= 3, "slots used: {:?}", by_row.keys());
    for (row, mut held) in by_row {
        held.sort_by_key(|s| s.enter);
        for pair in held.windows(2) {
            assert!(
                pair[0].token < pair[1].token,
                "{row}: token {} entered before token {}",
                pair[0].token,
                pair[1].token
            );
        }
    }
}

/// A holder killed with SIGKILL keeps its slot until its lease ends by the database's
/// clock, and no longer: the next permit of that slot is granted after that expiry, with
/// a larger token, while the other holder's slot stays its own.
fn a_crashed_holder_frees_its_slot_after_its_lease_only(db: &Db) {
    let _timed = common::timed();
    let name = unique_name("sem-crash");
    let spawn = |ttl: &str| {
        let mut child = db
            .helper(&["sem-hold", &db.url, &name, "2", ttl])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let mut parts = line.split_whitespace();
        assert_eq!(parts.next(), Some("acquired"), "helper said {line:?}");
        let row = parts.next().unwrap().to_owned();
        let token: i64 = parts.next().unwrap().parse().unwrap();
        (child, row, token)
    };
    // The crashed holder's lease is short, to be waited out; the other's is long, so that a
    // loaded machine stalling it for a few seconds cannot end it (its slot must stay its
    // own, and its release must succeed).
    let (mut crashed, crashed_row, crashed_token) = spawn("3");
    let (mut other, other_row, _) = spawn("60");
    assert_ne!(crashed_row, other_row, "two holders on one slot");
    crashed.kill().unwrap();
    crashed.wait().unwrap();
    // Nothing renews it now: this is the end of its lease.
    let ended = db
        .row(&crashed_row)
        .and_then(|r| r.expires_at)
        .expect("the crashed holder's slot is held");

    let locks = db.locks();
    let taken = locks
        .semaphore(name.as_str(), 2)
        .lock_ttl(Some(Duration::from_secs(30)))
        .timeout(Duration::from_secs(60))
        .acquire()
        .expect("the crashed holder's slot comes free");
    let permit = taken.permit().expect("a permit");
    assert_eq!(permit.row, crashed_row, "the live holder's slot was taken");
    let row = db.row(&crashed_row).expect("row");
    // The database set expires_at = its clock at the acquisition + 30 s.
    let granted_at = row.expires_at.expect("held") - 30_000_000;
    assert!(
        granted_at >= ended,
        "granted at {granted_at} µs, before the crashed lease ended at {ended} µs"
    );
    assert!(taken.token().unwrap() as i64 > crashed_token);
    let holder = db.row(&other_row).expect("the other slot");
    assert!(holder.locked_by.is_some() && holder.locked_by != row.locked_by);
    drop(other.stdin.take());
    assert!(other.wait().unwrap().success());
    taken.release().unwrap();
}

/// A second setup with another number of permits is refused while the first is in use,
/// and the table is left as it was; once nothing of the first is held, it is set up anew.
fn another_number_of_permits_is_refused_while_in_use(db: &Db) {
    let locks = db.locks();
    let name = unique_name("sem-mismatch");
    let first = locks.semaphore(name.as_str(), 2).acquire().unwrap();
    let before = rows_of(&locks, &name);
    let err = locks
        .semaphore(name.as_str(), 5)
        .try_acquire()
        .expect_err("5 permits while 2 are in use");
    assert!(
        matches!(
            &err,
            Error::PermitsMismatch {
                permits: 5,
                found: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("in use with 2 permits, not 5"),
        "{err}"
    );
    // Also for an acquisition that would wait: an error at once, not a wait.
    let err = locks
        .semaphore(name.as_str(), 5)
        .timeout(Duration::from_secs(60))
        .acquire()
        .expect_err("waits for nothing");
    assert!(matches!(err, Error::PermitsMismatch { .. }), "{err:?}");
    assert_eq!(rows_of(&locks, &name), before, "the table changed");
    first.release().unwrap();
    // Nobody holds a permit of the 2-permit setup now: 5 is the new setup.
    let guards: Vec<_> = (0..5)
        .map(|_| {
            locks
                .semaphore(name.as_str(), 5)
                .try_acquire()
                .unwrap()
                .expect("a free permit")
        })
        .collect();
    assert!(locks
        .semaphore(name.as_str(), 5)
        .try_acquire()
        .unwrap()
        .is_none());
    let err = locks.semaphore(name.as_str(), 2).try_acquire().unwrap_err();
    assert!(
        matches!(err, Error::PermitsMismatch { found: 5, .. }),
        "{err:?}"
    );
    drop(guards);
}

/// The semaphore's rows, as `list` shows them (names, holders, tokens; not times).
fn rows_of(locks: &database_locks::Locks, name: &str) -> Vec<(String, Option<String>, i64, bool)> {
    locks
        .list()
        .unwrap()
        .into_iter()
        .filter(|r| r.name.starts_with(&format!("{name}{SEPARATOR}")))
        .map(|r| (r.name.clone(), r.locked_by.clone(), r.token, r.is_held()))
        .collect()
}

/// Bad input is a typed error before any SQL: the table does not change.
fn bad_input_is_refused_before_the_database(db: &Db) {
    let locks = db.locks();
    let name = unique_name("sem-bad");
    for permits in [0, database_locks::MAX_PERMITS + 1] {
        let err = locks
            .semaphore(name.as_str(), permits)
            .try_acquire()
            .unwrap_err();
        assert!(
            matches!(
                &err,
                Error::InvalidInput {
                    what: "permits",
                    ..
                }
            ),
            "{permits}: {err:?}"
        );
    }
    let long = "s".repeat(250);
    let err = locks.semaphore(long.as_str(), 3).try_acquire().unwrap_err();
    assert!(
        matches!(
            &err,
            Error::InvalidInput {
                what: "semaphore name",
                ..
            }
        ),
        "{err:?}"
    );
    // The separator names a semaphore's rows: no lock or semaphore name may contain it.
    let odd = format!("a{SEPARATOR}1");
    let err = locks.lock(odd.as_str()).try_acquire().unwrap_err();
    assert!(
        matches!(
            &err,
            Error::InvalidInput {
                what: "lock name",
                ..
            }
        ),
        "{err:?}"
    );
    let err = locks.semaphore(odd.as_str(), 2).try_acquire().unwrap_err();
    assert!(
        matches!(
            &err,
            Error::InvalidInput {
                what: "lock name",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        rows_of(&locks, &name).is_empty() && locks.inspect(&odd).unwrap().is_none(),
        "rows were written"
    );
}

/// The permits' rows: K slots and the header, which `LockInfo::semaphore` tells apart from
/// locks; a lock of the same name is a different row.
fn rows_are_slots_and_a_header(db: &Db) {
    let locks = db.locks();
    let name = unique_name("sem-rows");
    let lock = locks.lock(name.as_str()).acquire().unwrap();
    let a = locks.semaphore(name.as_str(), 3).acquire().unwrap();
    let b = locks.semaphore(name.as_str(), 3).acquire().unwrap();
    assert_eq!(a.name(), name);
    let (pa, pb) = (a.permit().unwrap(), b.permit().unwrap());
    assert_ne!(pa.slot, pb.slot);
    assert!(lock.permit().is_none());
    let rows: Vec<LockInfo> = locks
        .list()
        .unwrap()
        .into_iter()
        .filter(|r| r.name == name || r.name.starts_with(&format!("{name}{SEPARATOR}")))
        .collect();
    let mut slots = 0;
    let mut held = 0;
    for row in &rows {
        match row.semaphore() {
            None => assert_eq!(row.name, name, "the lock"),
            Some(SemaphoreRow::Permits { semaphore, permits }) => {
                assert_eq!((semaphore, permits), (name.as_str(), 3));
                assert!(!row.is_held());
            }
            Some(SemaphoreRow::Slot { semaphore, slot }) => {
                assert_eq!(semaphore, name);
                assert!((1..=3).contains(&slot));
                slots += 1;
                held += usize::from(row.is_held());
            }
            Some(other) => panic!("{other:?}"),
        }
    }
    assert_eq!((rows.len(), slots, held), (5, 3, 2), "{rows:#?}");
    // All three held: a waiter of this handle gets the slot that a release frees.
    let c = locks.semaphore(name.as_str(), 3).acquire().unwrap();
    let waiter = {
        let locks = locks.clone();
        let name = name.clone();
        std::thread::spawn(move || {
            locks
                .semaphore(name.as_str(), 3)
                .timeout(Duration::from_secs(60))
                .acquire()
                .map(|g| g.permit().unwrap().slot)
        })
    };
    let freed = pb.slot;
    b.release().unwrap();
    assert_eq!(
        waiter.join().unwrap().unwrap(),
        freed,
        "the waiter got the freed slot"
    );
    drop((a, c, lock));
}

/// The async face: permits from tasks on one thread, waiting for each other without
/// blocking it. Both permits are held at once, and never more than two.
fn async_permits_on_one_thread(db: &Db) {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    let locks = db.locks();
    let name = unique_name("sem-async");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    runtime.block_on(async {
        // Both permits at once, by construction rather than by timing: each of two tasks
        // stays inside until the other is in too. With one permit the second task would
        // wait, and the first gives up after 30 s. (This used to be read off the loop
        // below, whose 5 ms sections never overlapped once a loaded machine made each
        // MySQL permit attempt slower than that: `most` was 1.)
        let both = Arc::new(tokio::sync::Barrier::new(2));
        let pair: Vec<_> = (0..2)
            .map(|_| {
                let (locks, name, both) = (locks.clone(), name.clone(), both.clone());
                tokio::spawn(async move {
                    let permit = locks
                        .semaphore(name.as_str(), 2)
                        .retry(Some(Duration::from_millis(20)))
                        .timeout(Duration::from_secs(60))
                        .acquire_async()
                        .await
                        .expect("permit");
                    tokio::time::timeout(Duration::from_secs(30), both.wait())
                        .await
                        .expect("the other task holds the second permit at the same time");
                    permit.release_async().await.expect("release");
                })
            })
            .collect();
        for task in pair {
            task.await.unwrap();
        }

        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (locks, name) = (locks.clone(), name.clone());
                let (inside, most) = (inside.clone(), most.clone());
                tokio::spawn(async move {
                    for _ in 0..3 {
                        let permit = locks
                            .semaphore(name.as_str(), 2)
                            .retry(Some(Duration::from_millis(20)))
                            .timeout(Duration::from_secs(60))
                            .acquire_async()
                            .await
                            .expect("permit");
                        let now = inside.fetch_add(1, SeqCst) + 1;
                        most.fetch_max(now, SeqCst);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        inside.fetch_sub(1, SeqCst);
                        permit.release_async().await.expect("release");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    let most = most.load(SeqCst);
    assert!(
        (1..=2).contains(&most),
        "{most} tasks were inside at once, with 2 permits"
    );
}

/// `examples/semaphore.rs` on this backend: it asserts itself that no more than 2 of its
/// 5 workers are inside at once, and says so at the end.
fn the_example_runs(db: &Db) {
    let example = common::example("semaphore");
    let dir = tempfile::tempdir().unwrap();
    let mut run = std::process::Command::new(&example)
        .env("DATABASE_LOCKS_URL", &db.url)
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = output_of(&mut run, Duration::from_secs(300));
    assert!(out.contains("done: never more than 2 inside"), "{out}");
    assert_eq!(
        out.matches(" inside").count(),
        11,
        "10 sections and the end: {out}"
    );
}

on_each_backend!(
    the_example_runs,
    twelve_processes_share_three_permits,
    a_crashed_holder_frees_its_slot_after_its_lease_only,
    another_number_of_permits_is_refused_while_in_use,
    bad_input_is_refused_before_the_database,
    rows_are_slots_and_a_header,
    async_permits_on_one_thread,
);
