//! Integration tests of the delta layer: round trips over many rounds, policy, caps, errors.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // reason: a test fails by panicking.

use std::sync::Arc;
use std::time::Duration;

use hde_corpus::CorpusConfig;
use hde_delta::page_stream::{CLASSES, DUPS, LITERALS, XOR};
use hde_delta::{
    BaselineContent, DeltaConfig, DeltaDecoder, DeltaEncoder, EncodeOptions, EncodedRound, Error, KeyframeReason,
    ManualClock, PageClass, PageDeltaDecoder, PageDeltaEncoder, Policy, Prepared, Round, SegmentStreams,
    SenderBaselines,
};
use proptest::prelude::*;

fn config(page_size: usize, segment_size: usize, threads: usize) -> DeltaConfig {
    DeltaConfig { page_size, segment_size, threads, first_sequence: 1, ..DeltaConfig::default() }
}

/// Sends `round` to `decoder` as the engine would (streams as they are, references checked
/// to be identical on both sides) and returns the decoded image.
fn deliver(decoder: &PageDeltaDecoder, round: &EncodedRound<'_>) -> Result<Vec<u8>, Error> {
    let prepared = decoder.prepare_from(round.key(), round.base_key().unwrap_or(round.key()), round.header())?;
    let segments = round.segments();
    for (s, streams) in segments.iter().enumerate() {
        let (mut sent, mut rebuilt) = (Vec::new(), Vec::new());
        round.reference(s, LITERALS, streams, &mut sent);
        prepared.reference(s, LITERALS, streams, &mut rebuilt)?;
        assert!(sent == rebuilt, "segment {s}: references differ");
    }
    Ok(decoder.apply(round.key(), prepared, &segments)?.to_vec())
}

/// Encodes, delivers, checks and commits one round.
fn step<C: hde_delta::Clock>(
    enc: &PageDeltaEncoder<C>,
    dec: &PageDeltaDecoder,
    key: &str,
    image: &[u8],
) -> EncodedRoundSummary {
    let round = enc.encode(key, image, EncodeOptions::default()).unwrap();
    let decoded = deliver(dec, &round).unwrap();
    assert!(decoded == image, "decoded image differs");
    let summary = EncodedRoundSummary {
        keyframe: round.keyframe_reason(),
        counts: round.counts(),
        bytes: round.segments().iter().map(SegmentStreams::len).sum(),
    };
    enc.commit(round).unwrap();
    summary
}

#[derive(Debug)]
struct EncodedRoundSummary {
    keyframe: Option<KeyframeReason>,
    counts: hde_delta::ClassCounts,
    bytes: usize,
}

fn corpus(size: usize, rounds: usize) -> Vec<Vec<u8>> {
    hde_corpus::generate(&CorpusConfig { size, rounds, ..CorpusConfig::default() }).unwrap()
}

#[test]
fn corpus_rounds_round_trip_and_shrink() {
    let images = corpus(8 << 20, 5);
    let enc = PageDeltaEncoder::new(config(4096, 1 << 20, 2)).unwrap();
    let dec = PageDeltaDecoder::new(config(4096, 1 << 20, 2)).unwrap();
    for (r, image) in images.iter().enumerate() {
        let s = step(&enc, &dec, "vm", image);
        let pages = (image.len() / 4096) as u64;
        assert_eq!(s.counts.total(), pages);
        if r == 0 {
            assert_eq!(s.keyframe, Some(KeyframeReason::NoBaseline));
            assert!(s.counts.zero > pages / 5, "{s:?}");
            assert!(s.counts.duplicate > pages / 50, "{s:?}");
        } else {
            assert_eq!(s.keyframe, None);
            // About 22 % of pages change per round (corpus model).
            assert!(s.counts.unchanged > pages * 7 / 10, "{s:?}");
            assert!(s.counts.xor > 0 && s.counts.literal > 0, "{s:?}");
            // Unchanged pages cost a class byte: a delta's streams are a fraction of the image.
            assert!(s.bytes < image.len() / 4, "{s:?}");
        }
    }
    let stats = enc.stats();
    assert_eq!((stats.rounds, stats.keyframes, stats.deltas), (5, 1, 4));
    assert!((stats.delta_hit_rate() - 0.8).abs() < 1e-9);
    assert_eq!(stats.baselines, 1);
}

