use std::future::Future;
use std::pin::Pin;

use database_locks::locked;

#[locked]
fn fetch() -> impl Future<Output = u32> {
    async { 1 }
}

#[locked]
fn boxed() -> Pin<Box<dyn Future<Output = u32> + Send>> {
    Box::pin(async { 1 })
}

fn main() {}
