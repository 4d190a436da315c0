use database_locks::locked;

#[locked]
async fn fetch() {}

fn main() {}
