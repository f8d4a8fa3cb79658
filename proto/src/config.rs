//! Layered configuration for the binaries: flags, then `SLUICE_*` environment variables
//! (both through clap), then a TOML `--config` file, then defaults.
//!
//! Each binary declares its flags as a clap struct of `Option`s that also derives `Serialize`
//! (skipping `None`), and its settings as a struct that derives `Deserialize` with defaults.
//! Keys in the TOML file are the long flag names (`lease-ttl = 5`). A boolean flag is an
//! `Option<bool>` too (`--insecure`, `--insecure=false`), so `SLUICE_INSECURE=false`
//! overrides `insecure = true` in the file.
//!
//! An invalid value is told in one line, named as the operator gave it: `--lease-ttl`,
//! `SLUICE_LEASE_TTL`, or `lease-ttl in FILE`.

use std::{collections::HashMap, fmt::Display, ops::RangeInclusive, path::Path};

use clap::parser::ValueSource;
use serde::{Deserialize, Deserializer, Serialize, de::DeserializeOwned};

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

/// Where each setting given on the command line came from: the flag or its variable.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    /// By key (the long flag name): the variable's name when it came from one.
    given: HashMap<String, Option<String>>,
}

impl Origins {
    /// The sources clap recorded for `matches` of `command`.
    pub fn of(command: &clap::Command, matches: &clap::ArgMatches) -> Self {
        let mut given = HashMap::new();
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            let variable = match matches.value_source(arg.get_id().as_str()) {
                Some(ValueSource::CommandLine) => None,
                Some(ValueSource::EnvVariable) => {
                    arg.get_env().map(|name| name.to_string_lossy().into_owned())
                }
                _ => continue,
            };
            given.insert(long.to_owned(), variable);
        }
        Origins { given }
    }

    /// How the operator gave `key`: `--key`, `SLUICE_KEY`, `key in FILE`, or just `key`.
    fn name(&self, key: &str, file: Option<&Path>, in_file: bool) -> String {
        match (self.given.get(key), file) {
            (Some(Some(variable)), _) => variable.clone(),
            (Some(None), _) => format!("--{key}"),
            (None, Some(file)) if in_file => format!("{key} in {}", file.display()),
            _ => key.to_owned(),
        }
    }
}

/// Parses the command line of `F`: the flags and where each came from.
pub fn parse<F: clap::Parser>() -> (F, Origins) {
    let command = F::command();
    let matches = command.clone().get_matches();
    let flags =
        F::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut F::command()).exit());
    (flags, Origins::of(&command, &matches))
}

/// Merges the given flags over the TOML file at `path` (if any) into the settings type.
pub fn load<Flags: Serialize, Settings: DeserializeOwned>(
    flags: &Flags,
    path: Option<&Path>,
) -> Result<Settings, ConfigError> {
    load_from(flags, &Origins::default(), path)
}

/// [`load`], naming a bad value by where it came from (`origins`).
pub fn load_from<Flags: Serialize, Settings: DeserializeOwned>(
    flags: &Flags,
    origins: &Origins,
    path: Option<&Path>,
) -> Result<Settings, ConfigError> {
    let mut table = match path {
        Some(path) => read_table(path)?,
        None => toml::Table::new(),
    };
    let from_file: Vec<String> = table.keys().cloned().collect();
    let name = |key: &str| origins.name(key, path, from_file.iter().any(|k| k == key));
    table.extend(given(flags, &name)?);
    table.remove("config");
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        ConfigError::Invalid(explain(&name(&key), e.inner()))
    })
}

/// The flags as TOML values; a value TOML cannot hold (an integer past 2^63) named.
fn given<Flags: Serialize>(
    flags: &Flags,
    name: &dyn Fn(&str) -> String,
) -> Result<toml::Table, ConfigError> {
    let invalid = |e: serde_json::Error| ConfigError::Invalid(e.to_string());
    let serde_json::Value::Object(values) = serde_json::to_value(flags).map_err(invalid)? else {
        return Err(ConfigError::Invalid("the flags are not a table".into()));
    };
    let mut table = toml::Table::new();
    for (key, value) in values {
        let converted = toml::Value::try_from(&value)
            .map_err(|_| ConfigError::Invalid(format!("{}: {value} is too large", name(&key))))?;
        table.insert(key, converted);
    }
    Ok(table)
}

/// The error in the user's terms, in one line: a missing field is a flag not given, and
/// any other names the setting once, as it was given (`name`).
fn explain(name: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim();
    match message.strip_prefix("missing field `").and_then(|rest| rest.strip_suffix('`')) {
        Some(key) => format!("--{key} is required (or `{key} = ...` in the --config file)"),
        None if name == "." => message.to_owned(),
        None => format!("{name}: {message}"),
    }
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
    // A syntax error keeps toml's lines: they show the offending line and column.
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))
}

