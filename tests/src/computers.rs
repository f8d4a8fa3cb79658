//! Helpers of the agent-computer scenarios: directory trees made for a computer to protect,
//! `AGENT_BACKUP` jobs over them, and restores of computer restore points.
//!
//! A computer restore point is `<repository>/<job>/<item>/<rp>/manifest.json` (format
//! `sluice-computer-1`: every entry with path, kind, size, mode, mtime, the sha256 of a
//! file's content and the target of a link) over the repository's content-addressed store
//! `<repository>/.store/<aa>/<sha256>`. [`restore`] rebuilds a tree from those two alone, as
//! an operator's restore would, and [`tree_differences`] compares it with the source, file
//! contents, link targets and permission bits included.
//!
//! The manifest is JSON; the test crate has no JSON library, so a small reader is here
//! ([`Json`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
};

use sluice_proto::pb::{self, job_item::Target};

/// One kibibyte.
pub const KIB: u64 = 1024;

/// Value of a computer manifest's `format` field.
pub const MANIFEST_FORMAT: &str = "sluice-computer-1";

/// Name of the content-addressed store folder of a repository.
pub const STORE_DIR: &str = ".store";

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

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("cannot chmod {:o} {}: {e}", mode, path.display()));
}

fn make_symlink(target: &str, path: &Path) {
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

/// An `AGENT_BACKUP` job into `repository` with `items`, one attempt each, a graceful
/// timeout of 600 s and the given offline wait (seconds; 0 = the 600 s default).
pub fn agent_job(
    name: &str,
    repository: &Path,
    items: Vec<pb::JobItem>,
    offline_wait_seconds: u32,
) -> pb::Job {
    pb::Job {
        name: name.to_string(),
        r#type: pb::JobType::AgentBackup as i32,
        items,
        repository: repository.display().to_string(),
        proxies: Vec::new(),
        retry: Some(pb::RetryPolicy { attempts: 1, wait_seconds: 1 }),
        graceful_timeout_seconds: 600,
        offline_wait_seconds,
        sim_duration_ms: None,
        keep_restore_points: 0,
    }
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

// ---------------------------------------------------------------------------------------------
// Manifests and the store
// ---------------------------------------------------------------------------------------------

/// One entry of a computer manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Absolute path on the computer.
    pub path: String,
    /// `file`, `dir` or `symlink`.
    pub kind: String,
    /// Bytes of a file.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Last modification, RFC 3339.
    pub mtime: String,
    /// SHA-256 of a file's content: its blob.
    pub sha256: Option<String>,
    /// Target of a link.
    pub target: Option<String>,
}

/// A computer manifest (`manifest.json` of a computer restore point).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Folder of the restore point.
    pub folder: PathBuf,
    /// `sluice-computer-1`.
    pub format: String,
    /// Restore point id.
    pub restore_point: String,
    /// Job name.
    pub job: String,
    /// Item name.
    pub item: String,
    /// Session that made it.
    pub session_id: String,
    /// Computer backed up.
    pub computer: String,
    /// Configured paths.
    pub paths: Vec<String>,
    /// Every entry.
    pub entries: Vec<ManifestEntry>,
    /// Regular files.
    pub files: u64,
    /// Folders.
    pub directories: u64,
    /// Links.
    pub symlinks: u64,
    /// Logical size.
    pub size_bytes: u64,
    /// Bytes new to the store.
    pub bytes_written: u64,
    /// Warnings.
    pub warnings: Vec<String>,
}

impl Manifest {
    /// The blobs (sha256) the manifest names.
    pub fn blobs(&self) -> BTreeSet<String> {
        self.entries.iter().filter_map(|e| e.sha256.clone()).collect()
    }
}

