//! HDE's fuzz targets, in one place for three runners:
//!
//! * `fuzz/` (cargo-fuzz, libFuzzer, coverage-guided; needs its own build flags, so it lives
//!   outside the workspace): each `fuzz_target!` calls one function of [`TARGETS`];
//! * `hde-fuzz run` (this crate's binary): the same targets under a seeded mutation loop on the
//!   stable toolchain, for machines where libFuzzer cannot be built;
//! * `tests/seeds.rs`: every file of the checked-in seed corpus (`fuzz/corpus/<target>/`) and a
//!   fixed set of mutations of each, as plain tests in CI.
//!
//! A target takes arbitrary bytes and must return, never panic, hang or allocate beyond the
//! limits it configures. Where an input is accepted, a target checks what it can about the
//! result (round trips, idempotence) and panics on a violation: that is a bug found.
//!
//! The seed corpus is what [`seeds`] writes (`hde-fuzz seeds DIR`): real frames, streams, codec
//! blocks, replicas and state files made by the project's own generator.

// A fuzz target reports a violated property by panicking: that is how every fuzzer sees it.
#![allow(clippy::expect_used, clippy::panic)]

use std::cell::RefCell;
use std::path::PathBuf;

use hde_core::codec::{CodecId, CodecSet, CodecSpec, ZstdParams};
use hde_core::crdt::{Delta, Limits, NodeId, ORMap, SyncMessage};
use hde_core::delta::{
    BaselineId, DeltaConfig, DeltaDecoder, DeltaEncoder, EncodeOptions, PageDeltaDecoder, PageDeltaEncoder, Round,
    RoundHeader, SegmentStreams, PAGE_LAYOUT,
};
use hde_core::index::Holding;
use hde_core::selector::NetworkMode;
use hde_core::state::{Saved, Side, StateDir};
use hde_core::{BaselineMeta, Hde, HdeConfig};
use hde_corpus::{generate, CorpusConfig};

/// What a target made of an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The input was valid and fully processed.
    Accepted,
    /// The input was refused with a typed error.
    Rejected,
}

/// One fuzz target.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Its name: the cargo-fuzz target and the corpus directory.
    pub name: &'static str,
    /// The body.
    pub run: fn(&[u8]) -> Outcome,
}

/// Every target.
pub const TARGETS: [Target; 6] = [
    Target { name: "frame_decode", run: frame_decode },
    Target { name: "delta_apply", run: delta_apply },
    Target { name: "codec_decompress", run: codec_decompress },
    Target { name: "crdt_decode", run: crdt_decode },
    Target { name: "state_load", run: state_load },
    Target { name: "net_message", run: net_message },
];

/// The target named `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().copied().find(|t| t.name == name)
}

/// The key every target uses.
const KEY: &str = "fuzz";
/// Page size of the fixtures.
const PAGE: usize = 4096;
/// The largest image any target lets a header claim: allocation stays bounded whatever the
/// input says.
const MAX_IMAGE: u64 = 4 << 20;

fn outcome<T, E>(r: Result<T, E>) -> Outcome {
    if r.is_ok() {
        Outcome::Accepted
    } else {
        Outcome::Rejected
    }
}

/// The delta layer's configuration of every target: small segments (several per image) and
/// small limits.
fn delta_config() -> DeltaConfig {
    DeltaConfig {
        page_size: PAGE,
        segment_size: 64 << 10,
        delta_segment_factor: 1,
        threads: 1,
        max_image_size: MAX_IMAGE,
        first_sequence: 1,
        ..DeltaConfig::default()
    }
}

fn node_config(mode: NetworkMode) -> HdeConfig {
    let mut c = HdeConfig::new(1);
    c.delta = delta_config();
    c.threads = 1;
    c.network_mode = mode;
    c.selector.mode = mode;
    c.selector.seed = 1;
    c
}

/// The fixture images: rounds 0 (every target's baseline), 1 and 2 of a 128 KiB corpus.
pub fn fixtures() -> &'static [Vec<u8>] {
    static IMAGES: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    IMAGES.get_or_init(|| {
        generate(&CorpusConfig { size: 128 << 10, rounds: 3, seed: 11, ..CorpusConfig::default() }).unwrap_or_default()
    })
}

fn baseline() -> &'static [u8] {
    fixtures().first().map_or(&[], Vec::as_slice)
}

