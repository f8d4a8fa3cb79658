//! Helpers of the agent-computer scenarios: directory trees made for a computer to protect,
//! `AGENT_BACKUP` jobs over them, their outcome messages, and [`tree_differences`], which
//! compares a restored tree with its source, file contents, link targets and permission
//! bits included (restore points themselves: [`crate::manifests`]).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
};

use sluice_proto::pb::{self, job_item::Target};

use crate::jobs::JobBuilder;

/// One kibibyte.
pub const KIB: u64 = 1024;

// ---------------------------------------------------------------------------------------------
// Trees to protect
// ---------------------------------------------------------------------------------------------

/// Deterministic bytes unique to `seed` (xorshift64*), `len` of them.
pub fn pseudo_random(seed: u64, len: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let word = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        out.extend_from_slice(&word.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A seed derived from a text (FNV-1a), so every computer's content differs.
pub fn seed_of(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Writes `bytes` to `path`, creating its parent folders.
pub fn write_file(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
    }
    fs::write(path, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

pub(crate) fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("cannot chmod {:o} {}: {e}", mode, path.display()));
}

pub(crate) fn make_symlink(target: &str, path: &Path) {
    symlink(target, path)
        .unwrap_or_else(|e| panic!("cannot link {} -> {target}: {e}", path.display()));
}

/// What a tree holds, as the computer executor counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TreeStats {
    /// Regular files.
    pub files: u64,
    /// Bytes of every file.
    pub bytes: u64,
}

/// Counts the regular files under `root` and their bytes (links not followed).
pub fn tree_stats(root: &Path) -> TreeStats {
    let mut stats = TreeStats::default();
    for (_, node) in read_tree(root) {
        if let Node::File { content, .. } = node {
            stats.files += 1;
            stats.bytes += content.len() as u64;
        }
    }
    stats
}

/// Creates at `root` a tree whose file contents are unique to `seed`: nested folders, an
/// empty folder, an empty file, a script (`0755`), a private key (`0600`), a file larger
/// than the executor's 1 MiB read buffer, a relative link to a file, a link to a folder
/// (never followed) and a dangling absolute link. Returns what it holds.
pub fn make_tree(root: &Path, seed: u64) -> TreeStats {
    let text = format!("computer tree {seed:016x}\n");
    write_file(&root.join("readme.txt"), text.as_bytes());
    write_file(&root.join("docs/report.bin"), &pseudo_random(seed ^ 1, 300 * KIB + 7));
    write_file(&root.join("docs/nested/deep/data.bin"), &pseudo_random(seed ^ 2, 1536 * KIB + 3));
    write_file(&root.join("docs/empty.txt"), b"");
    let script = format!("#!/bin/sh\necho {seed}\n");
    write_file(&root.join("bin/run.sh"), script.as_bytes());
    set_mode(&root.join("bin/run.sh"), 0o755);
    write_file(&root.join("secret.key"), &pseudo_random(seed ^ 3, 4 * KIB));
    set_mode(&root.join("secret.key"), 0o600);
    fs::create_dir_all(root.join("empty-dir"))
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", root.display()));
    make_symlink("readme.txt", &root.join("link-to-readme"));
    make_symlink("docs", &root.join("link-to-docs"));
    make_symlink("/nonexistent/sluice-target", &root.join("dangling"));
    tree_stats(root)
}

/// Adds `count` files `bulk/file-NN.bin` of `size` bytes each, unique to `seed`, under
/// `root`: data a rate-limited agent reads for a while.
pub fn add_bulk(root: &Path, seed: u64, count: u64, size: u64) {
    for n in 0..count {
        let path = root.join("bulk").join(format!("file-{n:02}.bin"));
        write_file(&path, &pseudo_random(seed ^ (0x1000 + n), size));
    }
}

// ---------------------------------------------------------------------------------------------
// Jobs
// ---------------------------------------------------------------------------------------------

/// An `AGENT_BACKUP` job into `repository`, as the computer scenarios run them: one attempt
/// per item, a graceful timeout of 600 s; add items (and an offline wait) to it.
pub fn computer_job(name: &str, repository: &Path) -> JobBuilder {
    JobBuilder::computer(name).repository(repository).retry(1, 1).graceful_timeout(600)
}

/// The configured paths of computer item `index` of `job`.
pub fn computer_paths(job: &pb::Job, index: usize) -> Vec<PathBuf> {
    match job.items.get(index).and_then(|item| item.target.as_ref()) {
        Some(Target::Computer(target)) => target.paths.iter().map(PathBuf::from).collect(),
        other => panic!("item {index} of {} is not a computer: {other:?}", job.name),
    }
}

// ---------------------------------------------------------------------------------------------
// Outcome messages
// ---------------------------------------------------------------------------------------------

/// A parsed outcome message:
/// `backed up <files> files, <size_bytes> bytes, <bytes_written> new bytes stored[; ...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Files backed up.
    pub files: u64,
    /// Their logical size.
    pub size_bytes: u64,
    /// Bytes new to the store.
    pub new_bytes: u64,
    /// The `; <warning>` parts.
    pub warnings: Vec<String>,
}

