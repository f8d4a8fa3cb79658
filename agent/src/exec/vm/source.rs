//! Where a VM backup reads its disks: the running VM's own QEMU, over the QMP socket the
//! job names, or for offline images (no socket, or nothing listening on it: the VM is off)
//! a `qemu-storage-daemon` started for the backup. Both speak the same QMP, so the rest of
//! the backup is one code path. The daemon loads and saves the images' persistent bitmaps
//! as the VM does; it is asked to quit (or sent SIGTERM) so that it saves them, never
//! killed outright while it holds them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tempfile::TempDir;
use tokio::process::{Child, Command};
use tracing::{debug, info, warn};

use super::blockdev::{self, NamedNode};
use crate::exec::qmp::{Qmp, QmpError};
use crate::key::SNAPSHOT_PREFIX;
use crate::qemu_img;

const DAEMON: &str = "qemu-storage-daemon";
/// Prefix of a daemon's socket folder; recovery finds a daemon that outlived its agent by it.
pub(crate) const DAEMON_DIR_PREFIX: &str = "sluice-qsd-";
/// How long a new daemon gets to open its QMP socket and answer on it.
const DAEMON_START: Duration = Duration::from_secs(30);
/// How many times a daemon that dies while starting is started: under load QEMU 10's daemon
/// now and then crashes (SIGSEGV) before its monitor answers, having touched no image yet.
const DAEMON_STARTS: u32 = 3;
/// How long a daemon whose socket failed during the greeting gets to be seen exiting.
const EXIT_WAIT: Duration = Duration::from_millis(200);
/// How long a daemon gets to save its bitmaps and exit.
const DAEMON_QUIT: Duration = Duration::from_secs(30);
/// How often a starting daemon is looked at (it is ready a few ms after the spawn; the
/// timer's resolution is a millisecond).
const SOCKET_POLL: Duration = Duration::from_millis(1);

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
    /// Opens the disks: through the VM's socket when it answers, else through a daemon
    /// (`marker` names it for recovery).
    pub(crate) async fn open(
        socket: &str,
        disks: &[PathBuf],
        marker: &str,
    ) -> Result<Self, OpenError> {
        if !socket.is_empty() {
            match Qmp::connect(Path::new(socket)).await {
                Ok(mut qmp) => {
                    let nodes =
                        blockdev::find_disks(&mut qmp, disks).await.map_err(OpenError::of)?;
                    return Ok(Self { qmp, nodes, daemon: None, offline: false });
                }
                Err(error @ QmpError::Connect { .. }) => {
                    info!(%error, "the VM is not running: backing its disks up as offline images");
                }
                Err(error) => return Err(OpenError::of(error)),
            }
        }
        Self::offline(disks, marker).await
    }

    async fn offline(disks: &[PathBuf], marker: &str) -> Result<Self, OpenError> {
        let (daemon, mut qmp) = Daemon::start(marker).await.map_err(OpenError::of)?;
        match open_disks(&mut qmp, disks).await {
            Ok(nodes) => {
                delete_legacy_snapshots(&mut qmp, &nodes).await;
                Ok(Self { qmp, nodes, daemon: Some(daemon), offline: true })
            }
            Err(error) => {
                daemon.quit(&mut qmp).await;
                Err(error)
            }
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

    /// Ends the connection; a daemon saves the bitmaps and exits.
    pub(crate) async fn close(mut self) {
        self.quit_daemon().await;
    }
}

/// Opens each offline disk in the daemon and finds its node.
async fn open_disks(qmp: &mut Qmp, disks: &[PathBuf]) -> Result<Vec<NamedNode>, OpenError> {
    for (index, disk) in disks.iter().enumerate() {
        blockdev::add_qcow2(qmp, &format!("disk{index}"), disk)
            .await
            .map_err(|error| OpenError { disk: Some(disk.clone()), message: in_use_hint(error) })?;
    }
    blockdev::find_disks(qmp, disks).await.map_err(OpenError::of)
}

/// QEMU's lock error, with what the operator can do about it.
fn in_use_hint(error: QmpError) -> String {
    let text = error.to_string();
    if text.contains("lock") {
        format!(
            "{text} (the image is in use by another process: if a VM runs on it, give the job \
             the VM's qmp_socket)"
        )
    } else {
        text
    }
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

/// A `qemu-storage-daemon` serving QMP on a socket in a folder of its own.
#[derive(Debug)]
struct Daemon {
    child: Child,
    dir: TempDir,
}

/// Why a daemon could not be started.
enum StartError {
    /// It ended before its monitor answered.
    Died(String),
    /// Anything else.
    Failed(String),
}

impl Daemon {
    /// Starts a daemon and connects to it; one that dies while starting is started again.
    async fn start(marker: &str) -> Result<(Self, Qmp), String> {
        let mut died = String::new();
        for start in 1..=DAEMON_STARTS {
            match Self::start_once(marker).await {
                Ok(started) => return Ok(started),
                Err(StartError::Died(message)) => {
                    warn!(start, %message, "{DAEMON} died while starting");
                    died = message;
                }
                Err(StartError::Failed(message)) => return Err(message),
            }
        }
        Err(died)
    }

    async fn start_once(marker: &str) -> Result<(Self, Qmp), StartError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DAEMON_DIR_PREFIX}{marker}-"))
            .tempdir()
            .map_err(|e| StartError::Failed(format!("cannot create a folder for {DAEMON}: {e}")))?;
        let socket = dir.path().join("qmp.sock");
        let stderr = File::create(dir.path().join("stderr"))
            .map_err(|e| StartError::Failed(format!("cannot create {DAEMON}'s log: {e}")))?;
        let chardev = format!(
            "socket,path={},server=on,wait=off,id=sluice",
            socket.display().to_string().replace(',', ",,")
        );
        let spawned = std::time::Instant::now();
        let pidfile = dir.path().join("pid");
        let child = Command::new(DAEMON)
            .args(["--chardev", &chardev, "--monitor", "chardev=sluice"])
            .arg("--pidfile")
            .arg(&pidfile)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| {
                StartError::Failed(format!("cannot run {DAEMON} (install qemu-utils): {e}"))
            })?;
        debug!(ms = format!("{:.1}", spawned.elapsed().as_secs_f64() * 1e3), "{DAEMON} spawned");
        let mut daemon = Self { child, dir };
        match daemon.connect(&socket, &pidfile).await {
            Ok(qmp) => Ok((daemon, qmp)),
            Err(error) => {
                daemon.terminate();
                Err(error)
            }
        }
    }

    /// Connects once the daemon is ready; fails with its error output if it exits first.
    /// The daemon writes its pid file once its monitor is set up: a client that connects to
    /// the socket before then can crash it (SIGSEGV) or get no greeting.
    async fn connect(&mut self, socket: &Path, pidfile: &Path) -> Result<Qmp, StartError> {
        let began = tokio::time::Instant::now();
        let deadline = began + DAEMON_START;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(self.died(status));
            }
            if !pidfile.exists() {
                if tokio::time::Instant::now() >= deadline {
                    let message = format!("{DAEMON} did not start within {DAEMON_START:?}");
                    return Err(StartError::Failed(message));
                }
                tokio::time::sleep(SOCKET_POLL).await;
                continue;
            }
            match Qmp::connect(socket).await {
                Ok(qmp) => {
                    let ms = format!("{:.1}", began.elapsed().as_secs_f64() * 1e3);
                    debug!(attempts, ms, "{DAEMON} answered");
                    return Ok(qmp);
                }
                // Nobody else knows this socket: "busy" is the daemon still starting.
                Err(
                    QmpError::Connect { .. } | QmpError::NotReady { .. } | QmpError::Busy { .. },
                ) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(SOCKET_POLL).await;
                }
                Err(error) => {
                    // A daemon that crashed mid-greeting closes the socket as it exits.
                    let exit = tokio::time::timeout(EXIT_WAIT, self.child.wait()).await;
                    if let Ok(Ok(status)) = exit {
                        return Err(self.died(status));
                    }
                    return Err(StartError::Failed(format!("{DAEMON} did not answer: {error}")));
                }
            }
        }
    }

    /// The daemon ended while starting: its status and error output.
    fn died(&self, status: std::process::ExitStatus) -> StartError {
        let log = std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default();
        StartError::Died(format!("{DAEMON} ended with {status}: {}", log.trim()))
    }

    /// Asks the daemon to quit (it saves the bitmaps) and waits for it; kills it if it hangs.
    async fn quit(mut self, qmp: &mut Qmp) {
        if let Err(error) = qmp.execute("quit", Value::Null).await
            && !matches!(error, QmpError::Closed)
        {
            warn!(%error, "{DAEMON} refused to quit; sending SIGTERM");
            self.terminate();
        }
        if tokio::time::timeout(DAEMON_QUIT, self.child.wait()).await.is_err() {
            warn!("{DAEMON} did not exit; killing it");
            let _ = self.child.kill().await;
        }
    }

    /// Sends SIGTERM: the daemon saves its bitmaps and exits.
    fn terminate(&mut self) {
        let running = matches!(self.child.try_wait(), Ok(None));
        if let (true, Some(pid)) = (running, self.child.id()) {
            let _ = kill(Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX)), Signal::SIGTERM);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Dropped without quit (the backup's future was dropped): end it cleanly anyway.
        self.terminate();
    }
}
