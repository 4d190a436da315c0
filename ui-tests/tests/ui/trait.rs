use database_locks::locked;

#[locked]
trait Job {
    fn run(&self);
}

fn main() {}
