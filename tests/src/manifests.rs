//! Computer restore points as an operator reads them: `manifest.json` (format
//! `sluice-computer-1`: every entry with path, kind, size, mode, mtime, the sha256 of a
//! file's content and the target of a link) over the repository's content-addressed store
//! `<repository>/.store/<aa>/<sha256>`. [`restore`] rebuilds a tree from those two alone, as
//! an operator's restore would, and [`assert_restores`] compares it with the source.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::{
    computers::{assert_same_tree, make_symlink, set_mode},
    sessions::{PARTIAL_PREFIX, find_entries},
};

/// Value of a computer manifest's `format` field.
pub const MANIFEST_FORMAT: &str = "sluice-computer-1";

/// Name of the content-addressed store folder of a repository.
pub const STORE_DIR: &str = ".store";

/// One entry of a computer manifest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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
    #[serde(default)]
    pub sha256: Option<String>,
    /// Target of a link.
    #[serde(default)]
    pub target: Option<String>,
}

/// A computer manifest (`manifest.json` of a computer restore point); fields the tests do
/// not check are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Manifest {
    /// Folder of the restore point.
    #[serde(skip)]
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
    #[serde(default)]
    pub warnings: Vec<String>,
}

impl Manifest {
    /// Parses a manifest's text; `folder` is where it was read from.
    pub fn parse(text: &str, folder: &Path) -> Result<Manifest, serde_json::Error> {
        let manifest: Manifest = serde_json::from_str(text)?;
        Ok(Manifest { folder: folder.to_path_buf(), ..manifest })
    }

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
    Manifest::parse(&text, folder).unwrap_or_else(|e| {
        panic!("manifest {} is not a computer manifest: {e}\n{text}", path.display())
    })
}

/// Path of blob `sha256` in the store of `repository`.
pub fn blob_path(repository: &Path, sha256: &str) -> PathBuf {
    repository.join(STORE_DIR).join(sha256.get(..2).unwrap_or("00")).join(sha256)
}

/// Every blob in the store of `repository` (file names under `.store/<aa>/` that are a
/// SHA-256 in hex: a blob moved aside as corrupt, `<sha256>.corrupt`, is none).
pub fn store_blobs(repository: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let Ok(folders) = fs::read_dir(repository.join(STORE_DIR)) else { return found };
    for folder in folders.flatten() {
        let Ok(blobs) = fs::read_dir(folder.path()) else { continue };
        for blob in blobs.flatten() {
            let name = blob.file_name().to_string_lossy().into_owned();
            let hex = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
            if hex && blob.file_type().is_ok_and(|t| t.is_file()) {
                found.insert(name);
            }
        }
    }
    found
}

/// Every `*.tmp` file or `.partial-*` entry under `dir` (the store included).
pub fn temporaries(dir: &Path) -> Vec<PathBuf> {
    find_entries(dir, |name| name.starts_with(PARTIAL_PREFIX) || name.ends_with(".tmp"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_manifest_and_refuses_other_json() {
        let text = r#"{"format": "sluice-computer-1", "restore_point": "s-0", "job": "j",
            "item": "pc", "session_id": "s", "computer": "pc1", "created_at": "x",
            "paths": ["/home"], "files": 1, "directories": 1, "symlinks": 1,
            "size_bytes": 3, "bytes_written": 3,
            "entries": [
                {"path": "/home", "kind": "dir", "size": 0, "mode": 493, "mtime": "t"},
                {"path": "/home/a", "kind": "file", "size": 3, "mode": 420, "mtime": "t",
                 "sha256": "ab12", "target": null},
                {"path": "/home/l", "kind": "symlink", "size": 0, "mode": 511, "mtime": "t",
                 "target": "a\u00e9\n"}]}"#;
        let manifest = Manifest::parse(text, Path::new("/rp")).expect("a manifest");
        assert_eq!(manifest.folder, Path::new("/rp"));
        assert_eq!((manifest.files, manifest.size_bytes), (1, 3));
        assert_eq!(manifest.warnings, Vec::<String>::new());
        assert_eq!(manifest.blobs(), BTreeSet::from(["ab12".to_string()]));
        assert_eq!(manifest.entries[1].target, None);
        assert_eq!(manifest.entries[2].target.as_deref(), Some("a\u{e9}\n"));
        assert!(Manifest::parse("{\"format\": 1,}", Path::new("/rp")).is_err());
        let no_entries = text.replace("\"entries\"", "\"other\"");
        assert!(Manifest::parse(&no_entries, Path::new("/rp")).is_err());
    }
}