/// Reads and checks the shape of `<folder>/manifest.json`.
#[track_caller]
pub fn read_manifest(folder: &Path) -> Manifest {
    let path = folder.join("manifest.json");
    let text = fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read the manifest {}: {e}", path.display()));
    let json = Json::parse(&text)
        .unwrap_or_else(|e| panic!("manifest {} is not JSON: {e}\n{text}", path.display()));
    let field = |name: &str| {
        json.get(name).unwrap_or_else(|| panic!("manifest {} has no {name:?}", path.display()))
    };
    let text_of = |name: &str| field(name).string(&format!("{name} of {}", path.display()));
    let number = |name: &str| field(name).u64(&format!("{name} of {}", path.display()));
    let strings = |value: &Json, what: &str| -> Vec<String> {
        value.array(what).iter().map(|v| v.string(what)).collect()
    };
    let entries = field("entries")
        .array("entries")
        .iter()
        .map(|entry| {
            let what = format!("an entry of {}", path.display());
            let get = |name: &str| {
                entry.get(name).unwrap_or_else(|| panic!("{what} has no {name:?}: {entry:?}"))
            };
            let optional = |name: &str| match entry.get(name) {
                None | Some(Json::Null) => None,
                Some(value) => Some(value.string(&what)),
            };
            ManifestEntry {
                path: get("path").string(&what),
                kind: get("kind").string(&what),
                size: get("size").u64(&what),
                mode: u32::try_from(get("mode").u64(&what))
                    .unwrap_or_else(|_| panic!("{what}: mode out of range")),
                mtime: get("mtime").string(&what),
                sha256: optional("sha256"),
                target: optional("target"),
            }
        })
        .collect();
    let warnings = match json.get("warnings") {
        Some(value) => strings(value, "warnings"),
        None => Vec::new(),
    };
    Manifest {
        folder: folder.to_path_buf(),
        format: text_of("format"),
        restore_point: text_of("restore_point"),
        job: text_of("job"),
        item: text_of("item"),
        session_id: text_of("session_id"),
        computer: text_of("computer"),
        paths: strings(field("paths"), "paths"),
        entries,
        files: number("files"),
        directories: number("directories"),
        symlinks: number("symlinks"),
        size_bytes: number("size_bytes"),
        bytes_written: number("bytes_written"),
        warnings,
    }
}

/// Path of blob `sha256` in the store of `repository`.
pub fn blob_path(repository: &Path, sha256: &str) -> PathBuf {
    repository.join(STORE_DIR).join(sha256.get(..2).unwrap_or("00")).join(sha256)
}

/// Every blob in the store of `repository` (file names under `.store/<aa>/`).
pub fn store_blobs(repository: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let Ok(folders) = fs::read_dir(repository.join(STORE_DIR)) else { return found };
    for folder in folders.flatten() {
        let Ok(blobs) = fs::read_dir(folder.path()) else { continue };
        for blob in blobs.flatten() {
            if blob.file_type().is_ok_and(|t| t.is_file()) {
                found.insert(blob.file_name().to_string_lossy().into_owned());
            }
        }
    }
    found
}

/// Every `*.tmp` file or `.partial-*` entry under `dir` (the store included).
pub fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = fs::read_dir(&current) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".partial-") || name.ends_with(".tmp") {
                found.push(entry.path());
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(entry.path());
            }
        }
    }
    found.sort();
    found
}

