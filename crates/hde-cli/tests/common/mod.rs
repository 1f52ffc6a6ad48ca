//! Helpers the `hde` binary's test files share: running it, scratch directories, checks.

// Each test file uses a part of these; the rest would be dead code in that file's crate.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `hde` binary under test.
pub(crate) fn hde_cmd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hde"))
}

/// Runs `hde ARGS` to completion.
pub(crate) fn hde(args: &[&str]) -> Output {
    hde_cmd().args(args).output().expect("run hde")
}

/// A fresh scratch directory named after the test file (`kind`) and the test (`name`).
pub(crate) fn tmp(kind: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hde-{kind}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// A path as an argument.
pub(crate) fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Fails the test with stderr unless `out` succeeded.
pub(crate) fn ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Runs `ip ARGS`; its stderr is the error.
pub(crate) fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}
