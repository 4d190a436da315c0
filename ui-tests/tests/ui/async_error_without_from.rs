use database_locks::locked;

#[derive(Debug)]
struct FetchError;

/// The same check as for a blocking fn: the future's output must carry the lock error.
#[locked]
async fn fetch() -> Result<u32, FetchError> {
    Ok(1)
}

fn main() {}
