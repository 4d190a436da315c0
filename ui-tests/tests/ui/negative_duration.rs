use database_locks::locked;

#[locked(timeout = -5)]
fn report() {}

#[locked(retry = -0.5)]
fn other() {}

fn main() {}
