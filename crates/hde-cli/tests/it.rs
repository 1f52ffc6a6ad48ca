//! End-to-end tests of the `hde` binary: separate processes, state directories, JSON output,
//! errors.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // reason: a test fails by panicking.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hde_corpus::{write_corpus, CorpusConfig};

mod common;

use common::{hde, ok, s};

fn tmp(name: &str) -> PathBuf {
    common::tmp("cli", name)
}

fn corpus(dir: &Path) -> Vec<PathBuf> {
    write_corpus(&dir.join("corpus"), &CorpusConfig { size: 2 << 20, rounds: 3, ..CorpusConfig::default() }).unwrap()
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
    assert!(err.contains("f1.hde") && err.contains("--keyframe"), "{err}");
    assert!(err.contains("--state") && err.contains("--base"), "the remedy names the flags: {err}");
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
    assert!(err.contains("this frame was made against another base file (checksum 0x"), "{err}");
    assert!(err.contains(", yours 0x") && err.contains(s(&files[2])), "{err}");
    assert!(!wrong.exists());
    // --base and --state do not mix.
    assert_eq!(
        hde(&["decode", "--base", s(&files[0]), "--state", s(&dir), s(&frame), "-o", "-"]).status.code(),
        Some(2)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- Outputs: what must never be destroyed (issue: the CLI must never destroy what it did
// not mean to write).

fn failed(out: &Output, code: i32, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{what}: {err}");
    err
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn cstr(p: &Path) -> std::ffi::CString {
    std::ffi::CString::new(s(p)).unwrap()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn an_existing_output_is_refused_without_force_and_an_input_always() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tmp("clobber");
    let files = corpus(&dir);
    let out = dir.join("out.hde");
    std::fs::write(&out, b"precious").unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = failed(&hde(&["encode", s(&files[0]), "-o", s(&out)]), 1, "existing output");
    assert!(err.contains("already exists") && err.contains("-f"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    ok(&hde(&["encode", "-f", s(&files[0]), "-o", s(&out)]), "with -f");
    assert_ne!(std::fs::read(&out).unwrap(), b"precious");
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o640, "a replaced file keeps its mode");

    // The input as output: refused with or without -f, through a link too, the input intact.
    let image = std::fs::read(&files[0]).unwrap();
    let link = dir.join("link.raw");
    std::os::unix::fs::symlink(&files[0], &link).unwrap();
    for target in [&files[0], &link] {
        for force in [false, true] {
            let mut args = vec!["encode", s(&files[0]), "-o", s(target)];
            if force {
                args.push("-f");
            }
            let err = failed(&hde(&args), 1, "input as output");
            assert!(err.contains("is the input"), "{err}");
            assert!(std::fs::read(&files[0]).unwrap() == image, "the input was changed");
        }
    }
    // A decode over its own --base or frame, likewise.
    let frame = dir.join("f1.hde");
    ok(&hde(&["encode", "--base", s(&files[0]), s(&files[1]), "-o", s(&frame)]), "delta");
    let err = failed(&hde(&["decode", "-f", "--base", s(&files[0]), s(&frame), "-o", s(&files[0])]), 1, "base");
    assert!(err.contains("is the input"), "{err}");
    let err = failed(&hde(&["decode", "-f", "--base", s(&files[0]), s(&frame), "-o", s(&frame)]), 1, "frame");
    assert!(err.contains("is the input"), "{err}");
    assert!(std::fs::read(&files[0]).unwrap() == image);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_symlinked_output_is_followed_and_the_link_stays() {
    let dir = tmp("symlink");
    let files = corpus(&dir);
    let frame = dir.join("f.hde");
    ok(&hde(&["encode", s(&files[0]), "-o", s(&frame)]), "encode");
    std::fs::create_dir_all(dir.join("images")).unwrap();
    // A dangling link: its target is created.
    let link = dir.join("vm.raw");
    std::os::unix::fs::symlink("images/vm.raw", &link).unwrap();
    ok(&hde(&["decode", s(&frame), "-o", s(&link)]), "decode through a dangling link");
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link was replaced");
    assert!(std::fs::read(dir.join("images/vm.raw")).unwrap() == std::fs::read(&files[0]).unwrap());
    // A link to an existing file: refused without -f, the target replaced with it.
    let err = failed(&hde(&["decode", s(&frame), "-o", s(&link)]), 1, "existing target");
    assert!(err.contains("already exists"), "{err}");
    let frame1 = dir.join("f1.hde");
    ok(&hde(&["encode", s(&files[1]), "-o", s(&frame1)]), "encode 1");
    ok(&hde(&["decode", "-f", s(&frame1), "-o", s(&link)]), "decode -f through a link");
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link was replaced");
    assert!(std::fs::read(dir.join("images/vm.raw")).unwrap() == std::fs::read(&files[1]).unwrap());
    assert_eq!(names(&dir.join("images")), ["vm.raw"], "no temporary file left");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_fifo_is_written_in_place_and_read_by_another_process() {
    use std::os::unix::fs::FileTypeExt as _;
    let dir = tmp("fifo");
    let files = corpus(&dir);
    let frame = dir.join("f.hde");
    ok(&hde(&["encode", s(&files[0]), "-o", s(&frame)]), "encode");
    let fifo = dir.join("pipe");
    // SAFETY: a valid NUL-terminated path; mkfifo keeps nothing.
    assert_eq!(unsafe { libc::mkfifo(cstr(&fifo).as_ptr(), 0o600) }, 0, "mkfifo");
    let copy = dir.join("copy.raw");
    // The reader: another process that copies the FIFO to a file.
    let reader = Command::new("sh").arg("-c").arg(format!("cat '{}' > '{}'", s(&fifo), s(&copy))).spawn().unwrap();
    // No -f needed: a FIFO is written in place, not replaced.
    ok(&hde(&["decode", s(&frame), "-o", s(&fifo)]), "decode into a FIFO");
    assert!(reader.wait_with_output().unwrap().status.success());
    assert!(std::fs::read(&copy).unwrap() == std::fs::read(&files[0]).unwrap());
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo(), "the FIFO was replaced");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn devices_are_written_in_place_never_replaced() {
    use std::os::unix::fs::FileTypeExt as _;
    if !is_root() {
        eprintln!("skipped: device nodes and loop devices need root (this test runs as root in CI)");
        return;
    }
    let dir = tmp("device");
    let files = corpus(&dir);
    let frame = dir.join("f.hde");
    ok(&hde(&["encode", s(&files[0]), "-o", s(&frame)]), "encode");
    // A character device: a private node of the null device (major 1, minor 3), so a failure
    // cannot hurt the machine's /dev/null.
    let null = dir.join("null");
    // SAFETY: a valid NUL-terminated path; mknod keeps nothing.
    let rc = unsafe { libc::mknod(cstr(&null).as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
    assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());
    ok(&hde(&["decode", s(&frame), "-o", s(&null)]), "decode into a character device");
    let meta = std::fs::symlink_metadata(&null).unwrap();
    assert!(meta.file_type().is_char_device(), "the device node was replaced");
    assert_eq!(names(&dir), ["corpus", "f.hde", "null"]);

    // A block device: a loop device over a file, as a disk image restored onto a volume.
    let backing = dir.join("disk.img");
    let image = std::fs::read(&files[0]).unwrap();
    std::fs::write(&backing, vec![0xa5u8; image.len()]).unwrap();
    let attach = Command::new("losetup").args(["--find", "--show", s(&backing)]).output();
    let loop_dev = match attach {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        Ok(o) => {
            eprintln!("skipped the block device part: losetup failed: {}", String::from_utf8_lossy(&o.stderr).trim());
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }
        Err(e) => {
            eprintln!("skipped the block device part: cannot run losetup: {e}");
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }
    };
    let dec = hde(&["decode", s(&frame), "-o", &loop_dev]);
    let back = std::fs::read(&loop_dev);
    let _ = Command::new("losetup").args(["-d", &loop_dev]).status();
    ok(&dec, "decode onto a loop device");
    // Zero pages were written as zeros over the old 0xa5 blocks, not skipped as holes.
    assert!(back.unwrap() == image, "the loop device does not hold the image");
    assert!(std::fs::read(&backing).unwrap() == image);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigint_or_sigterm_mid_encode_leaves_no_temporary_file() {
    let dir = tmp("sigint");
    let big = write_corpus(&dir.join("corpus"), &CorpusConfig { size: 48 << 20, rounds: 1, ..CorpusConfig::default() })
        .unwrap();
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let state = work.join("state");
    let mut interrupted = 0;
    // Unnamed temporary files (O_TMPFILE) and, as on filesystems without it, named ones that
    // the signal handler must remove.
    let runs = [libc::SIGINT, libc::SIGTERM, libc::SIGINT, libc::SIGINT].into_iter().enumerate();
    for (i, (signal, named)) in runs.flat_map(|(i, sig)| [(i, (sig, false)), (i, (sig, true))]) {
        let out = work.join("out.hde");
        let mut child = Command::new(env!("CARGO_BIN_EXE_hde"))
            .env("HDE_NAMED_TEMPORARIES", if named { "1" } else { "0" })
            .args(["encode", "--mode", "internet", "--key", "vm", "--state", s(&state), "--threads", "2"])
            .args([s(&big[0]), "-o", s(&out)])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(60 + 70 * i as u64));
        let pid = i32::try_from(child.id()).unwrap();
        // SAFETY: kill with a valid pid of our own child and a valid signal number.
        unsafe { libc::kill(pid, signal) };
        let status = child.wait().unwrap();
        if !status.success() {
            interrupted += 1;
            // Interrupted before the frame was put in place: no output. After it (while the
            // state was saved): the whole frame.
            if out.exists() {
                ok(&hde(&["inspect", s(&out)]), "the output of an interrupted encode");
            }
        }
        let mut left = names(&work);
        left.retain(|n| n != "out.hde" && n != "state");
        assert!(left.is_empty(), "left behind (named temporaries: {named}): {left:?}");
        if state.join("send").exists() {
            let stray: Vec<String> = names(&state.join("send")).into_iter().filter(|n| !n.ends_with(".hde")).collect();
            assert!(stray.is_empty(), "state litter: {stray:?}");
        }
        let _ = std::fs::remove_file(&out);
    }
    assert!(interrupted > 0, "no run was interrupted: the input is too small to catch one mid-encode");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn usage_errors_exit_2_and_name_the_flag() {
    let dir = tmp("usage");
    let files = corpus(&dir);
    let frame = dir.join("f.hde");
    let state = dir.join("state");
    // --state needs --key: the rounds of one VM must not become different keys by file name.
    let err = failed(&hde(&["encode", "--state", s(&state), s(&files[0]), "-o", s(&frame)]), 2, "no key");
    assert!(err.contains("--key"), "{err}");
    for args in [
        vec!["encode", "--key", "", s(&files[0]), "-o", s(&frame)],
        vec!["encode", "--threads", "0", s(&files[0]), "-o", s(&frame)],
        vec!["decode", "--threads", "0", s(&frame), "-o", "-"],
        vec!["encode", "--bandwidth", "100", s(&files[0]), "-o", s(&frame)],
        vec!["encode", "--mode", "datacenter", "--bandwidth", "1gbit", s(&files[0]), "-o", s(&frame)],
        vec!["rounds", "--mode", "internet", "--bandwidth", "10mbit", s(&files[0])],
        vec!["encode", "-", "-", "-o", s(&frame)],
    ] {
        failed(&hde(&args), 2, &format!("{args:?}"));
    }
    let err = failed(&hde(&["encode", "--bandwidth", "100", s(&files[0]), "-o", s(&frame)]), 2, "bare rate");
    assert!(err.contains("100mbit") && err.contains("MB/s"), "both forms shown: {err}");
    assert!(!frame.exists() && !state.exists(), "a usage error wrote something");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_rate_in_bits_or_bytes_is_the_same_rate_in_json() {
    let dir = tmp("rate");
    let files = corpus(&dir);
    let rate = |text: &str| {
        let out = hde(&["rounds", "--json", "--bandwidth", text, "--threads", "2", s(&files[0])]);
        ok(&out, text);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["bandwidth_bits_per_second"].as_f64().unwrap()
    };
    assert_eq!(rate("100Mbps"), 1e8);
    assert_eq!(rate("12.5MB/s"), 1e8);
    assert_eq!(rate("100mbit"), 1e8);
    assert_eq!(rate("1gbit"), 1e9);
    let out = hde(&["rounds", "--json", "--mode", "datacenter", "--threads", "2", s(&files[0])]);
    ok(&out, "datacenter");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["bandwidth_bits_per_second"].is_null(), "datacenter ignores the link: {v}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `cmd` with `input` on stdin; its output.
fn piped(args: &[&str], input: &[u8]) -> Output {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_hde"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    out
}

#[test]
fn a_stream_of_frames_goes_through_one_decode() {
    let dir = tmp("stream");
    let files = corpus(&dir);
    let last = std::fs::read(&files[2]).unwrap();
    // One encode of three rounds: one keyframe, two deltas, one stream.
    let stream = dir.join("all.hde");
    ok(&hde(&["encode", "--key", "vm", s(&files[0]), s(&files[1]), s(&files[2]), "-o", s(&stream)]), "encode");
    let bytes = std::fs::read(&stream).unwrap();
    let back = piped(&["decode", "-", "-o", "-"], &bytes);
    ok(&back, "decode -");
    assert!(back.stdout == last, "the stream's last image");
    let info = piped(&["inspect", "-"], &bytes);
    ok(&info, "inspect -");
    let text = String::from_utf8_lossy(&info.stdout);
    assert_eq!(text.matches("key        vm").count(), 3, "{text}");
    assert_eq!(text.matches("kind       delta").count(), 2, "{text}");

    // Separate frames from encode --state, concatenated: what several rounds through ssh give.
    let send = dir.join("send");
    let mut cat = Vec::new();
    let mut sizes = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let frame = dir.join(format!("r{i}.hde"));
        ok(&hde(&["encode", "--key", "vm", "--state", s(&send), s(f), "-o", s(&frame)]), "encode --state");
        let b = std::fs::read(&frame).unwrap();
        sizes.push(b.len());
        cat.extend_from_slice(&b);
    }
    assert!(sizes[1] * 5 < sizes[0] && sizes[2] * 5 < sizes[0], "rounds 1 and 2 are deltas: {sizes:?}");
    let recv = dir.join("recv");
    let back = piped(&["decode", "--state", s(&recv), "-", "-o", "-"], &cat);
    ok(&back, "decode --state -");
    assert!(back.stdout == last);
    // The same stream again is a retry: the same image, nothing refused.
    let again = piped(&["decode", "--state", s(&recv), "-", "-o", "-"], &cat);
    ok(&again, "the stream again");
    assert!(again.stdout == last);
    let list = hde(&["state", "list", "--state", s(&recv)]);
    ok(&list, "state list");
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.lines().any(|l| l.starts_with("recv") && l.contains(" vm ") && l.contains(" 3 ")), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn messages_name_the_remedy_and_a_failed_decode_creates_nothing() {
    let dir = tmp("messages");
    let files = corpus(&dir);
    let send = dir.join("send");
    let (f0, f1, f2) = (dir.join("f0.hde"), dir.join("f1.hde"), dir.join("f2.hde"));
    for (file, frame) in files.iter().zip([&f0, &f1, &f2]) {
        ok(&hde(&["encode", "--key", "vm", "--state", s(&send), s(file), "-o", s(frame)]), "encode");
    }
    // A delta into a state directory that does not exist: refused, and nothing is created.
    let (recv, out) = (dir.join("recv"), dir.join("out.raw"));
    let err = failed(&hde(&["decode", "--state", s(&recv), s(&f1), "-o", s(&out)]), 1, "no baseline");
    assert!(err.contains("--keyframe") && err.contains("--state"), "{err}");
    assert!(!recv.exists() && !out.exists(), "a failed decode created something");
    // Empty input.
    let empty = dir.join("empty.hde");
    std::fs::write(&empty, b"").unwrap();
    let err = failed(&hde(&["decode", s(&empty), "-o", s(&out)]), 1, "empty");
    assert!(err.contains("empty input: not an HDE frame") && err.contains("empty.hde"), "{err}");
    // A missed frame, then a stale one: what is held and what to do, in rounds.
    ok(&hde(&["decode", "--state", s(&recv), s(&f0), "-o", s(&out)]), "round 0");
    let err = failed(&hde(&["decode", "-f", "--state", s(&recv), s(&f2), "-o", s(&out)]), 1, "missed");
    assert!(err.contains("holds round 0") && err.contains("missed") && err.contains("--keyframe"), "{err}");
    ok(&hde(&["decode", "-f", "--state", s(&recv), s(&f1), "-o", s(&out)]), "round 1");
    ok(&hde(&["decode", "-f", "--state", s(&recv), s(&f2), "-o", s(&out)]), "round 2");
    let err = failed(&hde(&["decode", "-f", "--state", s(&recv), s(&f1), "-o", s(&out)]), 1, "stale");
    assert!(err.contains("older than round 2") && err.contains("--keyframe"), "{err}");
    // No message names a temporary file.
    assert!(!err.contains("tmp."), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn state_list_shows_rounds_and_damage_and_drop_forgets_a_key() {
    let dir = tmp("state-cmd");
    let files = corpus(&dir);
    let state = dir.join("state");
    for key in ["web", "db"] {
        for (i, f) in files.iter().enumerate() {
            let frame = dir.join(format!("{key}{i}.hde"));
            ok(&hde(&["encode", "--key", key, "--state", s(&state), s(f), "-o", s(&frame)]), "encode");
        }
    }
    let list = hde(&["state", "list", "--state", s(&state)]);
    ok(&list, "list");
    let text = String::from_utf8_lossy(&list.stdout).into_owned();
    for key in ["web", "db"] {
        let line = text.lines().find(|l| l.split_whitespace().nth(1) == Some(key)).unwrap_or_else(|| panic!("{text}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[0], "send", "{line}");
        assert_eq!(cols[2], "3", "three rounds: {line}");
        assert_eq!(cols[3], (2u64 << 20).to_string(), "{line}");
        // The sender keeps the hashes of the last input and that file's path.
        assert!(line.contains("verifies (hashes; image in") && line.ends_with("snap_02.raw)"), "{line}");
    }
    // The input changed since: the list says the hashes alone stand.
    let original = std::fs::read(&files[2]).unwrap();
    std::fs::write(&files[2], &original[..4096]).unwrap();
    let text = String::from_utf8_lossy(&hde(&["state", "list", "--state", s(&state)]).stdout).into_owned();
    assert!(text.lines().any(|l| l.contains(" db ") && l.contains("hashes only")), "{text}");
    std::fs::write(&files[2], &original).unwrap();
    // Damage web's saved image: the list says so (exit 0: listing is not verifying a round).
    let path = hde_core::state::StateDir::open(&state).unwrap().path(hde_core::state::Side::Send, "web");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let list = hde(&["state", "list", "--state", s(&state)]);
    ok(&list, "list after damage");
    let text = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(text.lines().any(|l| l.contains(" web ") && l.contains("DAMAGED")), "{text}");
    // Drop it: gone from the list, and the next round of web is a keyframe.
    ok(&hde(&["state", "drop", "--state", s(&state), "web"]), "drop");
    let text = String::from_utf8_lossy(&hde(&["state", "list", "--state", s(&state)]).stdout).into_owned();
    assert!(!text.contains(" web ") && text.contains(" db "), "{text}");
    failed(&hde(&["state", "drop", "--state", s(&state), "web"]), 1, "drop again");
    let frame = dir.join("web3.hde");
    ok(&hde(&["encode", "--key", "web", "--state", s(&state), s(&files[2]), "-o", s(&frame)]), "encode after drop");
    let info = String::from_utf8_lossy(&hde(&["inspect", s(&frame)]).stdout).into_owned();
    assert!(info.contains("kind       keyframe"), "{info}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_demo_verifies_every_mode_and_the_network_round_trip() {
    let out = hde(&["demo", "--size", "4M", "--rounds", "3", "--threads", "2"]);
    ok(&out, "demo");
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["datacenter", "internet", "hybrid@1G", "hde send (deltas)", "lz4, each round whole", "ratio = "] {
        assert!(text.contains(needle), "{needle:?} missing in\n{text}");
    }
    assert!(text.contains("equals the input byte for byte"), "{text}");
    assert!(!text.contains(" NO"), "{text}");
}
