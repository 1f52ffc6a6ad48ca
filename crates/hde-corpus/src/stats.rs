//! Page statistics of an image and of a pair of rounds: the figures of the design brief §1.

use std::collections::HashMap;

/// Page counts of one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImageStats {
    /// Pages in the image (a short tail counts as a page).
    pub pages: usize,
    /// All-zero pages.
    pub zero: usize,
    /// Non-zero pages equal to an earlier page of the same image.
    pub duplicate: usize,
}

/// How a round differs from the one before.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoundStats {
    /// Pages compared.
    pub pages: usize,
    /// Pages with at least one differing byte.
    pub changed: usize,
    /// Changed pages by differing bytes: `<= 8`, `9..=32`, `33..=128`, `129..page/2`,
    /// `>= page/2` (mostly or fully rewritten).
    pub buckets: [usize; 5],
    /// Median differing bytes of a changed page.
    pub median_diff: usize,
    /// Mean differing bytes of a changed page.
    pub mean_diff: usize,
}

/// Counts zero and duplicate pages.
pub fn image_stats(image: &[u8], page_size: usize) -> ImageStats {
    let mut stats = ImageStats::default();
    let mut seen: HashMap<&[u8], ()> = HashMap::new();
    for page in image.chunks(page_size.max(1)) {
        stats.pages += 1;
        if page.iter().all(|&b| b == 0) {
            stats.zero += 1;
        } else if seen.insert(page, ()).is_some() {
            stats.duplicate += 1;
        }
    }
    stats
}

/// Compares two rounds page by page (over their common length).
pub fn round_stats(old: &[u8], new: &[u8], page_size: usize) -> RoundStats {
    let page_size = page_size.max(1);
    let mut diffs = Vec::new();
    let mut stats = RoundStats::default();
    for (a, b) in old.chunks(page_size).zip(new.chunks(page_size)) {
        stats.pages += 1;
        let d = a.iter().zip(b).filter(|(x, y)| x != y).count();
        if d > 0 {
            diffs.push(d);
            let bucket = match d {
                0..=8 => 0,
                9..=32 => 1,
                33..=128 => 2,
                _ if d < page_size / 2 => 3,
                _ => 4,
            };
            stats.buckets[bucket] += 1;
        }
    }
    stats.changed = diffs.len();
    if !diffs.is_empty() {
        diffs.sort_unstable();
        stats.median_diff = diffs[diffs.len() / 2];
        stats.mean_diff = diffs.iter().sum::<usize>() / diffs.len();
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{generate, CorpusConfig};

    #[test]
    fn counts_small_examples() {
        let mut image = vec![0u8; 4 * 16];
        image[16..32].fill(7);
        image[32..48].fill(7);
        image[48] = 1;
        assert_eq!(image_stats(&image, 16), ImageStats { pages: 4, zero: 1, duplicate: 1 });
        let mut next = image.clone();
        next[0] = 1;
        next[16..32].fill(9);
        let r = round_stats(&image, &next, 16);
        assert_eq!((r.changed, r.buckets, r.median_diff), (2, [1, 1, 0, 0, 0], 16));
    }

    /// The generator against the real figures of the design brief §1, with tolerance.
    #[test]
    fn generator_matches_the_model() {
        let config = CorpusConfig { size: 16 << 20, rounds: 3, ..CorpusConfig::default() };
        let rounds = generate(&config).unwrap();
        let s = image_stats(&rounds[0], 4096);
        let pct = |n: usize, of: usize| n * 100 / of;
        assert!((30..=46).contains(&pct(s.zero, s.pages)), "zero pages {s:?}");
        assert!((2..=7).contains(&pct(s.duplicate, s.pages)), "duplicate pages {s:?}");
        for pair in rounds.windows(2) {
            let r = round_stats(&pair[0], &pair[1], 4096);
            assert!((18..=26).contains(&pct(r.changed, r.pages)), "changed {r:?}");
            let small = pct(r.buckets[0], r.changed);
            let full = pct(r.buckets[4], r.changed);
            assert!((16..=32).contains(&small), "<= 8 bytes {r:?}");
            assert!((7..=20).contains(&full), "rewritten {r:?}");
            assert!((16..=64).contains(&r.median_diff), "median {r:?}");
            assert!((250..=1000).contains(&r.mean_diff), "mean {r:?}");
        }
    }
}
