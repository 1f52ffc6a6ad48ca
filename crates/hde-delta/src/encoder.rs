//! The sending side: encodes rounds against per-key baselines and keeps those baselines.

use std::collections::HashMap;
use std::time::Duration;

use crate::baseline::{index_key, Content, EncBaseline, PageCache, PageSet};
use crate::checksum::combine;
use crate::page::{get_varint, hash, is_zero, put_varint, run_encode, RunBytes};
use crate::similar::SimIndex;
use crate::{
    page_stream, par, BaselineContent, BaselineId, ClassCounts, Clock, DeltaConfig, Error, PageClass, Result,
    RoundHeader, SegmentStreams, StreamSpec, SystemClock, PAGE_LAYOUT,
};
use crate::{Image, SenderBaselines, ZeroRanges};
use hde_sync::{lock, Arc, AtomicU32, Mutex, Ordering};

/// Why a round is a keyframe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyframeReason {
    /// No baseline for the key: its first round, or it was evicted or pruned.
    NoBaseline,
    /// `max_delta_chain` deltas in a row.
    ChainLimit,
    /// The last keyframe is older than `baseline_interval`.
    Interval,
    /// The baseline was last updated longer ago than `max_baseline_age`.
    Age,
    /// The caller asked for one (e.g. the receiver lost its baseline).
    Forced,
}

/// What the encoder holds for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaselineInfo {
    /// The baseline's identity.
    pub id: BaselineId,
    /// Deltas sent since its keyframe.
    pub chain: u32,
    /// Time since that keyframe.
    pub since_keyframe: Duration,
}

/// Options of one `encode` call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Encode a keyframe whatever the policy says.
    pub force_keyframe: bool,
    /// A one-off frame: the caller will not commit the round, so the key's baseline stays as
    /// it is (e.g. a delta against a reference image that is supplied again next time, or a
    /// process that exits after one frame). Engines skip `commit` for it.
    pub detached: bool,
    /// The commit keeps the round's page hashes only, not its content: for a process that
    /// saves the baseline as hashes beside the image's file and encodes nothing more of the
    /// key (a copy of a large image saved). Later rounds in this process still find unchanged
    /// and duplicate pages, and send changed pages whole.
    pub hashes_only: bool,
    /// Parts of the image known to be zero without reading them (a sparse file's holes):
    /// their whole pages are zero pages, never read. See [`ZeroRanges`] for the contract.
    pub known_zero: Option<ZeroRanges>,
    /// The segment size of this round if it is a delta, instead of the configuration's
    /// [`delta_segment_size`](crate::DeltaConfig::delta_segment_size): larger segments let
    /// the codecs match across more pages (fewer bytes: another VM's similar pages, the
    /// image's own near copies) for more time and memory per segment in flight. A
    /// non-zero multiple of the page size, at most 1 GiB, or the round is
    /// [`Error::InvalidConfig`].
    pub delta_segment_size: Option<usize>,
}

/// Counters of an encoder since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EncoderStats {
    /// Rounds committed.
    pub rounds: u64,
    /// Of which keyframes.
    pub keyframes: u64,
    /// Of which deltas.
    pub deltas: u64,
    /// Baselines evicted by `max_baselines` or `max_memory_usage`.
    pub evictions: u64,
    /// Baselines removed by `prune`.
    pub pruned: u64,
    /// Page classes over all committed rounds.
    pub pages: ClassCounts,
    /// Baselines held now.
    pub baselines: u64,
    /// Bytes of baseline state held now.
    pub memory: u64,
}

impl EncoderStats {
    /// Share of committed rounds sent as deltas (0 when none was committed).
    pub fn delta_hit_rate(&self) -> f64 {
        if self.rounds == 0 {
            0.0
        } else {
            self.deltas as f64 / self.rounds as f64
        }
    }
}

/// One encoded round: the header and the per-page decisions, borrowing the image.
///
/// The streams of a segment are built on demand ([`Round::build`]), so the engine can build,
/// compress and write segment after segment without a second copy of the image: the round
/// itself holds a class byte and a hash per page. Dropping it without
/// [`commit`](DeltaEncoder::commit) leaves the key's baseline as it was: the right outcome when
/// the frame could not be sent.
#[derive(Debug)]
pub struct EncodedRound<'a> {
    key: String,
    header: RoundHeader,
    image: RoundImage<'a>,
    /// Pages per segment.
    per_seg: usize,
    xor_limit: usize,
    /// Scan result per page (`SCAN_*`).
    scan: Vec<u8>,
    /// Changed pages that duplicate a baseline page or an earlier page of the image.
    dup_of: HashMap<u32, (PageClass, u32)>,
    /// Per segment: unchanged, zero and duplicate pages as scanned, the rest in `literal`
    /// (split into XOR and literal as `build` decides).
    seg_counts: Vec<ClassCounts>,
    /// Per segment: XOR pages found by the last `build`, or `UNBUILT`.
    seg_xor: Vec<AtomicU32>,
    reason: Option<KeyframeReason>,
    /// The key's entry sequence when encoded (None: no entry).
    prev_seq: Option<u64>,
    base: Option<Arc<EncBaseline>>,
    /// xxh3-128 of every page of the new image (0 = zero page).
    hashes: Vec<u128>,
    /// Pages that differ from the baseline, ascending.
    changed: Vec<u32>,
    /// The commit keeps hashes only ([`EncodeOptions::hashes_only`]).
    hashes_only: bool,
    /// The key whose baseline this delta applies to, where it is another key's.
    base_key: Option<String>,
}

const UNBUILT: u32 = u32::MAX;

/// The image a round encodes: the caller's, one it owns, or a baseline with a round's dirty
/// pages laid over it ([`PageDeltaEncoder::encode_dirty`]), read page by page so that the
/// image is never copied whole.
#[derive(Debug)]
enum RoundImage<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
    Overlay(Box<Overlay<'a>>),
    /// An overlay's replaced pages without its baseline, for the commit, which reads only the
    /// pages that changed (all of them replaced ones): the baseline is then updated in place
    /// instead of copied.
    Detached {
        len: usize,
        pages: HashMap<u32, &'a [u8]>,
    },
}

/// A baseline's pages with some replaced (the caller's, borrowed): `dirty[p]` says whether
/// page `p` is in `pages`.
#[derive(Debug)]
struct Overlay<'a> {
    base: Arc<EncBaseline>,
    dirty: Vec<bool>,
    pages: HashMap<u32, &'a [u8]>,
}

