//! What `run -v` says on stderr: the acquisition (fencing token, end of the lease), each
//! renewal the tool's check sees, the release.

use database_locks::{LockGuard, Locks};

use crate::format;
use crate::report::chain;

/// How the lines name a held lease: `lock "x" (token 7)`, `permit 2 of semaphore "x"
/// (token 7)`; `None` when locking is disabled.
pub fn lease(guard: &LockGuard) -> Option<String> {
    let token = guard.token()?;
    let name = guard.name();
    Some(match guard.permit() {
        Some(permit) => format!(
            "permit {} of semaphore {name:?} (token {token})",
            permit.slot
        ),
        None => format!("lock {name:?} (token {token})"),
    })
}

/// `acquired lock "x" (token 7) as owner "o"; the lease ends in 3.0s`, read from the row
/// (the guard does not know the end the database wrote).
pub fn acquired(locks: &Locks, guard: &LockGuard, lease: &str) -> String {
    let owner = guard.locked_by().unwrap_or("?");
    let row = guard
        .permit()
        .map_or_else(|| guard.name().to_owned(), |p| p.row);
    let token = guard.token().and_then(|t| i64::try_from(t).ok());
    let end = match locks.inspect(&row) {
        Ok(Some(info)) if Some(info.token) == token => match info.expires_in {
            Some(left) => ends(left),
            None => "the lease was already cleared".to_owned(),
        },
        Ok(_) => "the row already carries another token".to_owned(),
        Err(err) => format!("cannot read when the lease ends: {}", chain(&err)),
    };
    format!("acquired {lease} as owner {owner:?}; {end}")
}

/// `renewed lock "x" (token 7); the lease now ends in 3.0s`.
pub fn renewed(lease: &str, expires_in: f64) -> String {
    format!(
        "renewed {lease}; {}",
        ends(expires_in).replacen("ends", "now ends", 1)
    )
}

/// `released lock "x" (token 7)`.
pub fn released(lease: &str) -> String {
    format!("released {lease}")
}

/// When the lease ends, by the database's clock.
fn ends(left: f64) -> String {
    if left.is_infinite() {
        "the lease never ends (--ttl none)".to_owned()
    } else if left >= 0.0 {
        format!("the lease ends in {}", format::seconds(left))
    } else {
        format!("the lease ended {} ago", format::seconds(left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_say_when_the_lease_ends() {
        assert_eq!(
            renewed("lock \"x\" (token 7)", 2.96),
            "renewed lock \"x\" (token 7); the lease now ends in 3.0s"
        );
        assert_eq!(
            released("lock \"x\" (token 7)"),
            "released lock \"x\" (token 7)"
        );
        assert_eq!(ends(f64::INFINITY), "the lease never ends (--ttl none)");
        assert_eq!(ends(-1.0), "the lease ended 1.0s ago");
    }
}
