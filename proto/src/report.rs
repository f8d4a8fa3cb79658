//! How a binary reports the error it ends with: one line, each cause once.

use std::error::Error;
use std::process::ExitCode;

/// The error and its causes on one line, leaving out a cause whose text the line already
/// holds: most errors quote their source, which a printed chain would then repeat.
pub fn error_line(error: &(dyn Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        let text = error.to_string();
        if !line.contains(&text) {
            line = format!("{line}: {text}");
        }
        cause = error.source();
    }
    line
}

/// The exit code of a binary's result; an error is printed on stderr first.
pub fn exit_code<E: AsRef<dyn Error + Send + Sync + 'static>>(result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("Error: {}", error_line(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Failure {
        #[error("cannot read /x: {0}")]
        Quoting(#[source] std::io::Error),
        #[error("cannot start")]
        Terse(#[source] std::io::Error),
    }

    #[test]
    fn each_cause_is_printed_once() {
        let missing = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        assert_eq!(error_line(&Failure::Quoting(missing())), "cannot read /x: no such file");
        assert_eq!(error_line(&Failure::Terse(missing())), "cannot start: no such file");
    }
}
