//! A sparse image larger than this machine's memory: 64 GiB with a few MiB of data in four
//! places, through `hde encode` and `hde decode`. The holes are found with `SEEK_DATA` and
//! never read, the decoder leaves them holes, and neither process holds more than a bounded
//! amount of memory (the children's peak resident set, from the kernel's accounting).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // reason: a test fails by panicking.

use std::fs::{self, File};
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::os::unix::io::AsRawFd as _;
use std::path::Path;

mod common;

use common::{hde, ok, s};

const GIB: u64 = 1 << 30;
const IMAGE: u64 = 64 * GIB;
/// The most resident memory either process may reach: well under the image, and under what
/// a machine running this test has.
const MEMORY_BOUND: u64 = GIB;

/// Page-structured data: counters, pointers, text and zero runs, different per page, with a
/// page repeated now and then (so duplicates across holes are exercised too).
fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for page in 0..len / 4096 {
        if page % 7 == 3 {
            out.extend_from_slice(&[0u8; 4096]);
            continue;
        }
        if page % 11 == 5 {
            let from = out.len() - 4096 * 2;
            out.extend_from_within(from..from + 4096);
            continue;
        }
        for word in 0..512u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let w = match word % 4 {
                0 => 0xffff_8880_0000_0000 | (x & 0xff_fff8),
                1 => word + page as u64,
                2 => u64::from_le_bytes(*b"hde sparse "[..8].first_chunk().unwrap()),
                _ => x,
            };
            out.extend_from_slice(&w.to_le_bytes());
        }
    }
    out
}

/// The data ranges of `file` (of length `len`), by `SEEK_DATA`/`SEEK_HOLE`.
fn data_ranges(file: &File, len: u64) -> Vec<(u64, u64)> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut at = 0i64;
    while (at as u64) < len {
        // SAFETY: lseek on a descriptor this function borrows.
        let start = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
        if start < 0 {
            break;
        }
        // SAFETY: as above.
        let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
        out.push((start as u64, end as u64));
        at = end;
    }
    out
}

/// Peak resident set of the largest child waited for so far, bytes.
fn children_peak() -> u64 {
    // SAFETY: getrusage writes the struct it is given and keeps nothing.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `usage` is a valid, writable rusage.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    assert_eq!(rc, 0);
    u64::try_from(usage.ru_maxrss).unwrap() * 1024
}

/// Whether `dir`'s file system keeps holes (tmpfs, ext4, xfs, btrfs do).
fn keeps_holes(dir: &Path) -> bool {
    let probe = dir.join("probe");
    let f = File::create(&probe).unwrap();
    f.set_len(GIB).unwrap();
    f.write_all_at(b"x", GIB / 2).unwrap();
    let sparse = f.metadata().unwrap().blocks() * 512 < GIB / 2 && data_ranges(&f, GIB).len() == 1;
    drop(f);
    let _ = fs::remove_file(probe);
    sparse
}

#[test]
fn a_64_gib_sparse_image_round_trips_in_bounded_memory() {
    let dir = common::tmp("sparse", "64g");
    if !keeps_holes(&dir) {
        eprintln!("SKIPPED: {} does not keep holes in files (SEEK_DATA finds none)", dir.display());
        return;
    }
    let image = dir.join("disk.raw");
    let f = File::create(&image).unwrap();
    f.set_len(IMAGE).unwrap();
    // Data at the start, across a segment boundary at an odd page, deep inside, and at the end.
    let places = [0, 17 * GIB - 8 * 4096, 40 * GIB + 12 * 4096, IMAGE - (4 << 20)];
    for (i, &at) in places.iter().enumerate() {
        f.write_all_at(&data(i as u64 + 1, 4 << 20), at).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);

    let frame = dir.join("disk.hde");
    ok(&hde(&["encode", "--mode", "datacenter", "-o", s(&frame), s(&image)]), "encode");
    let encode_peak = children_peak();
    let frame_len = fs::metadata(&frame).unwrap().len();
    assert!(frame_len < 32 << 20, "a frame of {frame_len} bytes for 16 MiB of data");

    let out = dir.join("out.raw");
    ok(&hde(&["decode", "-o", s(&out), s(&frame)]), "decode");
    let peak = children_peak();

    // Equal: same length, and the same bytes wherever either file has data (a hole in both
    // reads as zeros in both).
    let (a, b) = (File::open(&image).unwrap(), File::open(&out).unwrap());
    assert_eq!(b.metadata().unwrap().len(), IMAGE);
    let mut ranges = data_ranges(&a, IMAGE);
    ranges.extend(data_ranges(&b, IMAGE));
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut compared = 0;
    for (start, end) in ranges {
        let mut at = start;
        while at < end {
            let n = (end - at).min(1 << 20) as usize;
            a.read_exact_at(&mut x[..n], at).unwrap();
            b.read_exact_at(&mut y[..n], at).unwrap();
            assert!(x[..n] == y[..n], "the images differ in the 1 MiB at {at}");
            at += n as u64;
            compared += n as u64;
        }
    }
    assert!(compared >= 16 << 20, "compared only {compared} bytes");
    // The decoder left the holes as holes.
    let allocated = b.metadata().unwrap().blocks() * 512;
    assert!(allocated < 64 << 20, "the decoded image takes {allocated} bytes of disk");
    eprintln!(
        "64 GiB sparse image: frame {frame_len} bytes; peak resident: encode {} MiB, encode or decode {} MiB",
        encode_peak >> 20,
        peak >> 20
    );
    assert!(encode_peak < MEMORY_BOUND && peak < MEMORY_BOUND, "peak resident {peak} bytes");
    let _ = fs::remove_dir_all(&dir);
}
