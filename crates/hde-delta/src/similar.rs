//! Resemblance of pages: which baseline page is most like a new one, wherever it lies.
//!
//! A baseline that is not the key's own last round (another VM's image, a `--base` file) has
//! its similar pages at other offsets: the same library mapped elsewhere, kernel text relocated
//! by a few pointers, page-cache pages of one file in other frames. Exact copies are found by
//! the page-hash index; near copies by these features. A page's features are the eight
//! smallest values of a mixing hash over its distinct non-zero aligned 8-byte words (a
//! bottom-k min-hash sketch): two pages that share most of their words share each feature with
//! probability about their Jaccard similarity. The baseline page that shares the most features
//! with a new page (ties broken by the words they hold at the same offsets) is the new page's
//! compression reference. Aligned words suit memory: pointers, counters
//! and struct fields sit at 8-byte offsets, so content moved within a page by a multiple of 8
//! keeps its features.
//!
//! The cost is one multiply per word, a few compares, and a hash-map lookup per feature: far
//! less than the compression it saves (measured in `docs/BENCHMARKS.md`).

use std::collections::HashMap;

/// Features per page.
const FEATURES: usize = 8;
/// Pages with fewer distinct non-zero words than this have no features (they compress well
/// on their own, and a sketch of a few words matches too much).
const MIN_WORDS: usize = 16;
/// Votes a candidate needs.
const MIN_VOTES: u8 = 1;

fn mix(w: u64) -> u64 {
    // The splitmix64 finalizer: every input bit moves every output bit.
    let mut z = w ^ (w >> 30);
    z = z.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z ^= z >> 27;
    z = z.wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The features of `page`, or `None` if it has too few words to tell.
pub(crate) fn features(page: &[u8]) -> Option<[u64; FEATURES]> {
    let mut low = [u64::MAX; FEATURES];
    let mut words = 0usize;
    for chunk in page.chunks_exact(8) {
        let w = u64::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7]]);
        if w == 0 {
            continue;
        }
        words += 1;
        let h = mix(w);
        if h >= low[FEATURES - 1] || low.contains(&h) {
            continue;
        }
        // Insert in order, dropping the largest.
        let mut i = FEATURES - 1;
        while i > 0 && low[i - 1] > h {
            low[i] = low[i - 1];
            i -= 1;
        }
        low[i] = h;
    }
    // Distinct words at least MIN_WORDS is what matters; the count of non-zero words is a
    // cheap bound, and a page of one repeated word has its other features at MAX.
    (words >= MIN_WORDS && low[FEATURES - 1] != u64::MAX).then_some(low)
}

/// How alike two pages are: the aligned words they have in common at the same offsets
/// (a tie-break between candidates that share as many features).
pub(crate) fn alike(a: &[u8], b: &[u8]) -> usize {
    a.chunks_exact(8).zip(b.chunks_exact(8)).filter(|(x, y)| x == y).count()
}

/// Feature -> a baseline page that has it.
#[derive(Debug, Clone, Default)]
pub(crate) struct SimIndex {
    map: HashMap<u64, u32>,
}

impl SimIndex {
    /// Indexes the pages of `data` (pages of `page_size`, the last possibly short, which is
    /// left out), on `threads` threads.
    pub(crate) fn build(data: &[u8], page_size: usize, threads: usize) -> Self {
        let pages = data.len() / page_size;
        let per_part = pages.div_ceil(threads.max(1) * 4).max(1);
        let parts = pages.div_ceil(per_part);
        let found = crate::par::map(threads, parts, |part| {
            let first = part * per_part;
            let last = (first + per_part).min(pages);
            (first..last)
                .filter_map(|p| features(&data[p * page_size..(p + 1) * page_size]).map(|f| (p as u32, f)))
                .collect::<Vec<_>>()
        });
        let mut map = HashMap::with_capacity(pages * FEATURES);
        for (p, f) in found.into_iter().flatten() {
            for v in f {
                map.entry(v).or_insert(p);
            }
        }
        SimIndex { map }
    }

    /// The baseline pages that share features with `page`, with their votes (at most
    /// [`FEATURES`] of them; none if `page` has too few words to tell).
    pub(crate) fn candidates(&self, page: &[u8]) -> impl Iterator<Item = (u32, u8)> {
        let mut votes: [(u32, u8); FEATURES] = [(u32::MAX, 0); FEATURES];
        if let Some(f) = features(page) {
            for v in f {
                let Some(&p) = self.map.get(&v) else { continue };
                if let Some(slot) = votes.iter_mut().find(|(q, n)| *q == p || *n == 0) {
                    slot.0 = p;
                    slot.1 += 1;
                }
            }
        }
        votes.into_iter().filter(|&(_, n)| n >= MIN_VOTES)
    }

    /// Bytes held, roughly (for the baseline's memory account).
    pub(crate) fn memory(&self) -> usize {
        self.map.capacity() * (8 + 4 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(seed: u64) -> Vec<u8> {
        (0..512u64).flat_map(|i| mix(seed * 1000 + i).to_le_bytes()).collect()
    }

    fn best(index: &SimIndex, page: &[u8], base: &[u8]) -> Option<u32> {
        index
            .candidates(page)
            .max_by_key(|&(q, n)| (n, alike(page, &base[q as usize * 4096..][..4096])))
            .map(|(q, _)| q)
    }

    #[test]
    fn a_page_with_a_few_changed_words_is_found_elsewhere() {
        let mut base = Vec::new();
        for s in 0..64 {
            base.extend(page(s));
        }
        let index = SimIndex::build(&base, 4096, 2);
        let mut new = page(17);
        for w in [3usize, 100, 333] {
            new[w * 8] ^= 0xff;
        }
        assert_eq!(best(&index, &new, &base), Some(17));
        assert_eq!(index.candidates(&page(999)).count(), 0);
    }

    #[test]
    fn sparse_pages_have_no_features() {
        let mut p = vec![0u8; 4096];
        p[8] = 1;
        assert!(features(&p).is_none());
        assert!(features(&[7u8; 4096]).is_none());
    }
}
