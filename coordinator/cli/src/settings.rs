//! The global settings: flags, `SLUICE_*` variables and the `--config` file, and which of
//! them each came from (a token and a client certificate given differently: the more
//! explicit one wins).

use std::path::{Path, PathBuf};

use clap::parser::ValueSource;

use crate::access::{AccessFlags, Given, Source};
use crate::error::Failure;

/// Settings of the `--config` file; keys are the long flag names.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigFile {
    pub endpoint: Option<String>,
    pub output: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca_cert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub insecure: Option<bool>,
}

impl ConfigFile {
    /// Reads the file, or nothing without one.
    pub fn read(path: Option<&Path>) -> Result<Self, Failure> {
        let Some(path) = path else { return Ok(Self::default()) };
        let text = std::fs::read_to_string(path).map_err(|e| {
            Failure::usage(format!("cannot read config file {}: {e}", path.display()))
        })?;
        toml::from_str(&text)
            .map_err(|e| Failure::usage(format!("config file {}: {e}", path.display())))
    }
}

/// Where the credential flags came from: the command line or a `SLUICE_*` variable.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sources {
    token: Option<Source>,
    token_file: Option<Source>,
    cert: Option<Source>,
    key: Option<Source>,
}

impl Sources {
    /// The sources clap recorded for the parsed command line.
    pub fn of(matches: &clap::ArgMatches) -> Self {
        let source = |id: &str| match matches.value_source(id) {
            Some(ValueSource::CommandLine) => Some(Source::CommandLine),
            Some(ValueSource::EnvVariable) => Some(Source::Environment),
            _ => None,
        };
        Sources {
            token: source("token"),
            token_file: source("token_file"),
            cert: source("cert"),
            key: source("key"),
        }
    }
}

/// The credential flags as given, each with its source; a value clap did not have comes
/// from the config file.
#[derive(Debug, Default)]
pub struct Credentials {
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca_cert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// `--insecure` or `--insecure=false` (or SLUICE_INSECURE), over the file's.
    pub insecure: Option<bool>,
}

impl Credentials {
    /// The access flags: these settings first, then the config file's.
    pub fn layered(self, sources: Sources, file: &ConfigFile) -> AccessFlags {
        AccessFlags {
            token: given(self.token, sources.token, &file.token),
            token_file: given(self.token_file, sources.token_file, &file.token_file),
            ca_cert: self.ca_cert.or_else(|| file.ca_cert.clone()),
            cert: given(self.cert, sources.cert, &file.cert),
            key: given(self.key, sources.key, &file.key),
            insecure: self.insecure.or(file.insecure).unwrap_or(false),
        }
    }
}

fn given<T: Clone>(
    value: Option<T>,
    source: Option<Source>,
    from_file: &Option<T>,
) -> Option<Given<T>> {
    match value {
        Some(value) => Some(Given::new(value, source.unwrap_or(Source::CommandLine))),
        None => from_file.clone().map(|value| Given::new(value, Source::ConfigFile)),
    }
}
