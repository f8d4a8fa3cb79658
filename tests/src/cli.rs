//! The built `sluice` CLI, run as a user runs it.

use crate::{Cluster, binary};

/// Runs `sluice ARGS` against the cluster's first coordinator with the harness's admin
/// credentials; returns its exit code and what it printed (stdout, then stderr).
pub async fn as_admin(cluster: &mut Cluster, args: &[&str]) -> (i32, String) {
    let mut command = tokio::process::Command::new(binary("sluice"));
    command.arg("--endpoint").arg(cluster.coordinator(0).url());
    run(command.args(cluster.cli_flags()).args(args)).await
}

/// Runs `sluice ARGS` as given (no endpoint, credentials or `SLUICE_TOKEN` added); returns its
/// exit code and what it printed (stdout, then stderr).
pub async fn bare(args: &[String]) -> (i32, String) {
    run(tokio::process::Command::new(binary("sluice")).args(args).env_remove("SLUICE_TOKEN")).await
}

async fn run(command: &mut tokio::process::Command) -> (i32, String) {
    let output = command.output().await.unwrap_or_else(|e| panic!("cannot run sluice: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), format!("{stdout}{stderr}"))
}
