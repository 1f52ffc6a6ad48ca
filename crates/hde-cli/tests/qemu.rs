//! A running VM live-migrates from one QEMU to another with `hde qemu-send` and
//! `hde qemu-recv` as QEMU's `exec:` channels: the destination's memory equals the source's
//! final memory, and the guest runs on there.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // reason: a test fails by panicking.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hde_corpus::guest::{Host, Vm, VmOptions, BUSYBOX_INIT};
use serde_json::json;

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

#[test]
fn a_running_vm_migrates_through_hde_and_runs_on() {
    let host = match Host::find() {
        Ok(host) => host,
        Err(why) => {
            eprintln!("skipped: cannot run a guest here: {why}");
            return;
        }
    };
    let tmp = std::env::temp_dir().join(format!("hde-qemu-test-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let initrd = tmp.join("initrd.cpio");
    std::fs::write(&initrd, host.initramfs(BUSYBOX_INIT, &[]).unwrap()).unwrap();
    let (a, b) = (tmp.join("a"), tmp.join("b"));
    std::fs::write(tmp.join("peers-a"), keygen(&b)).unwrap();
    std::fs::write(tmp.join("peers-b"), keygen(&a)).unwrap();
    let port = free_port();
    let log = |name: &str| tmp.join(name).display().to_string();

    // The destination waits for the stream, and stays paused after it (-S) so that its memory
    // can be compared before the guest runs on.
    let recv = format!(
        "exec:{} qemu-recv --listen 127.0.0.1:{port} --identity {} --peers {} --wait 300 2>{}",
        hde(),
        b.display(),
        tmp.join("peers-b").display(),
        log("recv.err")
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
    let mut dst = vm("dst", vec!["-S".into(), "-incoming".into(), recv]);
    let mut src = vm("src", vec![]);
    src.wait_console("HB 3", Duration::from_secs(300)).unwrap();

    src.qmp("migrate-set-parameters", json!({ "max-bandwidth": 1u64 << 30, "downtime-limit": 300 })).unwrap();
    let send = format!(
        "exec:{} qemu-send --to 127.0.0.1:{port} --identity {} --peers {} --key guest 2>{}",
        hde(),
        a.display(),
        tmp.join("peers-a").display(),
        log("send.err")
    );
    src.qmp("migrate", json!({ "uri": send })).unwrap();
    let start = Instant::now();
    let info = loop {
        let info = src.qmp("query-migrate", json!(null)).unwrap();
        let s = info["status"].as_str().unwrap_or_default().to_owned();
        if s == "completed" || s == "failed" {
            break info;
        }
        assert!(start.elapsed() < Duration::from_secs(300), "migration still {s} after 300 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    let logs = || {
        format!(
            "send: {}\nrecv: {}",
            std::fs::read_to_string(tmp.join("send.err")).unwrap_or_default(),
            std::fs::read_to_string(tmp.join("recv.err")).unwrap_or_default()
        )
    };
    assert_eq!(info["status"], "completed", "{info}\n{}", logs());

    // The destination has loaded the stream once it leaves "inmigrate".
    let start = Instant::now();
    while status(&mut dst) == "inmigrate" {
        assert!(start.elapsed() < Duration::from_secs(120), "the destination never finished loading\n{}", logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status(&mut dst), "paused", "{}", logs());

    let (src_mem, dst_mem) = (tmp.join("src.mem"), tmp.join("dst.mem"));
    let bytes = RAM_MB << 20;
    src.qmp("pmemsave", json!({ "val": 0, "size": bytes, "filename": src_mem.display().to_string() })).unwrap();
    dst.qmp("pmemsave", json!({ "val": 0, "size": bytes, "filename": dst_mem.display().to_string() })).unwrap();
    let (s, d) = (std::fs::read(&src_mem).unwrap(), std::fs::read(&dst_mem).unwrap());
    assert_eq!(s.len() as u64, bytes);
    let differ = s.chunks(4096).zip(d.chunks(4096)).filter(|(x, y)| x != y).count();
    assert!(s == d, "{differ} pages of guest memory differ after the migration\n{}", logs());

    // The guest runs on at the destination: its workload keeps printing.
    let before = dst.console().matches("HB ").count();
    dst.qmp("cont", json!(null)).unwrap();
    let start = Instant::now();
    while dst.console().matches("HB ").count() < before + 3 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the guest printed no heartbeat at the destination: {:?}",
            dst.console()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("{}", logs());
    src.quit();
    dst.quit();
    let _ = std::fs::remove_dir_all(&tmp);
}
