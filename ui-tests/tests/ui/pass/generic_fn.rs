//! `#[locked]` on generic fns: generics, lifetimes, where clauses and `impl Trait` stay.
use std::fmt::Display;

use database_locks::locked;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[locked]
pub fn render<'a, T: Display + ?Sized, const N: usize>(
    value: &'a T,
    out: &mut String,
) -> Result<&'a T, BoxError>
where
    T: Sync,
{
    for _ in 0..N {
        out.push_str(&value.to_string());
    }
    Ok(value)
}

/// The error type is generic: the bound says it can hold the lock error.
#[locked(timeout = 1)]
fn convert<E>(input: &str) -> Result<usize, E>
where
    E: From<database_locks::Error> + From<std::num::ParseIntError>,
{
    Ok(input.parse()?)
}

#[locked]
fn numbers(limit: u32) -> impl Iterator<Item = u32> {
    0..limit
}

#[locked]
fn boxed(label: impl Into<String>) -> Result<impl Display, BoxError> {
    Ok(label.into())
}

#[locked]
fn first<T: Clone>(items: &[T]) -> Option<T> {
    items.first().cloned()
}

fn main() {
    let _ = render::<str, 2>;
    let _ = convert::<BoxError>;
    let _ = (numbers, first::<u8>);
    if false {
        let _ = boxed("label");
    }
}
