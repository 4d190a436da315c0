//! Support for the end-to-end tests: a database per backend, the built tool, processes
//! that are cleaned up, and polling with a deadline.
//!
//! URLs come from `SQLITE_DATABASE_URL`, `PG_DATABASE_URL`, `MYSQL_DATABASE_URL` and
//! `PGBOUNCER_DATABASE_URL` (PostgreSQL through PgBouncer in transaction mode, started by
//! `scripts/pgbouncer`), defaulting to the local servers (as the workspace's own tests/common/mod.rs, which the
//! `Db` part here is trimmed from). A database that cannot be reached fails the test and
//! names the URL: nothing is skipped.
#![allow(dead_code)]

pub mod sql;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub use database_locks::BackendKind as Kind;
pub use database_locks_testkit::{
    env_url, unique_number, MYSQL_DEFAULT, PGBOUNCER_DEFAULT, PG_DEFAULT,
};

/// Long enough for anything a test waits for on a slow, shared machine; only reached
/// when something hangs.
pub const PATIENCE: Duration = Duration::from_secs(90);

/// A database for one test, and a scratch directory for its files.
pub struct Db {
    pub kind: Kind,
    pub url: String,
    pub dir: tempfile::TempDir,
    /// Behind a transaction pooler: the tool gets `DATABASE_LOCKS_TRANSACTION_POOLING=true`.
    pub pooled: bool,
    /// Where the test's own connections go ([`Db::conn`]): the database itself, past
    /// PgBouncer, so that a test holding a row locked does not take one of the pooler's
    /// few server connections from the tool (or from other suites using it).
    pub own_url: String,
}

impl Db {
    pub fn sqlite() -> Db {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = match std::env::var("SQLITE_DATABASE_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => dir.path().join("locks.sqlite3").display().to_string(),
        };
        Db {
            kind: Kind::Sqlite,
            own_url: url.clone(),
            url,
            dir,
            pooled: false,
        }
    }

    pub fn postgres() -> Db {
        Db::server(Kind::Postgres, env_url("PG_DATABASE_URL", PG_DEFAULT))
    }

    pub fn mysql() -> Db {
        Db::server(Kind::Mysql, env_url("MYSQL_DATABASE_URL", MYSQL_DEFAULT))
    }

    /// PostgreSQL through PgBouncer in transaction mode (`scripts/pgbouncer start`).
    pub fn pgbouncer() -> Db {
        Db {
            pooled: true,
            own_url: env_url("PG_DATABASE_URL", PG_DEFAULT),
            ..Db::server(
                Kind::Postgres,
                env_url("PGBOUNCER_DATABASE_URL", PGBOUNCER_DEFAULT),
            )
        }
    }

    fn server(kind: Kind, url: String) -> Db {
        let db = Db {
            kind,
            own_url: url.clone(),
            url,
            dir: tempfile::tempdir().expect("temp dir"),
            pooled: false,
        };
        if let Err(e) = db.try_exec("SELECT 1") {
            panic!(
                "cannot reach the test database at {} ({e}); start it (scripts/setup) or set the URL variable",
                db.url
            );
        }
        db
    }

    /// A path in this test's scratch directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// The tool, pointed at this database, with none of the caller's lock settings.
    pub fn tool(&self) -> Command {
        let mut cmd = self.tool_without_url();
        cmd.arg("--url").arg(&self.url);
        cmd
    }

    /// The tool with none of the caller's lock settings, pointed at no database.
    pub fn tool_without_url(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_database-locks"));
        for var in [
            "DATABASE_URL",
            "DATABASE_LOCKS_URL",
            "DATABASE_LOCKS_ENABLED",
            "DATABASE_LOCKS_STATUS_FILE",
            "DATABASE_LOCKS_DEFAULT_TTL",
            "DATABASE_LOCKS_DEFAULT_TTL_RENEW",
            "DATABASE_LOCKS_NOTIFY",
            "DATABASE_LOCKS_PREPARED_STATEMENTS",
        ] {
            cmd.env_remove(var);
        }
        cmd.env(
            "DATABASE_LOCKS_TRANSACTION_POOLING",
            if self.pooled { "true" } else { "false" },
        );
        cmd.current_dir(self.dir.path()).stdin(Stdio::null());
        cmd
    }

