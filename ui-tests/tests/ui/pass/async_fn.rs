//! `#[locked]` on `async fn`: free, generic, methods, a trait impl whose futures must be
//! `Send`, an inherent impl naming its fns, `guard = name` (the docs' `ingest`). Each
//! future is `Send` (checked with `tokio::spawn`'s bound), so it can be spawned.
#![deny(unused_braces)] // the body's own braces stay, and draw no lint
use std::future::Future;

use database_locks::{locked, LockGuard};

#[derive(Debug)]
pub struct MailError;

impl From<database_locks::Error> for MailError {
    fn from(_: database_locks::Error) -> Self {
        MailError
    }
}

#[locked]
async fn nightly_report() {}

#[locked]
async fn one_line() -> u32 { 1 + 1 }

#[locked("billing-run", timeout = 30, lock_ttl = 60, auto_renew, retry = 0.5)]
async fn billing(amount: u64) -> Result<u64, MailError> {
    std::future::ready(()).await;
    Ok(amount)
}

#[locked(name = format!("tenant-{tenant}"))]
async fn per_tenant(tenant: u32) -> anyhow_like::Result<u32> {
    Ok(tenant)
}

#[locked]
async fn generic<T: Default + Send>() -> T {
    T::default()
}

#[locked]
async fn displayed() -> impl std::fmt::Display + Send {
    42
}

pub struct Mailer {
    queue: Vec<String>,
}

impl Mailer {
    #[locked(locked_by = self.owner())]
    async fn push(&mut self, message: String) -> Result<(), MailError> {
        std::future::ready(()).await;
        self.queue.push(message);
        Ok(())
    }

    #[locked]
    async fn flush(&self) -> usize {
        self.queue.len()
    }

    #[locked]
    async fn into_queue(self) -> Vec<String> {
        self.queue
    }

    fn owner(&self) -> String {
        "mailer".to_owned()
    }
}

pub trait Job {
    fn run(&self) -> impl Future<Output = Result<usize, MailError>> + Send;
}

impl Job for Mailer {
    #[locked(timeout = 5)]
    async fn run(&self) -> Result<usize, MailError> {
        Ok(self.queue.len())
    }
}

pub struct Registry;

#[locked]
impl Registry {
    #[locked]
    async fn purge() -> Result<(), MailError> {
        Ok(())
    }
}

#[locked("ledger", guard = lock)]
async fn watched() -> Result<Option<u64>, MailError> {
    let held: &LockGuard = lock;
    let _lost = held.lost();
    std::future::ready(()).await;
    Ok(lock.token())
}

/// The example of the docs (`locked.md`).
pub struct Batch(Vec<u32>);

#[derive(Debug)]
pub enum IngestError {
    Lock(database_locks::Error),
    Lost(database_locks::LostLock),
    Store(std::io::Error),
}

impl From<database_locks::Error> for IngestError {
    fn from(error: database_locks::Error) -> Self {
        IngestError::Lock(error)
    }
}

impl From<std::io::Error> for IngestError {
    fn from(error: std::io::Error) -> Self {
        IngestError::Store(error)
    }
}

async fn store(batch: Batch) -> std::io::Result<usize> {
    Ok(batch.0.len())
}

#[locked("ingest", timeout = 30, lock_ttl = 60, guard = lock)]
async fn ingest(batch: Batch) -> Result<usize, IngestError> {
    tokio::select! {
        rows = store(batch) => Ok(rows?),
        lost = lock.lost() => Err(IngestError::Lost(lost)), // stop before the lease ends
    }
}

mod anyhow_like {
    pub type Result<T> = core::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;
}

fn spawnable<F: Future + Send + 'static>(_: F) {}

fn main() {
    spawnable(nightly_report());
    spawnable(one_line());
    spawnable(billing(1));
    spawnable(per_tenant(2));
    spawnable(generic::<u8>());
    spawnable(displayed());
    spawnable(async {
        let mut mailer = Mailer { queue: Vec::new() };
        let _ = mailer.push("hi".into()).await;
        let _ = mailer.flush().await;
        let _ = mailer.run().await;
        mailer.into_queue().await
    });
    spawnable(Registry::purge());
    spawnable(watched());
    spawnable(ingest(Batch(vec![1, 2])));
}