impl RoundImage<'_> {
    fn len(&self) -> usize {
        match self {
            RoundImage::Borrowed(b) => b.len(),
            RoundImage::Owned(v) => v.len(),
            RoundImage::Overlay(o) => o.base.len,
            RoundImage::Detached { len, .. } => *len,
        }
    }

    /// Page `p` (the last one possibly short).
    fn page(&self, p: usize, ps: usize) -> &[u8] {
        let all: &[u8] = match self {
            RoundImage::Borrowed(b) => b,
            RoundImage::Owned(v) => v,
            RoundImage::Overlay(o) => {
                let len = page_len(o.base.len, ps, p);
                return match o.pages.get(&(p as u32)) {
                    Some(page) => page,
                    // `encode_dirty` checked that every clean page's bytes are held.
                    None => o.base.old_page(p, len).unwrap_or(&[]),
                };
            }
            RoundImage::Detached { pages, .. } => return pages.get(&(p as u32)).copied().unwrap_or(&[]),
        };
        &all[(p * ps).min(all.len())..(p * ps + ps).min(all.len())]
    }

    /// The image as one owned buffer (an overlay is laid over a copy of its baseline).
    fn into_vec(self, ps: usize) -> Result<Vec<u8>> {
        match self {
            RoundImage::Borrowed(b) => Ok(b.to_vec()),
            RoundImage::Owned(v) => Ok(v),
            RoundImage::Overlay(o) => {
                let image = RoundImage::Overlay(o);
                let mut out = crate::try_zeroed(image.len())?;
                for (p, dst) in out.chunks_mut(ps).enumerate() {
                    dst.copy_from_slice(image.page(p, ps));
                }
                Ok(out)
            }
            RoundImage::Detached { .. } => {
                Err(Error::DirtyRound { key: String::new(), reason: "internal: a detached overlay has no whole image" })
            }
        }
    }
}

impl EncodedRound<'_> {
    /// The key this round belongs to.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Why this is a keyframe, or `None` for a delta.
    pub fn keyframe_reason(&self) -> Option<KeyframeReason> {
        self.reason
    }
}

/// A round as the engine sees it: header, segment streams built on demand, references.
pub trait Round: Sync {
    /// The header (sequence, baseline identity, geometry, checksum).
    fn header(&self) -> &RoundHeader;
    /// The key whose baseline the round applies to, where it is not the round's own key (a
    /// baseline taken from another key with [`PageDeltaEncoder::fork`]); the frame names it.
    fn base_key(&self) -> Option<&str> {
        None
    }
    /// Number of segments.
    fn segment_count(&self) -> usize;
    /// The streams of every segment: what the engine stores for each and how
    /// ([`PAGE_LAYOUT`](crate::PAGE_LAYOUT) for the page hierarchy). The decoder of the same
    /// layer gives the same layout.
    fn layout(&self) -> &[StreamSpec];
    /// Builds the streams of segment `segment` into `out` (replacing what it held, one per
    /// entry of the layout). Segments may be built in any order, on any thread, and again with
    /// the same result.
    fn build(&self, segment: usize, out: &mut SegmentStreams);
    /// Appends the reference of stream `stream` of segment `segment` (a
    /// [`StreamRole::Referenced`](crate::StreamRole::Referenced) one), given the segment's
    /// built streams; the decoder rebuilds it from the streams the layout says it needs.
    /// For the page hierarchy: the old content of the `LiteralRef` pages and of the pages the
    /// `LiteralSimilar` pages name.
    fn reference(&self, segment: usize, stream: usize, streams: &SegmentStreams, out: &mut Vec<u8>);
    /// A sample of stream `stream` of a built segment and the part of `reference` that serves
    /// it, appended to `sample` and `sample_ref`, for the engine to measure what the reference
    /// is worth before it picks a codec. `false` (the default): no sample, the selector
    /// assumes.
    fn reference_sample(
        &self,
        segment: usize,
        stream: usize,
        streams: &SegmentStreams,
        reference: &[u8],
        sample: &mut Vec<u8>,
        sample_ref: &mut Vec<u8>,
    ) -> bool {
        let _ = (segment, stream, streams, reference, sample, sample_ref);
        false
    }
    /// Page counts per class; XOR and literal pages are told apart once their segment was
    /// built (an unbuilt segment counts them as literal).
    fn counts(&self) -> ClassCounts;
    /// The streams of every segment, in order (convenient in tests; the engine builds one
    /// segment at a time).
    fn segments(&self) -> Vec<SegmentStreams> {
        (0..self.segment_count())
            .map(|s| {
                let mut streams = SegmentStreams::with_count(self.layout().len());
                self.build(s, &mut streams);
                streams
            })
            .collect()
    }
}

