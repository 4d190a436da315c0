//! The command line.

use std::ffi::OsString;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};

/// Run commands under a lock stored in your database, and see, clear or create the locks.
///
/// The database is --url, else $DATABASE_LOCKS_URL, else $DATABASE_URL, else the SQLite file
/// ./database_locks.sqlite3 in the current directory (with a warning naming it, as two
/// directories mean two files that exclude nothing). The library's other variables apply too:
/// DATABASE_LOCKS_DEFAULT_TTL, DATABASE_LOCKS_DEFAULT_TTL_RENEW, DATABASE_LOCKS_STATUS_FILE
/// and DATABASE_LOCKS_ENABLED.
///
/// Errors are one line on stderr, `database-locks: error: ` and the message with its causes;
/// `error:` is red on a terminal unless NO_COLOR is set.
#[derive(Debug, Parser)]
#[command(name = "database-locks", version, after_help = crate::exit::HELP)]
pub struct Cli {
    /// The lock database: postgres://..., mysql://..., sqlite://FILE or a file path
    #[arg(long, global = true, value_name = "URL", value_parser = non_empty)]
    pub url: Option<String>,

    /// Give up connecting to the database after this many seconds
    #[arg(long, global = true, value_name = "S", default_value = "10", value_parser = positive_seconds)]
    pub connect_timeout: Duration,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Take the lock NAME, run COMMAND while holding it, release it when COMMAND exits
    ///
    /// NAME comes first: `run -- echo hi` is refused, not a lock named `echo`. Exits with
    /// COMMAND's status. The lease is renewed while COMMAND runs, and the tool
    /// checks every second that the row is still its own. If the lock is lost anyway
    /// (`release --force`, another owner took it, or the database was unreachable until
    /// the lease nearly ran out), COMMAND gets SIGTERM, then SIGKILL after --kill-after,
    /// or sooner so that it is dead before the lease ends; the tool exits with 75. On
    /// Linux, COMMAND also gets SIGKILL if the tool itself dies. SIGINT, SIGTERM, SIGHUP,
    /// SIGQUIT, SIGUSR1 and SIGUSR2 are passed on to COMMAND. COMMAND gets
    /// DATABASE_LOCKS_NAME, DATABASE_LOCKS_OWNER and DATABASE_LOCKS_TOKEN (the fencing
    /// token) in its environment. With --permits K, NAME is a semaphore: at most K copies
    /// of COMMAND run at once across hosts.
    #[command(
        after_help = crate::exit::HELP,
        override_usage = "database-locks run [OPTIONS] NAME [--] COMMAND [ARGS]..."
    )]
    Run(RunArgs),

    /// Campaign to lead NAME, run COMMAND while this host leads, campaign again after a loss
    ///
    /// Waits until this host leads NAME (one leader at a time across hosts), then runs
    /// COMMAND with DATABASE_LOCKS_NAME, DATABASE_LOCKS_OWNER and DATABASE_LOCKS_TOKEN (the
    /// term: it grows with every change of leader) in its environment. If leadership is lost
    /// (the lease could not be renewed, or the lock was force-released or taken), COMMAND
    /// gets SIGTERM, then SIGKILL after --kill-after or sooner, so that it is dead before the
    /// lease ends, as with `run`; then the tool campaigns again and runs COMMAND anew when
    /// elected. When COMMAND exits by itself, the tool releases the lock (the next candidate
    /// takes over at once) and exits with COMMAND's status. SIGINT, SIGTERM, SIGHUP and SIGQUIT
    /// while campaigning stop the campaign (exit 128+N); while leading they are passed on
    /// to COMMAND, as are SIGUSR1 and SIGUSR2.
    #[command(
        after_help = crate::exit::HELP,
        override_usage = "database-locks leader [OPTIONS] NAME [--] COMMAND [ARGS]..."
    )]
    Leader(LeaderArgs),

    /// Every lock: name, state (held, expired, released), owner, time left, token;
    /// semaphores as one entry with their holders
    ///
    /// With --watch, again every 2 seconds (--watch=S: every S) until Ctrl-C: redrawn in
    /// place on a terminal, else each snapshot after a blank line.
    List(ListArgs),

    /// Whether a lock is held: exit 0 held, 1 free, 2 error; prints the owner and time left
    ///
    /// With --watch, again every 2 seconds (--watch=S: every S) until Ctrl-C, SIGTERM or
    /// SIGHUP; the exit status is then the last snapshot's.
    Status(StatusArgs),

    /// Take the lock, hold it for --duration seconds, release it (the seed's db_lock_it)
    #[command(after_help = crate::exit::HELP)]
    Hold(HoldArgs),

    /// Release a lock: any holder's with --force, or only --owner's
    ///
    /// --force clears the lease whoever holds it; a live holder finds out at its next
    /// check (within a second for `database-locks run`, which then stops its command; at
    /// the next renewal for other holders) and stops. --owner ID releases the lock only if ID holds it (it re-takes
    /// the lock as ID, which makes any process still holding it as ID lose it, then
    /// releases it). Exits 0 when a lock was released, 1 when there was none to release.
    Release(ReleaseArgs),

    /// Create the lock table, or add the `token` column to a table Django created
    Migrate,

    /// The lock table's state for Prometheus (text format 0.0.4), e.g. for node-exporter's
    /// textfile collector
    ///
    /// Gauges: database_locks_lock_held{name} (1 held, 0 not), database_locks_lock_expires_in_seconds{name}
    /// (held locks; +Inf without expiry), database_locks_lock_token{name} (the fencing token),
    /// database_locks_locks and database_locks_locks_held (totals, semaphores apart),
    /// database_locks_semaphore_permits{name} and database_locks_semaphore_permits_held{name},
    /// database_locks_scrape_timestamp_seconds (when it was read). From cron, every minute:
    /// `database-locks metrics --output /var/lib/node_exporter/textfile/database_locks.prom`.
    Metrics(MetricsArgs),

    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    ///
    /// bash: `database-locks completions bash > /etc/bash_completion.d/database-locks`
    /// (or `source <(database-locks completions bash)` in ~/.bashrc); zsh: save it as
    /// `_database-locks` in a directory of $fpath; fish: save it as
    /// ~/.config/fish/completions/database-locks.fish. Needs no database.
    Completions(CompletionsArgs),

    /// Print the manual page (roff), or a subcommand's
    ///
    /// `database-locks man | man -l -` shows it; `database-locks man >
    /// /usr/local/share/man/man1/database-locks.1` installs it. With SUBCOMMAND, the page
    /// database-locks-SUBCOMMAND(1), with that subcommand's options. Needs no database.
    Man(ManArgs),
}

