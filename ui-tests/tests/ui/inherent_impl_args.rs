use database_locks::locked;

struct Registry;

#[locked(timeout = 5)]
impl Registry {
    #[locked]
    fn purge() {}
}

fn main() {}
