//! What the encoder keeps of a key's baseline: content or hashes, and a duplicate index.

use std::collections::{HashMap, VecDeque};

use crate::{BaselineId, Image};

/// Bounded content of recently changed pages (bounded-memory baselines).
#[derive(Debug, Clone, Default)]
pub(crate) struct PageCache {
    pages: HashMap<u32, (u64, Box<[u8]>)>,
    order: VecDeque<(u32, u64)>,
    bytes: u64,
    cap: u64,
    generation: u64,
}

impl PageCache {
    pub(crate) fn new(cap: u64) -> Self {
        PageCache { cap, ..PageCache::default() }
    }

    pub(crate) fn get(&self, page: usize) -> Option<&[u8]> {
        let page = u32::try_from(page).ok()?;
        self.pages.get(&page).map(|(_, c)| &c[..])
    }

    pub(crate) fn remove(&mut self, page: u32) {
        if let Some((_, old)) = self.pages.remove(&page) {
            self.bytes -= old.len() as u64;
        }
    }

    /// Keeps `content` for `page`, evicting the oldest pages beyond the cap.
    pub(crate) fn insert(&mut self, page: u32, content: &[u8]) {
        self.remove(page);
        if content.len() as u64 > self.cap {
            return;
        }
        self.generation += 1;
        self.pages.insert(page, (self.generation, content.into()));
        self.order.push_back((page, self.generation));
        self.bytes += content.len() as u64;
        while self.bytes > self.cap {
            let Some((victim, generation)) = self.order.pop_front() else { break };
            if self.pages.get(&victim).is_some_and(|(g, _)| *g == generation) {
                self.remove(victim);
            }
        }
        // Stale queue entries (pages re-inserted or removed) are dropped lazily above; keep
        // the queue from growing without bound when pages churn without eviction.
        if self.order.len() > 2 * self.pages.len() + 64 {
            let pages = &self.pages;
            self.order.retain(|(p, g)| pages.get(p).is_some_and(|(pg, _)| pg == g));
        }
    }

    pub(crate) fn memory(&self) -> u64 {
        self.bytes + (self.pages.len() as u64) * 48 + (self.order.len() as u64) * 16
    }
}

/// How the encoder holds a baseline.
#[derive(Debug, Clone)]
pub(crate) enum Content {
    /// The whole image.
    Full(Vec<u8>),
    /// The whole image, shared (installed by the caller); becomes `Full` on the first commit.
    Shared(Image),
    /// Recently changed pages only.
    Bounded(PageCache),
}

/// A key's baseline as the encoder keeps it.
#[derive(Debug, Clone)]
pub(crate) struct EncBaseline {
    pub(crate) id: BaselineId,
    pub(crate) len: usize,
    pub(crate) page_size: usize,
    pub(crate) content: Content,
    /// xxh3-128 of every page; 0 marks an all-zero page.
    pub(crate) hashes: Vec<u128>,
    /// Low 64 bits of a page hash -> a page holding that content (non-zero pages only).
    pub(crate) index: HashMap<u64, u32>,
    /// Pages whose bytes in `content` are not the baseline's (a restored image that no longer
    /// verifies there): known by hash only, never used as old content.
    pub(crate) stale: PageSet,
    /// Resemblance features of its pages, for a baseline that is not the key's own last round
    /// (installed from a file or taken from another key): its similar pages lie elsewhere.
    pub(crate) similar: Option<crate::similar::SimIndex>,
    /// The key this baseline was taken from, where it is another key's ([`fork`]): the next
    /// round names it, so the receiver takes the same baseline.
    ///
    /// [`fork`]: crate::PageDeltaEncoder::fork
    pub(crate) origin: Option<String>,
}

/// A set of page numbers (a bitmap, empty until a page is added).
#[derive(Debug, Clone, Default)]
pub(crate) struct PageSet {
    words: Vec<u64>,
    len: usize,
}

impl PageSet {
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn contains(&self, page: usize) -> bool {
        self.words.get(page / 64).is_some_and(|w| w & (1 << (page % 64)) != 0)
    }

