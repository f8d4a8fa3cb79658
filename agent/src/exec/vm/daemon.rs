//! The `qemu-storage-daemon` of an offline VM backup, and the agent's spare one.
//!
//! A daemon takes 8-10 ms to start (process start and dynamic linking), longer than the
//! copy of a small incremental. So once the coordinator has acknowledged the outcome of a
//! backup that took a daemon, [`Daemons`] starts the next one and keeps it ready: the next
//! offline backup takes it instead of waiting, and the start (several ms of CPU) holds up
//! neither that backup's COMMIT nor its report and its session's end. A
//! spare holds no image until it is taken. It is started through `setpriv --pdeathsig`
//! (util-linux), so it gets SIGTERM when its agent dies however it dies: idle, it just
//! exits; taken, it saves the bitmaps as the restarted agent's SIGTERM would make it.
//! A daemon started for one backup is named by its restore point instead, and recovery
//! finds it by that name.

use std::fs::File;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

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
/// Prefix of a daemon's socket folder; recovery finds a daemon that outlived its agent by it.
pub(crate) const DAEMON_DIR_PREFIX: &str = "sluice-qsd-";
/// The socket folder of a spare starts with this (no restore point is named so).
const SPARE_DIR_PREFIX: &str = "sluice-qsd-spare-";
/// The QMP socket's name in the daemon's folder.
const SOCKET: &str = "qmp.sock";
/// How long a new daemon gets to open its QMP socket and answer on it.
const DAEMON_START: Duration = Duration::from_secs(30);
/// How many times a daemon that dies while starting is started: under load QEMU 10's daemon
/// now and then crashes (SIGSEGV) before its monitor answers, having touched no image yet.
const DAEMON_STARTS: u32 = 3;
/// How long a daemon whose socket failed during the greeting gets to be seen exiting.
const EXIT_WAIT: Duration = Duration::from_millis(200);
/// How long a daemon gets to save its bitmaps and exit.
const DAEMON_QUIT: Duration = Duration::from_secs(30);
/// How long a daemon's monitor gets to answer `quit`, which it does before it closes the
/// images: past that the monitor is taken for broken, and SIGTERM ends the daemon as cleanly.
const QUIT_ANSWER: Duration = Duration::from_secs(10);
/// How often a starting daemon is looked at (it is ready a few ms after the spawn; the
/// timer's resolution is a millisecond).
const SOCKET_POLL: Duration = Duration::from_millis(1);

/// A started daemon and the connection to its monitor.
type Started = (Daemon, Qmp);

/// The storage daemons of one agent's offline backups, with the spare. Cheap to clone; the
/// spare ends when the last clone is dropped, or at [`Daemons::close`].
#[derive(Clone, Debug, Default)]
pub struct Daemons {
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
        Daemon::start(&format!("{DAEMON_DIR_PREFIX}{marker}-"), Role::Backup).await
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
            let start = tokio::spawn(Daemon::start(SPARE_DIR_PREFIX, Role::Spare));
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

/// What a daemon is started as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// For one backup; it outlives a killed agent until the restarted agent ends it.
    Backup,
    /// The spare: it ends with its agent.
    Spare,
}

impl Role {
    /// The command that starts the daemon (its own arguments follow).
    fn command(self) -> Command {
        match self {
            Role::Backup => Command::new(DAEMON),
            Role::Spare => {
                // setpriv sets the parent-death signal and execs the daemon, which keeps it.
                let mut command = Command::new("setpriv");
                command.args(["--pdeathsig", "TERM", "--", DAEMON]);
                command
            }
        }
    }

    /// What the command needs installed.
    fn needs(self) -> &'static str {
        match self {
            Role::Backup => "qemu-storage-daemon (install qemu-utils)",
            Role::Spare => "setpriv (util-linux) with qemu-storage-daemon (qemu-utils)",
        }
    }
}

/// A `qemu-storage-daemon` serving QMP on a socket in a folder of its own.
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
    /// Starts a daemon whose socket folder's name begins with `prefix` and connects to it;
    /// one that dies while starting is started again.
    async fn start(prefix: &str, role: Role) -> Result<Started, String> {
        let mut died = String::new();
        for start in 1..=DAEMON_STARTS {
            match Self::start_once(prefix, role).await {
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

    async fn start_once(prefix: &str, role: Role) -> Result<Started, StartError> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .map_err(|e| StartError::Failed(format!("cannot create a folder for {DAEMON}: {e}")))?;
        let socket = dir.path().join(SOCKET);
        let stderr = File::create(dir.path().join("stderr"))
            .map_err(|e| StartError::Failed(format!("cannot create {DAEMON}'s log: {e}")))?;
        let chardev = format!(
            "socket,path={},server=on,wait=off,id=sluice",
            socket.display().to_string().replace(',', ",,")
        );
        let spawned = std::time::Instant::now();
        let pidfile = dir.path().join("pid");
        let mut command = role.command();
        let child = command
            .args(["--chardev", &chardev, "--monitor", "chardev=sluice"])
            .arg("--pidfile")
            .arg(&pidfile)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| StartError::Failed(format!("cannot run {}: {e}", role.needs())))?;
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

    /// Ends a daemon whose monitor failed on `qmp`, and waits for it to exit, so that the
    /// images it holds are free again. The connection is closed and a new one asks it to
    /// quit: QEMU serves a new connection when one monitor stopped reading, and `quit` comes
    /// after any command it still had to finish, so images it opened meanwhile are closed
    /// with their bitmaps saved (SIGTERM can end it in the middle of opening one). SIGTERM
    /// only when the new connection fails too.
    pub(crate) async fn end(mut self, qmp: Qmp) {
        drop(qmp);
        self.signal(Signal::SIGCONT);
        match Qmp::connect(&self.dir.path().join(SOCKET)).await {
            Ok(mut qmp) => self.quit(&mut qmp).await,
            Err(error) => {
                warn!(%error, "{DAEMON} did not answer a new connection; sending SIGTERM");
                self.terminate();
                self.wait_for_exit().await;
            }
        }
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

impl Drop for Daemon {
    fn drop(&mut self) {
        // Dropped without quit (the backup's future was dropped): end it cleanly anyway.
        self.terminate();
    }
}
