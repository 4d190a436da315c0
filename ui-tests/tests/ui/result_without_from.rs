use database_locks::locked;

#[derive(Debug)]
struct ReportError;

#[locked]
fn report() -> Result<(), ReportError> {
    Ok(())
}

fn main() {}
