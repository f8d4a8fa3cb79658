//! A TCP proxy between a process and a server, to cut, stall or delay their link.
//!
//! The proxy listens on `127.0.0.1:0` and forwards every connection to its target. It runs on
//! a runtime of its own (one worker thread), so it keeps forwarding while the test's runtime
//! is busy or blocked, and it dies with the [`Proxy`] value.
//!
//! - [`Proxy::cut`] closes every live connection and closes each new one at once, until
//!   [`Proxy::restore`]: the peer sees its connection reset and every reconnect fail.
//! - [`Proxy::black_hole`] stops forwarding: live connections stall (their bytes are held, not
//!   lost) and new ones are accepted but never answered, until [`Proxy::restore`], which
//!   forwards what was held.
//! - [`Proxy::delay`] holds every chunk of bytes, in both directions, for a while before
//!   forwarding it.
//!
//! Long-lived connections such as an etcd client's gRPC channel are each tracked, so a cut
//! drops them instead of waiting for them to end.

use std::{
    collections::HashMap,
    net::{SocketAddr, TcpListener as StdTcpListener, ToSocketAddrs},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    runtime::Runtime,
    sync::watch,
    task::AbortHandle,
};

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forwards.
    Open,
    /// Closes every connection.
    Cut,
    /// Holds every byte and answers nothing.
    BlackHole,
}

/// A running proxy; stopped, with every connection closed, when dropped.
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<Runtime>,
}

struct Shared {
    target: SocketAddr,
    mode: watch::Sender<Mode>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    delay: Duration,
    next_id: u64,
    /// Tasks of the live connections, by connection id.
    live: HashMap<u64, AbortHandle>,
    accepted: u64,
}

impl Proxy {
    /// Starts a proxy to `target`.
    pub fn start(target: SocketAddr) -> Proxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sluice-test-proxy")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot build the proxy's runtime: {e}"));
        let listener = StdTcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("cannot bind the proxy's listener: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("cannot make the proxy's listener non-blocking: {e}"));
        let addr =
            listener.local_addr().unwrap_or_else(|e| panic!("proxy listener has no address: {e}"));
        let shared = Arc::new(Shared {
            target,
            mode: watch::channel(Mode::Open).0,
            state: Mutex::new(State::default()),
        });
        runtime.spawn(accept_loop(listener, shared.clone()));
        Proxy { addr, target, shared, runtime: Some(runtime) }
    }

    /// Starts a proxy to the server of `url` (`http://host:port` or `host:port`).
    pub fn to_url(url: &str) -> Proxy {
        let authority = url.split_once("://").map_or(url, |(_, rest)| rest);
        let authority = authority.split('/').next().unwrap_or(authority);
        let target = authority
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .unwrap_or_else(|| panic!("cannot resolve the proxy target {url:?}"));
        Proxy::start(target)
    }

    /// Address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` of the proxy, to give a client instead of the target's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Address the proxy forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// What the proxy does now.
    pub fn mode(&self) -> Mode {
        *self.shared.mode.borrow()
    }

    /// Closes every live connection and closes each new one at once, until [`Proxy::restore`].
    pub fn cut(&self) {
        let mut state = self.shared.lock();
        self.shared.mode.send_replace(Mode::Cut);
        for (_, task) in state.live.drain() {
            task.abort();
        }
    }

    /// Stops forwarding without closing anything: live connections stall, new ones are
    /// accepted and left unanswered, until [`Proxy::restore`] forwards what was held.
    pub fn black_hole(&self) {
        let _state = self.shared.lock();
        self.shared.mode.send_replace(Mode::BlackHole);
    }

    /// Forwards again after a [`Proxy::cut`] or a [`Proxy::black_hole`].
    pub fn restore(&self) {
        let _state = self.shared.lock();
        self.shared.mode.send_replace(Mode::Open);
    }

    /// Holds each chunk of bytes this long before forwarding it (`Duration::ZERO`: no delay).
    pub fn delay(&self, delay: Duration) {
        self.shared.lock().delay = delay;
    }

    /// Connections open now (forwarded or held).
    pub fn live_connections(&self) -> usize {
        self.shared.lock().live.len()
    }

    /// Connections accepted since the proxy started, also those closed by a cut.
    pub fn accepted(&self) -> u64 {
        self.shared.lock().accepted
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Drops every task, and with them every socket, without blocking.
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("target", &self.target)
            .field("mode", &self.mode())
            .finish()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking connection task cannot leave the table inconsistent: recover it.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn delay(&self) -> Duration {
        self.lock().delay
    }

    fn forget(&self, id: u64) {
        self.lock().live.remove(&id);
    }
}

