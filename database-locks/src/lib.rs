//! Distributed locks stored as rows in the database you already run: PostgreSQL,
//! MySQL/MariaDB or SQLite. A Rust port of the Python package django-database-locks,
//! sharing its table, so Rust and Django processes can lock each other out.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), database_locks::Error> {
//! let guard = database_locks::lock("nightly-report")
//!     .timeout(Duration::from_secs(30))
//!     .lock_ttl(Some(Duration::from_secs(60)))
//!     .acquire()?;
//! println!("fencing token {:?}", guard.token());
//! // ... exactly one process at a time gets here ...
//! guard.release()?; // dropping the guard releases too
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! Each lock is one row of the table `database_locks_lock` (`name`, `locked_by`,
//! `expires_at`, `token`). Acquire takes the row if it is missing, released
//! (`expires_at` NULL), expired, or already carries the caller's owner id, and writes a
//! new owner, a new expiry and a new fencing token, in one statement where the backend
//! allows it. Every time comes from the database server's clock. While a guard lives, a
//! per-handle thread renews the lease; a renewal that finds another owner, or that cannot
//! reach the database before the lease ends, marks the lock lost *before* the lease ends
//! and calls `lost_lock_cb`. **By default a lost lock ends the process** (exit status
//! [`LOST_LOCK_EXIT_CODE`]), like the seed raising in the main thread; pass
//! [`LockBuilder::lost_lock_cb`] to handle it yourself. See `DESIGN.md` for the SQL.
//!
//! # Features
//!
//! - `sqlite` (default): bundled SQLite, no server or system library needed.
//! - `postgres`: PostgreSQL through libpq. The first [`Locks`] initialises OpenSSL (through
//!   `openssl-sys`, the system's library that libpq uses) without its exit-time cleanup,
//!   which crashed processes that exited while a thread was opening a TLS connection.
//!   Create it before the application's own first PostgreSQL connection: OpenSSL settles
//!   this at its first initialisation.
//! - `mysql`: MySQL and MariaDB through libmysqlclient.
//! - `metrics`: counters, gauges and histograms through the [`metrics`](https://docs.rs/metrics) facade, for any
//!   exporter (Prometheus, StatsD, OpenTelemetry); the README lists them. Off by default,
//!   and without it no metric code is compiled.
//!
//! # Logs and spans
//!
//! The crate reports through [`tracing`]: `debug` spans `acquire` (fields `lock`, `owner`,
//! and once it ends `outcome`, `token`, `wait_seconds`), `renew` (one per renewal statement:
//! `leases`, and the first lease's `lock` and `owner`) and `release` (`lock`, `owner`,
//! `token`, `outcome`); a lost lock is a `warn` event. Any subscriber shows them, e.g.
//! `tracing_subscriber::fmt().with_max_level(tracing::Level::DEBUG).init()`
//! (`examples/tracing.rs`).
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod acquire;
mod backend;
mod builder;
mod channel;
mod command;
mod config;
mod error;
mod fence;
mod guard;
mod leader;
mod lease;
mod local;
mod locks;
mod notify;
mod observe;
mod offload;
mod releaser;
mod renewer;
mod status;
mod stmt;
mod timer;

pub use backend::{LockConnection, LockInfo, Migration, SemaphoreRow, SEPARATOR};
pub use builder::{LockBuilder, DEFAULT_RETRY, MAX_NAME_CHARS, MAX_PERMITS, MAX_TTL};
pub use command::Command;
pub use config::{BackendKind, Config, DEFAULT_SQLITE_FILE, DEFAULT_STATEMENT_TIMEOUT};
pub use database_locks_macros::locked;
pub use error::{Error, Result};
pub use guard::{LockGuard, Permit};
pub use leader::{Demotion, DemotionCause, Leader, LeaderBuilder, Term};
pub use lease::{LossCause, LostLock, LOST_LOCK_EXIT_CODE};
pub use locks::{configure, global, leader, lock, semaphore, set_global, Locks};

// What `#[locked]` expands to; exempt from semver.
#[doc(hidden)]
#[path = "private/mod.rs"]
pub mod __private;
