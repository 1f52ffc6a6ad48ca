//! Faults around the `hde` binary: SIGKILL at random points of `encode --state` and
//! `decode --state`, a full disk, an unwritable output, and a receiver that missed, repeated or
//! reordered frames (a repeated frame is a retry and gives the same image again). The state
//! directory must always hold the old round or the new one, never a torn mix, and the next
//! round must work (after a keyframe where the sides disagree).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // reason: a test fails by panicking.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hde_core::delta::{checksum, BaselineId};
use hde_core::state::{Side, StateDir};
use hde_corpus::{write_corpus, CorpusConfig};

const KEY: &str = "vm";

mod common;

use common::{hde_cmd as hde, ok, s};

fn tmp(name: &str) -> PathBuf {
    common::tmp("faults", name)
}

/// The saved baseline of `side`, which must load (a torn or damaged file would not).
fn saved(state: &Path, side: Side) -> Option<BaselineId> {
    let dir = StateDir::open(state).unwrap();
    dir.load(side, KEY, u64::MAX).unwrap_or_else(|e| panic!("{side:?} state does not load: {e}")).map(|s| {
        // A sender's baseline is its hashes and the input file they describe.
        let image = s.hashed.as_ref().map_or_else(|| s.image.clone(), |h| std::fs::read(&h.source).unwrap());
        assert_eq!(checksum(&image, 4096), s.id.checksum, "{side:?} state image differs from its identity");
        s.id
    })
}

fn encode(state: &Path, input: &Path, frame: &Path, keyframe: bool) -> Command {
    let mut c = hde();
    c.args(["encode", "-f", "--key", KEY, "--state", s(state), "--threads", "2", s(input), "-o", s(frame)]);
    if keyframe {
        c.arg("--keyframe");
    }
    c
}

fn decode(state: &Path, frame: &Path, out: &Path) -> Command {
    let mut c = hde();
    c.args(["decode", "-f", "--state", s(state), "--threads", "2", s(frame), "-o", s(out)]);
    c
}