impl Round for EncodedRound<'_> {
    fn header(&self) -> &RoundHeader {
        &self.header
    }

    fn base_key(&self) -> Option<&str> {
        self.base_key.as_deref()
    }

    fn segment_count(&self) -> usize {
        self.seg_counts.len()
    }

    fn layout(&self) -> &[StreamSpec] {
        &PAGE_LAYOUT
    }

    fn build(&self, segment: usize, out: &mut SegmentStreams) {
        out.reset(PAGE_LAYOUT.len());
        let [classes, dups, xor, literals] = out.all_mut() else { return };
        if segment >= self.segment_count() {
            return;
        }
        let ps = self.header.page_size as usize;
        let image = &self.image;
        let base = self.base.as_deref();
        let first = segment * self.per_seg;
        let last = (first + self.per_seg).min(self.scan.len());
        let mut xor_pages = 0u32;
        for p in first..last {
            let class = match self.scan[p] {
                SCAN_UNCHANGED => PageClass::Unchanged,
                SCAN_ZERO => PageClass::Zero,
                _ => {
                    // Read only here: an overlay looks each page up.
                    let page = image.page(p, ps);
                    if let Some(&(class, q)) = self.dup_of.get(&(p as u32)) {
                        put_varint(dups, u64::from(q));
                        class
                    } else {
                        let old = base.and_then(|b| b.old_page(p, page.len()));
                        if old.is_some_and(|old| run_encode(page, old, self.xor_limit, RunBytes::New, xor)) {
                            xor_pages += 1;
                            PageClass::Patch
                        } else {
                            literals.extend_from_slice(page);
                            // A baseline that is not this key's last round: the most similar
                            // page, wherever it is.
                            match base.filter(|b| b.similar.is_some()) {
                                Some(b) => match most_similar(b, page, p, old) {
                                    Some(q) if q as usize == p => PageClass::LiteralRef,
                                    Some(q) => {
                                        put_varint(dups, u64::from(q));
                                        PageClass::LiteralSimilar
                                    }
                                    None => PageClass::Literal,
                                },
                                // A zero page is no reference: the codec would only
                                // read it (a first copy of memory never sent before).
                                None if old.is_some() && base.is_some_and(|b| b.hashes.get(p) != Some(&0)) => {
                                    PageClass::LiteralRef
                                }
                                None => PageClass::Literal,
                            }
                        }
                    }
                }
            };
            classes.push(class as u8);
        }
        self.seg_xor[segment].store(xor_pages, Ordering::Relaxed);
    }

    fn reference(&self, segment: usize, stream: usize, streams: &SegmentStreams, out: &mut Vec<u8>) {
        if stream != page_stream::LITERALS {
            return;
        }
        let (classes, dups) = (streams.get(page_stream::CLASSES), streams.get(page_stream::DUPS));
        let Some(base) = &self.base else { return };
        let ps = self.header.page_size as usize;
        let first = segment * self.per_seg;
        let mut at = 0;
        for (i, &code) in classes.iter().enumerate() {
            let p = first + i;
            let len = page_len(self.header.image_len as usize, ps, p);
            let old = match PageClass::from_u8(code) {
                Some(PageClass::LiteralRef) => base.old_page(p, len),
                Some(PageClass::DupBaseline | PageClass::DupCurrent) => {
                    let _ = get_varint(dups, &mut at);
                    None
                }
                Some(PageClass::LiteralSimilar) => get_varint(dups, &mut at)
                    .ok()
                    .and_then(|q| usize::try_from(q).ok())
                    .and_then(|q| base.old_page(q, len)),
                _ => None,
            };
            if let Some(old) = old {
                out.extend_from_slice(old);
            }
        }
    }

    fn reference_sample(
        &self,
        _segment: usize,
        stream: usize,
        streams: &SegmentStreams,
        reference: &[u8],
        sample: &mut Vec<u8>,
        sample_ref: &mut Vec<u8>,
    ) -> bool {
        stream == page_stream::LITERALS
            && crate::payload::literal_sample(streams, reference, self.header.page_size as usize, sample, sample_ref)
    }

    fn counts(&self) -> ClassCounts {
        let mut total = ClassCounts::default();
        for (counts, xor) in self.seg_counts.iter().zip(&self.seg_xor) {
            let mut c = *counts;
            let xor = xor.load(Ordering::Relaxed);
            if xor != UNBUILT {
                c.xor = u64::from(xor);
                c.literal -= c.xor;
            }
            total.merge(&c);
        }
        total
    }
}

/// The reference of a literal page `page` (page `p` of the image) against a baseline with a
/// resemblance index (one that is not the key's last round): the page with the most features
/// in common, then the most words in place; or page `p` itself where that shares as many words
/// in place. `None`: no reference.
fn most_similar(base: &EncBaseline, page: &[u8], p: usize, old: Option<&[u8]>) -> Option<u32> {
    let index = base.similar.as_ref()?;
    let mut best: Option<(u8, usize, u32)> = None;
    for (q, votes) in index.candidates(page) {
        let Some(cand) = base.old_page(q as usize, page.len()) else { continue };
        let score = (votes, crate::similar::alike(page, cand), q);
        if best.is_none_or(|b| (score.0, score.1) > (b.0, b.1)) {
            best = Some(score);
        }
    }
    // The same-index page (the key's own older content, for a `--base` of the same VM) wins
    // where it shares as many words in place; another VM's page there is usually unrelated
    // and is referenced only where it shares some.
    let in_place = old.map_or(0, |old| crate::similar::alike(page, old));
    match best {
        Some((_, words, _)) if in_place >= words.max(SAME_INDEX_WORDS) => Some(p as u32),
        Some((_, _, q)) => Some(q),
        None => (in_place >= SAME_INDEX_WORDS).then_some(p as u32),
    }
}

/// Where an installed baseline comes from.
enum Origin {
    /// This key's own saved round: its pages are where they were.
    Restored,
    /// A file both sides hold (`--base`): similar pages may lie anywhere.
    File,
    /// Another key's baseline: similar pages anywhere, and rounds name that key.
    Key(String),
    /// The old content of the next round's pages at the same offsets: no search elsewhere.
    InPlace,
}

/// Words in place a same-index page of a foreign baseline must share to be a reference.
const SAME_INDEX_WORDS: usize = 32;

/// The boundary of the sending side of the delta layer.
pub trait DeltaEncoder: Send + Sync {
    /// What `encode` returns: borrows the image until committed or dropped.
    type Round<'a>: Round
    where
        Self: 'a;

    /// Encodes `image` as the next round of `key`, against its baseline unless the policy (or
    /// `options`) calls for a keyframe. The baseline does not change until `commit`.
    fn encode<'a>(&'a self, key: &str, image: &'a [u8], options: EncodeOptions) -> Result<Self::Round<'a>>;

    /// Makes the round's image the key's baseline: call it once the frame has been emitted.
    fn commit(&self, round: Self::Round<'_>) -> Result<BaselineId>;

    /// Counters since creation.
    fn stats(&self) -> EncoderStats;
}

impl<E: DeltaEncoder + ?Sized> DeltaEncoder for Arc<E> {
    type Round<'a>
        = E::Round<'a>
    where
        Self: 'a;
    fn encode<'a>(&'a self, key: &str, image: &'a [u8], options: EncodeOptions) -> Result<Self::Round<'a>> {
        (**self).encode(key, image, options)
    }
    fn commit(&self, round: Self::Round<'_>) -> Result<BaselineId> {
        (**self).commit(round)
    }
    fn stats(&self) -> EncoderStats {
        (**self).stats()
    }
}

fn page_len(image_len: usize, page_size: usize, page: usize) -> usize {
    image_len.saturating_sub(page * page_size).min(page_size)
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    /// `None` while a commit rebuilds it.
    baseline: Option<Arc<EncBaseline>>,
    chain: u32,
    keyframe_at: Duration,
    updated_at: Duration,
    last_used: u64,
    memory: u64,
}

#[derive(Debug, Default)]
struct Store {
    entries: HashMap<String, Entry>,
    next_seq: u64,
    tick: u64,
    memory: u64,
    stats: EncoderStats,
}

/// The default encoder: the page hierarchy of the design brief §3 against per-key baselines.
///
/// Shared by many threads: different keys encode concurrently; one key's rounds must be
/// encoded and committed in order (a commit that finds its key moved on is
/// [`Error::ConcurrentRound`]). Each `encode` also spreads its segments over
/// `config.threads` threads.
#[derive(Debug)]
pub struct PageDeltaEncoder<C: Clock = SystemClock> {
    config: DeltaConfig,
    clock: C,
    store: Mutex<Store>,
}

impl PageDeltaEncoder<SystemClock> {
    /// An encoder with the real clock.
    pub fn new(config: DeltaConfig) -> Result<Self> {
        Self::with_clock(config, SystemClock::new())
    }
}

/// Per-page result of the scan phase.
const SCAN_UNCHANGED: u8 = 0;
const SCAN_ZERO: u8 = 1;
const SCAN_CHANGED: u8 = 2;

impl<C: Clock> PageDeltaEncoder<C> {
    /// An encoder with the given clock (tests use [`ManualClock`](crate::ManualClock)).
    pub fn with_clock(config: DeltaConfig, clock: C) -> Result<Self> {
        config.validate()?;
        let store = Store { next_seq: config.first_sequence, ..Store::default() };
        Ok(PageDeltaEncoder { config, clock, store: Mutex::new(store) })
    }

