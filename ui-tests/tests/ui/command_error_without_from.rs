use database_locks::{locked, Command};

struct Reindex;

#[locked]
impl Command for Reindex {
    type Error = String;

    fn handle(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

fn main() {}
