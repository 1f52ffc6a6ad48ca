//! Throughput of the delta layer on a generated VM image (`HDE_BENCH_SIZE`, default 64M):
//! scanning an unchanged image (the memory-bandwidth claim), encoding a pre-copy round against
//! its baseline and building its streams, the same for a keyframe, and rebuilding a round on the receiver; at 1 and 2
//! threads, beside a memcpy of the image.

#![allow(missing_docs)] // reason: criterion's macros generate undocumented items.
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: a bench aborts on setup failure.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use hde_delta::{
    DeltaConfig, DeltaDecoder, DeltaEncoder, EncodeOptions, PageDeltaDecoder, PageDeltaEncoder, Round, SegmentStreams,
};

fn config(threads: usize) -> DeltaConfig {
    DeltaConfig { threads, first_sequence: 1, ..DeltaConfig::default() }
}

/// Builds every segment's streams on `threads` threads, as the engine's workers do; returns
/// the total stream bytes.
fn build_all(round: &impl Round, threads: usize) -> usize {
    let n = round.segment_count();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut streams = SegmentStreams::default();
                    (t..n)
                        .step_by(threads)
                        .map(|i| {
                            round.build(i, &mut streams);
                            streams.len()
                        })
                        .sum::<usize>()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    })
}

fn delta(c: &mut Criterion) {
    let (round0, round1) = hde_benches::two_rounds();
    let mut group = c.benchmark_group("delta");
    group.throughput(Throughput::Bytes(round0.len() as u64));
    group.sample_size(10);
    let mut copy = vec![0u8; round0.len()];
    group.bench_function("memcpy", |b| b.iter(|| copy.copy_from_slice(black_box(&round0))));
    for threads in [1, 2] {
        let enc = PageDeltaEncoder::new(config(threads)).unwrap();
        let r0 = enc.encode("vm", &round0, EncodeOptions::default()).unwrap();
        enc.commit(r0).unwrap();
        group.bench_function(BenchmarkId::new("scan_unchanged", threads), |b| {
            b.iter(|| black_box(enc.encode("vm", &round0, EncodeOptions::default()).unwrap().counts()))
        });
        group.bench_function(BenchmarkId::new("encode_round1", threads), |b| {
            b.iter(|| black_box(build_all(&enc.encode("vm", &round1, EncodeOptions::default()).unwrap(), threads)))
        });
        group.bench_function(BenchmarkId::new("keyframe_round0", threads), |b| {
            b.iter(|| {
                let round = enc
                    .encode("vm", &round0, EncodeOptions { force_keyframe: true, ..EncodeOptions::default() })
                    .unwrap();
                black_box(build_all(&round, threads))
            })
        });
        let round = enc.encode("vm", &round1, EncodeOptions::default()).unwrap();
        let header = *round.header();
        let segments: Vec<SegmentStreams> = round.segments();
        let base_id = header.base.unwrap();
        group.bench_function(BenchmarkId::new("apply_round1", threads), |b| {
            b.iter_batched(
                || {
                    let dec = PageDeltaDecoder::new(config(threads)).unwrap();
                    dec.restore("vm", base_id, 4096, round0.clone()).unwrap();
                    dec
                },
                |dec| {
                    let prepared = dec.prepare("vm", &header).unwrap();
                    black_box(dec.apply("vm", prepared, &segments).unwrap().len())
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, delta);
criterion_main!(benches);
