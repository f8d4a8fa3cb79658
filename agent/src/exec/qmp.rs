//! A small QMP (QEMU Machine Protocol) client: JSON lines over a Unix socket.
//!
//! QEMU greets a new client with one `{"QMP": ...}` line and accepts nothing but
//! `qmp_capabilities` until that is sent. Every command carries an `id` that its reply echoes.
//! Events can arrive at any moment, also between a command and its reply (a transaction's
//! job events come before the transaction's own reply), so they are queued until asked for.
//! QEMU serves one client per socket: a second client gets no greeting, which is reported as
//! a busy socket rather than waited on forever.
//!
//! Out-of-band execution is enabled whenever QEMU offers it. Sluice sends no out-of-band
//! command, but without the capability QEMU suspends the monitor after reading each command
//! and resumes it after answering. QEMU 10.0's monitor was seen to stop reading for good in
//! the first tens of milliseconds of a storage daemon's life (about one start in tens of
//! thousands, the daemon itself alive), which a missed resume explains. With the capability
//! the monitor only suspends when 8 commands wait, and Sluice sends at most
//! [`MAX_PIPELINED`] at a time. (In
//! 45,000 starts with it, one monitor reset its connection instead: seen at once, not after
//! the command timeout.) Either way an offline backup then opens its disks in a new daemon.
//!
//! The likelier cause of both, in QEMU before 11.0: for a moment after start, under load,
//! the main thread and the monitor's I/O thread both watch a socket monitor's listener, and
//! so can both serve the connection (QEMU 11.0 removes the main thread's watch first). Two
//! readers taking its input a byte at a time also swap bytes: once, in the whole suite's
//! runs, a target path reached QEMU with two digits swapped, and the backup failed on the
//! file QEMU could not open. A garbled name or path fails its command the same way (no
//! such file, node or bitmap). Sluice's own storage daemons therefore serve their monitor
//! on a socket pair they inherit, with no listener ([`Qmp::inherited`]); a running VM's
//! socket is its QEMU's own.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::{FramedRead, FramedWrite, LinesCodec, LinesCodecError};

/// How long QEMU gets to greet a new client.
const GREETING: Duration = Duration::from_secs(5);
/// How long one command may take to be answered (block jobs run in the background, so
/// every command Sluice sends answers quickly).
const COMMAND: Duration = Duration::from_secs(60);
/// Longest line accepted from QEMU (replies listing every block node can be long).
const MAX_LINE: usize = 64 * 1024 * 1024;
/// Most commands [`Qmp::pipeline`] sends before their replies, below the 8 that make an
/// out-of-band monitor suspend.
pub(crate) const MAX_PIPELINED: usize = 4;

/// What went wrong talking to QEMU.
#[derive(Debug, thiserror::Error)]
pub(crate) enum QmpError {
    /// Nothing listens on the socket (the VM is not running).
    #[error("cannot connect to QMP socket {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Connected, but QEMU sent no greeting: another client holds the socket.
    #[error(
        "no QMP greeting on {path} within {GREETING:?}: another client is using the socket \
         (QEMU serves one client per socket; give Sluice a -qmp socket of its own)"
    )]
    Busy {
        /// The socket.
        path: PathBuf,
    },
    /// QEMU greeted but did not take `qmp_capabilities`: no answer in time, the connection
    /// dropped, or the command refused as unknown (all seen with a storage daemon connected
    /// to while it was still starting); connecting again helps.
    #[error(
        "QEMU on {path} greeted but did not take qmp_capabilities (no answer within \
         {GREETING:?}, or refused while starting)"
    )]
    NotReady {
        /// The socket.
        path: PathBuf,
    },
    /// QEMU closed the connection.
    #[error("the QMP connection was closed (did QEMU exit?)")]
    Closed,
    /// Reading or writing the socket failed, or QEMU sent something that is not QMP.
    #[error("QMP protocol error: {0}")]
    Protocol(String),
    /// A command got no answer in time.
    #[error("QMP command {command} got no answer within {patience:?}")]
    Timeout {
        /// The command.
        command: String,
        /// How long it was waited for.
        patience: Duration,
    },
    /// QEMU refused a command.
    #[error("{command}: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QMP error class, e.g. `GenericError` or `DeviceNotActive`.
        class: String,
        /// QEMU's explanation.
        desc: String,
    },
}

/// Whether QEMU refused `qmp_capabilities` as a command it does not know ("Expecting
/// capabilities negotiation"): a storage daemon connected to right after it wrote its pid
/// file answered so once, on a loaded machine, before its monitor was ready.
fn negotiation_not_ready(error: &QmpError) -> bool {
    matches!(error, QmpError::Command { class, .. } if class == "CommandNotFound")
}

/// How a handshake failed.
enum Handshake {
    /// No greeting came: the connection closed or stayed silent.
    NoGreeting(QmpError),
    /// QEMU greeted but did not take `qmp_capabilities`.
    NotNegotiated(QmpError),
    /// Anything else.
    Failed(QmpError),
}

