//! Everything `sluice` prints: the output format, tables, JSON and the small text helpers.

pub mod json;
pub mod schedule;
pub mod table;
pub mod text;
pub mod views;

use std::io::{self, Write};

/// How results are printed (`--output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned tables for people.
    Table,
    /// JSON for scripts: one document per response, one line per watched snapshot.
    Json,
}

/// Writes text to stdout, ending it with a newline; a closed pipe (`| head`) is not an error.
pub fn emit(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    let written = out
        .write_all(text.as_bytes())
        .and_then(|()| if text.ends_with('\n') { Ok(()) } else { out.write_all(b"\n") });
    match written.and_then(|()| out.flush()) {
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Writes a JSON value to stdout, pretty-printed.
pub fn emit_json(value: &serde_json::Value) -> io::Result<()> {
    emit(&serde_json::to_string_pretty(value).map_err(io::Error::other)?)
}

/// Prints either the table text or the JSON value, as the format asks.
pub fn print(
    format: Format,
    table: impl FnOnce() -> String,
    json: impl FnOnce() -> serde_json::Value,
) -> io::Result<()> {
    match format {
        Format::Table => emit(&table()),
        Format::Json => emit_json(&json()),
    }
}
