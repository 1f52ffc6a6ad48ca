//! The encoder and decoder: the layers composed through their traits.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use hde_codec::{CodecBank, CodecId, CodecSet, CodecSpec, ZstdParams};
use hde_delta::{
    BaselineId, ClassCounts, DeltaConfig, DeltaDecoder, DeltaEncoder, EncodeOptions, Image, PageDeltaDecoder,
    PageDeltaEncoder, Prepared, Round, SegmentStreams, StreamRole, StreamSpec,
};
use hde_selector::{Context, LearningSelector, NetworkMode, Outcome, Profile, Selector, SelectorConfig};

use crate::frame::{self, FrameHeader, FrameLimits, SegmentRecord, StreamDesc};
use crate::{pipeline, Error, Result};

/// The segment size of a delta in internet mode (ratio first): 4 times the default. The codecs
/// then match across more of the round's pages and of the reference built for them. Measured
/// on real guest RAM (256 MiB, 2 threads, internet mode): another VM's image as the baseline,
/// 18.42 MB against 19.69 MB with 16 MiB segments (`zstd -3 --patch-from`: 21.28 MB), in
/// about the same time; a 3 s pre-copy delta of the same VM 2.6 % smaller. The cost is memory
/// per segment in flight, which a delta's few changed pages keep small.
pub const INTERNET_DELTA_SEGMENT: usize = 64 << 20;

/// What encoding one round produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameSummary {
    /// The header written.
    pub header: FrameHeader,
    /// Bytes of the image.
    pub input_bytes: u64,
    /// Bytes of the frame.
    pub output_bytes: u64,
    /// Page counts of the round, as the delta layer reports them.
    pub pages: ClassCounts,
    /// Referenced streams per codec choice (`zstd-3+ref`...).
    pub codecs: Vec<(String, u64)>,
}

/// How far a frame being written has come (see [`Encoder::compress_observed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Segments written.
    pub segments: usize,
    /// Segments in the frame.
    pub of: usize,
    /// Bytes of the image those segments cover.
    pub input_bytes: u64,
    /// Bytes of the frame written so far, its header included.
    pub frame_bytes: u64,
}

/// Reads the segment records of `header`'s frame from `r` one by one and hands each to
/// `threads` workers as it arrives: decoding overlaps reading (a frame coming off a network is
/// rebuilt while its later segments are on the wire), and at most `2 x threads` records are
/// held at a time. Returns `f`'s results in segment order, or the first error (a read error or
/// a worker's); reading stops at the first error.
fn stream_segments<W, T: Send>(
    threads: usize,
    header: &FrameHeader,
    layout: &[StreamSpec],
    r: &mut impl Read,
    init: impl Fn() -> W + Sync,
    f: impl Fn(&mut W, usize, SegmentRecord) -> Result<T> + Sync,
) -> Result<(Vec<T>, Tally)> {
    let mut tally = Tally::default();
    let n = usize::try_from(header.round.segment_count())
        .map_err(|_| Error::CorruptFrame { reason: "too many segments" })?;
    let workers = threads.clamp(1, n.max(1));
    let (tx, rx) = crossbeam::channel::bounded::<(usize, SegmentRecord)>(workers);
    let slots: Vec<Mutex<Option<T>>> = (0..n).map(|_| Mutex::new(None)).collect();
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let fail = |e: Error| {
        failed.store(true, Ordering::SeqCst);
        first_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get_or_insert(e);
    };
    // A worker's panic is raised again here once the reader and the other workers stopped.
    std::thread::scope(|s| {
        for _ in 0..workers {
            let rx = rx.clone();
            let (init, f, fail, failed, slots) = (&init, &f, &fail, &failed, &slots);
            s.spawn(move || {
                let mut state = init();
                for (i, record) in rx {
                    if failed.load(Ordering::SeqCst) {
                        continue; // drain: the reader stops soon
                    }
                    match f(&mut state, i, record) {
                        Ok(v) => *slots[i].lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(v),
                        Err(e) => fail(e),
                    }
                }
            });
        }
        drop(rx);
        for index in 0..n {
            if failed.load(Ordering::SeqCst) {
                break;
            }
            let record = u32::try_from(index)
                .map_err(|_| Error::CorruptFrame { reason: "too many segments" })
                .and_then(|i| frame::read_segment(r, header, layout, i));
            match record {
                Ok(record) => {
                    tally.add(&record, layout);
                    if tx.send((index, record)).is_err() {
                        break;
                    }
                }
                Err(e) => fail(e),
            }
        }
        drop(tx);
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner) {
        return Err(e);
    }
    let results = slots
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner))
        .collect::<Option<Vec<T>>>()
        .ok_or(Error::CorruptFrame { reason: "a segment was not decoded" })?;
    Ok((results, tally))
}

