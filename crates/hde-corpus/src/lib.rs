//! A deterministic generator of VM-memory-like images, in successive pre-copy rounds.
//!
//! HDE's tests, benchmarks and demo need guest memory that behaves like the real thing, on
//! every machine, without booting a VM. This crate makes it from a seed: the same
//! [`CorpusConfig`] gives the same bytes everywhere, forever (the random generator is written
//! out in this crate, never taken from a dependency, and only integer arithmetic is used).
//!
//! # The model
//!
//! Modelled on measured guest RAM (design brief §1: a 256 MiB Linux guest running an app
//! server, sqlite and gzip jobs):
//!
//! * **Round 0**: runs of pages of one [`PageKind`] (real memory is allocated in runs): about
//!   37 % zero, then heap objects, machine code, text, sparse tables and high-entropy data,
//!   built from per-VM vocabularies so content repeats across distant pages as shared
//!   libraries and data types make it do. About 4.5 % of pages duplicate another page.
//! * **Later rounds**: about 22 % of pages change, in hot clusters. A changed page gets
//!   1-8 differing bytes (24 %), 9-32 (24 %), 33-128 (26 %), a rewritten span or shifted
//!   content (13 %), or is replaced whole (13 %): filled afresh, overwritten by a copy of
//!   another page (content moves), freed to zero, or swapped with another page.
//!
//! [`stats`] measures the same figures on any image pair, so a test can hold the generator to
//! the model.
//!
//! # Example
//!
//! ```
//! use hde_corpus::{generate, CorpusConfig};
//!
//! let rounds = generate(&CorpusConfig { size: 1 << 20, rounds: 2, ..CorpusConfig::default() })?;
//! assert_eq!(rounds.len(), 2);
//! let changed = rounds[0].chunks(4096).zip(rounds[1].chunks(4096)).filter(|(a, b)| a != b).count();
//! assert!(changed > 0 && changed < 256);
//! # Ok::<(), hde_corpus::Error>(())
//! ```

mod content;
#[cfg(unix)]
pub mod guest;
mod rng;
pub mod stats;

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

pub use crate::content::PageKind;
use crate::content::Vocab;
use crate::rng::Rng;

/// Errors of the corpus generator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range.
    #[error("invalid corpus configuration: {what}")]
    InvalidConfig {
        /// Which value and why.
        what: &'static str,
    },
    /// Writing a round failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorpusConfig {
    /// Image size in bytes (need not be a multiple of the page size).
    pub size: usize,
    /// Number of rounds (images) to produce.
    pub rounds: usize,
    /// The seed: same seed, same bytes.
    pub seed: u64,
    /// Page size of the model, a power of two from 512 B to 64 KiB.
    pub page_size: usize,
    /// Pages changed per round, per mille of all pages.
    pub dirty_per_mille: u64,
}

impl CorpusConfig {
    /// Largest image the generator accepts (it holds two in memory).
    pub const MAX_SIZE: usize = 64 << 30;

    /// The defaults (64 MiB, 6 rounds, seed 1, 4 KiB pages, 22 % dirty) at another size.
    pub fn with_size(size: usize) -> Self {
        CorpusConfig { size, ..CorpusConfig::default() }
    }

    fn validate(&self) -> Result<(), Error> {
        if self.size == 0 || self.size > Self::MAX_SIZE {
            return Err(Error::InvalidConfig { what: "size must be between 1 byte and 64 GiB" });
        }
        if !self.page_size.is_power_of_two() || !(512..=65536).contains(&self.page_size) {
            return Err(Error::InvalidConfig { what: "page size must be a power of two from 512 to 65536" });
        }
        if self.dirty_per_mille > 1000 {
            return Err(Error::InvalidConfig { what: "dirty fraction must be at most 1000 per mille" });
        }
        Ok(())
    }
}

impl Default for CorpusConfig {
    fn default() -> Self {
        CorpusConfig { size: 64 << 20, rounds: 6, seed: 1, page_size: 4096, dirty_per_mille: 220 }
    }
}

/// A VM's memory, advanced round by round.
#[derive(Debug, Clone)]
pub struct Corpus {
    config: CorpusConfig,
    vocab: Vocab,
    rng: Rng,
    kinds: Vec<PageKind>,
    /// The working set: pages the guest writes; the rest (code, page cache, shared copies)
    /// changes rarely.
    hot: Vec<bool>,
    image: Vec<u8>,
    previous: Vec<u8>,
    round: usize,
}

