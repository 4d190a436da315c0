//! The `metrics` feature, scraped the way an operator's Prometheus scrapes it: through
//! metrics-exporter-prometheus's HTTP listener on a loopback port, during a contended run
//! whose own counts the scraped series must match.
#![cfg(feature = "metrics")]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{mpsc, OnceLock};
use std::thread;
use std::time::Duration;

use common::{eventually, unique_name, Db};
use database_locks::{Error, Locks, LossCause};
use database_locks_testkit::on_each_backend;
use metrics_exporter_prometheus::PrometheusBuilder;

const BOUND: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// The exporter of this test process (one global recorder per process), and its address.
fn exporter() -> SocketAddr {
    static ADDRESS: OnceLock<SocketAddr> = OnceLock::new();
    *ADDRESS.get_or_init(|| {
        // A free loopback port: bound, read, let go, then taken by the exporter.
        let address = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port");
        PrometheusBuilder::new()
            .with_http_listener(address)
            // Buckets make the `_seconds` series histograms (`_bucket`, `_sum`, `_count`).
            .set_buckets(&[0.001, 0.01, 0.1, 1.0, 10.0, 60.0])
            .expect("buckets")
            .install()
            .expect("the Prometheus exporter starts");
        address
    })
}

/// One scrape of `/metrics`, over plain HTTP/1.1.
fn scrape() -> String {
    let address = exporter();
    let text = eventually_ok(|| {
        let mut stream = TcpStream::connect(address).map_err(|e| e.to_string())?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .map_err(|e| e.to_string())?;
        Ok(response)
    });
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "scrape answered {head}");
    body.to_owned()
}

/// The exporter's listener starts on a thread of its own: the first scrapes may find it
/// not listening yet.
fn eventually_ok(mut f: impl FnMut() -> Result<String, String>) -> String {
    let mut last = String::new();
    for _ in 0..100 {
        match f() {
            Ok(text) => return text,
            Err(err) => last = err,
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!("cannot scrape the exporter: {last}")
}

/// The value of the sample `metric` whose labels include all of `labels`, summed over the
/// series that match (0 when none does: the exporter shows a series once it is touched).
fn sample(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, rest) = series.split_once('{').unwrap_or((series, "}"));
            if name != metric {
                return None;
            }
            let shown = rest.trim_end_matches('}');
            let all = labels
                .iter()
                .all(|(k, v)| shown.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().expect("a number"))
        })
        .sum()
}

fn acquisitions(text: &str, name: &str, outcome: &str) -> f64 {
    sample(
        text,
        "database_locks_acquisitions_total",
        &[("lock", name), ("outcome", outcome)],
    )
}

/// Four threads take one lock ten times each, then refusals and timeouts: every counter
/// and histogram count matches what the run itself counted.
fn counters_match_a_contended_run(db: &Db) {
    // Installed before the first event: events before a recorder are not kept.
    exporter();
    let locks = db.locks();
    let name = unique_name("metrics-run");
    let threads = 4;
    let rounds = 10;
    thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..rounds {
                    let guard = locks
                        .lock(&name)
                        .retry(Some(Duration::from_millis(20)))
                        .timeout(BOUND)
                        .acquire()
                        .expect("acquire");
                    thread::sleep(Duration::from_millis(2));
                    guard.release().expect("release");
                }
            });
        }
    });
    let sections = threads * rounds;

    // Held here: three single tries are refused, two short waits time out.
    let held = locks.lock(&name).acquire().unwrap();
    let during = scrape();
    assert_eq!(
        sample(&during, "database_locks_held", &[("lock", &name)]),
        1.0,
        "{during}"
    );
    let other = db.locks();
    for _ in 0..3 {
        assert!(other.lock(&name).try_acquire().unwrap().is_none());
    }
    for _ in 0..2 {
        let err = other
            .lock(&name)
            .retry(Some(Duration::from_millis(50)))
            .timeout(Duration::from_millis(200))
            .acquire()
            .unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
    }
    held.release().unwrap();

    let after = scrape();
    let acquired = f64::from(sections + 1);
    assert_eq!(acquisitions(&after, &name, "acquired"), acquired, "{after}");
    assert_eq!(acquisitions(&after, &name, "refused"), 3.0);
    assert_eq!(acquisitions(&after, &name, "timed_out"), 2.0);
    assert_eq!(acquisitions(&after, &name, "error"), 0.0);
    let waits = |outcome| {
        sample(
            &after,
            "database_locks_acquire_wait_seconds_count",
            &[("lock", &name), ("outcome", outcome)],
        )
    };
    assert_eq!(waits("acquired"), acquired);
    assert_eq!(waits("timed_out"), 2.0);
    // Each timed-out wait lasted its 200 ms timeout at least.
    let waited = sample(
        &after,
        "database_locks_acquire_wait_seconds_sum",
        &[("lock", &name), ("outcome", "timed_out")],
    );
    assert!(waited >= 0.4, "timed-out waits summed to {waited} s");
    assert_eq!(
        sample(
            &after,
            "database_locks_hold_seconds_count",
            &[("lock", &name)]
        ),
        acquired,
        "one hold time per release"
    );
    assert_eq!(
        sample(&after, "database_locks_held", &[("lock", &name)]),
        0.0
    );
    println!(
        "metrics [{:?}]: {sections} contended sections + 1, scraped acquired {}, refused 3, \
         timed out 2; wake-ups local {}, poll {}",
        db.kind,
        acquisitions(&after, &name, "acquired"),
        sample(
            &after,
            "database_locks_wakeups_total",
            &[("lock", &name), ("kind", "local")]
        ),
        sample(
            &after,
            "database_locks_wakeups_total",
            &[("lock", &name), ("kind", "poll")]
        ),
    );
}

