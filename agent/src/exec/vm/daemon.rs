//! The `qemu-storage-daemon` of an offline VM backup, and the agent's spare one.
//!
//! A daemon takes 8-10 ms to start (process start and dynamic linking), longer than the
//! copy of a small incremental. So once the coordinator has acknowledged the outcome of a
//! backup that took a daemon, [`Daemons`] starts the next one and keeps it ready: the next
//! offline backup takes it instead of waiting, and the start (several ms of CPU) holds up
//! neither that backup's COMMIT nor its report and its session's end. A
//! spare holds no image until it is taken. A daemon started for one backup is named by its
//! restore point instead, and recovery finds it by that name.
//!
//! Every daemon is started through `setpriv --pdeathsig` (util-linux), so it gets SIGTERM
//! when its agent dies however it dies: idle, it just exits; holding a disk, it saves the
//! bitmaps and frees the disk's lock, as the restarted agent's SIGTERM would make it. A
//! killed agent's items are retried on other agents, which need that lock; a daemon left
//! running would hold it until the agent came back. (The parent-death signal follows the
//! thread that started the daemon: the agent's runtime thread, which lives as long as it.)
//!
//! The daemon's monitor runs on one end of a socket pair that the daemon inherits (fd
//! [`MONITOR_FD`]); the agent keeps the other. Nothing listens: QEMU before 11.0 watches a
//! new monitor's listening socket from two threads for a moment after start, and both can
//! serve the connection (see `exec::qmp`). The daemon greets on the pair once its monitor
//! is set up, and a daemon that dies while starting closes it. (10,000 starts, 8 at a time
//! on a loaded 2-core machine, each sending one `blockdev-add`: 18 exchanges went wrong
//! with a listener, answers to the wrong command among them; none on an inherited pair.)

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tempfile::TempDir;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::exec::qmp::{Qmp, QmpError};

const DAEMON: &str = "qemu-storage-daemon";
/// Prefix of a daemon's folder; recovery finds a daemon that outlived its agent by it (one
/// whose agent died before `setpriv` set its parent-death signal).
pub(crate) const DAEMON_DIR_PREFIX: &str = "sluice-qsd-";
/// The folder of a spare starts with this (no restore point is named so).
const SPARE_DIR_PREFIX: &str = "sluice-qsd-spare-";
/// The daemon's file descriptor of its monitor's connection.
const MONITOR_FD: i32 = 3;
/// How long a new daemon gets to greet on its monitor.
const DAEMON_START: Duration = Duration::from_secs(30);
/// How many times a daemon that dies while starting is started: under load QEMU 10's daemon
/// now and then crashes (SIGSEGV) before its monitor answers, having touched no image yet.
const DAEMON_STARTS: u32 = 3;
/// How long a daemon whose monitor failed during the greeting gets to be seen exiting.
const EXIT_WAIT: Duration = Duration::from_millis(200);
/// How long a daemon gets to save its bitmaps and exit.
const DAEMON_QUIT: Duration = Duration::from_secs(30);
/// How long a daemon's monitor gets to answer `quit`, which it does before it closes the
/// images: past that the monitor is taken for broken, and SIGTERM ends the daemon as cleanly.
const QUIT_ANSWER: Duration = Duration::from_secs(10);

/// A started daemon and the connection to its monitor.
type Started = (Daemon, Qmp);

/// The storage daemons of one agent's offline backups, with the spare. Cheap to clone; the
/// spare ends when the last clone is dropped, or at [`Daemons::close`].
#[derive(Clone, Debug, Default)]
pub struct Daemons {
    /// Where each daemon gets its folder: the agent's own (`Daemons::in_dir`), emptied at
    /// its start, since a daemon's folder outlives an agent killed with SIGKILL; the
    /// system's temporary folder when `None`.
    dir: Option<Arc<PathBuf>>,
    spare: Arc<Mutex<Spare>>,
    /// A backup took a daemon since the last [`Daemons::replenish`].
    taken: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
struct Spare {
    next: Option<Next>,
    /// No spare is started (the agent is stopping, or one could not be started).
    off: bool,
}

/// The spare, starting or ready.
#[derive(Debug)]
enum Next {
    Starting(JoinHandle<Result<Started, String>>),
    Ready(Box<Started>),
}

impl Daemons {
    /// Daemons whose folders go into `dir`.
    pub fn in_dir(dir: PathBuf) -> Self {
        Self { dir: Some(Arc::new(dir)), ..Self::default() }
    }

