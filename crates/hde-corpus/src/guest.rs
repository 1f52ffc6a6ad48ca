//! A real, running guest for tests and benchmarks that migrate a VM: the host's Linux kernel
//! with an initramfs built here (busybox and a workload script), run by QEMU, driven over
//! QMP.
//!
//! Nothing here is needed to build HDE; a test that cannot find QEMU, a kernel or a static
//! busybox says so ([`Host::find`]) and skips.

use std::io::{self, BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The guest's init: mounts what busybox needs, then writes memory and prints a heartbeat
/// (`HB n`) on the serial console twice a second, for ever.
pub const BUSYBOX_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t devtmpfs dev /dev; mount -t tmpfs tmp /tmp
echo GUEST-UP
i=0
while :; do
  dd if=/dev/urandom of=/tmp/f$((i % 8)) bs=64k count=8 2>/dev/null
  echo "HB $i"
  i=$((i+1)); sleep 0.5
done
"#;

/// What a host needs to run a guest.
#[derive(Debug, Clone)]
pub struct Host {
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// A Linux kernel image (`/boot/vmlinuz-*`).
    pub kernel: PathBuf,
    /// A statically linked busybox.
    pub busybox: PathBuf,
}

impl Host {
    /// Finds QEMU, a kernel and a static busybox, or says what is missing.
    pub fn find() -> Result<Host, String> {
        let qemu = Command::new("qemu-system-x86_64")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()
            .filter(|s| s.success())
            .map(|_| PathBuf::from("qemu-system-x86_64"))
            .ok_or("qemu-system-x86_64 does not run (apt-get install qemu-system-x86)")?;
        let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
            .map_err(|e| format!("/boot: {e}"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
            .filter(|p| std::fs::File::open(p).is_ok())
            .collect();
        kernels.sort();
        let kernel = kernels.pop().ok_or("no readable kernel in /boot (apt-get install linux-image-amd64)")?;
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .iter()
            .map(PathBuf::from)
            .find(|p| std::fs::read(p).is_ok_and(|b| is_static_elf(&b)))
            .ok_or("no statically linked busybox (apt-get install busybox-static)")?;
        Ok(Host { qemu, kernel, busybox })
    }

    /// An initramfs (newc cpio, uncompressed) of busybox, `init` as `/init`, and `files`
    /// (path without the leading `/`, content, mode bits).
    pub fn initramfs(&self, init: &str, files: &[(&str, &[u8], u32)]) -> io::Result<Vec<u8>> {
        let busybox = std::fs::read(&self.busybox)?;
        let mut c = Cpio::default();
        for dir in ["bin", "dev", "proc", "sys", "tmp", "root", "etc"] {
            c.entry(dir, 0o040_755, &[], 0);
        }
        c.entry("dev/console", 0o020_600, &[], (5 << 8) | 1);
        c.entry("bin/busybox", 0o100_755, &busybox, 0);
        c.entry("init", 0o100_755, init.as_bytes(), 0);
        for &(path, content, mode) in files {
            c.entry(path, 0o100_000 | mode, content, 0);
        }
        Ok(c.finish())
    }
}

/// A 64-bit little-endian ELF executable without a program interpreter (`PT_INTERP`): it
/// runs in a guest that has no shared libraries.
fn is_static_elf(b: &[u8]) -> bool {
    let u16_at = |at: usize| b.get(at..at + 2).map(|s| u16::from_le_bytes([s[0], s[1]]) as usize);
    let u64_at = |at: usize| {
        b.get(at..at + 8).and_then(|s| usize::try_from(u64::from_le_bytes(s.try_into().unwrap_or([0; 8]))).ok())
    };
    if !b.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(size), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    (0..count).all(|i| {
        let at = phoff + i * size;
        b.get(at..at + 4).is_some_and(|t| t != [3, 0, 0, 0])
    })
}

#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    /// One newc entry; `rdev` is major << 8 | minor for device nodes.
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: u32) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            1_700_000_000,
            data.len() as u32,
            0,
            0,
            rdev >> 8,
            rdev & 0xff,
            name.len() as u32 + 1,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], 0);
        self.out
    }
}

/// How to start a guest.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// Guest RAM in MiB.
    pub ram_mb: u64,
    /// The initramfs file.
    pub initrd: PathBuf,
    /// A directory for the serial log and the QMP socket.
    pub dir: PathBuf,
    /// Its name in that directory (`src`, `dst`).
    pub name: String,
    /// More QEMU arguments (`-S`, `-incoming ...`).
    pub extra: Vec<String>,
    /// A command QEMU runs under (`ip netns exec NS`), or none.
    pub wrapper: Vec<String>,
    /// The kernel command line's extra words (`wl.seed=3`).
    pub append: String,
}

