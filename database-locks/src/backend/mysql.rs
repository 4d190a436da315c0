//! MySQL and MariaDB.
//!
//! Neither has `UPDATE ... RETURNING`, and diesel's MySQL connection sets
//! `CLIENT_FOUND_ROWS`, so the affected-row count of an `UPDATE` is its matched-row
//! count. Acquire is a conditional `UPDATE` whose `WHERE` decides (1 row: taken);
//! `LAST_INSERT_ID(token + 1)` stores the new token in the session, read back by a
//! second, non-writing statement. A refused attempt reads the holder; only a missing
//! row is inserted, so attempts never burn `AUTO_INCREMENT` values. Owners compare as
//! binary strings: Django's table may use a case-insensitive collation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::mysql::MysqlConnection;
use diesel::result::Error as DieselError;
use diesel::{Connection, QueryResult, RunQueryDsl};

use super::{
    classify, held_by, matched, migration_outcome, slots_json, Attempt, Column, Count, Failure,
    Lease, LockConnection, Migration, PermitRow, PermitState, Semaphore,
};
use crate::config::BackendKind;
use crate::stmt::{json_rows, Bind, Stmt};

const ACQUIRE: &str = "\
UPDATE database_locks_lock
   SET token = LAST_INSERT_ID(token + 1), locked_by = ?,
       expires_at = COALESCE(UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, '9999-01-01 00:00:00')
 WHERE name = ? AND (expires_at IS NULL OR expires_at < UTC_TIMESTAMP(6) OR CAST(locked_by AS BINARY) = ?)";

const ACQUIRED_TOKEN: &str = "SELECT CAST(LAST_INSERT_ID() AS SIGNED) AS n";

const INSERT: &str = "\
INSERT INTO database_locks_lock (name, locked_by, expires_at, token)
SELECT ?, ?, COALESCE(UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, '9999-01-01 00:00:00'), 1 FROM DUAL
 WHERE NOT EXISTS (SELECT 1 FROM database_locks_lock WHERE name = ?)";

// One bind: a JSON array of `[index, name, owner, token, ttl µs]`. The JSON side is
// compared through `JSON_UNQUOTE`, which is coercible: the table's own collation decides
// (a `JSON_TABLE` column would clash with a Django table's collation), and the unique
// index on `name` finds each row. The matched-row count says whether all were renewed.
const RENEW: &str = "\
UPDATE database_locks_lock l
  JOIN JSON_TABLE(?, '$[*]' COLUMNS (name JSON PATH '$[1]', owner JSON PATH '$[2]',
                                      token bigint PATH '$[3]', ttl bigint PATH '$[4]')) j
    ON l.name = JSON_UNQUOTE(j.name)
   SET l.expires_at = UTC_TIMESTAMP(6) + INTERVAL j.ttl MICROSECOND
 WHERE CAST(l.locked_by AS BINARY) = CAST(JSON_UNQUOTE(j.owner) AS BINARY)
   AND l.token = j.token AND l.expires_at >= UTC_TIMESTAMP(6)";

// Only when the count fell short: which leases the renewal extended, by index. Run right
// after it on the same connection, so a renewed lease is still live.
const RENEWED: &str = "\
SELECT j.i AS n FROM database_locks_lock l
  JOIN JSON_TABLE(?, '$[*]' COLUMNS (i bigint PATH '$[0]', name JSON PATH '$[1]',
                                      owner JSON PATH '$[2]', token bigint PATH '$[3]')) j
    ON l.name = JSON_UNQUOTE(j.name)
 WHERE CAST(l.locked_by AS BINARY) = CAST(JSON_UNQUOTE(j.owner) AS BINARY)
   AND l.token = j.token AND l.expires_at >= UTC_TIMESTAMP(6)";

// Servers without `JSON_TABLE` (MySQL 5.7, MariaDB before 10.6): one lease per statement.
const RENEW_ONE: &str = "\
UPDATE database_locks_lock SET expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND
 WHERE name = ? AND CAST(locked_by AS BINARY) = ? AND token = ? AND expires_at >= UTC_TIMESTAMP(6)";

/// Set once a server refused `RENEW`: from then on this process renews lease by lease.
static NO_JSON_TABLE: AtomicBool = AtomicBool::new(false);

