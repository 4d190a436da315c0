//! PostgreSQL: one statement, one round trip, per operation.
//!
//! Acquire is a single statement whose three arms update a free row, insert a missing
//! one, or report the current holder. It inserts only when the row is missing, so
//! polling never burns values of the table's `integer` identity sequence (an
//! `INSERT ... ON CONFLICT` would take one per attempt and run out).
//!
//! Renewal takes every due lease in one statement (arrays, `unnest`). Release sends
//! `NOTIFY` in the same statement; a connection that `LISTEN`s wakes the waiters of its
//! handle (`notify.rs`).

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::sql_types::{BigInt, Bool, Double, Nullable, Text};
use diesel::{Connection, QueryResult, QueryableByName, RunQueryDsl};

use super::{
    migration_outcome, Attempt, Column, Count, Lease, LockConnection, Migration, Semaphore,
};
use crate::config::BackendKind;
use crate::stmt::{Bind, Stmt};

const ACQUIRE: &str = "\
WITH p AS (
  SELECT CAST(? AS varchar) AS name, CAST(? AS text) AS owner,
         COALESCE(clock_timestamp() + make_interval(secs => ?),
                  TIMESTAMPTZ '9999-01-01 00:00:00+00') AS expires_at),
upd AS (
  UPDATE database_locks_lock l
     SET locked_by = p.owner, expires_at = p.expires_at, token = l.token + 1
    FROM p
   WHERE l.name = p.name
     AND (l.expires_at IS NULL OR l.expires_at < clock_timestamp() OR l.locked_by = p.owner)
  RETURNING l.token),
ins AS (
  INSERT INTO database_locks_lock (name, locked_by, expires_at, token)
  SELECT p.name, p.owner, p.expires_at, 1 FROM p
   WHERE NOT EXISTS (SELECT 1 FROM database_locks_lock l WHERE l.name = p.name)
  ON CONFLICT (name) DO NOTHING
  RETURNING token)
SELECT true AS acquired, token, CAST(NULL AS text) AS holder, CAST(NULL AS float8) AS expires_in FROM upd
UNION ALL
SELECT true, token, NULL, NULL FROM ins
UNION ALL
SELECT false, l.token, l.locked_by,
       CAST(EXTRACT(EPOCH FROM l.expires_at - clock_timestamp()) AS float8)
  FROM database_locks_lock l, p
 WHERE l.name = p.name AND NOT EXISTS (SELECT 1 FROM upd) AND NOT EXISTS (SELECT 1 FROM ins)";

// A permit of a semaphore (binds: header row, permits, slot rows, owner, ttl in seconds).
// `ready`: the header records these permits and every slot row exists (otherwise outcome
// 2: set up first). `pick` locks one free slot, skipping slots another attempt is taking
// right now, so concurrent attempts take different slots; a slot already this owner's
// comes first (a reclaim). Outcome 1: taken; 0: all held, with the lease that ends first.
const PERMIT: &str = "\
WITH p AS (
  SELECT CAST(? AS varchar) AS header, CAST(? AS bigint) AS permits, CAST(? AS text[]) AS slots,
         CAST(? AS text) AS owner,
         COALESCE(clock_timestamp() + make_interval(secs => ?),
                  TIMESTAMPTZ '9999-01-01 00:00:00+00') AS expires_at),
ready AS (
  SELECT 1 AS ok FROM p
   WHERE EXISTS (SELECT 1 FROM database_locks_lock h WHERE h.name = p.header AND h.token = p.permits)
     AND (SELECT COUNT(*) FROM database_locks_lock s WHERE s.name = ANY (p.slots)) = p.permits),
pick AS (
  SELECT l.id FROM database_locks_lock l, p
   WHERE l.name = ANY (p.slots) AND EXISTS (SELECT 1 FROM ready)
     AND (l.expires_at IS NULL OR l.expires_at < clock_timestamp() OR l.locked_by = p.owner)
   ORDER BY COALESCE(l.locked_by = p.owner, false) DESC, l.expires_at NULLS FIRST
   LIMIT 1
   FOR UPDATE OF l SKIP LOCKED),