/// A receiving node that holds round 0 of the fixtures as the baseline of the targets' key.
pub fn receiver() -> hde_core::Result<Hde> {
    let node = Hde::new(node_config(NetworkMode::Hybrid))?;
    node.receiver().install(KEY, PAGE, baseline().to_vec())?;
    Ok(node)
}

/// Frame decode: a whole frame into a node that holds the fixture baseline for the key, so
/// keyframes and deltas against it both reach every layer.
pub fn frame_decode(data: &[u8]) -> Outcome {
    let Ok(node) = receiver() else { return Outcome::Rejected };
    outcome(node.decompress(data))
}

/// Delta apply: a round header and decompressed segment streams, straight into the delta
/// layer's decoder (no frame checksums in the way).
///
/// Input: `flags:u8 seq:u64 image_len:u32 checksum:u64`, then per segment four streams, each
/// `len:u32` and bytes. Flag bit 0: a delta against the fixture baseline (else a keyframe).
pub fn delta_apply(data: &[u8]) -> Outcome {
    let mut r = Reader(data);
    let (Some(flags), Some(seq), Some(len), Some(checksum)) = (r.u8(), r.u64(), r.u32(), r.u64()) else {
        return Outcome::Rejected;
    };
    let Ok(decoder) = PageDeltaDecoder::new(delta_config()) else { return Outcome::Rejected };
    let Ok(base) = decoder.install(KEY, PAGE, baseline().to_vec()) else { return Outcome::Rejected };
    let cfg = delta_config();
    let delta = flags & 1 == 1;
    let header = RoundHeader {
        seq,
        base: delta.then_some(base),
        image_len: u64::from(len),
        page_size: PAGE as u32,
        segment_size: if delta { cfg.delta_segment_size() } else { cfg.segment_size } as u32,
        checksum,
    };
    let mut segments = Vec::new();
    while !r.0.is_empty() && segments.len() < 1024 {
        let mut s = SegmentStreams::with_count(PAGE_LAYOUT.len());
        for stream in s.all_mut() {
            *stream = r.chunk().unwrap_or_default().to_vec();
        }
        segments.push(s);
    }
    let Ok(prepared) = decoder.prepare(KEY, &header) else { return Outcome::Rejected };
    match decoder.apply(KEY, prepared, &segments) {
        Ok(image) => {
            // Accepted means the checksum held: the image is the one the header names.
            assert_eq!(image.len() as u64, header.image_len);
            Outcome::Accepted
        }
        Err(_) => Outcome::Rejected,
    }
}

/// Codec decompress: `id:u8 out_len:u24 flags:u8`, then the compressed block. Flag bit 0:
/// decompress against the fixture baseline as reference. An accepted block's output must
/// survive a compress/decompress round trip with the same codec.
pub fn codec_decompress(data: &[u8]) -> Outcome {
    let mut r = Reader(data);
    let (Some(id), Some(l0), Some(l1), Some(l2), Some(flags)) = (r.u8(), r.u8(), r.u8(), r.u8(), r.u8()) else {
        return Outcome::Rejected;
    };
    let Ok(id) = CodecId::from_u8(id) else { return Outcome::Rejected };
    // At most 1 MiB: the output buffer is the caller's to size, and fuzzing wants speed.
    let out_len = (usize::from(l0) | usize::from(l1) << 8 | usize::from(l2) << 16).min(1 << 20);
    let reference = if flags & 1 == 1 { baseline() } else { &[] };
    let mut codecs = CodecSet::new();
    let mut out = vec![0u8; out_len];
    let Ok(n) = codecs.decompress(id, r.0, reference, &mut out) else { return Outcome::Rejected };
    assert!(n <= out_len, "{id} reported {n} bytes into a {out_len}-byte buffer");
    let spec = match id {
        CodecId::Lz4 => CodecSpec::Lz4,
        CodecId::Zstd => CodecSpec::Zstd(ZstdParams::FASTEST),
        _ => CodecSpec::Raw,
    };
    let mut again = Vec::new();
    let m = codecs.compress(spec, &out[..n], reference, &mut again).expect("compressing valid bytes");
    let mut back = vec![0u8; n];
    let k = codecs.decompress(id, &again[..m], reference, &mut back).expect("our own block decodes");
    assert_eq!(&back[..k], &out[..n], "{id} round trip");
    Outcome::Accepted
}

