//! Where a VM backup reads its disks: the running VM's own QEMU, over the QMP socket the
//! job names, or for offline images (no socket, or nothing listening on it: the VM is off)
//! a `qemu-storage-daemon` ([`super::daemon`]) started for the backup. Both speak the same
//! QMP, so the rest of the backup is one code path. The daemon loads and saves the images'
//! persistent bitmaps as the VM does; it is asked to quit (or sent SIGTERM) so that it
//! saves them, never killed outright while it holds them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{info, warn};

use super::blockdev::{self, NamedNode};
use super::daemon::{Daemon, Daemons};
use crate::exec::qmp::{Qmp, QmpError};
use crate::key::SNAPSHOT_PREFIX;
use crate::qemu_img;

/// How long a daemon's monitor gets to answer while the disks are opened (a few ms, as a
/// rule). Past that the daemon is taken for broken: QEMU 10's storage daemon now and then
/// stops reading its monitor in the first tens of milliseconds of its life, the process
/// alive; nothing of the images has changed yet, so a new daemon opens them instead.
const OPEN_PATIENCE: Duration = Duration::from_secs(10);
/// How many daemons an offline backup tries before it fails on a broken monitor.
const OPEN_ATTEMPTS: u32 = 3;

/// An open connection to the QEMU holding the disks, and each disk's node.
#[derive(Debug)]
pub(crate) struct Source {
    /// The QMP connection.
    pub(crate) qmp: Qmp,
    /// The qcow2 node of each disk, in job order.
    pub(crate) nodes: Vec<NamedNode>,
    daemon: Option<Daemon>,
    /// Whether the disks were opened in a daemon started for the backup.
    offline: bool,
}

/// Why the disks cannot be opened; `disk` names the disk when one is to blame.
#[derive(Debug)]
pub(crate) struct OpenError {
    /// The disk at fault, if one is.
    pub(crate) disk: Option<PathBuf>,
    /// What went wrong.
    pub(crate) message: String,
}

impl OpenError {
    fn of(message: impl ToString) -> Self {
        Self { disk: None, message: message.to_string() }
    }
}

impl Source {
    /// Opens the disks: through the VM's socket when it answers, else through a daemon of
    /// `daemons` (`marker` names a new one for recovery).
    pub(crate) async fn open(
        socket: &str,
        disks: &[PathBuf],
        marker: &str,
        daemons: &Daemons,
    ) -> Result<Self, OpenError> {
        if !socket.is_empty() {
            not_a_socket(Path::new(socket)).map_or(Ok(()), |kind| {
                Err(OpenError::of(format!(
                    "qmp_socket {socket:?} is {kind}, not a socket: name the VM's QMP socket"
                )))
            })?;
            match Qmp::connect(Path::new(socket)).await {
                Ok(mut qmp) => {
                    let nodes =
                        blockdev::find_disks(&mut qmp, disks).await.map_err(OpenError::of)?;
                    return Ok(Self { qmp, nodes, daemon: None, offline: false });
                }
                // No socket file at all may be a wrong path as well as a VM never started.
                Err(QmpError::Connect { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    warn!(
                        socket,
                        "no QMP socket at this path: backing the disks up as offline images (if \
                         the VM runs, check the job's qmp_socket)"
                    );
                    // Offline is right for a VM that is off; when the images turn out to be
                    // busy, the path may be the fault, and the item's message says so.
                    return Self::offline(disks, marker, daemons).await.map_err(|mut error| {
                        // Only an image held by another process (the running VM) points there.
                        let held = error.message.contains("Failed to get")
                            || error.message.contains("is in use");
                        if held {
                            error.message = format!(
                                "{} (the job's qmp_socket {socket} does not exist, so the disks \
                                 were opened as offline images: if the VM runs, name its QMP \
                                 socket)",
                                error.message
                            );
                        }
                        error
                    });
                }
                Err(error @ QmpError::Connect { .. }) => {
                    info!(%error, "the VM is not running: backing its disks up as offline images");
                }
                Err(error) => return Err(OpenError::of(error)),
            }
        }
        Self::offline(disks, marker, daemons).await
    }

    async fn offline(
        disks: &[PathBuf],
        marker: &str,
        daemons: &Daemons,
    ) -> Result<Self, OpenError> {
        let mut attempt = 1;
        loop {
            let (daemon, mut qmp) = daemons.take(marker).await.map_err(OpenError::of)?;
            qmp.set_patience(Some(OPEN_PATIENCE));
            let opened = open_disks(&mut qmp, disks).await;
            qmp.set_patience(None);
            let (disk, error) = match opened {
                Ok(nodes) => {
                    delete_legacy_snapshots(&mut qmp, &nodes).await;
                    return Ok(Self { qmp, nodes, daemon: Some(daemon), offline: true });
                }
                Err(failure) => failure,
            };
            let broken = matches!(&error, Opening::Qmp(error) if error.is_monitor_failure());
            if broken {
                daemon.end(qmp).await;
            } else {
                daemon.quit(&mut qmp).await;
            }
            if broken && attempt < OPEN_ATTEMPTS {
                warn!(attempt, %error, "the storage daemon's monitor failed while the disks \
                                        were opened; opening them in a new daemon");
                attempt += 1;
                continue;
            }
            return Err(OpenError { disk, message: error.to_string() });
        }
    }

    /// Whether the disks are open in a daemon started for this backup.
    pub(crate) fn started_here(&self) -> bool {
        self.offline
    }

    /// Whether the daemon started for this backup has quit.
    pub(crate) fn has_quit(&self) -> bool {
        self.offline && self.daemon.is_none()
    }

    /// Asks a daemon started for this backup to quit (it stores the bitmaps) and waits
    /// until it has; nothing more can be asked of it then. A running VM stays connected.
    pub(crate) async fn quit_daemon(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            daemon.quit(&mut self.qmp).await;
        }
    }

