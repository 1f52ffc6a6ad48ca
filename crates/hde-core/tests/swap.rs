//! Every layer swapped by a second implementation, through the engine's `Encoder` and
//! `Decoder` and a node (`Hde`), on rounds of the project's corpus: a delta layer that is not
//! the page hierarchy (one stream of literal bytes, no baseline), a selector that always makes
//! one choice, and a codec that is not one of the built-in three (runs of zero bytes), added
//! through `hde-codec`'s `Codec` trait and `CodecSet::with_codec`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // reason: a test fails by panicking.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hde_core::codec::{Codec, CodecId, CodecSet, CodecSpec, CustomId};
use hde_core::delta::{
    checksum, BaselineId, BaselineInfo, ClassCounts, DeltaConfig, DeltaDecoder, DeltaEncoder, EncodeOptions,
    EncoderStats, Error, Image, PageCopy, PageDeltaDecoder, PageDeltaEncoder, Prepared, ReceiverBaselines, Round,
    RoundHeader, SegmentStreams, SenderBaselines, StreamRole, StreamSpec,
};
use hde_core::frame::FrameLimits;
use hde_core::selector::LearningSelector;
use hde_core::selector::{Choice, Context, NetworkMode, Outcome, Profile, Selector, Ticket};
use hde_core::state::{SenderImage, StateDir};
use hde_core::{Decoder, Encoder};
use hde_corpus::{generate, CorpusConfig};

const PAGE: usize = 4096;
const SEGMENT: usize = 256 << 10;

/// The whole layout of the literal layer: the segment's bytes, as they are.
const LITERAL_LAYOUT: [StreamSpec; 1] =
    [StreamSpec { name: "bytes", role: StreamRole::Content, reference_needs: &[], max_raw: |s| s.bytes }];

/// A delta layer with no baselines: every round is the image's bytes, one stream per segment.
#[derive(Default)]
struct LiteralEncoder {
    seq: AtomicU64,
    rounds: AtomicU64,
}

struct LiteralRound<'a> {
    header: RoundHeader,
    image: &'a [u8],
}

impl Round for LiteralRound<'_> {
    fn header(&self) -> &RoundHeader {
        &self.header
    }
    fn segment_count(&self) -> usize {
        self.image.len().div_ceil(SEGMENT)
    }
    fn layout(&self) -> &[StreamSpec] {
        &LITERAL_LAYOUT
    }
    fn build(&self, segment: usize, out: &mut SegmentStreams) {
        out.reset(1);
        let start = (segment * SEGMENT).min(self.image.len());
        let end = (start + SEGMENT).min(self.image.len());
        out.get_mut(0).extend_from_slice(&self.image[start..end]);
    }
    fn reference(&self, _segment: usize, _stream: usize, _streams: &SegmentStreams, _out: &mut Vec<u8>) {}
    fn counts(&self) -> ClassCounts {
        ClassCounts { literal: self.image.len().div_ceil(PAGE) as u64, ..ClassCounts::default() }
    }
}

impl DeltaEncoder for LiteralEncoder {
    type Round<'a> = LiteralRound<'a>;
    fn encode<'a>(
        &'a self,
        _key: &str,
        image: &'a [u8],
        _options: EncodeOptions,
    ) -> hde_core::delta::Result<LiteralRound<'a>> {
        let header = RoundHeader {
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            base: None,
            image_len: image.len() as u64,
            page_size: PAGE as u32,
            segment_size: SEGMENT as u32,
            checksum: checksum(image, PAGE),
        };
        Ok(LiteralRound { header, image })
    }
    fn commit(&self, round: LiteralRound<'_>) -> hde_core::delta::Result<BaselineId> {
        self.rounds.fetch_add(1, Ordering::Relaxed);
        Ok(round.header.produces())
    }
    fn stats(&self) -> EncoderStats {
        let rounds = self.rounds.load(Ordering::Relaxed);
        EncoderStats { rounds, keyframes: rounds, ..EncoderStats::default() }
    }
}

/// Its decoder: copies each segment's stream into place and checks the image's checksum.
struct LiteralDecoder;

struct LiteralPrepared(RoundHeader);

