//! The client against a real `qemu-storage-daemon`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use super::*;

/// A storage daemon with a QMP socket, killed when dropped.
struct Daemon {
    child: Child,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts a daemon and waits until its monitor is set up (its pid file is written then:
    /// a client that connects earlier can crash it). Under load QEMU 10's daemon now and
    /// then crashes while starting; it is started again then, as the agent does.
    async fn start() -> Self {
        for _ in 0..3 {
            let mut daemon = Self::spawn();
            if daemon.started().await {
                return daemon;
            }
        }
        panic!("qemu-storage-daemon crashed three times while starting");
    }

    fn spawn() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("qmp.sock");
        let chardev = format!("socket,path={},server=on,wait=off,id=m", socket.display());
        let child = Command::new("qemu-storage-daemon")
            .args(["--chardev", &chardev, "--monitor", "chardev=m", "--pidfile"])
            .arg(dir.path().join("pid"))
            .stdin(Stdio::null())
            .spawn()
            .expect("qemu-storage-daemon runs (apt-get install qemu-utils)");
        Self { child, socket, dir }
    }

    /// Whether the daemon wrote its pid file (false: it exited first).
    async fn started(&mut self) -> bool {
        let pidfile = self.dir.path().join("pid");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !pidfile.exists() {
            if self.child.try_wait().expect("try_wait").is_some() {
                return false;
            }
            assert!(tokio::time::Instant::now() < deadline, "no pid file within 30 s");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        true
    }

    async fn connect(&self) -> Qmp {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match Qmp::connect(&self.socket).await {
                Ok(qmp) => return qmp,
                // A daemon still starting may leave a connection unanswered or close it.
                Err(
                    QmpError::Connect { .. } | QmpError::Busy { .. } | QmpError::NotReady { .. },
                ) if tokio::time::Instant::now() < deadline => {
                    tokio::task::yield_now().await;
                }
                Err(error) => panic!("cannot connect: {error}"),
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn commands_return_values_and_errors_carry_their_class() {
    let daemon = Daemon::start().await;
    let mut qmp = daemon.connect().await;
    let jobs = qmp.execute("query-block-jobs", Value::Null).await.expect("query");
    assert_eq!(jobs, json!([]));
    let error = qmp
        .execute("block-job-cancel", json!({ "device": "nothing" }))
        .await
        .expect_err("no such job");
    assert!(error.is_class("DeviceNotActive"), "{error:?}");
    assert!(error.to_string().starts_with("block-job-cancel: "), "{error}");
}

#[tokio::test]
async fn out_of_band_execution_is_enabled_when_offered() {
    let daemon = Daemon::start().await;
    let mut qmp = daemon.connect().await;
    assert!(qmp.out_of_band(), "a socket monitor offers oob");
    // In-band commands still answer in order, each by its id.
    for _ in 0..3 {
        let version = qmp.execute("query-version", Value::Null).await.expect("query-version");
        assert_eq!(version["qemu"]["major"].as_u64().map(|major| major >= 8), Some(true));
    }
}

#[tokio::test]
async fn pipelined_commands_each_get_their_own_answer_in_order() {
    let daemon = Daemon::start().await;
    let mut qmp = daemon.connect().await;
    let cancel = json!({ "device": "nothing" });
    let commands = vec![
        ("query-version", Value::Null),
        ("block-job-cancel", cancel),
        ("query-jobs", Value::Null),
    ];
    let replies = qmp.pipeline(commands).await.expect("sent and answered");
    assert_eq!(replies.len(), 3);
    assert!(replies[0].as_ref().is_ok_and(|version| version["qemu"]["major"].is_u64()));
    assert!(replies[1].as_ref().is_err_and(|e| e.is_class("DeviceNotActive")), "{replies:?}");
    assert_eq!(replies[2].as_ref().ok(), Some(&json!([])), "ran after the failed one");
    // The connection goes on as before.
    qmp.execute("query-version", Value::Null).await.expect("query-version");
}

#[tokio::test]
async fn events_that_arrive_before_a_reply_are_kept() {
    let daemon = Daemon::start().await;
    let mut qmp = daemon.connect().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("new.qcow2");
    // A job's status events come while the command that made it is being answered.
    let create = json!({
        "job-id": "make",
        "options": { "driver": "file", "filename": file.display().to_string(), "size": 0 },
    });
    qmp.execute("blockdev-create", create).await.expect("blockdev-create");
    let mut seen = Vec::new();
    while !seen.iter().any(|e: &Event| e.data["status"] == "concluded") {
        let event = tokio::time::timeout(Duration::from_secs(30), qmp.next_event())
            .await
            .expect("events in time")
            .expect("event");
        seen.push(event);
    }
    assert_eq!(seen[0].event, "JOB_STATUS_CHANGE");
    assert_eq!(seen[0].data["status"], "created", "{seen:?}");
}

#[tokio::test]
async fn a_second_client_is_told_the_socket_is_busy() {
    let daemon = Daemon::start().await;
    let _first = daemon.connect().await;
    let second = Qmp::connect(&daemon.socket).await.expect_err("one client per socket");
    assert!(matches!(second, QmpError::Busy { .. }), "{second:?}");
    assert!(second.to_string().contains("another client is using the socket"), "{second}");
}

#[tokio::test]
async fn a_socket_nobody_listens_on_is_a_connect_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let error = Qmp::connect(&dir.path().join("none.sock")).await.expect_err("nothing there");
    assert!(matches!(error, QmpError::Connect { .. }), "{error:?}");
}

#[tokio::test]
async fn a_daemon_that_exits_closes_the_connection() {
    let daemon = Daemon::start().await;
    let mut qmp = daemon.connect().await;
    match qmp.execute("quit", Value::Null).await {
        Ok(_) | Err(QmpError::Closed) => {}
        Err(other) => panic!("quit: {other:?}"),
    }
    let after = qmp.execute("query-block-jobs", Value::Null).await.expect_err("gone");
    assert!(matches!(after, QmpError::Closed | QmpError::Protocol(_)), "{after:?}");
}

#[test]
fn a_reset_connection_counts_as_closed() {
    let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
    assert!(matches!(codec_error(LinesCodecError::Io(reset)), QmpError::Closed));
    let other = std::io::Error::from(std::io::ErrorKind::InvalidData);
    assert!(matches!(codec_error(LinesCodecError::Io(other)), QmpError::Protocol(_)));
}

#[test]
fn qmp_capabilities_refused_as_unknown_means_not_ready_yet() {
    let refused = |class: &str| QmpError::Command {
        command: "qmp_capabilities".into(),
        class: class.into(),
        desc: "Expecting capabilities negotiation with 'qmp_capabilities'".into(),
    };
    assert!(negotiation_not_ready(&refused("CommandNotFound")), "connect again");
    assert!(!negotiation_not_ready(&refused("GenericError")), "any other refusal is final");
}
