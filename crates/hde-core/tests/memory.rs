//! The encoder's memory bound: besides the image and the baseline, an encode holds only a few
//! segments' streams at a time (its own test binary, for the counting global allocator).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // reason: a test fails by panicking.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use hde_core::corpus::{self, CorpusConfig};
use hde_core::delta::DeltaConfig;
use hde_core::selector::SelectorConfig;
use hde_core::Encoder;

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