impl Prepared for LiteralPrepared {
    fn header(&self) -> &RoundHeader {
        &self.0
    }
    fn reference(&self, _: usize, _: usize, _: &SegmentStreams, _: &mut Vec<u8>) -> hde_core::delta::Result<()> {
        Err(Error::Corrupt { reason: "the literal layer has no reference" })
    }
}

impl DeltaDecoder for LiteralDecoder {
    type Prepared = LiteralPrepared;
    type Applied = Vec<u8>;

    fn layout(&self) -> &[StreamSpec] {
        &LITERAL_LAYOUT
    }
    fn prepare(&self, key: &str, header: &RoundHeader) -> hde_core::delta::Result<LiteralPrepared> {
        match header.base {
            Some(want) => Err(Error::MissingBaseline { key: key.to_owned(), want }),
            None => Ok(LiteralPrepared(*header)),
        }
    }
    fn apply_segment(
        &self,
        _prepared: &LiteralPrepared,
        _segment: usize,
        streams: &SegmentStreams,
        out: &mut [u8],
    ) -> hde_core::delta::Result<Vec<u8>> {
        let bytes = streams.get(0);
        if bytes.len() != out.len() {
            return Err(Error::Corrupt { reason: "segment length differs" });
        }
        out.copy_from_slice(bytes);
        Ok(bytes.to_vec())
    }
    fn finish(
        &self,
        _key: &str,
        prepared: LiteralPrepared,
        image: Vec<u8>,
        _applied: Vec<Vec<u8>>,
    ) -> hde_core::delta::Result<Image> {
        if checksum(&image, PAGE) != prepared.0.checksum {
            return Err(Error::Corrupt { reason: "image checksum differs" });
        }
        Ok(Image::from(image))
    }
    fn verify_detached(
        &self,
        _key: &str,
        prepared: LiteralPrepared,
        applied: Vec<Vec<u8>>,
    ) -> hde_core::delta::Result<Vec<PageCopy>> {
        if checksum(&applied.concat(), PAGE) != prepared.0.checksum {
            return Err(Error::Corrupt { reason: "image checksum differs" });
        }
        Ok(Vec::new())
    }
}

/// A codec of the test's own: runs of zero bytes as their length, everything else as it is.
/// A stream is a sequence of `(zeros: u32 le, len: u32 le, len bytes)` records.
#[derive(Debug, Default)]
struct ZeroRuns;

const ZERO_RUNS: CodecId = CodecId::Custom(match CustomId::new(200) {
    Ok(id) => id,
    Err(_) => panic!("200 is a custom id"),
});

fn zero_runs() -> CodecSpec {
    let CodecId::Custom(id) = ZERO_RUNS else { unreachable!() };
    CodecSpec::Custom(id)
}

impl Codec for ZeroRuns {
    fn id(&self) -> CodecId {
        ZERO_RUNS
    }
    fn compress_into(&mut self, input: &[u8], _reference: &[u8], out: &mut Vec<u8>) -> hde_core::codec::Result<usize> {
        let start = out.len();
        let mut at = 0;
        while at < input.len() {
            let zeros = input[at..].iter().take_while(|&&b| b == 0).count();
            at += zeros;
            // Literal bytes up to the next run of 8 zeros (shorter runs stay literal).
            let mut end = at;
            while end < input.len() && !input[end..].starts_with(&[0; 8]) {
                end += 1;
            }
            out.extend_from_slice(&(zeros as u32).to_le_bytes());
            out.extend_from_slice(&((end - at) as u32).to_le_bytes());
            out.extend_from_slice(&input[at..end]);
            at = end;
        }
        Ok(out.len() - start)
    }
    fn decompress_into(&mut self, input: &[u8], _reference: &[u8], out: &mut [u8]) -> hde_core::codec::Result<usize> {
        use hde_core::codec::Error;
        let corrupt = Error::Corrupt { codec: ZERO_RUNS, reason: "truncated record" };
        let too_large = Error::OutputTooLarge { codec: ZERO_RUNS, capacity: out.len() };
        let (mut at, mut written) = (0, 0);
        while at < input.len() {
            let word = |i: usize| -> hde_core::codec::Result<usize> {
                let b = input.get(i..i + 4).ok_or(corrupt.clone())?;
                Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            };
            let (zeros, len) = (word(at)?, word(at + 4)?);
            at += 8;
            let zero_end = written + zeros;
            out.get_mut(written..zero_end).ok_or(too_large.clone())?.fill(0);
            let bytes = input.get(at..at + len).ok_or(corrupt.clone())?;
            out.get_mut(zero_end..zero_end + len).ok_or(too_large.clone())?.copy_from_slice(bytes);
            (at, written) = (at + len, zero_end + len);
        }
        Ok(written)
    }
}

