//! Free loopback ports for processes that cannot bind port 0 themselves (etcd).

use std::net::TcpListener;

use rand::Rng;

/// Ports below this are never handed out as ephemeral source ports by default Linux settings.
const FALLBACK_EPHEMERAL_LOW: u16 = 32768;
const LOWEST: u16 = 10_000;

/// Returns a loopback port that is free now.
///
/// The port is picked below the kernel's ephemeral range, so that the outgoing connections
/// of other processes (which get ephemeral source ports) cannot take it while its owner is
/// down: etcd restarts on the same ports. Falls back to a kernel-chosen port.
pub(crate) fn free_port() -> u16 {
    let high = ephemeral_low().max(LOWEST + 1);
    let mut rng = rand::rng();
    for _ in 0..200 {
        let port = rng.random_range(LOWEST..high);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|e| panic!("cannot find a free loopback port: {e}"))
}

fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next().and_then(|low| low.parse().ok()))
        .unwrap_or(FALLBACK_EPHEMERAL_LOW)
}