#[test]
fn output_is_the_same_for_any_thread_count() {
    let images = corpus(3 << 20, 3);
    let mut outputs = Vec::new();
    for threads in [1, 2, 3, 5] {
        let enc = PageDeltaEncoder::new(config(4096, 256 << 10, threads)).unwrap();
        let mut rounds = Vec::new();
        for image in &images {
            let round = enc.encode("k", image, EncodeOptions::default()).unwrap();
            rounds.push((*round.header(), round.segments()));
            enc.commit(round).unwrap();
        }
        outputs.push(rounds);
    }
    assert!(outputs.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn moved_pages_become_duplicates_of_the_baseline() {
    let mut image: Vec<u8> = (0..64 * 4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    // Delta segments as small as keyframe segments: page 40 is in another segment than page 3.
    let cfg = DeltaConfig { delta_segment_factor: 1, ..config(4096, 16 * 4096, 1) };
    let enc = PageDeltaEncoder::new(cfg.clone()).unwrap();
    let dec = PageDeltaDecoder::new(cfg).unwrap();
    step(&enc, &dec, "k", &image);
    // Page 3 moves to page 40 (across segments); page 10 is copied to 11 (same round).
    image.copy_within(3 * 4096..4 * 4096, 40 * 4096);
    image[10 * 4096] ^= 0xff;
    image.copy_within(10 * 4096..11 * 4096, 11 * 4096);
    let round = enc.encode("k", &image, EncodeOptions::default()).unwrap();
    let classes: Vec<u8> = round.segments().iter().flat_map(|s| s.get(CLASSES).to_vec()).collect();
    assert_eq!(classes[40], PageClass::DupBaseline as u8);
    assert_eq!(classes[11], PageClass::DupCurrent as u8);
    assert_eq!(classes[10], PageClass::Patch as u8);
    assert_eq!(deliver(&dec, &round).unwrap(), image);
}

#[test]
fn known_zero_pages_are_zero_pages_never_read() {
    // Pages 4-19 and the short last page are declared holes, but hold bytes: a hole is never
    // read, so they arrive as zeros, and the checksum is that of what the encoder saw.
    let cfg = config(4096, 8 * 4096, 2);
    let enc = PageDeltaEncoder::new(cfg.clone()).unwrap();
    let dec = PageDeltaDecoder::new(cfg).unwrap();
    let len = 32 * 4096 + 100;
    let image: Vec<u8> = (0..len as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 1).collect();
    // A hole that starts mid-page leaves that page (3) read; one that covers the short last
    // page whole makes it zero.
    let holes = hde_delta::ZeroRanges::new([3 * 4096 + 10..20 * 4096, (32 * 4096) as u64..len as u64]);
    let options = EncodeOptions { known_zero: Some(holes), ..EncodeOptions::default() };
    let round = enc.encode("k", &image, options.clone()).unwrap();
    let counts = round.counts();
    assert_eq!(counts.zero, 16 + 1);
    let mut expected = image.clone();
    expected[4 * 4096..20 * 4096].fill(0);
    expected[32 * 4096..].fill(0);
    assert_eq!(deliver(&dec, &round).unwrap(), expected);
    enc.commit(round).unwrap();
    // Against a baseline whose pages there are zero, the holes are unchanged pages.
    let round = enc.encode("k", &expected, options).unwrap();
    assert_eq!(round.counts().unchanged, 33);
    assert_eq!(deliver(&dec, &round).unwrap(), expected);
}

#[test]
fn growth_shrink_and_odd_lengths() {
    let enc = PageDeltaEncoder::new(config(512, 2048, 2)).unwrap();
    let dec = PageDeltaDecoder::new(config(512, 2048, 2)).unwrap();
    let base: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    for len in [10_000usize, 10_001, 12_345, 4_000, 511, 0, 1, 3000, 10_000] {
        let mut image = base.clone();
        image.resize(len, 7);
        if len > 100 {
            image[len / 2] ^= 1;
        }
        step(&enc, &dec, "k", &image);
    }
}

#[test]
fn delta_without_its_baseline_is_a_typed_error() {
    let images = corpus(1 << 20, 3);
    let enc = PageDeltaEncoder::new(config(4096, 256 << 10, 1)).unwrap();
    let dec = PageDeltaDecoder::new(config(4096, 256 << 10, 1)).unwrap();
    let r0 = enc.encode("k", &images[0], EncodeOptions::default()).unwrap();
    let d0 = deliver(&dec, &r0).unwrap();
    assert_eq!(d0, images[0]);
    // Stale: the same frame again.
    assert!(matches!(deliver(&dec, &r0), Err(Error::StaleSequence { .. })));
    enc.commit(r0).unwrap();
    let r1 = enc.encode("k", &images[1], EncodeOptions::default()).unwrap();
    enc.commit(r1).unwrap(); // the receiver never gets round 1
    let r2 = enc.encode("k", &images[2], EncodeOptions::default()).unwrap();
    assert!(matches!(deliver(&dec, &r2), Err(Error::BaselineMismatch { .. })));
    let fresh = PageDeltaDecoder::new(config(4096, 256 << 10, 1)).unwrap();
    assert!(matches!(deliver(&fresh, &r2), Err(Error::MissingBaseline { .. })));
    assert!(matches!(deliver(&fresh, &r2).unwrap_err().to_string(), s if s.contains("keyframe")));
    // Recovery: a forced keyframe.
    let r3 = enc.encode("k", &images[2], EncodeOptions { force_keyframe: true, ..EncodeOptions::default() }).unwrap();
    assert_eq!(r3.keyframe_reason(), Some(KeyframeReason::Forced));
    assert_eq!(deliver(&dec, &r3).unwrap(), images[2]);
    assert_eq!(deliver(&fresh, &r3).unwrap(), images[2]);
}

#[test]
fn corrupted_payloads_are_typed_errors() {
    let images = corpus(1 << 20, 2);
    // Four delta segments, so that damage can hit several.
    let cfg = DeltaConfig { delta_segment_factor: 1, ..config(4096, 256 << 10, 1) };
    let enc = PageDeltaEncoder::new(cfg.clone()).unwrap();
    let dec = PageDeltaDecoder::new(cfg).unwrap();
    step(&enc, &dec, "k", &images[0]);
    let round = enc.encode("k", &images[1], EncodeOptions::default()).unwrap();
    let header = *round.header();
    let clean = round.segments();
    type Damage = fn(&mut Vec<SegmentStreams>);
    let damages: Vec<(&str, Damage)> = vec![
        ("literal byte flipped", |s| {
            s.iter_mut().find(|x| !x.get(LITERALS).is_empty()).unwrap().get_mut(LITERALS)[5] ^= 1
        }),
        ("xor byte flipped", |s| {
            let x = s.iter_mut().find(|x| x.get(XOR).len() > 3).unwrap();
            let last = x.get(XOR).len() - 1;
            x.get_mut(XOR)[last] ^= 0x10;
        }),
        ("class changed", |s| s[0].get_mut(CLASSES)[0] = if s[0].get(CLASSES)[0] == 0 { 1 } else { 0 }),
        ("unknown class", |s| s[1].get_mut(CLASSES)[3] = 99),
        ("literal truncated", |s| {
            s.iter_mut().find(|x| !x.get(LITERALS).is_empty()).unwrap().get_mut(LITERALS).pop();
        }),
        ("extra dup bytes", |s| s[0].get_mut(DUPS).push(1)),
        ("classes short", |s| {
            s[2].get_mut(CLASSES).pop();
        }),
        ("segment missing", |s| {
            s.pop();
        }),
    ];
    for (name, damage) in damages {
        let mut bad = clean.clone();
        damage(&mut bad);
        let prepared = dec.prepare("k", &header).unwrap();
        let err = dec.apply("k", prepared, &bad).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. } | Error::ChecksumMismatch { .. }), "{name}: {err:?}");
    }
    // A header claiming more than the decoder accepts is refused before allocation.
    let mut huge = header;
    huge.image_len = 1 << 50;
    assert!(matches!(dec.prepare("k", &huge), Err(Error::TooLarge { .. })));
    let mut odd = header;
    odd.page_size = 1000;
    assert!(matches!(dec.prepare("k", &odd), Err(Error::Corrupt { .. })));
    // The clean payload still applies.
    let prepared = dec.prepare("k", &header).unwrap();
    assert_eq!(dec.apply("k", prepared, &clean).unwrap().as_slice(), &images[1][..]);
}

