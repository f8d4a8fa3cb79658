//! A real etcd for the tests: one shared per test-binary run, or a dedicated one that a test
//! may stop and start again.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use tempfile::TempDir;

use crate::{logs, ports::free_port, watchdog::Watchdog};

/// Environment variable naming an etcd to use instead of starting one (`http://host:port`).
pub const ETCD_ENV: &str = "SLUICE_TEST_ETCD";

const NOT_FOUND: &str = "etcd not found on PATH: install it with `apt-get install etcd-server` \
                         (Debian) or set SLUICE_TEST_ETCD";
const MAX_REQUEST_BYTES: &str = "33554432";
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// An etcd server: a process this harness runs, or an external one from `SLUICE_TEST_ETCD`.
pub struct Etcd {
    url: String,
    local: Option<Local>,
}

/// An etcd process on fixed loopback ports with its own data directory.
struct Local {
    dir: Option<TempDir>,
    client_port: u16,
    peer_port: u16,
    process: Option<(Child, Watchdog)>,
    /// Whether the data directory outlives this value (the shared etcd, removed by its
    /// watchdog when the test process ends).
    shared: bool,
    /// More etcd flags (e.g. `--quota-backend-bytes`).
    extra: Vec<String>,
}

impl Etcd {
    /// The etcd shared by every test of this run: `SLUICE_TEST_ETCD` if set, else an etcd
    /// started on first use and killed (data removed) when the test process ends.
    pub fn shared() -> &'static Etcd {
        static SHARED: OnceLock<Etcd> = OnceLock::new();
        SHARED.get_or_init(|| match std::env::var(ETCD_ENV) {
            Ok(url) if !url.trim().is_empty() => Etcd { url: url.trim().to_string(), local: None },
            _ => Etcd::spawn_local(true, &[]),
        })
    }

    /// Starts a dedicated etcd, which the test owns and may [`stop`](Etcd::stop) and
    /// [`start`](Etcd::start). Always a local process, whatever `SLUICE_TEST_ETCD` says.
    pub fn dedicated() -> Etcd {
        Etcd::spawn_local(false, &[])
    }

    /// A [`dedicated`](Etcd::dedicated) etcd with more flags, e.g.
    /// `["--quota-backend-bytes", "50331648"]`.
    pub fn dedicated_with(flags: &[&str]) -> Etcd {
        Etcd::spawn_local(false, flags)
    }

    fn spawn_local(shared: bool, flags: &[&str]) -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("sluice-etcd-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for etcd: {e}"));
        let client_port = free_port();
        let mut peer_port = free_port();
        while peer_port == client_port {
            peer_port = free_port();
        }
        let extra = flags.iter().map(ToString::to_string).collect();
        let mut local =
            Local { dir: Some(dir), client_port, peer_port, process: None, shared, extra };
        local.start();
        Etcd { url: format!("http://127.0.0.1:{client_port}"), local: Some(local) }
    }

    /// Client URL, e.g. `http://127.0.0.1:23791`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Connects an etcd client, for tests that look into etcd directly.
    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.url.as_str()], None)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to etcd at {}: {e}", self.url))
    }

    /// Stops the etcd process with SIGTERM and waits for it to exit. Data stays.
    pub fn stop(&mut self) {
        self.local_mut("stop").stop();
    }

    /// Starts the etcd process again on the same ports and data directory, and waits until
    /// it is healthy.
    pub fn start(&mut self) {
        self.local_mut("start").start();
    }

    /// Path of etcd's log file, if this harness runs the process.
    pub fn log_path(&self) -> Option<PathBuf> {
        self.local.as_ref().map(Local::log_path)
    }

    fn local_mut(&mut self, action: &str) -> &mut Local {
        self.local.as_mut().unwrap_or_else(|| {
            panic!("cannot {action} an external etcd ({ETCD_ENV}); use Etcd::dedicated()")
        })
    }
}

impl Local {
    fn dir(&self) -> &Path {
        self.dir.as_ref().map(TempDir::path).unwrap_or_else(|| Path::new("/nonexistent"))
    }

    fn log_path(&self) -> PathBuf {
        self.dir().join("etcd.log")
    }

    fn start(&mut self) {
        assert!(self.process.is_none(), "etcd is already running");
        let log = self.log_path();
        logs::mark(&log, "starting etcd");
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .args(["--name", "sluice-test", "--data-dir"])
            .arg(self.dir().join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("sluice-test={peer}")])
            .args(["--max-request-bytes", MAX_REQUEST_BYTES])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(logs::append(&log))
            .stderr(logs::append(&log))
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Nothing worth keeping for debugging: drop (remove) the directory.
                self.dir = None;
                panic!("{NOT_FOUND}")
            }
            Err(e) => panic!("cannot start etcd: {e}"),
        };
        let cleanup = self.shared.then(|| self.dir().to_path_buf());
        let watchdog = Watchdog::watch(child.id(), cleanup.as_deref());
        if let Err(problem) = wait_healthy(&mut child, self.client_port) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "etcd did not become healthy on {client}: {problem}\n----- {} -----\n{}",
                log.display(),
                logs::tail(&log, logs::TAIL_LINES)
            );
        }
        self.process = Some((child, watchdog));
    }

    fn stop(&mut self) {
        let (mut child, watchdog) = self.process.take().expect("etcd is not running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("etcd did not exit within {STOP_TIMEOUT:?} of SIGTERM");
                }
            }
        }
        drop(watchdog);
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        if let Some((mut child, watchdog)) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
            drop(watchdog);
        }
        if !std::thread::panicking() {
            return;
        }
        let log = self.log_path();
        if let Some(dir) = self.dir.take() {
            eprintln!("sluice-tests: kept etcd dir {}", dir.keep().display());
            logs::print_tails([log.as_path()]);
        }
    }
}

/// Polls etcd's `/health` until it reports healthy, or fails if the process exits.
fn wait_healthy(child: &mut Child, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("etcd exited with {status}"));
        }
        match health(port) {
            Ok(body) if body.contains("\"health\":\"true\"") => return Ok(()),
            Ok(body) => last = body,
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("timed out after {START_TIMEOUT:?}; last answer: {last}"))
}

/// One plain HTTP/1.0 `GET /health`, returning the response text.
fn health(port: u16) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}
