//! Integration tests of the wire format: round trips, every bit flip and truncation of real
//! headers and segments, hostile lengths, and the golden vectors of `golden/`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // reason: a test fails by panicking.

use std::path::PathBuf;

use hde_core::codec::CodecId;
use hde_core::delta::{BaselineId, RoundHeader, PAGE_LAYOUT};
use hde_core::frame::{self, FrameHeader, FrameLimits, SegmentRecord, StreamDesc};
use hde_core::Error;

fn delta_header() -> FrameHeader {
    FrameHeader {
        key: "vm-42".into(),
        round: RoundHeader {
            seq: 1_700_000_000_000_123,
            base: Some(BaselineId { seq: 1_700_000_000_000_122, checksum: 0x0123_4567_89ab_cdef }),
            image_len: 10 * 4096 + 100,
            page_size: 4096,
            segment_size: 16 * 4096,
            checksum: 0xfeed_face_dead_beef,
        },
        base_key: None,
        streams: 4,
    }
}

/// A delta against another key's baseline.
fn cross_header() -> FrameHeader {
    let mut h = delta_header();
    h.base_key = Some("vm-7".into());
    h
}

fn keyframe_header() -> FrameHeader {
    let mut h = delta_header();
    h.round.base = None;
    h.key = "keyframe".into();
    h
}

fn segment() -> SegmentRecord {
    let data: Vec<u8> = (0..100u8).collect();
    SegmentRecord {
        index: 0,
        streams: vec![
            StreamDesc { codec: CodecId::Zstd, with_reference: false, raw_len: 11, stored_len: 10 },
            StreamDesc { codec: CodecId::Raw, with_reference: false, raw_len: 20, stored_len: 20 },
            StreamDesc { codec: CodecId::Lz4, with_reference: false, raw_len: 50, stored_len: 30 },
            StreamDesc { codec: CodecId::Zstd, with_reference: true, raw_len: 4096, stored_len: 40 },
        ],
        data,
    }
}

fn encode_frame(header: &FrameHeader, record: &SegmentRecord) -> Vec<u8> {
    let mut bytes = frame::encode_header(header).unwrap();
    bytes.extend(frame::encode_segment(record));
    bytes
}

fn decode_frame(bytes: &[u8]) -> hde_core::Result<(FrameHeader, SegmentRecord)> {
    let mut r = bytes;
    let header = frame::read_header(&mut r, &FrameLimits::default())?;
    let record = frame::read_segment(&mut r, &header, &PAGE_LAYOUT, 0)?;
    Ok((header, record))
}

#[test]
fn headers_and_segments_round_trip() {
    for header in [delta_header(), keyframe_header(), cross_header()] {
        let bytes = encode_frame(&header, &segment());
        let (h, s) = decode_frame(&bytes).unwrap();
        assert_eq!(h, header);
        assert_eq!(s, segment());
        assert_eq!(s.stream(3), &(60u8..100).collect::<Vec<_>>()[..]);
    }
}

#[test]
fn every_bit_flip_and_truncation_is_an_error() {
    for bytes in [encode_frame(&delta_header(), &segment()), encode_frame(&cross_header(), &segment())] {
        flips_and_cuts_are_errors(&bytes);
    }
    // A keyframe cannot name a base key, nor a frame its own key.
    let mut kf = keyframe_header();
    kf.base_key = Some("vm-7".into());
    assert!(frame::encode_header(&kf).is_err());
    let mut own = cross_header();
    own.base_key = Some(own.key.clone());
    let bytes = frame::encode_header(&own).unwrap();
    assert!(matches!(
        frame::read_header(&mut &bytes[..], &FrameLimits::default()),
        Err(Error::CorruptFrame { reason: "base key empty or the frame's own key" })
    ));
}

fn flips_and_cuts_are_errors(bytes: &[u8]) {
    let bytes = bytes.to_vec();
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut bad = bytes.clone();
            bad[i] ^= 1 << bit;
            assert!(decode_frame(&bad).is_err(), "flip of bit {bit} of byte {i} accepted");
        }
    }
    for len in 0..bytes.len() {
        assert!(decode_frame(&bytes[..len]).is_err(), "truncation to {len} accepted");
    }
}

#[test]
fn a_stream_splits_into_its_frames_and_an_empty_input_is_named() {
    let (a, b) = (encode_frame(&keyframe_header(), &segment()), encode_frame(&delta_header(), &segment()));
    let stream = [a.clone(), b.clone()].concat();
    let limits = FrameLimits::default();
    assert_eq!(frame::frame_len(&stream, &limits, &PAGE_LAYOUT).unwrap(), a.len());
    assert_eq!(frame::frame_len(&stream[a.len()..], &limits, &PAGE_LAYOUT).unwrap(), b.len());
    // Every cut inside a frame is an error, never a shorter frame.
    for len in 1..a.len() {
        assert!(frame::frame_len(&stream[..len], &limits, &PAGE_LAYOUT).is_err(), "cut at {len} accepted");
    }
    assert!(matches!(frame::frame_len(&[], &limits, &PAGE_LAYOUT), Err(Error::EmptyInput)));
    assert!(matches!(frame::read_header(&mut &[][..], &limits), Err(Error::EmptyInput)));
    assert_eq!(Error::EmptyInput.to_string(), "empty input: not an HDE frame");
    assert!(matches!(frame::read_header(&mut &a[..3], &limits), Err(Error::CorruptFrame { .. })));
}

