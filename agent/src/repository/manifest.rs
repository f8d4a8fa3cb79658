//! `manifest.json` of a restore point: the one type per executor that is both written at
//! COMMIT and read back by recovery, verify, restore, retention and the next backup.
//!
//! # Extending the format
//!
//! A field added later carries `#[serde(default)]`, so manifests written before it still
//! read, and `skip_serializing_if` where its default must not be written, so what is written
//! stays byte-for-byte the same until the field is used (as `snapshot_at` and `bytes_read` of
//! a computer manifest did, and a VM manifest's `kind` (default full) and `parent`). Only a
//! change that older agents must not misread gets a new `format`.

mod computer;
mod vm;

use std::fs;
use std::io;
use std::path::Path;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) use computer::{ComputerManifest, Kind, Record, Totals};
pub(crate) use vm::{Disk, VM_FORMAT, VmKind, VmManifest};

use serde::{Deserialize, Serialize};

use super::{COMPUTER_FORMAT, MANIFEST};

/// Which restore point a manifest describes: the fields every manifest starts with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Identity {
    /// Restore point id.
    pub(crate) restore_point: String,
    /// Job name.
    #[serde(default)]
    pub(crate) job: String,
    /// Item name.
    #[serde(default)]
    pub(crate) item: String,
    /// Session that made it.
    #[serde(default)]
    pub(crate) session_id: String,
}

#[cfg(test)]
impl Identity {
    /// Restore point `s1-0` of item `pc` of job `j`.
    pub(crate) fn sample() -> Self {
        Self {
            restore_point: "s1-0".into(),
            job: "j".into(),
            item: "pc".into(),
            session_id: "s1".into(),
        }
    }
}

/// A restore point's manifest, of either executor.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Manifest {
    /// A VM restore point: one qcow2 file per disk.
    Vm(VmManifest),
    /// A computer restore point: entries whose file contents live in the store.
    Computer(ComputerManifest),
}

impl Manifest {
    /// Reads and parses `<folder>/manifest.json`; the error says what is wrong, in words.
    pub(crate) fn read(folder: &Path) -> Result<Self, String> {
        Self::read_checked(folder).map_err(|error| match error {
            ManifestError::Unreadable(why) | ManifestError::Damaged(why) => why,
        })
    }

    /// [`Manifest::read`], telling a damaged manifest (absent, not a manifest) from one this
    /// agent cannot read (permissions, I/O).
    pub(crate) fn read_checked(folder: &Path) -> Result<Self, ManifestError> {
        let path = folder.join(MANIFEST);
        let bytes = fs::read(&path).map_err(|e| {
            let why = format!("{MANIFEST}: cannot be read: {e}");
            match e.kind() {
                io::ErrorKind::NotFound => ManifestError::Damaged(why),
                _ => ManifestError::Unreadable(why),
            }
        })?;
        Self::parse(&bytes).map_err(ManifestError::Damaged)
    }

    /// Parses a manifest: one with `"format": "sluice-computer-1"` is a computer manifest,
    /// one with `"format": "sluice-vm-2"` or without `format` a VM manifest.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, String> {
        // The format is read first, skipping the rest, so the manifest (a computer one
        // holds a record per file) is then parsed once, straight into its type.
        let format = match serde_json::from_slice::<FormatProbe>(bytes) {
            Ok(probe) => probe.format,
            // Valid JSON but no object: the typed parse below names what is wrong.
            Err(error) if error.is_data() => None,
            Err(error) => return Err(format!("{MANIFEST}: not valid JSON: {error}")),
        };
        match format.as_ref().and_then(serde_json::Value::as_str) {
            Some(COMPUTER_FORMAT) => serde_json::from_slice(bytes)
                .map(Self::Computer)
                .map_err(|e| format!("{MANIFEST}: not a valid {COMPUTER_FORMAT} manifest: {e}")),
            Some(other) if other != VM_FORMAT => {
                Err(format!("{MANIFEST}: unknown format {other:?}"))
            }
            _ => serde_json::from_slice(bytes)
                .map(Self::Vm)
                .map_err(|e| format!("{MANIFEST}: not a valid VM manifest: {e}")),
        }
    }

    /// Which restore point the manifest describes.
    pub(crate) fn identity(&self) -> &Identity {
        match self {
            Self::Vm(vm) => &vm.identity,
            Self::Computer(computer) => &computer.identity,
        }
    }
}

