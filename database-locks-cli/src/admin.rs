//! The commands that look at or change locks without holding one: `list`, `status`,
//! `release`, `migrate`. None of them creates the table: pointed at the wrong database they
//! say so instead.

use std::io::Write;

use database_locks::{Config, LockInfo, Locks, Migration, SemaphoreRow};
use serde::Serialize;

use crate::cli::{ListArgs, ReleaseArgs, StatusArgs};
use crate::{admin_locks, exit, format, Failure, Outcome};

/// What `list --json` prints. Field names and meanings are stable; new fields may appear.
#[derive(Debug, Serialize)]
struct ListJson<'a> {
    locks: Vec<LockJson<'a>>,
    /// Semaphores (`run --permits`), each with its held slots; their rows are not in
    /// `locks`.
    semaphores: Vec<SemaphoreJson<'a>>,
}

#[derive(Debug, Serialize)]
struct SemaphoreJson<'a> {
    name: &'a str,
    /// The number of permits it is set up with.
    permits: i64,
    /// The slots held now: `slot` (from 1) and a lock's fields.
    held: Vec<SlotJson<'a>>,
}

#[derive(Debug, Serialize)]
struct SlotJson<'a> {
    slot: u32,
    #[serde(flatten)]
    lease: LockJson<'a>,
}

/// The rows of `list` (and `metrics`): locks as they are, semaphores gathered from their
/// rows.
pub struct Listing<'a> {
    pub locks: Vec<&'a LockInfo>,
    pub semaphores: Vec<Semaphore<'a>>,
}

pub struct Semaphore<'a> {
    pub name: &'a str,
    pub permits: i64,
    /// Held slots, by slot number.
    pub held: Vec<(u32, &'a LockInfo)>,
}

impl<'a> Listing<'a> {
    pub fn of(infos: &'a [LockInfo]) -> Self {
        let mut locks = Vec::new();
        let mut semaphores: std::collections::BTreeMap<&str, Semaphore<'a>> = Default::default();
        for info in infos {
            let entry = |name| Semaphore {
                name,
                permits: 0,
                held: Vec::new(),
            };
            match info.semaphore() {
                Some(SemaphoreRow::Permits { semaphore, permits }) => {
                    semaphores
                        .entry(semaphore)
                        .or_insert_with(|| entry(semaphore))
                        .permits = permits;
                }
                Some(SemaphoreRow::Slot { semaphore, slot }) => {
                    let sem = semaphores
                        .entry(semaphore)
                        .or_insert_with(|| entry(semaphore));
                    if info.is_held() {
                        sem.held.push((slot, info));
                    }
                }
                _ => locks.push(info),
            }
        }
        let mut semaphores: Vec<_> = semaphores.into_values().collect();
        for sem in &mut semaphores {
            sem.held.sort_by_key(|(slot, _)| *slot);
        }
        Listing { locks, semaphores }
    }
}

#[derive(Debug, Serialize)]
struct LockJson<'a> {
    name: &'a str,
    /// `held`, `expired` or `released`.
    state: &'static str,
    /// The owner id last written; kept after release.
    locked_by: Option<&'a str>,
    /// Seconds until the lease ends by the database's clock, negative once expired; null
    /// when released or when a held lock never expires.
    expires_in: Option<f64>,
    /// The fencing token of the last acquisition.
    token: i64,
}

impl<'a> From<&'a LockInfo> for LockJson<'a> {
    fn from(info: &'a LockInfo) -> Self {
        LockJson {
            name: &info.name,
            state: info.state(),
            locked_by: info.locked_by.as_deref(),
            expires_in: info
                .expires_in
                .filter(|left| left.is_finite())
                .map(|left| (left * 1000.0).round() / 1000.0),
            token: info.token,
        }
    }
}

pub fn list(config: Config, args: ListArgs) -> Outcome {
    let locks = admin_locks(config)?;
    let snapshot = |page: &mut Vec<u8>| write_list(&locks, args.json, page);
    match args.watch.watch {
        Some(every) => crate::watch::watch(every, "database-locks list", snapshot),
        None => print(snapshot),
    }
}

/// Runs a snapshot once and prints it.
fn print(snapshot: impl FnOnce(&mut Vec<u8>) -> Outcome) -> Outcome {
    let mut page = Vec::new();
    let status = snapshot(&mut page)?;
    let mut out = std::io::stdout().lock();
    out.write_all(&page)
        .and_then(|()| out.flush())
        .map_err(|err| Failure::caused("cannot write to stdout", &err))?;
    Ok(status)
}

fn write_list(locks: &Locks, json: bool, out: &mut Vec<u8>) -> Outcome {
    let infos = locks.list()?;
    let listing = Listing::of(&infos);
    let written = if json {
        let json = ListJson {
            locks: listing
                .locks
                .iter()
                .map(|&info| LockJson::from(info))
                .collect(),
            semaphores: listing
                .semaphores
                .iter()
                .map(|sem| SemaphoreJson {
                    name: sem.name,
                    permits: sem.permits,
                    held: sem
                        .held
                        .iter()
                        .map(|&(slot, info)| SlotJson {
                            slot,
                            lease: LockJson::from(info),
                        })
                        .collect(),
                })
                .collect(),
        };
        serde_json::to_writer_pretty(&mut *out, &json)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        write_table(out, &listing)
    };
    written.map_err(|err| Failure::caused("cannot write the list", &err))?;
    Ok(exit::OK)
}