    /// The configuration.
    pub fn config(&self) -> &DeltaConfig {
        &self.config
    }

    /// The baseline held for `key`, if any.
    pub fn baseline(&self, key: &str) -> Option<BaselineId> {
        lock(&self.store).entries.get(key).and_then(|e| e.baseline.as_ref().map(|b| b.id))
    }

    /// The baseline held for `key` with its delta chain length and time since its keyframe.
    pub fn baseline_info(&self, key: &str) -> Option<BaselineInfo> {
        let now = self.clock.now();
        lock(&self.store).entries.get(key).and_then(|e| {
            e.baseline.as_ref().map(|b| BaselineInfo {
                id: b.id,
                chain: e.chain,
                since_keyframe: now.saturating_sub(e.keyframe_at),
            })
        })
    }

    /// Installs `image` as `key`'s baseline `id` (restoring state saved by another process);
    /// `chain` and `since_keyframe` carry the keyframe policy over. The image is verified
    /// against `id.checksum`, and later sequences are kept above `id.seq`.
    pub fn restore(
        &self,
        key: &str,
        id: BaselineId,
        image: impl Into<Image>,
        chain: u32,
        since_keyframe: Duration,
    ) -> Result<()> {
        self.install_baseline(key, Some(id), image.into(), chain, since_keyframe, Origin::Restored).map(|_| ())
    }

    /// Installs `image` as `key`'s baseline with sequence 0 and the image's own checksum, and
    /// returns that identity: a reference image both sides already have (the previous round's
    /// file, as `zstd --patch-from` takes it). The receiver installs the same image with
    /// [`PageDeltaDecoder::install`](crate::PageDeltaDecoder::install); a delta against it is
    /// refused by a receiver whose image differs.
    ///
    /// A shared image ([`Image::shared`], e.g. a memory-mapped file) is used in place; it is
    /// copied only if a round is committed on top of it.
    pub fn install(&self, key: &str, image: impl Into<Image>) -> Result<BaselineId> {
        self.install_baseline(key, None, image.into(), 0, Duration::ZERO, Origin::File)
    }

    /// [`install`](Self::install) for a baseline whose pages are the old content of the next
    /// round's pages at the same offsets, e.g. a batch of dirty pages beside what the receiver
    /// held at their addresses (pages it holds elsewhere may follow, found as exact
    /// duplicates). No index of similar pages is built, and a changed page is compared with
    /// its own old content only: a search of the whole baseline for near copies costs more
    /// than it finds where each page's old content is already in place. The receiver installs
    /// the same image with [`PageDeltaDecoder::install`](crate::PageDeltaDecoder::install).
    pub fn install_in_place(&self, key: &str, image: impl Into<Image>) -> Result<BaselineId> {
        self.install_baseline(key, None, image.into(), 0, Duration::ZERO, Origin::InPlace)
    }

    /// Encodes a round of `key` given as the pages that changed since its baseline, for a
    /// caller that already knows them (KVM's dirty log, QEMU's migration stream): `dirty`
    /// holds (page index, new content) pairs, each exactly its page's length, in any order (a
    /// page given twice takes its last content; a page given with unchanged content costs one
    /// class byte). The round's image is the baseline's with those pages replaced; only they
    /// are compared and hashed (a round of a whole image reads and hashes every page), and
    /// the frame is the one [`encode`](DeltaEncoder::encode) makes of that image, with the
    /// same guarantees: it names the baseline, carries the image's checksum, and the baseline
    /// changes only on [`commit`](DeltaEncoder::commit). The image keeps the baseline's
    /// length.
    ///
    /// Where the policy (or `options`) calls for a keyframe the whole image is scanned as
    /// usual (the image is then made whole once). The round borrows the pages and reads the
    /// others from the baseline, so the baseline's bytes must be held: not
    /// [`BaselineContent::Bounded`], not a baseline restored from hashes alone.
    ///
    /// # Errors
    ///
    /// [`Error::DirtyRound`] where `key` has no baseline, its bytes are not held, or a page
    /// lies outside the image or has another length; [`Error::OutOfMemory`] where a keyframe
    /// is due and the image cannot be allocated.
    pub fn encode_dirty<'a>(
        &self,
        key: &str,
        dirty: &[(u64, &'a [u8])],
        options: EncodeOptions,
    ) -> Result<EncodedRound<'a>> {
        let refuse = |reason| Error::DirtyRound { key: key.to_owned(), reason };
        let base = {
            let store = lock(&self.store);
            store
                .entries
                .get(key)
                .and_then(|e| e.baseline.clone())
                .ok_or_else(|| refuse("no baseline to apply them to"))?
        };
        let (len, ps) = (base.len, base.page_size);
        let pages = len.div_ceil(ps.max(1));
        let mut mark = vec![false; pages];
        for &(p, content) in dirty {
            let p = usize::try_from(p).ok().filter(|&p| p < pages).ok_or_else(|| refuse("a page outside the image"))?;
            if content.len() != page_len(len, ps, p) {
                return Err(refuse("a page of another length than the image's page"));
            }
            mark[p] = true;
        }
        // Every clean page's bytes must be held (zero pages too): the round reads them from
        // the baseline, and a keyframe makes the image whole from them.
        for (p, &is_dirty) in mark.iter().enumerate() {
            if !is_dirty && base.old_page(p, page_len(len, ps, p)).is_none() {
                return Err(refuse("the baseline's bytes are not held"));
            }
        }
        // The last content given for a page wins.
        let pages = dirty.iter().map(|&(p, content)| (p as u32, content)).collect();
        let overlay = Overlay { base, dirty: mark, pages };
        self.encode_round(key, RoundImage::Overlay(Box::new(overlay)), options)
    }

