//! Compile-time behaviour of `#[locked]`: every supported form compiles (`tests/ui/pass`),
//! every misuse fails with the message in its `.stderr` snapshot (`tests/ui`).
//!
//! `TRYBUILD=overwrite cargo test -p database-locks-ui-tests` rewrites the snapshots.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/*.rs");
}
