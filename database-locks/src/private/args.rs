//! The values `#[locked(...)]` arguments may take, each converted at the call: a trait per
//! kind of argument, whose `on_unimplemented` message says what is accepted.

use core::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;

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
