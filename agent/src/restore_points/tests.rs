//! Verify, restore and collection over a repository made by hand, laid out as the
//! executors lay it out.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tonic::Code;

use super::gc::{Collected, collect_garbage, delete_restore_points};
use super::location::Location;
use super::restore::{Restored, disk_names, restore};
use super::verify::verify;
use super::*;
use crate::repository::{COMPUTER_FORMAT, Disk, MANIFEST, Store, VmManifest};

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn location(repository: &Path, item: &str, id: &str) -> Location {
    Location {
        repository: repository.to_path_buf(),
        job: "j".into(),
        item: item.into(),
        id: id.into(),
    }
}

fn entry(path: &str, kind: &str, mode: u32) -> serde_json::Value {
    serde_json::json!({"path": path, "kind": kind, "size": 0, "mode": mode,
                       "mtime": "2025-05-06T07:08:09Z"})
}

/// Stores `content` as a blob and returns the file entry naming it.
fn stored_file(repository: &Path, path: &str, content: &[u8], mode: u32) -> serde_json::Value {
    let hash = sha(content);
    let blob = Store::new(repository).blob_path(&hash);
    fs::create_dir_all(blob.parent().expect("shard")).expect("shard");
    fs::write(&blob, content).expect("blob");
    let mut file = entry(path, "file", mode);
    file["size"] = content.len().into();
    file["sha256"] = hash.into();
    file
}

/// A computer restore point `id` of item `pc` holding `/data` with two files and a link,
/// with the manifest fields the computer executor writes.
fn computer_restore_point(repository: &Path, id: &str, seed: &str) -> Location {
    let mut link = entry("/data/sub/link", "symlink", 0o777);
    link["target"] = "../a.txt".into();
    let entries = vec![
        entry("/data", "dir", 0o755),
        stored_file(repository, "/data/a.txt", format!("alpha {seed}").as_bytes(), 0o640),
        entry("/data/sub", "dir", 0o500),
        stored_file(repository, "/data/sub/b.bin", b"shared bytes", 0o444),
        link,
    ];
    let manifest = serde_json::json!({
        "format": COMPUTER_FORMAT, "restore_point": id, "job": "j", "item": "pc", "session_id": "s",
        "computer": "pc1", "created_at": "2025-05-06T07:08:09Z", "paths": ["/data"],
        "entries": entries, "files": 2, "directories": 2, "symlinks": 1, "size_bytes": 21,
        "bytes_written": 21, "warnings": [],
    });
    let location = location(repository, "pc", id);
    fs::create_dir_all(location.folder()).expect("folder");
    fs::write(location.folder().join("manifest.json"), manifest.to_string()).expect("manifest");
    location
}

/// A VM restore point whose one disk is a real qcow2 image holding `data`, in the first VM
/// manifest format (SHA-256).
fn vm_restore_point(repository: &Path, id: &str, data: &[u8]) -> Location {
    let location = location(repository, "vm", id);
    fs::create_dir_all(location.folder()).expect("folder");
    let image = location.folder().join("disk0.qcow2");
    let raw = location.folder().join("data.raw");
    fs::write(&raw, data).expect("data");
    let status = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .args([&raw, &image])
        .status()
        .expect("qemu-img runs");
    assert!(status.success(), "qemu-img convert");
    fs::remove_file(&raw).expect("rm raw");
    let disk = fs::read(&image).expect("image");
    let manifest = serde_json::json!({
        "restore_point": id, "job": "j", "item": "vm", "session_id": "s",
        "created_at": "2025-05-06T07:08:09Z",
        "disks": [{"source": "/vms/web.qcow2", "file": "disk0.qcow2",
                   "size_bytes": disk.len(), "sha256": sha(&disk), "virtual_size": 1}],
    });
    fs::write(location.folder().join("manifest.json"), manifest.to_string()).expect("manifest");
    location
}

fn blob_of(repository: &Path, content: &[u8]) -> PathBuf {
    Store::new(repository).blob_path(&sha(content))
}

