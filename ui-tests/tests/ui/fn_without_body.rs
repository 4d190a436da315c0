use database_locks::locked;

trait Job {
    #[locked]
    fn run(&self);
}

fn main() {}
