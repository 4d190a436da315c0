//! SQLite: one conditional `UPDATE` per acquire (an `INSERT` for a new name), with the
//! database file shared by every process in WAL mode.
//!
//! Times are UTC text in Django's layout (`2026-11-26 10:59:52.711000`): SQLite's clock
//! has millisecond resolution, padded to Django's six digits so that text comparison
//! orders both writers' values.

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::sql_types::{BigInt, Text};
use diesel::sqlite::SqliteConnection;
use diesel::{QueryResult, QueryableByName, RunQueryDsl};

use super::{
    held_by, matched, migration_outcome, slots_json, Attempt, Column, Lease, LockConnection,
    Migration, PermitRow, PermitState, Semaphore, SEPARATOR,
};
use crate::config::BackendKind;
use crate::stmt::{json_rows, Bind, Stmt};

// Takes an existing row if it is free, expired or ours. An `UPDATE`, not an upsert: an
// upsert writes `sqlite_sequence` (AUTOINCREMENT) on every attempt, one more page per
// commit.
const ACQUIRE: &str = "\
UPDATE database_locks_lock
   SET locked_by = ?,
       expires_at = COALESCE(strftime('%Y-%m-%d %H:%M:%f', 'now', ?) || '000', '9999-01-01 00:00:00.000000'),
       token = token + 1
 WHERE name = ?
   AND (expires_at IS NULL OR expires_at < strftime('%Y-%m-%d %H:%M:%f', 'now') || '000' OR locked_by = ?)
RETURNING token";

// Only when the name has no row yet.
const INSERT: &str = "\
INSERT INTO database_locks_lock (name, locked_by, expires_at, token)
VALUES (?, ?, COALESCE(strftime('%Y-%m-%d %H:%M:%f', 'now', ?) || '000', '9999-01-01 00:00:00.000000'), 1)
ON CONFLICT (name) DO NOTHING
RETURNING token";

// One bind: a JSON array of `[name, owner, token, modifier]`. `UPDATE ... FROM` cannot
// return the FROM side's columns, so the caller matches `(name, token)`: SQLite names
// compare byte for byte.
const RENEW: &str = "\
UPDATE database_locks_lock
   SET expires_at = strftime('%Y-%m-%d %H:%M:%f', 'now', json_extract(j.value, '$[3]')) || '000'
  FROM json_each(?) AS j
 WHERE database_locks_lock.name = json_extract(j.value, '$[0]')
   AND database_locks_lock.locked_by = json_extract(j.value, '$[1]')
   AND database_locks_lock.token = json_extract(j.value, '$[2]')
   AND database_locks_lock.expires_at >= strftime('%Y-%m-%d %H:%M:%f', 'now') || '000'
RETURNING name, token";

// A NULL modifier makes the new expiry NULL: released.
const RELEASE: &str = "\
UPDATE database_locks_lock SET expires_at = strftime('%Y-%m-%d %H:%M:%f', 'now', ?) || '000'
 WHERE name = ? AND locked_by = ? AND token = ?";

// A fenced transaction's first statement, inside `BEGIN IMMEDIATE` (binds: the ttl
// modifier, NULL = no expiry, then name, owner, token).
const FENCE: &str = "\
UPDATE database_locks_lock
   SET expires_at = COALESCE(strftime('%Y-%m-%d %H:%M:%f', 'now', ?) || '000', expires_at)
 WHERE name = ? AND locked_by = ? AND token = ?
   AND expires_at >= strftime('%Y-%m-%d %H:%M:%f', 'now') || '000'";

// Its last one, after a transaction that ran past the lease's renewal time: the
// transaction has held the file's write lock since FENCE, so only owner and token are
// checked.
const FENCE_RENEW: &str = "\
UPDATE database_locks_lock SET expires_at = strftime('%Y-%m-%d %H:%M:%f', 'now', ?) || '000'
 WHERE name = ? AND locked_by = ? AND token = ?";

const VERIFY: &str = "\
SELECT COUNT(*) AS n FROM database_locks_lock
 WHERE name = ? AND locked_by = ? AND token = ?
   AND expires_at >= strftime('%Y-%m-%d %H:%M:%f', 'now') || '000'";

const LIST: &str = "\
SELECT name, locked_by, (julianday(expires_at) - julianday('now')) * 86400.0 AS expires_in, token
  FROM database_locks_lock ORDER BY name";