/// Flips the first byte of a file, keeping its size.
fn corrupt(path: &Path) {
    let mut bytes = fs::read(path).expect("read");
    bytes[0] ^= 0xff;
    fs::write(path, bytes).expect("write");
}

#[test]
fn a_good_computer_restore_point_verifies_and_a_corrupt_blob_is_named() {
    let repo = tempfile::tempdir().expect("tempdir");
    let rp = computer_restore_point(repo.path(), "s-0", "one");
    let report = verify(&rp, &Cancel::default()).expect("verify");
    assert_eq!(report.problems, Vec::<String>::new());
    assert_eq!(report.bytes_checked, 9 + 12);

    corrupt(&blob_of(repo.path(), b"shared bytes"));
    let report = verify(&rp, &Cancel::default()).expect("verify");
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let expected = format!("/data/sub/b.bin: blob {}: sha256 is ", sha(b"shared bytes"));
    assert!(report.problems[0].starts_with(&expected), "{:?}", report.problems);

    fs::remove_file(blob_of(repo.path(), b"alpha one")).expect("remove");
    let report = verify(&rp, &Cancel::default()).expect("verify");
    let missing = format!("/data/a.txt: blob {} is missing from the store", sha(b"alpha one"));
    assert!(report.problems.contains(&missing), "{:?}", report.problems);
}

/// Rewrites the manifest of the restore point at `location` with `edit`.
fn edit_manifest(location: &Location, edit: impl FnOnce(&mut Vec<serde_json::Value>)) {
    let path = location.folder().join(MANIFEST);
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(&path).expect("read")).expect("json");
    let entries = manifest["entries"].as_array_mut().expect("entries");
    edit(entries);
    fs::write(&path, manifest.to_string()).expect("write");
}

#[test]
fn verify_names_an_entry_lost_or_listed_twice_and_a_sha256_that_is_no_blob_name() {
    let repo = tempfile::tempdir().expect("tempdir");
    let rp = computer_restore_point(repo.path(), "s-0", "one");
    edit_manifest(&rp, |entries| drop(entries.remove(3)));
    let report = verify(&rp, &Cancel::default()).expect("verify");
    let lost = "manifest.json: its entries add up to files 1, bytes 9, directories 2, links 1; \
                it records files 2, bytes 21, directories 2, links 1";
    assert_eq!(report.problems, vec![lost.to_owned()]);

    let rp = computer_restore_point(repo.path(), "s-1", "one");
    edit_manifest(&rp, |entries| entries.push(entries[1].clone()));
    let report = verify(&rp, &Cancel::default()).expect("verify");
    let twice = "manifest.json: entry \"/data/a.txt\" is listed twice";
    assert_eq!(report.problems.first().map(String::as_str), Some(twice), "{:?}", report.problems);

    let rp = computer_restore_point(repo.path(), "s-2", "one");
    edit_manifest(&rp, |entries| entries[1]["sha256"] = "../../../../../../etc/passwd".into());
    let report = verify(&rp, &Cancel::default()).expect("verify");
    assert_eq!(report.bytes_checked, 0, "nothing read");
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let refused =
        "manifest.json: not a valid sluice-computer-1 manifest: sha256 is not 64 lowercase";
    assert!(report.problems[0].starts_with(refused), "{:?}", report.problems);
    let out = tempfile::tempdir().expect("tempdir");
    let error =
        restore(&rp, out.path(), &Cancel::default(), &RestoreLog::default()).expect_err("refused");
    let status = tonic::Status::from(error);
    assert_eq!(status.code(), Code::DataLoss, "an invalid manifest is damaged data");
    assert!(status.message().contains("sha256 is not 64 lowercase hex digits"), "{status:?}");
}

