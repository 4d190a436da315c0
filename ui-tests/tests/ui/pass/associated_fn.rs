//! `#[locked]` on an inherent impl names the `#[locked]` fns inside it after the type at
//! compile time, which an associated fn without `self` needs: `<module>::Registry::purge`.
use database_locks::locked;

pub struct Registry;

#[locked]
impl Registry {
    #[locked]
    pub fn purge() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Ok(())
    }

    #[database_locks::locked(timeout = 2)]
    fn compact(&self) -> u64 {
        0
    }

    #[locked("registry-rebuild")]
    fn rebuild() {}

    fn not_locked() {}
}

pub struct Pair<A, B>(A, B);

#[locked]
impl<A: Default, B: Default> Pair<A, B> {
    #[locked]
    fn new() -> Self {
        Pair(A::default(), B::default())
    }
}

fn main() {
    let _ = (
        Registry::purge,
        Registry::compact,
        Registry::rebuild,
        Registry::not_locked,
    );
    let _ = Pair::<u8, u16>::new;
}