/// A selector that always answers the same, and counts what it was told.
struct Fixed {
    codec: CodecSpec,
    observed: AtomicUsize,
}

impl Fixed {
    fn new(codec: CodecSpec) -> Self {
        Fixed { codec, observed: AtomicUsize::new(0) }
    }
}

impl Selector for Fixed {
    fn choose(&self, _profile: &Profile, context: &Context) -> Choice {
        Choice { codec: self.codec, reference: context.reference_len > 0, ticket: Ticket::default() }
    }
    fn observe(&self, _choice: &Choice, _outcome: &Outcome) {
        self.observed.fetch_add(1, Ordering::Relaxed);
    }
    fn set_mode(&self, _mode: NetworkMode) {}
    fn mode(&self) -> NetworkMode {
        NetworkMode::Datacenter
    }
    fn set_bandwidth(&self, _bytes_per_second: f64) {}
}

fn rounds() -> Vec<Vec<u8>> {
    generate(&CorpusConfig { size: 2 << 20, rounds: 3, ..CorpusConfig::default() }).unwrap()
}

#[test]
fn a_delta_layer_of_one_stream_round_trips_through_the_engine() {
    let enc: Encoder<LiteralEncoder, Fixed, CodecSet> =
        Encoder::with_layers(LiteralEncoder::default(), Fixed::new(CodecSpec::zstd(3).unwrap()), 2);
    let dec: Decoder<LiteralDecoder, CodecSet> = Decoder::with_layers(LiteralDecoder, FrameLimits::default(), 2);
    for image in rounds() {
        let frame = enc.compress("vm", &image).unwrap();
        let (header, decoded) = dec.decompress(&frame).unwrap();
        assert_eq!(header.streams, 1);
        assert!(decoded.as_slice() == image.as_slice());
        // zstd-3 of the corpus's pages: smaller than the image.
        assert!(frame.len() < image.len(), "{} of {}", frame.len(), image.len());
        // The page hierarchy's decoder refuses the frame by its layout, with a typed error.
        let pages = Decoder::new(DeltaConfig::default()).unwrap();
        let err = pages.decompress(&frame).unwrap_err();
        assert!(matches!(err, hde_core::Error::LayoutMismatch { frame: 1, layer: 4 }), "{err:?}");
    }
    assert!(enc.selector().observed.load(Ordering::Relaxed) > 0);
    assert_eq!(enc.delta().stats().rounds, 3);
    // And its decoder refuses the page hierarchy's frames.
    let page_frame =
        Encoder::new(DeltaConfig::default(), Default::default()).unwrap().compress("vm", &rounds()[0]).unwrap();
    let err = dec.decompress(&page_frame).unwrap_err();
    assert!(matches!(err, hde_core::Error::LayoutMismatch { frame: 4, layer: 1 }), "{err:?}");
}

/// A choice no codec can run is an error, not another codec: a level out of range cannot be
/// named, and a codec the set lacks fails the encode with its id.
#[test]
fn an_invalid_choice_is_an_error() {
    assert!(CodecSpec::zstd(40).is_err());
    assert!("zstd-40".parse::<CodecSpec>().is_err());
    let enc: Encoder<LiteralEncoder, Fixed, CodecSet> =
        Encoder::with_layers(LiteralEncoder::default(), Fixed::new(zero_runs()), 1);
    let err = enc.compress("vm", &rounds()[0]).unwrap_err();
    assert!(matches!(&err, hde_core::Error::Codec(hde_core::codec::Error::UnknownCodec { id: 200 })), "{err:?}");
}

