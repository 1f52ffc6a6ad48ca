//! The fuzz targets as plain tests: every checked-in seed, and a fixed set of mutations of
//! each, on the stable toolchain.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // reason: a test fails by panicking.

use std::path::PathBuf;

use hde_fuzz::{Mutator, Outcome, TARGETS};

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            (path.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_target_has_seeds_and_accepts_the_valid_ones() {
    for t in TARGETS {
        let seeds = corpus(t.name);
        assert!(seeds.iter().any(|(n, _)| n.starts_with("valid-")), "{}: no valid seed", t.name);
        for (name, bytes) in &seeds {
            let got = (t.run)(bytes);
            if name.starts_with("valid-") {
                assert_eq!(got, Outcome::Accepted, "{}/{name}", t.name);
            }
        }
    }
}

#[test]
fn checked_in_seeds_are_what_the_generator_writes() {
    // The corpus is regenerated with `cargo run -p hde-fuzz -- seeds fuzz/corpus` when a format
    // changes; a stale one would fuzz yesterday's format.
    for t in TARGETS {
        let on_disk = corpus(t.name);
        for (name, bytes) in hde_fuzz::seeds(t.name) {
            if t.name == "frame_decode" || t.name == "delta_apply" {
                // Frames carry encoder choices that learning may vary; their validity is the test.
                assert!(on_disk.iter().any(|(n, _)| *n == name), "{}/{name} missing", t.name);
            } else {
                let found = on_disk.iter().find(|(n, _)| *n == name).map(|(_, b)| b);
                assert_eq!(found, Some(&bytes), "{}/{name} differs from the generator's", t.name);
            }
        }
    }
}

#[test]
fn mutated_seeds_never_panic() {
    for t in TARGETS {
        let seeds = corpus(t.name);
        let mut m = Mutator::new(7);
        let (mut accepted, mut total) = (0, 0);
        for (i, (_, seed)) in seeds.iter().enumerate() {
            let other = &seeds[(i + 1) % seeds.len()].1;
            for _ in 0..1000 {
                let mut input = seed.clone();
                m.mutate(&mut input, other);
                total += 1;
                accepted += usize::from((t.run)(&input) == Outcome::Accepted);
            }
        }
        eprintln!("{}: {accepted} of {total} mutants accepted", t.name);
    }
}