#[test]
fn a_vm_disk_of_another_size_or_content_is_named() {
    let repo = tempfile::tempdir().expect("tempdir");
    let rp = vm_restore_point(repo.path(), "s-1", b"qcow2 bytes");
    assert_eq!(verify(&rp, &Cancel::default()).expect("verify").problems, Vec::<String>::new());
    corrupt(&rp.folder().join("disk0.qcow2"));
    let problems = verify(&rp, &Cancel::default()).expect("verify").problems;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("disk0.qcow2 (disk /vms/web.qcow2): sha256 is "),
        "{problems:?}"
    );
    let size = fs::metadata(rp.folder().join("disk0.qcow2")).expect("size").len();
    fs::write(rp.folder().join("disk0.qcow2"), b"short").expect("truncate");
    let problems = verify(&rp, &Cancel::default()).expect("verify").problems;
    let expected =
        format!("disk0.qcow2 (disk /vms/web.qcow2): 5 bytes, the manifest records {size}");
    assert!(problems.contains(&expected), "{problems:?}");
    let gone = location(repo.path(), "vm", "s-9");
    let problems = verify(&gone, &Cancel::default()).expect("verify").problems;
    assert_eq!(
        problems,
        vec![format!("restore point folder {} does not exist", gone.folder().display())]
    );
}

/// Rewrites a restore point's manifest in format `sluice-vm-2`: BLAKE3 instead of SHA-256.
fn to_format_2(rp: &Location) {
    let path = rp.folder().join(MANIFEST);
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(&path).expect("manifest")).expect("json");
    let disk = fs::read(rp.folder().join("disk0.qcow2")).expect("disk");
    manifest["format"] = "sluice-vm-2".into();
    manifest["disks"][0]["blake3"] = blake3::hash(&disk).to_hex().as_str().into();
    manifest["disks"][0].as_object_mut().expect("disk").remove("sha256");
    fs::write(&path, manifest.to_string()).expect("manifest");
}

/// Manifests of both VM formats verify and restore; a disk of format 2 whose bytes changed
/// is named with its BLAKE3, and one without any checksum is refused.
#[test]
fn a_vm_manifest_of_format_2_verifies_restores_and_names_a_corrupt_disk() {
    let repo = tempfile::tempdir().expect("tempdir");
    let rp = vm_restore_point(repo.path(), "s-1", b"qcow2 bytes");
    to_format_2(&rp);
    assert_eq!(verify(&rp, &Cancel::default()).expect("verify").problems, Vec::<String>::new());
    let out = tempfile::tempdir().expect("tempdir");
    let restored = restore(&rp, &out.path().join("r"), &Cancel::default(), &RestoreLog::default())
        .expect("restore");
    assert_eq!(restored.files, 1);
    corrupt(&rp.folder().join("disk0.qcow2"));
    let problems = verify(&rp, &Cancel::default()).expect("verify").problems;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("disk0.qcow2 (disk /vms/web.qcow2): blake3 is "),
        "{problems:?}"
    );
    let refused =
        restore(&rp, &out.path().join("again"), &Cancel::default(), &RestoreLog::default());
    assert!(refused.is_err(), "a corrupt disk is not restored");

    let path = rp.folder().join(MANIFEST);
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(&path).expect("manifest")).expect("json");
    manifest["disks"][0].as_object_mut().expect("disk").remove("blake3");
    fs::write(&path, manifest.to_string()).expect("manifest");
    let problems = verify(&rp, &Cancel::default()).expect("verify").problems;
    assert_eq!(
        problems,
        vec!["disk0.qcow2 (disk /vms/web.qcow2): disk0.qcow2: the manifest records no checksum"]
    );
}

/// A setuid file of `nobody` comes back owned by `nobody`; one recorded without its owner
/// (a manifest from before owners were recorded) loses its setuid and setgid bits, or a
/// restore by a root agent would make it setuid root.
#[test]
fn a_restore_sets_owners_and_keeps_setuid_only_with_its_owner() {
    let repo = tempfile::tempdir().expect("tempdir");
    let rp = computer_restore_point(repo.path(), "s-0", "one");
    edit_manifest(&rp, |entries| {
        for (index, owner) in [(1, Some(65534)), (3, None)] {
            entries[index]["mode"] = 0o6755.into();
            entries[index]["uid"] = owner.into();
            entries[index]["gid"] = owner.into();
        }
        entries[4]["uid"] = 65534.into();
    });
    let out = tempfile::tempdir().expect("tempdir");
    restore(&rp, out.path(), &Cancel::default(), &RestoreLog::default()).expect("restore");
    let meta = |p: &str| fs::symlink_metadata(out.path().join(p)).expect("meta");
    let owned = meta("data/a.txt");
    assert_eq!((owned.uid(), owned.gid(), owned.mode() & 0o7777), (65534, 65534, 0o6755));
    let unowned = meta("data/sub/b.bin");
    assert_eq!((unowned.uid(), unowned.mode() & 0o7777), (0, 0o755), "setuid and setgid gone");
    assert_eq!(meta("data/sub/link").uid(), 65534, "a link's owner too");
}

