//! `#[locked]` on methods taking `&self`, `&mut self`, `self` and `self: Box<Self>`, in an
//! inherent impl, a trait impl and a trait's default method. Each lock is named after
//! `Self` at run time: `<module>::Mailer::flush`.
use database_locks::locked;

#[derive(Debug)]
pub struct MailError;

impl From<database_locks::Error> for MailError {
    fn from(_: database_locks::Error) -> Self {
        MailError
    }
}

pub struct Mailer {
    queue: Vec<String>,
}

impl Mailer {
    #[locked(lock_ttl = None)]
    pub fn flush(&self) -> Result<usize, MailError> {
        Ok(self.queue.len())
    }

    #[locked(locked_by = self.owner())]
    fn push(&mut self, message: String) -> Result<(), MailError> {
        self.queue.push(message);
        Ok(())
    }

    #[locked]
    fn into_queue(self) -> Vec<String> {
        self.queue
    }

    #[locked]
    fn boxed(self: Box<Self>) -> usize {
        self.queue.len()
    }

    fn owner(&self) -> String {
        "mailer".to_owned()
    }
}

pub struct Wrapper<T>(T);

impl<T: Clone> Wrapper<T> {
    #[locked]
    fn get(&self) -> T {
        self.0.clone()
    }
}

pub trait Job {
    fn name(&self) -> &'static str;

    #[locked]
    fn run(&self) -> Result<&'static str, MailError> {
        Ok(self.name())
    }
}

impl Job for Mailer {
    fn name(&self) -> &'static str {
        "mailer"
    }

    #[locked(timeout = 5)]
    fn run(&self) -> Result<&'static str, MailError> {
        Ok("overridden")
    }
}

fn main() {
    let _ = (
        Mailer::flush,
        Mailer::push,
        Mailer::into_queue,
        Mailer::boxed,
    );
    let _ = (Wrapper::<u8>::get, <Mailer as Job>::run);
}