fn policy_encoder(policy: Policy) -> (PageDeltaEncoder<Arc<ManualClock>>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new());
    let cfg = DeltaConfig { policy, ..config(4096, 64 << 10, 1) };
    (PageDeltaEncoder::with_clock(cfg, clock.clone()).unwrap(), clock)
}

fn reasons(
    enc: &PageDeltaEncoder<Arc<ManualClock>>,
    key: &str,
    image: &[u8],
    n: usize,
    clock: &ManualClock,
    tick: Duration,
) -> Vec<Option<KeyframeReason>> {
    (0..n)
        .map(|_| {
            let round = enc.encode(key, image, EncodeOptions::default()).unwrap();
            let reason = round.keyframe_reason();
            enc.commit(round).unwrap();
            clock.advance(tick);
            reason
        })
        .collect()
}

#[test]
fn policy_chain_interval_and_age() {
    let image = vec![5u8; 64 << 10];
    let (enc, clock) = policy_encoder(Policy::default());
    let r = reasons(&enc, "k", &image, 23, &clock, Duration::from_secs(1));
    assert_eq!(r[0], Some(KeyframeReason::NoBaseline));
    assert!(r[1..=10].iter().all(Option::is_none));
    assert_eq!(r[11], Some(KeyframeReason::ChainLimit));
    assert_eq!(r[22], Some(KeyframeReason::ChainLimit));

    let policy = Policy { max_delta_chain: 1000, ..Policy::default() };
    let (enc, clock) = policy_encoder(policy);
    // A round every 40 s: the 5-minute interval forces a keyframe at 320 s (round 8).
    let r = reasons(&enc, "k", &image, 10, &clock, Duration::from_secs(40));
    assert_eq!(r.iter().position(|x| *x == Some(KeyframeReason::Interval)), Some(8));

    let (enc, clock) = policy_encoder(Policy { baseline_interval: Duration::from_secs(3600), ..Policy::default() });
    reasons(&enc, "k", &image, 1, &clock, Duration::from_secs(16 * 60));
    assert_eq!(reasons(&enc, "k", &image, 1, &clock, Duration::ZERO)[0], Some(KeyframeReason::Age));
}

