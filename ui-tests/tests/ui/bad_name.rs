use database_locks::locked;

#[locked("")]
fn empty() {}

#[locked("nul\0inside")]
fn nul() {}

fn main() {}
