//! The container the batches travel in: records of a tag byte, a little-endian `u32` length
//! and the payload.
//!
//! * `K`: the key (a VM's name) the rounds are of, first and once.
//! * `P`: a batch's pages: how many the batch has (`u32`) and how many pages the destination
//!   holds elsewhere are added to its baseline (`u32`), then all of their page numbers, each
//!   as the zigzag varint of its difference from the one before.
//! * `F`: an HDE frame: the batch's pages, one after the other, as a round against a baseline
//!   of what the destination holds at their addresses followed by the added pages (it names
//!   that baseline and carries the image's checksum, `docs/FORMAT.md`). After its `P`.
//! * `S`: a batch's skeleton: the length of the batch's bytes as rebuilt (`u32`), their xxh3-64
//!   (`u64`), and the skeleton compressed with zstd. A batch's `F` comes before its `S`.
//! * `E`: the end: the source stream's length (`u64`) and the batch count (`u64`).
//!
//! Every length is checked against its limit before anything is allocated.

use crate::{Error, Result};

/// The key.
pub const KEY: u8 = b'K';
/// A batch's page numbers.
pub const PAGES: u8 = b'P';
/// An HDE frame.
pub const FRAME: u8 = b'F';
/// A skeleton.
pub const SKELETON: u8 = b'S';
/// The end of the stream.
pub const END: u8 = b'E';
/// Bytes before a record's payload.
pub const HEAD: usize = 5;
/// The longest record (a batch of 32 MiB of pages frames well under it).
pub const MAX_RECORD: u32 = 1 << 30;
/// The longest batch a skeleton rebuilds.
pub const MAX_BATCH: u32 = 1 << 30;

/// Appends a record.
pub fn put(out: &mut Vec<u8>, tag: u8, payload: &[u8]) -> Result<()> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&n| n <= MAX_RECORD)
        .ok_or_else(|| Error::Container { what: format!("a record of {} bytes", payload.len()) })?;
    out.push(tag);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// The first whole record of `buf`: its tag and payload range, or `None` until more bytes.
pub fn take(buf: &[u8]) -> Result<Option<(u8, std::ops::Range<usize>)>> {
    if buf.len() < HEAD {
        return Ok(None);
    }
    let tag = buf[0];
    if ![KEY, PAGES, FRAME, SKELETON, END].contains(&tag) {
        return Err(Error::Container { what: format!("unknown record tag {tag:#04x}") });
    }
    let len = u32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len > MAX_RECORD {
        return Err(Error::Container { what: format!("a record of {len} bytes") });
    }
    let end = HEAD + len as usize;
    Ok((buf.len() >= end).then_some((tag, HEAD..end)))
}

/// Reads a little-endian `u64` at `at`.
pub(crate) fn u64_at(b: &[u8], at: usize) -> Result<u64> {
    let s = b.get(at..at + 8).ok_or_else(|| Error::Container { what: "a record too short".into() })?;
    let mut a = [0; 8];
    a.copy_from_slice(s);
    Ok(u64::from_le_bytes(a))
}

/// Reads a little-endian `u32` at `at`.
pub(crate) fn u32_at(b: &[u8], at: usize) -> Result<u32> {
    let s = b.get(at..at + 4).ok_or_else(|| Error::Container { what: "a record too short".into() })?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Appends page numbers as zigzag varints of their differences.
pub(crate) fn put_pages(out: &mut Vec<u8>, pages: impl Iterator<Item = u64>) {
    let mut prev = 0i64;
    for p in pages {
        let d = (p as i64).wrapping_sub(prev);
        prev = p as i64;
        let mut z = ((d << 1) ^ (d >> 63)) as u64;
        while z >= 0x80 {
            out.push((z as u8) | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
    }
}

/// Reads `n` page numbers written by [`put_pages`], each below `limit`.
pub(crate) fn get_pages(b: &[u8], n: usize, limit: u64) -> Result<Vec<u64>> {
    let bad = || Error::Container { what: "a page list that is cut short or out of range".into() };
    // Every number takes a byte at least: the count is bounded by the record.
    if n > b.len() {
        return Err(bad());
    }
    let mut out = Vec::with_capacity(n);
    let (mut at, mut prev) = (0usize, 0i64);
    for _ in 0..n {
        let mut z = 0u64;
        let mut shift = 0;
        loop {
            let byte = *b.get(at).ok_or_else(bad)?;
            at += 1;
            if shift > 63 {
                return Err(bad());
            }
            z |= u64::from(byte & 0x7f) << shift;
            shift += 7;
            if byte < 0x80 {
                break;
            }
        }
        let d = ((z >> 1) as i64) ^ -((z & 1) as i64);
        prev = prev.wrapping_add(d);
        let p = u64::try_from(prev).ok().filter(|&p| p < limit).ok_or_else(bad)?;
        out.push(p);
    }
    if at != b.len() {
        return Err(bad());
    }
    Ok(out)
}