upd AS (
  UPDATE database_locks_lock l
     SET locked_by = p.owner, expires_at = p.expires_at, token = l.token + 1
    FROM p, pick
   WHERE l.id = pick.id
  RETURNING l.name, l.token)
SELECT CAST(1 AS bigint) AS outcome, CAST(name AS text) AS name, token, CAST(NULL AS text) AS holder,
       CAST(NULL AS float8) AS expires_in FROM upd
UNION ALL
SELECT 0, NULL, 0, h.locked_by, CAST(EXTRACT(EPOCH FROM h.expires_at - clock_timestamp()) AS float8)
  FROM (SELECT l.locked_by, l.expires_at FROM database_locks_lock l, p
         WHERE l.name = ANY (p.slots) AND l.expires_at IS NOT NULL
         ORDER BY l.expires_at LIMIT 1) h
 WHERE EXISTS (SELECT 1 FROM ready) AND NOT EXISTS (SELECT 1 FROM upd)
UNION ALL
SELECT 0, NULL, 0, NULL, NULL
 WHERE EXISTS (SELECT 1 FROM ready) AND NOT EXISTS (SELECT 1 FROM upd)
   AND NOT EXISTS (SELECT 1 FROM database_locks_lock l, p WHERE l.name = ANY (p.slots) AND l.expires_at IS NOT NULL)
UNION ALL
SELECT 2, NULL, 0, NULL, NULL WHERE NOT EXISTS (SELECT 1 FROM ready)";

// Setting a semaphore up, in one transaction: the header row (binds: header, permits,
// header), locked while the setup runs; ...
const PERMITS_HEADER: &str = "\
INSERT INTO database_locks_lock (name, locked_by, expires_at, token)
SELECT CAST(? AS varchar), NULL, NULL, ? WHERE NOT EXISTS (SELECT 1 FROM database_locks_lock WHERE name = ?)
ON CONFLICT (name) DO NOTHING";

const PERMITS_READ: &str = "SELECT token AS n FROM database_locks_lock WHERE name = ? FOR UPDATE";

// ... how many slots of the recorded setup are held (binds: slot rows) ...
const PERMITS_LIVE: &str = "\
SELECT COUNT(*) AS n FROM database_locks_lock
 WHERE name = ANY (CAST(? AS text[])) AND expires_at >= clock_timestamp()";

// ... the new number of permits (binds: permits, header) ...
const PERMITS_SET: &str = "UPDATE database_locks_lock SET token = ? WHERE name = ?";

// ... and the slot rows that are missing, released (binds: slot rows). Slots of a larger
// earlier setup stay: their tokens must keep growing if it comes back.
const PERMITS_SLOTS: &str = "\
INSERT INTO database_locks_lock (name, locked_by, expires_at, token)
SELECT s, NULL, NULL, 0 FROM unnest(CAST(? AS text[])) s
 WHERE NOT EXISTS (SELECT 1 FROM database_locks_lock l WHERE l.name = s)
ON CONFLICT (name) DO NOTHING";

// Binds: names, owners, tokens, ttls in seconds (arrays of one length). Sorted by name,
// so that two batches lock shared rows in the same order. Returns the position (from 1)
// in the arrays of each lease extended.
const RENEW: &str = "\
UPDATE database_locks_lock l SET expires_at = clock_timestamp() + make_interval(secs => u.ttl)
  FROM unnest(CAST(? AS text[]), CAST(? AS text[]), CAST(? AS bigint[]), CAST(? AS float8[]))
       WITH ORDINALITY AS u(name, owner, token, ttl, n)
 WHERE l.name = u.name AND l.locked_by = u.owner AND l.token = u.token
   AND l.expires_at >= clock_timestamp()
RETURNING u.n";

// `keep_for` NULL makes the new expiry NULL: released, and waiters are told (delivered at
// commit; one message per release, whoever listens).
const RELEASE: &str = "\
WITH r AS (
  UPDATE database_locks_lock SET expires_at = clock_timestamp() + make_interval(secs => ?)
   WHERE name = ? AND locked_by = ? AND token = ?
  RETURNING name, expires_at)
SELECT CAST(COUNT(*) AS bigint) AS n FROM r
  LEFT JOIN LATERAL (SELECT pg_notify('database_locks_lock', r.name) WHERE r.expires_at IS NULL) s ON true";