/// A codec the test brings (not one of the built-in three) runs through two nodes of the
/// default delta layers, chosen by the fixed selector: every stream the selector chose it
/// for is stored with it, the images round-trip, and a node without it refuses the frame
/// with its id.
#[test]
fn a_codec_added_by_the_caller_runs_through_hde() {
    let config = DeltaConfig { segment_size: 1 << 20, first_sequence: 1, ..DeltaConfig::default() };
    let codecs = CodecSet::new().with_codec(|| ZeroRuns).unwrap();
    let node = |id| {
        let mut config = hde_core::HdeConfig::new(id);
        config.delta.segment_size = 1 << 20;
        hde_core::Hde::with_all_layers(
            config.clone(),
            PageDeltaEncoder::new(config.delta_config()).unwrap(),
            Fixed::new(zero_runs()),
            hde_core::delta::PageDeltaDecoder::new(config.delta_config()).unwrap(),
        )
        .unwrap()
        .with_codecs(codecs.clone())
    };
    let (sender, receiver) = (node(1), node(2));
    let plain = Decoder::new(config).unwrap();
    for (n, image) in rounds().iter().enumerate() {
        let mut frame = Vec::new();
        let summary = sender.compress_to("vm", image, &mut frame).unwrap();
        assert!(summary.codecs.iter().any(|(name, _)| name.starts_with("custom-200")), "{summary:?}");
        let (_, decoded) = receiver.decompress(&frame).unwrap();
        assert!(decoded.as_slice() == image.as_slice());
        if n == 0 {
            let err = plain.decompress(&frame).unwrap_err();
            assert!(
                matches!(&err, hde_core::Error::Codec(hde_core::codec::Error::UnknownCodec { id: 200 })),
                "{err:?}"
            );
        }
    }
    let used = receiver.metrics().decoded_codec_use;
    assert!(used.keys().any(|c| c.starts_with("custom-200")), "{used:?}");
    // The corpus has zero runs: the codec shrinks what it was given.
    let sent = sender.metrics();
    assert!(sent.bytes_out < sent.bytes_in, "{sent:?}");
}

#[test]
fn a_fixed_choice_selector_drives_the_page_hierarchy() {
    let config = DeltaConfig { segment_size: 1 << 20, first_sequence: 1, ..DeltaConfig::default() };
    let enc: Encoder<PageDeltaEncoder, Fixed, CodecSet> =
        Encoder::with_layers(PageDeltaEncoder::new(config.clone()).unwrap(), Fixed::new(CodecSpec::Lz4), 2);
    let dec = Decoder::new(config).unwrap();
    for image in rounds() {
        let frame = enc.compress("vm", &image).unwrap();
        assert!(dec.decompress(&frame).unwrap().1.as_slice() == image.as_slice());
    }
    // Every literal stream went out as the selector said (LZ4, against the reference where
    // the round had one), or raw where that was smaller.
    let used = dec.counters().codec_use;
    assert!(!used.is_empty());
    assert!(used.keys().all(|c| c.starts_with("lz4") || c == "raw"), "{used:?}");
    assert!(used.contains_key("lz4+ref"), "{used:?}");
}

/// A round given as its dirty pages goes through the engine like a whole image: the frame
/// decodes to the image the pages make, with the header and page counts the whole image
/// gives (the codecs may differ: the learning selector times what it runs).
#[test]
fn a_round_of_dirty_pages_goes_through_the_engine() {
    let config = DeltaConfig { segment_size: 1 << 20, first_sequence: 1, ..DeltaConfig::default() };
    let dirty = Encoder::new(config.clone(), Default::default()).unwrap();
    let whole = Encoder::new(config.clone(), Default::default()).unwrap();
    let dec = Decoder::new(config).unwrap();
    let images = rounds();
    let first = dirty.compress("vm", &images[0]).unwrap();
    whole.compress("vm", &images[0]).unwrap();
    dec.decompress(&first).unwrap();
    for pair in images.windows(2) {
        let updates: Vec<(u64, &[u8])> = pair[1]
            .chunks(PAGE)
            .zip(pair[0].chunks(PAGE))
            .enumerate()
            .filter(|(_, (new, old))| new != old)
            .map(|(p, (new, _))| (p as u64, new))
            .collect();
        let round = dirty.delta().encode_dirty("vm", &updates, EncodeOptions::default()).unwrap();
        let mut frame = Vec::new();
        let (summary, round) = dirty.write_round("vm", round, &mut frame, &mut |_| {}).unwrap();
        dirty.commit(round).unwrap();
        assert_eq!(summary.output_bytes, frame.len() as u64);
        assert!(dec.decompress(&frame).unwrap().1.as_slice() == pair[1].as_slice());
        // The learning selector may choose differently in two encoders; the page counts agree.
        let (expected, _) = {
            let mut f = Vec::new();
            let s = whole.compress_to("vm", &pair[1], &mut f, EncodeOptions::default()).unwrap();
            (s, f)
        };
        assert_eq!(summary.pages, expected.pages);
        assert_eq!(summary.header, expected.header);
    }
}

