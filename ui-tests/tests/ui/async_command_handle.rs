use database_locks::{locked, Command};

struct Reindex;

#[locked]
impl Command for Reindex {
    type Error = database_locks::Error;

    async fn handle(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

fn main() {}
