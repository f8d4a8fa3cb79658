//! Layered configuration for the binaries: flags, then `SLUICE_*` environment variables
//! (both through clap), then a TOML `--config` file, then defaults.
//!
//! Each binary declares its flags as a clap struct of `Option`s that also derives `Serialize`
//! (skipping `None`), and its settings as a struct that derives `Deserialize` with defaults.
//! Keys in the TOML file are the long flag names (`lease-ttl = 5`).

use std::path::Path;

use serde::{Serialize, de::DeserializeOwned};

/// A configuration that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `--config` file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file or the merged settings are not valid.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Merges the given flags over the TOML file at `path` (if any) into the settings type.
pub fn load<Flags: Serialize, Settings: DeserializeOwned>(
    flags: &Flags,
    path: Option<&Path>,
) -> Result<Settings, ConfigError> {
    let mut table = match path {
        Some(path) => read_table(path)?,
        None => toml::Table::new(),
    };
    let given = toml::Table::try_from(flags).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    table.extend(given);
    table.remove("config");
    table.try_into().map_err(|e: toml::de::Error| ConfigError::Invalid(explain(&e)))
}

/// The error in the user's terms: a missing field is a flag not given.
fn explain(error: &toml::de::Error) -> String {
    let message = error.message();
    match message.strip_prefix("missing field `").and_then(|rest| rest.strip_suffix('`')) {
        Some(key) => format!("--{key} is required (or `{key} = ...` in the --config file)"),
        None => error.to_string(),
    }
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))
}

/// Splits a comma-separated list flag (`--etcd a,b`), dropping empty parts.
pub fn split_list(value: &str) -> Vec<String> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    }

    #[derive(Debug, serde::Deserialize)]
    struct Settings {
        name: String,
    }

    #[test]
    fn a_missing_setting_names_its_flag() {
        let error = load::<_, Settings>(&Flags { name: None }, None).expect_err("missing");
        assert_eq!(
            error.to_string(),
            "invalid configuration: --name is required (or `name = ...` in the --config file)"
        );
        let given = load::<_, Settings>(&Flags { name: Some("x".into()) }, None);
        assert_eq!(given.expect("given").name, "x");
    }
}
