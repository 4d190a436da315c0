//! Test support, not part of the public API: takes locks in a process of its own so
//! tests can start many real processes, kill them and read what they saw.
//!
//! ```text
//! lock-helper hold URL NAME TTL RENEW HOLD        default lost_lock_cb (exits 75)
//! lock-helper watch URL NAME TTL RENEW HOLD       prints `lost ...` instead of exiting
//! lock-helper try URL NAME                        one attempt: exit 0 acquired, 3 held
//! lock-helper cs URL NAME COUNT DIR               COUNT critical sections (see `sections`)
//! lock-helper async-cs URL NAME COUNT DIR TASKS   the same by TASKS tokio tasks
//! lock-helper wait URL NAME RETRY                 waits (polling every RETRY), then releases
//! lock-helper exit-race URL THREADS MAX_MS         busy background threads, then returns from main
//! lock-helper fenced-pause URL NAME TTL           holds; on a stdin line, one fenced insert
//! lock-helper fenced-inside URL NAME TTL          holds; a fenced transaction that waits for stdin
//! lock-helper count URL NAME fenced|plain COUNT TTL  read-modify-write increments (see `fenced.rs`)
//! lock-helper sem-cs URL NAME PERMITS COUNT DIR   sections inside a permit (see `semaphore.rs`)
//! lock-helper sem-hold URL NAME PERMITS TTL       one permit until stdin closes
//! ```
//! Settings other than the URL come from the environment (`Config::from_env_with_url`), e.g.
//! `DATABASE_LOCKS_TRANSACTION_POOLING=true` behind PgBouncer.
//! Times are seconds (fractions allowed); HOLD may also be `stdin`: hold until stdin
//! closes, so a test releases once it has seen what it waits for. Lines on stdout:
//! `acquired TOKEN`, `renewing`, `lost @MICROS REASON` (when it was told, Unix µs),
//! `released`, `held HOLDER`.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use database_locks::{Config, Error, Locks};

mod fenced;
mod semaphore;