    /// Makes a copy of `from`'s baseline `to`'s (which the receiver does likewise when a frame
    /// of `to` names `from`'s baseline): the next round of `to` is a delta against another
    /// key's image, with similar pages found wherever they lie. Returns the baseline's identity,
    /// or `None` if `from` has none with its content held.
    pub fn fork(&self, from: &str, to: &str) -> Option<BaselineId> {
        let base = lock(&self.store).entries.get(from).and_then(|e| e.baseline.clone())?;
        if !base.stale.is_empty() || from == to {
            return None;
        }
        let image = match &base.content {
            Content::Full(data) => Image::from(data.clone()),
            Content::Shared(image) => image.clone(),
            Content::Bounded(_) => return None,
        };
        self.install_baseline(to, Some(base.id), image, 0, Duration::ZERO, Origin::Key(from.to_owned())).ok()
    }

    fn install_baseline(
        &self,
        key: &str,
        expected: Option<BaselineId>,
        image: Image,
        chain: u32,
        since_keyframe: Duration,
        origin: Origin,
    ) -> Result<BaselineId> {
        let ps = self.config.page_size;
        if image.len() as u64 > self.config.max_image_size {
            return Err(Error::TooLarge {
                what: "baseline image",
                claimed: image.len() as u64,
                limit: self.config.max_image_size,
            });
        }
        let hashes = crate::checksum::page_hashes(&image, ps, self.config.threads);
        let actual = combine(&hashes);
        let id = match expected {
            Some(id) if id.checksum != actual => {
                return Err(Error::ChecksumMismatch { key: key.to_owned(), expected: id.checksum, actual });
            }
            Some(id) => id,
            None => BaselineId { seq: 0, checksum: actual },
        };
        let mut index = HashMap::new();
        for (p, &h) in hashes.iter().enumerate() {
            if h != 0 {
                index.entry(index_key(h)).or_insert(p as u32);
            }
        }
        let len = image.len();
        let similar = (matches!(origin, Origin::File | Origin::Key(_))
            && matches!(self.config.content, BaselineContent::Full))
        .then(|| SimIndex::build(&image, ps, self.config.threads));
        let origin = match origin {
            Origin::Key(k) => Some(k),
            Origin::Restored | Origin::File | Origin::InPlace => None,
        };
        let content = match self.config.content {
            BaselineContent::Full => Content::Shared(image),
            BaselineContent::Bounded { cache_bytes } => Content::Bounded(PageCache::new(cache_bytes)),
        };
        let baseline =
            EncBaseline { id, len, page_size: ps, content, hashes, index, stale: PageSet::default(), similar, origin };
        self.put_baseline(key, baseline, chain, since_keyframe);
        Ok(id)
    }

    /// Makes `baseline` `key`'s, with the keyframe policy state given.
    fn put_baseline(&self, key: &str, baseline: EncBaseline, chain: u32, since_keyframe: Duration) {
        let id = baseline.id;
        let memory = baseline.memory();
        let now = self.clock.now();
        let mut store = lock(&self.store);
        store.tick += 1;
        let tick = store.tick;
        store.next_seq = store.next_seq.max(id.seq + 1);
        let entry = Entry {
            seq: id.seq,
            baseline: Some(Arc::new(baseline)),
            chain,
            keyframe_at: now.saturating_sub(since_keyframe),
            updated_at: now,
            last_used: tick,
            memory,
        };
        if let Some(old) = store.entries.insert(key.to_owned(), entry) {
            store.memory -= old.memory;
        }
        store.memory += memory;
        self.enforce_caps(&mut store);
    }

    /// Forgets `key`'s baseline; its next round is a keyframe.
    pub fn remove(&self, key: &str) -> bool {
        let mut store = lock(&self.store);
        match store.entries.remove(key) {
            Some(e) => {
                store.memory -= e.memory;
                true
            }
            None => false,
        }
    }

    /// Removes baselines not updated for `max_baseline_age`; returns how many.
    pub fn prune(&self) -> usize {
        let now = self.clock.now();
        let age = self.config.policy.max_baseline_age;
        let mut store = lock(&self.store);
        let stale: Vec<String> = store
            .entries
            .iter()
            .filter(|(_, e)| e.baseline.is_some() && now.saturating_sub(e.updated_at) > age)
            .map(|(k, _)| k.clone())
            .collect();
        for key in &stale {
            if let Some(e) = store.entries.remove(key) {
                store.memory -= e.memory;
            }
        }
        store.stats.pruned += stale.len() as u64;
        stale.len()
    }

    fn keyframe_reason(&self, entry: Option<&Entry>, now: Duration, options: &EncodeOptions) -> Option<KeyframeReason> {
        let policy = &self.config.policy;
        let Some(entry) = entry.filter(|e| e.baseline.is_some()) else { return Some(KeyframeReason::NoBaseline) };
        if options.force_keyframe {
            Some(KeyframeReason::Forced)
        } else if entry.chain >= policy.max_delta_chain {
            Some(KeyframeReason::ChainLimit)
        } else if now.saturating_sub(entry.keyframe_at) >= policy.baseline_interval {
            Some(KeyframeReason::Interval)
        } else if now.saturating_sub(entry.updated_at) >= policy.max_baseline_age {
            Some(KeyframeReason::Age)
        } else {
            None
        }
    }