/// What the segment records of one frame held: their bytes and their referenced streams' codecs.
#[derive(Debug, Default)]
struct Tally {
    bytes: u64,
    codecs: BTreeMap<String, u64>,
}

impl Tally {
    fn add(&mut self, record: &SegmentRecord, layout: &[StreamSpec]) {
        self.bytes += frame::segment_fixed(record.streams.len()) as u64 + record.data.len() as u64;
        let referenced = layout.iter().zip(&record.streams).filter(|(spec, _)| spec.role == StreamRole::Referenced);
        for (_, desc) in referenced.filter(|(_, d)| d.raw_len > 0) {
            let name = if desc.with_reference { format!("{}+ref", desc.codec) } else { desc.codec.to_string() };
            *self.codecs.entry(name).or_default() += 1;
        }
    }
}

/// What a [`Decoder`] has decoded since it was made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DecodeCounters {
    /// Frames decoded and verified.
    pub frames: u64,
    /// Of which deltas.
    pub deltas: u64,
    /// Their bytes, headers included.
    pub frame_bytes: u64,
    /// The bytes of the images they produced.
    pub image_bytes: u64,
    /// Segments per codec of their referenced stream (`zstd+ref`: against the reference; the
    /// level is not in the frame).
    pub codec_use: BTreeMap<String, u64>,
}

/// The sending side: encodes rounds of keys into frames.
///
/// Generic over the delta layer, the selector and the codec bank, with the defaults as type
/// defaults: swap one without touching the others.
#[derive(Debug)]
pub struct Encoder<D = PageDeltaEncoder, S = LearningSelector, B = CodecSet>
where
    D: DeltaEncoder,
    S: Selector,
    B: CodecBank,
{
    delta: D,
    selector: S,
    threads: usize,
    /// Cloned for every worker thread (behind a lock: a bank need not be `Sync`).
    codecs: Mutex<B>,
}

impl Encoder {
    /// An encoder with the default layers.
    pub fn new(delta: DeltaConfig, selector: SelectorConfig) -> Result<Self> {
        let threads = delta.threads;
        Ok(Encoder {
            delta: PageDeltaEncoder::new(delta)?,
            selector: LearningSelector::new(selector)
                .map_err(|e| Error::InvalidConfig { what: format!("selector: {e}") })?,
            threads,
            codecs: Mutex::new(CodecSet::new()),
        })
    }
}

impl<D: DeltaEncoder, S: Selector> Encoder<D, S> {
    /// An encoder from a delta layer and selector of the caller's choice, with the built-in
    /// codecs ([`with_codecs`](Self::with_codecs) swaps them).
    pub fn with_layers(delta: D, selector: S, threads: usize) -> Self {
        Encoder { delta, selector, threads: threads.max(1), codecs: Mutex::new(CodecSet::new()) }
    }
}

impl<D: DeltaEncoder, S: Selector, B: CodecBank> Encoder<D, S, B> {
    /// The same encoder running the codecs of `codecs` (a [`CodecSet`] with codecs of the
    /// caller's added, or a bank that wraps one); every worker thread runs a clone.
    pub fn with_codecs<C: CodecBank>(self, codecs: C) -> Encoder<D, S, C> {
        Encoder { delta: self.delta, selector: self.selector, threads: self.threads, codecs: Mutex::new(codecs) }
    }

    /// The selector (to switch modes or set the bandwidth).
    pub fn selector(&self) -> &S {
        &self.selector
    }

    /// The delta layer.
    pub fn delta(&self) -> &D {
        &self.delta
    }

    /// Encodes `image` as the next round of `key` into a new frame.
    pub fn compress(&self, key: &str, image: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.compress_to(key, image, &mut out, EncodeOptions::default())?;
        Ok(out)
    }

    /// Encodes `image` as the next round of `key`, writing the frame segment by segment to
    /// `out`. The key's baseline advances only once the whole frame was written (and not at
    /// all for a `detached` frame).
    ///
    /// Memory: besides the image, the baseline and what the delta layer keeps for the round,
    /// the streams of the few segments in flight (at most `3 * threads`): segments are built,
    /// compressed and written one after another, never all at once.
    pub fn compress_to(
        &self,
        key: &str,
        image: &[u8],
        out: &mut impl Write,
        options: EncodeOptions,
    ) -> Result<FrameSummary> {
        let detached = options.detached;
        let (summary, round) = self.compress_pending(key, image, out, options)?;
        if !detached {
            self.delta.commit(round)?;
        }
        Ok(summary)
    }

