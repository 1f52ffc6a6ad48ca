//! A running VM live-migrates from one QEMU to another with `hde qemu-send` and
//! `hde qemu-recv` as QEMU's `exec:` channels: the destination's memory equals the source's
//! final memory, and the guest runs on there. A stream HDE does not read fails the migration
//! cleanly: the VM keeps running on the source.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // reason: a test fails by panicking.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hde_corpus::guest::{Host, Vm, VmOptions, BUSYBOX_INIT};
use serde_json::{json, Value};

const RAM_MB: u64 = 128;

fn hde() -> &'static str {
    env!("CARGO_BIN_EXE_hde")
}

fn keygen(dir: &Path) -> String {
    let out = Command::new(hde()).arg("keygen").arg("--out").arg(dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn status(vm: &mut Vm) -> String {
    vm.qmp("query-status", json!(null)).unwrap()["status"].as_str().unwrap_or_default().to_owned()
}

/// A source running the busybox workload and a destination waiting for its stream through
/// `hde qemu-recv`, paused after it (-S) so that its memory can be compared before the guest
/// runs on.
struct Pair {
    tmp: PathBuf,
    port: u16,
    src: Vm,
    dst: Vm,
}

impl Pair {
    /// `None` (with the reason printed) where no guest can run.
    fn start(name: &str) -> Option<Pair> {
        let host = match Host::find() {
            Ok(host) => host,
            Err(why) => {
                eprintln!("skipped: cannot run a guest here: {why}");
                return None;
            }
        };
        let tmp = std::env::temp_dir().join(format!("hde-qemu-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let initrd = tmp.join("initrd.cpio");
        std::fs::write(&initrd, host.initramfs(BUSYBOX_INIT, &[]).unwrap()).unwrap();
        std::fs::write(tmp.join("peers-a"), keygen(&tmp.join("b"))).unwrap();
        std::fs::write(tmp.join("peers-b"), keygen(&tmp.join("a"))).unwrap();
        let port = free_port();
        let recv = format!(
            "exec:{} qemu-recv --listen 127.0.0.1:{port} --identity {} --peers {} --wait 300 2>{}",
            hde(),
            tmp.join("b").display(),
            tmp.join("peers-b").display(),
            tmp.join("recv.err").display()
        );
        let vm = |name: &str, extra: Vec<String>| {
            let o = VmOptions {
                ram_mb: RAM_MB,
                initrd: initrd.clone(),
                dir: tmp.clone(),
                name: name.into(),
                extra,
                wrapper: Vec::new(),
                append: String::new(),
            };
            Vm::start(&host, &o).unwrap()
        };
        let dst = vm("dst", vec!["-S".into(), "-incoming".into(), recv]);
        let mut src = vm("src", vec![]);
        src.wait_console("HB 3", Duration::from_secs(300)).unwrap();
        src.qmp("migrate-set-parameters", json!({ "max-bandwidth": 1u64 << 30, "downtime-limit": 300 })).unwrap();
        Some(Pair { tmp, port, src, dst })
    }

    /// Migrates through `hde qemu-send`; returns the source's final `query-migrate`.
    fn migrate(&mut self) -> Value {
        let send = format!(
            "exec:{} qemu-send --to 127.0.0.1:{} --identity {} --peers {} --key guest 2>{}",
            hde(),
            self.port,
            self.tmp.join("a").display(),
            self.tmp.join("peers-a").display(),
            self.tmp.join("send.err").display()
        );
        self.src.qmp("migrate", json!({ "uri": send })).unwrap();
        let start = Instant::now();
        loop {
            let info = self.src.qmp("query-migrate", json!(null)).unwrap();
            let s = info["status"].as_str().unwrap_or_default().to_owned();
            if s == "completed" || s == "failed" {
                return info;
            }
            assert!(start.elapsed() < Duration::from_secs(300), "migration still {s} after 300 s\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.tmp.join(f)).unwrap_or_default();
        format!("send: {}\nrecv: {}", read("send.err"), read("recv.err"))
    }

    fn finish(self) {
        self.src.quit();
        self.dst.quit();
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// Waits until `vm` prints `more` heartbeats than it has so far.
fn runs_on(vm: &Vm, more: usize) {
    let before = vm.console().matches("HB ").count();
    let start = Instant::now();
    while vm.console().matches("HB ").count() < before + more {
        assert!(start.elapsed() < Duration::from_secs(60), "the guest printed no heartbeat: {:?}", vm.console());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_running_vm_migrates_through_hde_and_runs_on() {
    let Some(mut p) = Pair::start("ok") else { return };
    let info = p.migrate();
    assert_eq!(info["status"], "completed", "{info}\n{}", p.logs());

    // The destination has loaded the stream once it leaves "inmigrate".
    let start = Instant::now();
    while status(&mut p.dst) == "inmigrate" {
        assert!(start.elapsed() < Duration::from_secs(120), "the destination never finished loading\n{}", p.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status(&mut p.dst), "paused", "{}", p.logs());

    let (src_mem, dst_mem) = (p.tmp.join("src.mem"), p.tmp.join("dst.mem"));
    let bytes = RAM_MB << 20;
    p.src.qmp("pmemsave", json!({ "val": 0, "size": bytes, "filename": src_mem.display().to_string() })).unwrap();
    p.dst.qmp("pmemsave", json!({ "val": 0, "size": bytes, "filename": dst_mem.display().to_string() })).unwrap();
    let (s, d) = (std::fs::read(&src_mem).unwrap(), std::fs::read(&dst_mem).unwrap());
    assert_eq!(s.len() as u64, bytes);
    let differ = s.chunks(4096).zip(d.chunks(4096)).filter(|(x, y)| x != y).count();
    assert!(s == d, "{differ} pages of guest memory differ after the migration\n{}", p.logs());

    // The guest runs on at the destination: its workload keeps printing.
    p.dst.qmp("cont", json!(null)).unwrap();
    runs_on(&p.dst, 3);
    eprintln!("{}", p.logs());
    p.finish();
}

#[test]
fn a_stream_hde_does_not_read_fails_the_migration_and_the_vm_runs_on_at_the_source() {
    let Some(mut p) = Pair::start("refused") else { return };
    // QEMU's own page compression: records HDE does not read (and should not: it compresses).
    p.src
        .qmp("migrate-set-capabilities", json!({ "capabilities": [{ "capability": "compress", "state": true }] }))
        .unwrap();
    let info = p.migrate();
    assert_eq!(info["status"], "failed", "{info}\n{}", p.logs());
    let logs = p.logs();
    assert!(logs.contains("compressed page"), "{logs}");
    assert!(logs.contains("the sender said"), "{logs}");
    assert_eq!(status(&mut p.src), "running", "{logs}");
    runs_on(&p.src, 2);
    p.finish();
}