    fn encode_round<'a>(
        &self,
        key: &str,
        mut round_image: RoundImage<'a>,
        options: EncodeOptions,
    ) -> Result<EncodedRound<'a>> {
        let cfg = &self.config;
        if round_image.len() as u64 > cfg.max_image_size {
            return Err(Error::TooLarge {
                what: "image",
                claimed: round_image.len() as u64,
                limit: cfg.max_image_size,
            });
        }
        let ps = cfg.page_size;
        let now = self.clock.now();
        let (seq, prev_seq, base, reason) = {
            let mut store = lock(&self.store);
            let entry = store.entries.get(key);
            let prev_seq = entry.map(|e| e.seq);
            let reason = self.keyframe_reason(entry, now, &options);
            let base = if reason.is_none() { entry.and_then(|e| e.baseline.clone()) } else { None };
            let seq = store.next_seq;
            store.next_seq += 1;
            (seq, prev_seq, base, reason)
        };
        // Dirty pages over a baseline that is not the one encoded against (a keyframe, or a
        // baseline replaced meanwhile): the image is made whole, and scanned as any other.
        if let RoundImage::Overlay(o) = &round_image {
            if reason.is_some() || base.as_ref().map(|b| b.id) != Some(o.base.id) {
                round_image =
                    RoundImage::Owned(std::mem::replace(&mut round_image, RoundImage::Borrowed(&[])).into_vec(ps)?);
            }
        }
        let image = &round_image;
        let base_ref = base.as_deref();
        let pages = image.len().div_ceil(ps);
        let segment_size = match (reason, options.delta_segment_size) {
            (Some(_), _) => cfg.segment_size,
            (None, None) => cfg.delta_segment_size(),
            (None, Some(size)) if size > 0 && size % ps == 0 && size <= 1 << 30 => size,
            (None, Some(_)) => {
                return Err(Error::InvalidConfig {
                    what: "delta_segment_size must be a non-zero multiple of page_size, at most 1 GiB",
                })
            }
        };
        let per_seg = segment_size / ps;
        let segments = pages.div_ceil(per_seg);
        let bounded = matches!(cfg.content, BaselineContent::Bounded { .. });

        let known_zero = options.known_zero.as_ref().filter(|z| !z.ranges().is_empty());
        // A round made from dirty pages: the other pages are the baseline's, unchanged, and
        // need neither a compare nor a hash (only while that baseline is the one encoded
        // against: a keyframe, or a baseline replaced meanwhile, scans every page).
        let clean = match image {
            RoundImage::Overlay(o) => Some(&o.dirty),
            _ => None,
        };
        // Phase 1 (parallel): unchanged / zero / changed, and every page's hash, written in
        // place (zeroed memory: the pages of a hole's hashes are never touched).
        let mut hashes = vec![0u128; pages];
        let mut classes = vec![0u8; pages];
        let parts: Vec<(&mut [u8], &mut [u128])> =
            classes.chunks_mut(per_seg).zip(hashes.chunks_mut(per_seg)).collect();
        par::map_each(cfg.threads, parts, |s, (kinds, hashes)| {
            let first = s * per_seg;
            let seg_end = ((first + kinds.len()) * ps).min(image.len());
            // A segment inside one hole needs no lookup per page.
            let all_hole = known_zero.is_some_and(|z| z.covers((first * ps) as u64..seg_end as u64));
            for (i, (kind, hash_out)) in kinds.iter_mut().zip(hashes.iter_mut()).enumerate() {
                let p = first + i;
                let end = (p * ps + ps).min(image.len());
                let old_hash = base_ref.filter(|b| p < b.pages() && b.page_len(p) == end - p * ps).map(|b| b.hashes[p]);
                if let (Some(dirty), Some(h)) = (clean, old_hash) {
                    if !dirty[p] {
                        *kind = SCAN_UNCHANGED;
                        *hash_out = h;
                        continue;
                    }
                }
                if all_hole || known_zero.is_some_and(|z| z.covers((p * ps) as u64..end as u64)) {
                    // A hole: zero without reading it (reading would fill the page cache).
                    *kind = if old_hash == Some(0) { SCAN_UNCHANGED } else { SCAN_ZERO };
                    continue;
                }
                let page = image.page(p, ps);
                // Old content held: compare first (most pages are unchanged, and one pass
                // decides); zero test and hash only for what differs. Without it (bounded
                // content, a stale restored page) the hash decides.
                let old = if bounded { None } else { base_ref.and_then(|b| b.old_page(p, page.len())) };
                let same_as_old = old.is_some_and(|old| old == page);
                let (k, h) = if same_as_old {
                    (SCAN_UNCHANGED, old_hash.unwrap_or(0))
                } else if is_zero(page) {
                    if old_hash == Some(0) {
                        (SCAN_UNCHANGED, 0)
                    } else {
                        (SCAN_ZERO, 0)
                    }
                } else {
                    let h = hash(page);
                    if old.is_none() && old_hash == Some(h) {
                        (SCAN_UNCHANGED, h)
                    } else {
                        (SCAN_CHANGED, h)
                    }
                };
                *kind = k;
                if h != 0 {
                    *hash_out = h;
                }
            }
        });

        // Phase 2 (sequential, changed pages only): duplicates of the baseline or of an earlier
        // page of this image.
        let mut dup_of: HashMap<u32, (PageClass, u32)> = HashMap::new();
        let mut first_seen: HashMap<u64, u32> = HashMap::new();
        for p in 0..pages {
            if classes[p] != SCAN_CHANGED {
                continue;
            }
            let page = image.page(p, ps);
            let h = hashes[p];
            let from_base = base_ref.and_then(|b| {
                let q = *b.index.get(&index_key(h))? as usize;
                // The bytes where held; the hash for bounded content and stale pages.
                let same = match b.old_page(q, page.len()) {
                    Some(old) => old == page,
                    None => b.hashes.get(q) == Some(&h) && b.page_len(q) == page.len(),
                };
                same.then_some(q as u32)
            });
            if let Some(q) = from_base {
                dup_of.insert(p as u32, (PageClass::DupBaseline, q));
                continue;
            }
            match first_seen.get(&index_key(h)) {
                Some(&q) if image.page(q as usize, ps) == page => {
                    dup_of.insert(p as u32, (PageClass::DupCurrent, q));
                }
                Some(_) => {}
                None => {
                    first_seen.insert(index_key(h), p as u32);
                }
            }
        }

