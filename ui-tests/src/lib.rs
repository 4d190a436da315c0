//! Nothing: this package holds only `tests/compiletest.rs` and its cases in `tests/ui`.
