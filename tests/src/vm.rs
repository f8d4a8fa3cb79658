//! Running VMs for live-backup scenarios: a real `qemu-system-x86_64` without a guest OS
//! (TCG, no display; its vCPU runs the firmware), one virtio disk per qcow2 (or raw) image, a QMP
//! socket for Sluice and one for the test. The test's socket drives guest writes with
//! `qemu-io` through the human monitor, exactly as the guest's own I/O reaches the disk, and
//! collects the VM's events (a `STOP` would mean the VM was paused).

use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use serde_json::{Value, json};

use crate::{PATIENCE, wait_for, watchdog::Watchdog};

/// A running VM.
pub struct Vm {
    child: Child,
    _watchdog: Watchdog,
    sluice_socket: PathBuf,
    control: Control,
    disks: Vec<PathBuf>,
    dir: PathBuf,
    name: String,
    format: &'static str,
}

impl Vm {
    /// Starts a VM named `name` (its sockets and log go into `dir`) on `disks`, and waits
    /// until it answers on its control socket.
    pub async fn start(dir: &Path, name: &str, disks: &[PathBuf]) -> Vm {
        Vm::start_as(dir, name, disks, "qcow2").await
    }

    /// Starts a VM as [`Vm::start`] whose disks are images of `format` (`qcow2`, `raw`).
    pub async fn start_as(dir: &Path, name: &str, disks: &[PathBuf], format: &'static str) -> Vm {
        let sluice_socket = dir.join(format!("{name}.qmp"));
        let control_socket = dir.join(format!("{name}.ctl"));
        let log = File::create(dir.join(format!("{name}.log"))).expect("vm log");
        let mut command = Command::new("qemu-system-x86_64");
        command.args(["-machine", "q35", "-accel", "tcg", "-m", "64", "-nographic", "-nodefaults"]);
        // QEMU waits for the control client before it sets its monitors up: a client that
        // connects while they are being set up can crash QEMU (as the storage daemon showed).
        for (socket, wait) in [(&sluice_socket, "off"), (&control_socket, "on")] {
            command.arg("-qmp").arg(format!("unix:{},server=on,wait={wait}", socket.display()));
        }
        for (i, disk) in disks.iter().enumerate() {
            let file = format!("driver=file,filename={},node-name=vd{i}-file", disk.display());
            command.args(["-blockdev", &file]);
            command.args([
                "-blockdev",
                &format!("driver={format},file=vd{i}-file,node-name=vd{i}-fmt"),
            ]);
            command.args(["-device", &format!("virtio-blk-pci,drive=vd{i}-fmt,id=vd{i}")]);
        }
        let log_err = log.try_clone().expect("vm log");
        let child =
            command.stdin(Stdio::null()).stdout(log).stderr(log_err).spawn().unwrap_or_else(|e| {
                panic!("cannot run qemu-system-x86_64 (bash .ci/install): {e}")
            });
        let watchdog = Watchdog::watch(child.id(), None);
        let control = wait_for(
            || {
                let connected = Control::connect(&control_socket);
                async move { connected }
            },
            PATIENCE,
            "the VM's control socket",
        )
        .await;
        let (dir, name) = (dir.to_path_buf(), name.to_owned());
        let disks = disks.to_vec();
        Vm { child, _watchdog: watchdog, sluice_socket, control, disks, dir, name, format }
    }

    /// The QMP socket Sluice may use (`VmTarget.qmp_socket`).
    pub fn sluice_socket(&self) -> String {
        self.sluice_socket.display().to_string()
    }

    /// The VM's disk images, in device order.
    pub fn disks(&self) -> &[PathBuf] {
        &self.disks
    }

    /// Writes `len` bytes of `pattern` at `offset` of disk `index`, as the guest would.
    pub fn write(&mut self, index: usize, pattern: u8, offset: u64, len: u64) {
        self.qemu_io(index, &format!("write -P 0x{pattern:02x} {offset} {len}"));
    }

    /// Runs a `qemu-io` command on disk `index` through the guest device's block backend.
    pub fn qemu_io(&mut self, index: usize, command: &str) {
        let line = format!("qemu-io -d vd{index}/virtio-backend \"{command}\"");
        let out = self.control.execute("human-monitor-command", json!({ "command-line": line }));
        let text = out.as_str().unwrap_or_default().trim();
        assert!(text.is_empty(), "qemu-io {command:?} on vd{index}: {text}");
    }