/// How to take a lock: shared by `run` and `hold`.
#[derive(Debug, Args)]
pub struct LockArgs {
    /// The lock's name (1 to 255 characters)
    pub name: String,

    /// Give up after waiting this many seconds and exit 124 [default: wait for ever]
    #[arg(long, value_name = "S", value_parser = positive_seconds)]
    pub timeout: Option<Duration>,

    /// One attempt: if another owner holds the lock, exit 124 at once
    #[arg(long = "try", conflicts_with = "timeout")]
    pub try_once: bool,

    /// Lease length in seconds, renewed while held; `none`: never expires
    /// [default: $DATABASE_LOCKS_DEFAULT_TTL, else 10]
    #[arg(long, value_name = "S|none", value_parser = ttl)]
    pub ttl: Option<Ttl>,

    /// Renew the lease this many seconds before it ends (it is renewed every TTL - S);
    /// shorter than the lease [default: $DATABASE_LOCKS_DEFAULT_TTL_RENEW, else 2, but at
    /// most half the lease]
    #[arg(long, value_name = "S", value_parser = margin)]
    pub ttl_renew: Option<Duration>,

    /// Owner id written into the lock; a holder with the same id takes the lock over
    /// [default: unique per acquisition]
    #[arg(long, short, value_name = "ID", value_parser = non_empty)]
    pub owner: Option<String>,

    /// Keep the lock at least this many seconds after taking it, even if done sooner, so a
    /// quick job scheduled on several hosts runs once per schedule
    #[arg(long, value_name = "S", value_parser = seconds)]
    pub at_least: Option<Duration>,