const LIST_ONE: &str = "\
SELECT name, locked_by, (julianday(expires_at) - julianday('now')) * 86400.0 AS expires_in, token
  FROM database_locks_lock WHERE name = ?";

const FORCE_RELEASE: &str = "\
UPDATE database_locks_lock SET expires_at = NULL WHERE name = ? AND expires_at IS NOT NULL";

const COLUMNS: &str = "SELECT name FROM pragma_table_info('database_locks_lock')";

// A permit of a semaphore: one free slot (released, expired or this owner's, which comes
// first), if the header records these permits. One writer at a time, so the choice and
// the write cannot be split by another attempt. Binds: owner, ttl modifier, slot rows
// (JSON), owner, header, permits, owner.
const PERMIT: &str = "\
UPDATE database_locks_lock
   SET locked_by = ?,
       expires_at = COALESCE(strftime('%Y-%m-%d %H:%M:%f', 'now', ?) || '000', '9999-01-01 00:00:00.000000'),
       token = token + 1
 WHERE id = (
   SELECT l.id FROM database_locks_lock l
    WHERE l.name IN (SELECT json_extract(j.value, '$[0]') FROM json_each(?) j)
      AND (l.expires_at IS NULL OR l.expires_at < strftime('%Y-%m-%d %H:%M:%f', 'now') || '000' OR l.locked_by = ?)
      AND EXISTS (SELECT 1 FROM database_locks_lock h WHERE h.name = ? AND h.token = ?)
    ORDER BY l.locked_by IS ? DESC, l.expires_at IS NOT NULL, l.expires_at
    LIMIT 1)
RETURNING name, token";

// Why no slot was taken (binds: header, permits, slot rows three times).
const PERMIT_STATE: &str = "\
SELECT (SELECT COUNT(*) FROM database_locks_lock WHERE name = ? AND token = ?) AS header,
       (SELECT COUNT(*) FROM database_locks_lock
         WHERE name IN (SELECT json_extract(j.value, '$[0]') FROM json_each(?) j)) AS slots,
       (SELECT COUNT(*) FROM database_locks_lock
         WHERE name IN (SELECT json_extract(j.value, '$[0]') FROM json_each(?) j)
           AND (expires_at IS NULL OR expires_at < strftime('%Y-%m-%d %H:%M:%f', 'now') || '000')) AS free,
       h.locked_by AS holder, h.expires_in AS expires_in
  FROM (SELECT 1 AS one) o
  LEFT JOIN (SELECT locked_by, (julianday(expires_at) - julianday('now')) * 86400.0 AS expires_in
               FROM database_locks_lock
              WHERE name IN (SELECT json_extract(j.value, '$[0]') FROM json_each(?) j)
                AND expires_at IS NOT NULL
              ORDER BY expires_at LIMIT 1) h ON 1";

// Setting a semaphore up, inside `BEGIN IMMEDIATE`: the header row (binds: header,
// permits); how many slots of the recorded setup are held; the new number of permits; the
// missing slot rows, released. Slots of a larger earlier setup stay: their tokens must
// keep growing if it comes back.
const PERMITS_HEADER: &str = "\
INSERT INTO database_locks_lock (name, locked_by, expires_at, token) VALUES (?, NULL, NULL, ?)
ON CONFLICT (name) DO NOTHING";

const PERMITS_READ: &str = "SELECT token FROM database_locks_lock WHERE name = ?";

const PERMITS_LIVE: &str = "\
SELECT COUNT(*) AS token FROM database_locks_lock
 WHERE name IN (SELECT json_extract(j.value, '$[0]') FROM json_each(?) j)
   AND expires_at >= strftime('%Y-%m-%d %H:%M:%f', 'now') || '000'";

const PERMITS_SET: &str = "UPDATE database_locks_lock SET token = ? WHERE name = ?";

const PERMITS_SLOTS: &str = "\
INSERT INTO database_locks_lock (name, locked_by, expires_at, token)
SELECT json_extract(j.value, '$[0]'), NULL, NULL, 0 FROM json_each(?) j WHERE true
ON CONFLICT (name) DO NOTHING";

// A listener's look: changes when another connection has committed to the file. A
// statement that changes nothing (a refused attempt) commits nothing.
const DATA_VERSION: &str = "PRAGMA data_version";