#[test]
fn prune_and_caps_evict_and_force_keyframes() {
    let image = vec![9u8; 64 << 10];
    let (enc, clock) = policy_encoder(Policy { max_baselines: 2, ..Policy::default() });
    for key in ["a", "b", "c"] {
        reasons(&enc, key, &image, 1, &clock, Duration::from_secs(1));
    }
    // "a" was the least recently used: evicted, its next round is a keyframe.
    assert_eq!(enc.baseline("a"), None);
    assert!(enc.baseline("b").is_some() && enc.baseline("c").is_some());
    assert_eq!(enc.stats().evictions, 1);
    assert_eq!(reasons(&enc, "a", &image, 1, &clock, Duration::ZERO)[0], Some(KeyframeReason::NoBaseline));

    clock.advance(Duration::from_secs(16 * 60));
    reasons(&enc, "c", &image, 1, &clock, Duration::ZERO);
    assert_eq!(enc.prune(), 1); // "a" idle for 16 min; "c" just used ("b" was evicted by "a")
    assert_eq!(enc.stats().baselines, 1);

    // Memory cap: each 64 KiB baseline costs a bit more than 64 KiB; room for two.
    let (enc, clock) = policy_encoder(Policy { max_memory_usage: 150 << 10, ..Policy::default() });
    for key in ["a", "b", "c", "d"] {
        reasons(&enc, key, &image, 1, &clock, Duration::from_secs(1));
        assert!(enc.stats().memory <= 150 << 10);
    }
    assert_eq!(enc.stats().baselines, 2);
    assert!(enc.baseline("d").is_some());
}

#[test]
fn uncommitted_rounds_leave_the_baseline_and_races_are_refused() {
    let images = corpus(512 << 10, 3);
    let enc = PageDeltaEncoder::new(config(4096, 64 << 10, 1)).unwrap();
    let r0 = enc.encode("k", &images[0], EncodeOptions::default()).unwrap();
    let id0 = enc.commit(r0).unwrap();
    drop(enc.encode("k", &images[1], EncodeOptions::default()).unwrap()); // never sent
    assert_eq!(enc.baseline("k"), Some(id0));
    let a = enc.encode("k", &images[1], EncodeOptions::default()).unwrap();
    let b = enc.encode("k", &images[2], EncodeOptions::default()).unwrap();
    enc.commit(a).unwrap();
    assert!(matches!(enc.commit(b), Err(Error::ConcurrentRound { .. })));
}