/// The second layers through a node (`Hde`): its metrics and its replica of who holds what
/// work the same with them.
#[test]
fn the_second_layers_run_through_a_node() {
    type Node = hde_core::Hde<LiteralEncoder, Fixed, CodecSet, LiteralDecoder>;
    let node = |id| -> Node {
        let fixed = Fixed::new(CodecSpec::zstd(1).unwrap());
        hde_core::Hde::with_all_layers(hde_core::HdeConfig::new(id), LiteralEncoder::default(), fixed, LiteralDecoder)
            .unwrap()
    };
    let (sender, receiver) = (node(1), node(2));
    let images = rounds();
    for image in &images {
        let frame = sender.compress("vm", image).unwrap();
        let (header, decoded) = receiver.decompress(&frame).unwrap();
        assert_eq!((header.key.as_str(), header.streams), ("vm", 1));
        assert!(decoded.as_slice() == image.as_slice());
    }
    let (sent, got) = (sender.metrics(), receiver.metrics());
    assert_eq!((sent.frames_encoded, got.frames_decoded), (images.len() as u64, images.len() as u64));
    assert!(sent.bytes_out > 0 && sent.bytes_out < sent.bytes_in, "{sent:?}");
}

/// A delta layer of the caller's that wraps the page hierarchy (to count rounds): it keeps
/// baselines through a state directory like the default does, by forwarding the persistence
/// traits.
struct Counted<L> {
    inner: L,
    rounds: AtomicUsize,
}

impl<L> Counted<L> {
    fn new(inner: L) -> Self {
        Counted { inner, rounds: AtomicUsize::new(0) }
    }
}

impl DeltaEncoder for Counted<PageDeltaEncoder> {
    type Round<'a> = <PageDeltaEncoder as DeltaEncoder>::Round<'a>;
    fn encode<'a>(
        &'a self,
        key: &str,
        image: &'a [u8],
        options: EncodeOptions,
    ) -> hde_core::delta::Result<Self::Round<'a>> {
        self.rounds.fetch_add(1, Ordering::Relaxed);
        DeltaEncoder::encode(&self.inner, key, image, options)
    }
    fn commit(&self, round: Self::Round<'_>) -> hde_core::delta::Result<BaselineId> {
        DeltaEncoder::commit(&self.inner, round)
    }
    fn stats(&self) -> EncoderStats {
        DeltaEncoder::stats(&self.inner)
    }
}

impl SenderBaselines for Counted<PageDeltaEncoder> {
    fn baseline_info(&self, key: &str) -> Option<BaselineInfo> {
        SenderBaselines::baseline_info(&self.inner, key)
    }
    fn baseline_hashes(&self, key: &str) -> Option<Vec<u128>> {
        SenderBaselines::baseline_hashes(&self.inner, key)
    }
    fn restore_image(
        &self,
        key: &str,
        id: BaselineId,
        image: Image,
        chain: u32,
        since: Duration,
    ) -> hde_core::delta::Result<()> {
        SenderBaselines::restore_image(&self.inner, key, id, image, chain, since)
    }
    fn restore_hashed(
        &self,
        key: &str,
        id: BaselineId,
        len: u64,
        hashes: Vec<u128>,
        content: Option<Image>,
        chain: u32,
        since: Duration,
    ) -> hde_core::delta::Result<usize> {
        SenderBaselines::restore_hashed(&self.inner, key, id, len, hashes, content, chain, since)
    }
}

