use database_locks::locked;

#[derive(Debug)]
struct ReportError;

#[locked]
fn report() -> Result<(), ReportError> {
    Ok(())
}

#[locked]
fn read() -> std::io::Result<Vec<u8>> {
    Ok(Vec::new())
}

fn main() {}
