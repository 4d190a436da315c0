use database_locks::locked;

struct Registry;

#[locked]
impl Registry {
    fn purge() {}
}

fn main() {}
