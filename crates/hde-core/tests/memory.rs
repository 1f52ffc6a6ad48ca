//! Memory bounds, measured by a counting global allocator (so these tests have their own
//! binary, and take turns): an encode holds only a few segments' streams beyond the image and
//! the baseline; and a node under load (many threads, many keys, encode and decode at once,
//! for a bounded time) round-trips every image exactly, counts exactly, and stays within
//! `max_memory_usage` plus a stated overhead.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // reason: a test fails by panicking.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hde_core::delta::DeltaConfig;
use hde_core::selector::{NetworkMode, SelectorConfig};
use hde_core::{Encoder, Hde, HdeConfig};
use hde_corpus::{self as corpus, CorpusConfig};

/// The tests of this binary measure one global peak: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// The system allocator, counting the bytes live and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to `System` unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `System`'s.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
            PEAK.fetch_max(live, Ordering::SeqCst);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
            PEAK.fetch_max(live, Ordering::SeqCst);
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Both blocks may exist for a moment: count the new one before freeing the old.
            let live = LIVE.fetch_add(new_size, Ordering::SeqCst) + new_size;
            PEAK.fetch_max(live, Ordering::SeqCst);
            LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes allocated at the peak of `f` beyond what was live when it started.
fn peak_during(f: impl FnOnce()) -> usize {
    let start = LIVE.load(Ordering::SeqCst);
    PEAK.store(start, Ordering::SeqCst);
    f();
    PEAK.load(Ordering::SeqCst) - start
}

#[test]
fn an_encode_holds_a_few_segments_beyond_the_image_and_the_baseline() {
    let _turn = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    const MIB: usize = 1 << 20;
    let size = 64 * MIB;
    let images = corpus::generate(&CorpusConfig { size, rounds: 3, ..CorpusConfig::default() }).unwrap();
    let delta = DeltaConfig { threads: 2, first_sequence: 1, ..DeltaConfig::default() };
    let encoder = Encoder::new(delta, SelectorConfig::default()).unwrap();
    // Frames go to a sink: what the encoder holds is the question, not the output.
    let mut extra = Vec::new();
    for image in &images {
        extra.push(peak_during(|| {
            encoder.compress_to("vm", image, &mut std::io::sink(), Default::default()).unwrap();
        }));
    }
    eprintln!("extra peak per round (MiB): {:?}", extra.iter().map(|&b| b as f64 / MIB as f64).collect::<Vec<_>>());
    // Round 0 creates the baseline (a copy of the image) on commit: one image plus buffers.
    assert!(extra[0] <= size + size / 8, "keyframe: {} MiB", extra[0] / MIB);
    // Later rounds update the baseline in place: a few segments of buffers.
    for (round, &peak) in extra.iter().enumerate().skip(1) {
        assert!(peak <= size / 8, "round {round}: {} MiB beyond image and baseline", peak / MIB);
    }
}

/// Round `r` of key `k`: the key's own base image with a few pages rewritten per round, a
/// quarter of them with random bytes, the rest with small edits.
fn round_image(base: &[u8], k: usize, r: usize) -> Vec<u8> {
    let mut image = base.to_vec();
    let pages = image.len() / 4096;
    let mut z = (k as u64) << 32 | r as u64;
    let mut next = || {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut x = z;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    };
    image[0] = k as u8; // every key's image differs
    for _ in 0..r.min(8) * 4 {
        let p = (next() as usize % pages) * 4096;
        if next() % 4 == 0 {
            for b in &mut image[p..p + 4096] {
                *b = next() as u8;
            }
        } else {
            let at = p + next() as usize % 4000;
            image[at..at + 8].copy_from_slice(&next().to_le_bytes());
        }
    }
    image
}

