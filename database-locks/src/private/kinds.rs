//! What a failed acquire turns into, chosen from the wrapped fn's return type: the lock
//! error returned through `From` in a `Result`, or a panic. The same for blocking and
//! `async` fns: an `async fn`'s declared return type is its future's output.

use core::fmt;
use core::marker::PhantomData;

use crate::Error;

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