#[test]
fn hostile_lengths_are_refused_before_allocation() {
    // A header claiming a 1 PiB image (checksum made valid): refused by the limit.
    let mut huge = delta_header();
    huge.round.image_len = 1 << 50;
    huge.round.segment_size = 1 << 30;
    let bytes = frame::encode_header(&huge).unwrap();
    let err = frame::read_header(&mut &bytes[..], &FrameLimits::default()).unwrap_err();
    assert!(matches!(err, Error::LimitExceeded { what: "image size", .. }), "{err:?}");
    // A segment claiming 4 GiB of literals for a 64 KiB segment.
    let mut record = segment();
    record.streams[3].raw_len = u32::MAX;
    let bytes = encode_frame(&delta_header(), &record);
    assert!(matches!(decode_frame(&bytes), Err(Error::LimitExceeded { .. })));
    // Stored length far beyond what any codec writes for the raw length.
    let mut record = segment();
    record.streams[1].stored_len = 1 << 30;
    let bytes = encode_frame(&delta_header(), &record);
    assert!(matches!(decode_frame(&bytes), Err(Error::LimitExceeded { .. })));
    // A keyframe claiming 60 GiB (within the default 64 GiB limit) with 60 valid, empty
    // 1 GiB segment records: the decoder tries the allocation and answers with a typed error
    // (out of memory where the system refuses, a corrupt segment where it overcommits).
    let mut claim = keyframe_header();
    claim.round.image_len = 60 << 30;
    claim.round.segment_size = 1 << 30;
    let mut bytes = frame::encode_header(&claim).unwrap();
    for index in 0..60 {
        let empty = StreamDesc { codec: CodecId::Raw, with_reference: false, raw_len: 0, stored_len: 0 };
        bytes.extend(frame::encode_segment(&SegmentRecord { index, streams: vec![empty; 4], data: Vec::new() }));
    }
    let decoder = hde_core::Decoder::new(hde_core::delta::DeltaConfig::default()).unwrap();
    let err = decoder.decompress(&bytes).unwrap_err();
    assert!(matches!(err, Error::Delta(_) | Error::CorruptFrame { .. } | Error::Codec(_)), "{err:?}");
    // Not a frame at all.
    assert!(matches!(
        decode_frame(b"PK\x03\x04 some zip file ........................................................"),
        Err(Error::NotAFrame { .. })
    ));
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden")
}

/// The checked-in frames of format version 1 (four streams per segment, no stream count)
/// must decode to what they were made from, for ever; those of version 2 too, and this
/// build must write them byte for byte. `HDE_BLESS=1 cargo test -p hde-core` writes the
/// version 2 files (only when the format changes on purpose, with a new version).
#[test]
fn golden_frames_decode() {
    let cases = [
        ("frame-v1-delta-header-segment.bin", delta_header(), false),
        ("frame-v1-keyframe-header-segment.bin", keyframe_header(), false),
        ("frame-v2-delta-header-segment.bin", delta_header(), true),
        ("frame-v2-cross-header-segment.bin", cross_header(), true),
    ];
    for (name, header, current) in cases {
        let path = golden_dir().join(name);
        let fresh = encode_frame(&header, &segment());
        if current && std::env::var_os("HDE_BLESS").is_some() {
            std::fs::write(&path, &fresh).unwrap();
        }
        let stored = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (h, s) = decode_frame(&stored).unwrap();
        assert_eq!(h, header, "{name}");
        assert_eq!(s, segment(), "{name}");
        if current {
            assert_eq!(stored, fresh, "{name}: this build writes version {} differently", frame::VERSION);
        } else {
            assert_eq!(stored[4], 1, "{name}");
        }
    }
}

/// A frame whose segments have another number of streams than the delta layer reading it is
/// refused with a typed error, before any segment is read; a count outside 1..=16 is refused
/// when written and when read.
#[test]
fn a_frame_of_another_layout_is_refused() {
    let mut three = delta_header();
    three.streams = 3;
    let mut record = segment();
    record.streams.pop();
    record.data.truncate(60);
    let bytes = encode_frame(&three, &record);
    let err = decode_frame(&bytes).unwrap_err();
    assert!(matches!(err, Error::LayoutMismatch { frame: 3, layer: 4 }), "{err:?}");
    let err = frame::frame_len(&bytes, &FrameLimits::default(), &PAGE_LAYOUT).unwrap_err();
    assert!(matches!(err, Error::LayoutMismatch { .. }), "{err:?}");
    for count in [0, 17] {
        let mut h = delta_header();
        h.streams = count;
        assert!(matches!(frame::encode_header(&h), Err(Error::LimitExceeded { .. })));
        // Made valid by hand: the count byte follows the 56 bytes of version 1's fixed part.
        let mut bytes = frame::encode_header(&delta_header()).unwrap();
        bytes[56] = count;
        let end = bytes.len() - 8;
        let sum = xxhash_rust::xxh3::xxh3_64(&bytes[..end]);
        bytes[end..].copy_from_slice(&sum.to_le_bytes());
        let err = frame::read_header(&mut &bytes[..], &FrameLimits::default()).unwrap_err();
        assert!(matches!(err, Error::CorruptFrame { reason: "stream count out of range" }), "{err:?}");
    }
}

mod engine {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use hde_core::codec::{CodecId, CodecSet, CodecSpec};
    use hde_core::delta::{DeltaConfig, EncodeOptions, PageDeltaEncoder};
    use hde_core::selector::{LearningSelector, NetworkMode, SelectorConfig};
    use hde_core::{CodecBank, Decoder, Encoder, Error};
    use hde_corpus::{generate, CorpusConfig};

    fn config() -> DeltaConfig {
        DeltaConfig { segment_size: 1 << 20, threads: 2, first_sequence: 1, ..DeltaConfig::default() }
    }

    fn selector(mode: NetworkMode) -> SelectorConfig {
        SelectorConfig { mode, ..SelectorConfig::default() }
    }

    fn rounds() -> Vec<Vec<u8>> {
        generate(&CorpusConfig { size: 4 << 20, rounds: 5, ..CorpusConfig::default() }).unwrap()
    }