impl DeltaDecoder for Counted<PageDeltaDecoder> {
    type Prepared = <PageDeltaDecoder as DeltaDecoder>::Prepared;
    type Applied = <PageDeltaDecoder as DeltaDecoder>::Applied;
    fn layout(&self) -> &[StreamSpec] {
        self.inner.layout()
    }
    fn prepare(&self, key: &str, header: &RoundHeader) -> hde_core::delta::Result<Self::Prepared> {
        self.rounds.fetch_add(1, Ordering::Relaxed);
        self.inner.prepare(key, header)
    }
    fn apply_segment(
        &self,
        prepared: &Self::Prepared,
        segment: usize,
        streams: &SegmentStreams,
        out: &mut [u8],
    ) -> hde_core::delta::Result<Self::Applied> {
        self.inner.apply_segment(prepared, segment, streams, out)
    }
    fn finish(
        &self,
        key: &str,
        prepared: Self::Prepared,
        image: Vec<u8>,
        applied: Vec<Self::Applied>,
    ) -> hde_core::delta::Result<Image> {
        self.inner.finish(key, prepared, image, applied)
    }
    fn verify_detached(
        &self,
        key: &str,
        prepared: Self::Prepared,
        applied: Vec<Self::Applied>,
    ) -> hde_core::delta::Result<Vec<PageCopy>> {
        self.inner.verify_detached(key, prepared, applied)
    }
}

impl ReceiverBaselines for Counted<PageDeltaDecoder> {
    fn baseline_id(&self, key: &str) -> Option<BaselineId> {
        self.inner.baseline_id(key)
    }
    fn baseline_image(&self, key: &str) -> Option<Image> {
        self.inner.baseline_image(key)
    }
    fn restore_image(&self, key: &str, id: BaselineId, page_size: usize, image: Image) -> hde_core::delta::Result<()> {
        ReceiverBaselines::restore_image(&self.inner, key, id, page_size, image)
    }
}

/// Nodes of wrapping layers keep their baselines in a state directory: round 1, sent by a
/// new process from saved state to a new receiver restored from its state, is a delta and
/// decodes.
#[test]
fn a_wrapping_layer_keeps_its_baselines_in_a_state_directory() {
    type Node = hde_core::Hde<Counted<PageDeltaEncoder>, LearningSelector, CodecSet, Counted<PageDeltaDecoder>>;
    let node = |id| -> Node {
        let config = hde_core::HdeConfig::new(id);
        hde_core::Hde::with_all_layers(
            config.clone(),
            Counted::new(PageDeltaEncoder::new(config.delta_config()).unwrap()),
            LearningSelector::new(config.selector_config()).unwrap(),
            Counted::new(PageDeltaDecoder::new(config.delta_config()).unwrap()),
        )
        .unwrap()
    };
    let dir = std::env::temp_dir().join(format!("hde-swap-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let state = StateDir::open(dir.join("state")).unwrap();
    let images = rounds();
    let input = dir.join("round0.raw");
    std::fs::write(&input, &images[0]).unwrap();
    {
        let (sender, receiver) = (node(1), node(2));
        let frame = sender.compress("vm", &images[0]).unwrap();
        receiver.decompress(&frame).unwrap();
        state.save_sender(&sender, "vm", SenderImage { bytes: &images[0], file: Some(&input) }, 1).unwrap();
        state.save_receiver(&receiver, "vm", 1).unwrap();
        assert_eq!(sender.sender().rounds.load(Ordering::Relaxed), 1);
    }
    let (sender, receiver) = (node(1), node(2));
    assert_eq!(state.restore_sender(&sender, "vm").unwrap(), Some(1));
    assert_eq!(state.restore_receiver(&receiver, "vm").unwrap(), Some(1));
    let mut frame = Vec::new();
    let summary = sender.compress_to("vm", &images[1], &mut frame).unwrap();
    assert!(summary.header.round.base.is_some(), "round 1 is a delta: {summary:?}");
    assert!(receiver.decompress(&frame).unwrap().1.as_slice() == images[1].as_slice());
    assert_eq!(receiver.receiver().rounds.load(Ordering::Relaxed), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}
