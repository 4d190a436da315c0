use database_locks::locked;

#[locked]
const async fn fetch() {}

fn main() {}