    fn dir(&self) -> PathBuf {
        self.dir.as_deref().cloned().unwrap_or_else(std::env::temp_dir)
    }

    /// A daemon for the backup of restore point `marker`: the spare when there is one (it is
    /// awaited if still starting), else a new one named by `marker`.
    pub(crate) async fn take(&self, marker: &str) -> Result<Started, String> {
        let mut spare = self.spare.lock().await;
        // Under the lock, as `replenish` reads it: a replenish between the two would miss it.
        self.taken.store(true, Ordering::Release);
        if let Some((mut daemon, qmp)) = spare.ready().await {
            if daemon.running() {
                return Ok((daemon, qmp));
            }
            info!("the spare {DAEMON} has ended; starting one");
        }
        drop(spare);
        Daemon::start(self.dir(), format!("{DAEMON_DIR_PREFIX}{marker}-")).await
    }

    /// [`Daemons::replenish`] in the background, when a backup took a daemon since the
    /// last one (the agent calls it once a coordinator has acknowledged outcomes).
    pub(crate) fn replenish_soon(&self) {
        if self.taken.load(Ordering::Acquire) {
            let daemons = self.clone();
            tokio::spawn(async move { daemons.replenish().await });
        }
    }

    /// Starts a spare if a backup took a daemon since the last call, unless one is kept.
    pub async fn replenish(&self) {
        let mut spare = self.spare.lock().await;
        let taken = self.taken.swap(false, Ordering::AcqRel);
        if taken && !spare.off && spare.next.is_none() {
            let start = tokio::spawn(Daemon::start(self.dir(), SPARE_DIR_PREFIX.to_owned()));
            spare.next = Some(Next::Starting(start));
        }
    }

    /// The spare's process id once it has started; `None` when there is no spare.
    pub async fn spare_pid(&self) -> Option<u32> {
        let mut spare = self.spare.lock().await;
        let ready = spare.ready().await?;
        let pid = ready.0.child.id();
        spare.next = Some(Next::Ready(Box::new(ready)));
        pid
    }

