use std::rc::Rc;

use database_locks::locked;

/// An `Rc` held across an await: the future is not `Send`, and spawning it says why.
#[locked]
async fn count() -> usize {
    let shared = Rc::new(1);
    std::future::ready(()).await;
    *shared
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().build().unwrap();
    runtime.spawn(count());
}
