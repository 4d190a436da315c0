use database_locks::locked;

#[locked]
enum Job {
    Reindex,
}

fn main() {}