/// Parses an outcome message; `None` when it does not have the documented format.
pub fn parse_outcome(message: &str) -> Option<Outcome> {
    let mut parts = message.split("; ");
    let head = parts.next()?;
    let rest = head.strip_prefix("backed up ")?;
    let (files, rest) = rest.split_once(" files, ")?;
    let (size, rest) = rest.split_once(" bytes, ")?;
    let new = rest.strip_suffix(" new bytes stored")?;
    Some(Outcome {
        files: files.parse().ok()?,
        size_bytes: size.parse().ok()?,
        new_bytes: new.parse().ok()?,
        warnings: parts.map(str::to_string).collect(),
    })
}

/// [`parse_outcome`] that panics naming the item when the message is not an outcome.
#[track_caller]
pub fn outcome_of(item: &pb::ItemStatus) -> Outcome {
    parse_outcome(&item.message).unwrap_or_else(|| {
        panic!(
            "{}: message {:?} is not `backed up <files> files, <size_bytes> bytes, \
             <bytes_written> new bytes stored`",
            item.name, item.message
        )
    })
}

/// One entry of a tree read from disk.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir { mode: u32 },
    File { mode: u32, content: Vec<u8> },
    Symlink { target: PathBuf },
    Other,
}

/// Every entry under `root` (the root itself as `.`), links read, never followed.
fn read_tree(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut found = BTreeMap::new();
    let mut pending = vec![PathBuf::from(".")];
    while let Some(relative) = pending.pop() {
        let path =
            if relative == Path::new(".") { root.to_path_buf() } else { root.join(&relative) };
        let meta = fs::symlink_metadata(&path)
            .unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()));
        let mode = meta.permissions().mode() & 0o7777;
        let node = if meta.is_dir() {
            for entry in fs::read_dir(&path)
                .unwrap_or_else(|e| panic!("cannot list {}: {e}", path.display()))
            {
                let entry = entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", path.display()));
                let child = if relative == Path::new(".") {
                    PathBuf::from(entry.file_name())
                } else {
                    relative.join(entry.file_name())
                };
                pending.push(child);
            }
            Node::Dir { mode }
        } else if meta.is_file() {
            let content =
                fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            Node::File { mode, content }
        } else if meta.is_symlink() {
            let target = fs::read_link(&path)
                .unwrap_or_else(|e| panic!("cannot read link {}: {e}", path.display()));
            Node::Symlink { target }
        } else {
            Node::Other
        };
        found.insert(relative, node);
    }
    found
}

fn describe_node(node: &Node) -> String {
    match node {
        Node::Dir { mode } => format!("folder {mode:o}"),
        Node::File { mode, content } => format!("file {mode:o} of {} bytes", content.len()),
        Node::Symlink { target } => format!("link to {}", target.display()),
        Node::Other => "special file".to_string(),
    }
}

