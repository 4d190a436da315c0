use database_locks::locked;

#[locked(timeout = 5 retry = 1)]
fn report() {}

fn main() {}
