//! Page-level primitives: zero test, strong hash, XOR + zero-run coding, varints.

use xxhash_rust::xxh3::xxh3_128;

use crate::Error;

/// True if every byte of `page` is zero.
///
/// Reads 16 bytes per step and ORs them, which the compiler vectorises: memory-bandwidth class.
#[inline]
pub fn is_zero(page: &[u8]) -> bool {
    let mut chunks = page.chunks_exact(64);
    for chunk in &mut chunks {
        let mut acc = 0u128;
        for lane in chunk.chunks_exact(16) {
            let mut b = [0u8; 16];
            b.copy_from_slice(lane);
            acc |= u128::from_ne_bytes(b);
        }
        if acc != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

/// The strong content hash of a page (xxh3-128): identifies duplicates, and unchanged pages
/// when the encoder keeps hashes instead of content.
#[inline]
pub(crate) fn hash(page: &[u8]) -> u128 {
    xxh3_128(page)
}

/// Appends `v` as an unsigned LEB128 varint.
#[inline]
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads an unsigned LEB128 varint at `*pos`, advancing it.
#[inline]
pub(crate) fn get_varint(input: &[u8], pos: &mut usize) -> Result<u64, Error> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *input.get(*pos).ok_or(Error::Corrupt { reason: "varint runs past the end of its stream" })?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            if shift == 63 && byte > 1 {
                break;
            }
            return Ok(v);
        }
    }
    Err(Error::Corrupt { reason: "varint longer than 64 bits" })
}

