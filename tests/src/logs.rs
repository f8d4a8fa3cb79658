//! Log files of child processes: finding lines in them and showing their tails.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::Path,
};

/// Lines of each log shown when a test fails.
pub(crate) const TAIL_LINES: usize = 40;

/// Opens `path` for appending, creating it.
pub(crate) fn append(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open log file {}: {e}", path.display()))
}

/// Writes a harness marker line, e.g. before each start of a process.
pub(crate) fn mark(path: &Path, text: &str) {
    let _ = writeln!(append(path), "=== sluice-tests: {text} ===");
}

/// Current length of a log file (0 when absent).
pub(crate) fn len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Text of a log file from byte `offset` on (lossy UTF-8; empty when absent).
pub(crate) fn read_from(path: &Path, offset: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// The last `lines` lines of a log file, for failure reports.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = read_from(path, 0);
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}

/// Prints the tail of every given log to stderr, headed by its path.
pub(crate) fn print_tails<'a>(paths: impl IntoIterator<Item = &'a Path>) {
    for path in paths {
        if len(path) == 0 {
            continue;
        }
        eprintln!("----- tail of {} -----\n{}", path.display(), tail(path, TAIL_LINES));
    }
}
