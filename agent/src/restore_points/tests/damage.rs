//! A restore point whose manifest is damaged, or that this agent may not read.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tonic::Code;

use super::{
    Cancel, MANIFEST, RestoreLog, blob_of, computer_restore_point, corrupt, crafted_restore_point,
    edit_manifest, entry, location, restore, stored_file, verify,
};

fn restore_code(location: &super::Location) -> (Code, String) {
    let target = tempfile::tempdir().expect("target");
    let error =
        restore(location, &target.path().join("out"), &Cancel::default(), &RestoreLog::default())
            .expect_err("refused");
    let status = tonic::Status::from(error);
    (status.code(), status.message().to_owned())
}

#[test]
fn a_missing_or_unparsable_manifest_is_data_loss_on_restore_and_a_problem_on_verify() {
    let repo = tempfile::tempdir().expect("tempdir");
    let rp = computer_restore_point(repo.path(), "s-0", "one");
    let manifest = rp.folder().join(MANIFEST);
    let bytes = fs::read(&manifest).expect("manifest");
    fs::write(&manifest, &bytes[..bytes.len() / 2]).expect("truncate");

    let (code, message) = restore_code(&rp);
    assert_eq!(code, Code::DataLoss, "{message}");
    assert!(message.starts_with("restore point s-0: manifest.json: not valid JSON"), "{message}");
    let report = verify(&rp, &Cancel::default()).expect("verify");
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);

    fs::remove_file(&manifest).expect("remove");
    let (code, message) = restore_code(&rp);
    assert_eq!(code, Code::DataLoss, "{message}");
    assert!(message.contains("manifest.json: cannot be read: No such file"), "{message}");
}

/// Set in the child the test below runs as `nobody`: the repository it may not read.
const AS_NOBODY: &str = "SLUICE_TEST_RESTORE_AS_NOBODY";

#[test]
fn a_restore_point_this_agent_may_not_read_is_refused_with_the_real_cause() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let repo = dir.path().join("repo");
    computer_restore_point(&repo, "s-0", "one");
    fs::set_permissions(&repo, fs::Permissions::from_mode(0o700)).expect("root only");
    let name = "restore_points::tests::damage::restore_as_nobody";
    let stdout = crate::testing::run_as_nobody(name, AS_NOBODY, &repo);
    let folder = repo.join("j/pc/s-0");
    let refused = format!(
        "FailedPrecondition restore point folder {} cannot be read: Permission denied",
        folder.display()
    );
    let lines: Vec<&str> = stdout.lines().filter_map(|l| l.strip_prefix("refused: ")).collect();
    assert_eq!(lines.len(), 2, "restore and verify: {stdout}");
    for line in lines {
        assert!(line.starts_with(&refused), "{line}");
    }
}

/// The child of the test above (does nothing unless run by it).
#[test]
fn restore_as_nobody() {
    let Some(repo) = std::env::var_os(AS_NOBODY) else { return };
    let rp = location(Path::new(&repo), "pc", "s-0");
    let (code, message) = restore_code(&rp);
    println!("refused: {code:?} {message}");
    let error = verify(&rp, &Cancel::default()).expect_err("verify refused");
    let status = tonic::Status::from(error);
    println!("refused: {:?} {}", status.code(), status.message());
}

#[test]
fn a_path_with_a_newline_is_escaped_so_each_problem_stays_one_line() {
    let repo = tempfile::tempdir().expect("tempdir");
    let entries =
        vec![entry("/d", "dir", 0o755), stored_file(repo.path(), "/d/new\nline", b"bytes", 0o644)];
    let rp = crafted_restore_point(repo.path(), "s-0", entries);
    corrupt(&blob_of(repo.path(), b"bytes"));

    let problems = verify(&rp, &Cancel::default()).expect("verify").problems;

    // The crafted manifest records no totals: that is a problem of its own.
    let blob: Vec<&String> = problems.iter().filter(|p| p.contains(": blob ")).collect();
    assert_eq!(blob.len(), 1, "{problems:?}");
    assert!(blob[0].starts_with(r#""/d/new\nline": blob "#), "{problems:?}");
    assert!(problems.iter().all(|p| !p.contains('\n')), "{problems:?}");
    let (_, message) = restore_code(&rp);
    assert!(message.starts_with(r#""/d/new\nline": blob "#), "{message}");
}

#[test]
fn an_entry_outside_the_restore_points_paths_is_data_loss_and_a_verify_problem() {
    let repo = tempfile::tempdir().expect("tempdir");
    let rp = computer_restore_point(repo.path(), "s-0", "one");
    let added = stored_file(repo.path(), "/etc/cron.d/pwn", b"* * * * * root sh", 0o644);
    // "/data2" shares a prefix with the configured "/data" but is not below it.
    let beside = stored_file(repo.path(), "/data2/x", b"x", 0o644);
    edit_manifest(&rp, |entries| entries.extend([added, beside]));
    let refused = r#"manifest.json: entry "/etc/cron.d/pwn" is neither one of the restore point's paths nor below one"#;

    let (code, message) = restore_code(&rp);

    assert_eq!(code, Code::DataLoss, "{message}");
    assert_eq!(message, refused);
    let problems = verify(&rp, &Cancel::default()).expect("verify").problems;
    assert!(problems.iter().any(|p| p == refused), "{problems:?}");
    edit_manifest(&rp, |entries| entries.retain(|e| e["path"] != "/etc/cron.d/pwn"));
    let (_, message) = restore_code(&rp);
    assert!(message.contains(r#""/data2/x" is neither"#), "{message}");
}