        // Per-segment counts and the changed pages; the streams are built on demand.
        let mut seg_counts = Vec::with_capacity(segments);
        let mut changed = Vec::new();
        for s in 0..segments {
            let first = s * per_seg;
            let last = (first + per_seg).min(pages);
            let mut c = ClassCounts::default();
            for (p, &kind) in classes.iter().enumerate().take(last).skip(first) {
                match kind {
                    SCAN_UNCHANGED => c.unchanged += 1,
                    SCAN_ZERO => c.zero += 1,
                    _ if dup_of.contains_key(&(p as u32)) => c.duplicate += 1,
                    _ => c.literal += 1,
                }
                if kind != SCAN_UNCHANGED {
                    changed.push(p as u32);
                }
            }
            seg_counts.push(c);
        }
        let base_key = base.as_ref().and_then(|b| b.origin.clone());
        let header = RoundHeader {
            seq,
            base: base.as_ref().map(|b| b.id),
            image_len: image.len() as u64,
            page_size: ps as u32,
            segment_size: segment_size as u32,
            checksum: combine(&hashes),
        };
        Ok(EncodedRound {
            key: key.to_owned(),
            header,
            image: round_image,
            per_seg,
            xor_limit: cfg.xor_max_bytes,
            scan: classes,
            dup_of,
            seg_xor: (0..segments).map(|_| AtomicU32::new(UNBUILT)).collect(),
            seg_counts,
            reason,
            prev_seq,
            base,
            hashes,
            changed,
            hashes_only: options.hashes_only,
            base_key,
        })
    }

    /// Builds the baseline that results from applying `round` to its base.
    fn next_baseline(&self, old: Option<EncBaseline>, round: &mut EncodedRound<'_>) -> EncBaseline {
        let ps = self.config.page_size;
        let len = round.header.image_len as usize;
        let pages = round.hashes.len();
        let keyframe = round.header.is_keyframe();
        if round.hashes_only {
            // No bytes kept: every page is known by its hash (as `restore_hashed` makes it).
            let hashes = std::mem::take(&mut round.hashes);
            let mut stale = PageSet::default();
            let content = match self.config.content {
                BaselineContent::Full => {
                    (0..pages).for_each(|p| stale.insert(p));
                    Content::Shared(Image::from(Vec::new()))
                }
                BaselineContent::Bounded { cache_bytes } => Content::Bounded(PageCache::new(cache_bytes)),
            };
            let mut index = old.map(|b| b.index).unwrap_or_default();
            index.clear();
            for (p, &h) in hashes.iter().enumerate() {
                if h != 0 {
                    index.entry(index_key(h)).or_insert(p as u32);
                }
            }
            return EncBaseline {
                id: round.header.produces(),
                len,
                page_size: ps,
                content,
                hashes,
                index,
                stale,
                similar: None,
                origin: None,
            };
        }
        let fresh_content = || match self.config.content {
            BaselineContent::Full => Content::Full(Vec::new()),
            BaselineContent::Bounded { cache_bytes } => Content::Bounded(PageCache::new(cache_bytes)),
        };
        let (content, mut index, old_hashes, mut stale) = match old {
            Some(b) => (b.content, b.index, b.hashes, b.stale),
            None => (fresh_content(), HashMap::new(), Vec::new(), PageSet::default()),
        };

        // What the commit writes to: owned content (a shared image is copied once, here).
        enum Target {
            Full(Vec<u8>),
            Bounded(PageCache),
        }
        let mut content = match content {
            Content::Full(data) => Target::Full(data),
            Content::Shared(image) => Target::Full(image.into_vec()),
            Content::Bounded(cache) => Target::Bounded(cache),
        };
        if keyframe {
            index.clear();
        } else {
            // Drop index entries of pages that change or disappear.
            let gone = round.changed.iter().map(|&p| p as usize).chain(pages..old_hashes.len());
            for p in gone {
                if let Some(&h) = old_hashes.get(p) {
                    if index.get(&index_key(h)) == Some(&(p as u32)) {
                        index.remove(&index_key(h));
                    }
                }
            }
        }
        let mut copied_whole = false;
        if let Target::Full(data) = &mut content {
            if data.is_empty() {
                // No old content (a key's first round): one copy of the image, instead of
                // zero-filling a buffer and copying into it page by page.
                *data = match std::mem::replace(&mut round.image, RoundImage::Borrowed(&[])) {
                    RoundImage::Borrowed(b) => b.to_vec(),
                    RoundImage::Owned(v) => v,
                    // An overlay's baseline holds every page (`encode_dirty` checks it), so
                    // its content is empty only for an empty image.
                    overlay => overlay.into_vec(ps).unwrap_or_default(),
                };
                copied_whole = true;
            }
        }
        if copied_whole || keyframe {
            // Every page's content is the round's (a keyframe rewrites them all below).
            stale.clear();
        }
        match &mut content {
            Target::Full(data) => data.resize(len, 0),
            Target::Bounded(cache) => {
                for p in pages..old_hashes.len() {
                    cache.remove(p as u32);
                }
            }
        }
        for &p in &round.changed {
            let p = p as usize;
            stale.remove(p);
            let plen = page_len(len, ps, p);
            let zero = round.hashes[p] == 0;
            let new = if zero { None } else { Some(round.image.page(p, ps)).filter(|b| b.len() == plen) };
            match &mut content {
                Target::Full(_) if copied_whole => {}
                Target::Full(data) => {
                    let dst = &mut data[p * ps..p * ps + plen];
                    match new {
                        Some(src) => dst.copy_from_slice(src),
                        None => dst.fill(0),
                    }
                }
                Target::Bounded(cache) => match new {
                    Some(src) => cache.insert(p as u32, src),
                    None => cache.remove(p as u32),
                },
            }
        }
        let indexed: Box<dyn Iterator<Item = usize>> =
            if keyframe { Box::new(0..pages) } else { Box::new(round.changed.iter().map(|&p| p as usize)) };
        for p in indexed {
            let h = round.hashes[p];
            if h != 0 {
                index.entry(index_key(h)).or_insert(p as u32);
            }
        }
        EncBaseline {
            id: round.header.produces(),
            len,
            page_size: ps,
            content: match content {
                Target::Full(data) => Content::Full(data),
                Target::Bounded(cache) => Content::Bounded(cache),
            },
            hashes: std::mem::take(&mut round.hashes),
            index,
            stale,
            similar: None,
            origin: None,
        }
    }

    fn commit_round(&self, mut round: EncodedRound<'_>) -> Result<BaselineId> {
        let key = round.key.clone();
        // Take the key's baseline out of the store (so a racing commit fails), build the new
        // one without holding the lock, then put it back.
        let taken = {
            let mut guard = lock(&self.store);
            let store = &mut *guard;
            let current = store.entries.get(&key).map(|e| e.seq);
            if current.is_some() && current != round.prev_seq {
                return Err(Error::ConcurrentRound { key });
            }
            match store.entries.get_mut(&key) {
                Some(e) => {
                    e.seq = round.header.seq;
                    store.memory -= e.memory;
                    e.memory = 0;
                    e.baseline.take()
                }
                None => None,
            }
        };
        let base = round.base.take();
        // An overlay holds the baseline too: keep only its replaced pages, so that the
        // baseline's buffers below are reused in place instead of copied whole.
        if let RoundImage::Overlay(o) = &mut round.image {
            let (len, pages) = (o.base.len, std::mem::take(&mut o.pages));
            round.image = RoundImage::Detached { len, pages };
        }
        // Reuse the old baseline's buffers when nobody else holds them (the common case).
        let old = match (base, taken) {
            (Some(b), taken) => {
                drop(taken);
                Some(Arc::try_unwrap(b).unwrap_or_else(|shared| (*shared).clone()))
            }
            (None, Some(t)) => Some(Arc::try_unwrap(t).unwrap_or_else(|shared| (*shared).clone())),
            (None, None) => None,
        };
        let next = self.next_baseline(old, &mut round);
        let id = next.id;
        let memory = next.memory();
        let now = self.clock.now();
        let mut store = lock(&self.store);
        store.tick += 1;
        let tick = store.tick;
        let keyframe = round.header.is_keyframe();
        let previous = store.entries.get(&key);
        if previous.is_some_and(|e| e.seq != round.header.seq) {
            // Removed and re-created while we built: the newer state wins.
            return Err(Error::ConcurrentRound { key });
        }
        let chain = if keyframe { 0 } else { previous.map_or(0, |e| e.chain) + 1 };
        let keyframe_at = if keyframe { now } else { previous.map_or(now, |e| e.keyframe_at) };
        store.entries.insert(
            key.clone(),
            Entry {
                seq: id.seq,
                baseline: Some(Arc::new(next)),
                chain,
                keyframe_at,
                updated_at: now,
                last_used: tick,
                memory,
            },
        );
        store.memory += memory;
        store.stats.rounds += 1;
        if keyframe {
            store.stats.keyframes += 1;
        } else {
            store.stats.deltas += 1;
        }
        store.stats.pages.merge(&round.counts());
        self.enforce_caps(&mut store);
        Ok(id)
    }

    /// Evicts least recently used baselines until both caps hold.
    fn enforce_caps(&self, store: &mut Store) {
        let policy = &self.config.policy;
        while store.entries.len() > policy.max_baselines || store.memory > policy.max_memory_usage {
            let victim = store.entries.iter().min_by_key(|(_, e)| e.last_used).map(|(k, _)| k.clone());
            let Some(victim) = victim else { break };
            if let Some(e) = store.entries.remove(&victim) {
                store.memory -= e.memory;
                store.stats.evictions += 1;
            }
        }
    }
}