/// A running QEMU, killed when dropped.
#[derive(Debug)]
pub struct Vm {
    child: Child,
    qmp: Qmp,
    /// The guest's serial console, as a file.
    pub serial: PathBuf,
}

impl Vm {
    /// Starts QEMU (TCG, one CPU, no devices but a serial console) and connects to its QMP.
    pub fn start(host: &Host, o: &VmOptions) -> io::Result<Vm> {
        let serial = o.dir.join(format!("{}.serial", o.name));
        let sock = o.dir.join(format!("{}.qmp", o.name));
        std::fs::write(&serial, b"")?;
        let _ = std::fs::remove_file(&sock);
        let mut cmd = match o.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&host.qemu);
                c
            }
            None => Command::new(&host.qemu),
        };
        cmd.args(["-accel", "tcg", "-m", &format!("{}M", o.ram_mb), "-nodefaults", "-no-user-config"])
            .args(["-display", "none", "-vga", "none", "-nic", "none"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .arg("-kernel")
            .arg(&host.kernel)
            .arg("-initrd")
            .arg(&o.initrd)
            .arg("-append")
            .arg(format!("console=ttyS0 rdinit=/init quiet panic=-1 {}", o.append))
            .arg("-no-reboot")
            .args(&o.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(o.dir.join(format!("{}.stderr", o.name)))?);
        let mut child = cmd.spawn()?;
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(&sock) {
                Ok(s) => break s,
                Err(e) => {
                    if child.try_wait()?.is_some() || start.elapsed() > Duration::from_secs(30) {
                        let _ = child.kill();
                        return Err(io::Error::other(format!("QEMU's QMP socket did not open: {e}")));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        let qmp = Qmp::new(stream)?;
        Ok(Vm { child, qmp, serial })
    }

    /// Runs a QMP command (`arguments`: a JSON object, or `null`) and returns its `return`
    /// value.
    pub fn qmp(&mut self, command: &str, arguments: serde_json::Value) -> io::Result<serde_json::Value> {
        self.qmp.execute(command, arguments)
    }

    /// The QMP events received so far (`STOP`, `RESUME`, `MIGRATION`...), each with its
    /// `timestamp`.
    pub fn events(&self) -> &[serde_json::Value] {
        &self.qmp.events
    }

    /// The serial console so far.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// Waits until the console shows `text`.
    pub fn wait_console(&mut self, text: &str, timeout: Duration) -> io::Result<()> {
        let start = Instant::now();
        while !self.console().contains(text) {
            if self.child.try_wait()?.is_some() {
                return Err(io::Error::other(format!("QEMU exited before its console showed {text:?}")));
            }
            if start.elapsed() > timeout {
                return Err(io::Error::other(format!("the console did not show {text:?} in {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Stops QEMU (`quit`, then a kill).
    pub fn quit(mut self) {
        let _ = self.qmp.execute("quit", serde_json::Value::Null);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A QMP connection (line-delimited JSON).
#[derive(Debug)]
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: Vec<serde_json::Value>,
}

impl Qmp {
    fn new(stream: UnixStream) -> io::Result<Qmp> {
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        let writer = stream.try_clone()?;
        let mut q = Qmp { reader: BufReader::new(stream), writer, events: Vec::new() };
        let mut greeting = String::new();
        q.reader.read_line(&mut greeting)?;
        q.execute("qmp_capabilities", serde_json::Value::Null)?;
        Ok(q)
    }

    fn execute(&mut self, command: &str, arguments: serde_json::Value) -> io::Result<serde_json::Value> {
        let mut request = serde_json::json!({ "execute": command });
        if !arguments.is_null() {
            request["arguments"] = arguments;
        }
        let mut line = request.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes())?;
        loop {
            let mut reply = String::new();
            if self.reader.read_line(&mut reply)? == 0 {
                return Err(io::Error::other(format!("QMP closed during {command}")));
            }
            let reply: serde_json::Value = serde_json::from_str(&reply).map_err(io::Error::other)?;
            // Events come between; the reply has "return" or "error".
            if let Some(r) = reply.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = reply.get("error") {
                return Err(io::Error::other(format!("QMP {command}: {e}")));
            }
            if reply.get("event").is_some() {
                self.events.push(reply);
            }
        }
    }
}