#[test]
fn bounded_baselines_find_unchanged_zero_and_duplicates() {
    let images = corpus(4 << 20, 4);
    let cfg = DeltaConfig { content: BaselineContent::Bounded { cache_bytes: 256 << 10 }, ..config(4096, 1 << 20, 2) };
    let enc = PageDeltaEncoder::new(cfg.clone()).unwrap();
    let full = PageDeltaEncoder::new(config(4096, 1 << 20, 2)).unwrap();
    let dec = PageDeltaDecoder::new(cfg).unwrap();
    let dec_full = PageDeltaDecoder::new(config(4096, 1 << 20, 2)).unwrap();
    for image in &images {
        let b = step(&enc, &dec, "k", image);
        let f = step(&full, &dec_full, "k", image);
        assert_eq!(b.counts.unchanged, f.counts.unchanged);
        assert_eq!(b.counts.zero, f.counts.zero);
        assert_eq!(b.counts.duplicate, f.counts.duplicate);
    }
    // Hashes (16 B per page) + cache + index, against the 4 MiB image held in full.
    assert!(enc.stats().memory < full.stats().memory / 3, "{} vs {}", enc.stats().memory, full.stats().memory);
}

#[test]
fn bad_configs_are_rejected() {
    for cfg in [
        DeltaConfig { page_size: 1000, ..DeltaConfig::default() },
        DeltaConfig { page_size: 256, ..DeltaConfig::default() },
        DeltaConfig { segment_size: 5000, ..DeltaConfig::default() },
        DeltaConfig { threads: 0, ..DeltaConfig::default() },
        DeltaConfig { policy: Policy { max_delta_chain: 0, ..Policy::default() }, ..DeltaConfig::default() },
    ] {
        assert!(matches!(PageDeltaEncoder::new(cfg), Err(Error::InvalidConfig { .. })));
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: prop::sample::Index, byte: u8 },
    Move { from: prop::sample::Index, to: prop::sample::Index },
    Zero { at: prop::sample::Index },
    Grow(usize),
    Shrink(prop::sample::Index),
    AllZero,
    Random(u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        6 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Flip { at, byte }),
        2 => (any::<prop::sample::Index>(), any::<prop::sample::Index>()).prop_map(|(from, to)| Mutation::Move { from, to }),
        2 => any::<prop::sample::Index>().prop_map(|at| Mutation::Zero { at }),
        1 => (1usize..3000).prop_map(Mutation::Grow),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Shrink),
        1 => Just(Mutation::AllZero),
        1 => any::<u64>().prop_map(Mutation::Random),
    ]
}

