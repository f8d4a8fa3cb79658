//! The TLS flags every server takes (`--tls-cert`, `--tls-key`, `--tls-ca`, `--insecure`),
//! declared once for the coordinator's and the agent's command lines and config files.

use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use serde::Serialize;

/// The id of the `--tls-cert` argument, for a binary to give it a help of its own
/// (`mut_arg`): a coordinator and an agent each take only certificates of their own kind.
pub const TLS_CERT_ARG: &str = "tls_cert";

/// How a server proves who it is and checks its peers.
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct TlsFlags {
    /// Certificate of this node, of its own kind (each binary names the `sluice pki issue`
    /// that makes one in its help: [`TLS_CERT_ARG`]).
    #[arg(long, env = "SLUICE_TLS_CERT", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// Private key of the certificate.
    #[arg(long, env = "SLUICE_TLS_KEY", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// The cluster CA (`ca.crt`): peers must present certificates it signed (an agent takes
    /// calls only from coordinators' certificates).
    #[arg(long, env = "SLUICE_TLS_CA", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// No TLS and no authentication: anyone who reaches the port can do anything.
    /// Development only. `--insecure=false` (or SLUICE_INSECURE=false) overrides the file.
    #[arg(
        long,
        env = "SLUICE_INSECURE",
        value_parser = BoolishValueParser::new(),
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
}