const NOTIFY: &str =
    "SELECT CAST(1 AS bigint) AS n FROM (SELECT pg_notify('database_locks_lock', ?)) s";

const LISTEN: &str = "LISTEN database_locks_lock";

const UNLISTEN: &str = "UNLISTEN database_locks_lock";

// A fenced transaction's first statement (binds: ttl in seconds, NULL = no expiry, then
// name, owner, token): a row lock taken by a write, so a taker's acquire waits for the
// transaction to end, then re-reads the row and finds it held.
const FENCE: &str = "\
UPDATE database_locks_lock SET expires_at = COALESCE(clock_timestamp() + make_interval(secs => ?), expires_at)
 WHERE name = ? AND locked_by = ? AND token = ? AND expires_at >= clock_timestamp()";

// Its last one, after a transaction that ran past the lease's renewal time: the row has
// been this transaction's since FENCE, so only owner and token are checked.
const FENCE_RENEW: &str = "\
UPDATE database_locks_lock SET expires_at = clock_timestamp() + make_interval(secs => ?)
 WHERE name = ? AND locked_by = ? AND token = ?";

const VERIFY: &str = "\
SELECT COUNT(*) AS n FROM database_locks_lock
 WHERE name = ? AND locked_by = ? AND token = ? AND expires_at >= clock_timestamp()";

const LIST: &str = "\
SELECT name, locked_by, CAST(EXTRACT(EPOCH FROM expires_at - clock_timestamp()) AS float8) AS expires_in, token
  FROM database_locks_lock ORDER BY name";

const LIST_ONE: &str = "\
SELECT name, locked_by, CAST(EXTRACT(EPOCH FROM expires_at - clock_timestamp()) AS float8) AS expires_in, token
  FROM database_locks_lock WHERE name = ?";

const FORCE_RELEASE: &str = "\
UPDATE database_locks_lock SET expires_at = NULL WHERE name = ? AND expires_at IS NOT NULL";

const COLUMNS: &str = "\
SELECT CAST(column_name AS text) AS name FROM information_schema.columns
 WHERE table_schema = current_schema() AND table_name = 'database_locks_lock'";