/// A release hands the lock to a waiter of the same handle (kind `local`) and, on
/// backends that announce releases, to a waiter of another handle (kind `notify`): each
/// waiter polls once an hour, so only the wake-up can let it in.
fn wakeups_are_counted_by_kind(db: &Db) {
    // Installed before the first event: events before a recorder are not kept.
    exporter();
    let locks = db.locks();
    let name = unique_name("metrics-wake");
    let wakeups = |kind| {
        sample(
            &scrape(),
            "database_locks_wakeups_total",
            &[("lock", &name), ("kind", kind)],
        )
    };
    // `ready`: the waiter is known to wait (its first attempt was refused), so the
    // release must wake it.
    let hand_off = |waiting: &Locks, retry: Duration, ready: &dyn Fn(&Locks) -> bool| {
        let holder = locks.lock(&name).acquire().unwrap();
        let (tx, rx) = mpsc::channel();
        let waiter = {
            let (waiting, name) = (waiting.clone(), name.clone());
            thread::spawn(move || {
                let got = waiting
                    .lock(&name)
                    .retry(Some(retry))
                    .timeout(BOUND)
                    .acquire();
                let _ = tx.send(got.map(|guard| guard.release()));
            })
        };
        assert!(
            eventually(BOUND, || common::in_progress(waiting) == 1
                && ready(waiting)),
            "the waiter never started waiting"
        );
        holder.release().unwrap();
        rx.recv_timeout(BOUND)
            .expect("the waiter was not woken")
            .expect("the waiter's acquisition")
            .expect("the waiter's release");
        waiter.join().unwrap();
    };
    // Same handle: a release while the waiter is queued (even mid-attempt) hands it the turn.
    hand_off(&locks, HOUR, &|_| true);
    assert!(
        wakeups("local") >= 1.0,
        "a same-handle hand-off is a local wake-up"
    );
    let other = db.locks();
    if db.kind == database_locks::BackendKind::Mysql {
        // No release announcements on MySQL: the front of the queue polls, and each poll
        // is counted, the first ones while the lock is still held.
        hand_off(&other, Duration::from_millis(100), &|_| {
            wakeups("poll") >= 1.0
        });
    } else {
        // The handle starts listening after its first attempt was refused (its `Debug`
        // shows the listener's state then).
        hand_off(&other, HOUR, &|l| !format!("{l:?}").contains("NotStarted"));
        assert!(wakeups("notify") >= 1.0, "{}", scrape());
    }
}

/// A renewed lease counts as a renewal; a stolen one, once its guard finds out, as a loss
/// with cause `taken`.
fn renewals_and_losses_are_counted(db: &Db) {
    // Installed before the first event: events before a recorder are not kept.
    exporter();
    let locks = db.locks();
    let name = unique_name("metrics-renew");
    let (tx, rx) = mpsc::channel();
    let guard = locks
        .lock(&name)
        .lock_ttl(Some(Duration::from_secs(3)))
        .lock_ttl_renew(Duration::from_secs(2))
        .lost_lock_cb(move |lost| {
            let _ = tx.send(lost.cause);
        })
        .acquire()
        .unwrap();
    let renewals = || {
        sample(
            &scrape(),
            "database_locks_renewals_total",
            &[("lock", &name)],
        )
    };
    assert!(
        eventually(BOUND, || renewals() >= 1.0),
        "no renewal was counted: {}",
        scrape()
    );
    db.steal(&name, "thief");
    assert!(guard.renew().is_err(), "the theft is found");
    assert_eq!(rx.recv_timeout(BOUND).unwrap(), LossCause::Taken);
    let text = scrape();
    assert_eq!(
        sample(
            &text,
            "database_locks_losses_total",
            &[("lock", &name), ("cause", "taken")]
        ),
        1.0,
        "{text}"
    );
    drop(guard);
}

/// A semaphore is one series, whatever slot a permit holds.
fn a_semaphore_is_one_series(db: &Db) {
    // Installed before the first event: events before a recorder are not kept.
    exporter();
    let locks = db.locks();
    let name = unique_name("metrics-sem");
    let first = locks.semaphore(&name, 3).acquire().unwrap();
    let second = locks.semaphore(&name, 3).acquire().unwrap();
    let text = scrape();
    assert_eq!(
        sample(&text, "database_locks_held", &[("lock", &name)]),
        2.0
    );
    assert_eq!(acquisitions(&text, &name, "acquired"), 2.0, "{text}");
    assert!(!text.contains(&format!("{name}{}", database_locks::SEPARATOR)));
    first.release().unwrap();
    second.release().unwrap();
}

on_each_backend!(
    counters_match_a_contended_run,
    wakeups_are_counted_by_kind,
    renewals_and_losses_are_counted,
    a_semaphore_is_one_series,
);