    /// NAME is a semaphore of K permits: at most K holders at once (every host must pass
    /// the same K). The holder gets one slot, DATABASE_LOCKS_SLOT in COMMAND's environment
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..=i64::from(database_locks::MAX_PERMITS)))]
    pub permits: Option<u32>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub lock: LockArgs,

    /// After a lost lock, seconds between SIGTERM and SIGKILL to COMMAND; shortened so
    /// that COMMAND is dead before the lease ends
    #[arg(long, value_name = "S", default_value = "5", value_parser = seconds)]
    pub kill_after: Duration,

    /// Say on stderr when the lock is acquired (with its fencing token and when the lease
    /// ends), each renewal the once-a-second check sees, and the release
    #[arg(long, short)]
    pub verbose: bool,

    /// The command to run and its arguments (after `--` if they start with `-`)
    #[arg(required = true, trailing_var_arg = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct LeaderArgs {
    /// The election's name (the lock's name, 1 to 255 characters)
    pub name: String,

    /// The leader's lease in seconds, renewed while it leads: a leader that dies is
    /// replaced about this long after its last renewal
    /// [default: $DATABASE_LOCKS_DEFAULT_TTL, else 10]
    #[arg(long, value_name = "S", value_parser = positive_seconds)]
    pub ttl: Option<Duration>,

    /// Renew the lease this many seconds before it ends; shorter than the lease
    /// [default: $DATABASE_LOCKS_DEFAULT_TTL_RENEW, else 2, but at most half the lease]
    #[arg(long, value_name = "S", value_parser = margin)]
    pub ttl_renew: Option<Duration>,

    /// Owner id this host campaigns as; each candidate needs its own
    /// [default: unique per run]
    #[arg(long, short, value_name = "ID", value_parser = non_empty)]
    pub owner: Option<String>,

    /// While another host leads, look this often whether the lock is free (PostgreSQL
    /// also wakes at once on the leader's release)
    #[arg(long, value_name = "S", default_value = "0.5", value_parser = positive_seconds)]
    pub retry: Duration,

    /// After a lost leadership, seconds between SIGTERM and SIGKILL to COMMAND; shortened
    /// so that COMMAND is dead before the lease ends
    #[arg(long, value_name = "S", default_value = "5", value_parser = seconds)]
    pub kill_after: Duration,

    /// The command to run and its arguments (after `--` if they start with `-`)
    #[arg(required = true, trailing_var_arg = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct HoldArgs {
    #[command(flatten)]
    pub lock: LockArgs,

    /// How long to hold the lock, in seconds
    #[arg(long, short, value_name = "S", default_value = "10", value_parser = seconds)]
    pub duration: Duration,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// JSON for scripts: {"locks": [{"name", "state", "locked_by", "expires_in", "token"}]}
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub watch: WatchArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The lock's name
    pub name: String,

    #[command(flatten)]
    pub watch: WatchArgs,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Again every S seconds [default: 2] until Ctrl-C: redrawn in place on a terminal,
    /// else one snapshot per S seconds after a blank line. Exits with the last one's status
    #[arg(
        long,
        value_name = "S",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "2",
        value_parser = interval
    )]
    pub watch: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// The lock's name
    pub name: String,

    /// Release the lock whoever holds it
    #[arg(long, required_unless_present = "owner", conflicts_with = "owner")]
    pub force: bool,

    /// Release the lock only if this owner id holds it
    #[arg(long, value_name = "ID", value_parser = non_empty)]
    pub owner: Option<String>,
}

#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Write them to FILE instead of stdout, atomically (written beside it, then renamed
    /// over it), so that the textfile collector never reads half a file; name it *.prom
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// A subcommand whose page to print instead of the command's
    #[arg(value_name = "SUBCOMMAND", value_parser = subcommand_name)]
    pub subcommand: Option<String>,
}

/// A lease length: `None` never expires.
#[derive(Debug, Clone, Copy)]
pub struct Ttl(pub Option<Duration>);

fn non_empty(value: &str) -> Result<String, String> {
    if value.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(value.to_owned())
    }
}

fn subcommand_name(value: &str) -> Result<String, String> {
    let cli = Cli::command();
    let names: Vec<&str> = cli.get_subcommands().map(|sub| sub.get_name()).collect();
    if names.contains(&value) {
        Ok(value.to_owned())
    } else {
        Err(format!("not a subcommand; one of {}", names.join(", ")))
    }
}

/// The longest duration accepted anywhere: far beyond any use, far below what `Instant`
/// arithmetic overflows at.
const MAX_SECONDS: f64 = 100.0 * 366.0 * 86_400.0;