    /// [`compress_to`](Self::compress_to) without the commit: the frame is written and the
    /// round returned, uncommitted. [`commit`](Self::commit) it once the receiver confirmed
    /// it (what a session over a network does); dropped, the key's baseline stays as it was.
    pub fn compress_pending<'a>(
        &'a self,
        key: &str,
        image: &'a [u8],
        out: &mut impl Write,
        options: EncodeOptions,
    ) -> Result<(FrameSummary, D::Round<'a>)> {
        self.compress_observed(key, image, out, options, &mut |_| {})
    }

    /// [`compress_pending`](Self::compress_pending) that calls `observe` after each segment
    /// is written (for a progress display: segments done and the frame's bytes so far).
    pub fn compress_observed<'a>(
        &'a self,
        key: &str,
        image: &'a [u8],
        out: &mut impl Write,
        options: EncodeOptions,
        observe: &mut dyn FnMut(&Written),
    ) -> Result<(FrameSummary, D::Round<'a>)> {
        let mut options = options;
        if self.selector.mode() == NetworkMode::Internet {
            // Ratio first: deltas in larger segments (see INTERNET_DELTA_SEGMENT).
            options.delta_segment_size.get_or_insert(INTERNET_DELTA_SEGMENT);
        }
        let round = self.delta.encode(key, image, options)?;
        self.write_round(key, round, out, observe)
    }

    /// Compresses and writes a round the delta layer has encoded already, and returns it
    /// uncommitted with what was written: for rounds made another way than from a whole
    /// image, such as a round given as its dirty pages
    /// ([`PageDeltaEncoder::encode_dirty`](hde_delta::PageDeltaEncoder::encode_dirty), through
    /// [`delta`](Self::delta)). `observe` is called after each segment.
    pub fn write_round<'a>(
        &'a self,
        key: &str,
        round: D::Round<'a>,
        out: &mut impl Write,
        observe: &mut dyn FnMut(&Written),
    ) -> Result<(FrameSummary, D::Round<'a>)> {
        let image_len = round.header().image_len;
        let segments = round.segment_count();
        let streams = u8::try_from(round.layout().len())
            .ok()
            .filter(|_| hde_delta::check_layout(round.layout()).is_ok())
            .ok_or(Error::InvalidConfig { what: "the delta layer's stream layout".into() })?;
        let header = FrameHeader {
            key: key.to_owned(),
            round: *round.header(),
            base_key: round.base_key().map(str::to_owned),
            streams,
        };
        let head = frame::encode_header(&header)?;
        out.write_all(&head)?;
        let mut written = head.len() as u64;
        let progress = FrameProgress { written: AtomicU64::new(written), start: Instant::now() };
        let mut done = 0;
        let mut codecs: Vec<(String, u64)> = Vec::new();
        pipeline::ordered(
            self.threads,
            round.segment_count(),
            || Worker {
                codecs: bank(&self.codecs),
                streams: SegmentStreams::default(),
                reference: Vec::new(),
                sample: Vec::new(),
                sample_ref: Vec::new(),
            },
            |worker, s| {
                let (record, choice) = self.compress_segment(worker, &round, s, &progress)?;
                Ok((frame::segment_head(&record), record, choice))
            },
            |sealed: Result<_>| {
                let (head, record, choice) = sealed?;
                written += frame::write_sealed(out, &head, &record)?;
                progress.written.store(written, Ordering::Relaxed);
                done += 1;
                let input = (done as u64 * u64::from(round.header().segment_size)).min(image_len);
                observe(&Written { segments: done, of: segments, input_bytes: input, frame_bytes: written });
                if let Some(choice) = choice {
                    match codecs.iter_mut().find(|(name, _)| *name == choice) {
                        Some((_, n)) => *n += 1,
                        None => codecs.push((choice, 1)),
                    }
                }
                Ok::<(), Error>(())
            },
        )?;
        out.flush()?;
        let pages = round.counts();
        Ok((FrameSummary { header, input_bytes: image_len, output_bytes: written, pages, codecs }, round))
    }

    /// Makes a round from [`compress_pending`](Self::compress_pending) the key's baseline.
    pub fn commit(&self, round: D::Round<'_>) -> Result<BaselineId> {
        Ok(self.delta.commit(round)?)
    }

    /// Builds and compresses segment `s`'s streams as the delta layer's layout says; returns
    /// the record and the choice for its referenced stream (the literals of the page
    /// hierarchy).
    fn compress_segment(
        &self,
        worker: &mut Worker<B>,
        round: &D::Round<'_>,
        s: usize,
        progress: &FrameProgress,
    ) -> Result<(SegmentRecord, Option<String>)> {
        let Worker { codecs, streams, reference, sample, sample_ref } = worker;
        let layout = round.layout();
        round.build(s, streams);
        let mut data = Vec::new();
        let mut descs = Vec::with_capacity(layout.len());
        let page_size = round.header().page_size;
        let context = |reference: &[u8], gain: Option<u64>| Context {
            reference_len: reference.len() as u64,
            threads: self.threads as u32,
            reference_gain_permille: gain.and_then(|g| u16::try_from(g).ok()),
            frame_written: progress.written.load(Ordering::Relaxed),
            frame_elapsed: progress.start.elapsed(),
        };
        let mut chosen = None;
        for (i, spec) in layout.iter().enumerate() {
            let input = streams.get(i);
            let desc = match spec.role {
                // Small, regular: zstd-1, or raw when that is not smaller.
                StreamRole::Index => store(codecs, CodecSpec::Zstd(ZstdParams::FASTEST), input, &[], &mut data)?,
                StreamRole::Referenced if !input.is_empty() => {
                    reference.clear();
                    round.reference(s, i, streams, reference);
                    sample.clear();
                    sample_ref.clear();
                    let gain = if round.reference_sample(s, i, streams, reference, sample, sample_ref) {
                        reference_gain(codecs, sample, sample_ref)?
                    } else {
                        None
                    };
                    let cx = context(reference, gain);
                    let (desc, choice) = self.store_chosen(codecs, input, reference, cx, page_size, &mut data)?;
                    chosen = Some(if desc.codec == CodecId::Raw && choice.codec != CodecSpec::Raw {
                        "raw".to_owned()
                    } else {
                        choice.to_string()
                    });
                    desc
                }
                // Content alone (and an empty referenced stream).
                _ => self.store_chosen(codecs, input, &[], context(&[], None), page_size, &mut data)?.0,
            };
            descs.push(desc);
        }
        let index = u32::try_from(s).map_err(|_| Error::LimitExceeded {
            what: "segments of an image",
            claimed: s as u64,
            limit: u64::from(u32::MAX),
        })?;
        Ok((SegmentRecord { index, streams: descs, data }, chosen))
    }
}