fn secs(arg: &str) -> Duration {
    Duration::from_secs_f64(arg.parse().unwrap_or_else(|_| panic!("not seconds: {arg}")))
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn handle(url: &str) -> Locks {
    let config = Config::from_env_with_url(url).unwrap_or_else(|e| panic!("settings: {e}"));
    Locks::new(config).unwrap_or_else(|e| panic!("handle for {url}: {e}"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["hold", url, name, ttl, renew, secs_held] => hold(url, name, ttl, renew, secs_held, false),
        ["watch", url, name, ttl, renew, secs_held] => hold(url, name, ttl, renew, secs_held, true),
        ["try", url, name] => match handle(url).lock(*name).try_acquire() {
            Ok(Some(guard)) => {
                say(&format!("acquired {}", guard.token().unwrap_or_default()));
                ExitCode::SUCCESS
            }
            Ok(None) => {
                say("held");
                ExitCode::from(3)
            }
            Err(err) => {
                say(&format!("error {err}"));
                ExitCode::from(1)
            }
        },
        ["wait", url, name, retry] => wait(url, name, retry),
        ["exit-race", url, threads, max_ms] => exit_race(
            url,
            threads.parse().expect("threads"),
            max_ms.parse().expect("milliseconds"),
        ),
        [mode @ ("fenced-pause" | "fenced-inside" | "count"), url, rest @ ..] => {
            fenced::main(mode, url, rest)
        }
        [mode @ ("sem-cs" | "sem-hold"), url, rest @ ..] => semaphore::main(mode, url, rest),
        ["cs", url, name, count, dir] => {
            sections(url, name, count.parse().expect("count"), Path::new(dir))
        }
        ["async-cs", url, name, count, dir, tasks] => async_sections(
            url,
            name,
            count.parse().expect("count"),
            Path::new(dir),
            tasks.parse().expect("tasks"),
        ),
        _ => {
            eprintln!("usage: see the comment at the top of tests/support/lock_helper.rs");
            ExitCode::from(2)
        }
    }
}

fn hold(url: &str, name: &str, ttl: &str, renew: &str, hold: &str, watch: bool) -> ExitCode {
    let mut builder = handle(url)
        .lock(name)
        .lock_ttl(Some(secs(ttl)))
        .lock_ttl_renew(secs(renew));
    if watch {
        // When it was told, by the host's clock (the databases here share it): tests
        // compare that with the row's `expires_at`, not with when they read this line.
        builder = builder.lost_lock_cb(|lost| {
            say(&format!("lost @{} {}", now_nanos() / 1000, lost.reason));
        });
    }
    let guard = match builder.acquire() {
        Ok(guard) => guard,
        Err(err) => {
            say(&format!("error {err}"));
            return ExitCode::from(1);
        }
    };
    say(&format!("acquired {}", guard.token().unwrap_or_default()));
    if hold == "stdin" {
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
    } else {
        std::thread::sleep(secs(hold));
    }
    let lost = guard.is_lost();
    match guard.release() {
        Ok(()) if !lost => {
            say("released");
            ExitCode::SUCCESS
        }
        Ok(()) => {
            say("released after loss");
            ExitCode::from(4)
        }
        Err(Error::Lost { reason, .. }) => {
            say(&format!("release found the lock lost: {reason}"));
            ExitCode::from(4)
        }
        Err(err) => {
            say(&format!("error {err}"));
            ExitCode::from(1)
        }
    }
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// The loss callback of `cs` and `async-cs`: counts the loss, says it, and appends
/// `token nanos` to `path` (the checker's record of when the holder was told).
fn record_loss(
    losses: std::sync::Arc<std::sync::atomic::AtomicU32>,
    path: std::path::PathBuf,
) -> impl Fn(&database_locks::LostLock) + Send + Sync + 'static {
    move |lost| {
        let at = now_nanos();
        losses.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let left = lost
            .expires_by
            .map(|end| end.saturating_duration_since(Instant::now()));
        eprintln!("cs: {lost} ({:?}); the lease ends in {left:?}", lost.cause);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("losses");
        // One write for the whole line (see `append_interval`).
        log.write_all(format!("{} {at}\n", lost.token).as_bytes())
            .expect("append loss");
    }
}

/// Appends `enter exit pid token` for a section that wrote, exiting now.
fn append_interval(path: &Path, entered: u128, token: u64) {
    let left = now_nanos();
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("intervals");
    // One write of the whole line: with O_APPEND it lands whole whatever other processes
    // append meanwhile, where `writeln!` writes piece by piece and lines of two processes
    // could interleave (the semaphore test's checker read such a line).
    let line = format!("{entered} {left} {} {token}\n", std::process::id());
    log.write_all(line.as_bytes()).expect("append interval");
}

/// The shared counter of `cs`: 0 before the first write. Any other failure to read it is
/// a failure of the test, never a silent 0.
fn read_counter(path: &Path) -> u64 {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("counter unreadable: {text:?}")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => panic!("read counter: {e}"),
    }
}

/// Replaces the counter whole (a temporary file renamed over it): a reader sees the old
/// value or the new one, never the empty file that `fs::write`'s truncation leaves while
/// its write is pending. (With `fs::write`, a holder that stalled between the two, lost
/// its lease and was overlapped as the checker allows, let the next holder read nothing
/// and restart the count from 0: 822/1600 in one loaded run.)
fn write_counter(path: &Path, value: u64) {
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    std::fs::write(&tmp, value.to_string()).expect("write counter");
    std::fs::rename(&tmp, path).expect("replace counter");
}

/// COUNT critical sections on NAME, each a non-atomic read-modify-write of `DIR/counter`
/// with a short random pause in between, as a holder that heeds losses does them: a
/// section whose guard is lost before its write gives up and is done again. Appends
/// `enter exit pid token` to `DIR/intervals` for each section that wrote, and
/// `token nanos` to `DIR/losses` when a loss is reported (times are the wall clock's, in
/// nanoseconds; every process is on this host). Prints `losses N` at the end.
fn sections(url: &str, name: &str, count: u32, dir: &Path) -> ExitCode {
    let locks = handle(url);
    let (counter, intervals, losses_at) = (
        dir.join("counter"),
        dir.join("intervals"),
        dir.join("losses"),
    );
    let mut seed = (std::process::id() as u64) ^ (now_nanos() as u64) | 1;
    let mut done = 0u32;
    let mut given_up = 0u32;
    let mut late_releases = 0u32;
    let mut lost_at_release = 0u32;
    let losses = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    while done < count {
        let (losses, losses_at) = (losses.clone(), losses_at.clone());
        let guard = locks
            .lock(name)
            .retry(Some(Duration::from_millis(20)))
            .timeout(Duration::from_secs(120))
            // A lease can be lost here without a defect: on a loaded machine a process can
            // stall for longer than its lease (seen on this project's VMs: a section's
            // file writes stalled for 32 s, PostgreSQL sessions waited in IO/WALSync for
            // 3-4 s, releases ran into the 10 s statement timeout). What must hold is that
            // the loss is reported in time, which the checker verifies from these lines.
            .lost_lock_cb(record_loss(losses, losses_at))
            .acquire()
            .unwrap_or_else(|e| panic!("acquire: {e}"));
        let token = guard.token().unwrap_or_default();
        let entered = now_nanos();
        let value = read_counter(&counter);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_micros(seed % 2000));
        if guard.is_lost() {
            given_up += 1;
        } else {
            write_counter(&counter, value + 1);
            append_interval(&intervals, entered, token);
            done += 1;
        }
        // On a machine loaded far past its cores a release can miss its statement
        // deadline: the library reports it and finishes it in the background, and the lock
        // stays held until then. A release after a loss finds the row gone.
        match guard.release() {
            Ok(()) => {}
            Err(Error::Unresponsive { .. }) => late_releases += 1,
            // The lease ran out while the release waited: the intervals show whether
            // anyone got in before the section ended.
            Err(Error::Lost { .. }) => lost_at_release += 1,
            Err(e) => panic!("release: {e}"),
        }
    }
    if late_releases > 0 || given_up > 0 || lost_at_release > 0 {
        eprintln!(
            "cs: {late_releases} release(s) finished in the background after their deadline; \
             {lost_at_release} found the lease ended; {given_up} section(s) given up after a \
             loss"
        );
    }
    say(&format!(
        "losses {}",
        losses.load(std::sync::atomic::Ordering::SeqCst)
    ));
    ExitCode::SUCCESS
}

