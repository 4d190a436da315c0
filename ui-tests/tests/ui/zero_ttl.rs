use database_locks::locked;

#[locked(lock_ttl = 0)]
fn report() {}

fn main() {}
