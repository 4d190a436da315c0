use database_locks::locked;

#[locked(timeout = 5, ttl = 60)]
fn report() {}

fn main() {}
