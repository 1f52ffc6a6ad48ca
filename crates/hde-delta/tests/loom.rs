//! Loom models of the shared baseline stores (run with `cargo xtask loom`, which builds with
//! `--cfg hde_loom`; in a normal build this file is empty).
//!
//! Every interleaving (up to a bounded number of preemptions) of concurrent encode, commit,
//! eviction and decode is explored; the invariants checked are those the engine relies on:
//! one key's racing rounds never both commit, stats and memory accounting stay exact, caps hold,
//! and a decoder never installs a stale round over a newer one.

#![cfg(hde_loom)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // reason: a test fails by panicking.

use hde_delta::{
    DeltaConfig, DeltaDecoder, DeltaEncoder, EncodeOptions, Error, PageDeltaDecoder, PageDeltaEncoder, Policy, Round,
};
use loom::sync::Arc;
use loom::thread;

fn config(max_baselines: usize) -> DeltaConfig {
    DeltaConfig {
        page_size: 512,
        segment_size: 1024,
        threads: 1,
        first_sequence: 1,
        policy: Policy { max_baselines, ..Policy::default() },
        ..DeltaConfig::default()
    }
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(f);
}

#[test]
fn different_keys_commit_concurrently_with_exact_accounting() {
    model(|| {
        let enc = Arc::new(PageDeltaEncoder::new(config(16)).unwrap());
        let handles: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|key| {
                let enc = enc.clone();
                thread::spawn(move || {
                    let image = vec![key.as_bytes()[0]; 1024];
                    let round = enc.encode(key, &image, EncodeOptions::default()).unwrap();
                    enc.commit(round).unwrap()
                })
            })
            .collect();
        let ids: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_ne!(ids[0].seq, ids[1].seq);
        let stats = enc.stats();
        assert_eq!((stats.rounds, stats.keyframes, stats.baselines), (2, 2, 2));
        assert!(stats.memory > 2048);
    });
}

#[test]
fn racing_rounds_of_one_key_commit_at_most_once_each_in_order() {
    model(|| {
        let enc = Arc::new(PageDeltaEncoder::new(config(16)).unwrap());
        let first = [1u8; 1024];
        let r0 = enc.encode("k", &first, EncodeOptions::default()).unwrap();
        let id0 = enc.commit(r0).unwrap();
        let handles: Vec<_> = [2u8, 3u8]
            .into_iter()
            .map(|fill| {
                let enc = enc.clone();
                thread::spawn(move || {
                    let image = [fill; 1024];
                    let round = enc.encode("k", &image, EncodeOptions::default()).unwrap();
                    let base = round.header().base;
                    (base, enc.commit(round))
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let committed = results.iter().filter(|(_, r)| r.is_ok()).count();
        assert!(committed >= 1);
        for (base, result) in &results {
            match result {
                Ok(_) => {}
                Err(Error::ConcurrentRound { .. }) => {}
                Err(e) => panic!("unexpected {e:?}"),
            }
            // Both were encoded from the committed baseline, or the second saw the first's.
            assert!(base.is_none() || base.is_some_and(|b| b.seq >= id0.seq));
        }
        let stats = enc.stats();
        assert_eq!(stats.rounds, 1 + committed as u64);
        assert_eq!(stats.baselines, 1);
        // The held baseline is the last committed round's.
        let last = results.iter().filter_map(|(_, r)| r.as_ref().ok()).max_by_key(|id| id.seq).unwrap();
        assert_eq!(enc.baseline("k"), Some(*last));
    });
}

#[test]
fn caps_hold_under_concurrent_commits() {
    model(|| {
        let enc = Arc::new(PageDeltaEncoder::new(config(1)).unwrap());
        let handles: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|key| {
                let enc = enc.clone();
                thread::spawn(move || {
                    let round = enc.encode(key, &[7u8; 1024], EncodeOptions::default()).unwrap();
                    enc.commit(round).unwrap();
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let stats = enc.stats();
        assert_eq!((stats.rounds, stats.baselines, stats.evictions), (2, 1, 1));
        let held = usize::from(enc.baseline("a").is_some()) + usize::from(enc.baseline("b").is_some());
        assert_eq!(held, 1);
    });
}

#[test]
fn decoder_never_installs_a_stale_round_over_a_newer_one() {
    model(|| {
        let enc = PageDeltaEncoder::new(config(16)).unwrap();
        let dec = Arc::new(PageDeltaDecoder::new(config(16)).unwrap());
        let keyframe = EncodeOptions { force_keyframe: true, ..EncodeOptions::default() };
        let (one, two) = ([1u8; 1024], [2u8; 1024]);
        let r1 = enc.encode("k", &one, keyframe.clone()).unwrap();
        let r2 = enc.encode("k", &two, keyframe).unwrap();
        let newest = r2.header().produces();
        let frames = [(*r1.header(), r1.segments()), (*r2.header(), r2.segments())];
        let handles: Vec<_> = frames
            .into_iter()
            .map(|(header, segments)| {
                let dec = dec.clone();
                thread::spawn(move || {
                    let prepared = dec.prepare("k", &header)?;
                    dec.apply("k", prepared, &segments).map(|_| ())
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(results[1].is_ok() || matches!(results[1], Err(Error::StaleSequence { .. })));
        // Whatever the order, the newest keyframe ends up held.
        assert_eq!(dec.baseline("k"), Some(newest));
    });
}