fn apply_mutation(image: &mut Vec<u8>, m: &Mutation) {
    const P: usize = 512;
    let pages = image.len() / P;
    match m {
        Mutation::Flip { at, byte } if !image.is_empty() => {
            let i = at.index(image.len());
            image[i] ^= byte | 1;
        }
        Mutation::Move { from, to } if pages > 1 => {
            let (f, t) = (from.index(pages), to.index(pages));
            image.copy_within(f * P..f * P + P, t * P);
        }
        Mutation::Zero { at } if pages > 0 => {
            let p = at.index(pages);
            image[p * P..p * P + P].fill(0);
        }
        Mutation::Grow(n) => {
            let start = image.len();
            image.extend((0..*n).map(|i| (i * 31 + start) as u8));
        }
        Mutation::Shrink(at) if !image.is_empty() => {
            let len = at.index(image.len());
            image.truncate(len);
        }
        Mutation::AllZero => image.fill(0),
        Mutation::Random(seed) => {
            let mut x = *seed | 1;
            for b in image.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_rounds_always_decode_exactly(
        start in prop::collection::vec(0u8..8, 0..12_000),
        rounds in prop::collection::vec(prop::collection::vec(mutation(), 0..6), 1..6),
        threads in 1usize..4,
        bounded in any::<bool>(),
    ) {
        let content = if bounded { BaselineContent::Bounded { cache_bytes: 2048 } } else { BaselineContent::Full };
        let cfg = DeltaConfig { content, xor_max_bytes: 128, ..config(512, 2048, threads) };
        let enc = PageDeltaEncoder::new(cfg.clone()).unwrap();
        let dec = PageDeltaDecoder::new(cfg).unwrap();
        let mut image = start;
        step(&enc, &dec, "k", &image);
        for mutations in rounds {
            for m in &mutations {
                apply_mutation(&mut image, m);
            }
            step(&enc, &dec, "k", &image);
        }
    }
}

#[test]
fn restored_baselines_continue_the_chain() {
    let images = corpus(1 << 20, 3);
    let enc = PageDeltaEncoder::new(config(4096, 256 << 10, 1)).unwrap();
    let dec = PageDeltaDecoder::new(config(4096, 256 << 10, 1)).unwrap();
    step(&enc, &dec, "k", &images[0]);
    let info = enc.baseline_info("k").unwrap();
    // Another process: a new encoder restored from the saved image.
    let again = PageDeltaEncoder::new(config(4096, 256 << 10, 1)).unwrap();
    again.restore("k", info.id, images[0].clone(), info.chain, info.since_keyframe).unwrap();
    let s = step(&again, &dec, "k", &images[1]);
    assert_eq!(s.keyframe, None, "restored baseline must give a delta");
    // A wrong image is refused.
    let mut wrong = images[0].clone();
    wrong[100] ^= 1;
    assert!(matches!(again.restore("x", info.id, wrong, 0, Duration::ZERO), Err(Error::ChecksumMismatch { .. })));
}

/// `base` with its pages moved (page i of the result is page `(i * 7919) % n` of `base`),
/// a few words of every page changed, and every tenth page new.
fn moved_and_changed(base: &[u8], seed: u64) -> Vec<u8> {
    let n = base.len() / 4096;
    let mut out = Vec::with_capacity(base.len());
    let mut x = seed;
    for i in 0..n {
        let q = (i * 7919) % n;
        let mut page = base[q * 4096..(q + 1) * 4096].to_vec();
        for _ in 0..4 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            page[(x >> 33) as usize % 4096] ^= 0x5a;
        }
        if i % 10 == 0 {
            for b in page.iter_mut() {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                *b = (x >> 56) as u8;
            }
        }
        out.extend_from_slice(&page);
    }
    out
}

#[test]
fn a_key_encoded_against_another_keys_baseline_finds_its_moved_pages() {
    let first = corpus(4 << 20, 1).remove(0);
    let second = moved_and_changed(&first, 9);
    let enc = PageDeltaEncoder::new(config(4096, 64 * 4096, 2)).unwrap();
    let dec = PageDeltaDecoder::new(config(4096, 64 * 4096, 2)).unwrap();
    step(&enc, &dec, "a", &first);
    let id = enc.baseline("a").unwrap();
    assert_eq!(enc.fork("a", "b"), Some(id));
    assert_eq!(enc.fork("nothing", "b"), None);
    let round = enc.encode("b", &second, EncodeOptions::default()).unwrap();
    assert_eq!(round.base_key(), Some("a"));
    assert_eq!(round.header().base, Some(id));
    let similar: usize = round
        .segments()
        .iter()
        .map(|s| s.get(CLASSES).iter().filter(|&&c| c == PageClass::LiteralSimilar as u8).count())
        .sum();
    let live = first.chunks(4096).filter(|p| p.iter().any(|&b| b != 0)).count();
    assert!(similar * 2 > live, "{similar} similar pages of {live} non-zero pages");
    // A decoder without "a" refuses; one with it rebuilds "b" and keeps "a" as it was.
    let other = PageDeltaDecoder::new(config(4096, 64 * 4096, 2)).unwrap();
    assert!(matches!(deliver(&other, &round), Err(Error::MissingBaseline { key, .. }) if key == "a"));
    assert!(deliver(&dec, &round).unwrap() == second);
    assert_eq!(dec.baseline("a"), Some(id));
    assert_eq!(dec.baseline("b"), Some(round.header().produces()));
    enc.commit(round).unwrap();
    // The next round of "b" is a delta of "b"'s own.
    let again = enc.encode("b", &second, EncodeOptions::default()).unwrap();
    assert_eq!(again.base_key(), None);
    assert_eq!(again.counts().unchanged as usize, second.len() / 4096);
}

#[test]
fn an_installed_reference_image_is_a_baseline_both_sides_name_alike() {
    let images = corpus(1 << 20, 2);
    let enc = PageDeltaEncoder::new(config(4096, 64 * 4096, 2)).unwrap();
    let id = enc.install("k", images[0].clone()).unwrap();
    assert_eq!(id, hde_delta::BaselineId { seq: 0, checksum: hde_delta::checksum(&images[0], 4096) });
    let round = enc.encode("k", &images[1], EncodeOptions::default()).unwrap();
    assert_eq!(round.header().base, Some(id));
    assert!(round.counts().unchanged > 0);

    let dec = PageDeltaDecoder::new(config(4096, 64 * 4096, 2)).unwrap();
    assert_eq!(dec.install("k", 4096, images[0].clone()).unwrap(), id);
    assert!(deliver(&dec, &round).unwrap() == images[1]);

    // A receiver holding another image refuses the delta.
    let other = PageDeltaDecoder::new(config(4096, 64 * 4096, 2)).unwrap();
    let mut wrong = images[0].clone();
    wrong[12345] ^= 1;
    other.install("k", 4096, wrong).unwrap();
    assert!(matches!(deliver(&other, &round), Err(Error::BaselineMismatch { .. })));
    enc.commit(round).unwrap();
}

#[test]
fn a_baseline_restored_from_hashes_verifies_its_content_page_by_page() {
    let images = corpus(1 << 20, 3);
    let cfg = config(4096, 64 * 4096, 2);
    let enc = PageDeltaEncoder::new(cfg.clone()).unwrap();
    let dec = PageDeltaDecoder::new(cfg.clone()).unwrap();
    step(&enc, &dec, "k", &images[0]);
    let info = enc.baseline_info("k").unwrap();
    let hashes = enc.baseline_hashes("k").unwrap();
    let len = images[0].len() as u64;
    let reference = step(&enc, &dec, "k", &images[1]).bytes;

    // The content as saved: nothing stale, the same delta as the encoder that never stopped.
    let dec = PageDeltaDecoder::new(cfg.clone()).unwrap();
    dec.restore("k", info.id, 4096, images[0].clone()).unwrap();
    let again = PageDeltaEncoder::new(cfg.clone()).unwrap();
    let content = Some(images[0].clone().into());
    assert_eq!(again.restore_hashed("k", info.id, len, hashes.clone(), content, 0, Duration::ZERO).unwrap(), 0);
    assert_eq!(step(&again, &dec, "k", &images[1]).bytes, reference);

    // The file changed since (16 pages): those pages are stale, the rest still patches, and
    // the rounds decode exactly, stale pages changed or not.
    let mut changed = images[0].clone();
    for p in 0..16 {
        changed[p * 4096 * 7 + 11] ^= 0x5a;
    }
    for content in [Some(changed.into()), None, Some(vec![1u8; 10].into())] {
        let dec = PageDeltaDecoder::new(cfg.clone()).unwrap();
        dec.restore("k", info.id, 4096, images[0].clone()).unwrap();
        let again = PageDeltaEncoder::new(cfg.clone()).unwrap();
        let whole = content.as_ref().is_none_or(|c: &hde_delta::Image| c.len() != images[0].len());
        let stale = again.restore_hashed("k", info.id, len, hashes.clone(), content, 0, Duration::ZERO).unwrap();
        assert_eq!(stale, if whole { hashes.len() } else { 16 });
        let s = step(&again, &dec, "k", &images[1]);
        assert_eq!(s.keyframe, None, "hashes alone still give a delta");
        step(&again, &dec, "k", &images[2]);
        step(&again, &dec, "k", &images[0]);
    }

    // Hashes that are not the baseline's are refused.
    let mut wrong = hashes.clone();
    wrong[3] ^= 1;
    let err = again.restore_hashed("x", info.id, len, wrong, None, 0, Duration::ZERO).unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err:?}");
    let err = again.restore_hashed("x", info.id, len + 4096, hashes, None, 0, Duration::ZERO).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// A baseline restored from its hashes over content damaged anywhere still encodes every
    /// later round so that it decodes exactly.
    #[test]
    fn hash_restored_baselines_with_damaged_content_decode_exactly(
        start in prop::collection::vec(0u8..8, 1..12_000),
        damage in prop::collection::vec(mutation(), 0..6),
        rounds in prop::collection::vec(prop::collection::vec(mutation(), 0..6), 1..4),
    ) {
        let cfg = DeltaConfig { xor_max_bytes: 128, ..config(512, 2048, 2) };
        let enc = PageDeltaEncoder::new(cfg.clone()).unwrap();
        let dec = PageDeltaDecoder::new(cfg.clone()).unwrap();
        let mut image = start;
        step(&enc, &dec, "k", &image);
        let info = enc.baseline_info("k").unwrap();
        let hashes = enc.baseline_hashes("k").unwrap();
        let mut content = image.clone();
        for m in &damage {
            apply_mutation(&mut content, m);
        }
        let again = PageDeltaEncoder::new(cfg).unwrap();
        again.restore_hashed("k", info.id, image.len() as u64, hashes, Some(content.into()), 0, Duration::ZERO).unwrap();
        for mutations in rounds {
            for m in &mutations {
                apply_mutation(&mut image, m);
            }
            step(&again, &dec, "k", &image);
        }
    }
}

