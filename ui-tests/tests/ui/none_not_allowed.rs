use database_locks::locked;

#[locked(timeout = None)]
fn report() {}

fn main() {}
