//! Scenarios: which endpoint the `sluice` CLI uses and what it says when one is wrong. A
//! coordinator that accepts TCP but answers nothing (frozen: SIGSTOP, a paused VM) is a
//! real listening socket that never accepts; the kernel completes the TCP handshake for
//! it, as for a stopped process.

use std::net::TcpListener;
use std::process::Output;

use sluice_tests::{Cluster, PATIENCE, binary};

/// Runs the `sluice` CLI with the cluster's admin flags and `args` until it exits, without
/// the caller's SLUICE_* variables.
async fn sluice(cluster: &Cluster, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(binary("sluice"));
    command.args(cluster.cli_flags()).args(args).kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SLUICE_") {
            command.env_remove(key);
        }
    }
    let output = tokio::time::timeout(PATIENCE, command.output()).await;
    output.expect("sluice did not exit").expect("run sluice")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// With a frozen coordinator first in the list, the CLI moves on to the next one; with
/// only frozen ones, it names each. An agent's port and the HTTPS console port are named
/// as such.
#[tokio::test]
async fn a_frozen_endpoint_is_passed_over_and_wrong_ports_are_named() {
    let mut cluster = Cluster::builder().agents(1).start().await;
    let frozen = TcpListener::bind("127.0.0.1:0").expect("bind");
    let frozen_url = format!("https://{}", frozen.local_addr().expect("address"));
    let coordinator = cluster.coordinator(0).url();

    let list = format!("{frozen_url},{coordinator}");
    let listed = sluice(&cluster, &["--endpoint", &list, "coordinator", "list"]).await;
    assert_eq!(listed.status.code(), Some(0), "{}", text(&listed));
    assert!(text(&listed).contains("c1"), "the second endpoint answered: {}", text(&listed));

    let silent = sluice(&cluster, &["--endpoint", &frozen_url, "coordinator", "list"]).await;
    assert_eq!(silent.status.code(), Some(3), "{}", text(&silent));
    let expected = format!("{frozen_url}/: no answer within 5 s");
    assert!(text(&silent).contains(&expected), "{}", text(&silent));

    let agent = cluster.agent(0).url();
    let refused = sluice(&cluster, &["--endpoint", &agent, "job", "list"]).await;
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused));
    let expected = "shows an agent certificate (a1): it is an agent, not a coordinator";
    assert!(text(&refused).contains(expected), "{}", text(&refused));

    let console = cluster.coordinator(0).http_url();
    let refused = sluice(&cluster, &["--endpoint", &console, "job", "list"]).await;
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused));
    assert!(text(&refused).contains("the HTTPS console/API port"), "{}", text(&refused));
}

/// Without TLS no certificate says what listens: an agent's port answered the health check
/// like a coordinator, was chosen, and every call failed with a bare UNIMPLEMENTED. It is
/// named as not a coordinator, and the next endpoint of the list is used. The console's plain
/// HTTP port is named as such (it was "may require TLS").
#[tokio::test]
async fn without_tls_an_agents_port_is_named_and_passed_over() {
    let mut cluster = Cluster::builder().agents(1).insecure().start().await;
    let agent = cluster.agent(0).url();
    let coordinator = cluster.coordinator(0).url();

    let list = format!("{agent},{coordinator}");
    let listed = sluice(&cluster, &["--endpoint", &list, "coordinator", "list"]).await;
    assert_eq!(listed.status.code(), Some(0), "{}", text(&listed));
    assert!(text(&listed).contains("c1"), "the second endpoint answered: {}", text(&listed));

    let refused = sluice(&cluster, &["--endpoint", &agent, "job", "list"]).await;
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused));
    let expected = "it serves no JobService: it is not a coordinator (an agent's port?)";
    assert!(text(&refused).contains(expected), "{}", text(&refused));

    let console = cluster.coordinator(0).http_url();
    let refused = sluice(&cluster, &["--endpoint", &console, "job", "list"]).await;
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused));
    assert!(text(&refused).contains("the console/API HTTP port"), "{}", text(&refused));
}
