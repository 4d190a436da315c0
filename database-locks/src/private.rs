//! What `#[locked]` expands to. Not public API: no semver promise holds for anything here;
//! only the macro of the same version calls it.

use core::fmt;
use core::marker::PhantomData;
use core::time::Duration;

pub use crate::LockGuard;
use crate::{Error, LockBuilder, LostLock};

/// `<module>::<Type>::<method>` for a method, with `Type` taken from `type_name::<Self>()`:
/// its last path segment without generic arguments, so that `Wrapper<u8>` and
/// `Wrapper<u16>` share a lock and the name does not depend on the crate path of `Self`.
/// A type that is not a path (a tuple, an array) keeps its whole type name.
pub fn method_lock_name(module: &str, type_name: &str, method: &str) -> String {
    format!("{module}::{}::{method}", type_ident(type_name))
}

fn type_ident(type_name: &str) -> &str {
    let path = type_name.split('<').next().unwrap_or(type_name);
    let last = path.rsplit("::").next().unwrap_or(path);
    let last = last
        .trim_start_matches(['&', '*'])
        .trim_start_matches("mut ")
        .trim_start_matches("const ");
    let last = last.strip_prefix("dyn ").unwrap_or(last);
    if !last.is_empty() && last.chars().all(|c| c == '_' || c.is_alphanumeric()) {
        last
    } else {
        type_name
    }
}

/// The builder `#[locked]` fills in: a [`LockBuilder`] plus the first argument that could
/// not be converted, returned by [`acquire`](Self::acquire) before any SQL runs.
#[derive(Debug)]
pub struct Lock {
    builder: LockBuilder,
    error: Option<Error>,
}

impl Lock {
    /// The lock `name` on the global handle, read at this call.
    pub fn new(name: impl LockName) -> Self {
        Lock {
            builder: crate::lock(name.lock_name()),
            error: None,
        }
    }

    fn set<T>(
        mut self,
        what: &'static str,
        value: Result<T, String>,
        apply: impl FnOnce(LockBuilder, T) -> LockBuilder,
    ) -> Self {
        match value {
            Ok(value) => self.builder = apply(self.builder, value),
            Err(reason) => {
                self.error.get_or_insert(Error::invalid(what, reason));
            }
        }
        self
    }

    /// `timeout = ...`
    pub fn timeout(self, timeout: impl Seconds) -> Self {
        self.set("timeout", timeout.seconds(), LockBuilder::timeout)
    }

    /// `lock_ttl = ...` (`None`: no expiry).
    pub fn lock_ttl(self, ttl: impl MaybeSeconds) -> Self {
        self.set("lock_ttl", ttl.maybe_seconds(), LockBuilder::lock_ttl)
    }

    /// `locked_by = ...` (`None`: the default owner).
    pub fn locked_by(mut self, owner: impl Owner) -> Self {
        if let Some(owner) = owner.owner() {
            self.builder = self.builder.locked_by(owner);
        }
        self
    }

    /// `auto_renew` or `auto_renew = ...`
    pub fn auto_renew(mut self, auto_renew: bool) -> Self {
        self.builder = self.builder.auto_renew(auto_renew);
        self
    }

    /// `retry = ...` (`0` or `None`: one attempt).
    pub fn retry(self, retry: impl MaybeSeconds) -> Self {
        self.set("retry", retry.maybe_seconds(), LockBuilder::retry)
    }

    /// `lock_ttl_renew = ...`
    pub fn lock_ttl_renew(self, margin: impl Seconds) -> Self {
        self.set(
            "lock_ttl_renew",
            margin.seconds(),
            LockBuilder::lock_ttl_renew,
        )
    }

    /// `lost_lock_cb = ...`
    pub fn lost_lock_cb(mut self, callback: impl Fn(&LostLock) + Send + Sync + 'static) -> Self {
        self.builder = self.builder.lost_lock_cb(callback);
        self
    }

    /// `lock_at_least_for = ...`
    pub fn lock_at_least_for(self, duration: impl Seconds) -> Self {
        self.set(
            "lock_at_least_for",
            duration.seconds(),
            LockBuilder::lock_at_least_for,
        )
    }

    /// Takes the lock, or reports the first bad argument.
    pub fn acquire(self) -> Result<LockGuard, Error> {
        match self.error {
            Some(error) => Err(error),
            None => self.builder.pinned_to_thread().acquire(),
        }
    }
}

