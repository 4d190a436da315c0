//! The `#[locked]` attribute of [`database-locks`](https://docs.rs/database-locks).
//!
//! Use it through `database_locks::locked`: the runtime crate re-exports it at the exact
//! same version, and the generated code calls into that crate.
#![warn(missing_docs, rust_2018_idioms)]

mod attr;
mod expand;

use proc_macro::TokenStream;

#[doc = include_str!("locked.md")]
#[proc_macro_attribute]
pub fn locked(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::locked(args.into(), item.into()).into()
}