/// A transport message from a peer (after the TLS handshake): decoded with every length
/// checked; an accepted message must encode back to the same bytes' meaning.
pub fn net_message(data: &[u8]) -> Outcome {
    match hde_net::proto::decode_bytes(data) {
        Ok(message) => {
            let again = hde_net::proto::decode_bytes(&hde_net::proto::encode(&message)).expect("re-encoded message");
            assert!(again == message, "message round trip");
            Outcome::Accepted
        }
        Err(_) => Outcome::Rejected,
    }
}

/// CRDT state decode: a replica, a delta and a sync message of baseline metadata. Whatever
/// decodes must re-encode to the same state, and merging it must be idempotent.
pub fn crdt_decode(data: &[u8]) -> Outcome {
    let limits = Limits::default();
    let mut accepted = false;
    if let Ok(remote) = ORMap::<Holding, BaselineMeta>::from_bytes(data, &limits) {
        let again = ORMap::<Holding, BaselineMeta>::from_bytes(&remote.to_bytes(), &limits).expect("re-encoded state");
        assert!(again == remote, "replica round trip");
        let mut local = replica();
        local.merge(&remote);
        let once = local.clone();
        local.merge(&remote);
        assert!(local == once, "merge is idempotent");
        accepted = true;
    }
    if let Ok(delta) = Delta::<Holding, BaselineMeta>::from_bytes(data, &limits) {
        let mut local = replica();
        local.merge_delta(&delta);
        let once = local.clone();
        local.merge_delta(&delta);
        assert!(local == once, "delta merge is idempotent");
        accepted = true;
    }
    if let Ok(message) = SyncMessage::<Holding, BaselineMeta>::from_bytes(data, &limits) {
        let mut local = replica();
        let _ = local.sync_handle(&message);
        accepted = true;
    }
    if accepted {
        Outcome::Accepted
    } else {
        Outcome::Rejected
    }
}

fn meta(seq: u64) -> BaselineMeta {
    BaselineMeta {
        holder: 1,
        seq,
        checksum: seq * 7,
        size: 1 << 20,
        codec: "lz4".into(),
        keyframe: seq == 1,
        time_ms: 100 + seq,
        sketch: hde_core::index::Sketch::of_hashes(&[u128::from(seq), 3, 9]),
    }
}

/// A small replica with a few keys, written by two nodes.
fn replica() -> ORMap<Holding, BaselineMeta> {
    let mut m = ORMap::new();
    for (i, node) in [1u64, 2, 1, 2].into_iter().enumerate() {
        let holding = Holding { key: format!("vm-{}", i % 3), node };
        m.update(NodeId(node), holding, meta(i as u64 + 1), 100 + i as u64);
    }
    m
}

/// A thread's scratch state directory, removed when the thread ends.
struct Scratch(PathBuf, StateDir);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

thread_local! {
    static STATE_DIR: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

/// State-directory load: the bytes as the saved file of a key, on both sides, loaded and
/// restored into a node as `hde encode/decode --state` does.
pub fn state_load(data: &[u8]) -> Outcome {
    STATE_DIR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            // In memory where the machine has a tmpfs: a disk's writeback stalls (hundreds of
            // ms under load) are not the target's slowness, and would read as findings.
            let shm = std::path::Path::new("/dev/shm");
            let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
            let root = base.join(format!("hde-fuzz-state-{}-{:?}", std::process::id(), std::thread::current().id()));
            let Ok(dir) = StateDir::open(&root) else { return Outcome::Rejected };
            *cell = Some(Scratch(root, dir));
        }
        let Some(Scratch(_, dir)) = cell.as_ref() else { return Outcome::Rejected };
        let Ok(node) = Hde::new(node_config(NetworkMode::Datacenter)) else { return Outcome::Rejected };
        let mut accepted = true;
        for side in [Side::Send, Side::Receive] {
            let path = dir.path(side, KEY);
            // A state directory makes its side folders on its first save; this writes beside it.
            if let Some(parent) = path.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            if std::fs::write(&path, data).is_err() {
                return Outcome::Rejected;
            }
            let restored = match side {
                Side::Send => dir.restore_sender(&node, KEY),
                Side::Receive => dir.restore_receiver(&node, KEY),
            };
            accepted &= restored.is_ok();
        }
        if accepted {
            Outcome::Accepted
        } else {
            Outcome::Rejected
        }
    })
}