    /// Ends the connection; a daemon saves the bitmaps and exits (one that has gone silent
    /// is sent SIGTERM at once, not asked first).
    pub(crate) async fn close(mut self) {
        match self.daemon.take() {
            Some(daemon) if self.qmp.went_silent() => daemon.end(self.qmp).await,
            Some(daemon) => daemon.quit(&mut self.qmp).await,
            None => {}
        }
    }
}

/// Why opening the disks in a daemon failed.
#[derive(Debug, thiserror::Error)]
enum Opening {
    /// QEMU refused a command, or the monitor failed.
    #[error("{}", in_use_hint(.0))]
    Qmp(QmpError),
    /// The disks were opened but are not where they should be.
    #[error("{0}")]
    Nodes(String),
}

/// Opens each offline disk in the daemon and finds its node; a failure names the disk at
/// fault when one is.
async fn open_disks(
    qmp: &mut Qmp,
    disks: &[PathBuf],
) -> Result<Vec<NamedNode>, (Option<PathBuf>, Opening)> {
    for (index, disk) in disks.iter().enumerate() {
        blockdev::add_qcow2(qmp, &format!("disk{index}"), disk)
            .await
            .map_err(|error| (Some(disk.clone()), Opening::Qmp(error)))?;
    }
    let nodes = blockdev::named_nodes(qmp).await.map_err(|error| (None, Opening::Qmp(error)))?;
    blockdev::match_disks(&nodes, disks).map_err(|message| (None, Opening::Nodes(message)))
}

/// What `path` is when it exists and is no socket (a wrong `qmp_socket` is not a VM that is
/// off, which is a missing socket or one nobody listens on).
fn not_a_socket(path: &Path) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let kind = std::fs::metadata(path).ok()?.file_type();
    match () {
        () if kind.is_socket() => None,
        () if kind.is_dir() => Some("a folder"),
        () if kind.is_file() => Some("a regular file"),
        () => Some("a device or FIFO"),
    }
}

/// QEMU's error, with what the operator can do about it when another process holds the image.
fn in_use_hint(error: &QmpError) -> String {
    let text = error.to_string();
    if is_held_elsewhere(error) {
        format!(
            "{text} (another process holds the image: a VM running on it, whose QMP socket \
             the job's qmp_socket must name, or another backup of the same image)"
        )
    } else {
        text
    }
}

/// Whether QEMU refused the image because another process holds it: its image locking
/// (`Failed to get "write" lock`) or a node in use. Only QEMU's own text counts, not the
/// command's name (`blockdev-add` holds "lock") nor a whole message that merely names a path.
fn is_held_elsewhere(error: &QmpError) -> bool {
    let QmpError::Command { desc, .. } = error else {
        return false;
    };
    (desc.contains("Failed to get") && desc.contains("lock")) || desc.contains("is in use")
}

/// Deletes, through the daemon that holds the offline images, the internal `sluice-`
/// snapshots that agents before change tracking left on them when they crashed.
async fn delete_legacy_snapshots(qmp: &mut Qmp, nodes: &[NamedNode]) {
    for node in nodes {
        let legacy = node.image.snapshots.iter().filter(|s| s.name.starts_with(SNAPSHOT_PREFIX));
        for snapshot in legacy {
            match blockdev::delete_snapshot(qmp, &node.node_name, &snapshot.name).await {
                Ok(()) => info!(
                    disk = node.image.filename,
                    snapshot = snapshot.name,
                    "leftover snapshot removed"
                ),
                Err(error) => warn!(disk = node.image.filename, snapshot = snapshot.name, %error,
                                    "leftover snapshot removal failed"),
            }
        }
    }
}

/// Removes internal `sluice-` snapshots that agents before change tracking left on offline
/// images when they crashed (nothing holds these images open).
pub(crate) async fn remove_legacy_snapshots(disks: &[PathBuf]) {
    let disks = disks.to_vec();
    let _ = tokio::task::spawn_blocking(move || {
        for disk in &disks {
            let Ok(image) = qemu_img::info(disk) else { continue };
            for snapshot in image.snapshots.iter().filter(|s| s.name.starts_with(SNAPSHOT_PREFIX)) {
                match qemu_img::snapshot_delete(disk, &snapshot.name) {
                    Ok(()) => info!(disk = %disk.display(), snapshot = snapshot.name,
                                    "leftover snapshot removed"),
                    Err(error) => warn!(disk = %disk.display(), snapshot = snapshot.name, %error,
                                        "leftover snapshot removal failed"),
                }
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(desc: &str) -> String {
        let class = "GenericError".to_owned();
        in_use_hint(&QmpError::Command { command: "blockdev-add".into(), class, desc: desc.into() })
    }

    #[test]
    fn only_a_held_image_gets_the_qmp_socket_hint() {
        let held = refused("Failed to get \"write\" lock");
        assert!(held.ends_with("or another backup of the same image)"), "{held}");
        let missing = "Could not open '/d/a.qcow2': No such file or directory";
        assert_eq!(refused(missing), format!("blockdev-add: {missing}"), "no hint");
        assert!(!refused("Could not open '/d/blocked.qcow2': Permission denied").contains('('));
        assert!(!in_use_hint(&QmpError::Closed).contains("qmp_socket"));
    }
}
