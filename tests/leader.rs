//! Leader election (issue 14) with real processes: five `leader-helper` candidates per
//! election, on each backend. Every claim is checked on instants the processes recorded
//! (their clock is one clock, this host's) or on the database's own times, never on a
//! "time left" reading. Figures are printed:
//! `cargo test --all-features --test leader -- --nocapture`.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{unique_name, Db};
use database_locks::{Config, DemotionCause, Locks, LossCause};
use database_locks_testkit::{host_port, on_each_backend, read_row, FaultProxy};

const HELPER: &str = env!("CARGO_BIN_EXE_leader-helper");
const CANDIDATES: usize = 5;

/// One term as the processes logged it (times in microseconds since the Unix epoch).
#[derive(Debug, Clone, Default)]
struct Term {
    pid: u32,
    token: u64,
    elected_wall: i64,
    /// The database's clock read right after the election.
    elected_db: i64,
    demoted_wall: Option<i64>,
    cause: Option<String>,
    /// The row's `expires_at` read just before a step-down.
    stepping_expires: Option<i64>,
}

/// Five candidates of one election.
struct Candidates {
    children: Vec<Option<Child>>,
    events: mpsc::Receiver<(usize, String)>,
    dir: tempfile::TempDir,
}

impl Candidates {
    /// `ttl renew retry lead pause`, as `leader-helper` takes them.
    fn start(db: &Db, name: &str, times: [&str; 5]) -> Candidates {
        let dir = tempfile::tempdir().unwrap();
        let (tx, events) = mpsc::channel();
        let children = (0..CANDIDATES)
            .map(|i| {
                let mut child = Command::new(HELPER)
                    .args([&db.url, name, &dir.path().display().to_string()])
                    .args(times)
                    .env(
                        "DATABASE_LOCKS_TRANSACTION_POOLING",
                        if db.pooled { "true" } else { "false" },
                    )
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .expect("spawn leader-helper");
                let stdout = child.stdout.take().unwrap();
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                        if tx.send((i, line)).is_err() {
                            break;
                        }
                    }
                });
                Some(child)
            })
            .collect();
        Candidates {
            children,
            events,
            dir,
        }
    }

    /// The next `elected TOKEN` line: which candidate, and the token.
    fn next_elected(&self, within: Duration) -> (usize, u64) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok((i, line)) => {
                    if let Some(token) = line.strip_prefix("elected ") {
                        return (i, token.parse().unwrap());
                    }
                }
                Err(_) => panic!("nobody was elected within {within:?}"),
            }
        }
    }

    /// SIGKILL to candidate `i`; this host's clock right after it died.
    fn kill(&mut self, i: usize) -> i64 {
        let mut child = self.children[i].take().expect("alive");
        child.kill().unwrap();
        child.wait().unwrap();
        wall_us()
    }

    /// Closes every live candidate's stdin (it stops, releasing) and waits for them.
    fn stop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            drop(child.stdin.take());
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for child in self.children.iter_mut() {
            if let Some(mut c) = child.take() {
                loop {
                    if let Some(status) = c.try_wait().unwrap() {
                        assert!(status.success(), "a candidate failed: {status}");
                        break;
                    }
                    if Instant::now() > deadline {
                        let _ = c.kill();
                        panic!("a candidate did not stop within 60 s");
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    /// The terms logged so far, by token.
    fn terms(&self) -> BTreeMap<u64, Term> {
        let text = std::fs::read_to_string(self.dir.path().join("terms")).unwrap_or_default();
        let mut terms: BTreeMap<u64, Term> = BTreeMap::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let token: u64 = f[2].parse().unwrap();
            let term = terms.entry(token).or_default();
            term.token = token;
            term.pid = f[1].parse().unwrap();
            match f[0] {
                "elected" => {
                    term.elected_wall = f[3].parse().unwrap();
                    term.elected_db = f[4].parse().unwrap();
                }
                "stepping" => term.stepping_expires = Some(f[4].parse().unwrap()),
                "demoted" => {
                    term.demoted_wall = Some(f[3].parse().unwrap());
                    term.cause = Some(f[4].to_owned());
                }
                other => panic!("unknown line {other}"),
            }
        }
        terms
    }
}

impl Drop for Candidates {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wall_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// The terms in order of election; checks that they never overlap (each ended, by its
/// holder's own record or `killed_at`, before the next began) and that tokens grow.
fn check_one_at_a_time(terms: &BTreeMap<u64, Term>, killed_at: &BTreeMap<u64, i64>) -> Vec<Term> {
    let mut ordered: Vec<Term> = terms.values().cloned().collect();
    ordered.sort_by_key(|t| t.elected_wall);
    for pair in ordered.windows(2) {
        let (earlier, later) = (&pair[0], &pair[1]);
        assert!(
            later.token > earlier.token,
            "a later term has a smaller token: {earlier:?} then {later:?}"
        );
        let ended = earlier
            .demoted_wall
            .or_else(|| killed_at.get(&earlier.token).copied())
            .unwrap_or_else(|| panic!("term {earlier:?} never ended, yet {later:?} began"));
        assert!(
            ended < later.elected_wall,
            "two leaders at once: {earlier:?} ended at {ended}, {later:?} began before"
        );
    }
    ordered
}

fn ms(us: i64) -> f64 {
    us as f64 / 1000.0
}

/// Five candidates, each leader stepping down after 200 ms: exactly one leads at any
/// instant, tokens grow with each term, and each next leader was elected while the lease
/// of the one that stepped down was still live (by the database's clock): a hand-off, not
/// an expiry. The lease (10 s, renewed 5 s before its end) has at least 5 s left at each
/// step-down, so an expiry-based takeover cannot pass for a hand-off.
fn five_candidates_hand_over_on_step_down(db: &Db) {
    let name = unique_name("leader-step-down");
    let mut candidates = Candidates::start(db, &name, ["10", "5", "0.25", "0.2", "0.5"]);
    let want = 10;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let stepped = candidates
            .terms()
            .values()
            .filter(|t| t.cause.as_deref() == Some("stepped-down"))
            .count();
        if stepped >= want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {stepped} step-downs in 180 s: {:?}",
            candidates.terms()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    candidates.stop();
    let terms = candidates.terms();
    let ordered = check_one_at_a_time(&terms, &BTreeMap::new());
    let mut handoffs = Vec::new();
    for pair in ordered.windows(2) {
        let (earlier, later) = (&pair[0], &pair[1]);
        if earlier.cause.as_deref() != Some("stepped-down") {
            continue;
        }
        let expires = earlier.stepping_expires.expect("row read before step-down");
        assert!(
            later.elected_db >= 0 && later.elected_db < expires,
            "{later:?} was elected after the stepped-down lease's end ({expires} µs): an \
             expiry, not a hand-off"
        );
        handoffs.push(later.elected_wall - earlier.demoted_wall.unwrap());
    }
    assert!(handoffs.len() >= want - 1, "{ordered:?}");
    handoffs.sort_unstable();
    println!(
        "{:?}{}: {} terms, {} hand-offs after a step-down: median {:.1} ms, max {:.1} ms \
         (from on_demoted in one process to on_elected in another)",
        db.kind,
        if db.pooled { " via PgBouncer" } else { "" },
        ordered.len(),
        handoffs.len(),
        ms(handoffs[handoffs.len() / 2]),
        ms(*handoffs.last().unwrap()),
    );
}

/// Five candidates, lease 2 s: SIGKILL the leader, twice. Each time another candidate is
/// elected with a larger token, never while the killed one's term could still run, and
/// soon after its lease ended (printed; asserted within 30 s of it, see below).
fn killing_the_leader_elects_another_within_the_lease(db: &Db) {
    let name = unique_name("leader-kill");
    let mut candidates = Candidates::start(db, &name, ["2", "1", "0.25", "none", "2"]);
    let ttl_us = 2_000_000;
    let mut killed_at = BTreeMap::new();
    let (mut leader, mut token) = candidates.next_elected(Duration::from_secs(60));
    for _ in 0..2 {
        let at = candidates.kill(leader);
        killed_at.insert(token, at);
        let old_end = read_row(db.kind, &db.url, &name)
            .unwrap()
            .and_then(|r| r.expires_at_us)
            .expect("the killed leader's row");
        let (next, next_token) = candidates.next_elected(Duration::from_secs(60));
        assert_ne!(next, leader);
        assert!(next_token > token, "token {next_token} after {token}");
        let term = candidates.terms()[&next_token].clone();
        // The takeover delay itself (about lease + a few ms here; the bound is
        // lease + 1 s) is a timing: it is printed below, for the record, and bounded only
        // loosely, since a loaded machine can stall every candidate for seconds (this VM
        // has stalled processes for over a minute). A candidate that waits for its poll
        // instead of the known expiry still meets this; one that never takes over does not.
        assert!(
            term.elected_wall <= at + ttl_us + 30_000_000,
            "elected {:.0} ms after the kill; the lease is 2 s",
            ms(term.elected_wall - at)
        );
        println!(
            "{:?}{}: leader killed; the next elected {:.0} ms after the kill, {:.0} ms after \
             the killed lease's end",
            db.kind,
            if db.pooled { " via PgBouncer" } else { "" },
            ms(term.elected_wall - at),
            ms(term.elected_wall - old_end),
        );
        (leader, token) = (next, next_token);
    }
    candidates.stop();
    let terms = candidates.terms();
    // A stopping leader may hand over to a candidate that has not stopped yet.
    assert!(terms.len() >= 3, "{terms:?}");
    check_one_at_a_time(&terms, &killed_at);
}

on_each_backend!(
    five_candidates_hand_over_on_step_down,
    killing_the_leader_elects_another_within_the_lease
);

/// A leader whose connection goes silent (a black hole: no error, no answer) is demoted
/// before its lease ends by the database's clock, with `LossCause::Expired`; a candidate
/// with a working connection takes over after that, with a larger token. SQLite is a
/// file on this host: there is no connection to cut.
///
/// The other candidate starts only once the cut-off leader was demoted, so that the row
/// read then is still the cut-off term's: its `expires_at` is when that lease ended by the
/// database's clock, compared with when the demotion was told (this host's clock, which
/// the databases here share). Reading the row inside the callback, as this test once did,
/// raced the other candidate: on a loaded machine the read took longer than the half
/// second between demotion and takeover.
fn a_leader_behind_a_cut_connection_is_demoted_before_its_lease_ends(db: &Db) {
    let name = unique_name("leader-cut");
    let upstream = host_port(&db.url).expect("host:port in the URL");
    let proxy = FaultProxy::start(&upstream);
    let cut_off = Locks::new(
        Config::new(proxy.url_for(&db.url))
            .transaction_pooling(db.pooled)
            .statement_timeout(Duration::from_secs(1)),
    )
    .unwrap();
    let ttl = Duration::from_secs(4);
    let demoted: Arc<Mutex<Option<(i64, DemotionCause)>>> = Arc::default();
    let seen = Arc::clone(&demoted);
    let a = cut_off
        .leader(name.clone())
        .lock_ttl(ttl)
        .lock_ttl_renew(Duration::from_secs(2))
        .retry(Duration::from_millis(250))
        .on_demoted(move |d| {
            let at = wall_us();
            seen.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get_or_insert((at, d.cause.clone()));
        })
        .start()
        .unwrap();
    let term = a
        .wait_elected(Duration::from_secs(30))
        .expect("elected through the proxy");
    let _heal = Heal(&proxy);
    proxy.blackhole_all();
    let cut_at = Instant::now();
    let (demoted_us, cause) = loop {
        let told = demoted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(told) = told {
            break told;
        }
        assert!(
            cut_at.elapsed() < Duration::from_secs(60),
            "the cut-off leader was never demoted"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    match &cause {
        DemotionCause::Lost(lost) => assert_eq!(lost.cause, LossCause::Expired, "{lost}"),
        other => panic!("demoted for {other:?}"),
    }
    // Nobody else campaigns yet, and nothing of the cut-off handle reaches the database.
    let row = read_row(db.kind, &db.url, &name).unwrap().expect("row");
    assert_eq!(row.token as u64, term.token, "{row:?}");
    let lease_end = row.expires_at_us.expect("the term's lease, not released");
    assert!(
        demoted_us < lease_end,
        "demoted {:.0} ms after its lease ended by the database's clock",
        ms(demoted_us - lease_end)
    );

    let direct = db.locks();
    let b = direct
        .leader(name.clone())
        .lock_ttl(ttl)
        .retry(Duration::from_millis(250))
        .start()
        .unwrap();
    let next = b
        .wait_elected(Duration::from_secs(30))
        .expect("the other candidate took over");
    assert!(next.token > term.token);
    // Its acquisition ran at its expiry minus its ttl (later still if it has renewed):
    // after the cut-off lease ended.
    let taken = read_row(db.kind, &db.url, &name).unwrap().expect("row");
    let taken_at = taken.expires_at_us.expect("held") - ttl.as_micros() as i64;
    assert!(
        taken.token as u64 >= next.token && taken_at >= lease_end,
        "taken {:.0} ms after the cut-off lease ended: {taken:?}",
        ms(taken_at - lease_end)
    );
    println!(
        "{:?}: cut off; demoted {:.0} ms before the lease's end (database clock), the other \
         candidate, started then, took over {:.0} ms after that end",
        db.kind,
        ms(lease_end - demoted_us),
        ms(taken_at - lease_end)
    );
    drop(b);
}

/// Heals the proxy before the handles behind it are dropped (their releases go through it).
struct Heal<'a>(&'a FaultProxy);

impl Drop for Heal<'_> {
    fn drop(&mut self) {
        self.0.pass();
        self.0.reset();
    }
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_cut_connection() {
    a_leader_behind_a_cut_connection_is_demoted_before_its_lease_ends(&Db::postgres());
}

#[cfg(feature = "mysql")]
#[test]
fn mysql_cut_connection() {
    a_leader_behind_a_cut_connection_is_demoted_before_its_lease_ends(&Db::mysql());
}