impl Corpus {
    /// Builds round 0.
    pub fn new(config: CorpusConfig) -> Result<Self, Error> {
        config.validate()?;
        let page = config.page_size;
        let pages = config.size.div_ceil(page);
        let mut root = Rng::new(config.seed);
        let vocab = Vocab::new(&mut root.fork(1), pages as u64);
        let mut layout = root.fork(2);
        let mut fill = root.fork(3);
        let mut image = vec![0u8; config.size];
        let mut kinds = Vec::with_capacity(pages);
        let mut hot = Vec::with_capacity(pages);
        while kinds.len() < pages {
            // Runs of one kind: mostly short, sometimes long (big allocations, page cache).
            let run = if layout.chance(100) { layout.range(16, 128) } else { layout.range(1, 32) };
            let kind = PageKind::pick(&mut layout);
            let is_hot = match kind {
                PageKind::Heap | PageKind::Sparse => layout.chance(700),
                PageKind::Text => layout.chance(400),
                PageKind::Code | PageKind::Random => layout.chance(100),
                PageKind::Zero => false,
            };
            for _ in 0..run.min(pages - kinds.len()) {
                kinds.push(kind);
                hot.push(is_hot);
            }
        }
        for (chunk, &kind) in image.chunks_mut(page).zip(&kinds) {
            vocab.fill(&mut fill, kind, chunk);
        }
        // About 4.5 % of pages duplicate another non-zero page (shared libraries mapped
        // twice, copied buffers, page-cache copies).
        let mut dups = root.fork(4);
        // They sit in cold memory: copies that programs keep but rarely write.
        let cold: Vec<usize> = (0..pages).filter(|&p| !hot[p]).collect();
        let sources: Vec<usize> = cold.iter().copied().filter(|&p| kinds[p] != PageKind::Zero).collect();
        if !sources.is_empty() {
            for _ in 0..pages * 45 / 1000 {
                let from = sources[dups.index(sources.len())];
                let to = cold[dups.index(cold.len())];
                copy_page(&mut image, page, from, to);
                kinds[to] = kinds[from];
            }
        }
        Ok(Corpus { previous: Vec::new(), rng: root.fork(5), config, vocab, kinds, hot, image, round: 0 })
    }

    /// The configuration this corpus was made from.
    pub fn config(&self) -> &CorpusConfig {
        &self.config
    }

    /// The current round's number (0 for the first image).
    pub fn round(&self) -> usize {
        self.round
    }

    /// The current round's image.
    pub fn image(&self) -> &[u8] {
        &self.image
    }

    /// Moves to the next round: changes about `dirty_per_mille` of the pages.
    pub fn advance(&mut self) {
        let pages = self.kinds.len();
        self.previous.clone_from(&self.image);
        let mut rng = self.rng.fork(self.round as u64);
        let target = (pages as u64 * self.config.dirty_per_mille / 1000) as usize;
        let mut dirty = vec![false; pages];
        let mut order = Vec::with_capacity(target);
        let mut attempts = 0usize;
        while order.len() < target && attempts < pages * 64 {
            attempts += 1;
            // Hot clusters: a program touches neighbouring pages of a structure together.
            let start = rng.index(pages);
            let len = rng.range(1, 16);
            #[allow(clippy::needless_range_loop)] // reason: `p` indexes three tables and is stored.
            for p in start..(start + len).min(pages) {
                // Writes go to the working set; cold memory and free (zero) pages change rarely.
                let accept = if self.hot[p] {
                    1000
                } else if self.kinds[p] == PageKind::Zero {
                    15
                } else {
                    60
                };
                if dirty[p] || !rng.chance(accept) {
                    continue;
                }
                dirty[p] = true;
                order.push(p);
                if order.len() == target {
                    break;
                }
            }
        }
        for &p in &order {
            self.mutate(&mut rng, p, &dirty);
        }
        self.round += 1;
    }

