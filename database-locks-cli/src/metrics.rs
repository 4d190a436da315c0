//! `metrics`: the lock table's state in Prometheus' text exposition format (version
//! 0.0.4), for node-exporter's textfile collector, run from cron. The file is written
//! whole or not at all: the collector reads every `*.prom` file at each scrape.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use database_locks::{Config, LockInfo};

use crate::admin::Listing;
use crate::cli::MetricsArgs;
use crate::{admin_locks, exit, Failure, Outcome};

pub fn metrics(config: Config, args: MetricsArgs) -> Outcome {
    let locks = admin_locks(config)?;
    let infos = locks.list()?;
    let text = exposition(&Listing::of(&infos), SystemTime::now());
    match &args.output {
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|err| Failure::caused("cannot write the metrics", &err))?;
        }
        Some(path) => write_atomically(path, &text).map_err(|err| {
            Failure::caused(
                format!("cannot write the metrics to {}", path.display()),
                &err,
            )
        })?,
    }
    Ok(exit::OK)
}

/// One metric family: `# HELP`, `# TYPE` and its samples, label set and value each.
struct Family<'a> {
    name: &'static str,
    help: &'static str,
    samples: Vec<(Option<&'a str>, f64)>,
}

/// The exposition of `listing`, made at `now`. Every family is always there, with its
/// `# HELP` and `# TYPE` once, even without samples, so that a dashboard can tell "no
/// locks" from "no data".
fn exposition(listing: &Listing<'_>, now: SystemTime) -> String {
    let locks = &listing.locks;
    let held = |info: &LockInfo| info.is_held();
    let per_lock = |value: fn(&LockInfo) -> Option<f64>| -> Vec<(Option<&str>, f64)> {
        locks
            .iter()
            .filter_map(|info| Some((Some(info.name.as_str()), value(info)?)))
            .collect()
    };
    let per_semaphore = |value: fn(&crate::admin::Semaphore<'_>) -> f64| {
        listing
            .semaphores
            .iter()
            .map(|sem| (Some(sem.name), value(sem)))
            .collect()
    };
    let scraped = now
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| (since.as_secs_f64() * 1000.0).round() / 1000.0);
    let families = [
        Family {
            name: "database_locks_lock_held",
            help: "Whether the lock is held now (1), or released or expired (0), by the \
                   database's clock.",
            samples: per_lock(|info| Some(if info.is_held() { 1.0 } else { 0.0 })),
        },
        Family {
            name: "database_locks_lock_expires_in_seconds",
            help: "Seconds until the held lock's lease ends, by the database's clock; +Inf \
                   for a lease without expiry. Only for held locks.",
            samples: per_lock(|info| {
                info.expires_in
                    .filter(|_| info.is_held())
                    .map(|left| (left * 1000.0).round() / 1000.0)
            }),
        },
        Family {
            name: "database_locks_lock_token",
            help: "The fencing token of the lock's last acquisition.",
            // Tokens are far below 2^53: exact as a float.
            samples: per_lock(|info| Some(info.token as f64)),
        },
        Family {
            name: "database_locks_locks",
            help: "Locks in the lock table, held or not (semaphores are counted apart).",
            samples: vec![(None, locks.len() as f64)],
        },
        Family {
            name: "database_locks_locks_held",
            help: "Locks held now.",
            samples: vec![(None, locks.iter().filter(|info| held(info)).count() as f64)],
        },
        Family {
            name: "database_locks_semaphore_permits",
            help: "The number of permits the semaphore is set up with.",
            samples: per_semaphore(|sem| sem.permits as f64),
        },
        Family {
            name: "database_locks_semaphore_permits_held",
            help: "Permits of the semaphore held now.",
            samples: per_semaphore(|sem| sem.held.len() as f64),
        },
        Family {
            name: "database_locks_scrape_timestamp_seconds",
            help: "When these metrics were read, in seconds since the Unix epoch by this \
                   host's clock: a stale file shows an old one.",
            samples: vec![(None, scraped)],
        },
    ];
    let mut text = String::new();
    for family in &families {
        let name = family.name;
        let _ = writeln!(text, "# HELP {name} {}", escape_help(family.help));
        let _ = writeln!(text, "# TYPE {name} gauge");
        for (label, value) in &family.samples {
            let value = number(*value);
            let _ = match label {
                Some(label) => writeln!(text, "{name}{{name=\"{}\"}} {value}", escape_label(label)),
                None => writeln!(text, "{name} {value}"),
            };
        }
    }
    text
}

/// A sample value as the format spells it: Go's float syntax, `+Inf`, `-Inf`, `NaN`.
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        // Rust writes no exponent and the shortest digits that read back the same.
        value.to_string()
    }
}

/// A label value: backslash, double quote and line feed escaped.
fn escape_label(value: &str) -> String {
    escape(value, true)
}

/// A `# HELP` text: backslash and line feed escaped.
fn escape_help(text: &str) -> String {
    escape(text, false)
}

fn escape(text: &str, quote: bool) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '\n' => escaped.push_str("\\n"),
            '"' if quote => escaped.push_str("\\\""),
            c => escaped.push(c),
        }
    }
    escaped
}

/// Writes `text` to a temporary file beside `path` (`PATH.PID.tmp`, which the textfile
/// collector does not read), flushed to disk, then renamed over `path`: readers see the
/// old file or the new one, never part of one.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let written = std::fs::File::create(&tmp).and_then(|mut file| {
        file.write_all(text.as_bytes())?;
        file.sync_all()
    });
    written
        .and_then(|()| std::fs::rename(&tmp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_labels_are_spelled_as_the_format_wants() {
        assert_eq!(number(1.0), "1");
        assert_eq!(number(2.5), "2.5");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NEG_INFINITY), "-Inf");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(1e21), "1000000000000000000000");
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape_help("a\"b\\c\nd"), "a\"b\\\\c\\nd");
    }

    #[test]
    fn an_empty_table_has_every_family() {
        let listing = Listing::of(&[]);
        let text = exposition(
            &listing,
            UNIX_EPOCH + std::time::Duration::from_millis(1500),
        );
        assert_eq!(text.matches("# HELP ").count(), 8, "{text}");
        assert_eq!(text.matches("# TYPE ").count(), 8, "{text}");
        assert!(text.contains("\ndatabase_locks_locks 0\n"), "{text}");
        assert!(
            text.ends_with("\ndatabase_locks_scrape_timestamp_seconds 1.5\n"),
            "{text}"
        );
    }
}