impl<D: DeltaEncoder, S: Selector, B: CodecBank> Encoder<D, S, B> {
    /// Compresses `input` with the selector's choice for its profile (against `reference` if
    /// the choice says so), stores it, and tells the selector how it went.
    fn store_chosen(
        &self,
        codecs: &mut B,
        input: &[u8],
        reference: &[u8],
        context: Context,
        page_size: u32,
        data: &mut Vec<u8>,
    ) -> Result<(StreamDesc, hde_selector::Choice)> {
        let profile = Profile::of(input, page_size as usize);
        let choice = self.selector.choose(&profile, &context);
        let start = data.len();
        let t = Instant::now();
        let used: &[u8] = if choice.reference { reference } else { &[] };
        let desc = store(codecs, choice.codec, input, used, data)?;
        if !input.is_empty() {
            self.selector.observe(
                &choice,
                &Outcome {
                    input_bytes: input.len() as u64,
                    output_bytes: (data.len() - start) as u64,
                    encode: t.elapsed(),
                    decode: None,
                },
            );
        }
        Ok((desc, choice))
    }
}

/// What a reference is worth for a stream: the size of `sample` compressed with zstd-1
/// against `sample_ref` per 1000 bytes of it compressed alone (the delta layer picks the
/// sample: [`Round::reference_sample`]).
///
/// How much a reference saves varies from segment to segment (the old content of pages that
/// changed a little, or the similar pages of another image found for a few of them), more
/// than anything the stream's own profile can tell; the probe costs about 1 % of the
/// segment's compression. Public so that `cargo xtask selector-replay` gives the selector
/// what the engine gives it.
///
/// # Errors
///
/// What the codec bank returns.
pub fn reference_gain(codecs: &mut impl CodecBank, sample: &[u8], sample_ref: &[u8]) -> Result<Option<u64>> {
    if sample.is_empty() || sample_ref.is_empty() {
        return Ok(None);
    }
    let spec = CodecSpec::Zstd(ZstdParams::FASTEST);
    let mut out = Vec::new();
    codecs.compress(spec, sample, &[], &mut out)?;
    let alone = out.len().max(1) as u64;
    out.clear();
    codecs.compress(spec, sample, sample_ref, &mut out)?;
    Ok(Some(out.len() as u64 * 1000 / alone))
}