// The file the listener watches for writes (`backend::watch`): empty for `:memory:` and
// temporary databases.
const DATABASE_FILE: &str = "SELECT file AS name FROM pragma_database_list WHERE name = 'main'";

// After a commit elsewhere, which of the rows waited for are free (released or expired):
// the same bind twice, a JSON array of `[name, first, last, header]` per queue, where first..last
// spans the rows of a semaphore `name` (`name␟` .. `name` + U+2420: names compare byte for
// byte, and UTF-8 orders like code points) and the header row is left out. Two index
// ranges rather than an OR, so that each stays an index lookup.
const FREE_ROWS: &str = "\
SELECT l.name AS name FROM json_each(?) AS j
  JOIN database_locks_lock l ON l.name = json_extract(j.value, '$[0]')
 WHERE l.expires_at IS NULL OR l.expires_at < strftime('%Y-%m-%d %H:%M:%f', 'now') || '000'
UNION ALL
SELECT l.name AS name FROM json_each(?) AS j
  JOIN database_locks_lock l
    ON l.name > json_extract(j.value, '$[1]') AND l.name < json_extract(j.value, '$[2]')
 WHERE l.name <> json_extract(j.value, '$[3]')
   AND (l.expires_at IS NULL OR l.expires_at < strftime('%Y-%m-%d %H:%M:%f', 'now') || '000')";

// Django's DDL plus our token column.
const CREATE: &str = "\
CREATE TABLE IF NOT EXISTS database_locks_lock (
  id integer NOT NULL PRIMARY KEY AUTOINCREMENT,
  name varchar(255) NOT NULL UNIQUE,
  locked_by text NULL,
  expires_at datetime NULL,
  token bigint NOT NULL DEFAULT 0)";

const ADD_TOKEN: &str =
    "ALTER TABLE database_locks_lock ADD COLUMN token bigint NOT NULL DEFAULT 0";

// WAL lets readers and one writer share the file across processes; NORMAL is durable
// across process crashes (an OS crash may lose the last commits, never corrupt).
const SETUP: &str = "\
PRAGMA busy_timeout = 5000;
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;";

#[derive(QueryableByName)]
struct DataVersion {
    #[diesel(sql_type = BigInt)]
    data_version: i64,
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

/// The `FREE_ROWS` bind for these queues.
fn queue_ranges(queues: &[String]) -> String {
    json_rows(queues, |queue, row| {
        let first = format!("{queue}{SEPARATOR}");
        let last = format!("{queue}\u{2420}");
        let header = format!("{queue}{SEPARATOR}permits");
        row.text(queue).text(&first).text(&last).text(&header);
    })
}

#[derive(QueryableByName)]
struct Token {
    #[diesel(sql_type = BigInt)]
    token: i64,
}

/// A lease a batched renewal extended.
#[derive(QueryableByName)]
struct RenewedRow {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = BigInt)]
    token: i64,
}