/// Length of the common prefix of `a` and `b`, compared 8 bytes at a time.
#[inline]
fn equal_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 8 <= n {
        let mut x = [0u8; 8];
        let mut y = [0u8; 8];
        x.copy_from_slice(&a[i..i + 8]);
        y.copy_from_slice(&b[i..i + 8]);
        let diff = u64::from_le_bytes(x) ^ u64::from_le_bytes(y);
        if diff != 0 {
            return i + (diff.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + a[i..n].iter().zip(&b[i..n]).take_while(|(x, y)| x == y).count()
}

/// How a run record carries the bytes that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunBytes {
    /// `new ^ old` (the `Xor` class of format v1 frames).
    Xor,
    /// The new bytes themselves (the `Patch` class): they compress better, because a changed
    /// pointer or counter often equals a value stored elsewhere, which its XOR does not.
    New,
}

/// Appends the difference of `new` from `old` (same length) as alternating equal runs and
/// differing runs: `equal_len, (diff_len, bytes, equal_len)*`, ending when the page is
/// covered; `bytes` as `how` says.
///
/// Gives up once the encoding would exceed `limit` bytes and returns `false`, leaving `out` as
/// it was: the caller then sends the page as a literal.
pub(crate) fn run_encode(new: &[u8], old: &[u8], limit: usize, how: RunBytes, out: &mut Vec<u8>) -> bool {
    debug_assert_eq!(new.len(), old.len());
    let start = out.len();
    let len = new.len();
    let mut pos = 0;
    loop {
        let same = equal_prefix(&new[pos..], &old[pos..]);
        put_varint(out, same as u64);
        pos += same;
        if pos == len {
            return true;
        }
        // A differing run ends at the next stretch of at least 4 equal bytes (shorter equal
        // stretches cost more as a new run header than as differing bytes).
        let mut end = pos;
        let mut equal = 0;
        while end < len {
            if new[end] == old[end] {
                equal += 1;
                if equal == 4 {
                    end -= 3;
                    break;
                }
            } else {
                equal = 0;
            }
            end += 1;
        }
        if end == len {
            end -= equal.min(end - pos - 1);
        }
        put_varint(out, (end - pos) as u64);
        match how {
            RunBytes::Xor => out.extend(new[pos..end].iter().zip(&old[pos..end]).map(|(a, b)| a ^ b)),
            RunBytes::New => out.extend_from_slice(&new[pos..end]),
        }
        pos = end;
        if out.len() - start > limit {
            out.truncate(start);
            return false;
        }
        if pos == len {
            return true;
        }
    }
}

/// Decodes one run record from `input` at `*pos` onto `page` (which holds the old content and
/// becomes the new one).
pub(crate) fn run_decode(input: &[u8], pos: &mut usize, how: RunBytes, page: &mut [u8]) -> Result<(), Error> {
    let len = page.len();
    let mut at = 0usize;
    loop {
        let zeros = get_varint(input, pos)?;
        at = usize::try_from(zeros)
            .ok()
            .and_then(|z| at.checked_add(z))
            .filter(|&a| a <= len)
            .ok_or(Error::Corrupt { reason: "XOR zero run past the end of the page" })?;
        if at == len {
            return Ok(());
        }
        let run = get_varint(input, pos)?;
        let end = usize::try_from(run)
            .ok()
            .and_then(|r| at.checked_add(r))
            .filter(|&e| e <= len && e > at)
            .ok_or(Error::Corrupt { reason: "XOR literal run empty or past the end of the page" })?;
        let bytes = input
            .get(*pos..*pos + (end - at))
            .ok_or(Error::Corrupt { reason: "XOR literal run past the end of its stream" })?;
        match how {
            RunBytes::Xor => {
                for (dst, x) in page[at..end].iter_mut().zip(bytes) {
                    *dst ^= x;
                }
            }
            RunBytes::New => page[at..end].copy_from_slice(bytes),
        }
        *pos += end - at;
        at = end;
        if at == len {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_test() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 4096]));
        for i in [0, 63, 64, 100, 4095] {
            let mut p = vec![0u8; 4096];
            p[i] = 1;
            assert!(!is_zero(&p), "{i}");
        }
        assert!(!is_zero(&[0, 0, 0, 1]));
    }

    #[test]
    fn varints() {
        let mut buf = Vec::new();
        let values = [0u64, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX];
        for v in values {
            put_varint(&mut buf, v);
        }
        let mut pos = 0;
        for v in values {
            assert_eq!(get_varint(&buf, &mut pos).unwrap(), v);
        }
        assert_eq!(pos, buf.len());
        assert!(get_varint(&[0x80], &mut 0).is_err());
        assert!(get_varint(&[0xff; 11], &mut 0).is_err());
        assert!(get_varint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02], &mut 0).is_err());
    }

    fn xor_round_trip(old: &[u8], new: &[u8]) -> usize {
        let mut lens = [0; 2];
        for (i, how) in [RunBytes::Xor, RunBytes::New].into_iter().enumerate() {
            let mut buf = Vec::new();
            assert!(run_encode(new, old, usize::MAX, how, &mut buf));
            let mut page = old.to_vec();
            let mut pos = 0;
            run_decode(&buf, &mut pos, how, &mut page).unwrap();
            assert_eq!(pos, buf.len());
            assert_eq!(page, new);
            lens[i] = buf.len();
        }
        assert_eq!(lens[0], lens[1]);
        lens[0]
    }

    #[test]
    fn equal_prefix_at_every_offset() {
        let a: Vec<u8> = (0..100u8).collect();
        for i in 0..100 {
            let mut b = a.clone();
            b[i] ^= 0x80;
            assert_eq!(equal_prefix(&a, &b), i);
        }
        assert_eq!(equal_prefix(&a, &a), 100);
        assert_eq!(equal_prefix(&a[..10], &a), 10);
    }

    #[test]
    fn xor_cases() {
        let old: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        assert_eq!(xor_round_trip(&old, &old), 2); // one zero run of 4096
        let mut new = old.clone();
        new[0] ^= 1;
        new[4095] ^= 1;
        new[2000..2008].fill(9);
        assert!(xor_round_trip(&old, &new) < 30);
        let all: Vec<u8> = old.iter().map(|b| !b).collect();
        xor_round_trip(&old, &all);
        xor_round_trip(&[1, 2, 3], &[1, 9, 3]);
        xor_round_trip(&[1, 2, 3, 4, 5, 6, 7, 8, 9], &[0, 2, 3, 4, 5, 6, 7, 8, 0]);
        xor_round_trip(&[], &[]);
    }

    #[test]
    fn xor_gives_up_over_limit() {
        let old = vec![0u8; 4096];
        let new = vec![1u8; 4096];
        let mut buf = vec![7];
        assert!(!run_encode(&new, &old, 100, RunBytes::New, &mut buf));
        assert_eq!(buf, vec![7]);
    }

    #[test]
    fn xor_decode_rejects_bad_records() {
        let mut page = vec![0u8; 16];
        for bad in [&[17u8][..], &[0, 0], &[0, 17], &[0, 4, 1, 2], &[], &[3]] {
            assert!(run_decode(bad, &mut 0, RunBytes::Xor, &mut page).is_err(), "{bad:?}");
        }
    }
}