/// How far the frame being written has come: what the selector needs to know the link's
/// backlog (see [`Context::frame_written`]).
struct FrameProgress {
    written: AtomicU64,
    start: Instant,
}

/// A worker's own codec bank, cloned from the engine's.
fn bank<B: Clone>(prototype: &Mutex<B>) -> B {
    prototype.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
}

/// What an encoding worker thread keeps between segments: its codecs and buffers.
struct Worker<B> {
    codecs: B,
    streams: SegmentStreams,
    reference: Vec<u8>,
    sample: Vec<u8>,
    sample_ref: Vec<u8>,
}

/// Compresses `input` with `spec` (against `reference`), or stores it raw when that is not
/// larger; appends to `data` and describes what was stored.
fn store(
    codecs: &mut impl CodecBank,
    spec: CodecSpec,
    input: &[u8],
    reference: &[u8],
    data: &mut Vec<u8>,
) -> Result<StreamDesc> {
    let raw_len = u32::try_from(input.len()).map_err(|_| Error::LimitExceeded {
        what: "stream length",
        claimed: input.len() as u64,
        limit: u64::from(u32::MAX),
    })?;
    let start = data.len();
    let mut desc = StreamDesc {
        codec: spec.id(),
        with_reference: !reference.is_empty() && spec != CodecSpec::Raw,
        raw_len,
        stored_len: 0,
    };
    if !input.is_empty() && spec != CodecSpec::Raw {
        codecs.compress(spec, input, reference, data)?;
    }
    if input.is_empty() || spec == CodecSpec::Raw || data.len() - start >= input.len() {
        data.truncate(start);
        data.extend_from_slice(input);
        desc.codec = CodecId::Raw;
        desc.with_reference = false;
    }
    desc.stored_len = (data.len() - start) as u32;
    Ok(desc)
}

/// What [`Decoder::inspect`] found in a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameReport {
    /// The frame's header.
    pub header: FrameHeader,
    /// Bytes of the frame, header included.
    pub frame_bytes: u64,
    /// Each stream of the layout, in order.
    pub streams: Vec<StreamReport>,
    /// Page counts, from the streams that decompress without a reference.
    pub pages: ClassCounts,
}

/// One stream of the layout over all segments of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamReport {
    /// Its name in the delta layer's layout.
    pub name: &'static str,
    /// Bytes before compression.
    pub raw_bytes: u64,
    /// Bytes stored.
    pub stored_bytes: u64,
    /// Segments per codec (`zstd`, `zstd+ref`, ...).
    pub codecs: BTreeMap<String, u64>,
}

/// The receiving side: decodes frames against its own baselines.
#[derive(Debug)]
pub struct Decoder<D = PageDeltaDecoder, B = CodecSet>
where
    D: DeltaDecoder,
    B: CodecBank,
{
    delta: D,
    limits: FrameLimits,
    threads: usize,
    counters: Mutex<DecodeCounters>,
    /// Cloned for every worker thread (behind a lock: a bank need not be `Sync`).
    codecs: Mutex<B>,
}

impl Decoder {
    /// A decoder with the default delta layer.
    pub fn new(config: DeltaConfig) -> Result<Self> {
        let limits = FrameLimits { max_image: config.max_image_size };
        let threads = config.threads;
        Ok(Decoder::with_layers(PageDeltaDecoder::new(config)?, limits, threads))
    }
}

impl<D: DeltaDecoder> Decoder<D> {
    /// A decoder from a delta layer of the caller's choice, with the built-in codecs
    /// ([`with_codecs`](Self::with_codecs) swaps them).
    pub fn with_layers(delta: D, limits: FrameLimits, threads: usize) -> Self {
        Decoder {
            delta,
            limits,
            threads: threads.max(1),
            counters: Mutex::new(DecodeCounters::default()),
            codecs: Mutex::new(CodecSet::new()),
        }
    }
}

impl<D: DeltaDecoder, B: CodecBank> Decoder<D, B> {
    /// The same decoder running the codecs of `codecs` (which must decode every codec id the
    /// sender's bank writes: an id it lacks is a typed error); every worker runs a clone.
    pub fn with_codecs<C: CodecBank>(self, codecs: C) -> Decoder<D, C> {
        let counters = self.counters.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        Decoder {
            delta: self.delta,
            limits: self.limits,
            threads: self.threads,
            counters: Mutex::new(counters),
            codecs: Mutex::new(codecs),
        }
    }