/// A lock name given as an expression.
#[diagnostic::on_unimplemented(
    message = "a `#[locked]` lock name is a string, not `{Self}`",
    label = "expected `&str`, `String`, `&String`, `Box<str>` or `Cow<str>`"
)]
pub trait LockName {
    /// The name.
    fn lock_name(self) -> String;
}

/// An owner id given to `locked_by`: a string, or an `Option` of one where `None` leaves
/// the default owner (unique per acquisition).
#[diagnostic::on_unimplemented(
    message = "`locked_by` takes a string or an `Option` of one, not `{Self}`",
    label = "expected `&str`, `String`, `&String`, `Box<str>`, `Cow<str>`, or an `Option` of one"
)]
pub trait Owner {
    /// The owner id, if one is given.
    fn owner(self) -> Option<String>;
}

macro_rules! strings {
    ($($string:ty)*) => {$(
        impl LockName for $string {
            fn lock_name(self) -> String {
                self.into()
            }
        }

        impl Owner for $string {
            fn owner(self) -> Option<String> {
                Some(self.into())
            }
        }

        impl Owner for Option<$string> {
            fn owner(self) -> Option<String> {
                self.map(Into::into)
            }
        }
    )*};
}
strings!(String &str &String &mut str Box<str> std::borrow::Cow<'_, str>);

/// A duration argument: seconds as an integer or a float, or a [`Duration`].
#[diagnostic::on_unimplemented(
    message = "`#[locked]` takes a duration as seconds or a `Duration`, not `{Self}`",
    label = "expected an integer or a float (seconds), or a `core::time::Duration`"
)]
pub trait Seconds {
    /// The duration, or why this value is not one.
    fn seconds(self) -> Result<Duration, String>;
}

impl Seconds for Duration {
    fn seconds(self) -> Result<Duration, String> {
        Ok(self)
    }
}

impl Seconds for &Duration {
    fn seconds(self) -> Result<Duration, String> {
        Ok(*self)
    }
}

macro_rules! integer_seconds {
    ($($int:ty)*) => {$(
        impl Seconds for $int {
            fn seconds(self) -> Result<Duration, String> {
                u64::try_from(self)
                    .map(Duration::from_secs)
                    .map_err(|_| format!("{self} seconds is not a duration (it must be 0 or more)"))
            }
        }
    )*};
}
integer_seconds!(u8 u16 u32 u64 u128 usize i8 i16 i32 i64 i128 isize);

macro_rules! float_seconds {
    ($($float:ty)*) => {$(
        impl Seconds for $float {
            fn seconds(self) -> Result<Duration, String> {
                Duration::try_from_secs_f64(f64::from(self)).map_err(|_| {
                    format!("{self} seconds is not a duration (it must be finite and 0 or more)")
                })
            }
        }
    )*};
}
float_seconds!(f32 f64);

/// A duration argument that may be `None` (`lock_ttl`, `retry`).
#[diagnostic::on_unimplemented(
    message = "`#[locked]` takes a duration as seconds, a `Duration` or `None`, not `{Self}`",
    label = "expected an integer or a float (seconds), a `core::time::Duration`, or an `Option` of one"
)]
pub trait MaybeSeconds {
    /// The duration, `None`, or why this value is not one.
    fn maybe_seconds(self) -> Result<Option<Duration>, String>;
}

impl<T: Seconds> MaybeSeconds for T {
    fn maybe_seconds(self) -> Result<Option<Duration>, String> {
        self.seconds().map(Some)
    }
}

impl<T: Seconds> MaybeSeconds for Option<T> {
    fn maybe_seconds(self) -> Result<Option<Duration>, String> {
        self.map(Seconds::seconds).transpose()
    }
}

/// Panics with the lock error: what a fn that cannot return it does, as the seed raises.
#[track_caller]
#[cold]
pub fn lock_failed(error: Error) -> ! {
    panic!("{error}")
}

// Turning the lock error into the return type, by autoref specialization: for a fn
// returning `R`, `(&Ret::<R>::new()).kind()` is `ReturnErr<R>` when `R` is a `Result` whose
// error converts from `Error`, `Panic<R>` otherwise.

/// Stands for the return type `R` of a `#[locked]` fn.
pub struct Ret<R>(PhantomData<fn() -> R>);