#[test]
fn a_computer_restore_recreates_contents_modes_mtimes_and_links() {
    let repo = tempfile::tempdir().expect("tempdir");
    let rp = computer_restore_point(repo.path(), "s-0", "one");
    let out = tempfile::tempdir().expect("tempdir");
    let target = out.path().join("new");
    let restored =
        restore(&rp, &target, &Cancel::default(), &RestoreLog::default()).expect("restore");
    assert_eq!(restored, Restored { files: 2, bytes: 21, directories: 2, symlinks: 1 });
    assert_eq!(fs::read(target.join("data/a.txt")).expect("a"), b"alpha one");
    assert_eq!(fs::read(target.join("data/sub/b.bin")).expect("b"), b"shared bytes");
    assert_eq!(fs::read_link(target.join("data/sub/link")).expect("link"), Path::new("../a.txt"));
    let mode = |p: &str| fs::metadata(target.join(p)).expect("meta").permissions().mode() & 0o7777;
    assert_eq!((mode("data/a.txt"), mode("data/sub"), mode("data")), (0o640, 0o500, 0o755));
    let mtime = fs::metadata(target.join("data/sub")).expect("meta").modified().expect("mtime");
    let expected = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_746_515_289);
    assert_eq!(mtime, expected);
    fs::set_permissions(target.join("data/sub"), fs::Permissions::from_mode(0o755)).expect("w");

    let error =
        restore(&rp, &target, &Cancel::default(), &RestoreLog::default()).expect_err("not empty");
    assert_eq!(tonic::Status::from(error).code(), Code::FailedPrecondition);
}

#[test]
fn a_restore_over_a_corrupt_blob_is_data_loss_and_leaves_nothing() {
    let repo = tempfile::tempdir().expect("tempdir");
    let rp = computer_restore_point(repo.path(), "s-0", "one");
    corrupt(&blob_of(repo.path(), b"shared bytes"));
    let out = tempfile::tempdir().expect("tempdir");
    let error =
        restore(&rp, out.path(), &Cancel::default(), &RestoreLog::default()).expect_err("corrupt");
    let status = tonic::Status::from(error);
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert!(status.message().starts_with("/data/sub/b.bin: blob "), "{status:?}");
    assert_eq!(fs::read_dir(out.path()).expect("list").count(), 0, "nothing left behind");
}

#[test]
fn a_vm_restore_copies_each_disk_under_its_source_name() {
    let repo = tempfile::tempdir().expect("tempdir");
    let rp = vm_restore_point(repo.path(), "s-1", b"qcow2 bytes");
    let out = tempfile::tempdir().expect("tempdir");
    let restored =
        restore(&rp, out.path(), &Cancel::default(), &RestoreLog::default()).expect("restore");
    let image = fs::read(rp.folder().join("disk0.qcow2")).expect("image");
    assert_eq!((restored.files, restored.bytes), (1, image.len() as u64));
    assert_eq!(fs::read(out.path().join("web.qcow2")).expect("disk"), image);
    let cancel = Cancel::default();
    cancel.cancel();
    let again = out.path().join("again");
    assert!(
        restore(&rp, &again, &cancel, &RestoreLog::default()).is_err(),
        "a cancelled restore fails"
    );
    assert!(!again.exists(), "and removes the directory it created");
}