    /// Ends the spare and starts no other (the agent is stopping).
    pub async fn close(&self) {
        let mut spare = self.spare.lock().await;
        spare.off = true;
        if let Some((daemon, mut qmp)) = spare.ready().await {
            daemon.quit(&mut qmp).await;
        }
    }
}

impl Spare {
    /// Takes the spare, once it has started.
    async fn ready(&mut self) -> Option<Started> {
        match self.next.take()? {
            Next::Ready(started) => Some(*started),
            Next::Starting(start) => match start.await {
                Ok(Ok(started)) => Some(started),
                Ok(Err(error)) => {
                    info!(%error, "cannot keep a spare {DAEMON}; each backup starts its own");
                    self.off = true;
                    None
                }
                Err(error) => {
                    warn!(%error, "the spare {DAEMON}'s start failed");
                    None
                }
            },
        }
    }
}

/// What starts a daemon (its own arguments follow): `setpriv`, which sets the parent-death
/// signal and execs the daemon, which keeps it.
fn daemon_command() -> Command {
    let mut command = Command::new("setpriv");
    command.args(["--pdeathsig", "TERM", "--", DAEMON]);
    command
}

/// What [`daemon_command`] needs installed.
const NEEDS: &str = "setpriv (util-linux) with qemu-storage-daemon (qemu-utils)";

/// A `qemu-storage-daemon` with a folder of its own (its pid file and error output).
#[derive(Debug)]
pub(crate) struct Daemon {
    child: Child,
    dir: TempDir,
}

/// Why a daemon could not be started.
#[derive(Debug)]
enum StartError {
    /// It ended before its monitor answered.
    Died(String),
    /// Anything else.
    Failed(String),
}

impl Daemon {
    /// Starts a daemon with a folder in `dir` whose name begins with `prefix` and connects to it;
    /// one that dies while starting is started again.
    async fn start(dir: PathBuf, prefix: String) -> Result<Started, String> {
        let mut died = String::new();
        for start in 1..=DAEMON_STARTS {
            match Self::start_once(&dir, &prefix).await {
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

    async fn start_once(parent: &Path, prefix: &str) -> Result<Started, StartError> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(parent)
            .map_err(|e| StartError::Failed(format!("cannot create a folder for {DAEMON}: {e}")))?;
        let (ours, theirs) = UnixStream::pair()
            .map_err(|e| StartError::Failed(format!("cannot make {DAEMON}'s monitor: {e}")))?;
        let spawned = std::time::Instant::now();
        let child = spawn(&dir, theirs)?;
        debug!(ms = format!("{:.1}", spawned.elapsed().as_secs_f64() * 1e3), "{DAEMON} spawned");
        let mut daemon = Self { child, dir };
        match daemon.greet(ours).await {
            Ok(qmp) => {
                let ms = format!("{:.1}", spawned.elapsed().as_secs_f64() * 1e3);
                debug!(ms, "{DAEMON} answered");
                Ok((daemon, qmp))
            }
            Err(error) => {
                daemon.terminate();
                Err(error)
            }
        }
    }

    /// Negotiates on the monitor; fails with the daemon's error output if it exits first.
    async fn greet(&mut self, ours: UnixStream) -> Result<Qmp, StartError> {
        let stream = ours
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(ours))
            .map_err(|e| StartError::Failed(format!("cannot watch {DAEMON}'s monitor: {e}")))?;
        match Qmp::inherited(stream, DAEMON_START).await {
            Ok(qmp) => Ok(qmp),
            Err(error) => {
                // A daemon that crashed while starting closed its end as it exited.
                let exit = tokio::time::timeout(EXIT_WAIT, self.child.wait()).await;
                if let Ok(Ok(status)) = exit {
                    return Err(self.died(status));
                }
                Err(StartError::Failed(format!("{DAEMON} did not answer: {error}")))
            }
        }
    }

    /// Whether the process is still there.
    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The daemon ended while starting: its status and error output.
    fn died(&self, status: std::process::ExitStatus) -> StartError {
        let log = std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default();
        StartError::Died(format!("{DAEMON} ended with {status}: {}", log.trim()))
    }

    /// Asks the daemon to quit (it saves the bitmaps) and waits for it; kills it if it hangs.
    pub(crate) async fn quit(mut self, qmp: &mut Qmp) {
        qmp.set_patience(Some(QUIT_ANSWER));
        if let Err(error) = qmp.execute("quit", Value::Null).await
            && !matches!(error, QmpError::Closed)
        {
            warn!(%error, "{DAEMON} refused to quit; sending SIGTERM");
            self.terminate();
        }
        self.wait_for_exit().await;
    }

    /// Ends a daemon whose monitor failed on `qmp` (its only one) with SIGTERM, and waits
    /// for it to exit, so that the images it holds are free again: it saves their bitmaps as
    /// it closes them.
    pub(crate) async fn end(mut self, qmp: Qmp) {
        drop(qmp);
        self.terminate();
        self.wait_for_exit().await;
    }

    /// Waits for the process to exit; kills it if it does not in time.
    async fn wait_for_exit(&mut self) {
        if tokio::time::timeout(DAEMON_QUIT, self.child.wait()).await.is_err() {
            warn!("{DAEMON} did not exit; killing it");
            let _ = self.child.kill().await;
        }
    }

    /// Sends SIGTERM: the daemon saves its bitmaps and exits. SIGCONT follows, so that a
    /// stopped daemon (SIGSTOP, a debugger) acts on it too.
    fn terminate(&mut self) {
        self.signal(Signal::SIGTERM);
        self.signal(Signal::SIGCONT);
    }

    fn signal(&mut self, signal: Signal) {
        if let (true, Some(pid)) = (self.running(), self.child.id()) {
            let _ = kill(Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX)), signal);
        }
    }
}

/// Spawns the daemon with `monitor` as its fd [`MONITOR_FD`]. The command, which holds
/// this process's copy of that end, is dropped before this returns: a daemon that dies
/// then closes the connection for good.
fn spawn(dir: &TempDir, monitor: UnixStream) -> Result<Child, StartError> {
    let stderr = File::create(dir.path().join("stderr"))
        .map_err(|e| StartError::Failed(format!("cannot create {DAEMON}'s log: {e}")))?;
    let chardev = format!("socket,id=sluice,fd={MONITOR_FD}");
    let mut command = daemon_command();
    command
        .args(["--chardev", &chardev, "--monitor", "chardev=sluice"])
        // Also names the folder in the command line, where recovery looks for it.
        .arg("--pidfile")
        .arg(dir.path().join("pid"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .fd_mappings(vec![FdMapping { parent_fd: monitor.into(), child_fd: MONITOR_FD }])
        .map_err(|e| StartError::Failed(format!("cannot pass {DAEMON} its monitor: {e}")))?;
    command.spawn().map_err(|e| StartError::Failed(format!("cannot run {NEEDS}: {e}")))
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Dropped without quit (the backup's future was dropped): end it cleanly anyway.
        self.terminate();
    }
}
