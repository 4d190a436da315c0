use database_locks::locked;

#[locked(timeout = "30s")]
fn report() {}

#[locked(lock_ttl = delay())]
fn other() {}

fn delay() -> &'static str {
    "30s"
}

fn main() {}