    fn mutate(&mut self, rng: &mut Rng, p: usize, dirty: &[bool]) {
        let page = self.config.page_size;
        let start = p * page;
        let end = (start + page).min(self.image.len());
        let len = end - start;
        let roll = rng.below(1000);
        let kind = self.kinds[p];
        let scale = |bytes: usize| (bytes * page / 4096).max(1);
        match roll {
            0..=239 => self.poke(rng, p, (1, 8), (1, 1)),
            240..=479 => self.poke(rng, p, (9, 32), (1, 4)),
            480..=739 => self.poke(rng, p, (33, 128), (1, 6)),
            740..=869 => {
                let span = rng.range(scale(129), len.saturating_sub(64).max(scale(129))).min(len);
                let at = rng.index(len - span + 1);
                if rng.chance(300) && kind != PageKind::Zero {
                    // Content shifts inside the page (an insert into a buffer): bytes move by a
                    // few positions, which XOR handles badly and LZ matching handles well.
                    let shift = rng.range(1, 64).min(span.saturating_sub(1)).max(1);
                    let region = &mut self.image[start + at..start + at + span];
                    region.copy_within(..span - shift, shift);
                    self.vocab.rewrite(rng, kind, &mut region[..shift]);
                } else {
                    let k = if kind == PageKind::Zero { PageKind::pick_nonzero(rng) } else { kind };
                    self.vocab.rewrite(rng, k, &mut self.image[start + at..start + at + span]);
                    self.kinds[p] = k;
                }
            }
            _ => match rng.below(1000) {
                0..=299 => {
                    let k = PageKind::pick_nonzero(rng);
                    self.vocab.fill(rng, k, &mut self.image[start..end]);
                    self.kinds[p] = k;
                }
                300..=649 => {
                    // Content moves: another page's old content lands here, as it was half of
                    // the time (a copied buffer, page cache), otherwise slightly edited.
                    let from = rng.index(self.kinds.len());
                    let from_start = from * page;
                    let from_end = (from_start + len).min(self.previous.len());
                    let n = from_end - from_start;
                    self.image[start..start + n].copy_from_slice(&self.previous[from_start..from_end]);
                    self.kinds[p] = self.kinds[from];
                    if rng.chance(500) {
                        self.poke(rng, p, (1, 16), (1, 1));
                    }
                }
                650..=849 => {
                    self.image[start..end].fill(0);
                    self.kinds[p] = PageKind::Zero;
                }
                _ => {
                    // Two pages trade places (swap-out and back in, compaction).
                    let other = rng.index(self.kinds.len());
                    if other != p && dirty[other] {
                        swap_pages(&mut self.image, page, p, other);
                        self.kinds.swap(p, other);
                    } else {
                        self.poke(rng, p, (1, 8), (1, 1));
                    }
                }
            },
        }
    }

    /// Changes a number of bytes of page `p` drawn from `bytes` (scaled to the page size) in a
    /// number of contiguous places drawn from `clusters`, each byte to a new value of the
    /// page's kind.
    fn poke(&mut self, rng: &mut Rng, p: usize, bytes: (usize, usize), clusters: (usize, usize)) {
        let page = self.config.page_size;
        let bytes = (rng.range(bytes.0, bytes.1) * page / 4096).max(1);
        let clusters = rng.range(clusters.0, clusters.1);
        let start = p * page;
        let end = (start + page).min(self.image.len());
        let region = &mut self.image[start..end];
        let text = self.kinds[p] == PageKind::Text;
        let per = bytes.div_ceil(clusters).min(region.len());
        let mut left = bytes;
        while left > 0 {
            let n = per.min(left);
            // Word-aligned like field writes, where the page allows.
            let at = (rng.index(region.len() - n + 1) & !7).min(region.len() - n);
            for b in &mut region[at..at + n] {
                *b = if text {
                    let c = b'a' + rng.below(26) as u8;
                    if c == *b {
                        c ^ 0x20
                    } else {
                        c
                    }
                } else {
                    *b ^ (1 + rng.below(255) as u8)
                };
            }
            left -= n;
        }
        if self.kinds[p] == PageKind::Zero {
            self.kinds[p] = PageKind::Sparse;
        }
    }
}

fn copy_page(image: &mut [u8], page: usize, from: usize, to: usize) {
    if from == to {
        return;
    }
    let from_start = from * page;
    let to_start = to * page;
    let n = page.min(image.len() - from_start).min(image.len() - to_start);
    image.copy_within(from_start..from_start + n, to_start);
}