/// `cs` by TASKS tasks of a multi-thread tokio runtime, COUNT sections in all: the
/// read-modify-write of `DIR/counter` has an `.await` between the read and the write, and
/// the same files record intervals and losses.
fn async_sections(url: &str, name: &str, count: u32, dir: &Path, tasks: u32) -> ExitCode {
    let locks = handle(url);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(tasks as usize)
        .enable_time()
        .build()
        .expect("runtime");
    let losses = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    runtime.block_on(async {
        let workers: Vec<_> = (0..tasks)
            .map(|_| {
                let (locks, name, dir) = (locks.clone(), name.to_owned(), dir.to_owned());
                let (losses, done) = (losses.clone(), done.clone());
                tokio::spawn(async move {
                    use std::sync::atomic::Ordering::SeqCst;
                    while done.fetch_add(1, SeqCst) < count {
                        loop {
                            let (losses, losses_at) = (losses.clone(), dir.join("losses"));
                            let guard = locks
                                .lock(&name)
                                .retry(Some(Duration::from_millis(20)))
                                .timeout(Duration::from_secs(120))
                                .lost_lock_cb(record_loss(losses, losses_at))
                                .acquire_async()
                                .await
                                .unwrap_or_else(|e| panic!("acquire: {e}"));
                            let token = guard.token().unwrap_or_default();
                            let entered = now_nanos();
                            let counter = dir.join("counter");
                            let value = read_counter(&counter);
                            tokio::time::sleep(Duration::from_micros(entered as u64 % 2000)).await;
                            let wrote = !guard.is_lost();
                            if wrote {
                                write_counter(&counter, value + 1);
                                append_interval(&dir.join("intervals"), entered, token);
                            }
                            match guard.release_async().await {
                                Ok(()) | Err(Error::Unresponsive { .. } | Error::Lost { .. }) => {}
                                Err(e) => panic!("release: {e}"),
                            }
                            if wrote {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.expect("a task failed");
        }
    });
    say(&format!(
        "losses {}",
        losses.load(std::sync::atomic::Ordering::SeqCst)
    ));
    ExitCode::SUCCESS
}

/// Waits for NAME, polling only every RETRY (tests make it far longer than they wait, so
/// only a notification can wake the waiter in time); prints `acquired TOKEN`, releases.
fn wait(url: &str, name: &str, retry: &str) -> ExitCode {
    let acquired = handle(url).lock(name).retry(Some(secs(retry))).acquire();
    match acquired {
        Ok(guard) => {
            say(&format!("acquired {}", guard.token().unwrap_or_default()));
            let _ = guard.release();
            say("released");
            ExitCode::SUCCESS
        }
        Err(err) => {
            say(&format!("error {err}"));
            ExitCode::from(1)
        }
    }
}

/// Returns from `main` (a normal `exit`, with its atexit handlers and library destructors)
/// while every kind of background thread the library has is busy with the database:
/// leases renewed every 50 ms (a loss is printed, not fatal), a waiter (so the listener has a connection), THREADS threads
/// that take and release locks, and, on PostgreSQL, a thread that terminates the handle's
/// sessions every few milliseconds so that r2d2's workers keep opening new connections.
/// Main releases its locks at a random moment within MAX_MS, terminates the sessions once
/// more, prints `released`, and returns.
fn exit_race(url: &str, threads: u32, max_ms: u64) -> ExitCode {
    let pid = std::process::id();
    let tag = format!("exit-race-{pid}");
    let tagged = if url.starts_with("postgres") {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}application_name={tag}")
    } else {
        url.to_owned()
    };
    let config = Config::from_env_with_url(tagged)
        .unwrap_or_else(|e| panic!("settings: {e}"))
        .pool_max_size(threads + 4);
    let locks = Locks::new(config).unwrap_or_else(|e| panic!("handle for {url}: {e}"));
    let name = |what: &str| format!("exit-race.{pid}.{what}");
    // Every lock here reports a loss instead of ending the process (the default callback's
    // exit 75): what this race tests is the exit itself. Under load a session killed by
    // `terminate_sessions` or a stalled process loses a lease now and then, and the
    // library rightly says so (seen: 10 of 200 runs exited 75 in a loaded run).
    let on_loss = |lost: &database_locks::LostLock| say(&format!("lost {}", lost.reason));

    let mut guards = Vec::new();
    for i in 0..3 {
        let guard = locks
            .lock(name(&format!("renewed-{i}")))
            .lock_ttl(Some(Duration::from_millis(1000)))
            .lock_ttl_renew(Duration::from_millis(950))
            .lost_lock_cb(on_loss)
            .acquire()
            .unwrap_or_else(|e| panic!("acquire: {e}"));
        guards.push(guard);
    }
    let awaited = locks
        .lock(name("awaited"))
        .lost_lock_cb(on_loss)
        .acquire()
        .unwrap_or_else(|e| panic!("acquire: {e}"));
    {
        let locks = locks.clone();
        let awaited = name("awaited");
        std::thread::spawn(move || loop {
            if let Ok(guard) = locks
                .lock(awaited.as_str())
                .retry(Some(secs("10")))
                .lost_lock_cb(on_loss)
                .acquire()
            {
                let _ = guard.release();
            }
        });
    }
    for t in 0..threads {
        let locks = locks.clone();
        let churned = name(&format!("churn-{t}"));
        std::thread::spawn(move || loop {
            match locks
                .lock(churned.as_str())
                .lost_lock_cb(on_loss)
                .try_acquire()
            {
                Ok(Some(guard)) => {
                    let _ = guard.release();
                }
                _ => std::thread::sleep(Duration::from_millis(1)),
            }
        });
    }
    #[cfg(feature = "postgres")]
    let mut last_kill = None;
    #[cfg(feature = "postgres")]
    if url.starts_with("postgres") {
        use diesel::Connection;
        last_kill = diesel::PgConnection::establish(url).ok();
        let (url, tag) = (url.to_owned(), tag.clone());
        std::thread::spawn(move || terminate_sessions(&url, &tag));
    }

    let mut seed = u64::from(pid) ^ (now_nanos() as u64) | 1;
    seed ^= seed << 13;
    seed ^= seed >> 7;
    seed ^= seed << 17;
    std::thread::sleep(Duration::from_micros(seed % (max_ms.max(1) * 1000)));
    let mut failed = 0;
    for guard in guards.into_iter().chain([awaited]) {
        if let Err(err) = guard.release() {
            say(&format!("error {err}"));
            failed += 1;
        }
    }
    // Every pooled connection broken at once: the threads' next operations send r2d2's
    // workers into TLS handshakes; `exit` comes within the next 4 ms.
    #[cfg(feature = "postgres")]
    if let Some(conn) = last_kill.as_mut() {
        let _ = terminate(conn, &tag);
        std::thread::sleep(Duration::from_micros((seed >> 32) % 4000));
    }
    say(&format!("released ({failed} errors)"));
    ExitCode::SUCCESS
}

#[cfg(feature = "postgres")]
fn terminate(conn: &mut diesel::PgConnection, tag: &str) -> diesel::QueryResult<usize> {
    use diesel::RunQueryDsl;
    diesel::sql_query(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
          WHERE application_name = '{tag}' AND pid <> pg_backend_pid()"
    ))
    .execute(conn)
}

/// Terminates every session named `tag` but its own, again and again, from a connection of
/// its own (TLS like the others).
#[cfg(feature = "postgres")]
fn terminate_sessions(url: &str, tag: &str) {
    use diesel::Connection;
    let mut seed = u64::from(std::process::id()) | 1;
    loop {
        if let Ok(mut conn) = diesel::PgConnection::establish(url) {
            loop {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                std::thread::sleep(Duration::from_millis(5 + seed % 20));
                if terminate(&mut conn, tag).is_err() {
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