#[test]
fn disks_with_the_same_file_name_get_distinct_names() {
    let disk = |source: &str, file: &str| Disk {
        source: source.into(),
        file: file.into(),
        ..Disk::default()
    };
    let manifest = VmManifest {
        disks: vec![disk("/a/d.qcow2", "disk0.qcow2"), disk("/b/d.qcow2", "disk1.qcow2")],
        ..VmManifest::default()
    };
    assert_eq!(disk_names(&manifest), vec!["d.qcow2".to_owned(), "1-d.qcow2".to_owned()]);
}

#[test]
fn garbage_collection_removes_only_blobs_no_manifest_names_and_waits_for_backups() {
    let repo = tempfile::tempdir().expect("tempdir");
    let old = computer_restore_point(repo.path(), "s-0", "old");
    let _new = computer_restore_point(repo.path(), "s-1", "new");
    let _vm = vm_restore_point(repo.path(), "s-2", b"disk");
    let (deleted, problems) = delete_restore_points(std::slice::from_ref(&old));
    assert_eq!((deleted, problems), (vec!["s-0".to_owned()], Vec::<String>::new()));
    assert!(!old.folder().exists());

    let partial = old.item_dir().join(".partial-s-3");
    fs::create_dir_all(&partial).expect("partial");
    let stood_back = collect_garbage(repo.path(), &Cancel::default()).expect("collect");
    assert_eq!(stood_back.blobs_removed, 0);
    assert!(stood_back.skipped.contains(".partial-s-3"), "{stood_back:?}");
    fs::remove_dir(&partial).expect("partial gone");

    let collected = collect_garbage(repo.path(), &Cancel::default()).expect("collect");
    assert_eq!(
        collected,
        Collected { blobs_removed: 1, bytes_removed: 9, blobs_kept: 2, skipped: String::new() }
    );
    assert!(!blob_of(repo.path(), b"alpha old").exists());
    assert!(blob_of(repo.path(), b"alpha new").exists());
    assert!(blob_of(repo.path(), b"shared bytes").exists());
}

/// A computer restore point `id` of item `pc` whose manifest lists `entries` as given.
fn crafted_restore_point(repository: &Path, id: &str, entries: Vec<serde_json::Value>) -> Location {
    let manifest = serde_json::json!({
        "format": COMPUTER_FORMAT, "restore_point": id, "job": "j", "item": "pc",
        "session_id": "s", "paths": ["/"], "entries": entries,
    });
    let location = location(repository, "pc", id);
    fs::create_dir_all(location.folder()).expect("folder");
    fs::write(location.folder().join("manifest.json"), manifest.to_string()).expect("manifest");
    location
}

fn link(path: &str, target: &str) -> serde_json::Value {
    let mut link = entry(path, "symlink", 0o777);
    link["target"] = target.into();
    link
}

#[test]
fn a_restore_never_writes_through_a_restored_symlink() {
    let repo = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("outside");
    fs::set_permissions(outside.path(), fs::Permissions::from_mode(0o755)).expect("mode");
    let escape = outside.path().display().to_string();
    let cases = [
        (
            "file under an absolute link",
            vec![
                entry("/d", "dir", 0o755),
                link("/d/l", &escape),
                stored_file(repo.path(), "/d/l/evil", b"written outside", 0o644),
            ],
        ),
        (
            "file under a relative link",
            vec![
                link("/up", &format!("../../../../../../../../..{escape}")),
                stored_file(repo.path(), "/up/evil", b"written outside", 0o644),
            ],
        ),
        ("folder listed again after a link", vec![link("/d", &escape), entry("/d", "dir", 0o700)]),
        ("folder under a link", vec![link("/d", &escape), entry("/d/sub", "dir", 0o700)]),
    ];
    for (i, (case, entries)) in cases.into_iter().enumerate() {
        let rp = crafted_restore_point(repo.path(), &format!("s-{i}"), entries);
        let target = tempfile::tempdir().expect("target");

        let error = restore(&rp, target.path(), &Cancel::default(), &RestoreLog::default())
            .expect_err(case);

        let status = tonic::Status::from(error);
        assert_eq!(status.code(), Code::DataLoss, "{case}: {status:?}");
        assert_eq!(fs::read_dir(outside.path()).expect("list").count(), 0, "{case}: outside");
        let mode = fs::metadata(outside.path()).expect("meta").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755, "{case}: outside keeps its mode");
        assert_eq!(fs::read_dir(target.path()).expect("list").count(), 0, "{case}: left nothing");
    }
}

