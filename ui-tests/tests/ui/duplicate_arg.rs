use database_locks::locked;

#[locked(timeout = 5, retry = 1, timeout = 10)]
fn report() {}

fn main() {}
