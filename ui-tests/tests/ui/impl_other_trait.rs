use database_locks::locked;

struct Report;

#[locked]
impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("report")
    }
}

fn main() {}