/// A cursor over fuzz input.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)?.try_into().ok().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)?.try_into().ok().map(u64::from_le_bytes)
    }
    /// A `len:u32`-prefixed chunk; a length past the end takes the rest.
    fn chunk(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        let n = n.min(self.0.len());
        self.take(n)
    }
}

/// The seed corpus of `target`: named inputs made from the project's generator, valid ones
/// first (named `valid-*`, which the target must accept).
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let images = fixtures();
    let mut out = Vec::new();
    match target {
        "frame_decode" => {
            for mode in [NetworkMode::Datacenter, NetworkMode::Internet] {
                let Ok(node) = Hde::new(node_config(mode)) else { continue };
                let Ok(key) = node.compress(KEY, &images[0]) else { continue };
                out.push((format!("valid-keyframe-{mode}"), key));
                // A delta against the baseline every target installs.
                let Ok(sender) = Hde::new(node_config(mode)) else { continue };
                if sender.sender().install(KEY, images[0].clone()).is_ok() {
                    if let Ok(delta) = sender.compress(KEY, &images[1]) {
                        out.push((format!("valid-delta-{mode}"), delta));
                    }
                }
            }
        }
        "delta_apply" => {
            let Ok(encoder) = PageDeltaEncoder::new(delta_config()) else { return out };
            if encoder.install(KEY, images[0].clone()).is_err() {
                return out;
            }
            for (name, image, keyframe) in [("valid-delta", &images[1], false), ("valid-keyframe", &images[2], true)] {
                let options = EncodeOptions { force_keyframe: keyframe, detached: true, ..EncodeOptions::default() };
                let Ok(round) = encoder.encode(KEY, image, options) else { continue };
                out.push((name.to_owned(), streams_input(&round)));
            }
        }
        "codec_decompress" => {
            let mut codecs = CodecSet::new();
            let piece = &images[1][..32 << 10];
            for (id, spec) in [
                (CodecId::Raw, CodecSpec::Raw),
                (CodecId::Lz4, CodecSpec::Lz4),
                (CodecId::Zstd, CodecSpec::Zstd(ZstdParams::BALANCED)),
            ] {
                for (flags, reference) in [(0u8, &[][..]), (1, baseline())] {
                    let mut block = Vec::new();
                    if codecs.compress(spec, piece, reference, &mut block).is_err() {
                        continue;
                    }
                    let len = piece.len();
                    let mut input = vec![id.to_u8(), len as u8, (len >> 8) as u8, (len >> 16) as u8, flags];
                    input.extend_from_slice(&block);
                    out.push((format!("valid-{id}-ref{flags}"), input));
                }
            }
        }
        "crdt_decode" => {
            let mut a = replica();
            out.push(("valid-replica".to_owned(), a.to_bytes()));
            let delta = a.update(NodeId(3), Holding { key: "vm-9".into(), node: 3 }, meta(9), 999);
            out.push(("valid-delta".to_owned(), delta.to_bytes()));
            let mut b = ORMap::new();
            b.update(NodeId(2), Holding { key: "vm-0".into(), node: 2 }, meta(5), 50);
            let start = b.sync_start();
            out.push(("valid-sync-groups".to_owned(), start.to_bytes()));
            if let Some(reply) = a.sync_handle(&start) {
                out.push(("valid-sync-leaves".to_owned(), reply.to_bytes()));
                if let Some(entries) = b.sync_handle(&reply) {
                    out.push(("valid-sync-entries".to_owned(), entries.to_bytes()));
                }
            }
        }
        "net_message" => {
            use hde_core::session::{Refusal, Reply};
            use hde_net::proto::{encode, Hello, Message};
            let id = BaselineId { seq: 5, checksum: 77 };
            for (name, m) in [
                ("hello", Message::Hello(Hello::new(3, 1 << 30))),
                ("chunk", Message::Chunk(images[0][..4096].to_vec())),
                ("frame-end", Message::FrameEnd),
                ("applied", Message::Reply(Reply::Applied { key: KEY.into(), holds: id })),
                (
                    "refused",
                    Message::Reply(Reply::Refused {
                        key: KEY.into(),
                        reason: Refusal::BaselineMismatch,
                        holds: Some(id),
                        message: "mismatch".into(),
                    }),
                ),
                ("bye", Message::Bye),
                ("error", Message::Error("version".into())),
                (
                    "query",
                    Message::Query { key: KEY.into(), sketch: hde_core::index::Sketch::of_image(&images[0], PAGE, 1) },
                ),
                (
                    "offers",
                    Message::Offers(vec![hde_net::proto::Offer {
                        key: "vm-2".into(),
                        seq: 5,
                        checksum: 77,
                        size: 1 << 20,
                        shared_pages: 12,
                        resemblance_ppm: 250_000,
                    }]),
                ),
                ("sync", Message::Sync(replica().sync_start().to_bytes())),
                ("sync-done", Message::SyncDone),
                ("index-query", Message::IndexQuery),
                ("index", Message::Index(replica().to_bytes())),
            ] {
                out.push((format!("valid-{name}"), encode(&m)));
            }
        }
        "state_load" => {
            let root = std::env::temp_dir().join(format!("hde-fuzz-seeds-{}", std::process::id()));
            if let Ok(dir) = StateDir::open(&root) {
                let id = BaselineId { seq: 5, checksum: hde_core::delta::checksum(&images[0], PAGE) };
                let saved =
                    Saved { id, chain: 2, keyframe_ms: 1_700_000_000_000, rounds: 3, image: Vec::new(), hashed: None };
                if dir.save(Side::Send, KEY, &saved, &images[0]).is_ok() {
                    if let Ok(bytes) = std::fs::read(dir.path(Side::Send, KEY)) {
                        out.push(("valid-baseline".to_owned(), bytes));
                    }
                }
            }
            let _ = std::fs::remove_dir_all(&root);
        }
        _ => {}
    }
    out
}

