use database_locks::locked;

#[locked(42)]
fn positional() {}

#[locked(name = 42)]
fn literal() {}

#[locked(name = id)]
fn expression(id: u32) {}

fn main() {}
