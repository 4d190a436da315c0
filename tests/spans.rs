//! The `tracing` spans, as a subscriber shows them: `examples/tracing.rs` on each backend.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{output_of, Db};
use database_locks_testkit::on_each_backend;

/// The fields of the closing line of the first span `name` in `out` (`name{fields}:`).
fn closed<'a>(out: &'a str, name: &str) -> &'a str {
    let opening = format!(" {name}{{");
    out.lines()
        .filter(|l| l.ends_with("time.idle") || l.contains(" close "))
        .find_map(|l| {
            let from = l.find(&opening)? + opening.len();
            let to = from + l[from..].find("}:")?;
            Some(&l[from..to])
        })
        .unwrap_or_else(|| panic!("no closed {name} span in:\n{out}"))
}

/// Acquire, renew and release each show up as a span carrying the lock's name and owner;
/// acquire's ends with its outcome, token and wait, release's with the same token.
fn acquire_renew_and_release_are_spans(db: &Db) {
    let dir = tempfile::tempdir().unwrap();
    let mut run = std::process::Command::new(common::example("tracing"))
        .env("DATABASE_LOCKS_URL", &db.url)
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = output_of(&mut run, Duration::from_secs(120));
    let acquire = closed(&out, "acquire");
    assert!(
        acquire.starts_with("lock=tracing-example owner="),
        "{acquire}"
    );
    assert!(acquire.contains(" outcome=\"acquired\""), "{acquire}");
    assert!(acquire.contains(" wait_seconds="), "{acquire}");
    let token = acquire
        .split(' ')
        .find_map(|f| f.strip_prefix("token="))
        .unwrap_or_else(|| panic!("no token in {acquire}"));
    let owner = acquire
        .split(' ')
        .find_map(|f| f.strip_prefix("owner="))
        .unwrap();
    let renew = closed(&out, "renew");
    assert!(
        renew.contains("lock=\"tracing-example\"") && renew.contains(&format!("owner=\"{owner}\"")),
        "{renew}"
    );
    let release = closed(&out, "release");
    assert_eq!(
        release,
        format!("lock=tracing-example owner={owner} token={token} outcome=\"released\"")
    );
}

on_each_backend!(acquire_renew_and_release_are_spans);