/// Starts `cmd` and SIGKILLs it after `delay` (if still running); true if it was killed.
fn kill_after(cmd: &mut Command, delay: Duration) -> bool {
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    while start.elapsed() < delay {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    !status.success()
}

/// How long `cmd` takes when left alone.
fn timed(cmd: &mut Command) -> Duration {
    let start = Instant::now();
    ok(&cmd.output().unwrap(), "timing run");
    start.elapsed()
}

/// A deterministic delay in `0..=max` (splitmix64 of `i`).
fn delay(i: u64, max: Duration) -> Duration {
    let mut z = i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z ^= z >> 27;
    max.mul_f64((z % 10_000) as f64 / 10_000.0)
}

#[test]
fn sigkill_at_random_points_never_tears_the_state() {
    let dir = tmp("kill");
    let files =
        write_corpus(&dir.join("corpus"), &CorpusConfig { size: 8 << 20, rounds: 8, ..CorpusConfig::default() })
            .unwrap();
    let (send, recv) = (dir.join("send"), dir.join("recv"));
    let (frame, out) = (dir.join("frame.hde"), dir.join("out.raw"));
    // The first round, undisturbed, sets the pace.
    let mut enc_time = timed(&mut encode(&send, &files[0], &frame, false));
    let mut dec_time = timed(&mut decode(&recv, &frame, &out));
    let (mut kills, mut recoveries) = (0, 0);
    let mut i = 0u64;
    for (r, file) in files.iter().enumerate().skip(1) {
        let image = std::fs::read(file).unwrap();
        let new_id = |id: Option<BaselineId>| id.map(|id| id.checksum) == Some(checksum(&image, 4096));
        for _ in 0..4 {
            // Sender killed somewhere in its run: its state is the old round or this one.
            let before = saved(&send, Side::Send);
            i += 1;
            kills += u32::from(kill_after(&mut encode(&send, file, &frame, false), delay(i, enc_time)));
            let after = saved(&send, Side::Send);
            assert!(after == before || new_id(after), "round {r}: sender state is neither old nor new");
        }
        // Then the round runs to the end (and sets the pace of the next kills).
        enc_time = timed(&mut encode(&send, file, &frame, false));
        for _ in 0..4 {
            let before = saved(&recv, Side::Receive);
            i += 1;
            kills += u32::from(kill_after(&mut decode(&recv, &frame, &out), delay(i, dec_time)));
            let after = saved(&recv, Side::Receive);
            assert!(after == before || new_id(after), "round {r}: receiver state is neither old nor new");
        }
        let start = Instant::now();
        let dec = decode(&recv, &frame, &out).output().unwrap();
        dec_time = start.elapsed();
        if !dec.status.success() {
            // The sides disagree (a killed encoder had already saved the round the receiver never
            // got, or a killed decoder had already applied this frame): the error names the
            // baseline, and a keyframe brings them together again.
            let msg = String::from_utf8_lossy(&dec.stderr);
            assert!(msg.contains("baseline"), "round {r}: {msg}");
            ok(&encode(&send, file, &frame, true).output().unwrap(), "keyframe encode");
            ok(&decode(&recv, &frame, &out).output().unwrap(), "keyframe decode");
            recoveries += 1;
        }
        assert!(std::fs::read(&out).unwrap() == image, "round {r}: decoded image differs");
    }
    eprintln!("{kills} runs killed of {i}, {recoveries} keyframe recoveries");
    assert!(kills > 0, "no run was killed: the delays are too long for this machine");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `cmd` with file writes limited to `bytes` (a disk that fills up at that point) and SIGXFSZ
/// ignored, so a write past the limit fails with EFBIG as on a full disk.
fn with_file_limit(cmd: &mut Command, bytes: u64) -> &mut Command {
    // SAFETY: between fork and exec only async-signal-safe calls (setrlimit, signal) run, on
    // values owned by this closure.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit { rlim_cur: bytes, rlim_max: bytes };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0
                || libc::signal(libc::SIGXFSZ, libc::SIG_IGN) == libc::SIG_ERR
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn a_full_disk_or_unwritable_output_is_an_error_and_the_state_stays() {
    let dir = tmp("full");
    let files =
        write_corpus(&dir.join("corpus"), &CorpusConfig { size: 4 << 20, rounds: 2, ..CorpusConfig::default() })
            .unwrap();
    let (send, recv) = (dir.join("send"), dir.join("recv"));
    let (frame0, frame1, out) = (dir.join("f0.hde"), dir.join("f1.hde"), dir.join("out.raw"));
    ok(&encode(&send, &files[0], &frame0, false).output().unwrap(), "round 0");
    ok(&decode(&recv, &frame0, &out).output().unwrap(), "round 0 decode");
    let state_file = |state: &Path, side| StateDir::open(state).unwrap().path(side, KEY);
    let send_before = std::fs::read(state_file(&send, Side::Send)).unwrap();
    let recv_before = std::fs::read(state_file(&recv, Side::Receive)).unwrap();
    let listing = (files_in(&dir), files_in(&send.join("send")), files_in(&recv.join("recv")));

    // The frame itself does not fit (1 KiB disk), the frame fits but the state does not
    // (64 KiB, with the input on stdin: the state keeps a copy), and an output nobody can
    // create: each an error naming the cause, nothing changed, no temporary file left.
    let cases: [(&str, Option<u64>, PathBuf); 3] = [
        ("frame", Some(1 << 10), frame1.clone()),
        ("state", Some(64 << 10), frame1.clone()),
        ("unwritable", None, dir.join("no-such-dir").join("f1.hde")),
    ];
    for (what, limit, target) in &cases {
        let mut cmd = if *what == "state" {
            let mut c = encode(&send, Path::new("-"), target, false);
            c.stdin(std::fs::File::open(&files[1]).unwrap());
            c
        } else {
            encode(&send, &files[1], target, false)
        };
        if let Some(limit) = limit {
            with_file_limit(&mut cmd, *limit);
        }
        let res = cmd.output().unwrap();
        let msg = String::from_utf8_lossy(&res.stderr);
        assert_eq!(res.status.code(), Some(1), "{what}: {msg}");
        assert!(msg.contains("cannot"), "{what}: {msg}");
        assert_eq!(std::fs::read(state_file(&send, Side::Send)).unwrap(), send_before, "{what}: sender state changed");
        assert_eq!(files_in(&send.join("send")), listing.1, "{what}: temporary state file left");
        let _ = std::fs::remove_file(&frame1); // the "state" case wrote the frame first
    }
    // The receiving side: the image does not fit.
    ok(&encode(&send, &files[1], &frame1, false).output().unwrap(), "round 1");
    let res = with_file_limit(&mut decode(&recv, &frame1, &out), 1 << 20).output().unwrap();
    assert_eq!(res.status.code(), Some(1), "{}", String::from_utf8_lossy(&res.stderr));
    assert_eq!(std::fs::read(state_file(&recv, Side::Receive)).unwrap(), recv_before, "receiver state changed");
    let mut expected = listing.0.clone();
    expected.push("f1.hde".to_owned());
    expected.sort();
    assert_eq!(files_in(&dir), expected, "temporary output file left");
    // Stdout on a full device.
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let res = hde().args(["decode", "--state", s(&recv), s(&frame1), "-o", "-"]).stdout(full).output().unwrap();
    assert_eq!(res.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&res.stderr).contains("cannot write stdout"));
    // With room again, the round goes through.
    ok(&decode(&recv, &frame1, &out).output().unwrap(), "round 1 decode");
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&files[1]).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missed_repeated_and_reordered_frames_are_typed_errors_and_a_keyframe_recovers() {
    let dir = tmp("order");
    let files =
        write_corpus(&dir.join("corpus"), &CorpusConfig { size: 2 << 20, rounds: 4, ..CorpusConfig::default() })
            .unwrap();
    let (send, recv) = (dir.join("send"), dir.join("recv"));
    let frames: Vec<PathBuf> = (0..4).map(|i| dir.join(format!("f{i}.hde"))).collect();
    for (file, frame) in files.iter().zip(&frames) {
        ok(&encode(&send, file, frame, false).output().unwrap(), "encode");
    }
    let out = dir.join("out.raw");
    let refused = |frame: &Path, what: &str| {
        let res = decode(&recv, frame, &out).output().unwrap();
        let msg = String::from_utf8_lossy(&res.stderr);
        assert_eq!(res.status.code(), Some(1), "{what}: {msg}");
        assert!(msg.contains("baseline") || msg.contains("stale"), "{what}: {msg}");
        assert!(!out.exists(), "{what}: an image was written");
    };
    ok(&decode(&recv, &frames[0], &out).output().unwrap(), "round 0");
    std::fs::remove_file(&out).unwrap();
    refused(&frames[2], "missed round 1");
    ok(&decode(&recv, &frames[1], &out).output().unwrap(), "round 1");
    std::fs::remove_file(&out).unwrap();
    // The same frame again (a retry after a crash) gives the same image; an older one is stale.
    ok(&decode(&recv, &frames[1], &out).output().unwrap(), "round 1 again");
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&files[1]).unwrap());
    std::fs::remove_file(&out).unwrap();
    refused(&frames[0], "round 0 after round 1");
    refused(&frames[3], "round 3 before round 2");
    // Recovery: the sender sends a keyframe of the current image.
    let key = dir.join("key.hde");
    ok(&encode(&send, &files[3], &key, true).output().unwrap(), "keyframe");
    ok(&decode(&recv, &key, &out).output().unwrap(), "keyframe decode");
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&files[3]).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_damaged_saved_baseline_is_refused_and_a_keyframe_replaces_it() {
    let dir = tmp("damaged");
    let files =
        write_corpus(&dir.join("corpus"), &CorpusConfig { size: 1 << 20, rounds: 2, ..CorpusConfig::default() })
            .unwrap();
    let (send, recv) = (dir.join("send"), dir.join("recv"));
    let (frame, out) = (dir.join("f.hde"), dir.join("out.raw"));
    ok(&encode(&send, &files[0], &frame, false).output().unwrap(), "round 0");
    ok(&decode(&recv, &frame, &out).output().unwrap(), "round 0 decode");
    // One bit of the saved image flips on disk (the header's checksum cannot see it; the
    // baseline's identity can).
    let path = StateDir::open(&send).unwrap().path(Side::Send, KEY);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let res = encode(&send, &files[1], &frame, false).output().unwrap();
    let msg = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(1), "{msg}");
    assert!(msg.contains("--keyframe"), "{msg}");
    ok(&encode(&send, &files[1], &frame, true).output().unwrap(), "keyframe over a damaged state");
    ok(&decode(&recv, &frame, &out).output().unwrap(), "keyframe decode");
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&files[1]).unwrap());
    assert!(saved(&send, Side::Send).is_some());
    let _ = std::fs::remove_dir_all(&dir);
}
