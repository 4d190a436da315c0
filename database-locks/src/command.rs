//! [`Command`]: a program's work as a value, the counterpart of Django's `BaseCommand`.

use std::error::Error as StdError;
use std::process::ExitCode;

/// A command-line program's work: a struct holding its arguments (typically parsed by
/// clap) whose [`handle`](Self::handle) does the work, the counterpart of a Django
/// management command (`BaseCommand`).
///
/// With [`#[locked]`](crate::locked) on the impl, `handle` runs under a database lock named
/// `<module path>::<Type>`, so copies of the program started on many hosts take turns,
/// as `@locked` on a Django command does. A binary runs a command in one line with
/// [`execute`](Self::execute), which reports an error (the lock's or the command's own)
/// and turns it into the exit status:
///
/// ```no_run
/// use std::process::ExitCode;
/// use database_locks::{locked, Command};
///
/// /// Rebuilds the search index; one host at a time.
/// struct Reindex {
///     index: String, // with clap: `#[derive(clap::Parser)]` and `Reindex::parse()`
/// }
///
/// #[locked(lock_ttl = 60)] // lock "<crate>::Reindex", renewed while `handle` runs
/// impl Command for Reindex {
///     type Error = Box<dyn std::error::Error + Send + Sync>;
///
///     fn handle(&mut self) -> Result<(), Self::Error> {
///         println!("Got the lock, reindexing {}", self.index);
///         Ok(())
///     }
/// }
///
/// fn main() -> ExitCode {
///     Reindex { index: "products".into() }.execute()
/// }
/// ```
///
/// When the lock cannot be taken (another host holds it past the `timeout`, or at once
/// with `retry = None`), `handle` returns the lock error converted into
/// [`Self::Error`](Self::Error), so the error type must implement
/// `From<database_locks::Error>` (a compile error says so otherwise); `execute` then
/// prints it and exits with status 1, as the seed's command exits on its `LockException`.
/// Without `#[locked]`, a `Command` is just a command: nothing is locked.
///
/// [`Error::is_contention`](crate::Error::is_contention) tells "someone else holds it"
/// from other failures, for a `main` that wants to exit quietly in that case.
pub trait Command {
    /// What `handle` fails with. With `#[locked]` on the impl it must also implement
    /// `From<database_locks::Error>`, so the lock's failures fit in it.
    type Error: Into<Box<dyn StdError + Send + Sync>>;

    /// Does the work; under the lock when the impl has `#[locked]`.
    fn handle(&mut self) -> Result<(), Self::Error>;

    /// Runs [`handle`](Self::handle) and turns the outcome into an exit status: success,
    /// or the error and each of its causes printed to stderr and status 1.
    ///
    /// ```no_run
    /// # use database_locks::Command;
    /// # struct Reindex;
    /// # impl Command for Reindex {
    /// #     type Error = database_locks::Error;
    /// #     fn handle(&mut self) -> Result<(), Self::Error> { Ok(()) }
    /// # }
    /// fn main() -> std::process::ExitCode {
    ///     Reindex.execute()
    /// }
    /// ```
    fn execute(mut self) -> ExitCode
    where
        Self: Sized,
    {
        match self.handle() {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("{}", report(&*error.into()));
                ExitCode::FAILURE
            }
        }
    }
}

/// `error: <message>` and a `caused by: <source>` line per cause.
fn report(error: &(dyn StdError + 'static)) -> String {
    let mut text = format!("error: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!("\n  caused by: {cause}"));
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(Inner);
    #[derive(Debug)]
    struct Inner;
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("could not reindex")
        }
    }
    impl std::fmt::Display for Inner {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("disk full")
        }
    }
    impl StdError for Outer {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }
    impl StdError for Inner {}

    #[test]
    fn report_lists_the_causes() {
        assert_eq!(
            report(&Outer(Inner)),
            "error: could not reindex\n  caused by: disk full"
        );
    }

    struct Fails;
    impl Command for Fails {
        type Error = String;
        fn handle(&mut self) -> Result<(), String> {
            Err("no".into())
        }
    }

    struct Works(u32);
    impl Command for Works {
        type Error = String;
        fn handle(&mut self) -> Result<(), String> {
            self.0 += 1;
            Ok(())
        }
    }

    #[test]
    fn execute_maps_the_outcome_to_the_exit_status() {
        assert_eq!(Works(0).execute(), ExitCode::SUCCESS);
        assert_eq!(Fails.execute(), ExitCode::FAILURE);
    }
}