    /// A standalone copy of disk `index` as it is now (flushed first), written to `out`:
    /// the reference a restore must equal.
    pub fn copy_disk(&mut self, index: usize, out: &Path) {
        self.qemu_io(index, "flush");
        let disk = self.disks[index].display().to_string();
        let out = out.display().to_string();
        crate::disk::run_tool("qemu-img", &["convert", "-U", "-O", "qcow2", &disk, &out]);
    }

    /// The dirty bitmaps of disk `index`, as QEMU reports them.
    pub fn bitmaps(&mut self, index: usize) -> Vec<Value> {
        let node = format!("vd{index}-fmt");
        let nodes = self.control.execute("query-named-block-nodes", json!({ "flat": true }));
        let found =
            nodes.as_array().into_iter().flatten().find(|n| n["node-name"] == node.as_str());
        found.and_then(|n| n["dirty-bitmaps"].as_array().cloned()).unwrap_or_default()
    }

    /// Removes a dirty bitmap of disk `index`, as an operator might.
    pub fn remove_bitmap(&mut self, index: usize, name: &str) {
        let args = json!({ "node": format!("vd{index}-fmt"), "name": name });
        self.control.execute("block-dirty-bitmap-remove", args);
    }

    /// Takes an external snapshot of disk `index` into a new overlay file `overlay`, as
    /// `virsh snapshot-create-as --disk-only` does: the VM writes there from now on.
    pub fn external_snapshot(&mut self, index: usize, overlay: &Path) {
        let args = json!({
            "node-name": format!("vd{index}-fmt"), "snapshot-node-name": format!("vd{index}-ovl"),
            "snapshot-file": overlay.display().to_string(), "format": "qcow2",
        });
        self.control.execute("blockdev-snapshot-sync", args);
    }

    /// `query-status`'s `status` (`running`, `paused`, ...).
    pub fn status(&mut self) -> String {
        let status = self.control.execute("query-status", Value::Null);
        status["status"].as_str().unwrap_or_default().to_owned()
    }

    /// The events the VM sent so far that pause it (`STOP`): none if it never paused.
    pub fn pauses(&mut self) -> Vec<String> {
        // A command reads every event sent before its reply.
        self.status();
        self.control.events.iter().filter(|e| e.as_str() == "STOP").cloned().collect()
    }

    /// Stops QEMU, cleanly (`quit`: persistent bitmaps are saved) or with SIGKILL (nothing
    /// is saved), and starts it again on the same disks and sockets.
    pub async fn restart(&mut self, clean: bool) {
        if clean {
            let _ = self.control.send("quit", Value::Null);
        } else {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        *self = Vm::start_as(&self.dir, &self.name, &self.disks, self.format).await;
    }

    /// Shuts QEMU down cleanly (persistent bitmaps are saved) and waits for it.
    pub fn quit(mut self) {
        let _ = self.control.send("quit", Value::Null);
        let _ = self.child.wait();
    }

    /// Freezes QEMU (SIGSTOP), as a hung hypervisor: it answers nothing until thawed.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen QEMU go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args([signal, &pid]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill {signal} {pid}");
    }

    /// Kills QEMU with SIGKILL (nothing is saved) and waits for it.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test's QMP connection, blocking: one command at a time, events remembered by name.
struct Control {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    events: Vec<String>,
    next_id: u64,
}

impl Control {
    fn connect(path: &Path) -> Result<Control, String> {
        let stream = UnixStream::connect(path).map_err(|e| e.to_string())?;
        let reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
        let mut control = Control { stream, reader, events: Vec::new(), next_id: 1 };
        control.read().map_err(|e| format!("greeting: {e}"))?;
        control.send("qmp_capabilities", Value::Null)?;
        Ok(control)
    }

    fn execute(&mut self, command: &str, args: Value) -> Value {
        self.send(command, args).unwrap_or_else(|e| panic!("QMP {command}: {e}"))
    }

    fn send(&mut self, command: &str, args: Value) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({ "execute": command, "id": id });
        if !args.is_null() {
            request["arguments"] = args;
        }
        writeln!(self.stream, "{request}").map_err(|e| e.to_string())?;
        loop {
            let message = self.read()?;
            if let Some(event) = message["event"].as_str() {
                self.events.push(event.to_owned());
            } else if message["id"] == id {
                if let Some(error) = message.get("error") {
                    return Err(error.to_string());
                }
                return Ok(message["return"].clone());
            }
        }
    }

    fn read(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        let read = self.reader.read_line(&mut line).map_err(|e| e.to_string())?;
        if read == 0 {
            return Err("the VM closed its QMP socket".to_owned());
        }
        serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))
    }
}
