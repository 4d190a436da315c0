use database_locks::locked;

#[locked(guard = a, guard = b)]
fn report() {}

fn main() {}