    /// Runs the tool to the end.
    pub fn run(&self, args: &[&str]) -> Done {
        Done::from_command(self.tool(), args)
    }

    /// Runs the tool to the end with `--url url`.
    pub fn run_at(&self, url: &str, args: &[&str]) -> Done {
        let mut cmd = self.tool_without_url();
        cmd.arg("--url").arg(url);
        Done::from_command(cmd, args)
    }
}

impl Done {
    pub fn from_command(mut cmd: Command, args: &[&str]) -> Done {
        let output = cmd
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot start the tool: {e}"));
        Done::from_output(args, output)
    }
}

impl Db {
    /// Starts the tool in the background; its output goes to files read at the end.
    pub fn spawn(&self, args: &[&str]) -> Running {
        self.spawn_with(args, |_| {})
    }

    pub fn spawn_with(&self, args: &[&str], setup: impl FnOnce(&mut Command)) -> Running {
        let n = unique_number();
        let out = self.path(&format!("tool-{n}.out"));
        let err = self.path(&format!("tool-{n}.err"));
        let mut cmd = self.tool();
        cmd.args(args)
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&err).expect("stderr file"));
        setup(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the tool: {e}"));
        Running {
            args: args.iter().map(|a| a.to_string()).collect(),
            child: Some(child),
            out: Some(out),
            err: Some(err),
        }
    }

    /// `status NAME`'s exit code.
    pub fn status_code(&self, name: &str) -> i32 {
        self.run(&["status", name]).code
    }

    /// Waits until the lock is held (by anyone).
    pub fn wait_held(&self, name: &str) {
        assert!(
            eventually(|| self.status_code(name) == 0),
            "lock {name} was never held"
        );
    }

    /// Writes another owner into the row behind the holder's back, keeping its expiry.
    pub fn steal(&self, name: &str, thief: &str) {
        let n = self.exec(&format!(
            "UPDATE database_locks_lock SET locked_by = '{thief}', token = token + 1 WHERE name = '{name}'"
        ));
        assert_eq!(n, 1, "stealing {name}");
    }

    /// Runs raw SQL on a fresh connection, panicking with the URL on failure.
    pub fn exec(&self, sql: &str) -> usize {
        self.try_exec(sql)
            .unwrap_or_else(|e| panic!("{sql} on {}: {e}", self.url))
    }

    pub fn try_exec(&self, sql: &str) -> Result<usize, String> {
        database_locks_testkit::try_exec(self.kind, &self.url, sql)
    }
}

