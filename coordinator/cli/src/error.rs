//! Exit codes and the failures that decide them.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;

/// Exit status of `sluice` (binding: scripts rely on these numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done; a watched session ended SUCCESS or WARNING.
    Success = 0,
    /// A watched session ended FAILED (or a verify found damage).
    Failed = 1,
    /// Bad flags, job file or confirmation, or input the server refused (`INVALID_ARGUMENT`).
    Usage = 2,
    /// The server answered with an error, no endpoint could be reached, or the output could
    /// not be written.
    Server = 3,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}

/// Why a command did not complete.
#[derive(Debug)]
pub enum Failure {
    /// Bad input from the operator, found before any call to the server.
    Usage(String),
    /// The server answered a call with an error status.
    Server(tonic::Status),
    /// No endpoint could be reached.
    Connect(String),
    /// A local error, e.g. writing to stdout failed.
    Local(anyhow::Error),
}

impl Failure {
    /// A usage failure with this message.
    pub fn usage(message: impl Into<String>) -> Self {
        Failure::Usage(message.into())
    }

    /// The exit status for this failure.
    pub fn exit(&self) -> Exit {
        match self {
            Failure::Usage(_) => Exit::Usage,
            // The server found the input bad: the operator's to fix, not worth a retry.
            Failure::Server(status) if status.code() == tonic::Code::InvalidArgument => Exit::Usage,
            // A script must not read a failed write as a FAILED session.
            Failure::Server(_) | Failure::Connect(_) | Failure::Local(_) => Exit::Server,
        }
    }

    /// The one-line message printed to stderr, starting with `error: `.
    pub fn message(&self) -> String {
        match self {
            Failure::Usage(message) | Failure::Connect(message) => format!("error: {message}"),
            Failure::Server(status) => status_message(status),
            Failure::Local(error) => format!("error: {error:#}"),
        }
    }

    /// Prints the message to stderr and returns the exit status.
    pub fn report(self) -> Exit {
        say(&self.message());
        self.exit()
    }
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        Failure::Server(status)
    }
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Self {
        Failure::Local(error.into())
    }
}

/// Writes a line to stderr. A closed or full stderr (`2>&1 | head`, `2>/dev/full`) loses
/// the line but never the exit status (`eprintln!` would panic).
pub fn say(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// `error: <code>: <message>`, the code in lower-case words (`not found`).
pub fn status_message(status: &tonic::Status) -> String {
    let code = code_words(status.code());
    if status.message().is_empty() {
        format!("error: {code}")
    } else {
        format!("error: {code}: {}", status.message())
    }
}

/// A gRPC code as lower-case words: `NotFound` -> `not found`.
pub fn code_words(code: tonic::Code) -> String {
    let camel = format!("{code:?}");
    let mut words = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            words.push(' ');
        }
        words.push(c.to_ascii_lowercase());
    }
    words
}

/// An error and its chain of causes on one line: `a: b: c`.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            let _ = write!(text, ": {cause_text}");
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_prints_code_as_words() {
        let status = tonic::Status::not_found("job \"x\" does not exist");
        assert_eq!(status_message(&status), "error: not found: job \"x\" does not exist");
        assert_eq!(code_words(tonic::Code::FailedPrecondition), "failed precondition");
        assert_eq!(code_words(tonic::Code::Unavailable), "unavailable");
    }

    #[test]
    fn chain_skips_repeated_causes() {
        let inner = std::io::Error::other("connection refused");
        let outer = std::io::Error::other(Wrapper(inner));
        assert_eq!(chain(&outer), "wrapped: connection refused");
    }

    #[derive(Debug)]
    struct Wrapper(std::io::Error);

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("wrapped")
        }
    }

    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn exit_codes_follow_the_failure() {
        assert_eq!(Failure::usage("bad").exit() as u8, 2);
        assert_eq!(Failure::from(tonic::Status::internal("x")).exit() as u8, 3);
        let refused = tonic::Status::invalid_argument("job.name: not a valid name");
        assert_eq!(Failure::from(refused).exit() as u8, 2, "input the server refused");
        assert_eq!(Failure::from(tonic::Status::not_found("job x")).exit() as u8, 3);
        assert_eq!(Failure::Connect("down".into()).exit() as u8, 3);
    }
}
