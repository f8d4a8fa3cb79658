//! Hosts of their own for a scenario: one network namespace per host, each with an address
//! on a private bridge, as a multi-host deployment would have them.
//!
//! The bridge lives in the harness's namespace with address `10.77.N.1/24` (`N` random per
//! network, so two runs on one machine do not collide), and each host gets `10.77.N.<10+i>` on a
//! veth pair whose other end is on the bridge. The harness reaches every host through the
//! bridge. [`Network::link_down`] takes a host's interface down inside its namespace: the
//! host is partitioned from everyone until [`Network::link_up`].
//!
//! Needs root and `ip` (iproute2). Namespaces and the bridge are removed on drop, and by a
//! watchdog shell if the harness process dies first.

use std::{
    ffi::OsString,
    io::Write,
    process::{Child, Command, Stdio},
};

/// One host: a namespace with one address.
#[derive(Debug, Clone)]
pub struct Host {
    /// Name given by the scenario (`etcd1`, `c1`, `a1`, ...).
    pub name: String,
    /// Name of its network namespace.
    pub namespace: String,
    /// Its address on the bridge.
    pub address: String,
    /// Its interface, inside the namespace.
    pub interface: String,
}

/// A bridge and one namespace per host, removed on drop.
pub struct Network {
    bridge: String,
    hosts: Vec<Host>,
    watchdog: Option<Child>,
}

impl Network {
    /// Creates one host per name. Fails naming the `ip` command that failed (not root, no
    /// iproute2, no namespace support).
    pub fn create(names: &[&str]) -> Result<Network, String> {
        let id = format!("{:04x}", rand::random::<u16>());
        let subnet = 1 + rand::random::<u8>() % 250;
        let bridge = format!("slb{id}");
        let hosts: Vec<Host> = names
            .iter()
            .enumerate()
            .map(|(i, name)| Host {
                name: name.to_string(),
                namespace: format!("sluice-{id}-{name}"),
                address: format!("10.77.{subnet}.{}", 10 + i),
                interface: format!("slp{id}{i}"),
            })
            .collect();
        let mut network = Network { bridge, hosts, watchdog: None };
        network.watchdog = Some(network.arm_watchdog()?);
        network.build(subnet, &id)?;
        Ok(network)
    }

    fn build(&self, subnet: u8, id: &str) -> Result<(), String> {
        let bridge = self.bridge.as_str();
        ip(&["link", "add", bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("10.77.{subnet}.1/24"), "dev", bridge])?;
        ip(&["link", "set", bridge, "up"])?;
        for (i, host) in self.hosts.iter().enumerate() {
            let outside = format!("slh{id}{i}");
            let ns = host.namespace.as_str();
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["link", "add", &outside, "type", "veth", "peer", "name", &host.interface])?;
            ip(&["link", "set", &host.interface, "netns", ns])?;
            ip(&["link", "set", &outside, "master", bridge, "up"])?;
            let address = format!("{}/24", host.address);
            ip(&["-n", ns, "addr", "add", &address, "dev", &host.interface])?;
            ip(&["-n", ns, "link", "set", &host.interface, "up"])?;
        }
        Ok(())
    }

    /// A shell that removes the namespaces and the bridge when the harness process dies (its
    /// stdin, a pipe only this process holds, then closes).
    fn arm_watchdog(&self) -> Result<Child, String> {
        let mut script = String::from("read _unused\n");
        for host in &self.hosts {
            script.push_str(&format!("ip netns del {} 2>/dev/null\n", host.namespace));
        }
        script.push_str(&format!("ip link del {} 2>/dev/null\n", self.bridge));
        Command::new("sh")
            .args(["-c", &script, "sluice-test-watchdog"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the network watchdog shell: {e}"))
    }

    /// The host named `name`.
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name} in the network"))
    }

    /// The command that runs a program on host `name`: `ip netns exec NAMESPACE`.
    pub fn wrapper(&self, name: &str) -> Vec<OsString> {
        let namespace = self.host(name).namespace.clone();
        ["ip", "netns", "exec"].into_iter().map(OsString::from).chain([namespace.into()]).collect()
    }

    /// Takes host `name`'s link down: nothing reaches it and it reaches nothing.
    pub fn link_down(&self, name: &str) -> Result<(), String> {
        let host = self.host(name);
        ip(&["-n", &host.namespace, "link", "set", &host.interface, "down"])
    }

    /// Brings host `name`'s link up again (with its address and route).
    pub fn link_up(&self, name: &str) -> Result<(), String> {
        let host = self.host(name);
        ip(&["-n", &host.namespace, "link", "set", &host.interface, "up"])
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for host in &self.hosts {
            let _ = ip(&["netns", "del", &host.namespace]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
        if let Some(mut shell) = self.watchdog.take() {
            // Disarmed: everything is removed already.
            let _ = shell.stdin.take().map(|mut stdin| stdin.write_all(b""));
            let _ = shell.kill();
            let _ = shell.wait();
        }
    }
}

/// Runs `ip ARGS`, failing with its error output.
fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip` (apt-get install iproute2): {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "`ip {}` failed ({}): {} (network namespaces need root)",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    ))
}
