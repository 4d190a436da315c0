use database_locks::locked;

#[locked]
const fn answer() -> u32 {
    42
}

fn main() {}