/// Whether a failed `RENEW` means the server cannot run it at all (no `JSON_TABLE`, or a
/// collation it cannot reconcile), rather than a failure worth reporting.
fn batch_unsupported(error: &DieselError) -> bool {
    let DieselError::DatabaseError(_, info) = error else {
        return false;
    };
    if classify::<MysqlConnection>(error) != Failure::Persistent {
        return false;
    }
    let m = info.message().to_ascii_lowercase();
    m.contains("json_table") || m.contains("sql syntax") || m.contains("collation")
}

// `keep_for` NULL makes the new expiry NULL: released.
const RELEASE: &str = "\
UPDATE database_locks_lock SET expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND
 WHERE name = ? AND CAST(locked_by AS BINARY) = ? AND token = ?";

// A fenced transaction's first statement (binds: ttl µs, NULL = no expiry, then name,
// owner, token). It must change the row, not only lock it: on Galera only a changed row is
// replicated and certified, so a taker on another node conflicts with it. A lock without
// expiry toggles the last microsecond of its far-future `expires_at` for that. Matched
// rows are counted (CLIENT_FOUND_ROWS).
const FENCE: &str = "\
UPDATE database_locks_lock
   SET expires_at = COALESCE(UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND,
                             IF(expires_at = '9999-01-01 00:00:00', '9999-01-01 00:00:00.000001', '9999-01-01 00:00:00'))
 WHERE name = ? AND CAST(locked_by AS BINARY) = ? AND token = ? AND expires_at >= UTC_TIMESTAMP(6)";

// Its last one, after a transaction that ran past the lease's renewal time: the row has
// been this transaction's since FENCE, so only owner and token are checked.
const FENCE_RENEW: &str = "\
UPDATE database_locks_lock SET expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND
 WHERE name = ? AND CAST(locked_by AS BINARY) = ? AND token = ?";

const VERIFY: &str = "\
SELECT COUNT(*) AS n FROM database_locks_lock
 WHERE name = ? AND CAST(locked_by AS BINARY) = ? AND token = ? AND expires_at >= UTC_TIMESTAMP(6)";

const LIST: &str = "\
SELECT name, locked_by, TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires_at) / 1e6 AS expires_in, token
  FROM database_locks_lock ORDER BY name";

const LIST_ONE: &str = "\
SELECT name, locked_by, TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires_at) / 1e6 AS expires_in, token
  FROM database_locks_lock WHERE name = ?";

const FORCE_RELEASE: &str = "\
UPDATE database_locks_lock SET expires_at = NULL WHERE name = ? AND expires_at IS NOT NULL";

const COLUMNS: &str = "\
SELECT CAST(column_name AS CHAR) AS name FROM information_schema.columns
 WHERE table_schema = DATABASE() AND table_name = 'database_locks_lock'";

