//! `database-locks`: run a command under a lock held in your database, and see, clear or
//! create the locks. The locks are the rows of the `database_locks_lock` table that the
//! `database-locks` crate and django-database-locks use, so this command, Rust programs and
//! Django processes all exclude each other.
//!
//! ```text
//! database-locks run nightly-report --try -- ./report.sh   # cron on five hosts: runs once
//! database-locks leader scheduler -- ./scheduler          # five hosts: one runs it at a time
//! database-locks list --watch                              # who holds what, redrawn every 2 s
//! database-locks status nightly-report                     # exit 0 held, 1 free, 2 error
//! database-locks release nightly-report --force            # clear a stuck lock
//! database-locks metrics --output /var/lib/node_exporter/textfile/locks.prom  # Prometheus
//! database-locks completions bash; database-locks man      # shell completion, manual page
//! ```
#![warn(missing_debug_implementations, rust_2018_idioms)]

#[cfg(not(unix))]
compile_error!("the database-locks command supervises child processes with Unix signals; it builds on Unix only");

mod admin;
mod check;
mod child;
mod cli;
mod exit;
mod format;
mod leader;
mod manual;
mod metrics;
mod report;
mod session;
mod signals;
mod verbose;
mod watch;

use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use database_locks::{Config, Error, Locks, DEFAULT_SQLITE_FILE};

use crate::cli::{Cli, Command, HoldArgs, RunArgs};

fn main() -> ExitCode {
    let raw: Vec<_> = std::env::args_os().collect();
    for subcommand in ["run", "leader"] {
        if let Some(name) = cli::name_after_separator(&raw, subcommand) {
            usage_error(
                subcommand,
                ErrorKind::MissingRequiredArgument,
                format!(
                    "`{subcommand}` needs the lock's NAME before `--`: database-locks \
                     {subcommand} NAME [OPTIONS] -- COMMAND [ARGS]... (here `--` came first, \
                     so {name:?} would have been taken as the lock's name)"
                ),
            );
        }
    }
    let cli = Cli::parse_from(raw);
    // Nothing to do with a database: no configuration, no warning about its file.
    let offline = match cli.command {
        Command::Completions(ref args) => Some(manual::completions(args)),
        Command::Man(ref args) => Some(manual::man(args)),
        _ => None,
    };
    if let Some(outcome) = offline {
        return finish(outcome, exit::ERROR);
    }
    // Read the environment before any thread starts (see `load_config`).
    let config = load_config(cli.url.as_deref(), cli.connect_timeout);
    let lock_args = match &cli.command {
        Command::Run(RunArgs { lock, .. }) => Some(("run", lock)),
        Command::Hold(HoldArgs { lock, .. }) => Some(("hold", lock)),
        _ => None,
    };
    if let (Ok(config), Some((subcommand, lock))) = (&config, lock_args) {
        if let Err(message) = cli::check_lock_args(lock, config.get_default_ttl()) {
            usage_error(subcommand, ErrorKind::ArgumentConflict, message);
        }
    }
    if let (Ok(config), Command::Leader(args)) = (&config, &cli.command) {
        if let Err(message) = cli::check_leader_args(args, config.get_default_ttl()) {
            usage_error("leader", ErrorKind::ArgumentConflict, message);
        }
    }
    let (outcome, error_status) = match cli.command {
        Command::Run(args) => (config.and_then(|c| session::run(c, args)), exit::RUN_ERROR),
        Command::Hold(args) => (config.and_then(|c| session::hold(c, args)), exit::ERROR),
        Command::Leader(args) => (
            config.and_then(|c| leader::leader(c, args)),
            exit::RUN_ERROR,
        ),
        Command::List(args) => (config.and_then(|c| admin::list(c, args)), exit::ERROR),
        Command::Status(args) => (config.and_then(|c| admin::status(c, args)), exit::ERROR),
        Command::Release(args) => (config.and_then(|c| admin::release(c, args)), exit::ERROR),
        Command::Migrate => (config.and_then(admin::migrate), exit::ERROR),
        Command::Metrics(args) => (config.and_then(|c| metrics::metrics(c, args)), exit::ERROR),
        Command::Completions(_) | Command::Man(_) => unreachable!("handled above"),
    };
    finish(outcome, error_status)
}

/// Reports a failure and ends the process with the outcome's status.
fn finish(outcome: Outcome, error_status: u8) -> ExitCode {
    let status = match outcome {
        Ok(status) => status,
        Err(failure) => {
            report::error(&failure.message);
            failure.status.unwrap_or(error_status)
        }
    };
    exit_now(status)
}

/// A usage error of `run` or `hold` as clap shows its own (with the subcommand's usage
/// line), exit status 2. Nothing has touched the database yet.
fn usage_error(subcommand: &str, kind: ErrorKind, message: String) -> ! {
    let mut cli = Cli::command();
    cli.build();
    match cli.find_subcommand_mut(subcommand) {
        Some(sub) => sub.error(kind, message).exit(),
        None => cli.error(kind, message).exit(),
    }
}

