//! Sample API values for the formatting tests.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost_types::Timestamp;
use sluice_proto::pb;

/// 2026-11-22T09:05:03Z.
pub const T0: i64 = 1_795_338_303;

/// A timestamp `offset` seconds after [`T0`].
pub fn at(offset: i64) -> Option<Timestamp> {
    Some(Timestamp { seconds: T0 + offset, nanos: 0 })
}

/// "Now" for the tests: ten minutes after [`T0`].
pub fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(T0 + 600).unwrap_or(0))
}

/// An item in some state.
pub fn item(name: &str, state: pb::ItemState, phase: pb::TaskPhase) -> pb::ItemStatus {
    pb::ItemStatus {
        name: name.into(),
        state: state as i32,
        phase: phase as i32,
        ..Default::default()
    }
}

/// A working session: one item done, one transferring, one waiting for a slot.
pub fn working_session() -> pb::Session {
    let mut done = item("vm-01", pb::ItemState::Success, pb::TaskPhase::Cleanup);
    done.agent = "proxy-1".into();
    done.attempt = 1;
    done.restore_point = "rp-0001".into();
    done.bytes_done = 2048;
    done.bytes_read = 1024;
    done.bytes_transferred = 512;
    done.bytes_total = 2048;
    let mut running = item("vm-02", pb::ItemState::Processing, pb::TaskPhase::Transfer);
    running.agent = "proxy-2".into();
    running.attempt = 2;
    running.bytes_done = 512;
    running.bytes_total = 1024;
    let mut waiting = item("vm-03", pb::ItemState::Pending, pb::TaskPhase::Unspecified);
    waiting.waiting_reason = "no free slot".into();
    pb::Session {
        id: "0193a1b2".into(),
        job: "nightly".into(),
        state: pb::SessionState::Working as i32,
        owner: "coord-1".into(),
        epoch: 42,
        created_at: at(0),
        job_type: pb::JobType::VmBackup as i32,
        items: vec![done, running, waiting],
        ..Default::default()
    }
}

/// The same session after a graceful stop: WARNING, canceled.
pub fn stopped_session() -> pb::Session {
    let mut session = working_session();
    session.state = pb::SessionState::Stopped as i32;
    session.result = pb::SessionResult::Warning as i32;
    session.canceled = true;
    session.stop_mode = pb::StopMode::Graceful as i32;
    session.stopped_by = "alice@backup1".into();
    session.stop_requested_at = at(120);
    session.ended_at = at(185);
    session.items[1].state = pb::ItemState::Success as i32;
    session.items[1].restore_point = "rp-0002".into();
    session.items[1].bytes_done = 1024;
    session.items[2].state = pb::ItemState::NotProcessed as i32;
    session.items[2].waiting_reason.clear();
    session
}

/// A file in the temp directory, removed on drop (the crate has no tempfile dependency).
pub struct TempFile(std::path::PathBuf);

impl TempFile {
    /// Writes `text` to a new file whose name ends in `name`.
    pub fn with_text(name: &str, text: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("sluice-cli-{}-{n}-{name}", std::process::id()));
        std::fs::write(&path, text).expect("write temp file");
        TempFile(path)
    }

    /// Where the file is.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
