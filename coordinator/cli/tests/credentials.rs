//! A token and a client certificate: refused when given the same way, else the more
//! explicit one wins; `--token-file` instead of a token on the command line. All decided
//! before any connection, so no coordinator is needed.

use std::process::{Command, Output};

fn sluice(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
    command.envs(env.iter().copied()).args(args).output().expect("run sluice")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

const CERT: [&str; 6] = [
    "--ca-cert",
    "/nonexistent/ca.crt",
    "--cert",
    "/nonexistent/a.crt",
    "--key",
    "/nonexistent/a.key",
];

#[test]
fn a_token_and_a_certificate_both_on_the_command_line_are_refused() {
    let mut args = vec!["--token", "slu_0_1"];
    args.extend(CERT);
    args.extend(["job", "list"]);
    let output = sluice(&args, &[]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let text = stderr(&output);
    assert!(text.contains("are alternatives, both given on the command line"), "{text}");
    assert!(!text.contains("slu_0_1"), "the token is not echoed: {text}");
}

#[test]
fn a_certificate_flag_wins_over_a_token_variable() {
    // Flags after the command are global flags too.
    let mut args = vec!["job", "list"];
    args.extend(CERT);
    let output = sluice(&args, &[("SLUICE_TOKEN", "slu_0_1")]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let text = stderr(&output);
    assert!(
        text.contains("--cert /nonexistent/a.crt: cannot read"),
        "the certificate is used: {text}"
    );
    let both = sluice(
        &["job", "list"],
        &[
            ("SLUICE_TOKEN", "slu_0_1"),
            ("SLUICE_CERT", "/nonexistent/a.crt"),
            ("SLUICE_KEY", "/nonexistent/a.key"),
        ],
    );
    assert!(stderr(&both).contains("both given as SLUICE_* variables"), "{}", stderr(&both));
}

#[test]
fn a_token_file_is_an_alternative_to_the_token_flag() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("token");
    std::fs::write(&file, "slu_0_1\n").expect("token file");
    let path = file.to_str().expect("UTF-8 path");
    let output =
        sluice(&["--insecure", "--token", "slu_0_1", "--token-file", path, "job", "list"], &[]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(stderr(&output).contains("--token and --token-file are alternatives"), "{output:?}");
    let missing = sluice(&["--insecure", "--token-file", "/nonexistent/t", "job", "list"], &[]);
    assert_eq!(missing.status.code(), Some(2), "{missing:?}");
    assert!(stderr(&missing).contains("cannot read --token-file /nonexistent/t"), "{missing:?}");
}
