//! The image checksum: xxh3-64 over the xxh3-128 hashes of the pages, in order (zero pages
//! count as hash 0).
//!
//! Built from page hashes so that it costs the encoder nothing extra: an unchanged page keeps
//! the hash stored with the baseline, a changed page is hashed once anyway (duplicate index),
//! and the whole image is never read a second time. The receiver hashes the pages it rebuilt,
//! in parallel. Against accidental damage it is as strong as xxh3-64.

use xxhash_rust::xxh3::Xxh3;

use crate::page::{hash, is_zero};

/// The hash a page contributes: 0 for an all-zero page, else its xxh3-128.
pub(crate) fn page_hash(page: &[u8]) -> u128 {
    if is_zero(page) {
        0
    } else {
        hash(page)
    }
}

/// Combines page hashes, in page order, into the image checksum.
pub(crate) fn combine(page_hashes: &[u128]) -> u64 {
    let mut h = Xxh3::new();
    for chunk in page_hashes.chunks(256) {
        let mut buf = [0u8; 256 * 16];
        for (dst, ph) in buf.chunks_exact_mut(16).zip(chunk) {
            dst.copy_from_slice(&ph.to_le_bytes());
        }
        h.update(&buf[..chunk.len() * 16]);
    }
    h.digest()
}

/// The checksum of `image` with pages of `page_size` bytes, as a round header carries it.
pub fn checksum(image: &[u8], page_size: usize) -> u64 {
    combine(&page_hashes(image, page_size, 1))
}

/// The hash of every page of `image`, on up to `threads` threads.
pub(crate) fn page_hashes(image: &[u8], page_size: usize, threads: usize) -> Vec<u128> {
    let page_size = page_size.max(1);
    // 1024 pages a task: large enough to amortise, small enough to balance.
    let chunk = page_size * 1024;
    crate::par::map(threads, image.len().div_ceil(chunk), |c| {
        image[c * chunk..((c + 1) * chunk).min(image.len())].chunks(page_size).map(page_hash).collect::<Vec<_>>()
    })
    .into_iter()
    .flatten()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_sees_every_byte_and_the_order() {
        let mut image: Vec<u8> = (0..20_000u32).map(|i| (i % 253) as u8).collect();
        let base = checksum(&image, 4096);
        for i in [0, 4095, 4096, 19_999] {
            image[i] ^= 1;
            assert_ne!(checksum(&image, 4096), base, "byte {i}");
            image[i] ^= 1;
        }
        let mut swapped = image.clone();
        swapped.copy_within(0..4096, 8192);
        swapped[..4096].copy_from_slice(&image[8192..12288]);
        assert_ne!(checksum(&swapped, 4096), base);
        assert_eq!(checksum(&image, 4096), base);
        assert_ne!(checksum(&image[..19_999], 4096), base);
        assert_ne!(checksum(&[], 4096), checksum(&[0], 4096));
    }
}
