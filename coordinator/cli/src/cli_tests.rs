//! Argument parsing: every binding command line parses, and bad ones fail as usage errors.

use clap::Parser;

use super::*;

fn parse(line: &str) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("sluice").chain(line.split_whitespace()))
}

#[test]
fn binding_command_lines_parse() {
    let lines = [
        "job create -f job.toml",
        "job list",
        "job show nightly",
        "job delete nightly",
        "job update -f job.json",
        "job start nightly",
        "job start nightly --watch",
        "job stop nightly --graceful",
        "job stop nightly --graceful --timeout 60",
        "job stop nightly --immediately",
        "stop --all --graceful",
        "stop --all --immediately --yes",
        "session show 0193a1b2",
        "session list",
        "session list nightly",
        "session watch 0193a1b2",
        "session retry 0193a1b2",
        "session stop 0193a1b2 --immediately",
        "session stop 0193a1b2 --graceful --timeout 30",
        "agent list",
        "agent drain proxy-1",
        "agent drain proxy-1 --deadline 300",
        "coordinator list",
        "restore-point list nightly",
        "restore-point verify 20261122-213005-7f3a-0",
        "restore-point verify 20261122-213005-7f3a-0 --job nightly",
        "restore-point delete 20261122-213005-7f3a-0",
        "restore-point delete 20261122-213005-7f3a-0 --job nightly",
        "restore 20261122-213005-7f3a-0 --to /restore",
        "restore 20261122-213005-7f3a-0 --to /restore --job nightly --agent proxy-1",
        "--endpoint http://a:7400,http://b:7400 --output json job list",
        "--token slu_x_y --ca-cert ca.crt job start nightly",
        "--ca-cert ca.crt --cert alice.crt --key alice.key job list",
        "--token-file /etc/sluice/token job list",
        "--insecure agent list",
        "token create ci --role operator",
        "token create ci --role viewer --ttl 3600",
        "token list",
        "token revoke 0123456789abcdef",
        "whoami",
        "pki init --dir /etc/sluice/ca",
        "pki issue --dir ca --kind coordinator --id c1 --host c1.example --host 10.0.0.1 --out o",
        "pki issue --dir ca --kind agent --id a1 --computer pc1 --out o",
        "pki issue --dir ca --kind client --id alice --role admin --out o",
        "job list --output json --endpoint http://a:7400",
    ];
    for line in lines {
        if let Err(error) = parse(line) {
            panic!("`sluice {line}` does not parse: {error}");
        }
    }
}

#[test]
fn job_stop_needs_exactly_one_mode() {
    for line in [
        "job stop nightly",
        "job stop nightly --graceful --immediately",
        "stop --all",
        "stop --all --graceful --immediately --yes",
    ] {
        let error = parse(line).err().unwrap_or_else(|| panic!("`sluice {line}` parsed"));
        assert_eq!(error.exit_code(), 2, "{line}");
    }
}

#[test]
fn bad_command_lines_fail() {
    for line in [
        "job create",
        "job stop nightly --immediately --timeout 5",
        "job stop nightly --graceful --timeout soon",
        "stop --graceful",
        "session show",
        "restore-point list",
        "--output yaml job list",
        "job launch nightly",
        "token create ci",
        "pki issue --dir ca --kind root --id x --out o",
        "pki issue --dir ca --kind client --id x --role superuser --out o",
        "pki issue --dir ca --kind client --id x --role admin --days 0 --out o",
    ] {
        assert!(parse(line).is_err(), "`sluice {line}` should fail");
    }
}

#[test]
fn flags_reach_the_command() {
    let cli = parse("--output json job stop nightly --graceful --timeout 60").expect("parses");
    assert_eq!(cli.output, Some(Format::Json));
    let Command::Job(JobCommand::Stop { name, mode, timeout }) = cli.command else {
        panic!("not job stop: {:?}", cli.command);
    };
    assert_eq!(
        (name.as_str(), mode.mode(), timeout),
        ("nightly", sluice_proto::pb::StopMode::Graceful, Some(60))
    );
    let cli = parse("job create -f /tmp/j.toml").expect("parses");
    assert!(
        matches!(cli.command, Command::Job(JobCommand::Create(JobFileArgs { ref file })) if file.ends_with("j.toml"))
    );
}

#[test]
fn endpoint_and_output_come_from_the_config_file_unless_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, "endpoint = \"http://c:7400\"\noutput = \"json\"\n").expect("write");
    let file = ConfigFile::read(Some(&path)).expect("reads");
    assert_eq!(file.endpoint.as_deref(), Some("http://c:7400"));
    assert_eq!(file.output.as_deref(), Some("json"));
    std::fs::write(&path, "token-file = \"/etc/sluice/token\"\n").expect("write");
    let file = ConfigFile::read(Some(&path)).expect("reads");
    assert_eq!(file.token_file.as_deref(), Some(std::path::Path::new("/etc/sluice/token")));
    std::fs::write(&path, "colour = 1\n").expect("write");
    assert!(ConfigFile::read(Some(&path)).is_err(), "unknown keys are refused");
}

#[test]
fn clap_definition_is_consistent() {
    use clap::CommandFactory;
    Cli::command().debug_assert();
}

/// `--insecure` alone still means true (and leaves the next word to the command);
/// `--insecure=false` overrides `insecure = true` in the config file, as a variable does.
#[test]
fn insecure_layers_over_the_config_file() -> Result<(), clap::Error> {
    let layered = |line: &str, in_file: Option<bool>| -> Result<bool, clap::Error> {
        let cli = parse(line)?;
        let file = ConfigFile { insecure: in_file, ..ConfigFile::default() };
        let credentials = Credentials { insecure: cli.insecure, ..Credentials::default() };
        Ok(credentials.layered(Sources::default(), &file).insecure)
    };
    assert!(layered("--insecure agent list", None)?);
    assert!(layered("agent list --insecure", Some(false))?);
    assert!(!layered("--insecure=false agent list", Some(true))?);
    assert!(layered("agent list", Some(true))?);
    assert!(!layered("agent list", None)?);
    assert!(parse("--insecure=maybe agent list").is_err());
    Ok(())
}