async fn accept_loop(listener: StdTcpListener, shared: Arc<Shared>) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => panic!("cannot register the proxy's listener: {e}"),
    };
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(_) => {
                // Out of file descriptors or the like: try again soon rather than spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        let mut state = shared.lock();
        state.accepted += 1;
        if *shared.mode.borrow() == Mode::Cut {
            drop(client);
            continue;
        }
        let id = state.next_id;
        state.next_id += 1;
        let task = tokio::spawn(connection(id, client, shared.clone()));
        state.live.insert(id, task.abort_handle());
    }
}

/// Forwards one connection until both directions end (or its task is aborted by a cut).
async fn connection(id: u64, client: TcpStream, shared: Arc<Shared>) {
    // A black-holed connection is not even connected to the target until it is restored.
    if wait_open(&shared).await
        && let Ok(server) = TcpStream::connect(shared.target).await
    {
        let _ = server.set_nodelay(true);
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        tokio::join!(
            pump(client_read, server_write, &shared),
            pump(server_read, client_write, &shared),
        );
    }
    shared.forget(id);
}

/// Waits while the proxy black-holes; `false` once it is cut.
async fn wait_open(shared: &Shared) -> bool {
    let mut mode = shared.mode.subscribe();
    loop {
        match *mode.borrow_and_update() {
            Mode::Open => return true,
            Mode::Cut => return false,
            Mode::BlackHole => {}
        }
        if mode.changed().await.is_err() {
            return false;
        }
    }
}

/// Copies one direction, chunk by chunk, honouring the delay and the mode before each write.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, shared: &Shared) {
    let mut buffer = vec![0_u8; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        let delay = shared.delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if !wait_open(shared).await || to.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// An echo server; returns its address.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the echo server");
        let addr = listener.local_addr().expect("echo server address");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = socket.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(message).await?;
        let mut answer = vec![0; message.len()];
        stream.read_exact(&mut answer).await?;
        Ok(answer)
    }

    #[tokio::test]
    async fn forwards_both_ways() {
        let proxy = Proxy::start(echo_server().await);
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect to the proxy");
        assert_eq!(round_trip(&mut stream, b"hello").await.expect("echo"), b"hello");
        assert_eq!(proxy.accepted(), 1);
        assert_eq!(proxy.live_connections(), 1);
    }

    #[tokio::test]
    async fn cut_closes_live_connections_and_refuses_new_ones_until_restored() {
        let proxy = Proxy::to_url(&format!("http://{}", echo_server().await));
        let mut live = TcpStream::connect(proxy.addr()).await.expect("connect to the proxy");
        round_trip(&mut live, b"before").await.expect("echo before the cut");

        proxy.cut();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), live.read_to_end(&mut rest))
            .await
            .expect("the cut closes the live connection");
        assert!(read.is_err() || rest.is_empty(), "nothing arrives after the cut: {rest:?}");
        let mut new = TcpStream::connect(proxy.addr()).await.expect("the listener stays bound");
        let answer = tokio::time::timeout(Duration::from_secs(10), round_trip(&mut new, b"x"))
            .await
            .expect("a new connection is closed at once during a cut");
        assert!(answer.is_err(), "no echo through a cut proxy: {answer:?}");

        proxy.restore();
        let mut again = TcpStream::connect(proxy.addr()).await.expect("connect after restore");
        assert_eq!(round_trip(&mut again, b"after").await.expect("echo after restore"), b"after");
    }

    #[tokio::test]
    async fn black_hole_holds_bytes_until_restored() {
        let proxy = Proxy::start(echo_server().await);
        let mut live = TcpStream::connect(proxy.addr()).await.expect("connect to the proxy");
        round_trip(&mut live, b"before").await.expect("echo before the black hole");

        proxy.black_hole();
        live.write_all(b"held").await.expect("write into the black hole");
        let mut answer = [0; 4];
        let early =
            tokio::time::timeout(Duration::from_millis(300), live.read_exact(&mut answer)).await;
        assert!(early.is_err(), "nothing comes back through a black hole");

        proxy.restore();
        live.read_exact(&mut answer).await.expect("the held bytes arrive after restore");
        assert_eq!(&answer, b"held");
    }

    #[tokio::test]
    async fn delay_holds_each_chunk() {
        let proxy = Proxy::start(echo_server().await);
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect to the proxy");
        round_trip(&mut stream, b"warm").await.expect("echo");
        proxy.delay(Duration::from_millis(200));
        let started = Instant::now();
        round_trip(&mut stream, b"slow").await.expect("echo with delay");
        // Two delayed hops (there and back): a lower bound only, never an upper one.
        assert!(started.elapsed() >= Duration::from_millis(400), "{:?}", started.elapsed());
    }
}