    #[test]
    fn rounds_round_trip_and_deltas_are_small() {
        for mode in [NetworkMode::Datacenter, NetworkMode::Internet, NetworkMode::Hybrid] {
            let enc = Encoder::new(config(), selector(mode)).unwrap();
            let dec = Decoder::new(config()).unwrap();
            let mut sizes = Vec::new();
            for image in rounds() {
                let frame = enc.compress("vm", &image).unwrap();
                let (header, decoded) = dec.decompress(&frame).unwrap();
                assert_eq!(header.key, "vm");
                assert!(decoded.as_slice() == image.as_slice(), "{mode}: round differs");
                sizes.push(frame.len());
            }
            // Round 0 is a keyframe; later rounds carry only what changed.
            assert!(sizes[1..].iter().all(|&s| s * 5 < sizes[0]), "{mode}: {sizes:?}");
        }
    }

    /// Internet mode writes deltas in segments of `INTERNET_DELTA_SEGMENT` (ratio first); the
    /// other modes in the configuration's; a caller's size wins, and a bad one is an error.
    #[test]
    fn the_delta_segment_follows_the_mode_and_the_options() {
        let images = rounds();
        let delta_segment = |mode, options: EncodeOptions| {
            let enc = Encoder::new(config(), selector(mode)).unwrap();
            enc.compress("vm", &images[0]).unwrap();
            let mut frame = Vec::new();
            let summary = enc.compress_to("vm", &images[1], &mut frame, options)?;
            let dec = Decoder::new(config()).unwrap();
            Ok::<_, Error>(summary.header.round.segment_size)
                .inspect(|_| assert!(dec.decompress(&frame).is_err(), "no baseline: refused"))
        };
        let default = config().delta_segment_size() as u32;
        assert_eq!(delta_segment(NetworkMode::Hybrid, EncodeOptions::default()).unwrap(), default);
        assert_eq!(
            delta_segment(NetworkMode::Internet, EncodeOptions::default()).unwrap(),
            hde_core::INTERNET_DELTA_SEGMENT as u32
        );
        let asked = EncodeOptions { delta_segment_size: Some(2 << 20), ..EncodeOptions::default() };
        assert_eq!(delta_segment(NetworkMode::Internet, asked).unwrap(), 2 << 20);
        let bad = EncodeOptions { delta_segment_size: Some(5000), ..EncodeOptions::default() };
        let err = delta_segment(NetworkMode::Hybrid, bad).unwrap_err();
        assert!(matches!(err, Error::Delta(hde_core::delta::Error::InvalidConfig { .. })), "{err:?}");
    }

    /// `decompress_into` rebuilds what `decompress` does into the caller's buffer, whatever
    /// that held, reusing its memory, and leaves the decoder's baseline where it was.
    #[test]
    fn decompress_into_reuses_the_buffer_and_keeps_the_baseline() {
        let images = rounds();
        let enc = Encoder::new(config(), selector(NetworkMode::Hybrid)).unwrap();
        let (dec, into) = (Decoder::new(config()).unwrap(), Decoder::new(config()).unwrap());
        let key = enc.compress("vm", &images[0]).unwrap();
        dec.decompress(&key).unwrap();
        into.decompress(&key).unwrap();
        let delta = enc.compress("vm", &images[1]).unwrap();
        let mut out = vec![0xa5; 3 * images[1].len()];
        let capacity = out.capacity();
        for _ in 0..2 {
            let header = into.decompress_into(&delta, &mut out).unwrap();
            assert_eq!(header.key, "vm");
            assert!(out == images[1], "decoded into a used buffer");
            assert_eq!(out.capacity(), capacity, "the buffer's memory is reused");
        }
        // The baseline is still round 0: the same delta decodes again, and the decoder that
        // made round 1 its baseline refuses it.
        assert_eq!(dec.decompress(&delta).unwrap().1.as_slice(), &images[1][..]);
        assert!(dec.decompress(&delta).is_err());
        // Damage is an error, never other bytes.
        let mut bad = delta.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x40;
        assert!(into.decompress_into(&bad, &mut out).is_err());
        assert!(into.decompress_into(&delta[..delta.len() - 3], &mut out).is_err());
    }

    /// A baseline installed in place (the old content of each page at its own offset, as a
    /// migration's batch has it) round-trips; a page whose old content is zero is sent
    /// without a reference (there is nothing in a zero page for a codec to match).
    #[test]
    fn an_in_place_baseline_round_trips_and_zero_pages_are_no_reference() {
        let images = rounds();
        let (old, new) = (&images[0], &images[1]);
        let mut half_zero = old.clone();
        let len = half_zero.len();
        half_zero[..len / 2].fill(0);
        for base in [old, &half_zero, &vec![0; len]] {
            let enc = Encoder::new(config(), selector(NetworkMode::Internet)).unwrap();
            let dec = Decoder::new(config()).unwrap();
            enc.delta().install_in_place("vm", base.clone()).unwrap();
            dec.delta().install("vm", 4096, base.clone()).unwrap();
            let mut frame = Vec::new();
            let summary = enc.compress_to("vm", new, &mut frame, EncodeOptions::default()).unwrap();
            assert_eq!(dec.decompress(&frame).unwrap().1.as_slice(), &new[..]);
            let referenced = summary.codecs.iter().any(|(c, _)| c.ends_with("+ref"));
            if base.iter().all(|&b| b == 0) {
                assert!(!referenced, "a zero baseline is no reference: {:?}", summary.codecs);
            }
        }
    }

    #[test]
    fn a_delta_without_its_baseline_is_a_typed_error() {
        let enc = Encoder::new(config(), SelectorConfig::default()).unwrap();
        let images = rounds();
        enc.compress("vm", &images[0]).unwrap();
        let delta = enc.compress("vm", &images[1]).unwrap();
        let fresh = Decoder::new(config()).unwrap();
        let err = fresh.decompress(&delta).unwrap_err();
        assert!(matches!(err, Error::Delta(hde_core::delta::Error::MissingBaseline { .. })), "{err:?}");
        assert!(err.to_string().contains("keyframe"));
        // Recovery: a keyframe on request.
        let mut key = Vec::new();
        enc.compress_to("vm", &images[2], &mut key, EncodeOptions { force_keyframe: true, ..EncodeOptions::default() })
            .unwrap();
        assert_eq!(fresh.decompress(&key).unwrap().1.as_slice(), &images[2][..]);
    }