// Django's DDL (`sqlmigrate database_locks 0001`) plus our token column. The advisory
// lock serialises processes that migrate at the same moment.
const MIGRATE: &str = "\
SELECT pg_advisory_xact_lock(4660204372412061541);
CREATE TABLE IF NOT EXISTS database_locks_lock (
  id integer NOT NULL PRIMARY KEY GENERATED BY DEFAULT AS IDENTITY,
  name varchar(255) NOT NULL UNIQUE,
  locked_by text NULL,
  expires_at timestamp with time zone NULL,
  token bigint NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS database_locks_lock_name_b8cfc81a_like
  ON database_locks_lock (name varchar_pattern_ops);
ALTER TABLE database_locks_lock ADD COLUMN IF NOT EXISTS token bigint NOT NULL DEFAULT 0;";

/// The channel a release notifies and listeners listen on, named after the table. The
/// payload is the lock's name.
const CHANNEL: &str = "database_locks_lock";

/// Initialises OpenSSL, once per process, the way libpq would but without registering
/// `OPENSSL_cleanup` to run at exit (`OPENSSL_INIT_NO_ATEXIT`, in `openssl_sys::init`).
/// That cleanup frees OpenSSL's global state while the process's other threads keep
/// running: an r2d2 worker, a renewal or listener thread, or an application thread in a
/// TLS handshake with PostgreSQL at that moment then crashed the process on its way out
/// (SIGSEGV in `CRYPTO_THREAD_read_lock`, issue 11). Whichever call initialises OpenSSL
/// first decides, so this must run before libpq's first connection; libpq's own call
/// (`OPENSSL_init_ssl(OPENSSL_INIT_LOAD_CONFIG)`) still loads the configuration after it.
/// The operating system reclaims what the cleanup would have freed.
pub(crate) fn init_tls() {
    openssl_sys::init();
}

/// `ttl` in seconds for SQL, `None` for no expiry.
fn ttl_secs(ttl: Option<Duration>) -> Option<f64> {
    ttl.map(|t| t.as_secs_f64())
}

#[derive(QueryableByName)]
struct AttemptRow {
    #[diesel(sql_type = Bool)]
    acquired: bool,
    #[diesel(sql_type = BigInt)]
    token: i64,
    #[diesel(sql_type = Nullable<Text>)]
    holder: Option<String>,
    #[diesel(sql_type = Nullable<Double>)]
    expires_in: Option<f64>,
}

fn attempt_from(row: Option<AttemptRow>) -> Attempt {
    match row {
        Some(row) if row.acquired => Attempt::Acquired { token: row.token },
        Some(row) => Attempt::Held {
            holder: row.holder,
            expires_in: row
                .expires_in
                .and_then(|s| Duration::try_from_secs_f64(s.max(0.0)).ok()),
        },
        None => Attempt::Held {
            holder: None,
            expires_in: None,
        },
    }
}

#[derive(QueryableByName)]
struct PermitAttemptRow {
    #[diesel(sql_type = BigInt)]
    outcome: i64,
    #[diesel(sql_type = Nullable<Text>)]
    name: Option<String>,
    #[diesel(sql_type = BigInt)]
    token: i64,
    #[diesel(sql_type = Nullable<Text>)]
    holder: Option<String>,
    #[diesel(sql_type = Nullable<Double>)]
    expires_in: Option<f64>,
}

impl super::sealed::Sealed for PgConnection {}

impl LockConnection for PgConnection {
    const KIND: BackendKind = BackendKind::Postgres;

    fn migrate(&mut self) -> QueryResult<Migration> {
        // Checked first so that an up-to-date table takes no DDL lock.
        let before = self.columns()?;
        if before.iter().any(|c| c == "token") {
            return Ok(Migration::UpToDate);
        }
        self.transaction(|conn| conn.batch_execute(MIGRATE))?;
        Ok(migration_outcome(&before))
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
        let binds = [
            Bind::Text(name),
            Bind::Text(owner),
            Bind::Double(ttl_secs(ttl)),
        ];
        let rows: Vec<AttemptRow> = Stmt::new(ACQUIRE, &binds).load(self)?;
        Ok(attempt_from(rows.into_iter().next()))
    }

    fn try_acquire_permit(
        &mut self,
        semaphore: &Semaphore,
        owner: &str,
        ttl: Option<Duration>,
    ) -> QueryResult<Attempt> {
        let slots: Vec<&str> = semaphore.slots.iter().map(String::as_str).collect();
        let binds = [
            Bind::Text(&semaphore.header),
            Bind::BigInt(i64::from(semaphore.permits)),
            Bind::TextArray(&slots),
            Bind::Text(owner),
            Bind::Double(ttl_secs(ttl)),
        ];
        let rows: Vec<PermitAttemptRow> = Stmt::new(PERMIT, &binds).load(self)?;
        Ok(match rows.into_iter().next() {
            Some(PermitAttemptRow {
                outcome: 1,
                name: Some(row),
                token,
                ..
            }) => Attempt::Permit { row, token },
            Some(PermitAttemptRow { outcome: 2, .. }) => Attempt::SetupNeeded,
            Some(row) => Attempt::Held {
                holder: row.holder,
                expires_in: row
                    .expires_in
                    .and_then(|s| Duration::try_from_secs_f64(s.max(0.0)).ok()),
            },
            None => Attempt::Held {
                holder: None,
                expires_in: None,
            },
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
                let old = semaphore.slots_of(recorded);
                let old: Vec<&str> = old.iter().map(String::as_str).collect();
                let live: Vec<Count> =
                    Stmt::new(PERMITS_LIVE, &[Bind::TextArray(&old)]).load(conn)?;
                if live.first().is_some_and(|c| c.n > 0) {
                    return Ok(Some(recorded));
                }
                Stmt::new(PERMITS_SET, &[Bind::BigInt(permits), header]).execute(conn)?;
            }
            let slots: Vec<&str> = semaphore.slots.iter().map(String::as_str).collect();
            Stmt::new(PERMITS_SLOTS, &[Bind::TextArray(&slots)]).execute(conn)?;
            Ok(None)
        })
    }

    fn renew(&mut self, leases: &[(Lease<'_>, Duration)]) -> QueryResult<Vec<bool>> {
        // Positions in `leases`, in name order.
        let mut order: Vec<usize> = (0..leases.len()).collect();
        order.sort_by(|&a, &b| leases[a].0.name.cmp(leases[b].0.name));
        let names: Vec<&str> = order.iter().map(|&i| leases[i].0.name).collect();
        let owners: Vec<&str> = order.iter().map(|&i| leases[i].0.owner).collect();
        let tokens: Vec<i64> = order.iter().map(|&i| leases[i].0.token).collect();
        let ttls: Vec<f64> = order.iter().map(|&i| leases[i].1.as_secs_f64()).collect();
        let binds = [
            Bind::TextArray(&names),
            Bind::TextArray(&owners),
            Bind::BigIntArray(&tokens),
            Bind::DoubleArray(&ttls),
        ];
        let rows: Vec<Count> = Stmt::new(RENEW, &binds).load(self)?;
        let mut renewed = vec![false; leases.len()];
        for row in rows {
            let position = usize::try_from(row.n - 1).ok().and_then(|n| order.get(n));
            if let Some(slot) = position.and_then(|&i| renewed.get_mut(i)) {
                *slot = true;
            }
        }
        Ok(renewed)
    }

    fn release(&mut self, lease: Lease<'_>, keep_for: Option<Duration>) -> QueryResult<bool> {
        let binds = [
            Bind::Double(ttl_secs(keep_for)),
            Bind::Text(lease.name),
            Bind::Text(lease.owner),
            Bind::BigInt(lease.token),
        ];
        let rows: Vec<Count> = Stmt::new(RELEASE, &binds).load(self)?;
        Ok(rows.first().is_some_and(|c| c.n > 0))
    }

    fn fence(&mut self, lease: Lease<'_>, ttl: Option<Duration>) -> QueryResult<bool> {
        let binds = [
            Bind::Double(ttl_secs(ttl)),
            Bind::Text(lease.name),
            Bind::Text(lease.owner),
            Bind::BigInt(lease.token),
        ];
        Stmt::new(FENCE, &binds).execute(self).map(super::matched)
    }

    fn fence_renew(&mut self, lease: Lease<'_>, ttl: Duration) -> QueryResult<bool> {
        let binds = [
            Bind::Double(ttl_secs(Some(ttl))),
            Bind::Text(lease.name),
            Bind::Text(lease.owner),
            Bind::BigInt(lease.token),
        ];
        Stmt::new(FENCE_RENEW, &binds)
            .execute(self)
            .map(super::matched)
    }

    fn notify(&mut self, payload: &str) -> QueryResult<()> {
        let _: Vec<Count> = Stmt::new(NOTIFY, &[Bind::Text(payload)]).load(self)?;
        Ok(())
    }

    fn listen(&mut self) -> QueryResult<bool> {
        // The simple protocol: nothing is prepared for it.
        self.batch_execute(LISTEN)?;
        Ok(true)
    }

    fn notifications(&mut self) -> QueryResult<Vec<String>> {
        let mut names = Vec::new();
        for notification in self.notifications_iter() {
            let notification = notification?;
            if notification.channel == CHANNEL {
                names.push(notification.payload);
            }
        }
        Ok(names)
    }

    fn unlisten(&mut self) -> QueryResult<()> {
        self.batch_execute(UNLISTEN)
    }

    super::lease_queries!(
        verify: VERIFY,
        list: LIST,
        list_one: LIST_ONE,
        force_release: FORCE_RELEASE,
    );

    fn transient_message(message: &str) -> bool {
        let m = message.to_ascii_lowercase();
        [
            "deadlock detected",
            "could not serialize",
            "terminating connection",
            "server closed the connection",
            "no connection to the server",
            "could not connect",
            "connection refused",
            "the database system is",
            "lock timeout",
            "could not receive data",
            "could not send data",
            "ssl syscall",
        ]
        .iter()
        .any(|needle| m.contains(needle))
    }

    fn missing_table_message(message: &str) -> bool {
        message.contains("database_locks_lock")
            && message.contains("does not exist")
            && message.starts_with("relation")
    }
}
