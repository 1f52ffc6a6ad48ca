//! `hde keygen`, `hde serve` and `hde send` as separate processes on loopback: rounds moved
//! exact, a receiver killed with SIGKILL and restarted on its state serving deltas again, and
//! a sender whose key the receiver does not accept refused before any frame.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // reason: a test fails by panicking.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use hde_core::corpus::{write_corpus, CorpusConfig};

fn hde(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hde")).args(args).output().expect("run hde")
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hde-cli-net-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Makes a key pair in `dir/name`; returns its public line.
fn keygen(dir: &Path, name: &str) -> String {
    let out = hde(&["keygen", "--out", s(&dir.join(name))]);
    ok(&out, "keygen");
    String::from_utf8(out.stdout).unwrap()
}

/// Starts `hde serve` (it stops by itself after 20 s without a connection); returns the
/// child and the address it listens on.
fn serve(dir: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hde"))
        .args(["serve", "--listen", "127.0.0.1:0", "--max-idle", "20", "--threads", "2"])
        .args(["--identity", s(&dir.join("b")), "--peers", s(&dir.join("peers-of-b"))])
        .args(["--state", s(&dir.join("recv-state")), "--out", s(&dir.join("out"))])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{line:?}")).to_owned();
    (child, addr)
}

fn send(dir: &Path, identity: &str, addr: &str, images: &[&PathBuf]) -> Output {
    let mut args = vec!["send", "--json", "--to", addr, "--key", "vm", "--threads", "2"];
    let (id, peers, state) = (dir.join(identity), dir.join("peers-of-a"), dir.join("send-state"));
    args.extend(["--identity", s(&id), "--peers", s(&peers), "--state", s(&state)]);
    args.extend(images.iter().map(|p| s(p)));
    hde(&args)
}

fn kinds(out: &Output) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["rounds"].as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn rounds_cross_processes_and_a_killed_receiver_serves_deltas_after_restart() {
    let dir = tmp("rounds");
    let files =
        write_corpus(&dir.join("corpus"), &CorpusConfig { size: 4 << 20, rounds: 5, ..CorpusConfig::default() })
            .unwrap();
    let (a, b) = (keygen(&dir, "a"), keygen(&dir, "b"));
    std::fs::write(dir.join("peers-of-b"), &a).unwrap();
    std::fs::write(dir.join("peers-of-a"), &b).unwrap();
    // An existing key is never overwritten.
    assert_eq!(hde(&["keygen", "--out", s(&dir.join("a"))]).status.code(), Some(1));

    let (mut server, addr) = serve(&dir);
    let out = send(&dir, "a", &addr, &[&files[0], &files[1], &files[2]]);
    ok(&out, "send 0-2");
    assert_eq!(kinds(&out), ["full", "delta", "delta"]);
    assert!(std::fs::read(dir.join("out/vm.raw")).unwrap() == std::fs::read(&files[2]).unwrap());

    // SIGKILL the receiver; a new one on the same state serves the next round as a delta.
    server.kill().unwrap();
    server.wait().unwrap();
    let (mut server, addr) = serve(&dir);
    let out = send(&dir, "a", &addr, &[&files[3], &files[4]]);
    ok(&out, "send 3-4");
    assert_eq!(kinds(&out), ["delta", "delta"]);
    assert!(std::fs::read(dir.join("out/vm.raw")).unwrap() == std::fs::read(&files[4]).unwrap());

    // A sender the receiver does not accept: refused in the handshake, exit 1, nothing applied.
    keygen(&dir, "stranger");
    let before = std::fs::read(dir.join("out/vm.raw")).unwrap();
    let out = send(&dir, "stranger", &addr, &[&files[0]]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("handshake") && err.contains("--peers"), "{err}");
    assert!(std::fs::read(dir.join("out/vm.raw")).unwrap() == before);
    server.kill().unwrap();
    server.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
