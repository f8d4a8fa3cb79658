//! Verify: every byte of a restore point read and hashed, and compared with its manifest.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::Path;

use super::hash::{Digested, ReadError, copy_hashing_open};
use super::location::{Location, under};
use super::restore::place_entries;
use super::{Cancel, vm};
use crate::error::AgentError;
use crate::repository::checksum::Algorithm;
use crate::repository::{
    ComputerManifest, FileId, Kind, Manifest, ManifestError, Store, Totals, VmManifest, printable,
};

/// What a check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Report {
    /// One line per mismatch, naming the file or entry; empty when the restore point is good.
    pub(crate) problems: Vec<String>,
    /// Bytes read and hashed.
    pub(crate) bytes_checked: u64,
}

/// Checks the restore point at `location` (blocking). Mismatches are problems in the report;
/// only a cancel is an error.
pub(crate) fn verify(location: &Location, cancel: &Cancel) -> Result<Report, AgentError> {
    let folder = location.folder();
    if !location.folder_exists()? {
        let problem = format!("restore point folder {} does not exist", folder.display());
        return Ok(Report { problems: vec![problem], bytes_checked: 0 });
    }
    let contents = match Manifest::read_checked(&folder) {
        Ok(contents) => contents,
        Err(ManifestError::Damaged(problem)) => {
            return Ok(Report { problems: vec![problem], bytes_checked: 0 });
        }
        Err(ManifestError::Unreadable(why)) => {
            return Err(AgentError::FailedPrecondition(format!(
                "restore point {}: {why}",
                location.id
            )));
        }
    };
    let mut report = Report::default();
    let named = &contents.identity().restore_point;
    if *named != location.id {
        report.problems.push(format!(
            "manifest.json: names restore point {:?}, the folder is {:?}",
            named, location.id
        ));
    }
    match &contents {
        Manifest::Vm(vm) => verify_vm(location, vm, cancel, &mut report)?,
        Manifest::Computer(computer) => verify_computer(location, computer, cancel, &mut report)?,
    }
    Ok(report)
}

fn verify_vm(
    location: &Location,
    manifest: &VmManifest,
    cancel: &Cancel,
    report: &mut Report,
) -> Result<(), AgentError> {
    // Settled and locked, the chain reads as it was committed or as a merge left it whole;
    // a merge that cannot be finished now is read as it left the files.
    let (_lock, merging) = vm::lock_settled(location)?;
    let manifest = match Manifest::read(&location.folder()) {
        Ok(Manifest::Vm(settled)) => settled,
        _ => manifest.clone(),
    };
    vm::verify_chain(location, &manifest, merging.as_ref(), cancel, report)
}

fn verify_computer(
    location: &Location,
    manifest: &ComputerManifest,
    cancel: &Cancel,
    report: &mut Report,
) -> Result<(), AgentError> {
    let store = Store::new(&location.repository);
    // What a restore would refuse (an entry listed twice, one below a link or outside the
    // configured paths) is a problem.
    if let Err(AgentError::Corrupt(problem)) = place_entries(Path::new("/"), manifest) {
        report.problems.push(problem);
    }
    check_totals(manifest, &mut report.problems);
    // Each blob is read once, however many entries name it.
    let mut blobs: BTreeMap<&str, BlobFinding> = BTreeMap::new();
    for entry in &manifest.entries {
        if under(Path::new("/"), &entry.path).is_none() {
            continue;
        }
        if entry.kind != Kind::File {
            continue;
        }
        let path = printable(&entry.path);
        let Some(sha256) = entry.sha256.as_deref() else {
            report.problems.push(format!("{path}: file entry without a sha256"));
            continue;
        };
        if !blobs.contains_key(sha256) {
            blobs.insert(sha256, hash_blob(&store, sha256, cancel, report)?);
        }
        let name = format!("{path}: blob {sha256}");
        match &blobs[sha256] {
            Ok(found) => compare(&name, found, entry.size, sha256, &mut report.problems),
            Err(what) => report.problems.push(format!("{name} {what}")),
        }
    }
    Ok(())
}

/// Adds a problem when the entries do not add up to the totals the manifest records (an
/// entry lost from it).
fn check_totals(manifest: &ComputerManifest, problems: &mut Vec<String>) {
    let recorded = manifest.totals;
    let counted = Totals::of(&manifest.entries, recorded.bytes_written);
    if counted != recorded {
        let text = |t: Totals| {
            let Totals { files, size_bytes, directories, symlinks, .. } = t;
            format!(
                "files {files}, bytes {size_bytes}, directories {directories}, links {symlinks}"
            )
        };
        problems.push(format!(
            "manifest.json: its entries add up to {}; it records {}",
            text(counted),
            text(recorded)
        ));
    }
}

/// What reading one blob found, or what is wrong with it in words.
type BlobFinding = Result<Found, String>;

/// A blob as read: its digest, and for a corrupt one what became of it.
struct Found {
    digest: Digested,
    /// `; moved aside ...` after a checksum mismatch, else empty.
    moved: String,
}

/// Reads and hashes a blob, and moves it aside when its bytes do not hash to its name.
fn hash_blob(
    store: &Store,
    sha256: &str,
    cancel: &Cancel,
    report: &mut Report,
) -> Result<BlobFinding, AgentError> {
    let file = match File::open(store.blob_path(sha256)) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Err("is missing from the store".to_owned()));
        }
        Err(e) => return Ok(Err(format!("cannot be read: {e}"))),
    };
    let id = match FileId::of(&file) {
        Ok(id) => id,
        Err(e) => return Ok(Err(format!("cannot be read: {e}"))),
    };
    let digest = match copy_hashing_open(file, None, Algorithm::Sha256, cancel) {
        Ok(digest) => digest,
        Err(ReadError::Canceled) => return Err(canceled()),
        Err(ReadError::Io(e)) => return Ok(Err(format!("cannot be read: {e}"))),
    };
    report.bytes_checked += digest.size;
    let moved =
        if digest.checksum == sha256 { String::new() } else { move_aside(store, sha256, id) };
    Ok(Ok(Found { digest, moved }))
}

/// Moves a corrupt blob aside, so that the next backup of its content stores it again
/// instead of naming the corrupt one; says what became of it.
fn move_aside(store: &Store, sha256: &str, found: FileId) -> String {
    let moved = store.lock_for_backup().and_then(|held| store.move_aside(sha256, found, &held));
    match moved {
        Ok(Some(aside)) => format!(
            "; moved aside to {}: the next backup of this content stores it again",
            aside.display()
        ),
        Ok(None) => "; moved aside already: the next backup of this content stores it again".into(),
        Err(e) => format!("; cannot be moved aside ({e}): backups reuse it until it is removed"),
    }
}

/// Adds a problem per difference between what was read and what the manifest records.
fn compare(name: &str, found: &Found, size: u64, sha256: &str, problems: &mut Vec<String>) {
    let digest = &found.digest;
    if digest.size != size {
        problems.push(format!("{name}: {} bytes, the manifest records {size}", digest.size));
    }
    if digest.checksum != sha256 {
        let (checksum, moved) = (&digest.checksum, &found.moved);
        problems
            .push(format!("{name}: sha256 is {checksum}, the manifest records {sha256}{moved}"));
    }
}

fn canceled() -> AgentError {
    AgentError::FailedPrecondition("verify canceled".to_owned())
}
