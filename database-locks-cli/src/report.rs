//! The tool's error line: `database-locks: error: WHAT: CAUSE: ...`, one line however many
//! causes and however many lines a driver's message has, so that a cron mail or a log
//! shows it whole. `error:` is red when stderr is a terminal, unless `NO_COLOR` is set
//! (<https://no-color.org>).

use std::error::Error;
use std::io::{IsTerminal, Write};

/// `err` and its sources, joined with `: `. A source whose text the message so far
/// already contains is left out: the library's messages (and many others) embed their
/// source already.
pub fn chain(err: &dyn Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// Driver messages can span lines (libpq's "Is the server running..."): one line each.
pub fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Prints the tool's error line on stderr.
pub fn error(message: &str) {
    let stderr = std::io::stderr();
    let label = if colour(stderr.is_terminal(), std::env::var_os("NO_COLOR")) {
        "\x1b[1;31merror:\x1b[0m"
    } else {
        "error:"
    };
    let mut err = stderr.lock();
    let _ = writeln!(err, "database-locks: {label} {}", one_line(message));
    let _ = err.flush();
}

/// Colour on a terminal, unless `NO_COLOR` is set to anything but the empty string, or
/// the terminal says it cannot show it (`TERM=dumb`, as in Emacs' shell).
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal
        && no_color.is_none_or(|value| value.is_empty())
        && std::env::var_os("TERM").is_none_or(|term| term != "dumb")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;

    #[derive(Debug)]
    struct Wrapper {
        message: &'static str,
        source: Option<Box<dyn Error + 'static>>,
    }

    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.message)
        }
    }

    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.source.as_deref()
        }
    }

    fn wrap(message: &'static str, source: Option<Box<dyn Error>>) -> Box<dyn Error> {
        Box::new(Wrapper { message, source })
    }

    #[test]
    fn causes_are_joined_once() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let shown = refused.to_string();
        let err = wrap(
            "cannot reach the database",
            Some(wrap("handshake failed", Some(Box::new(refused)))),
        );
        assert_eq!(
            chain(err.as_ref()),
            format!("cannot reach the database: handshake failed: {shown}")
        );
        // A message that embeds its source's text already.
        let embedded = wrap(
            "cannot connect: timed out",
            Some(wrap("timed out", Some(wrap("", None)))),
        );
        assert_eq!(chain(embedded.as_ref()), "cannot connect: timed out");
    }

    #[test]
    fn messages_become_one_line() {
        assert_eq!(
            one_line("connection refused\n\tIs the server running on host \"x\"?\n"),
            "connection refused Is the server running on host \"x\"?"
        );
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(!colour(false, None));
        assert!(!colour(true, Some("1".into())));
        // An empty NO_COLOR counts as unset (no-color.org).
        let term_ok = std::env::var_os("TERM").is_none_or(|t| t != "dumb");
        assert_eq!(colour(true, Some("".into())), term_ok);
        assert_eq!(colour(true, None), term_ok);
    }
}