/// Splits a comma-separated list flag (`--etcd a,b`), dropping empty parts.
pub fn split_list(value: &str) -> Vec<String> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

/// An endpoint URL of a Sluice or etcd server: `http://` or `https://`, a host and a port,
/// nothing after them. The error says what it must be (the layer adds the setting's name).
pub fn check_endpoint(url: &str) -> Result<(), String> {
    let refused = || {
        format!(
            "must be an http:// or https:// URL with a host and port (http://HOST:PORT), not {url:?}"
        )
    };
    let uri: http::Uri = url.parse().map_err(|_| refused())?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let host_ok = uri.host().is_some_and(|host| !host.is_empty());
    let bare = matches!(uri.path(), "" | "/") && uri.query().is_none();
    let no_user = uri.authority().is_some_and(|authority| !authority.as_str().contains('@'));
    if scheme_ok && host_ok && uri.port_u16().is_some() && bare && no_user {
        Ok(())
    } else {
        Err(refused())
    }
}

/// A number within `range` (`unit` says what it counts, e.g. "seconds"); the error says
/// the range (the layer adds the setting's name).
pub fn in_range<'de, D, T>(
    deserializer: D,
    range: &RangeInclusive<T>,
    unit: &str,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + PartialOrd + Display,
{
    let value = T::deserialize(deserializer)?;
    if !range.contains(&value) {
        let (low, high) = (range.start(), range.end());
        return Err(serde::de::Error::custom(format!(
            "must be {low} to {high} {unit}, not {value}"
        )));
    }
    Ok(value)
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

    #[derive(Debug, clap::Parser, Serialize)]
    struct Counted {
        #[arg(long, env = "SLUICE_CONFIG_TEST_COUNT")]
        #[serde(skip_serializing_if = "Option::is_none")]
        count: Option<u64>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "kebab-case")]
    struct Limited {
        #[serde(default, deserialize_with = "small")]
        count: u64,
    }

    fn small<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        in_range(deserializer, &(1..=10), "things")
    }

    /// A bad value is told in one line, named as it was given: the flag, or the key and
    /// its file; a value TOML cannot hold names its flag.
    #[test]
    fn a_bad_value_is_named_where_it_was_given() -> Result<(), Box<dyn std::error::Error>> {
        use clap::{CommandFactory, FromArgMatches};
        let from = |args: &[&str], file: Option<&Path>| -> Result<String, String> {
            let command = Counted::command();
            let matches = command.clone().try_get_matches_from(args).map_err(|e| e.to_string())?;
            let flags = Counted::from_arg_matches(&matches).map_err(|e| e.to_string())?;
            match load_from::<_, Limited>(&flags, &Origins::of(&command, &matches), file) {
                Ok(settings) => Ok(settings.count.to_string()),
                Err(error) => Err(error.to_string()),
            }
        };
        let flag = from(&["x", "--count", "11"], None).err();
        assert_eq!(
            flag.as_deref(),
            Some("invalid configuration: --count: must be 1 to 10 things, not 11")
        );
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "count = 0\n")?;
        let in_file = from(&["x"], Some(&file)).err();
        let says = format!(
            "invalid configuration: count in {}: must be 1 to 10 things, not 0",
            file.display()
        );
        assert_eq!(in_file.as_deref(), Some(says.as_str()));
        assert_eq!(from(&["x", "--count", "3"], Some(&file)), Ok("3".into()), "the flag wins");
        let huge = from(&["x", "--count", "18446744073709551615"], None).err();
        assert_eq!(
            huge.as_deref(),
            Some("invalid configuration: --count: 18446744073709551615 is too large")
        );
        std::fs::write(&file, "count = \"x\"\n")?;
        let typed = from(&["x"], Some(&file)).err().unwrap_or_default();
        assert!(typed.starts_with("invalid configuration: count in "), "{typed}");
        assert!(!typed.contains('\n'), "one line: {typed:?}");
        Ok(())
    }

    #[test]
    fn endpoints_are_http_urls_with_a_host_and_port() {
        for good in ["http://127.0.0.1:2379", "https://etcd-1.example:2379/", "http://[::1]:1"] {
            assert_eq!(check_endpoint(good), Ok(()), "{good}");
        }
        for bad in [
            "ftp://127.0.0.1:2379",
            "notaurl",
            "127.0.0.1:2379",
            "http://host",
            "http://:2379",
            "http://h:1/x",
            "http://h:1?q",
            "http://u@h:1",
            "not a url",
            "",
        ] {
            let error = check_endpoint(bad).err().unwrap_or_default();
            assert!(error.starts_with("must be an http:// or https:// URL"), "{bad}: {error}");
        }
    }
}