    /// A user's codec bank (here: counting calls around the default set) swaps in without
    /// touching the delta layer or the selector.
    #[derive(Clone, Default)]
    struct Counting(CodecSet);
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    impl CodecBank for Counting {
        fn compress(
            &mut self,
            spec: CodecSpec,
            input: &[u8],
            reference: &[u8],
            out: &mut Vec<u8>,
        ) -> hde_core::codec::Result<usize> {
            CALLS.fetch_add(1, Ordering::Relaxed);
            self.0.compress(spec, input, reference, out)
        }
        fn decompress(
            &mut self,
            id: CodecId,
            input: &[u8],
            reference: &[u8],
            out: &mut [u8],
        ) -> hde_core::codec::Result<usize> {
            self.0.decompress(id, input, reference, out)
        }
    }

    #[test]
    fn a_layer_swaps_without_touching_the_rest() {
        let enc: Encoder<PageDeltaEncoder, LearningSelector, Counting> = Encoder::with_layers(
            PageDeltaEncoder::new(config()).unwrap(),
            LearningSelector::new(SelectorConfig::default()).unwrap(),
            2,
        )
        .with_codecs(Counting::default());
        let dec = Decoder::new(config()).unwrap();
        for image in rounds().iter().take(2) {
            let frame = enc.compress("vm", image).unwrap();
            assert_eq!(dec.decompress(&frame).unwrap().1.as_slice(), &image[..]);
        }
        assert!(CALLS.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn many_keys_encode_concurrently_and_round_trip() {
        let enc = Arc::new(Encoder::new(DeltaConfig { threads: 1, ..config() }, SelectorConfig::default()).unwrap());
        let dec = Arc::new(Decoder::new(DeltaConfig { threads: 1, ..config() }).unwrap());
        let images = Arc::new(generate(&CorpusConfig { size: 1 << 20, rounds: 3, ..CorpusConfig::default() }).unwrap());
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let (enc, dec, images) = (enc.clone(), dec.clone(), images.clone());
                std::thread::spawn(move || {
                    let key = format!("vm-{t}");
                    for image in images.iter() {
                        let frame = enc.compress(&key, image).unwrap();
                        let (header, decoded) = dec.decompress(&frame).unwrap();
                        assert_eq!(header.key, key);
                        assert!(decoded.as_slice() == image.as_slice());
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }

    #[test]
    fn decoding_into_a_file_gives_the_same_image_and_keeps_no_baseline() {
        // 64 KiB segments: duplicates of pages in other segments are copied after the checksum.
        let small = DeltaConfig { segment_size: 64 << 10, delta_segment_factor: 1, ..config() };
        let enc = Encoder::new(small.clone(), SelectorConfig::default()).unwrap();
        let images = generate(&CorpusConfig { size: 2 << 20, rounds: 2, ..CorpusConfig::default() }).unwrap();
        let dir = std::env::temp_dir().join(format!("hde-to-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.raw");
        let open =
            || std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        let key = enc.compress("vm", &images[0]).unwrap();
        let delta = enc.compress("vm", &images[1]).unwrap();
        let dec = Decoder::new(small).unwrap();
        // A keyframe into a file: the same bytes, and nothing kept.
        let header = dec.decompress_to_file(&mut &key[..], &open()).unwrap();
        assert!(header.round.is_keyframe());
        assert!(std::fs::read(&path).unwrap() == images[0]);
        assert!(dec.delta().baseline("vm").is_none());
        // A delta into a file, against a baseline held in memory, which stays as it was.
        dec.decompress(&key).unwrap();
        let before = dec.delta().baseline("vm");
        dec.decompress_to_file(&mut &delta[..], &open()).unwrap();
        assert!(std::fs::read(&path).unwrap() == images[1]);
        assert_eq!(dec.delta().baseline("vm"), before);
        // Damage is an error, as in memory.
        for i in (0..delta.len()).step_by(97) {
            let mut bad = delta.clone();
            bad[i] ^= 0x40;
            if dec.decompress_to_file(&mut &bad[..], &open()).is_ok() {
                assert!(std::fs::read(&path).unwrap() == images[1], "flip at {i} wrote a wrong image");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn damaged_frames_are_errors_never_wrong_images() {
        let enc = Encoder::new(config(), SelectorConfig::default()).unwrap();
        let images = generate(&CorpusConfig { size: 256 << 10, rounds: 2, ..CorpusConfig::default() }).unwrap();
        let frame0 = enc.compress("vm", &images[0]).unwrap();
        let frame1 = enc.compress("vm", &images[1]).unwrap();
        for (i, bit) in (0..frame1.len()).step_by(13).map(|i| (i, i % 8)) {
            let dec = Decoder::new(config()).unwrap();
            dec.decompress(&frame0).unwrap();
            let mut bad = frame1.clone();
            bad[i] ^= 1 << bit;
            match dec.decompress(&bad) {
                Err(_) => {}
                Ok((_, image)) => assert!(image.as_slice() == images[1].as_slice(), "flip at {i} gave a wrong image"),
            }
        }
    }
}

mod node {
    use std::sync::Arc;

    use hde_core::selector::NetworkMode;
    use hde_core::{Error, Hde, HdeConfig};
    use hde_corpus::{generate, CorpusConfig};

    fn config(node: u64) -> HdeConfig {
        let mut c = HdeConfig::new(node);
        c.threads = 2;
        c.delta.segment_size = 1 << 20;
        c.delta.first_sequence = 1 + node * 1_000_000;
        c
    }

    fn rounds(n: usize) -> Vec<Vec<u8>> {
        generate(&CorpusConfig { size: 2 << 20, rounds: n, ..CorpusConfig::default() }).unwrap()
    }

    /// A file of several frames, sent again in part: earlier frames the receiver holds are
    /// skipped, the last decides the image, and only the last frame of the key is persisted.
    #[test]
    fn a_stream_sent_again_in_part_decodes_to_its_last_image() {
        use hde_core::delta::DeltaDecoder as _;
        use hde_core::frame::{frames, FrameLimits};
        use hde_core::session::{Receiver, StreamOutput};
        let images = rounds(3);
        let sender = Hde::new(config(1)).unwrap();
        let mut file = Vec::new();
        for image in &images {
            sender.compress_to("vm", image, &mut file).unwrap();
        }
        let receiver_node = Hde::new(config(2)).unwrap();
        let layout = receiver_node.receiver().layout();
        let split: Vec<&[u8]> = frames(&file, &FrameLimits::default(), layout).collect::<Result<_, _>>().unwrap();
        assert_eq!(split.len(), 3);
        let receiver = Receiver::new(&receiver_node);
        let mut seen = Vec::new();
        let first = receiver
            .receive_stream(&split[..2], StreamOutput::Memory, |i, h, _| {
                seen.push((i, h.round.seq));
                Ok(())
            })
            .unwrap();
        assert!(first.image.as_ref().unwrap().as_slice() == images[1].as_slice());
        assert_eq!(seen.len(), 2);
        // The whole file again: frame 0 is stale, frame 1 a retry, frame 2 new.
        let again = receiver.receive_stream(&split, StreamOutput::Memory, |_, _, _| Ok(())).unwrap();
        assert!(again.image.as_ref().unwrap().as_slice() == images[2].as_slice());
        assert_eq!(again.applied().len(), 1);
        assert!(!again.applied()[0].retry);
        receiver.finish_stream(&again, None).unwrap();
        // A frame that does not apply names its place in the stream.
        let fresh = Hde::new(config(3)).unwrap();
        let err =
            Receiver::new(&fresh).receive_stream(&split[1..], StreamOutput::Memory, |_, _, _| Ok(())).unwrap_err();
        assert_eq!((err.index, err.key.as_deref(), err.rounds), (0, Some("vm"), 0));
        assert!(err.error.needs_keyframe(), "{:?}", err.error);
    }

    #[test]
    fn defaults_are_valid_and_bad_configs_are_typed_errors() {
        HdeConfig::new(1).validate().unwrap();
        let mut bad = HdeConfig::new(1);
        bad.threads = 0;
        assert!(matches!(Hde::new(bad), Err(Error::Delta(_))));
        let mut bad = HdeConfig::new(1);
        bad.bandwidth = -5.0;
        assert!(matches!(Hde::new(bad), Err(Error::InvalidConfig { .. })));
        let mut bad = HdeConfig::new(1);
        bad.delta.segment_size = 5000;
        assert!(Hde::new(bad).is_err());
    }

    #[test]
    fn two_nodes_exchange_rounds_with_exact_metrics() {
        let a = Hde::new(config(1)).unwrap();
        let b = Hde::new(config(2)).unwrap();
        let images = rounds(4);
        let mut out_bytes = 0;
        for image in &images {
            let frame = a.compress("vm", image).unwrap();
            out_bytes += frame.len() as u64;
            let (header, decoded) = b.decompress(&frame).unwrap();
            assert_eq!(header.key, "vm");
            assert!(decoded.as_slice() == image.as_slice());
        }
        let m = a.metrics();
        assert_eq!(m.frames_encoded, 4);
        assert_eq!(m.bytes_in, images.iter().map(|i| i.len() as u64).sum::<u64>());
        assert_eq!(m.bytes_out, out_bytes);
        assert!((m.compression_ratio - out_bytes as f64 / m.bytes_in as f64).abs() < 1e-12);
        assert!(m.bandwidth_saving_percent > 50.0);
        assert!((m.delta_hit_rate - 0.75).abs() < 1e-12);
        assert_eq!(m.pages.total(), 4 * (2 << 20) / 4096);
        assert!(m.codec_use.values().sum::<u64>() >= 4);
        // The receiving node counts the same bytes from its side.
        let r = b.metrics();
        assert_eq!(r.frames_decoded, 4);
        assert_eq!(r.decoded_frame_bytes, out_bytes);
        assert_eq!(r.decoded_image_bytes, m.bytes_in);
        assert!((r.compression_ratio - m.compression_ratio).abs() < 1e-12);
        assert!((r.delta_hit_rate - 0.75).abs() < 1e-12);
        assert_eq!(r.decoded_codec_use.values().sum::<u64>(), m.codec_use.values().sum::<u64>());
        assert!(a.health().healthy);
    }

    #[test]
    fn mode_switch_and_delta_off() {
        let a = Hde::new(config(1)).unwrap();
        assert_eq!(a.health().network_mode, NetworkMode::Hybrid);
        a.update_network_mode(NetworkMode::Datacenter);
        assert_eq!(a.health().network_mode, NetworkMode::Datacenter);
        let mut off = config(3);
        off.enable_delta = false;
        let n = Hde::new(off).unwrap();
        for image in rounds(3) {
            n.compress("vm", &image).unwrap();
        }
        assert_eq!(n.metrics().delta_hit_rate, 0.0);
    }

    #[test]
    fn baseline_metadata_replicates_between_nodes() {
        let a = Hde::new(config(1)).unwrap();
        let b = Hde::new(config(2)).unwrap();
        let images = rounds(2);
        let f0 = a.compress("vm-1", &images[0]).unwrap();
        b.decompress(&f0).unwrap();
        let f1 = a.compress("vm-1", &images[1]).unwrap();
        let seq1 = a.baseline_record("vm-1").unwrap().seq;
        // b has not seen round 1 yet; a's replica says round 1.
        assert!(b.baseline_record("vm-1").unwrap().seq < seq1);
        b.merge_remote_crdt(&a.export_crdt_state()).unwrap();
        assert_eq!(b.baseline_record("vm-1").unwrap().seq, seq1);
        assert_eq!(b.metrics().crdt_merges, 1);
        b.decompress(&f1).unwrap();
        a.merge_remote_crdt(&b.export_crdt_state()).unwrap();
        let record = a.baseline_record("vm-1").unwrap();
        assert_eq!((record.seq, record.holder), (seq1, 2)); // b's later write wins
        assert!(matches!(a.merge_remote_crdt(b"not a crdt"), Err(Error::Crdt(_))));
    }

    #[test]
    fn many_threads_many_keys_exact_metrics() {
        let a = Arc::new(Hde::new(config(1)).unwrap());
        let b = Arc::new(Hde::new(config(2)).unwrap());
        let images =
            Arc::new(generate(&CorpusConfig { size: 512 << 10, rounds: 3, ..CorpusConfig::default() }).unwrap());
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let (a, b, images) = (a.clone(), b.clone(), images.clone());
                std::thread::spawn(move || {
                    for image in images.iter() {
                        let frame = a.compress(&format!("vm-{t}"), image).unwrap();
                        assert!(b.decompress(&frame).unwrap().1.as_slice() == image.as_slice());
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let m = a.metrics();
        assert_eq!(m.frames_encoded, 12);
        assert_eq!(m.bytes_in, 12 * (512 << 10));
        assert_eq!(b.metrics().frames_decoded, 12);
        assert_eq!(m.baselines, 4);
        assert!((m.delta_hit_rate - 8.0 / 12.0).abs() < 1e-12);
    }
}

mod golden_engine {
    use hde_core::delta::DeltaConfig;
    use hde_core::selector::SelectorConfig;
    use hde_core::{Decoder, Encoder};
    use hde_corpus::{generate, CorpusConfig};

    fn config() -> DeltaConfig {
        DeltaConfig { segment_size: 64 << 10, threads: 1, first_sequence: 1, ..DeltaConfig::default() }
    }

    fn images() -> Vec<Vec<u8>> {
        generate(&CorpusConfig { size: 256 << 10, rounds: 2, seed: 11, ..CorpusConfig::default() }).unwrap()
    }

    /// Whole frames written by the engine of format version 1 must decode to the images they
    /// were made from, for ever: a keyframe, and two deltas against it (one from the first
    /// encoders, with XOR pages; one with patch pages). The encoder's own output may change
    /// (its codec choices learn from measured times); what it wrote must stay readable.
    /// `HDE_BLESS=1` writes the frames that are missing, never over an existing one.
    #[test]
    fn engine_frames_of_version_1_decode() {
        let dir = super::golden_dir();
        let [keyframe, xor_delta, patch_delta] =
            ["engine-v1-keyframe.hde", "engine-v1-delta.hde", "engine-v1-patch.hde"].map(|n| dir.join(n));
        let images = images();
        if std::env::var_os("HDE_BLESS").is_some() {
            let enc = Encoder::new(config(), SelectorConfig::default()).unwrap();
            let frames = [enc.compress("golden", &images[0]).unwrap(), enc.compress("golden", &images[1]).unwrap()];
            for (path, frame) in [&keyframe, &patch_delta].into_iter().zip(frames) {
                if !path.exists() {
                    std::fs::write(path, frame).unwrap();
                }
            }
        }
        let read = |path: &std::path::Path| std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for delta in [&xor_delta, &patch_delta] {
            let dec = Decoder::new(config()).unwrap();
            for (frame, image) in [read(&keyframe), read(delta)].iter().zip(&images) {
                let (header, decoded) = dec.decompress(frame).unwrap();
                assert_eq!(header.key, "golden");
                assert!(decoded.as_slice() == image.as_slice(), "{} decodes to another image", delta.display());
            }
        }
    }
}

mod modes {
    use hde_core::selector::NetworkMode;
    use hde_core::{Hde, HdeConfig};
    use hde_corpus::{generate, CorpusConfig};

    fn total_bytes(mode: NetworkMode, bandwidth: Option<f64>) -> usize {
        let mut c = HdeConfig::new(1);
        c.network_mode = mode;
        c.threads = 2;
        if let Some(b) = bandwidth {
            c.bandwidth = b;
        }
        let node = Hde::new(c).unwrap();
        generate(&CorpusConfig { size: 4 << 20, rounds: 3, ..CorpusConfig::default() })
            .unwrap()
            .iter()
            .map(|image| node.compress("vm", image).unwrap().len())
            .sum()
    }

    /// Bytes only (time is never asserted): internet sends far less than datacenter, and hybrid
    /// spends a slow link's time on fewer bytes. (Past `max_link_rate`, 1 Gbit/s, hybrid
    /// believes in no faster link: 10 Gbit/s is not datacenter mode.)
    #[test]
    fn modes_trade_bytes_for_speed() {
        let datacenter = total_bytes(NetworkMode::Datacenter, None);
        let internet = total_bytes(NetworkMode::Internet, None);
        assert!(internet * 10 < datacenter * 9, "internet {internet} vs datacenter {datacenter}");
        let slow = total_bytes(NetworkMode::Hybrid, Some(1.25e6));
        let fast = total_bytes(NetworkMode::Hybrid, Some(1.25e9));
        assert!(slow < fast, "hybrid at 10 Mbit/s {slow} vs 10 Gbit/s {fast}");
        assert!(slow * 5 < datacenter * 4, "hybrid at 10 Mbit/s {slow} vs datacenter {datacenter}");
    }
}

#[test]
fn compress_stream_reads_once_and_round_trips() {
    let node = hde_core::Hde::new(hde_core::HdeConfig::new(9)).unwrap();
    let image = hde_corpus::generate(&hde_corpus::CorpusConfig { size: 1 << 20, rounds: 1, ..Default::default() })
        .unwrap()
        .remove(0);
    let mut frame = Vec::new();
    let summary = node.compress_stream("vm", &mut &image[..], &mut frame).unwrap();
    assert_eq!(summary.output_bytes, frame.len() as u64);
    let receiver = hde_core::Hde::new(hde_core::HdeConfig::new(10)).unwrap();
    let (_, decoded) = receiver.decompress_from(&mut &frame[..]).unwrap();
    assert!(decoded.as_slice() == image.as_slice());
}

mod sessions {
    use hde_core::session::{Confirmed, Receiver, Refusal, Reply, Sender};
    use hde_core::{Error, Hde, HdeConfig};
    use hde_corpus::{generate, CorpusConfig};

    fn node(id: u64) -> Hde {
        let mut c = HdeConfig::new(id);
        c.threads = 2;
        c.delta.first_sequence = 1 + id * 1_000_000;
        Hde::new(c).unwrap()
    }

    fn rounds(n: usize) -> Vec<Vec<u8>> {
        generate(&CorpusConfig { size: 1 << 20, rounds: n, seed: 11, ..CorpusConfig::default() }).unwrap()
    }

    /// Sends `image` of `key` and hands the frame to `rx`; returns the frame, the reply and
    /// what the sender made of it.
    fn exchange(tx: &Sender<'_>, rx: &Receiver<'_>, key: &str, image: &[u8]) -> (Vec<u8>, Reply, Confirmed) {
        let mut frame = Vec::new();
        let flight = tx.encode(key, image, &mut frame, false).unwrap();
        let reply = match rx.receive(&frame) {
            Ok(got) => {
                assert!(got.image.as_slice() == image, "the receiver's image differs");
                rx.finish(&got).unwrap()
            }
            Err(e) => rx.refusal(key, &e),
        };
        let confirmed = tx.confirm(flight, &reply).unwrap();
        (frame, reply, confirmed)
    }

    fn is_keyframe(frame: &[u8]) -> bool {
        hde_core::frame::read_header(&mut &frame[..], &Default::default()).unwrap().round.is_keyframe()
    }

    #[test]
    fn confirmed_rounds_are_deltas_and_commit_the_sender() {
        let (a, b) = (node(1), node(2));
        let (tx, rx) = (Sender::new(&a), Receiver::new(&b));
        for (i, image) in rounds(4).iter().enumerate() {
            let (frame, reply, confirmed) = exchange(&tx, &rx, "vm", image);
            assert_eq!(is_keyframe(&frame), i == 0, "round {i}");
            let Reply::Applied { holds, .. } = reply else { panic!("round {i} refused: {reply:?}") };
            assert_eq!(confirmed, Confirmed::Committed(holds));
            assert_eq!(a.sender().baseline("vm"), Some(holds));
            assert_eq!(rx.rounds("vm"), i as u64 + 1);
        }
    }

    #[test]
    fn a_lost_frame_changes_nothing_and_a_lost_reply_recovers_by_resend_or_keyframe() {
        let images = rounds(5);
        let (a, b) = (node(1), node(2));
        let (tx, rx) = (Sender::new(&a), Receiver::new(&b));
        exchange(&tx, &rx, "vm", &images[0]);
        let before = a.sender().baseline("vm");
        // Round 1 is lost on the way: neither side moves, and round 2 is a delta that applies.
        let mut lost = Vec::new();
        drop(tx.encode("vm", &images[1], &mut lost, false).unwrap());
        assert_eq!(a.sender().baseline("vm"), before);
        let (frame, reply, _) = exchange(&tx, &rx, "vm", &images[2]);
        assert!(!is_keyframe(&frame) && matches!(reply, Reply::Applied { .. }), "{reply:?}");
        // Round 3 arrives but its reply is lost; the same frame sent again is a retry.
        let mut frame = Vec::new();
        let flight = tx.encode("vm", &images[3], &mut frame, false).unwrap();
        let got = rx.receive(&frame).unwrap();
        assert!(!got.retry);
        let again = rx.receive(&frame).unwrap();
        assert!(again.retry && again.image.as_slice() == images[3].as_slice());
        let reply = rx.finish(&again).unwrap();
        assert!(matches!(tx.confirm(flight, &reply).unwrap(), Confirmed::Committed(_)));
        // Round 4's reply is lost and nothing is resent: the sender's next delta names a baseline
        // the receiver moved past; refused, and the round after that is a keyframe by itself.
        let mut frame = Vec::new();
        drop(tx.encode("vm", &images[4], &mut frame, false).unwrap());
        rx.receive(&frame).unwrap();
        let (frame, reply, confirmed) = exchange(&tx, &rx, "vm", &images[0]);
        assert!(!is_keyframe(&frame));
        assert!(matches!(reply, Reply::Refused { reason: Refusal::BaselineMismatch, .. }), "{reply:?}");
        assert!(matches!(confirmed, Confirmed::Refused { reason: Refusal::BaselineMismatch, .. }));
        assert!(tx.needs_keyframe("vm"));
        let (frame, reply, _) = exchange(&tx, &rx, "vm", &images[0]);
        assert!(is_keyframe(&frame) && matches!(reply, Reply::Applied { .. }), "{reply:?}");
        assert!(!tx.needs_keyframe("vm"));
    }

    #[test]
    fn refusals_are_typed_and_an_unexpected_reply_is_an_error() {
        let images = rounds(2);
        let (a, b) = (node(1), node(2));
        let tx = Sender::new(&a);
        let mut k = Vec::new();
        tx.delivered(tx.encode("vm", &images[0], &mut k, false).unwrap()).unwrap();
        let mut d = Vec::new();
        let flight = tx.encode("vm", &images[1], &mut d, false).unwrap();
        // A receiver that never saw the keyframe.
        let rx = Receiver::new(&b);
        let err = rx.receive(&d).unwrap_err();
        assert_eq!(Refusal::of(&err), Refusal::MissingBaseline);
        // A damaged frame.
        rx.receive(&k).unwrap();
        let mut bad = d.clone();
        let n = bad.len();
        bad[n - 10] ^= 0x40;
        assert_eq!(Refusal::of(&rx.receive(&bad).unwrap_err()), Refusal::Corrupt);
        // A reply about another key is not a confirmation.
        let wrong = Reply::Applied { key: "other".into(), holds: flight.produces() };
        assert!(matches!(tx.confirm(flight, &wrong), Err(Error::UnexpectedReply { .. })));
        assert!(tx.needs_keyframe("vm"));
    }
}

mod sender_state {
    //! A sender's saved baseline is its page hashes and the file that held the image; the next
    //! process checks the file page by page. Whatever happened to the file, rounds decode exactly.
    use std::path::PathBuf;

    use hde_core::session::{Receiver, Reply, Sender};
    use hde_core::state::{SenderImage, Side, StateDir};
    use hde_core::{Hde, HdeConfig};
    use hde_corpus::{generate, CorpusConfig};

    fn node(id: u64) -> Hde {
        let mut c = HdeConfig::new(id);
        c.threads = 2;
        Hde::new(c).unwrap()
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hde-sender-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// One process of the sender: restores from `state`, sends `image` (from `file`, if any)
    /// to `rx` and saves; returns the frame's length and whether it was a delta.
    fn round(state: &StateDir, rx: &Receiver<'_>, image: &[u8], file: Option<&std::path::Path>) -> (usize, bool) {
        let hde = node(1);
        let rounds = state.restore_sender(&hde, "vm").unwrap().unwrap_or(0);
        let tx = Sender::new(&hde);
        let mut frame = Vec::new();
        let flight = tx.encode("vm", image, &mut frame, false).unwrap();
        let got = rx.receive(&frame).unwrap();
        assert!(got.image.as_slice() == image, "the receiver's image differs");
        let reply = rx.finish(&got).unwrap();
        assert!(matches!(reply, Reply::Applied { .. }), "{reply:?}");
        let delta = !flight.summary().header.round.is_keyframe();
        tx.confirm(flight, &reply).unwrap();
        state.save_sender(&hde, "vm", SenderImage { bytes: image, file }, rounds + 1).unwrap();
        (frame.len(), delta)
    }

    fn images() -> Vec<Vec<u8>> {
        generate(&CorpusConfig { size: 2 << 20, rounds: 4, seed: 5, ..CorpusConfig::default() }).unwrap()
    }

    #[test]
    fn the_state_keeps_hashes_and_a_path_and_the_file_is_checked() {
        let dir = scratch("file");
        let state = StateDir::open(dir.join("state")).unwrap();
        let b = node(2);
        let rx = Receiver::new(&b);
        let images = images();
        let files: Vec<PathBuf> = (0..images.len()).map(|i| dir.join(format!("snap_{i}.raw"))).collect();
        for (f, image) in files.iter().zip(&images) {
            std::fs::write(f, image).unwrap();
        }
        round(&state, &rx, &images[0], Some(&files[0]));
        // Hashes only: 16 bytes a page, no image bytes.
        let saved = std::fs::metadata(state.path(Side::Send, "vm")).unwrap().len();
        assert!(saved < 64 + 16 * 512 + 256, "{saved} bytes saved");
        let loaded = state.load(Side::Send, "vm", u64::MAX).unwrap().unwrap();
        assert_eq!(loaded.hashed.as_ref().unwrap().source, std::fs::canonicalize(&files[0]).unwrap());
        assert_eq!(loaded.len(), images[0].len() as u64);

        // Unchanged file: the same frame as a sender that never stopped.
        let (intact, delta) = round(&state, &rx, &images[1], Some(&files[1]));
        assert!(delta);
        let reference = {
            let (a, b) = (node(1), node(2));
            let (tx, rx) = (Sender::new(&a), Receiver::new(&b));
            let mut sizes = Vec::new();
            for image in &images[..2] {
                let mut frame = Vec::new();
                let flight = tx.encode("vm", image, &mut frame, false).unwrap();
                let got = rx.receive(&frame).unwrap();
                tx.confirm(flight, &rx.finish(&got).unwrap()).unwrap();
                sizes.push(frame.len());
            }
            sizes[1]
        };
        assert_eq!(intact, reference);

        // The file overwritten in place with the next round (a disk image in use): still a
        // delta, still exact.
        std::fs::write(&files[1], &images[2]).unwrap();
        let (_, delta) = round(&state, &rx, &images[2], Some(&files[1]));
        assert!(delta);
        // The file gone: hashes alone still give an exact delta.
        std::fs::remove_file(&files[1]).unwrap();
        let (_, delta) = round(&state, &rx, &images[3], None);
        assert!(delta);
        // No file: a copy beside the state, written where it differs, then used.
        let copy = state.path(Side::Send, "vm").with_extension("copy");
        assert!(std::fs::read(&copy).unwrap() == images[3]);
        let (_, delta) = round(&state, &rx, &images[0], None);
        assert!(delta);
        assert!(std::fs::read(&copy).unwrap() == images[0]);
        // A file again: the copy goes.
        round(&state, &rx, &images[2], Some(&files[2]));
        assert!(!copy.exists());
        assert!(state.remove(Side::Send, "vm").unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn damaged_hash_files_are_typed_errors() {
        let dir = scratch("damaged");
        let state = StateDir::open(dir.join("state")).unwrap();
        let b = node(2);
        let rx = Receiver::new(&b);
        let images = images();
        let file = dir.join("snap.raw");
        std::fs::write(&file, &images[0]).unwrap();
        round(&state, &rx, &images[0], Some(&file));
        let path = state.path(Side::Send, "vm");
        let good = std::fs::read(&path).unwrap();
        for at in [56, 60, 100, good.len() - 20, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            assert!(state.restore_sender(&node(1), "vm").is_err(), "flip at {at} accepted");
        }
        for len in [56, 64, good.len() - 1] {
            std::fs::write(&path, &good[..len]).unwrap();
            assert!(state.restore_sender(&node(1), "vm").is_err(), "truncation to {len} accepted");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
