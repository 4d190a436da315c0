use database_locks::locked;

#[locked("nightly", name = "nightly-report")]
fn report() {}

fn main() {}