// Django's DDL plus our token column; names compare byte for byte.
const CREATE: &str = "\
CREATE TABLE IF NOT EXISTS database_locks_lock (
  id integer AUTO_INCREMENT NOT NULL PRIMARY KEY,
  name varchar(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL UNIQUE,
  locked_by longtext CHARACTER SET utf8mb4 NULL,
  expires_at datetime(6) NULL,
  token bigint NOT NULL DEFAULT 0
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4";

const ADD_TOKEN: &str =
    "ALTER TABLE database_locks_lock ADD COLUMN token bigint NOT NULL DEFAULT 0";

const MIGRATE_LOCK: &str = "SELECT CAST(GET_LOCK('database_locks_migrate', 60) AS SIGNED) AS n";
const MIGRATE_UNLOCK: &str = "SELECT CAST(RELEASE_LOCK('database_locks_migrate') AS SIGNED) AS n";

// A permit of a semaphore: one free slot (released, expired or this owner's), chosen in a
// derived table (materialised, since it has a LIMIT, so MySQL allows it beside the table it
// updates) and taken by the outer UPDATE, whose WHERE checks again. Binds: slot rows
// (JSON), owner, header, permits, owner; then owner, ttl µs, owner. Slot rows are found by
// the unique index through the JSON join (as `RENEW` does).
const PERMIT: &str = "\
UPDATE database_locks_lock l
  JOIN (SELECT s.id FROM JSON_TABLE(?, '$[*]' COLUMNS (name JSON PATH '$[0]')) j
          JOIN database_locks_lock s ON s.name = JSON_UNQUOTE(j.name)
         WHERE (s.expires_at IS NULL OR s.expires_at < UTC_TIMESTAMP(6) OR CAST(s.locked_by AS BINARY) = ?)
           AND EXISTS (SELECT 1 FROM database_locks_lock h WHERE h.name = ? AND h.token = ?)
         ORDER BY CAST(s.locked_by AS BINARY) <=> CAST(? AS BINARY) DESC, s.expires_at
         LIMIT 1) pick ON l.id = pick.id
   SET l.token = LAST_INSERT_ID(l.token + 1), l.locked_by = ?,
       l.expires_at = COALESCE(UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, '9999-01-01 00:00:00')
 WHERE l.expires_at IS NULL OR l.expires_at < UTC_TIMESTAMP(6) OR CAST(l.locked_by AS BINARY) = ?";

// Which slot it took (binds: slot rows, owner): the owner's slot with the token just set.
const PERMIT_TAKEN: &str = "\
SELECT CAST(l.name AS CHAR) AS name, l.token AS token
  FROM JSON_TABLE(?, '$[*]' COLUMNS (name JSON PATH '$[0]')) j
  JOIN database_locks_lock l ON l.name = JSON_UNQUOTE(j.name)
 WHERE CAST(l.locked_by AS BINARY) = ? AND l.token = LAST_INSERT_ID()";

// Why no slot was taken (binds: header, permits, slot rows three times).
const PERMIT_STATE: &str = "\
SELECT (SELECT COUNT(*) FROM database_locks_lock WHERE name = ? AND token = ?) AS header,
       (SELECT COUNT(*) FROM JSON_TABLE(?, '$[*]' COLUMNS (name JSON PATH '$[0]')) j
          JOIN database_locks_lock l ON l.name = JSON_UNQUOTE(j.name)) AS slots,
       (SELECT COUNT(*) FROM JSON_TABLE(?, '$[*]' COLUMNS (name JSON PATH '$[0]')) j
          JOIN database_locks_lock l ON l.name = JSON_UNQUOTE(j.name)
         WHERE l.expires_at IS NULL OR l.expires_at < UTC_TIMESTAMP(6)) AS free,
       h.locked_by AS holder, h.expires_in AS expires_in
  FROM (SELECT 1 AS one) o
  LEFT JOIN (SELECT l.locked_by, TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), l.expires_at) / 1e6 AS expires_in
               FROM JSON_TABLE(?, '$[*]' COLUMNS (name JSON PATH '$[0]')) j
               JOIN database_locks_lock l ON l.name = JSON_UNQUOTE(j.name)
              WHERE l.expires_at IS NOT NULL ORDER BY l.expires_at LIMIT 1) h ON true";

// Setting a semaphore up, in one transaction: the header row (binds: header, permits,
// header), locked while the setup runs; how many slots of the recorded setup are held;
// the new number of permits; the missing slot rows, released. Slots of a larger earlier
// setup stay: their tokens must keep growing if it comes back.
const PERMITS_HEADER: &str = "\
INSERT INTO database_locks_lock (name, locked_by, expires_at, token)
SELECT ?, NULL, NULL, ? FROM DUAL WHERE NOT EXISTS (SELECT 1 FROM database_locks_lock WHERE name = ?)";

const PERMITS_READ: &str = "SELECT token AS n FROM database_locks_lock WHERE name = ? FOR UPDATE";

const PERMITS_LIVE: &str = "\
SELECT COUNT(*) AS n FROM JSON_TABLE(?, '$[*]' COLUMNS (name JSON PATH '$[0]')) j
  JOIN database_locks_lock l ON l.name = JSON_UNQUOTE(j.name)
 WHERE l.expires_at >= UTC_TIMESTAMP(6)";

const PERMITS_SET: &str = "UPDATE database_locks_lock SET token = ? WHERE name = ?";

const PERMITS_SLOT: &str = "\
INSERT INTO database_locks_lock (name, locked_by, expires_at, token)
SELECT ?, NULL, NULL, 0 FROM DUAL WHERE NOT EXISTS (SELECT 1 FROM database_locks_lock WHERE name = ?)";

// The wake-up channel (`backend::session`): session locks beside the rows, never the lock
// itself. `GET_LOCK` gives NULL on an error (the session killed while waiting): -1 here.
const SESSION_DATABASE: &str = "SELECT COALESCE(DATABASE(), '') AS name";
const SESSION_GALERA: &str = "SELECT CAST(@@wsrep_on AS SIGNED) AS n";
const SESSION_LOCK: &str = "SELECT CAST(COALESCE(GET_LOCK(?, ?), -1) AS SIGNED) AS n";
const SESSION_UNLOCK: &str = "SELECT CAST(COALESCE(RELEASE_LOCK(?), -1) AS SIGNED) AS n";