#[test]
fn links_are_restored_last_and_never_followed_for_modes() {
    let repo = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("outside");
    let file = outside.path().join("victim");
    fs::write(&file, b"x").expect("victim");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).expect("mode");
    let entries = vec![
        entry("/d", "dir", 0o555),
        link("/d/a-link", &file.display().to_string()),
        stored_file(repo.path(), "/d/b", b"inside", 0o640),
    ];
    let rp = crafted_restore_point(repo.path(), "s-0", entries);
    let target = tempfile::tempdir().expect("target");

    let restored =
        restore(&rp, target.path(), &Cancel::default(), &RestoreLog::default()).expect("restore");

    assert_eq!(restored, Restored { files: 1, bytes: 6, directories: 1, symlinks: 1 });
    assert_eq!(fs::read_link(target.path().join("d/a-link")).expect("link"), file);
    let mode = |p: &Path| fs::symlink_metadata(p).expect("meta").permissions().mode() & 0o7777;
    assert_eq!(mode(&file), 0o600, "the link's target is untouched");
    assert_eq!((mode(&target.path().join("d")), mode(&target.path().join("d/b"))), (0o555, 0o640));
    fs::set_permissions(target.path().join("d"), fs::Permissions::from_mode(0o755)).expect("w");
}

#[test]
fn only_folders_holding_the_named_restore_points_manifest_are_deleted() {
    let repo = tempfile::tempdir().expect("tempdir");
    let no_manifest = location(repo.path(), "pc", "s-1");
    fs::create_dir_all(no_manifest.folder()).expect("folder");
    fs::write(no_manifest.folder().join("precious.txt"), b"not a backup").expect("file");
    let other_id = location(repo.path(), "pc", "s-2");
    fs::create_dir_all(other_id.folder()).expect("folder");
    let manifest = computer_restore_point(repo.path(), "s-9", "other").folder().join(MANIFEST);
    fs::rename(manifest, other_id.folder().join(MANIFEST)).expect("a manifest naming s-9");
    let other_item = location(repo.path(), "pc", "s-3");
    fs::rename(vm_restore_point(repo.path(), "s-3", b"d").folder(), other_item.folder())
        .expect("a VM restore point of item vm, moved");
    let other_job = Location { job: "k".into(), ..location(repo.path(), "pc", "s-0") };
    let copied = computer_restore_point(repo.path(), "s-0", "copied").folder();
    fs::create_dir_all(other_job.item_dir()).expect("item folder");
    fs::rename(copied, other_job.folder()).expect("a restore point of job j, moved");
    let good = computer_restore_point(repo.path(), "s-0", "good");
    let gone = location(repo.path(), "pc", "s-4");

    let asked = [
        good.clone(),
        no_manifest.clone(),
        other_id.clone(),
        other_item.clone(),
        other_job.clone(),
        gone,
    ];
    let (deleted, problems) = delete_restore_points(&asked);

    assert_eq!(deleted, vec!["s-0".to_owned(), "s-4".to_owned()], "{problems:?}");
    assert!(!good.folder().exists());
    for kept in [&no_manifest, &other_id, &other_item, &other_job] {
        assert!(kept.folder().exists(), "{} is kept", kept.id);
        let named = problems.iter().filter(|p| p.contains(&kept.folder().display().to_string()));
        assert_eq!(named.count(), 1, "one problem names {}: {problems:?}", kept.id);
    }
    assert!(problems[0].contains("not deleted"), "{problems:?}");
}

mod damage;
mod integrity;
mod links;
mod repository_links;
mod sparse;
mod targets;