    /// What this decoder has decoded and verified so far.
    pub fn counters(&self) -> DecodeCounters {
        self.counters.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Counts a frame decoded and verified.
    fn count(&self, header: &FrameHeader, tally: Tally) {
        let header_bytes = frame::encode_header(header).map_or(0, |h| h.len() as u64);
        let mut c = self.counters.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        c.frames += 1;
        c.deltas += u64::from(!header.round.is_keyframe());
        c.frame_bytes += header_bytes + tally.bytes;
        c.image_bytes += header.round.image_len;
        for (codec, n) in tally.codecs {
            *c.codec_use.entry(codec).or_default() += n;
        }
    }

    /// The delta layer (its baselines).
    pub fn delta(&self) -> &D {
        &self.delta
    }

    /// What a frame holds, without applying it (no baseline needed): its header, each
    /// stream's raw and stored bytes and codecs over all segments, and the page counts the
    /// delta layer reads from the streams that decompress alone (those stored against a
    /// reference are not opened). `frame` must start with one frame; bytes after it are left.
    pub fn inspect(&self, frame: &[u8]) -> Result<FrameReport> {
        let mut r = frame;
        let header = frame::read_header(&mut r, &self.limits)?;
        let layout = self.delta.layout();
        frame::check_layout(&header, layout)?;
        let mut codecs = bank(&self.codecs);
        let mut streams: Vec<StreamReport> = layout
            .iter()
            .map(|spec| StreamReport { name: spec.name, raw_bytes: 0, stored_bytes: 0, codecs: BTreeMap::new() })
            .collect();
        let mut pages = ClassCounts::default();
        let mut buffers = SegmentStreams::with_count(layout.len());
        for index in 0..header.round.segment_count() {
            let index = u32::try_from(index).map_err(|_| Error::CorruptFrame { reason: "too many segments" })?;
            let record = frame::read_segment(&mut r, &header, layout, index)?;
            buffers.reset(layout.len());
            for (i, (desc, report)) in record.streams.iter().zip(&mut streams).enumerate() {
                report.raw_bytes += u64::from(desc.raw_len);
                report.stored_bytes += u64::from(desc.stored_len);
                let name = if desc.with_reference { format!("{}+ref", desc.codec) } else { desc.codec.to_string() };
                *report.codecs.entry(name).or_default() += 1;
                if !desc.with_reference {
                    let buf = buffers.get_mut(i);
                    buf.resize(desc.raw_len as usize, 0);
                    codecs.decompress(desc.codec, record.stream(i), &[], buf)?;
                }
            }
            pages.merge(&self.delta.counts(&buffers));
        }
        Ok(FrameReport { header, frame_bytes: (frame.len() - r.len()) as u64, streams, pages })
    }

    /// Decodes one frame; returns its header and the image, now this decoder's baseline.
    pub fn decompress(&self, frame: &[u8]) -> Result<(FrameHeader, Image)> {
        let mut input = frame;
        let decoded = self.decompress_from(&mut input)?;
        if !input.is_empty() {
            return Err(Error::CorruptFrame { reason: "bytes after the last segment" });
        }
        Ok(decoded)
    }

    /// Reads one frame from `r` and decodes it.
    ///
    /// Segment records are decoded as they are read (see [`decompress_body`](Self::decompress_body)).
    pub fn decompress_from(&self, r: &mut impl Read) -> Result<(FrameHeader, Image)> {
        let header = frame::read_header(r, &self.limits)?;
        let image = self.decompress_body(&header, r)?;
        Ok((header, image))
    }

    /// Decodes the rest of a frame whose header was read (and checked) already: the records
    /// are read one by one, and each worker decompresses a segment into its own buffers and
    /// rebuilds it straight into its part of the new image as soon as it has been read, so
    /// at most `2 x threads` records and the decompressed streams of `threads` segments exist
    /// at a time.
    pub fn decompress_body(&self, header: &FrameHeader, r: &mut impl Read) -> Result<Image> {
        let layout = self.delta.layout();
        frame::check_layout(header, layout)?;
        let prepared =
            self.delta.prepare_from(&header.key, header.base_key.as_deref().unwrap_or(&header.key), &header.round)?;
        let len = usize::try_from(header.round.image_len)
            .map_err(|_| Error::CorruptFrame { reason: "image larger than this machine's address space" })?;
        // Bounded by the limits `read_header` and `prepare` checked; pages stay unmapped until
        // a worker writes them.
        let mut image = crate::alloc::zeroed(len)?;
        let (applied, tally) = self.rebuild(header, &prepared, r, &mut image)?;
        let image = self.delta.finish(&header.key, prepared, image, applied)?;
        self.count(header, tally);
        Ok(image)
    }

    /// Rebuilds the segments of `header`'s frame, read from `r`, into `image` (zeroed, the
    /// image's length): each worker decompresses a segment into its own buffers and rebuilds
    /// it into its part of `image` as soon as its record has been read.
    fn rebuild(
        &self,
        header: &FrameHeader,
        prepared: &D::Prepared,
        r: &mut impl Read,
        image: &mut [u8],
    ) -> Result<(Vec<D::Applied>, Tally)> {
        let layout = self.delta.layout();
        let seg_size = (header.round.segment_size as usize).max(1);
        let slots: Vec<Mutex<Option<&mut [u8]>>> = image.chunks_mut(seg_size).map(|c| Mutex::new(Some(c))).collect();
        if slots.len() as u64 != header.round.segment_count() {
            return Err(Error::CorruptFrame { reason: "segment count differs from the image's" });
        }
        let (applied, tally) = stream_segments(
            self.threads,
            header,
            layout,
            r,
            || (bank(&self.codecs), SegmentStreams::default(), Vec::new()),
            |(codecs, streams, reference), s, record| {
                decompress_segment(codecs, prepared, layout, &record, streams, reference)?;
                let out = slots[s].lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
                let out = out.ok_or(Error::CorruptFrame { reason: "segment applied twice" })?;
                Ok(self.delta.apply_segment(prepared, s, streams, out)?)
            },
        )?;
        drop(slots);
        Ok((applied, tally))
    }

    /// Decodes one frame into `out` (its content replaced, its memory reused) without making
    /// the image this decoder's baseline; returns the frame's header. For a caller that keeps
    /// what it needs of each image itself and decodes many frames of similar size (a
    /// migration's receiver copies each batch into its copy of the guest's RAM): a fresh
    /// buffer per frame costs a page fault per 4 KiB, which was a third of that receiver's
    /// time. The checksum is verified as by [`decompress`](Self::decompress); on error `out`
    /// holds no meaningful content.
    pub fn decompress_into(&self, frame: &[u8], out: &mut Vec<u8>) -> Result<FrameHeader> {
        let mut r = frame;
        let header = frame::read_header(&mut r, &self.limits)?;
        let layout = self.delta.layout();
        frame::check_layout(&header, layout)?;
        let prepared =
            self.delta.prepare_from(&header.key, header.base_key.as_deref().unwrap_or(&header.key), &header.round)?;
        let len = usize::try_from(header.round.image_len)
            .map_err(|_| Error::CorruptFrame { reason: "image larger than this machine's address space" })?;
        // Bounded by the limits `read_header` and `prepare` checked. Rebuilding expects zeros
        // where it writes nothing.
        out.clear();
        out.try_reserve_exact(len).map_err(|_| hde_delta::Error::OutOfMemory { bytes: len as u64 })?;
        out.resize(len, 0);
        let (applied, tally) = self.rebuild(&header, &prepared, &mut r, out)?;
        if !r.is_empty() {
            return Err(Error::CorruptFrame { reason: "bytes after the last segment" });
        }
        for copy in self.delta.verify_detached(&header.key, prepared, applied)? {
            let inside =
                |at: u64| usize::try_from(at).ok().filter(|&a| a.checked_add(copy.len).is_some_and(|e| e <= len));
            let (Some(from), Some(to)) = (inside(copy.from), inside(copy.to)) else {
                return Err(Error::CorruptFrame { reason: "a copy outside the image" });
            };
            out.copy_within(from..from + copy.len, to);
        }
        self.count(&header, tally);
        Ok(header)
    }

    /// Reads one frame from `r` and writes its image into `file` (from offset 0, zero blocks
    /// left as holes, the length set to the image's), without keeping the image in memory or
    /// making it a baseline: for a receiver that needs the image on disk only (a one-off
    /// frame, or a delta against a reference it supplies each time).
    ///
    /// Each worker rebuilds a segment into a buffer of its own as soon as its record is read
    /// and writes it at its offset; the checksum is verified before the last copies between
    /// segments are made. On error the file's content is unspecified: write to a temporary
    /// file and keep it only on success (the `hde` binary does).
    #[cfg(unix)]
    pub fn decompress_to_file(&self, r: &mut impl Read, file: &std::fs::File) -> Result<FrameHeader> {
        let header = frame::read_header(r, &self.limits)?;
        self.decompress_body_to_file(&header, r, file)?;
        Ok(header)
    }

    /// [`decompress_to_file`](Self::decompress_to_file) for a frame whose header was read.
    #[cfg(unix)]
    pub fn decompress_body_to_file(&self, header: &FrameHeader, r: &mut impl Read, file: &std::fs::File) -> Result<()> {
        self.body_to_file(header, r, file, false)
    }

    /// [`decompress_body_to_file`](Self::decompress_body_to_file) into a file that holds other
    /// content already (opened for reading and writing), typically an older round of the
    /// same image: each segment is compared with what the file holds at its offset, and only
    /// the 4 KiB blocks that differ are written. A delta round then writes kilobytes where a
    /// fresh file takes the whole image. The file's length becomes the image's. What the file
    /// held is never trusted: every block of the result is either compared equal to the
    /// verified segment or written from it.
    #[cfg(unix)]
    pub fn decompress_body_over_file(
        &self,
        header: &FrameHeader,
        r: &mut impl Read,
        file: &std::fs::File,
    ) -> Result<()> {
        self.body_to_file(header, r, file, true)
    }

    #[cfg(unix)]
    fn body_to_file(&self, header: &FrameHeader, r: &mut impl Read, file: &std::fs::File, over: bool) -> Result<()> {
        use std::os::unix::fs::FileExt;
        if over {
            // What the file holds past the image goes; what it lacks reads as zeros.
            file.set_len(header.round.image_len)?;
        }
        let layout = self.delta.layout();
        frame::check_layout(header, layout)?;
        let prepared =
            self.delta.prepare_from(&header.key, header.base_key.as_deref().unwrap_or(&header.key), &header.round)?;
        let seg_size = u64::from(header.round.segment_size.max(1));
        let buffer = usize::try_from(seg_size.min(header.round.image_len))
            .map_err(|_| Error::CorruptFrame { reason: "segment larger than this machine's address space" })?;
        let (applied, tally) = stream_segments(
            self.threads,
            header,
            layout,
            r,
            || (bank(&self.codecs), SegmentStreams::default(), Vec::new(), Vec::new(), Vec::new()),
            |(codecs, streams, reference, out, held), s, record| {
                decompress_segment(codecs, &prepared, layout, &record, streams, reference)?;
                let start = s as u64 * seg_size;
                let len = header.round.image_len.saturating_sub(start).min(seg_size) as usize;
                if out.is_empty() {
                    *out = crate::alloc::zeroed(buffer)?;
                }
                let out = out.get_mut(..len).ok_or(Error::CorruptFrame { reason: "segment outside the image" })?;
                let applied = self.delta.apply_segment(&prepared, s, streams, out)?;
                if over {
                    held.resize(len, 0);
                    file.read_exact_at(held, start)?;
                    crate::state::write_changed_at(file, start, out, held)?;
                } else {
                    crate::state::write_sparse_at(file, start, out)?;
                }
                Ok(applied)
            },
        )?;
        let copies = self.delta.verify_detached(&header.key, prepared, applied)?;
        let mut page = Vec::new();
        for copy in copies {
            page.resize(copy.len, 0);
            file.read_exact_at(&mut page, copy.from)?;
            file.write_all_at(&page, copy.to)?;
        }
        file.set_len(header.round.image_len)?;
        self.count(header, tally);
        Ok(())
    }
}

/// Decompresses the streams of `record` into `streams` (buffers reused between segments) as
/// the delta layer's `layout` says, each referenced one against the reference `prepared`
/// rebuilds from its baseline and the streams before it.
fn decompress_segment(
    codecs: &mut impl CodecBank,
    prepared: &impl Prepared,
    layout: &[StreamSpec],
    record: &SegmentRecord,
    streams: &mut SegmentStreams,
    reference: &mut Vec<u8>,
) -> Result<()> {
    streams.reset(layout.len());
    for (i, spec) in layout.iter().enumerate() {
        let desc = record
            .streams
            .get(i)
            .copied()
            .ok_or(Error::LayoutMismatch { frame: record.streams.len(), layer: layout.len() })?;
        if desc.with_reference {
            if spec.role != StreamRole::Referenced {
                return Err(Error::CorruptFrame { reason: "reference flag on a stream that has none" });
            }
            reference.clear();
            prepared.reference(record.index as usize, i, streams, reference)?;
        }
        let used: &[u8] = if desc.with_reference { reference } else { &[] };
        let buf = streams.get_mut(i);
        // `raw_len` was checked against the layout's limit by `read_segment`.
        buf.resize(desc.raw_len as usize, 0);
        let n = codecs.decompress(desc.codec, record.stream(i), used, buf)?;
        if n != buf.len() {
            return Err(Error::CorruptFrame { reason: "stream shorter than its declared length" });
        }
    }
    Ok(())
}
