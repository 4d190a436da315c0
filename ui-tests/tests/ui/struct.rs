use database_locks::locked;

#[locked]
struct Reindex {
    index: String,
}

fn main() {}