/// An asynchronous event from QEMU.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct Event {
    /// Event name, e.g. `BLOCK_JOB_COMPLETED`.
    pub(crate) event: String,
    /// Its data.
    #[serde(default)]
    pub(crate) data: Value,
}

/// The body of an error reply.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    class: String,
    desc: String,
}

/// One line from QEMU.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Message {
    Return {
        #[serde(default)]
        id: Value,
        #[serde(rename = "return")]
        value: Value,
    },
    Error {
        #[serde(default)]
        id: Value,
        error: ErrorBody,
    },
    Event(Event),
    Greeting {
        #[serde(rename = "QMP")]
        qmp: Greeting,
    },
}

/// What QEMU says about itself when a client connects.
#[derive(Debug, Deserialize)]
struct Greeting {
    /// Capabilities the client may enable, e.g. `oob`.
    #[serde(default)]
    capabilities: Vec<String>,
}

/// The capability that keeps the monitor reading (see the module's documentation).
const OUT_OF_BAND: &str = "oob";

/// A negotiated QMP connection.
#[derive(Debug)]
pub(crate) struct Qmp {
    lines: FramedRead<OwnedReadHalf, LinesCodec>,
    writer: FramedWrite<OwnedWriteHalf, LinesCodec>,
    events: VecDeque<Event>,
    next_id: u64,
    out_of_band: bool,
    /// How long a command may take to be answered.
    patience: Duration,
    /// Whether a command went unanswered within its patience (QEMU hangs, or is stopped).
    silent: bool,
}