/// Per lease, in the caller's order, whether a row `(name, token)` came back.
fn renewed_by_name(leases: &[(Lease<'_>, Duration)], rows: &[RenewedRow]) -> Vec<bool> {
    let renewed: std::collections::HashSet<(&str, i64)> =
        rows.iter().map(|r| (r.name.as_str(), r.token)).collect();
    leases
        .iter()
        .map(|(lease, _)| renewed.contains(&(lease.name, lease.token)))
        .collect()
}

/// An SQLite date modifier adding `ttl`, or NULL for none.
fn modifier(ttl: Option<Duration>) -> Option<String> {
    ttl.map(|t| format!("+{:.6} seconds", t.as_secs_f64()))
}

impl super::sealed::Sealed for SqliteConnection {}

impl LockConnection for SqliteConnection {
    const KIND: BackendKind = BackendKind::Sqlite;

    fn setup(&mut self) -> QueryResult<()> {
        self.batch_execute(SETUP)
    }

    fn migrate(&mut self) -> QueryResult<Migration> {
        // Checked first so that an up-to-date table takes no write lock.
        if self.columns()?.iter().any(|c| c == "token") {
            return Ok(Migration::UpToDate);
        }
        self.immediate_transaction(|conn| {
            let before = conn.columns()?;
            if before.is_empty() {
                conn.batch_execute(CREATE)?;
            } else if !before.iter().any(|c| c == "token") {
                conn.batch_execute(ADD_TOKEN)?;
            }
            Ok(migration_outcome(&before))
        })
    }

    fn columns(&mut self) -> QueryResult<Vec<String>> {
        let rows: Vec<Column> = Stmt::new(COLUMNS, &[]).load(self)?;
        Ok(rows.into_iter().map(|c| c.name).collect())
    }

    fn try_acquire(
        &mut self,
        name: &str,
        owner: &str,
        ttl: Option<Duration>,
    ) -> QueryResult<Attempt> {
        let modifier = modifier(ttl);
        let binds = [
            Bind::Text(owner),
            Bind::OptText(modifier.as_deref()),
            Bind::Text(name),
            Bind::Text(owner),
        ];
        let rows: Vec<Token> = Stmt::new(ACQUIRE, &binds).load(self)?;
        if let Some(row) = rows.first() {
            return Ok(Attempt::Acquired { token: row.token });
        }
        if let Some(row) = self.list(Some(name))?.into_iter().next() {
            return Ok(held_by(row));
        }
        let binds = [
            Bind::Text(name),
            Bind::Text(owner),
            Bind::OptText(modifier.as_deref()),
        ];
        let rows: Vec<Token> = Stmt::new(INSERT, &binds).load(self)?;
        Ok(match rows.first() {
            Some(row) => Attempt::Acquired { token: row.token },
            // Inserted by someone else since the read.
            None => Attempt::Held {
                holder: None,
                expires_in: None,
            },
        })
    }

    fn try_acquire_permit(
        &mut self,
        semaphore: &Semaphore,
        owner: &str,
        ttl: Option<Duration>,
    ) -> QueryResult<Attempt> {
        let slots = slots_json(&semaphore.slots);
        let permits = i64::from(semaphore.permits);
        let modifier = modifier(ttl);
        let binds = [
            Bind::Text(owner),
            Bind::OptText(modifier.as_deref()),
            Bind::Text(&slots),
            Bind::Text(owner),
            Bind::Text(&semaphore.header),
            Bind::BigInt(permits),
            Bind::Text(owner),
        ];
        let rows: Vec<PermitRow> = Stmt::new(PERMIT, &binds).load(self)?;
        if let Some(row) = rows.into_iter().next() {
            return Ok(Attempt::Permit {
                row: row.name,
                token: row.token,
            });
        }
        let slots = Bind::Text(&slots);
        let binds = [
            Bind::Text(&semaphore.header),
            Bind::BigInt(permits),
            slots,
            slots,
            slots,
        ];
        let state: Vec<PermitState> = Stmt::new(PERMIT_STATE, &binds).load(self)?;
        // One writer at a time: a slot free now was freed after the UPDATE looked.
        Ok(state
            .into_iter()
            .next()
            .and_then(|s| s.outcome(semaphore))
            .unwrap_or(Attempt::Held {
                holder: None,
                expires_in: None,
            }))
    }

    fn setup_semaphore(&mut self, semaphore: &Semaphore) -> QueryResult<Option<i64>> {
        let permits = i64::from(semaphore.permits);
        self.immediate_transaction(|conn| {
            let header = Bind::Text(&semaphore.header);
            Stmt::new(PERMITS_HEADER, &[header, Bind::BigInt(permits)]).execute(conn)?;
            let rows: Vec<Token> = Stmt::new(PERMITS_READ, &[header]).load(conn)?;
            let recorded = rows.first().map_or(permits, |c| c.token);
            if recorded != permits {
                let old = slots_json(&semaphore.slots_of(recorded));
                let live: Vec<Token> = Stmt::new(PERMITS_LIVE, &[Bind::Text(&old)]).load(conn)?;
                if live.first().is_some_and(|c| c.token > 0) {
                    return Ok(Some(recorded));
                }
                Stmt::new(PERMITS_SET, &[Bind::BigInt(permits), header]).execute(conn)?;
            }
            let slots = slots_json(&semaphore.slots);
            Stmt::new(PERMITS_SLOTS, &[Bind::Text(&slots)]).execute(conn)?;
            Ok(None)
        })
    }

    fn renew(&mut self, leases: &[(Lease<'_>, Duration)]) -> QueryResult<Vec<bool>> {
        let rows = json_rows(leases, |(lease, ttl), row| {
            let modifier = modifier(Some(*ttl)).unwrap_or_default();
            row.text(lease.name)
                .text(lease.owner)
                .int(lease.token)
                .text(&modifier);
        });
        let renewed: Vec<RenewedRow> = Stmt::new(RENEW, &[Bind::Text(&rows)]).load(self)?;
        Ok(renewed_by_name(leases, &renewed))
    }

    fn release(&mut self, lease: Lease<'_>, keep_for: Option<Duration>) -> QueryResult<bool> {
        let modifier = modifier(keep_for);
        let binds = [
            Bind::OptText(modifier.as_deref()),
            Bind::Text(lease.name),
            Bind::Text(lease.owner),
            Bind::BigInt(lease.token),
        ];
        Stmt::new(RELEASE, &binds).execute(self).map(matched)
    }

    fn fence(&mut self, lease: Lease<'_>, ttl: Option<Duration>) -> QueryResult<bool> {
        let modifier = modifier(ttl);
        let binds = [
            Bind::OptText(modifier.as_deref()),
            Bind::Text(lease.name),
            Bind::Text(lease.owner),
            Bind::BigInt(lease.token),
        ];
        Stmt::new(FENCE, &binds).execute(self).map(matched)
    }

    fn fence_renew(&mut self, lease: Lease<'_>, ttl: Duration) -> QueryResult<bool> {
        let modifier = modifier(Some(ttl)).unwrap_or_default();
        let binds = [
            Bind::Text(&modifier),
            Bind::Text(lease.name),
            Bind::Text(lease.owner),
            Bind::BigInt(lease.token),
        ];
        Stmt::new(FENCE_RENEW, &binds).execute(self).map(matched)
    }

    fn fenced_transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Self) -> Result<T, E>,
        E: From<diesel::result::Error>,
    {
        self.immediate_transaction(f)
    }

    // Waiters wake on other connections' commits (`notify.rs`): nothing to register.
    fn listen(&mut self) -> QueryResult<bool> {
        Ok(true)
    }

    fn data_version(&mut self) -> QueryResult<Option<i64>> {
        let rows: Vec<DataVersion> = Stmt::new(DATA_VERSION, &[]).load(self)?;
        Ok(rows.first().map(|r| r.data_version))
    }

    fn database_file(&mut self) -> QueryResult<Option<std::path::PathBuf>> {
        let rows: Vec<Name> = Stmt::new(DATABASE_FILE, &[]).load(self)?;
        Ok(rows
            .into_iter()
            .next()
            .filter(|row| !row.name.is_empty())
            .map(|row| row.name.into()))
    }

    fn free_rows(&mut self, queues: &[String]) -> QueryResult<Vec<String>> {
        if queues.is_empty() {
            return Ok(Vec::new());
        }
        let ranges = queue_ranges(queues);
        let rows: Vec<Name> =
            Stmt::new(FREE_ROWS, &[Bind::Text(&ranges), Bind::Text(&ranges)]).load(self)?;
        Ok(rows.into_iter().map(|r| r.name).collect())
    }

    super::lease_queries!(
        verify: VERIFY,
        list: LIST,
        list_one: LIST_ONE,
        force_release: FORCE_RELEASE,
    );

    fn transient_message(message: &str) -> bool {
        let m = message.to_ascii_lowercase();
        m.contains("database is locked")
            || m.contains("database table is locked")
            || m.contains("busy")
    }

    fn missing_table_message(message: &str) -> bool {
        message.contains("no such table") && message.contains("database_locks_lock")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use diesel::connection::SimpleConnection;
    use diesel::{Connection, SqliteConnection};

    use crate::backend::{slot_row, Attempt, Lease, LockConnection, Semaphore};

    fn open(file: &std::path::Path) -> SqliteConnection {
        let mut conn = SqliteConnection::establish(&file.display().to_string()).unwrap();
        conn.setup().unwrap();
        conn
    }

    fn version(conn: &mut SqliteConnection) -> i64 {
        conn.data_version()
            .unwrap()
            .expect("SQLite has a data_version")
    }

    // What the SQLite listener relies on: another connection's commit changes what a
    // connection reads from `PRAGMA data_version`; a refused attempt (an UPDATE that
    // matches nothing, then a read) does not, nor do its own commits.
    #[test]
    fn data_version_changes_on_commits_by_others_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("locks.sqlite3");
        let mut holder = open(&file);
        holder.migrate().unwrap();
        let mut waiter = open(&file);
        let mut watcher = open(&file);

        let ttl = Some(Duration::from_secs(60));
        let Attempt::Acquired { token } = holder.try_acquire("n", "h", ttl).unwrap() else {
            panic!("a new name is free");
        };
        let before = version(&mut watcher);
        assert_eq!(version(&mut watcher), before, "nothing committed");

        let refused = waiter.try_acquire("n", "w", ttl).unwrap();
        assert!(matches!(refused, Attempt::Held { .. }), "{refused:?}");
        assert_eq!(
            version(&mut watcher),
            before,
            "a refused attempt commits nothing"
        );

        // The watcher's own commit is not another connection's.
        watcher.batch_execute("CREATE TABLE t (x)").unwrap();
        assert_eq!(version(&mut watcher), before, "its own commit");

        let lease = Lease {
            name: "n",
            owner: "h",
            token,
        };
        assert!(holder.release(lease, None).unwrap());
        let after = version(&mut watcher);
        assert_ne!(after, before, "another connection's release");
        assert_eq!(version(&mut watcher), after, "read twice, nothing new");
    }

    // What the listener's file watch relies on (`backend::watch`): a release in another
    // connection writes the database's files (the log), a refused attempt and reads do
    // not, so the watch sleeps through them.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_release_wakes_the_file_watch_and_a_refused_attempt_does_not() {
        use crate::backend::watch::FileWatch;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("locks.sqlite3");
        let mut holder = open(&file);
        holder.migrate().unwrap();
        let mut waiter = open(&file);
        let mut watcher = open(&file);
        let watched = watcher.database_file().unwrap().expect("a file database");
        assert_eq!(watched, file.canonicalize().unwrap());
        let mut watch = FileWatch::new(&watched).expect("inotify works here");

        let ttl = Some(Duration::from_secs(60));
        let Attempt::Acquired { token } = holder.try_acquire("n", "h", ttl).unwrap() else {
            panic!("a new name is free");
        };
        assert!(watch.wait(Duration::ZERO).unwrap(), "the acquisition wrote");
        let refused = waiter.try_acquire("n", "w", ttl).unwrap();
        assert!(matches!(refused, Attempt::Held { .. }), "{refused:?}");
        version(&mut watcher);
        assert!(
            !watch.wait(Duration::ZERO).unwrap(),
            "a refused attempt and a read write nothing"
        );
        let lease = Lease {
            name: "n",
            owner: "h",
            token,
        };
        assert!(holder.release(lease, None).unwrap());
        assert!(watch.wait(Duration::ZERO).unwrap(), "the release wrote");
    }

    #[test]
    fn in_memory_databases_have_no_file() {
        let mut conn = SqliteConnection::establish(":memory:").unwrap();
        assert_eq!(conn.database_file().unwrap(), None);
    }

    #[test]
    fn free_rows_are_the_free_locks_and_slots_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("locks.sqlite3");
        let mut conn = open(&file);
        conn.migrate().unwrap();
        let ttl = Some(Duration::from_secs(60));
        for name in ["held", "free", "other-free"] {
            assert!(matches!(
                conn.try_acquire(name, "o", ttl).unwrap(),
                Attempt::Acquired { .. }
            ));
        }
        conn.force_release("free").unwrap();
        conn.force_release("other-free").unwrap();
        // A semaphore of 2 permits, one taken: its free slot and never its header row.
        let semaphore = Semaphore::new("sem", 2);
        assert_eq!(conn.setup_semaphore(&semaphore).unwrap(), None);
        let taken = conn.try_acquire_permit(&semaphore, "o", ttl).unwrap();
        assert!(matches!(taken, Attempt::Permit { .. }), "{taken:?}");
        // Another lock whose name starts like the semaphore's.
        assert!(matches!(
            conn.try_acquire("sem2", "o", ttl).unwrap(),
            Attempt::Acquired { .. }
        ));
        conn.force_release("sem2").unwrap();

        let queues = ["held", "free", "sem", "missing"].map(String::from);
        let mut free = conn.free_rows(&queues).unwrap();
        free.sort();
        let slot = |i| slot_row("sem", i);
        let Attempt::Permit { row, .. } = taken else {
            unreachable!()
        };
        let free_slot = if row == slot(1) { slot(2) } else { slot(1) };
        assert_eq!(free, vec!["free".to_owned(), free_slot]);
        assert!(conn.free_rows(&[]).unwrap().is_empty());
    }
}