// Galera: every read waits until this node has applied what the cluster committed before
// it, so `verify` sees a theft committed through another node. MariaDB without Galera
// accepts the setting and ignores it; MySQL without Galera does not know it.
const SYNC_WAIT: &str = "SET SESSION wsrep_sync_wait = @@global.wsrep_sync_wait | 1";

fn micros(ttl: Option<Duration>) -> Option<i64> {
    ttl.map(|t| i64::try_from(t.as_micros()).unwrap_or(i64::MAX))
}

impl super::sealed::Sealed for MysqlConnection {}

impl LockConnection for MysqlConnection {
    const KIND: BackendKind = BackendKind::Mysql;

    fn setup(&mut self) -> QueryResult<()> {
        match self.batch_execute(SYNC_WAIT) {
            Err(DieselError::DatabaseError(_, info))
                if info.message().contains("Unknown system variable") =>
            {
                Ok(())
            }
            other => other,
        }
    }

    fn migrate(&mut self) -> QueryResult<Migration> {
        // Checked first so that an up-to-date table takes no lock and runs no DDL.
        if self.columns()?.iter().any(|c| c == "token") {
            return Ok(Migration::UpToDate);
        }
        // DDL commits implicitly in MySQL, so a session lock serialises migrating processes.
        let _: Vec<Count> = Stmt::new(MIGRATE_LOCK, &[]).load(self)?;
        let result: QueryResult<Migration> = (|| {
            let before = self.columns()?;
            let ddl = if before.is_empty() {
                Some(CREATE)
            } else if !before.iter().any(|c| c == "token") {
                Some(ADD_TOKEN)
            } else {
                None
            };
            if let Some(ddl) = ddl {
                if let Err(err) = Stmt::new(ddl, &[]).execute(self) {
                    // GET_LOCK is per node on Galera: a process on another node may have
                    // run the same DDL meanwhile ("Duplicate column name", or ours was
                    // interrupted by its). Done if the column is there now.
                    if !self.columns()?.iter().any(|c| c == "token") {
                        return Err(err);
                    }
                }
            }
            Ok(migration_outcome(&before))
        })();
        let unlocked: QueryResult<Vec<Count>> = Stmt::new(MIGRATE_UNLOCK, &[]).load(self);
        let outcome = result?;
        unlocked?;
        Ok(outcome)
    }

    fn columns(&mut self) -> QueryResult<Vec<String>> {
        let rows: Vec<Column> = Stmt::new(COLUMNS, &[]).load(self)?;
        Ok(rows
            .into_iter()
            .map(|c| c.name.to_ascii_lowercase())
            .collect())
    }

