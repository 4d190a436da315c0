//! `#[locked]` on free fns, with every argument form.
#![deny(unused_braces)] // the body's own braces stay, and draw no lint
use std::time::Duration;

use database_locks::{locked, LostLock};

#[derive(Debug)]
pub enum ReportError {
    Lock(database_locks::Error),
    Empty,
}

impl From<database_locks::Error> for ReportError {
    fn from(error: database_locks::Error) -> Self {
        ReportError::Lock(error)
    }
}

/// `std::io::Result` carries the lock error too (`From<Error> for io::Error`).
#[locked]
fn read_spool() -> std::io::Result<Vec<u8>> {
    Ok(Vec::new())
}

/// Docs and attributes stay on the fn.
#[locked]
#[inline]
pub fn nightly_report() -> Result<(), ReportError> {
    Ok(())
}

#[locked("billing-run", timeout = 30, lock_ttl = 60, auto_renew, retry = 0.5)]
fn billing() -> Result<u64, ReportError> {
    Ok(42)
}

fn on_lost(lost: &LostLock) {
    eprintln!("{lost}");
}

#[locked(
    name = "every-argument",
    timeout = Duration::from_secs(5),
    lock_ttl = None,
    locked_by = format!("worker-{worker}"),
    auto_renew = false,
    retry = None,
    lock_ttl_renew = 1.5,
    lost_lock_cb = on_lost,
    lock_at_least_for = Duration::from_millis(250),
)]
fn every_argument(worker: u32) -> Result<u32, ReportError> {
    Ok(worker)
}

#[locked(retry = 0, lock_ttl = Some(30u64), timeout = 0, lost_lock_cb = |lost: &LostLock| eprintln!("{lost}"))]
fn try_once() {}

/// A name and an owner computed at each call, from the arguments.
#[locked(name = format!("sync-{tenant}"), locked_by = owner)]
fn sync(tenant: &str, owner: Option<&str>) -> Result<(), ReportError> {
    let _ = tenant;
    Ok(())
}

const REPORT_LOCK: &str = "report";

#[locked(name = REPORT_LOCK, locked_by = String::from("reporter"))]
fn report() {}

/// `?` and `return` in the body keep their meaning.
#[locked]
fn early_return(input: Option<u32>) -> Result<u32, ReportError> {
    let Some(value) = input else {
        return Err(ReportError::Empty);
    };
    let parsed: u32 = "7".parse().map_err(|_| ReportError::Empty)?;
    Ok(value + parsed)
}

/// Values computed at run time.
#[locked(timeout = seconds, lock_ttl = ttl, retry = retry)]
fn runtime_values(seconds: f64, ttl: Option<Duration>, retry: Option<u32>) -> u8 {
    1
}

#[locked]
unsafe fn unsafe_fn() {}

#[locked]
fn never() -> ! {
    panic!("never returns")
}

#[locked]
fn r#type() {}

/// Inner attributes stay at the top of the body.
#[locked]
fn inner_attribute() -> u32 {
    #![allow(clippy::let_and_return)]
    let value = 1;
    value
}

/// Items declared in the body stay visible in it.
#[locked]
fn nested_items() -> u32 {
    const BASE: u32 = 40;
    fn two() -> u32 {
        2
    }
    BASE + two()
}

#[locked]
fn one_line() -> u32 { 1 + 1 }

fn main() {
    let _ = (
        one_line,
        nightly_report,
        read_spool,
        billing,
        every_argument,
        try_once,
        early_return,
        runtime_values,
    );
    let _ = (sync, report);
    let _ = (unsafe_fn as unsafe fn(), never as fn() -> !, r#type);
    let _ = (inner_attribute, nested_items);
}
