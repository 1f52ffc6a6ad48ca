//! Configuration of the delta layer: page geometry, threads, the keyframe policy and limits.

use std::time::Duration;

use crate::{Error, Result};

/// When a round must be a keyframe, when idle keys are pruned, and how much baseline memory
/// the encoder may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// A keyframe after this many consecutive deltas (bounds the damage of a lost frame and
    /// the receiver's dependency chain). Default 10.
    pub max_delta_chain: u32,
    /// A keyframe when the last one is older than this. Default 5 min.
    pub baseline_interval: Duration,
    /// A keyframe when the baseline was last updated longer ago than this (the receiver may
    /// have dropped it); also the idle time after which [`prune`](crate::PageDeltaEncoder::prune)
    /// removes a key. Default 15 min.
    pub max_baseline_age: Duration,
    /// Most keys with a baseline; the least recently used is evicted past it. Default 1024.
    pub max_baselines: usize,
    /// Most bytes of baseline state (content, hashes, index, cache) over all keys; least
    /// recently used keys are evicted past it. Default 8 GiB.
    pub max_memory_usage: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_delta_chain: 10,
            baseline_interval: Duration::from_secs(5 * 60),
            max_baseline_age: Duration::from_secs(15 * 60),
            max_baselines: 1024,
            max_memory_usage: 8 << 30,
        }
    }
}

/// What the encoder keeps of a baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BaselineContent {
    /// The whole image: unchanged pages found by comparison, every changed page can be XORed
    /// or compressed against its old version.
    #[default]
    Full,
    /// Per-page 128-bit hashes (16 B per page) plus the content of the most recently changed
    /// pages, up to `cache_bytes`: for images larger than the memory budget. Unchanged, zero
    /// and duplicate pages are still found; XOR and references only for cached pages (pages
    /// that changed recently are the ones likely to change again).
    Bounded {
        /// Most bytes of page content kept.
        cache_bytes: u64,
    },
}

/// Configuration of an encoder or decoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaConfig {
    /// Page size: a power of two from 512 B to 64 KiB. Default 4 KiB.
    pub page_size: usize,
    /// Segment size: a multiple of the page size; segments are encoded independently and in
    /// parallel. Default 4 MiB.
    pub segment_size: usize,
    /// Segments of a delta round are this many times `segment_size` (at most 1 GiB). A delta
    /// carries a fraction of the pages, so a larger segment gives its codecs a similar amount
    /// of work and more context: literals find matches in more old pages, and patch records
    /// compress as one block. Default 4 (16 MiB): on real 256 MiB rounds, internet mode, 8-10 %
    /// smaller frames than 4 MiB delta segments.
    pub delta_segment_factor: usize,
    /// Worker threads for encoding and decoding segments (1 = the calling thread only).
    pub threads: usize,
    /// A patch record (a page's changed runs) is kept only if it is at most this many bytes;
    /// larger changes go to the literal stream, compressed against the old page. Default 512:
    /// on real 256 MiB delta rounds (internet mode) 1-2 % smaller frames than 1024, and
    /// smaller than 128 or 256 too.
    pub xor_max_bytes: usize,
    /// Keyframe, pruning and memory policy (encoder side).
    pub policy: Policy,
    /// What the encoder keeps of each baseline.
    pub content: BaselineContent,
    /// Largest image accepted, in bytes: a decoder allocates nothing larger, whatever a header
    /// claims. Default 64 GiB.
    pub max_image_size: u64,
    /// First sequence number of this encoder. Sequences increase strictly over all keys and
    /// rounds, so a restarted encoder must start above its previous life: the default derives
    /// it from the wall clock (microseconds since the Unix epoch).
    pub first_sequence: u64,
}

impl Default for DeltaConfig {
    fn default() -> Self {
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let first_sequence = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2));
        DeltaConfig {
            page_size: 4096,
            segment_size: 4 << 20,
            delta_segment_factor: 4,
            threads,
            xor_max_bytes: 512,
            policy: Policy::default(),
            content: BaselineContent::Full,
            max_image_size: 64 << 30,
            first_sequence,
        }
    }
}

impl DeltaConfig {
    /// Checks every value; an encoder or decoder is only built from a valid configuration.
    pub fn validate(&self) -> Result<()> {
        let bad = |what| Err(Error::InvalidConfig { what });
        if !self.page_size.is_power_of_two() || !(512..=65536).contains(&self.page_size) {
            return bad("page_size must be a power of two from 512 to 65536");
        }
        if self.segment_size == 0 || self.segment_size % self.page_size != 0 || self.segment_size > 1 << 30 {
            return bad("segment_size must be a non-zero multiple of page_size, at most 1 GiB");
        }
        if self.delta_segment_factor == 0 || self.delta_segment_factor > 1024 {
            return bad("delta_segment_factor must be from 1 to 1024");
        }
        if self.threads == 0 || self.threads > 1024 {
            return bad("threads must be from 1 to 1024");
        }
        if self.policy.max_delta_chain == 0 {
            return bad("max_delta_chain must be at least 1");
        }
        if self.policy.max_baselines == 0 {
            return bad("max_baselines must be at least 1");
        }
        if self.max_image_size == 0 {
            return bad("max_image_size must be at least 1");
        }
        if self.first_sequence == 0 || self.first_sequence > u64::MAX / 2 {
            return bad("first_sequence must be from 1 to 2^63");
        }
        Ok(())
    }

    /// Pages per segment.
    pub fn pages_per_segment(&self) -> usize {
        self.segment_size / self.page_size
    }

    /// Bytes per segment of a delta round: `segment_size x delta_segment_factor`, capped at
    /// 1 GiB (the largest segment a decoder accepts), in whole pages.
    pub fn delta_segment_size(&self) -> usize {
        let size = self.segment_size.saturating_mul(self.delta_segment_factor).min(1 << 30);
        size - size % self.page_size.max(1)
    }
}
