use database_locks::locked;

#[locked(guard = self.lock)]
fn report() {}

fn main() {}