/// A finished run of the tool.
#[derive(Debug)]
pub struct Done {
    pub args: Vec<String>,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Done {
    fn from_output(args: &[&str], output: Output) -> Done {
        Done {
            args: args.iter().map(|a| a.to_string()).collect(),
            code: code_of(output.status),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Asserts the exit code, showing everything the tool said if it differs.
    #[track_caller]
    pub fn expect(self, code: i32) -> Done {
        assert_eq!(self.code, code, "{self:#?}");
        self
    }
}

/// The exit code, or 128 + signal as a shell reports it.
fn code_of(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// The tool running in the background. Dropped while still running (a failed test), it
/// gets SIGTERM, which it passes on to its command, then SIGKILL.
pub struct Running {
    args: Vec<String>,
    child: Option<Child>,
    /// Where its stdout and stderr go, when the test did not send them elsewhere.
    out: Option<PathBuf>,
    err: Option<PathBuf>,
}

impl Running {
    /// A tool started by the test itself (its output is wherever the test sent it).
    pub fn adopt(args: &[&str], child: Child) -> Running {
        Running {
            args: args.iter().map(|a| a.to_string()).collect(),
            child: Some(child),
            out: None,
            err: None,
        }
    }

    pub fn pid(&self) -> i32 {
        let child = self.child.as_ref().expect("running");
        i32::try_from(child.id()).expect("a pid")
    }

    pub fn signal(&self, signal: i32) {
        send(self.pid(), signal);
    }

    pub fn stdout(&self) -> String {
        read_or_empty(self.out.as_deref())
    }

    pub fn stderr(&self) -> String {
        read_or_empty(self.err.as_deref())
    }

    /// Whether it has exited (and then it is reaped).
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// Waits for it to exit (failing the test if it never does).
    #[track_caller]
    pub fn finish(mut self) -> Done {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{:?} did not exit within {PATIENCE:?}\nstdout: {}\nstderr: {}",
                    self.args,
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Done {
            args: self.args.clone(),
            code: code_of(status),
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            if let Ok(pid) = i32::try_from(child.id()) {
                send(pid, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// kill(2) to one process; never to a group (pid 0 or negative would reach the tests).
fn send(pid: i32, signal: i32) {
    assert!(pid > 0, "not a process: {pid}");
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, signal);
    }
}

fn read_or_empty(path: Option<&Path>) -> String {
    path.and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default()
}

/// Polls `condition` every 10 ms until it holds or [`PATIENCE`] runs out; returns whether
/// it held.
pub fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for a file to hold a pid (written by a test's command) and returns it.
pub fn read_pid(path: &Path) -> i32 {
    let mut pid = None;
    assert!(
        eventually(|| {
            pid = std::fs::read_to_string(path)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            pid.is_some()
        }),
        "no pid in {}",
        path.display()
    );
    pid.unwrap_or_default()
}

/// Whether process `pid` has ended: gone, or a zombie nobody reaped yet (in a container
/// whose init does not reap, orphans stay zombies).
pub fn process_ended(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// A lock name no other test or run uses (the server tables are shared).
pub fn unique_name(test: &str) -> String {
    database_locks_testkit::unique_name("cli", test)
}

/// A pseudo-terminal, for what the tool does only on a terminal.
pub struct Pty {
    master: std::fs::File,
    slave: PathBuf,
    seen: Vec<u8>,
}

impl Pty {
    pub fn open() -> Pty {
        use std::os::fd::FromRawFd;
        // SAFETY: plain libc calls on a descriptor this function owns; ptsname_r writes at
        // most `buf.len()` bytes.
        unsafe {
            let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK);
            assert!(fd >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
            assert_eq!(libc::grantpt(fd), 0, "grantpt");
            assert_eq!(libc::unlockpt(fd), 0, "unlockpt");
            let mut buf = [0 as libc::c_char; 128];
            assert_eq!(
                libc::ptsname_r(fd, buf.as_mut_ptr(), buf.len()),
                0,
                "ptsname_r"
            );
            let slave = std::ffi::CStr::from_ptr(buf.as_ptr())
                .to_string_lossy()
                .into_owned();
            Pty {
                master: std::fs::File::from_raw_fd(fd),
                slave: PathBuf::from(slave),
                seen: Vec::new(),
            }
        }
    }

    /// Makes `cmd` run in a new session whose controlling terminal (and stdin, stdout,
    /// stderr) is this one, in its foreground, as a shell would start it.
    pub fn attach(&self, cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        let open = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.slave)
                .expect("pty slave")
        };
        cmd.stdin(open()).stdout(open()).stderr(open());
        // SAFETY: setsid and ioctl are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Everything the terminal showed so far.
    pub fn output(&mut self) -> String {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = self.master.read(&mut buf) {
            self.seen.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    /// Waits until the terminal has shown `text`.
    #[track_caller]
    pub fn wait_for(&mut self, text: &str) {
        let shown = eventually(|| self.output().contains(text));
        assert!(
            shown,
            "the terminal never showed {text:?}: {:?}",
            self.output()
        );
    }

    /// Types `bytes` (`b"\x03"` is Ctrl-C).
    pub fn type_in(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.master.write_all(bytes).expect("write to the pty");
    }
}