/// Why a manifest could not be read, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ManifestError {
    /// This agent cannot read it (permissions, I/O): the backup data may be whole.
    Unreadable(String),
    /// It is absent or not a manifest: the backup data is damaged.
    Damaged(String),
}

/// A manifest's `format` field, whatever its type; every other field is skipped unread.
#[derive(Deserialize)]
struct FormatProbe {
    #[serde(default)]
    format: Option<serde_json::Value>,
}

/// Whether a manifest's disk file name is a plain name inside the folder.
pub(crate) fn plain_file_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && !name.contains('\0') && name != "." && name != ".."
}

/// The earliest and latest times RFC 3339 writes (0001-01-01 and 9999-12-31 UTC).
const RFC3339_SECONDS: (i64, i64) = (-62_135_596_800, 253_402_300_799);

/// A time as RFC 3339 with as many fraction digits as it needs (none, 3, 6 or 9): lossless
/// to the nanosecond, before 1970 too (a file's mtime may be); a time outside years 1-9999
/// (any user may set a file's mtime so) is written as the nearest it can write.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let (seconds, nanos) = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => (i64::try_from(after.as_secs()).unwrap_or(i64::MAX), after.subsec_nanos()),
        Err(before) => {
            let before = before.duration();
            let whole = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
            match before.subsec_nanos() {
                0 => (-whole, 0),
                nanos => (-whole - 1, 1_000_000_000 - nanos),
            }
        }
    };
    let clamped = seconds.clamp(RFC3339_SECONDS.0, RFC3339_SECONDS.1);
    let nanos = if clamped == seconds { nanos } else { 0 };
    prost_types::Timestamp { seconds: clamped, nanos: nanos as i32 }.to_string()
}

/// Reads a time written by [`rfc3339`], before 1970 too (a file's mtime to restore).
pub(crate) fn parse_any_time(text: &str) -> Option<SystemTime> {
    let stamp = prost_types::Timestamp::from_str(text).ok()?;
    SystemTime::try_from(stamp).ok()
}

