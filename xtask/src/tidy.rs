//! Tidy checks, run by plain `cargo test`: conventions a reviewer should not have to police.

use std::fs;
use std::path::{Path, PathBuf};

use crate::root;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn sources() -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    for dir in ["crates", "benches", "xtask", "fuzz"] {
        rust_files(&root().join(dir), &mut files);
    }
    assert!(!files.is_empty(), "no sources found under {}", root().display());
    files
        .into_iter()
        .map(|p| {
            let text = fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect()
}

/// Every file says what it is for, in its first line.
#[test]
fn every_file_starts_with_a_doc_comment() {
    let missing: Vec<_> = sources().into_iter().filter(|(_, t)| !t.starts_with("//!")).map(|(p, _)| p).collect();
    assert!(missing.is_empty(), "files without a leading //! line: {missing:#?}");
}

/// A skipped test is a test that silently stopped testing.
#[test]
fn no_ignored_tests() {
    let marker = concat!("#[", "ignore");
    let found: Vec<_> = sources().into_iter().filter(|(_, t)| t.contains(marker)).map(|(p, _)| p).collect();
    assert!(found.is_empty(), "ignored tests in {found:#?}");
}

/// Warnings are denied by CI flags, never in code (it breaks builds on new compilers).
#[test]
fn no_deny_warnings_in_code() {
    let marker = concat!("deny(", "warnings)");
    let found: Vec<_> = sources().into_iter().filter(|(_, t)| t.contains(marker)).map(|(p, _)| p).collect();
    assert!(found.is_empty(), "{marker} in {found:#?}");
}

/// The README's test command is the one `.ci/run` runs.
#[test]
fn readme_and_ci_agree() {
    let readme = fs::read_to_string(root().join("README.md")).unwrap();
    let ci = fs::read_to_string(root().join(".ci/run")).unwrap();
    assert!(readme.contains("cargo xtask ci"), "README must give `cargo xtask ci` as the test command");
    assert!(ci.contains("cargo xtask ci"), ".ci/run must run `cargo xtask ci`");
    assert!(readme.contains("cargo run --release -p hde-cli --"), "README must give the main command");
}

/// Every crate opts in to the workspace lints.
#[test]
fn every_crate_uses_workspace_lints() {
    let mut manifests = vec![root().join("benches/Cargo.toml"), root().join("xtask/Cargo.toml")];
    for entry in fs::read_dir(root().join("crates")).unwrap().flatten() {
        manifests.push(entry.path().join("Cargo.toml"));
    }
    for m in manifests {
        let text = fs::read_to_string(&m).unwrap();
        assert!(text.contains("[lints]\nworkspace = true"), "{} lacks `[lints] workspace = true`", m.display());
    }
}