fn swap_pages(image: &mut [u8], page: usize, a: usize, b: usize) {
    let (lo, hi) = (a.min(b), a.max(b));
    let n = page.min(image.len() - hi * page);
    let (left, right) = image.split_at_mut(hi * page);
    left[lo * page..lo * page + n].swap_with_slice(&mut right[..n]);
}

/// Every round of `config`, in memory.
pub fn generate(config: &CorpusConfig) -> Result<Vec<Vec<u8>>, Error> {
    let mut corpus = Corpus::new(config.clone())?;
    let mut rounds = Vec::with_capacity(config.rounds);
    for r in 0..config.rounds {
        if r > 0 {
            corpus.advance();
        }
        rounds.push(corpus.image().to_vec());
    }
    Ok(rounds)
}

/// The file name of round `round`: `snap_00.raw`, as the real-snapshot script names them.
pub fn snapshot_name(round: usize) -> String {
    format!("snap_{round:02}.raw")
}

/// Writes every round of `config` to `dir/snap_NN.raw`; returns the paths.
pub fn write_corpus(dir: &Path, config: &CorpusConfig) -> Result<Vec<PathBuf>, Error> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let mut corpus = Corpus::new(config.clone())?;
    let mut paths = Vec::with_capacity(config.rounds);
    for r in 0..config.rounds {
        if r > 0 {
            corpus.advance();
        }
        let path = dir.join(snapshot_name(r));
        let mut file = fs::File::create(&path).map_err(io(&path))?;
        file.write_all(corpus.image()).map_err(io(&path))?;
        paths.push(path);
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(seed: u64) -> CorpusConfig {
        CorpusConfig { size: 4 << 20, rounds: 3, seed, ..CorpusConfig::default() }
    }

    #[test]
    fn same_config_same_bytes() {
        let a = generate(&small(9)).unwrap();
        let b = generate(&small(9)).unwrap();
        assert_eq!(a, b);
        let c = generate(&small(10)).unwrap();
        assert_ne!(a[0], c[0]);
    }

    #[test]
    fn files_written_twice_are_identical() {
        let base = std::env::temp_dir().join(format!("hde-corpus-test-{}", std::process::id()));
        let config = CorpusConfig { size: 1 << 20, rounds: 3, seed: 5, ..CorpusConfig::default() };
        let a = write_corpus(&base.join("a"), &config).unwrap();
        let b = write_corpus(&base.join("b"), &config).unwrap();
        assert_eq!(a.len(), 3);
        for (pa, pb) in a.iter().zip(&b) {
            assert_eq!(pa.file_name().unwrap(), pb.file_name().unwrap());
            assert_eq!(fs::read(pa).unwrap(), fs::read(pb).unwrap());
        }
        assert_eq!(a[2].file_name().unwrap(), "snap_02.raw");
        let _ = fs::remove_dir_all(&base);
    }

    #[test]
    fn pinned_digest() {
        // A fingerprint of the default model. If this changes, every recorded benchmark
        // figure and golden frame built from the corpus changes meaning: do it on purpose.
        let rounds = generate(&CorpusConfig { size: 1 << 20, rounds: 2, ..CorpusConfig::default() }).unwrap();
        let fnv = |data: &[u8]| {
            data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
        };
        let got = [fnv(&rounds[0]), fnv(&rounds[1])];
        assert_eq!(got, PINNED, "corpus model changed: {got:#x?}");
    }

    const PINNED: [u64; 2] = [4406364248832079910, 438747190946159534];

    #[test]
    fn odd_sizes_and_page_sizes() {
        for (size, page_size) in [(1, 4096), (4097, 4096), (10_000, 512), (200_000, 65536)] {
            let config = CorpusConfig { size, rounds: 3, page_size, ..CorpusConfig::default() };
            let rounds = generate(&config).unwrap();
            assert!(rounds.iter().all(|r| r.len() == size));
        }
    }

    #[test]
    fn bad_configs_are_errors() {
        assert!(Corpus::new(CorpusConfig { size: 0, ..CorpusConfig::default() }).is_err());
        assert!(Corpus::new(CorpusConfig { page_size: 3000, ..CorpusConfig::default() }).is_err());
        assert!(Corpus::new(CorpusConfig { dirty_per_mille: 1001, ..CorpusConfig::default() }).is_err());
    }
}