/// Reads a time written by [`rfc3339`]; `None` for other text and for times before 1970.
pub(crate) fn parse_time(text: &str) -> Option<SystemTime> {
    let stamp = prost_types::Timestamp::from_str(text).ok()?;
    (stamp.seconds >= 0 && stamp.nanos >= 0).then(|| sluice_proto::time::from_timestamp(&stamp))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::repository::checksum::Algorithm;

    const VM_JSON: &str = include_str!("testdata/vm-manifest.json");
    const VM_2_JSON: &str = include_str!("testdata/vm-manifest-2.json");
    const COMPUTER_JSON: &str = include_str!("testdata/computer-manifest.json");

    fn vm() -> VmManifest {
        let identity = Identity { job: "nightly".into(), item: "vm0".into(), ..Identity::sample() };
        VmManifest {
            identity,
            created_at: "2026-01-02T03:04:05.5Z".into(),
            disks: vec![Disk {
                source: "/vms/a.qcow2".into(),
                file: "disk0.qcow2".into(),
                size_bytes: 42,
                sha256: "ab".repeat(32),
                blake3: String::new(),
                virtual_size: 16 << 20,
            }],
            ..VmManifest::default()
        }
    }

    fn computer() -> ComputerManifest {
        let record = |path: &str, kind, mode| Record {
            path: path.into(),
            kind,
            size: 0,
            mode,
            uid: None,
            gid: None,
            mtime: "2026-01-02T03:04:05Z".into(),
            ctime: None,
            sha256: None,
            target: None,
        };
        let file = Record {
            size: 3,
            mtime: "2026-01-02T03:04:05.123Z".into(),
            ctime: Some("2026-01-02T03:04:05.123456789Z".into()),
            sha256: Some("cd".repeat(32)),
            ..record("/d/a", Kind::File, 0o644)
        };
        let link = Record { target: Some("a".into()), ..record("/d/l", Kind::Symlink, 0o777) };
        let entries = vec![record("/d", Kind::Dir, 0o755), file, link];
        ComputerManifest {
            totals: Totals::of(&entries, 3),
            bytes_read: 3,
            entries,
            warnings: vec!["changed while being read: /d/a".into()],
            identity: Identity { job: "homes".into(), item: "pc0".into(), ..Identity::sample() },
            ..ComputerManifest::sample()
        }
    }

    #[test]
    fn manifests_are_written_byte_for_byte_as_before() {
        assert_eq!(serde_json::to_string_pretty(&vm()).expect("vm json"), VM_JSON.trim_end());
        let written = serde_json::to_string_pretty(&computer()).expect("computer json");
        assert_eq!(written, COMPUTER_JSON.trim_end());
    }

    /// The VM manifest written now: format 2, a BLAKE3 per disk and no SHA-256.
    fn vm_2() -> VmManifest {
        let mut manifest = VmManifest { format: Some(VM_FORMAT.into()), ..vm() };
        manifest.disks[0].set_digest(42, "cd".repeat(32));
        manifest
    }

    #[test]
    fn vm_manifests_of_format_2_are_written_and_read_back() {
        assert_eq!(serde_json::to_string_pretty(&vm_2()).expect("json"), VM_2_JSON.trim_end());
        assert_eq!(Manifest::parse(VM_2_JSON.as_bytes()), Ok(Manifest::Vm(vm_2())));
        let Ok(Manifest::Vm(first)) = Manifest::parse(VM_JSON.as_bytes()) else {
            panic!("a manifest of the first format reads");
        };
        assert_eq!(first.disks[0].checksum(), Ok((Algorithm::Sha256, "ab".repeat(32).as_str())));
        let second = vm_2();
        assert_eq!(second.disks[0].checksum(), Ok((Algorithm::Blake3, "cd".repeat(32).as_str())));
    }

    #[test]
    fn manifests_read_back_by_their_format() {
        assert_eq!(Manifest::parse(VM_JSON.as_bytes()), Ok(Manifest::Vm(vm())));
        assert_eq!(Manifest::parse(COMPUTER_JSON.as_bytes()), Ok(Manifest::Computer(computer())));
        let unknown = Manifest::parse(br#"{"format": "sluice-computer-9"}"#);
        assert_eq!(unknown, Err(r#"manifest.json: unknown format "sluice-computer-9""#.into()));
    }

    #[test]
    fn fields_added_later_default_when_absent() {
        let mut json: serde_json::Value = serde_json::from_str(COMPUTER_JSON).expect("json");
        let object = json.as_object_mut().expect("object");
        object.remove("snapshot_at");
        object.remove("bytes_read");
        let Ok(Manifest::Computer(older)) = Manifest::parse(json.to_string().as_bytes()) else {
            panic!("a manifest without the newer fields reads");
        };
        assert_eq!((older.snapshot_at, older.bytes_read), (None, 0));
    }

    #[test]
    fn times_keep_their_nanoseconds() {
        for nanos in [0, 5_000_000, 5_000, 123_456_789] {
            let time = UNIX_EPOCH + Duration::new(1_700_000_000, nanos);
            assert_eq!(parse_time(&rfc3339(time)), Some(time), "{}", rfc3339(time));
        }
        assert_eq!(parse_time("not a time"), None);
    }

    #[test]
    fn a_time_before_1970_is_written_and_restored_as_it_was() {
        let time = UNIX_EPOCH - Duration::new(86_400 * 365, 250_000_000);
        assert_eq!(rfc3339(time), "1968-12-31T23:59:59.750Z");
        assert_eq!(parse_any_time(&rfc3339(time)), Some(time));
        assert_eq!(parse_time(&rfc3339(time)), None, "not taken as a previous backup's");
        // Any user may set a file's mtime this far: it is written as the nearest time RFC 3339
        // can name, never a panic.
        let far_past = UNIX_EPOCH - Duration::from_secs(i64::MAX as u64);
        assert_eq!(rfc3339(far_past), "0001-01-01T00:00:00Z");
        let far_future = UNIX_EPOCH + Duration::from_secs(i64::MAX as u64);
        assert_eq!(rfc3339(far_future), "9999-12-31T23:59:59Z");
    }
}