fn write_table(out: &mut impl Write, listing: &Listing<'_>) -> std::io::Result<()> {
    if listing.locks.is_empty() && listing.semaphores.is_empty() {
        return writeln!(out, "no locks");
    }
    let header = ["NAME", "STATE", "OWNER", "EXPIRES", "TOKEN"];
    let row = |name: String, info: &LockInfo| {
        [
            name,
            info.state().to_owned(),
            info.locked_by.clone().unwrap_or_else(|| "-".into()),
            format::expiry(info.expires_in),
            info.token.to_string(),
        ]
    };
    let mut rows: Vec<[String; 5]> = listing
        .locks
        .iter()
        .map(|info| row(info.name.clone(), info))
        .collect();
    // A semaphore: one line with how many of its permits are held, then its holders.
    for sem in &listing.semaphores {
        rows.push([
            sem.name.to_owned(),
            format!("semaphore, {} of {} held", sem.held.len(), sem.permits),
            "-".into(),
            "-".into(),
            "-".into(),
        ]);
        for (slot, info) in &sem.held {
            rows.push(row(format!("  permit {slot}"), info));
        }
    }
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: [&str; 5]| {
        let [name, state, owner, expires, token] = cells;
        writeln!(
            out,
            "{name:<w0$}  {state:<w1$}  {owner:<w2$}  {expires:<w3$}  {token:>w4$}",
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4],
        )
    };
    line(out, header)?;
    for row in &rows {
        line(out, row.each_ref().map(String::as_str))?;
    }
    Ok(())
}

pub fn status(config: Config, args: StatusArgs) -> Outcome {
    let locks = admin_locks(config)?;
    let snapshot = |page: &mut Vec<u8>| {
        let info = locks.inspect(&args.name)?;
        let (status, line) = describe(&args.name, info.as_ref());
        page.extend_from_slice(format!("{line}\n").as_bytes());
        Ok(status)
    };
    match args.watch.watch {
        Some(every) => {
            let title = format!("database-locks status {}", args.name);
            crate::watch::watch(every, &title, snapshot)
        }
        None => print(snapshot),
    }
}

/// The exit status and the line `status` prints.
fn describe(name: &str, info: Option<&LockInfo>) -> (u8, String) {
    let owner = |info: &LockInfo| info.locked_by.clone().unwrap_or_else(|| "?".into());
    match info {
        None => (exit::FREE, format!("{name}: free (never taken)")),
        Some(info) if info.is_held() => (
            exit::OK,
            format!(
                "{name}: held by {}, expires {}, token {}",
                owner(info),
                format::expiry(info.expires_in),
                info.token
            ),
        ),
        Some(info) if info.expires_in.is_none() => (
            exit::FREE,
            format!("{name}: free (released by {})", owner(info)),
        ),
        Some(info) => (
            exit::FREE,
            format!(
                "{name}: free (expired {}, last owner {})",
                format::expiry(info.expires_in),
                owner(info)
            ),
        ),
    }
}

pub fn release(config: Config, args: ReleaseArgs) -> Outcome {
    let locks = admin_locks(config)?;
    let name = &args.name;
    let before = locks.inspect(name)?;
    let holder = before
        .as_ref()
        .filter(|info| info.is_held())
        .and_then(|info| info.locked_by.clone());
    match &args.owner {
        None => {
            if locks.force_release(name)? {
                let by = holder
                    .as_ref()
                    .map(|h| format!(" (was held by {h})"))
                    .unwrap_or_default();
                println!("{name}: released{by}");
                if holder.is_some() {
                    // What the holder does next is up to it; say when it can notice.
                    println!(
                        "{name}: a live holder finds out at its next check: within {} for \
                         `database-locks run` (which then stops its command), at its next \
                         renewal for other holders",
                        format::seconds(crate::check::CHECK_PERIOD.as_secs_f64())
                    );
                }
                Ok(exit::OK)
            } else {
                println!("{name}: not held; nothing to release");
                Ok(exit::FREE)
            }
        }
        Some(owner) => release_owned(&locks, name, owner, holder.as_deref()),
    }
}

/// Releases `name` if `owner` holds it. There is no "release by owner" in the library: it
/// re-takes the lock as `owner`, which only that owner can do while the lease runs, then
/// releases the new guard.
fn release_owned(locks: &Locks, name: &str, owner: &str, holder: Option<&str>) -> Outcome {
    if holder != Some(owner) {
        let now = match holder {
            Some(holder) => format!("held by {holder}"),
            None => "not held".into(),
        };
        println!("{name}: not held by {owner} ({now}); nothing released");
        return Ok(exit::FREE);
    }
    let guard = locks
        .lock(name)
        .locked_by(owner)
        .auto_renew(false)
        .try_acquire()?;
    match guard {
        Some(guard) => {
            guard.release()?;
            println!("{name}: released (was held by {owner})");
            Ok(exit::OK)
        }
        // Released and taken by someone else since we looked.
        None => {
            println!("{name}: no longer held by {owner}; nothing released");
            Ok(exit::FREE)
        }
    }
}

pub fn migrate(config: Config) -> Outcome {
    let locks = Locks::new(config)?;
    let what = match locks.migrate()? {
        Migration::Created => "created the table database_locks_lock",
        Migration::Upgraded => {
            "added the token column to the table database_locks_lock (created by Django)"
        }
        Migration::UpToDate => "the table database_locks_lock is up to date",
        _ => "the table database_locks_lock is ready",
    };
    println!("{what}");
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    // `LockInfo` is #[non_exhaustive]: rows come from a real table in tests/cli.rs.
    #[test]
    fn a_lock_never_taken_is_free() {
        assert_eq!(
            describe("x", None),
            (exit::FREE, "x: free (never taken)".into())
        );
    }
}