impl<R> Ret<R> {
    /// The probe for `R`.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Ret(PhantomData)
    }
}

impl<R> fmt::Debug for Ret<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ret")
    }
}

/// The return type is `Result<T, E>` with `E: From<Error>`: the error is returned.
pub struct ReturnErr<R>(PhantomData<fn() -> R>);

/// Any other return type: the call panics with the error.
pub struct Panic<R>(PhantomData<fn() -> R>);

impl<R> fmt::Debug for ReturnErr<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReturnErr")
    }
}

impl<R> fmt::Debug for Panic<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Panic")
    }
}

/// Chosen first, when it applies.
pub trait ReturnErrKind<R> {
    /// `ReturnErr<R>`.
    fn kind(&self) -> ReturnErr<R> {
        ReturnErr(PhantomData)
    }
}

impl<T, E: From<Error>> ReturnErrKind<Result<T, E>> for Ret<Result<T, E>> {}

/// The fallback, one autoref further.
pub trait PanicKind<R> {
    /// `Panic<R>`.
    fn kind(&self) -> Panic<R> {
        Panic(PhantomData)
    }
}

impl<R> PanicKind<R> for &Ret<R> {}

impl<T, E: From<Error>> ReturnErr<Result<T, E>> {
    /// `Err(E::from(error))`.
    pub fn fail(self, error: Error) -> Result<T, E> {
        Err(E::from(error))
    }

    /// The same, for a return type spelled `Result`.
    pub fn fail_result(self, error: Error) -> Result<T, E> {
        Err(E::from(error))
    }
}

impl<R> Panic<R> {
    /// Panics with the error.
    #[track_caller]
    pub fn fail(self, error: Error) -> R {
        lock_failed(error)
    }

    /// A return type spelled `Result` whose error does not convert: a compile error.
    #[track_caller]
    pub fn fail_result(self, error: Error) -> R
    where
        Self: CarriesLockError<R>,
    {
        lock_failed(error)
    }
}

/// Never implemented for [`Panic`]: a fn returning a `Result` must be able to return the
/// lock error in it.
#[diagnostic::on_unimplemented(
    message = "a `#[locked]` fn returning `{R}` must be able to return the lock error in it",
    label = "the error type of this `Result` does not implement `From<database_locks::Error>`",
    note = "implement `From<database_locks::Error>` for the error type (thiserror: a variant with \
            `#[from] database_locks::Error`), or use an error type that has it, such as \
            `Box<dyn std::error::Error + Send + Sync>` or `anyhow::Error`"
)]
pub trait CarriesLockError<R> {}

impl<R> CarriesLockError<R> for ReturnErr<R> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_use_the_types_own_name() {
        let name = |type_name| method_lock_name("app::jobs", type_name, "flush");
        assert_eq!(name("app::mail::Mailer"), "app::jobs::Mailer::flush");
        assert_eq!(name("app::W<alloc::vec::Vec<u8>>"), "app::jobs::W::flush");
        assert_eq!(name("app::m::P<'_>"), "app::jobs::P::flush");
        assert_eq!(name("&app::Mailer"), "app::jobs::Mailer::flush");
        assert_eq!(name("dyn app::Job"), "app::jobs::Job::flush");
        assert_eq!(name("(u8, u16)"), "app::jobs::(u8, u16)::flush");
    }

    #[test]
    fn durations_from_numbers() {
        assert_eq!(30.seconds(), Ok(Duration::from_secs(30)));
        assert_eq!(0.5.seconds(), Ok(Duration::from_millis(500)));
        assert_eq!(
            Duration::from_millis(7).seconds(),
            Ok(Duration::from_millis(7))
        );
        assert!((-1).seconds().unwrap_err().contains("-1"));
        assert!((-0.5).seconds().is_err());
        assert!(f64::NAN.seconds().is_err());
        assert!(f64::INFINITY.seconds().is_err());
        assert_eq!(None::<u8>.maybe_seconds(), Ok(None));
        assert_eq!(Some(2u64).maybe_seconds(), Ok(Some(Duration::from_secs(2))));
        assert!(Some(-2).maybe_seconds().is_err());
    }

    #[test]
    fn owners_may_be_absent() {
        assert_eq!("w".owner(), Some("w".to_owned()));
        assert_eq!(None::<&str>.owner(), None);
        assert_eq!(Some(String::from("w")).owner(), Some("w".to_owned()));
    }
}
