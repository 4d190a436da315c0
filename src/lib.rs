//! The workspace's top-level package: integration tests (`tests/`), examples
//! (`examples/`) and the helper binary multi-process tests spawn. Never published.
//!
//! The README's examples run as doctests of this crate.
#![doc = include_str!("../README.md")]