    pub(crate) fn insert(&mut self, page: usize) {
        if page / 64 >= self.words.len() {
            self.words.resize(page / 64 + 1, 0);
        }
        let bit = 1 << (page % 64);
        if self.words[page / 64] & bit == 0 {
            self.words[page / 64] |= bit;
            self.len += 1;
        }
    }

    pub(crate) fn remove(&mut self, page: usize) {
        if let Some(w) = self.words.get_mut(page / 64) {
            let bit = 1 << (page % 64);
            if *w & bit != 0 {
                *w &= !bit;
                self.len -= 1;
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn clear(&mut self) {
        self.words.clear();
        self.len = 0;
    }

    fn memory(&self) -> u64 {
        self.words.capacity() as u64 * 8
    }
}

impl EncBaseline {
    pub(crate) fn pages(&self) -> usize {
        self.hashes.len()
    }

    pub(crate) fn page_len(&self, page: usize) -> usize {
        self.len.saturating_sub(page * self.page_size).min(self.page_size)
    }

    /// The old content of `page` if it exists with length `len` and its content is kept.
    pub(crate) fn old_page(&self, page: usize, len: usize) -> Option<&[u8]> {
        if page >= self.pages() || self.page_len(page) != len || self.stale.contains(page) {
            return None;
        }
        match &self.content {
            Content::Full(data) => data.get(page * self.page_size..page * self.page_size + len),
            Content::Shared(data) => data.get(page * self.page_size..page * self.page_size + len),
            Content::Bounded(cache) if self.hashes[page] == 0 => {
                // A zero page needs no cache entry.
                let _ = cache;
                Some(&ZEROS[..len])
            }
            Content::Bounded(cache) => cache.get(page).filter(|c| c.len() == len),
        }
    }

    /// Bytes of memory this baseline holds.
    pub(crate) fn memory(&self) -> u64 {
        let content = match &self.content {
            Content::Full(data) => data.capacity() as u64,
            Content::Shared(data) => data.len() as u64,
            Content::Bounded(cache) => cache.memory(),
        };
        // A hashbrown entry of (u64, u32) with its control byte, at its usual load.
        content
            + self.hashes.capacity() as u64 * 16
            + self.index.capacity() as u64 * 18
            + self.stale.memory()
            + self.similar.as_ref().map_or(0, |s| s.memory() as u64)
    }
}

/// Zero bytes of the largest page, to lend as the old content of zero pages.
static ZEROS: [u8; 65536] = [0; 65536];

/// Low 64 bits of a page hash: the duplicate index key.
pub(crate) fn index_key(hash: u128) -> u64 {
    hash as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_is_bounded_and_keeps_the_newest() {
        let mut cache = PageCache::new(3 * 100);
        for p in 0..10u32 {
            cache.insert(p, &[p as u8; 100]);
            assert!(cache.bytes <= 300);
        }
        assert!(cache.get(9).is_some() && cache.get(8).is_some() && cache.get(7).is_some());
        assert!(cache.get(6).is_none());
        cache.insert(7, &[1; 100]); // refresh 7: now 8 is the oldest
        cache.insert(20, &[2; 100]);
        assert!(cache.get(8).is_none());
        assert_eq!(cache.get(7), Some(&[1u8; 100][..]));
        cache.remove(7);
        assert!(cache.get(7).is_none());
        cache.insert(1, &[0; 1000]); // larger than the cap: not kept
        assert!(cache.get(1).is_none());
        for i in 0..10_000u32 {
            cache.insert(i % 2, &[3; 10]);
        }
        assert!(cache.order.len() < 200);
    }

    #[test]
    fn page_set_counts_what_it_holds() {
        let mut set = PageSet::default();
        assert!(!set.contains(5) && set.is_empty());
        set.insert(5);
        set.insert(5);
        set.insert(700);
        assert!(set.contains(5) && set.contains(700) && !set.contains(6));
        assert_eq!(set.len(), 2);
        set.remove(5);
        set.remove(5);
        set.remove(10_000);
        assert_eq!(set.len(), 1);
        set.clear();
        assert!(!set.contains(700) && set.is_empty());
    }
}