impl Qmp {
    /// Connects, reads the greeting and negotiates capabilities.
    pub(crate) async fn connect(path: &Path) -> Result<Self, QmpError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Connect { path: path.to_owned(), source })?;
        match Self::handshake(stream, GREETING).await {
            Ok(qmp) => Ok(qmp),
            // QEMU serving another client either leaves a new connection unanswered or, when
            // its listener is busy, closes it before any greeting: both mean "in use".
            Err(Handshake::NoGreeting(_)) => Err(QmpError::Busy { path: path.to_owned() }),
            Err(Handshake::NotNegotiated(_)) => Err(QmpError::NotReady { path: path.to_owned() }),
            Err(Handshake::Failed(error)) => Err(error),
        }
    }

    /// Negotiates on the connection a QEMU process was started with (a storage daemon's
    /// monitor on an inherited socket): QEMU greets once its monitor is set up, within
    /// `greeting`.
    pub(crate) async fn inherited(
        stream: UnixStream,
        greeting: Duration,
    ) -> Result<Self, QmpError> {
        Self::handshake(stream, greeting).await.map_err(|failure| match failure {
            Handshake::NoGreeting(error)
            | Handshake::NotNegotiated(error)
            | Handshake::Failed(error) => error,
        })
    }

    async fn handshake(stream: UnixStream, greeting: Duration) -> Result<Self, Handshake> {
        let (read, write) = stream.into_split();
        let mut qmp = Self {
            lines: FramedRead::new(read, LinesCodec::new_with_max_length(MAX_LINE)),
            writer: FramedWrite::new(write, LinesCodec::new()),
            events: VecDeque::new(),
            next_id: 1,
            out_of_band: false,
            patience: COMMAND,
            silent: false,
        };
        let offered = match tokio::time::timeout(greeting, qmp.read()).await {
            Ok(Ok(Message::Greeting { qmp })) => qmp.capabilities,
            Ok(Ok(other)) => {
                let error = QmpError::Protocol(format!("not a greeting: {other:?}"));
                return Err(Handshake::Failed(error));
            }
            Ok(Err(QmpError::Closed)) => return Err(Handshake::NoGreeting(QmpError::Closed)),
            Err(_) => {
                let silent = QmpError::Timeout { command: "greeting".into(), patience: greeting };
                return Err(Handshake::NoGreeting(silent));
            }
            Ok(Err(error)) => return Err(Handshake::Failed(error)),
        };
        qmp.out_of_band = offered.iter().any(|c| c == OUT_OF_BAND);
        let enable = if qmp.out_of_band { json!({ "enable": [OUT_OF_BAND] }) } else { Value::Null };
        match qmp.command("qmp_capabilities", enable, GREETING).await {
            Err(error @ (QmpError::Timeout { .. } | QmpError::Closed)) => {
                Err(Handshake::NotNegotiated(error))
            }
            Err(error) if negotiation_not_ready(&error) => Err(Handshake::NotNegotiated(error)),
            Err(error) => Err(Handshake::Failed(error)),
            Ok(_) => Ok(qmp),
        }
    }

    /// Whether out-of-band execution was enabled (QEMU offers it on socket monitors).
    #[cfg(test)]
    pub(crate) fn out_of_band(&self) -> bool {
        self.out_of_band
    }

    /// Runs a command and returns its `return` value; `args` `Null` sends no arguments.
    /// Events that arrive meanwhile are queued for [`Qmp::next_event`].
    pub(crate) async fn execute(&mut self, command: &str, args: Value) -> Result<Value, QmpError> {
        self.command(command, args, self.patience).await
    }

    /// Whether a command has gone unanswered within its patience: QEMU may be hung, and
    /// a stop asks it nothing more that could wait as long.
    pub(crate) fn went_silent(&self) -> bool {
        self.silent
    }

    /// How long the next commands may take to be answered: `None` is the default, long
    /// enough for any command under load; a caller that can start over elsewhere (a new
    /// storage daemon) waits less before it does.
    pub(crate) fn set_patience(&mut self, patience: Option<Duration>) {
        self.patience = patience.unwrap_or(COMMAND);
    }

    /// Sends `commands` (at most [`MAX_PIPELINED`]) one after the other without waiting for
    /// each reply, then returns each one's result: one round trip instead of one each. QEMU
    /// runs them in order; a command after one that failed still runs (and mostly fails on
    /// what the failed one did not make).
    pub(crate) async fn pipeline(
        &mut self,
        commands: Vec<(&str, Value)>,
    ) -> Result<Vec<Result<Value, QmpError>>, QmpError> {
        assert!(commands.len() <= MAX_PIPELINED, "at most {MAX_PIPELINED} commands at once");
        let mut sent = Vec::with_capacity(commands.len());
        for (command, args) in commands {
            sent.push((self.send(command, args).await?, command));
        }
        let mut replies = Vec::with_capacity(sent.len());
        for (id, command) in sent {
            replies.push(self.answer(&id, command, self.patience).await);
        }
        Ok(replies)
    }

    async fn command(
        &mut self,
        command: &str,
        args: Value,
        patience: Duration,
    ) -> Result<Value, QmpError> {
        let id = self.send(command, args).await?;
        self.answer(&id, command, patience).await
    }

    /// Sends a command; returns its id.
    async fn send(&mut self, command: &str, args: Value) -> Result<String, QmpError> {
        let id = format!("sluice-{}", self.next_id);
        self.next_id += 1;
        let mut request = json!({ "execute": command, "id": id });
        if !args.is_null() {
            request["arguments"] = args;
        }
        let line = request.to_string();
        // QEMU reads a monitor's input a byte per main-loop turn: long commands cost.
        tracing::trace!(command, bytes = line.len(), "qmp command sent");
        self.writer.send(line).await.map_err(codec_error)?;
        Ok(id)
    }

    /// Waits for the reply to command `id`.
    async fn answer(
        &mut self,
        id: &str,
        command: &str,
        patience: Duration,
    ) -> Result<Value, QmpError> {
        let began = std::time::Instant::now();
        let reply =
            tokio::time::timeout(patience, self.reply(id, command)).await.map_err(|_| {
                self.silent = true;
                QmpError::Timeout { command: command.to_owned(), patience }
            })?;
        let ms = format!("{:.2}", began.elapsed().as_secs_f64() * 1e3);
        tracing::trace!(command, ms, ok = reply.is_ok(), "qmp command answered");
        reply
    }

    /// The next event: a queued one, or the next to arrive. Cancel-safe.
    pub(crate) async fn next_event(&mut self) -> Result<Event, QmpError> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Ok(event);
            }
            // A reply nobody waits for (its command's future was dropped) is discarded.
            if let Message::Event(event) = self.read().await? {
                return Ok(event);
            }
        }
    }

    async fn reply(&mut self, id: &str, command: &str) -> Result<Value, QmpError> {
        loop {
            match self.read().await? {
                Message::Event(event) => self.events.push_back(event),
                Message::Return { id: got, value } if got == id => return Ok(value),
                Message::Error { id: got, error } if got == id => {
                    return Err(QmpError::Command {
                        command: command.to_owned(),
                        class: error.class,
                        desc: error.desc,
                    });
                }
                // The reply to an abandoned command, or a stray greeting.
                _ => {}
            }
        }
    }

    async fn read(&mut self) -> Result<Message, QmpError> {
        let line = self.lines.next().await.ok_or(QmpError::Closed)?.map_err(codec_error)?;
        serde_json::from_str(&line)
            .map_err(|e| QmpError::Protocol(format!("unexpected message {line:?}: {e}")))
    }
}

fn codec_error(error: LinesCodecError) -> QmpError {
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset};
    match error {
        // A reset is the peer closing too: a storage daemon still starting resets a connection
        // before its greeting, which `connect` then takes for "not there yet".
        LinesCodecError::Io(e) if matches!(e.kind(), BrokenPipe | ConnectionReset) => {
            QmpError::Closed
        }
        other => QmpError::Protocol(other.to_string()),
    }
}

impl QmpError {
    /// Whether QEMU refused the command with this error class.
    pub(crate) fn is_class(&self, wanted: &str) -> bool {
        matches!(self, Self::Command { class, .. } if class == wanted)
    }

    /// Whether the monitor failed rather than QEMU refusing the command: no answer, the
    /// connection closed or reset, or lines that are not QMP.
    pub(crate) fn is_monitor_failure(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::Closed | Self::Protocol(_))
    }
}

#[cfg(test)]
mod tests;
