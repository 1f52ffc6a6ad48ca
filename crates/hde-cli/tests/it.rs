//! End-to-end tests of the `hde` binary: separate processes, state directories, JSON output,
//! errors.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // reason: a test fails by panicking.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hde_core::corpus::{write_corpus, CorpusConfig};

fn hde(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hde")).args(args).output().expect("run hde")
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hde-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn corpus(dir: &Path) -> Vec<PathBuf> {
    write_corpus(&dir.join("corpus"), &CorpusConfig { size: 2 << 20, rounds: 3, ..CorpusConfig::default() }).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn three_rounds_through_separate_processes_with_state() {
    let dir = tmp("state");
    let files = corpus(&dir);
    let (send, recv) = (dir.join("send-state"), dir.join("recv-state"));
    let mut sizes = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let frame = dir.join(format!("f{i}.hde"));
        let out = dir.join(format!("d{i}.raw"));
        let enc = hde(&["encode", "--key", "vm", "--state", s(&send), "--threads", "2", s(file), "-o", s(&frame)]);
        assert!(enc.status.success(), "{}", String::from_utf8_lossy(&enc.stderr));
        let dec = hde(&["decode", "--state", s(&recv), s(&frame), "-o", s(&out)]);
        assert!(dec.status.success(), "{}", String::from_utf8_lossy(&dec.stderr));
        assert!(std::fs::read(&out).unwrap() == std::fs::read(file).unwrap(), "round {i} differs");
        sizes.push(std::fs::metadata(&frame).unwrap().len());
    }
    // Rounds 1 and 2 are deltas against the saved baselines.
    assert!(sizes[1] * 5 < sizes[0] && sizes[2] * 5 < sizes[0], "{sizes:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stdin_and_stdout_work() {
    let dir = tmp("stdio");
    let files = corpus(&dir);
    let image = std::fs::read(&files[0]).unwrap();
    let mut enc = Command::new(env!("CARGO_BIN_EXE_hde"))
        .args(["encode", "-", "-o", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    enc.stdin.take().unwrap().write_all(&image).unwrap();
    let frame = enc.wait_with_output().unwrap();
    assert!(frame.status.success());
    let mut dec = Command::new(env!("CARGO_BIN_EXE_hde"))
        .args(["decode", "-", "-o", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    dec.stdin.take().unwrap().write_all(&frame.stdout).unwrap();
    let back = dec.wait_with_output().unwrap();
    assert!(back.status.success());
    assert!(back.stdout == image);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rounds_json_in_every_mode() {
    let dir = tmp("rounds");
    let files = corpus(&dir);
    for mode in ["datacenter", "internet", "hybrid"] {
        let mut args = vec!["rounds", "--json", "--mode", mode, "--threads", "2"];
        args.extend(files.iter().map(|f| s(f)));
        let out = hde(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["mode"], mode);
        let rounds = v["rounds"].as_array().unwrap();
        assert_eq!(rounds.len(), 3);
        assert_eq!(rounds[0]["kind"], "full");
        assert_eq!(rounds[1]["kind"], "delta");
        for r in rounds {
            assert_eq!(r["verified"], true);
            assert_eq!(r["input_bytes"], 2 << 20);
            let pages = &r["pages"];
            let total: u64 =
                ["unchanged", "zero", "duplicate", "xor", "literal"].iter().map(|k| pages[k].as_u64().unwrap()).sum();
            assert_eq!(total, (2 << 20) / 4096);
            assert!(r["encode_seconds"].as_f64().unwrap() >= 0.0);
        }
        let total = &v["total"];
        assert_eq!(total["input_bytes"], 3 * (2 << 20));
        assert!(total["output_bytes"].as_u64().unwrap() < 2 << 20);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_delta_without_its_baseline_fails_clearly_and_writes_nothing() {
    let dir = tmp("missing");
    let files = corpus(&dir);
    let state = dir.join("state");
    for (i, file) in files.iter().take(2).enumerate() {
        let frame = dir.join(format!("f{i}.hde"));
        assert!(hde(&["encode", "--key", "vm", "--state", s(&state), s(file), "-o", s(&frame)]).status.success());
    }
    let out = dir.join("never.raw");
    let dec = hde(&["decode", s(&dir.join("f1.hde")), "-o", s(&out)]);
    assert_eq!(dec.status.code(), Some(1));
    let err = String::from_utf8_lossy(&dec.stderr);
    assert!(err.starts_with("hde: error: cannot decode"), "{err}");
    assert!(err.contains("f1.hde") && err.contains("keyframe"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!out.exists());
    // Garbage is a clear error too, and usage errors exit 2.
    std::fs::write(dir.join("junk.hde"), b"not a frame at all, just some bytes that go on for a while....").unwrap();
    let junk = hde(&["decode", s(&dir.join("junk.hde")), "-o", s(&out)]);
    assert_eq!(junk.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&junk.stderr).contains("not an HDE frame"));
    assert_eq!(hde(&["encode"]).status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn inspect_describes_a_frame() {
    let dir = tmp("inspect");
    let files = corpus(&dir);
    let frame = dir.join("f.hde");
    assert!(hde(&["encode", "--key", "vm-7", s(&files[0]), "-o", s(&frame)]).status.success());
    let out = hde(&["inspect", s(&frame)]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["key        vm-7", "kind       keyframe", "baseline   none", "literals", "pages      unchanged 0"] {
        assert!(text.contains(needle), "{needle:?} missing in\n{text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn base_files_give_deltas_like_patch_from_and_a_wrong_base_is_refused() {
    let dir = tmp("base");
    let files = corpus(&dir);
    let frame = dir.join("f.hde");
    let out = dir.join("d.raw");
    let enc = hde(&["encode", "--base", s(&files[0]), s(&files[1]), "-o", s(&frame)]);
    assert!(enc.status.success(), "{}", String::from_utf8_lossy(&enc.stderr));
    let keyframe = dir.join("k.hde");
    assert!(hde(&["encode", s(&files[1]), "-o", s(&keyframe)]).status.success());
    let (delta_len, key_len) = (std::fs::metadata(&frame).unwrap().len(), std::fs::metadata(&keyframe).unwrap().len());
    assert!(delta_len * 5 < key_len, "delta {delta_len} vs keyframe {key_len}");

    let dec = hde(&["decode", "--base", s(&files[0]), s(&frame), "-o", s(&out)]);
    assert!(dec.status.success(), "{}", String::from_utf8_lossy(&dec.stderr));
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&files[1]).unwrap());

    // Against another base: one clear line, exit 1, no output file.
    let wrong = dir.join("wrong.raw");
    let _ = std::fs::remove_file(&out);
    let dec = hde(&["decode", "--base", s(&files[2]), s(&frame), "-o", s(&wrong)]);
    assert_eq!(dec.status.code(), Some(1));
    let err = String::from_utf8_lossy(&dec.stderr);
    assert!(err.contains("baseline"), "{err}");
    assert!(!wrong.exists());
    // --base and --state do not mix.
    assert_eq!(
        hde(&["decode", "--base", s(&files[0]), "--state", s(&dir), s(&frame), "-o", "-"]).status.code(),
        Some(2)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
