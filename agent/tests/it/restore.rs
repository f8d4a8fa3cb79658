//! Test helpers for computer restore points: restore a manifest from the store into a
//! folder, and read trees for byte-for-byte comparison.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// What a tree holds at one relative path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    File { bytes: Vec<u8>, mode: u32 },
    Link(PathBuf),
}

/// Every entry under `root` (itself as ""), by relative path; links are not followed.
pub fn tree(root: &Path) -> BTreeMap<String, Node> {
    let mut nodes = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).expect("metadata");
        let relative = path.strip_prefix(root).expect("under root").display().to_string();
        let node = if meta.is_symlink() {
            Node::Link(fs::read_link(&path).expect("link"))
        } else if meta.is_dir() {
            stack.extend(fs::read_dir(&path).expect("dir").map(|e| e.expect("entry").path()));
            Node::Dir
        } else {
            let mode = meta.permissions().mode() & 0o7777;
            Node::File { bytes: fs::read(&path).expect("file"), mode }
        };
        nodes.insert(relative, node);
    }
    nodes
}

/// Asserts two trees are equal, naming the first difference.
pub fn assert_same_tree(expected: &BTreeMap<String, Node>, actual: &BTreeMap<String, Node>) {
    let paths = |t: &BTreeMap<String, Node>| t.keys().cloned().collect::<Vec<_>>();
    assert_eq!(paths(expected), paths(actual), "same entries");
    for (path, node) in expected {
        assert!(actual[path] == *node, "{path:?} differs after restore");
    }
}

/// The manifest of a restore point folder.
pub fn manifest(folder: &Path) -> serde_json::Value {
    let text = fs::read(folder.join("manifest.json")).expect("manifest");
    serde_json::from_slice(&text).expect("manifest json")
}

/// Where a blob lives in the repository's store.
pub fn blob_path(repository: &Path, sha256: &str) -> PathBuf {
    repository.join(".store").join(&sha256[..2]).join(sha256)
}

/// Every blob file in the store, by path relative to the repository.
pub fn blobs(repository: &Path) -> Vec<String> {
    let store = repository.join(".store");
    let mut found = Vec::new();
    for shard in fs::read_dir(&store).into_iter().flatten().flatten() {
        for blob in fs::read_dir(shard.path()).into_iter().flatten().flatten() {
            found.push(blob.path().strip_prefix(repository).expect("under").display().to_string());
        }
    }
    found.sort();
    found
}

/// Hex SHA-256 of bytes.
pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Restores every entry of the manifest into `dest` (an entry `/a/b` becomes `dest/a/b`)
/// from the repository's store, checking each blob against its hash.
pub fn restore(manifest: &serde_json::Value, repository: &Path, dest: &Path) {
    for entry in manifest["entries"].as_array().expect("entries") {
        let path = entry["path"].as_str().expect("path");
        let target = dest.join(path.trim_start_matches('/'));
        match entry["kind"].as_str().expect("kind") {
            "dir" => fs::create_dir_all(&target).expect("dir"),
            "symlink" => symlink(entry["target"].as_str().expect("target"), &target).expect("link"),
            "file" => restore_file(entry, repository, &target),
            other => panic!("unknown kind {other}"),
        }
    }
}

fn restore_file(entry: &serde_json::Value, repository: &Path, target: &Path) {
    let sha = entry["sha256"].as_str().expect("sha256");
    let bytes = fs::read(blob_path(repository, sha)).expect("blob");
    assert_eq!(sha256(&bytes), sha, "blob content matches its name");
    assert_eq!(Some(bytes.len() as u64), entry["size"].as_u64(), "blob size matches the entry");
    fs::create_dir_all(target.parent().expect("parent")).expect("parent dir");
    fs::write(target, bytes).expect("file");
    let mode = u32::try_from(entry["mode"].as_u64().expect("mode")).expect("mode fits");
    fs::set_permissions(target, fs::Permissions::from_mode(mode)).expect("mode");
}