/// Saved as page hashes and the path of the input: no copy of the image.
impl<C: Clock> SenderBaselines for PageDeltaEncoder<C> {
    fn baseline_info(&self, key: &str) -> Option<BaselineInfo> {
        PageDeltaEncoder::baseline_info(self, key)
    }

    fn restore_image(
        &self,
        key: &str,
        id: BaselineId,
        image: Image,
        chain: u32,
        since_keyframe: Duration,
    ) -> Result<()> {
        self.restore(key, id, image, chain, since_keyframe)
    }

    /// Installs `key`'s baseline `id` from its page hashes (restoring state saved by another
    /// process without a copy of the image), with `content` as the bytes where it still holds
    /// them: every page of `content` is checked against its hash, and a page that differs (the
    /// file changed since, or `content` is `None` or of another length) is known by its hash
    /// alone. Such pages are still recognised when unchanged; when they change they are sent
    /// whole instead of as a patch. Returns how many pages did not verify.
    ///
    /// `hashes` must be what [`baseline_hashes`](SenderBaselines::baseline_hashes) gave for an image of
    /// `len` bytes, and combine to `id.checksum`.
    fn restore_hashed(
        &self,
        key: &str,
        id: BaselineId,
        len: u64,
        hashes: Vec<u128>,
        content: Option<Image>,
        chain: u32,
        since_keyframe: Duration,
    ) -> Result<usize> {
        let ps = self.config.page_size;
        if len > self.config.max_image_size {
            return Err(Error::TooLarge { what: "baseline image", claimed: len, limit: self.config.max_image_size });
        }
        let len = usize::try_from(len).map_err(|_| Error::TooLarge {
            what: "baseline image",
            claimed: len,
            limit: usize::MAX as u64,
        })?;
        if hashes.len() != len.div_ceil(ps) {
            return Err(Error::Corrupt { reason: "page hashes do not cover the baseline image" });
        }
        let actual = combine(&hashes);
        if actual != id.checksum {
            return Err(Error::ChecksumMismatch { key: key.to_owned(), expected: id.checksum, actual });
        }
        let content = content.filter(|c| c.len() == len);
        let mut stale = PageSet::default();
        match &content {
            Some(image) => {
                let held = crate::checksum::page_hashes(image, ps, self.config.threads);
                for (p, (h, want)) in held.iter().zip(&hashes).enumerate() {
                    if h != want {
                        stale.insert(p);
                    }
                }
            }
            None => (0..hashes.len()).for_each(|p| stale.insert(p)),
        }
        let stale_pages = stale.len();
        let content = match (self.config.content, content) {
            (BaselineContent::Full, Some(image)) => Content::Shared(image),
            // No bytes: an empty shared image, every page stale; the next commit copies the
            // round's image whole.
            (BaselineContent::Full, None) => Content::Shared(Image::from(Vec::new())),
            (BaselineContent::Bounded { cache_bytes }, _) => {
                stale.clear();
                Content::Bounded(PageCache::new(cache_bytes))
            }
        };
        let mut index = HashMap::new();
        for (p, &h) in hashes.iter().enumerate() {
            if h != 0 {
                index.entry(index_key(h)).or_insert(p as u32);
            }
        }
        let baseline =
            EncBaseline { id, len, page_size: ps, content, hashes, index, stale, similar: None, origin: None };
        self.put_baseline(key, baseline, chain, since_keyframe);
        Ok(stale_pages)
    }

    /// The page hashes of `key`'s baseline (what [`restore_hashed`](SenderBaselines::restore_hashed)
    /// takes back), if one is held.
    fn baseline_hashes(&self, key: &str) -> Option<Vec<u128>> {
        let base = lock(&self.store).entries.get(key).and_then(|e| e.baseline.clone())?;
        Some(base.hashes.clone())
    }
}

impl<C: Clock> DeltaEncoder for PageDeltaEncoder<C> {
    type Round<'a>
        = EncodedRound<'a>
    where
        C: 'a;

    fn encode<'a>(&'a self, key: &str, image: &'a [u8], options: EncodeOptions) -> Result<EncodedRound<'a>> {
        self.encode_round(key, RoundImage::Borrowed(image), options)
    }

    fn commit(&self, round: EncodedRound<'_>) -> Result<BaselineId> {
        self.commit_round(round)
    }

    fn stats(&self) -> EncoderStats {
        let store = lock(&self.store);
        let mut stats = store.stats;
        stats.baselines = store.entries.values().filter(|e| e.baseline.is_some()).count() as u64;
        stats.memory = store.memory;
        stats
    }
}