/// Restores `manifest` under `dest` from the store of `repository`: every entry at
/// `<dest>/<its absolute path without the leading />`, files from their blobs (whose length
/// must be the recorded size), folders, and links with their recorded targets; permission
/// bits as recorded (folders' last, so read-only ones are filled first).
#[track_caller]
pub fn restore(repository: &Path, manifest: &Manifest, dest: &Path) {
    let mut entries: Vec<&ManifestEntry> = manifest.entries.iter().collect();
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let mut folders = Vec::new();
    for entry in entries {
        let path = restored_path(dest, Path::new(&entry.path));
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
        }
        match entry.kind.as_str() {
            "dir" => {
                fs::create_dir_all(&path)
                    .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
                folders.push((path, entry.mode));
            }
            "file" => {
                let sha = entry.sha256.as_deref().unwrap_or_else(|| {
                    panic!("file entry {} of {} has no sha256", entry.path, manifest.restore_point)
                });
                let blob = blob_path(repository, sha);
                let bytes = fs::read(&blob).unwrap_or_else(|e| {
                    panic!("blob {} of {} cannot be read: {e}", blob.display(), entry.path)
                });
                assert_eq!(
                    bytes.len() as u64,
                    entry.size,
                    "blob {} of {} has the recorded size",
                    blob.display(),
                    entry.path
                );
                fs::write(&path, &bytes)
                    .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
                set_mode(&path, entry.mode);
            }
            "symlink" => {
                let target = entry.target.as_deref().unwrap_or_else(|| {
                    panic!("link entry {} of {} has no target", entry.path, manifest.restore_point)
                });
                make_symlink(target, &path);
            }
            other => panic!("entry {} has an unknown kind {other:?}", entry.path),
        }
    }
    for (path, mode) in folders.into_iter().rev() {
        set_mode(&path, mode);
    }
}

/// Where [`restore`] under `dest` puts the entry whose absolute path is `source`.
pub fn restored_path(dest: &Path, source: &Path) -> PathBuf {
    dest.join(source.strip_prefix("/").unwrap_or(source))
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

/// Restores the restore point in `folder` under `dest` and asserts that each configured
/// path of the manifest comes back as `sources` holds it now. Returns the manifest.
#[track_caller]
pub fn assert_restores(
    repository: &Path,
    folder: &Path,
    dest: &Path,
    sources: &[PathBuf],
) -> Manifest {
    let manifest = read_manifest(folder);
    assert_eq!(manifest.format, MANIFEST_FORMAT, "format of {}", folder.display());
    let configured: Vec<PathBuf> = manifest.paths.iter().map(PathBuf::from).collect();
    assert_eq!(configured, sources, "configured paths of {}", folder.display());
    restore(repository, &manifest, dest);
    for source in sources {
        let what = format!("restore of {} from {}", source.display(), folder.display());
        assert_same_tree(source, &restored_path(dest, source), &what);
    }
    manifest
}

// ---------------------------------------------------------------------------------------------
// A small JSON reader
// ---------------------------------------------------------------------------------------------

/// A JSON value; numbers are kept as their text.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A number, as written.
    Number(String),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Json>),
    /// An object, in order.
    Object(Vec<(String, Json)>),
}

impl Json {
    /// Parses a whole JSON text.
    pub fn parse(text: &str) -> Result<Json, String> {
        let mut reader = Reader { bytes: text.as_bytes(), at: 0 };
        let value = reader.value()?;
        reader.space();
        if reader.at != reader.bytes.len() {
            return Err(format!("trailing characters at byte {}", reader.at));
        }
        Ok(value)
    }

