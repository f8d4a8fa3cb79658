//! Free loopback ports for processes that cannot bind port 0 themselves (etcd).

use std::{
    fs::{File, TryLockError},
    net::TcpListener,
    path::PathBuf,
    sync::Mutex,
};

use rand::Rng;

/// Ports below this are never handed out as ephemeral source ports by default Linux settings.
const FALLBACK_EPHEMERAL_LOW: u16 = 32768;
const LOWEST: u16 = 10_000;

/// The lock files of the ports this process reserved, held until it exits.
static RESERVED: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// Returns a loopback port that is free now and that no other test process takes.
///
/// The port is picked below the kernel's ephemeral range, so that the outgoing connections
/// of other processes (which get ephemeral source ports) cannot take it while its owner is
/// down: etcd restarts on the same ports. Other test processes pick from the same range, so
/// each port is also reserved with a lock on a file named after it, which the kernel
/// releases when this process exits. Falls back to a kernel-chosen port.
pub(crate) fn free_port() -> u16 {
    let high = ephemeral_low().max(LOWEST + 1);
    let mut rng = rand::rng();
    for _ in 0..200 {
        let port = rng.random_range(LOWEST..high);
        if reserve(port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|e| panic!("cannot find a free loopback port: {e}"))
}

/// Takes `port` for this process unless another process (or this one) has it.
fn reserve(port: u16) -> bool {
    let mut reserved = RESERVED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = reservations();
    if std::fs::create_dir_all(&dir).is_err() {
        return true; // no place to reserve: the bind check alone decides
    }
    let Ok(file) =
        File::options().create(true).truncate(false).write(true).open(dir.join(port.to_string()))
    else {
        return true;
    };
    match file.try_lock() {
        Ok(()) => {
            reserved.push(file);
            true
        }
        // Held by another process, or by this one through another open file.
        Err(TryLockError::WouldBlock) => false,
        Err(TryLockError::Error(_)) => true,
    }
}

/// Where the port locks live: one folder for every test process of this user.
fn reservations() -> PathBuf {
    std::env::temp_dir().join(format!("sluice-test-ports-{}", uid()))
}

fn uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next().and_then(|low| low.parse().ok()))
        .unwrap_or(FALLBACK_EPHEMERAL_LOW)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserved_port_is_not_handed_out_again() {
        let port = free_port();
        assert!(!reserve(port), "this process holds port {port} already");
    }
}
