//! With no URL at all, locks go to `./database_locks.sqlite3`, which excludes only processes
//! in the same directory of the same host: the handle says so, once per process, naming
//! the file (issue 11: two processes in different directories both held one lock, with
//! no word even at INFO level).

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use database_locks::{Config, DEFAULT_SQLITE_FILE};

#[derive(Default)]
struct Logs(Mutex<Vec<String>>);

struct Capture(Arc<Logs>);

struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() == tracing::Level::WARN {
            let mut message = Message(String::new());
            event.record(&mut message);
            self.0
                 .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(message.0);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

// One test in this binary: it changes the process's environment.
#[test]
fn no_url_warns_once_naming_the_file() {
    let logs = Arc::new(Logs::default());
    tracing::subscriber::set_global_default(Capture(Arc::clone(&logs))).unwrap();
    std::env::remove_var("DATABASE_LOCKS_URL");
    std::env::remove_var("DATABASE_URL");
    let expected = std::env::current_dir().unwrap().join(DEFAULT_SQLITE_FILE);
    for _ in 0..3 {
        let config = Config::from_env().unwrap();
        assert_eq!(config.get_url(), DEFAULT_SQLITE_FILE);
    }
    let warnings: Vec<String> = logs.0.lock().unwrap().clone();
    let about_file: Vec<&String> = warnings
        .iter()
        .filter(|w| w.contains(&expected.display().to_string()))
        .collect();
    assert_eq!(about_file.len(), 1, "once per process: {warnings:?}");
    assert!(
        about_file[0].contains("DATABASE_LOCKS_URL"),
        "{}",
        about_file[0]
    );

    // A URL given: no warning.
    std::env::set_var("DATABASE_LOCKS_URL", "locks-elsewhere.db");
    Config::from_env().unwrap();
    assert_eq!(logs.0.lock().unwrap().len(), warnings.len());
}