/// A round as [`delta_apply`] input.
fn streams_input<R: Round>(round: &R) -> Vec<u8> {
    let h = round.header();
    let mut input = vec![u8::from(h.base.is_some())];
    input.extend_from_slice(&h.seq.to_le_bytes());
    input.extend_from_slice(&(h.image_len as u32).to_le_bytes());
    input.extend_from_slice(&h.checksum.to_le_bytes());
    for s in round.segments() {
        for stream in (0..s.count()).map(|i| s.get(i)) {
            input.extend_from_slice(&(stream.len() as u32).to_le_bytes());
            input.extend_from_slice(stream);
        }
    }
    input
}

/// A seeded mutator for the stable runner and the seed tests: libFuzzer's cheap mutations
/// (bit flips, byte sets, interesting values, erasures, insertions, duplications, truncation,
/// splicing with another seed).
#[derive(Debug, Clone)]
pub struct Mutator {
    state: u64,
}

impl Mutator {
    /// A mutator whose choices are fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Mutator { state: seed ^ 0x9e37_79b9_7f4a_7c15 }
    }

    /// The next pseudo-random number (splitmix64).
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// Applies one to four mutations to `input`; `other` is a splice partner.
    pub fn mutate(&mut self, input: &mut Vec<u8>, other: &[u8]) {
        for _ in 0..=self.below(4) {
            let len = input.len();
            match self.below(8) {
                0 if len > 0 => {
                    let i = self.below(len);
                    input[i] ^= 1 << self.below(8);
                }
                1 if len > 0 => {
                    let i = self.below(len);
                    input[i] = self.next_u64() as u8;
                }
                2 if len >= 4 => {
                    const INTERESTING: [u32; 8] = [0, 1, 0x7f, 0xff, 0xffff, 0x7fff_ffff, 0xffff_ffff, 0x8000_0000];
                    let i = self.below(len - 3);
                    let v = INTERESTING[self.below(INTERESTING.len())].to_le_bytes();
                    input[i..i + 4].copy_from_slice(&v);
                }
                3 if len > 0 => {
                    let i = self.below(len);
                    let n = (1 + self.below(16)).min(len - i);
                    input.drain(i..i + n);
                }
                4 => {
                    let i = self.below(len + 1);
                    let n = 1 + self.below(16);
                    let bytes: Vec<u8> = (0..n).map(|_| self.next_u64() as u8).collect();
                    input.splice(i..i, bytes);
                }
                5 if len > 0 => {
                    let i = self.below(len);
                    let n = (1 + self.below(64)).min(len - i);
                    let copy = input[i..i + n].to_vec();
                    let at = self.below(len + 1);
                    input.splice(at..at, copy);
                }
                6 if len > 0 => {
                    let keep = self.below(len);
                    input.truncate(keep);
                }
                7 if !other.is_empty() => {
                    let at = self.below(len + 1);
                    let from = self.below(other.len());
                    input.truncate(at);
                    input.extend_from_slice(&other[from..]);
                }
                _ => {}
            }
        }
    }
}