/// Ends the process without running `atexit` handlers or library destructors. A thread
/// still acquiring (the wait was given up on a signal) may be inside a connect. The library
/// itself now keeps OpenSSL's exit-time cleanup away and gives libpq `gssencmode=disable`
/// (tests/exit.rs), but a URL that asks for GSSAPI encryption would bring
/// libgssapi_krb5's destructor back, so the tool leaves without them. Everything it owns is
/// already released.
fn exit_now(status: u8) -> ExitCode {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    #[cfg(unix)]
    // SAFETY: `_exit` only ends the process; the standard streams were flushed above.
    unsafe {
        libc::_exit(i32::from(status))
    }
    #[cfg(not(unix))]
    ExitCode::from(status)
}

/// A failure of the tool itself: the one line it prints, and the exit status when it is not
/// the command's usual error status.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub status: Option<u8>,
}

impl Failure {
    pub fn with_status(status: u8, message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            status: Some(status),
        }
    }
}

impl Failure {
    /// "`context`: `err`: its causes".
    pub fn caused(context: impl std::fmt::Display, err: &dyn std::error::Error) -> Self {
        Failure::from(format!("{context}: {}", report::chain(err)))
    }
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        // The library's advice names its API; say what to do with this tool instead.
        let message = match err {
            Error::MissingTable => "the lock table database_locks_lock does not exist in this \
                database; create it with `database-locks migrate` (or check --url)"
                .to_owned(),
            Error::Schema { reason } => format!(
                "the table database_locks_lock has the wrong schema: {}",
                reason.replace(
                    "run `migrate()` or enable auto_migrate",
                    "run `database-locks migrate`"
                )
            ),
            other => report::chain(&other),
        };
        Failure::from(message)
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure {
            message,
            status: None,
        }
    }
}

/// Exit status or failure.
pub type Outcome = Result<u8, Failure>;

/// The library's configuration from the environment, with the URL from `--url` when given
/// (the environment's URL is then not read).
fn load_config(url: Option<&str>, connect_timeout: Duration) -> Result<Config, Failure> {
    let config = match url {
        None => {
            warn_if_default_file();
            Config::from_env()
        }
        Some(url) => Config::from_env_with_url(url).map_err(|err| match err {
            Error::Config { variable, reason } if variable == "url" => Error::Config {
                variable: "--url".into(),
                reason,
            },
            other => other,
        }),
    };
    Ok(config?.connect_timeout(connect_timeout))
}

/// With no URL anywhere the locks go to a file in the current directory: two processes
/// started in different directories then lock different files and exclude nothing. Said
/// on every run, with the absolute path, since a cron job's directory is easy to get wrong.
fn warn_if_default_file() {
    let set = |var: &str| std::env::var_os(var).is_some_and(|v| !v.is_empty());
    if set("DATABASE_LOCKS_URL") || set("DATABASE_URL") {
        return;
    }
    let file =
        std::path::absolute(DEFAULT_SQLITE_FILE).unwrap_or_else(|_| DEFAULT_SQLITE_FILE.into());
    eprintln!(
        "database-locks: warning: no --url, DATABASE_LOCKS_URL or DATABASE_URL; using the \
         SQLite file {} (it excludes only processes that use this same file)",
        file.display()
    );
}

/// A handle for the administrative commands: they never lock, never create the table, and
/// work whatever `DATABASE_LOCKS_ENABLED` says. On SQLite they never create the file either.
fn admin_locks(config: Config) -> Result<Locks, Failure> {
    if let Some(file) = sqlite_file(config.get_url()) {
        if !file.exists() {
            let file = std::path::absolute(&file).unwrap_or(file);
            return Err(Failure::from(format!(
                "no lock database at {}: the file does not exist (`database-locks migrate` \
                 creates it, as does the first `run` or `hold`; or check --url)",
                file.display()
            )));
        }
    }
    Ok(Locks::new(config.enabled(true).auto_migrate(false))?)
}

/// The file a SQLite lock URL names, by the library's rules (`sqlite://FILE`, `sqlite:FILE`,
/// a bare path, and SQLite's own `file:` URIs); `None` for the other backends.
fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let url = url.trim();
    let target = match url.split_once("://") {
        Some(("sqlite", path)) => path,
        Some(_) => return None,
        None => url.strip_prefix("sqlite:").unwrap_or(url),
    };
    // `file:PATH?mode=...` (SQLite's URI filenames); `file://localhost/PATH` too.
    let path = match target.strip_prefix("file:") {
        Some(uri) => {
            let uri = uri.split(['?', '#']).next().unwrap_or(uri);
            match uri.strip_prefix("//") {
                Some(rest) => &rest[rest.find('/').unwrap_or(rest.len())..],
                None => uri,
            }
        }
        None => target,
    };
    Some(path.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_name_their_file() {
        let file = |url: &str| sqlite_file(url).map(|p| p.display().to_string());
        assert_eq!(file("locks.db").as_deref(), Some("locks.db"));
        assert_eq!(file("sqlite://rel.db").as_deref(), Some("rel.db"));
        assert_eq!(file("sqlite:///abs/x.db").as_deref(), Some("/abs/x.db"));
        assert_eq!(file("sqlite:x.db").as_deref(), Some("x.db"));
        assert_eq!(file("file:x.db?mode=rwc").as_deref(), Some("x.db"));
        assert_eq!(file("file:/abs/x.db#x").as_deref(), Some("/abs/x.db"));
        assert_eq!(file("postgres://u@h/db"), None);
        assert_eq!(file("mysql://u@h/db"), None);
    }
}