    fn try_acquire(
        &mut self,
        name: &str,
        owner: &str,
        ttl: Option<Duration>,
    ) -> QueryResult<Attempt> {
        let ttl = micros(ttl);
        let binds = [
            Bind::Text(owner),
            Bind::OptBigInt(ttl),
            Bind::Text(name),
            Bind::Text(owner),
        ];
        if matched(Stmt::new(ACQUIRE, &binds).execute(self)?) {
            let rows: Vec<Count> = Stmt::new(ACQUIRED_TOKEN, &[]).load(self)?;
            let token = rows.first().map_or(0, |c| c.n);
            return Ok(Attempt::Acquired { token });
        }
        if let Some(row) = self.list(Some(name))?.into_iter().next() {
            return Ok(held_by(row));
        }
        let binds = [
            Bind::Text(name),
            Bind::Text(owner),
            Bind::OptBigInt(ttl),
            Bind::Text(name),
        ];
        if matched(Stmt::new(INSERT, &binds).execute(self)?) {
            return Ok(Attempt::Acquired { token: 1 });
        }
        Ok(Attempt::Held {
            holder: None,
            expires_in: None,
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
        // A free slot seen by the second read was taken and given back between the two:
        // look again, a few times.
        for _ in 0..3 {
            let binds = [
                Bind::Text(&slots),
                Bind::Text(owner),
                Bind::Text(&semaphore.header),
                Bind::BigInt(permits),
                Bind::Text(owner),
                Bind::Text(owner),
                Bind::OptBigInt(micros(ttl)),
                Bind::Text(owner),
            ];
            if matched(Stmt::new(PERMIT, &binds).execute(self)?) {
                let rows: Vec<PermitRow> =
                    Stmt::new(PERMIT_TAKEN, &[Bind::Text(&slots), Bind::Text(owner)]).load(self)?;
                if let Some(row) = rows.into_iter().next() {
                    return Ok(Attempt::Permit {
                        row: row.name,
                        token: row.token,
                    });
                }
                continue;
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
            if let Some(outcome) = state.into_iter().next().and_then(|s| s.outcome(semaphore)) {
                return Ok(outcome);
            }
        }
        Ok(Attempt::Held {
            holder: None,
            expires_in: None,
        })
    }

    fn setup_semaphore(&mut self, semaphore: &Semaphore) -> QueryResult<Option<i64>> {
        let permits = i64::from(semaphore.permits);
        self.transaction(|conn| {
            let header = Bind::Text(&semaphore.header);
            Stmt::new(PERMITS_HEADER, &[header, Bind::BigInt(permits), header]).execute(conn)?;
            let rows: Vec<Count> = Stmt::new(PERMITS_READ, &[header]).load(conn)?;
            let recorded = rows.first().map_or(permits, |c| c.n);
            if recorded != permits {
                let old = slots_json(&semaphore.slots_of(recorded));
                let live: Vec<Count> = Stmt::new(PERMITS_LIVE, &[Bind::Text(&old)]).load(conn)?;
                if live.first().is_some_and(|c| c.n > 0) {
                    return Ok(Some(recorded));
                }
                Stmt::new(PERMITS_SET, &[Bind::BigInt(permits), header]).execute(conn)?;
            }
            for slot in &semaphore.slots {
                Stmt::new(PERMITS_SLOT, &[Bind::Text(slot), Bind::Text(slot)]).execute(conn)?;
            }
            Ok(None)
        })
    }

    fn renew(&mut self, leases: &[(Lease<'_>, Duration)]) -> QueryResult<Vec<bool>> {
        if !NO_JSON_TABLE.load(Ordering::Relaxed) {
            let mut order: Vec<(usize, &(Lease<'_>, Duration))> =
                leases.iter().enumerate().collect();
            order.sort_by(|a, b| a.1 .0.name.cmp(b.1 .0.name));
            let rows = json_rows(order, |(i, (lease, ttl)), row| {
                row.int(i64::try_from(i).unwrap_or(i64::MAX))
                    .text(lease.name)
                    .text(lease.owner)
                    .int(lease.token)
                    .int(micros(Some(*ttl)).unwrap_or(i64::MAX));
            });
            match Stmt::new(RENEW, &[Bind::Text(&rows)]).execute(self) {
                Ok(n) if n == leases.len() => return Ok(vec![true; leases.len()]),
                Ok(_) => {
                    let found: Vec<Count> = Stmt::new(RENEWED, &[Bind::Text(&rows)]).load(self)?;
                    let mut renewed = vec![false; leases.len()];
                    for index in found.iter().filter_map(|c| usize::try_from(c.n).ok()) {
                        if let Some(slot) = renewed.get_mut(index) {
                            *slot = true;
                        }
                    }
                    return Ok(renewed);
                }
                Err(err) if batch_unsupported(&err) => {
                    NO_JSON_TABLE.store(true, Ordering::Relaxed);
                    tracing::info!(
                        "this server cannot renew leases in one statement ({err}); renewing them one by one"
                    );
                }
                Err(err) => return Err(err),
            }
        }
        leases
            .iter()
            .map(|(lease, ttl)| {
                let binds = [
                    Bind::OptBigInt(micros(Some(*ttl))),
                    Bind::Text(lease.name),
                    Bind::Text(lease.owner),
                    Bind::BigInt(lease.token),
                ];
                Stmt::new(RENEW_ONE, &binds).execute(self).map(matched)
            })
            .collect()
    }

    fn release(&mut self, lease: Lease<'_>, keep_for: Option<Duration>) -> QueryResult<bool> {
        let binds = [
            Bind::OptBigInt(micros(keep_for)),
            Bind::Text(lease.name),
            Bind::Text(lease.owner),
            Bind::BigInt(lease.token),
        ];
        Stmt::new(RELEASE, &binds).execute(self).map(matched)
    }

    fn fence(&mut self, lease: Lease<'_>, ttl: Option<Duration>) -> QueryResult<bool> {
        let binds = [
            Bind::OptBigInt(micros(ttl)),
            Bind::Text(lease.name),
            Bind::Text(lease.owner),
            Bind::BigInt(lease.token),
        ];
        Stmt::new(FENCE, &binds).execute(self).map(matched)
    }

    fn fence_renew(&mut self, lease: Lease<'_>, ttl: Duration) -> QueryResult<bool> {
        let binds = [
            Bind::OptBigInt(micros(Some(ttl))),
            Bind::Text(lease.name),
            Bind::Text(lease.owner),
            Bind::BigInt(lease.token),
        ];
        Stmt::new(FENCE_RENEW, &binds).execute(self).map(matched)
    }

    super::lease_queries!(
        verify: VERIFY,
        list: LIST,
        list_one: LIST_ONE,
        force_release: FORCE_RELEASE,
    );

    fn session_info(&mut self) -> QueryResult<Option<(String, bool)>> {
        let database: Vec<Column> = Stmt::new(SESSION_DATABASE, &[]).load(self)?;
        let database = database
            .into_iter()
            .next()
            .map(|c| c.name)
            .unwrap_or_default();
        // MySQL without Galera does not know the variable; MariaDB without it says 0.
        let rows: QueryResult<Vec<Count>> = Stmt::new(SESSION_GALERA, &[]).load(self);
        let galera = match rows {
            Ok(rows) => rows.first().is_some_and(|c| c.n != 0),
            Err(DieselError::DatabaseError(_, info))
                if info.message().contains("Unknown system variable") =>
            {
                false
            }
            Err(err) => return Err(err),
        };
        Ok(Some((database, galera)))
    }

    fn get_session_lock(&mut self, key: &str, timeout_secs: i64) -> QueryResult<bool> {
        let rows: Vec<Count> =
            Stmt::new(SESSION_LOCK, &[Bind::Text(key), Bind::BigInt(timeout_secs)]).load(self)?;
        match rows.first().map(|c| c.n) {
            Some(1) => Ok(true),
            Some(0) => Ok(false),
            _ => Err(session_lock_error("GET_LOCK gave NULL")),
        }
    }

    fn release_session_lock(&mut self, key: &str) -> QueryResult<bool> {
        let rows: Vec<Count> = Stmt::new(SESSION_UNLOCK, &[Bind::Text(key)]).load(self)?;
        Ok(rows.first().is_some_and(|c| c.n == 1))
    }

    fn transient_message(message: &str) -> bool {
        let m = message.to_ascii_lowercase();
        [
            "deadlock",
            "lock wait timeout",
            "lost connection",
            "gone away",
            "can't connect",
            "connection was killed",
            "server shutdown",
            "wsrep",
            "try restarting transaction",
            // Galera: the node left the Primary component during the commit (1180, "Error
            // while appending streaming replication fragment(provider status: ...)").
            "not connected to primary component",
            "query execution was interrupted",
            // MariaDB 10.11 gives the loser of two concurrent inserts of one new name
            // error 1467 instead of a duplicate key (reproduced here).
            "failed to read auto-increment value",
        ]
        .iter()
        .any(|needle| m.contains(needle))
    }

    fn missing_table_message(message: &str) -> bool {
        message.contains("database_locks_lock") && message.contains("doesn't exist")
    }
}

/// A session-lock call that failed without a database error (NULL from `GET_LOCK`: the
/// wait was interrupted): the connection is not trusted again.
fn session_lock_error(what: &str) -> DieselError {
    DieselError::DatabaseError(
        diesel::result::DatabaseErrorKind::ClosedConnection,
        Box::new(what.to_owned()),
    )
}

/// Errors after which the server refuses every statement of this session, though the
/// connection itself is fine: 1053 (the server is shutting down), 1047 (a Galera node
/// outside the Primary component, or not yet synced) and the 1180 a Galera node gives a
/// commit when it leaves the Primary component. Behind a proxy (HAProxy, ProxySQL) only a
/// new connection can reach another node, so the connection is dropped; `message` is in
/// lower case.
pub(super) fn unusable_session_message(message: &str) -> bool {
    [
        "server shutdown in progress",
        "wsrep has not yet prepared node",
        "not connected to primary component",
    ]
    .iter()
    .any(|needle| message.contains(needle))
}