/// A round given as its dirty pages makes the frame a whole image makes, and decodes to that
/// image; pages given with their old content cost nothing; bad input is a typed error.
#[test]
fn a_round_of_dirty_pages_is_the_round_of_the_whole_image() {
    const PS: usize = 4096;
    let rounds = corpus(2 << 20, 4);
    let cfg = config(PS, 256 << 10, 2);
    let (whole, dirty) = (PageDeltaEncoder::new(cfg.clone()).unwrap(), PageDeltaEncoder::new(cfg.clone()).unwrap());
    let dec = PageDeltaDecoder::new(cfg.clone()).unwrap();
    let err = dirty.encode_dirty("vm", &[], EncodeOptions::default()).unwrap_err();
    assert!(matches!(err, Error::DirtyRound { .. }), "{err:?}");
    for (r, image) in rounds.iter().enumerate() {
        let expected = whole.encode("vm", image, EncodeOptions::default()).unwrap();
        let round = if r == 0 {
            dirty.encode("vm", image, EncodeOptions::default()).unwrap()
        } else {
            // The pages that changed, and every seventh page as it was (a caller's dirty log
            // over-reports).
            let old = &rounds[r - 1];
            let updates: Vec<(u64, &[u8])> = image
                .chunks(PS)
                .zip(old.chunks(PS))
                .enumerate()
                .filter(|(p, (new, old))| new != old || p % 7 == 0)
                .map(|(p, (new, _))| (p as u64, new))
                .collect();
            assert!(updates.len() < image.len() / PS, "round {r}: every page dirty");
            // Where a keyframe is asked for, the pages over the baseline make the whole image.
            let key = dirty
                .encode_dirty("vm", &updates, EncodeOptions { force_keyframe: true, ..EncodeOptions::default() })
                .unwrap();
            assert!(key.header().is_keyframe());
            let fresh = PageDeltaDecoder::new(cfg.clone()).unwrap();
            assert!(deliver(&fresh, &key).unwrap() == *image, "round {r}: keyframe from dirty pages differs");
            drop(key);
            let r = dirty.encode_dirty("vm", &updates, EncodeOptions::default()).unwrap();
            // The same header but for the sequences (the keyframes above took some).
            let (got, want) = (r.header(), expected.header());
            assert_eq!(got.base.map(|b| b.checksum), want.base.map(|b| b.checksum));
            assert_eq!(
                (got.image_len, got.segment_size, got.checksum),
                (want.image_len, want.segment_size, want.checksum)
            );
            r
        };
        assert_eq!(round.counts(), expected.counts(), "round {r}");
        assert!(round.segments() == expected.segments(), "round {r}: streams differ");
        assert!(deliver(&dec, &round).unwrap() == *image, "round {r}: decoded image differs");
        whole.commit(expected).unwrap();
        dirty.commit(round).unwrap();
    }
    // A page outside the image, a page of another length.
    let page = vec![1u8; PS];
    for bad in [vec![(1u64 << 40, &page[..])], vec![(0, &page[..100])]] {
        let err = dirty.encode_dirty("vm", &bad, EncodeOptions::default()).unwrap_err();
        assert!(matches!(err, Error::DirtyRound { .. }), "{err:?}");
    }
    // A baseline whose bytes are not held (bounded content) cannot take dirty pages.
    let bounded =
        PageDeltaEncoder::new(DeltaConfig { content: BaselineContent::Bounded { cache_bytes: 1 << 16 }, ..cfg })
            .unwrap();
    let r0 = bounded.encode("vm", &rounds[0], EncodeOptions::default()).unwrap();
    bounded.commit(r0).unwrap();
    let one = [(3u64, &rounds[1][3 * PS..4 * PS])];
    let err = bounded.encode_dirty("vm", &one, EncodeOptions::default()).unwrap_err();
    assert!(matches!(err, Error::DirtyRound { reason: "the baseline's bytes are not held", .. }), "{err:?}");
}