#[test]
fn a_node_under_load_is_exact_and_within_its_memory_limit() {
    let _turn = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    const MIB: usize = 1 << 20;
    const THREADS: usize = 8;
    const KEYS_PER_THREAD: usize = 4;
    const IMAGE: usize = 512 << 10;
    let limit = 6 * MIB as u64; // room for 12 of the 32 keys' baselines: eviction under load
    let config = |node: u64| {
        let mut c = HdeConfig::new(node);
        c.max_memory_usage = limit;
        c.threads = 2;
        c.delta = DeltaConfig { first_sequence: 1, ..c.delta };
        c
    };
    let base = corpus::generate(&CorpusConfig { size: IMAGE, rounds: 1, ..CorpusConfig::default() }).unwrap().remove(0);
    let start_live = LIVE.load(Ordering::SeqCst);
    PEAK.store(start_live, Ordering::SeqCst);
    let sender = Arc::new(Hde::new(config(1)).unwrap());
    let receiver = Arc::new(Hde::new(config(2)).unwrap());
    let budget = Duration::from_secs(3);
    let began = Instant::now();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (sender, receiver, base) = (sender.clone(), receiver.clone(), base.clone());
            std::thread::spawn(move || {
                let (mut frames, mut bytes_in, mut bytes_out) = (0u64, 0u64, 0u64);
                let mut round = [0usize; KEYS_PER_THREAD];
                let mut i = 0;
                while began.elapsed() < budget {
                    let slot = i % KEYS_PER_THREAD;
                    let k = t * KEYS_PER_THREAD + slot;
                    let key = format!("vm-{k}");
                    let image = round_image(&base, k, round[slot]);
                    if i % 7 == 3 {
                        sender.update_network_mode(NetworkMode::ALL[i % 3]);
                    }
                    let frame = sender.compress(&key, &image).unwrap();
                    let (header, decoded) = receiver.decompress(&frame).unwrap();
                    assert_eq!(header.key, key);
                    assert!(decoded.as_slice() == image.as_slice(), "{key} round {} differs", round[slot]);
                    frames += 1;
                    bytes_in += image.len() as u64;
                    bytes_out += frame.len() as u64;
                    round[slot] += 1;
                    i += 1;
                }
                (frames, bytes_in, bytes_out)
            })
        })
        .collect();
    // Meanwhile, metrics, health and anti-entropy between the two nodes' replicas.
    let mut reads = 0;
    while began.elapsed() < budget {
        let m = sender.metrics();
        assert!(m.bytes_out <= m.bytes_in || m.frames_encoded < 4, "{m:?}");
        let h = sender.health();
        assert!(h.memory_bytes <= limit, "baseline memory {} over {limit}", h.memory_bytes);
        receiver.merge_remote_crdt(&sender.export_crdt_state()).unwrap();
        sender.merge_remote_crdt(&receiver.export_crdt_state()).unwrap();
        reads += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    let (mut frames, mut bytes_in, mut bytes_out) = (0, 0, 0);
    for w in workers {
        let (f, i, o) = w.join().unwrap();
        frames += f;
        bytes_in += i;
        bytes_out += o;
    }
    let peak = PEAK.load(Ordering::SeqCst) - start_live;
    let (m, r) = (sender.metrics(), receiver.metrics());
    assert_eq!((m.frames_encoded, m.bytes_in, m.bytes_out), (frames, bytes_in, bytes_out));
    assert_eq!(r.frames_decoded, frames);
    assert_eq!(m.pages.total(), bytes_in / 4096);
    assert!(sender.health().memory_bytes <= limit);
    // Stated overhead: the receiver keeps every key's image (it has no cap of its own), and each
    // thread holds its image, frame and decoded image, with the encoder's and decoder's
    // segment buffers and codec contexts: 3 MiB (measured: 41 MiB peak in all, bound 62 MiB).
    let keys = (THREADS * KEYS_PER_THREAD) as u64;
    let receiver_held = keys * IMAGE as u64;
    let per_thread = 4 * IMAGE as u64 + 3 * MIB as u64;
    let bound = limit + receiver_held + THREADS as u64 * per_thread;
    eprintln!(
        "load: {THREADS} threads, {keys} keys, {frames} frames ({:.1} MiB) in {:.1} s, {reads} metric reads \
         and syncs; peak heap {:.1} MiB (bound {:.1} MiB); sender baselines {:.1} MiB of {:.1} MiB",
        bytes_in as f64 / MIB as f64,
        began.elapsed().as_secs_f64(),
        peak as f64 / MIB as f64,
        bound as f64 / MIB as f64,
        m.baseline_memory as f64 / MIB as f64,
        limit as f64 / MIB as f64,
    );
    assert!(peak as u64 <= bound, "peak heap {peak} over {bound}");
    // Every key's latest baseline is recorded in both replicas after the last sync.
    receiver.merge_remote_crdt(&sender.export_crdt_state()).unwrap();
    for k in 0..keys {
        assert!(receiver.baseline_record(&format!("vm-{k}")).is_some(), "vm-{k} missing from the replica");
    }
}