/// Differences between the trees at `expected` and `actual`: entries missing or extra, and
/// entries whose kind, permission bits, file content or link target differ. Empty when the
/// trees are the same byte for byte.
pub fn tree_differences(expected: &Path, actual: &Path) -> Vec<String> {
    if fs::symlink_metadata(actual).is_err() {
        return vec![format!("{} does not exist", actual.display())];
    }
    let want = read_tree(expected);
    let got = read_tree(actual);
    let mut differences = Vec::new();
    for (path, node) in &want {
        match got.get(path) {
            None => {
                differences.push(format!("{}: missing ({})", path.display(), describe_node(node)))
            }
            Some(other) if other == node => {}
            Some(other) => {
                let mut text = format!(
                    "{}: expected {}, found {}",
                    path.display(),
                    describe_node(node),
                    describe_node(other)
                );
                if let (Node::File { content: a, .. }, Node::File { content: b, .. }) =
                    (node, other)
                    && let Some(at) = a.iter().zip(b).position(|(x, y)| x != y)
                {
                    let _ = write!(text, " (contents first differ at byte {at})");
                }
                differences.push(text);
            }
        }
    }
    for (path, node) in &got {
        if !want.contains_key(path) {
            differences.push(format!("{}: unexpected ({})", path.display(), describe_node(node)));
        }
    }
    differences
}

/// Asserts that the trees at `expected` and `actual` are the same byte for byte.
#[track_caller]
pub fn assert_same_tree(expected: &Path, actual: &Path, what: &str) {
    let differences = tree_differences(expected, actual);
    assert!(
        differences.is_empty(),
        "{what}: {} differs from {}:\n  {}",
        actual.display(),
        expected.display(),
        differences.join("\n  ")
    );
}

/// A cluster of a proxy agent and computer pc1's agent, with job `laptops` created: it
/// backs pc1's home (a made tree) up into `<dir>/repository`.
pub struct Laptops {
    /// The cluster.
    pub cluster: crate::Cluster,
    /// A JobService client of it.
    pub jobs: crate::api::Jobs,
    /// The cluster's folder.
    pub dir: PathBuf,
    /// The job's repository.
    pub repository: PathBuf,
    /// pc1's protected tree.
    pub home: PathBuf,
}

/// Starts [`Laptops`].
pub async fn laptops() -> Laptops {
    let builder = crate::Cluster::builder().agent(crate::AgentSpec::new());
    let mut cluster = builder.computers(&["pc1"]).start().await;
    let dir = cluster.dir().to_path_buf();
    let repository = dir.join("repository");
    let home = dir.join("computers/pc1/home");
    make_tree(&home, seed_of("pc1/home"));
    let job = computer_job("laptops", &repository).item(crate::jobs::computer_item(
        "pc1",
        "pc1",
        &[&home],
    ));
    let mut jobs = cluster.job_client().await;
    crate::api::create_job(&mut jobs, job.build()).await;
    Laptops { cluster, jobs, dir, repository, home }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_outcome_messages() {
        let message =
            "backed up 3 files, 10 bytes, 0 new bytes stored; changed while being read: /a";
        let outcome = parse_outcome(message).expect("an outcome");
        assert_eq!((outcome.files, outcome.size_bytes, outcome.new_bytes), (3, 10, 0));
        assert_eq!(outcome.warnings, vec!["changed while being read: /a".to_string()]);
        assert_eq!(parse_outcome("canceled by user"), None);
    }

    #[test]
    fn tree_comparison_sees_contents_modes_and_link_targets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir.path().join("src");
        make_tree(&source, 7);
        let same = dir.path().join("same");
        make_tree(&same, 7);
        assert_eq!(tree_differences(&source, &same), Vec::<String>::new());
        fs::remove_file(same.join("link-to-readme")).expect("unlink");
        make_symlink("secret.key", &same.join("link-to-readme"));
        set_mode(&same.join("bin/run.sh"), 0o644);
        let differences = tree_differences(&source, &same);
        assert_eq!(differences.len(), 2, "{differences:?}");
        assert!(differences[0].starts_with("bin/run.sh: expected file 755"), "{differences:?}");
        assert!(differences[1].starts_with("link-to-readme: expected link"), "{differences:?}");
        let other = dir.path().join("other");
        make_tree(&other, 8);
        assert!(!tree_differences(&source, &other).is_empty());
    }
}