fn seconds(value: &str) -> Result<Duration, String> {
    let secs: f64 = value
        .trim()
        .parse()
        .map_err(|_| format!("{value:?} is not a number of seconds"))?;
    if secs.is_nan() || secs < 0.0 {
        return Err(format!("{value:?} is not a non-negative number of seconds"));
    }
    if secs > MAX_SECONDS {
        return Err(format!("{value:?} is more than 100 years"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn positive_seconds(value: &str) -> Result<Duration, String> {
    let duration = seconds(value)?;
    if duration.is_zero() {
        return Err("must be positive (use --try for a single attempt)".into());
    }
    Ok(duration)
}

fn interval(value: &str) -> Result<Duration, String> {
    let duration = seconds(value)?;
    if duration < Duration::from_millis(100) {
        return Err("must be at least 0.1 (seconds)".into());
    }
    Ok(duration)
}

fn margin(value: &str) -> Result<Duration, String> {
    let duration = seconds(value)?;
    if duration.is_zero() {
        return Err("must be positive (and shorter than the lease)".into());
    }
    Ok(duration)
}

fn ttl(value: &str) -> Result<Ttl, String> {
    if value.trim().eq_ignore_ascii_case("none") {
        return Ok(Ttl(None));
    }
    let duration = seconds(value)?;
    if duration.is_zero() {
        return Err("must be positive, or `none` for no expiry".into());
    }
    Ok(Ttl(Some(duration)))
}

/// Checks what clap cannot: `--ttl-renew` against the lease, which may come from
/// `DATABASE_LOCKS_DEFAULT_TTL` (`default_ttl`). The message names both settings.
pub fn check_lock_args(args: &LockArgs, default_ttl: Option<Duration>) -> Result<(), String> {
    let Some(margin) = args.ttl_renew else {
        return Ok(());
    };
    let (ttl, from) = match args.ttl {
        Some(Ttl(ttl)) => (ttl, "--ttl"),
        None => (default_ttl, "DATABASE_LOCKS_DEFAULT_TTL"),
    };
    let shown = |d: Duration| crate::format::seconds(d.as_secs_f64());
    match ttl {
        None => Err(format!(
            "--ttl-renew {} needs a lease that expires, and the lease never does \
             ({from} none): there is nothing to renew",
            shown(margin)
        )),
        Some(ttl) if margin >= ttl => Err(format!(
            "--ttl-renew {} must be shorter than the lease ({from} {}): the lease is \
             renewed every TTL - TTL_RENEW",
            shown(margin),
            shown(ttl)
        )),
        Some(_) => Ok(()),
    }
}

/// Checks what clap cannot for `leader`: a lease that expires (the default may be
/// `DATABASE_LOCKS_DEFAULT_TTL=none`), and `--ttl-renew` shorter than it.
pub fn check_leader_args(args: &LeaderArgs, default_ttl: Option<Duration>) -> Result<(), String> {
    let (ttl, from) = match args.ttl {
        Some(ttl) => (Some(ttl), "--ttl"),
        None => (default_ttl, "DATABASE_LOCKS_DEFAULT_TTL"),
    };
    let shown = |d: Duration| crate::format::seconds(d.as_secs_f64());
    match (ttl, args.ttl_renew) {
        (None, _) => Err(format!(
            "a leader needs a lease that expires, and the lease never does ({from} none): \
             pass --ttl"
        )),
        (Some(ttl), Some(margin)) if margin >= ttl => Err(format!(
            "--ttl-renew {} must be shorter than the lease ({from} {}): the lease is \
             renewed every TTL - TTL_RENEW",
            shown(margin),
            shown(ttl)
        )),
        _ => Ok(()),
    }
}

/// In `run -- echo hi` clap takes `echo` as the lock's NAME (`--` only ends options).
/// Returns the would-be NAME when `run`'s first positional argument comes after `--`.
/// Walks the raw arguments as clap does: an option that takes a value takes the next
/// argument unless written `--opt=value` or `-oVALUE`.
/// The same holds for `leader`: `subcommand` is the one to look at.
pub fn name_after_separator(raw: &[OsString], subcommand: &str) -> Option<String> {
    let mut cli = Cli::command();
    cli.build();
    let run = cli.find_subcommand(subcommand)?;
    let mut current = &cli;
    let mut in_run = false;
    let mut args = raw.iter().skip(1);
    while let Some(arg) = args.next() {
        let arg = arg.to_str()?;
        if arg == "--" {
            return match in_run {
                true => args.next().map(|name| name.to_string_lossy().into_owned()),
                false => None,
            };
        }
        if let Some(long) = arg.strip_prefix("--") {
            let takes = current
                .get_arguments()
                .any(|a| a.get_long() == Some(long) && a.get_action().takes_values());
            if takes {
                args.next();
            }
        } else if let Some(shorts) = arg.strip_prefix('-').filter(|s| !s.is_empty()) {
            // `-xyz`: flags, until one that takes a value takes the rest or the next argument.
            for (at, c) in shorts.char_indices() {
                let takes = current
                    .get_arguments()
                    .any(|a| a.get_short() == Some(c) && a.get_action().takes_values());
                if takes {
                    if at + c.len_utf8() == shorts.len() {
                        args.next();
                    }
                    break;
                }
            }
        } else if !in_run && arg == subcommand {
            current = run;
            in_run = true;
        } else {
            // NAME before `--`, or another subcommand.
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_takes_the_command_with_or_without_a_separator() {
        for line in [
            &["database-locks", "run", "job", "--", "sh", "-c", "exit 3"][..],
            &["database-locks", "run", "job", "sh", "-c", "exit 3"][..],
        ] {
            let cli = Cli::try_parse_from(line).unwrap();
            let Command::Run(args) = cli.command else {
                panic!("{line:?}")
            };
            assert_eq!(args.lock.name, "job");
            assert_eq!(args.command, ["sh", "-c", "exit 3"]);
        }
    }

    #[test]
    fn seconds_parse_and_reject() {
        assert_eq!(seconds("1.5").unwrap(), Duration::from_millis(1500));
        assert!(seconds("-1").is_err());
        assert!(seconds("NaN").is_err());
        assert!(seconds("soon").is_err());
        assert!(seconds("inf").is_err());
        assert!(seconds("1e15").is_err());
        assert!(positive_seconds("0").is_err());
        assert!(ttl("none").unwrap().0.is_none());
        assert!(ttl("0").is_err());
    }

    #[test]
    fn run_wants_its_name_before_the_separator() {
        let raw = |line: &[&str]| line.iter().map(OsString::from).collect::<Vec<_>>();
        for line in [
            &["database-locks", "run", "--", "echo", "hi"][..],
            &[
                "database-locks",
                "--url",
                "x.db",
                "run",
                "--ttl",
                "3",
                "--",
                "echo",
            ][..],
            &["database-locks", "run", "-o", "me", "--try", "--", "echo"][..],
            &["database-locks", "run", "--owner=me", "-ome", "--", "echo"][..],
            &["database-locks", "run", "--url", "x.db", "--", "echo"][..],
        ] {
            assert_eq!(
                name_after_separator(&raw(line), "run").as_deref(),
                Some("echo"),
                "{line:?}"
            );
        }
        for line in [
            &["database-locks", "run", "job", "--", "echo", "hi"][..],
            &["database-locks", "run", "--ttl", "3", "job", "--", "echo"][..],
            &["database-locks", "--url", "--", "run", "job", "echo"][..],
            &["database-locks", "hold", "--", "job"][..],
            &["database-locks", "run", "job", "echo", "--", "x"][..],
        ] {
            assert_eq!(name_after_separator(&raw(line), "run"), None, "{line:?}");
        }
    }

    #[test]
    fn ttl_renew_must_fit_in_the_lease() {
        let parse = |line: &[&str]| {
            let Command::Run(args) = Cli::try_parse_from(line).unwrap().command else {
                panic!("{line:?}")
            };
            args.lock
        };
        let sec = Duration::from_secs(1);
        let ok = parse(&[
            "database-locks",
            "run",
            "j",
            "--ttl",
            "1",
            "--ttl-renew",
            "0.5",
            "true",
        ]);
        assert!(check_lock_args(&ok, None).is_ok());
        let long = parse(&[
            "database-locks",
            "run",
            "j",
            "--ttl",
            "1",
            "--ttl-renew",
            "1",
            "true",
        ]);
        let err = check_lock_args(&long, Some(10 * sec)).unwrap_err();
        assert!(err.contains("shorter than the lease (--ttl 1.0s)"), "{err}");
        let env = parse(&["database-locks", "run", "j", "--ttl-renew", "5", "true"]);
        assert!(check_lock_args(&env, Some(10 * sec)).is_ok());
        let err = check_lock_args(&env, Some(3 * sec)).unwrap_err();
        assert!(err.contains("DATABASE_LOCKS_DEFAULT_TTL 3.0s"), "{err}");
        assert!(check_lock_args(&env, None).unwrap_err().contains("never"));
        assert!(
            Cli::try_parse_from(["database-locks", "run", "j", "--ttl-renew", "0", "true"])
                .is_err()
        );
    }

    #[test]
    fn release_needs_force_or_owner() {
        assert!(Cli::try_parse_from(["database-locks", "release", "x"]).is_err());
        assert!(
            Cli::try_parse_from(["database-locks", "release", "x", "--force", "--owner", "o"])
                .is_err()
        );
        assert!(Cli::try_parse_from(["database-locks", "release", "x", "--force"]).is_ok());
    }
}
