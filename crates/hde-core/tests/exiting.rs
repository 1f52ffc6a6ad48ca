//! `fsio::remove_temporaries` closes the process for named temporary files: a test binary of
//! its own, because what it changes is process-wide.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // reason: a test fails by panicking.

use hde_core::fsio::{remove_temporaries, AtomicFile};

#[test]
fn no_named_temporary_appears_once_the_process_is_leaving() {
    let dir = std::env::temp_dir().join(format!("hde-core-exiting-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let target = dir.join("out");
    let before = AtomicFile::create_named(&target).unwrap();
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "the named temporary exists");

    // What a SIGINT handler's thread does while other threads keep working.
    remove_temporaries();
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "removed");
    let after = AtomicFile::create_named(&target).unwrap_err();
    assert_eq!(after.kind(), std::io::ErrorKind::Interrupted);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing made after the cleanup");
    drop(before);
    assert!(!target.exists());
    let _ = std::fs::remove_dir_all(&dir);
}