    /// The member `name` of an object.
    pub fn get(&self, name: &str) -> Option<&Json> {
        match self {
            Json::Object(members) => members.iter().find(|(k, _)| k == name).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string, or a panic naming `what`.
    #[track_caller]
    pub fn string(&self, what: &str) -> String {
        match self {
            Json::String(s) => s.clone(),
            other => panic!("{what}: expected a string, found {other:?}"),
        }
    }

    /// The non-negative integer, or a panic naming `what`.
    #[track_caller]
    pub fn u64(&self, what: &str) -> u64 {
        match self {
            Json::Number(n) => {
                n.parse().unwrap_or_else(|_| panic!("{what}: {n} is not a non-negative integer"))
            }
            other => panic!("{what}: expected a number, found {other:?}"),
        }
    }

    /// The array, or a panic naming `what`.
    #[track_caller]
    pub fn array(&self, what: &str) -> &[Json] {
        match self {
            Json::Array(items) => items,
            other => panic!("{what}: expected an array, found {other:?}"),
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn space(&mut self) {
        while self.bytes.get(self.at).is_some_and(|b| b.is_ascii_whitespace()) {
            self.at += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn expect(&mut self, byte: u8) -> Result<(), String> {
        if self.peek() == Some(byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(format!("expected {:?} at byte {}", byte as char, self.at))
        }
    }

    fn literal(&mut self, word: &str, value: Json) -> Result<Json, String> {
        if self.bytes[self.at..].starts_with(word.as_bytes()) {
            self.at += word.len();
            Ok(value)
        } else {
            Err(format!("unexpected text at byte {}", self.at))
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        self.space();
        match self.peek() {
            Some(b'{') => self.object(),
            Some(b'[') => self.array(),
            Some(b'"') => Ok(Json::String(self.string()?)),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => Ok(self.number()),
            Some(other) => Err(format!("unexpected {:?} at byte {}", other as char, self.at)),
            None => Err("unexpected end".to_string()),
        }
    }

    fn object(&mut self) -> Result<Json, String> {
        self.expect(b'{')?;
        let mut members = Vec::new();
        self.space();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(Json::Object(members));
        }
        loop {
            self.space();
            let key = self.string()?;
            self.space();
            self.expect(b':')?;
            members.push((key, self.value()?));
            self.space();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(Json::Object(members));
                }
                _ => return Err(format!("expected ',' or '}}' at byte {}", self.at)),
            }
        }
    }

    fn array(&mut self) -> Result<Json, String> {
        self.expect(b'[')?;
        let mut items = Vec::new();
        self.space();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(Json::Array(items));
        }
        loop {
            items.push(self.value()?);
            self.space();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(Json::Array(items));
                }
                _ => return Err(format!("expected ',' or ']' at byte {}", self.at)),
            }
        }
    }

    fn number(&mut self) -> Json {
        let start = self.at;
        while self.peek().is_some_and(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) {
            self.at += 1;
        }
        Json::Number(String::from_utf8_lossy(&self.bytes[start..self.at]).into_owned())
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self.bytes.get(self.at..self.at + 4).ok_or("short \\u escape")?;
        let text = std::str::from_utf8(digits).map_err(|e| e.to_string())?;
        let value = u32::from_str_radix(text, 16).map_err(|e| format!("\\u{text}: {e}"))?;
        self.at += 4;
        Ok(value)
    }

    fn string(&mut self) -> Result<String, String> {
        self.expect(b'"')?;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let byte = self.peek().ok_or("unterminated string")?;
            self.at += 1;
            match byte {
                b'"' => break,
                b'\\' => {
                    let escape = self.peek().ok_or("unterminated escape")?;
                    self.at += 1;
                    let ch = match escape {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let high = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&high) {
                                self.expect(b'\\')?;
                                self.expect(b'u')?;
                                let low = self.hex4()?;
                                0x10000
                                    + ((high - 0xD800) << 10)
                                    + (low.wrapping_sub(0xDC00) & 0x3FF)
                            } else {
                                high
                            };
                            char::from_u32(code)
                                .ok_or_else(|| format!("bad \\u escape {code:x}"))?
                        }
                        other => return Err(format!("bad escape \\{}", other as char)),
                    };
                    let mut buf = [0; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                other => out.push(other),
            }
        }
        String::from_utf8(out).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_json() {
        let text = r#"{"a": [1, 2.5, -3], "b": {"c": "x\"y\u00e9\n"}, "d": null, "e": true}"#;
        let json = Json::parse(text).expect("valid");
        assert_eq!(json.get("a").map(|a| a.array("a").len()), Some(3));
        assert_eq!(
            json.get("b").and_then(|b| b.get("c")).map(|c| c.string("c")).as_deref(),
            Some("x\"y\u{e9}\n")
        );
        assert_eq!(json.get("d"), Some(&Json::Null));
        assert!(Json::parse("{\"a\": 1,}").is_err());
    }

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
