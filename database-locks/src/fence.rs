//! Fenced transactions: writes that commit only while the lock is held.
//!
//! The transaction's first statement writes the lock's row, and only if the row still
//! carries the guard's owner and token and a live lease by the database's clock. From
//! there to the commit the transaction holds the row, so a taker waits for it (PostgreSQL,
//! MySQL; SQLite's `BEGIN IMMEDIATE` holds off every writer of the file), or one of the two
//! fails certification (Galera). See DESIGN.md, "Fenced transactions".

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use diesel::result::Error as DieselError;

use crate::backend::{classify, Failure, Lease, LockConnection};
use crate::error::Error;
use crate::guard::LockGuard;
use crate::lease::LeaseState;
use crate::renewer::FencePause;

impl LockGuard {
    /// Runs `f` in one transaction on `conn` that commits only while this guard holds the
    /// lock: a *fenced* transaction.
    ///
    /// The transaction's first statement renews the lease in the lock's row, and only if
    /// the row still carries this guard's owner and token and the lease has not ended by the
    /// database's clock. Otherwise `f` does not run, nothing is written, and the call returns
    /// [`Error::Fenced`]. From that statement to the commit nobody can take the lock: a
    /// taker waits for the transaction to end (on Galera, one of the two fails
    /// certification), so `f`'s writes come before any later holder's, even when this
    /// process pauses (a GC or VM pause, `SIGSTOP`) for longer than the lease anywhere
    /// along the way.
    ///
    /// - `conn` must be a connection to the database that holds the lock table (a pooled
    ///   connection works: pass `&mut *pooled`). On a connection that cannot see the lock's
    ///   row the call returns [`Error::WrongDatabase`]. For writes to other systems, check
    ///   [`token`](Self::token) in the write itself (README, "Fenced writes").
    /// - An error from `f` rolls the transaction back, as
    ///   [`diesel::Connection::transaction`] does, and so does a panic (which diesel's
    ///   `transaction` leaves open), before it goes on unwinding; the lock stays held. A transaction that
    ///   ran past the lease's renewal time renews the lease once more before committing.
    ///   While it runs, the guard's auto-renewal of the lease pauses (it would wait for the
    ///   transaction's row lock) and [`is_lost`](Self::is_lost) stays false.
    /// - On SQLite the transaction is `BEGIN IMMEDIATE`: it holds off every writer of the
    ///   file, this crate's acquisitions and renewals included, until it ends.
    /// - On Galera, a taker on another node that commits first makes this transaction
    ///   fail certification: its next statement or its commit returns the driver's error
    ///   1213 ("Deadlock found", a [`diesel::result::Error`] in `E`), and nothing of it
    ///   commits. Keep fenced transactions shorter than the lease there.
    /// - The transaction runs on the caller's thread without the handle's statement
    ///   deadlines; a connection that goes silent is the caller's to bound.
    /// - A connection already inside a transaction is refused with
    ///   [`Error::InvalidInput`] before anything is sent: the fence's row lock would outlive
    ///   the call, until the outer transaction ends.
    /// - With locking disabled ([`Locks::set_enabled`](crate::Locks::set_enabled)) there is
    ///   no lock to check: `f` runs in a plain transaction (`BEGIN IMMEDIATE` on SQLite).
    ///
    /// ```no_run
    /// # #[cfg(feature = "sqlite")] {
    /// use diesel::prelude::*;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut conn = SqliteConnection::establish("app.sqlite3")?;
    /// let guard = database_locks::lock("counter").acquire()?;
    /// guard.transaction(&mut conn, |conn| -> Result<(), Box<dyn std::error::Error>> {
    ///     diesel::sql_query("UPDATE counters SET n = n + 1 WHERE id = 1").execute(conn)?;
    ///     Ok(())
    /// })?;
    /// # Ok(()) }
    /// # }
    /// ```
    pub fn transaction<C, T, E, F>(&self, conn: &mut C, f: F) -> Result<T, E>
    where
        C: LockConnection,
        F: FnOnce(&mut C) -> Result<T, E>,
        E: From<Error> + From<DieselError>,
    {
        if conn.in_transaction()? {
            return Err(Error::invalid(
                "connection",
                "it is already inside a transaction; a fenced transaction must be the \
                 outermost one (its row lock would last until the outer transaction ends)",
            )
            .into());
        }
        let Some((locks, lease)) = self.lease() else {
            return conn.fenced_transaction(f);
        };
        if C::KIND != locks.backend() {
            return Err(self.wrong_database().into());
        }
        let mut pause = FencePause::new(lease, locks.inner_renewer());
        let mut extended = Instant::now();
        let mut panicked = None;
        let outcome = conn.fenced_transaction(|conn| {
            extended = Instant::now();
            match conn.fence(lease.lease(), lease.ttl) {
                Ok(true) => {}
                Ok(false) => return Err(E::from(self.refusal(conn, lease)?)),
                Err(err) if classify::<C>(&err) == Failure::MissingTable => {
                    return Err(self.wrong_database().into())
                }
                Err(err) => return Err(err.into()),
            }
            // diesel's `transaction` does not roll back on a panic: the connection would
            // stay inside the transaction, holding the row (and on SQLite the file's write
            // lock), until it is closed.
            let value = match std::panic::catch_unwind(AssertUnwindSafe(|| f(conn))) {
                Ok(value) => value?,
                Err(payload) => {
                    panicked = Some(payload);
                    return Err(DieselError::RollbackTransaction.into());
                }
            };
            if let Some(ttl) = lease.renewal_due(extended) {
                let sent = Instant::now();
                if !conn.fence_renew(lease.lease(), ttl)? {
                    return Err(E::from(self.refusal(conn, lease)?));
                }
                extended = sent;
            }
            Ok(value)
        });
        if let Some(payload) = panicked {
            drop(pause);
            std::panic::resume_unwind(payload);
        }
        if outcome.is_ok() {
            pause.committed(extended);
        }
        outcome
    }

    fn wrong_database(&self) -> Error {
        Error::WrongDatabase {
            name: self.name().to_owned(),
        }
    }

    /// Why the fence matched no row, as the row seen on `conn` tells.
    fn refusal<C: LockConnection>(
        &self,
        conn: &mut C,
        lease: &LeaseState,
    ) -> Result<Error, DieselError> {
        let Lease { name, token, .. } = lease.lease();
        let Some(row) = conn.list(Some(name))?.into_iter().next() else {
            return Ok(self.wrong_database());
        };
        tracing::warn!(lock = %name, token, current = row.token, "fenced transaction refused");
        Ok(Error::Fenced {
            name: name.to_owned(),
            token: u64::try_from(token).unwrap_or(0),
            current_token: u64::try_from(row.token).unwrap_or(0),
            holder: if row.is_held() { row.locked_by } else { None },
        })
    }
}
