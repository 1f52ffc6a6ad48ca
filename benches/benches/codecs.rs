//! Throughput of every codec on a generated VM image, compress and decompress, beside a memcpy
//! of the same bytes (the physical reference: no codec can beat it).
//!
//! The image is compressed in 4 MiB segments, as the engine does. `HDE_BENCH_SIZE` sets the
//! image size (default 64M). The `+ref` rows compress round 1 against round 0 as reference.

#![allow(missing_docs)] // reason: criterion's macros generate undocumented items.
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: a bench aborts on setup failure.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hde_codec::{CodecSet, CodecSpec};

const SEGMENT: usize = 4 << 20;

struct Input {
    round0: Vec<u8>,
    round1: Vec<u8>,
}

fn input() -> Input {
    let (round0, round1) = hde_benches::two_rounds();
    Input { round0, round1 }
}

fn specs() -> Vec<(CodecSpec, bool)> {
    let mut specs: Vec<(CodecSpec, bool)> =
        ["raw", "lz4", "zstd-1", "zstd-3", "zstd-9"].iter().map(|s| (s.parse().unwrap(), false)).collect();
    specs.push(("lz4".parse().unwrap(), true));
    specs.push(("zstd-1".parse().unwrap(), true));
    specs.push(("zstd-3".parse().unwrap(), true));
    specs
}

fn name(spec: CodecSpec, with_ref: bool) -> String {
    if with_ref {
        format!("{spec}+ref")
    } else {
        spec.to_string()
    }
}

/// (data, reference) of a segment for the given mode.
fn segments(input: &Input, with_ref: bool) -> Vec<(&[u8], &[u8])> {
    let data = if with_ref { &input.round1 } else { &input.round0 };
    data.chunks(SEGMENT)
        .zip(input.round0.chunks(SEGMENT))
        .map(|(d, r)| (d, if with_ref { r } else { &[][..] }))
        .collect()
}

fn compress(c: &mut Criterion) {
    let input = input();
    let mut group = c.benchmark_group("compress");
    group.throughput(Throughput::Bytes(input.round0.len() as u64));
    group.sample_size(10);
    let mut copy = vec![0u8; input.round0.len()];
    group.bench_function("memcpy", |b| b.iter(|| copy.copy_from_slice(black_box(&input.round0))));
    let mut set = CodecSet::new();
    let mut out = Vec::with_capacity(input.round0.len() * 2);
    for (spec, with_ref) in specs() {
        let segs = segments(&input, with_ref);
        group.bench_function(BenchmarkId::from_parameter(name(spec, with_ref)), |b| {
            b.iter(|| {
                out.clear();
                for &(data, reference) in &segs {
                    set.compress(spec, data, reference, &mut out).unwrap();
                }
                black_box(out.len())
            })
        });
    }
    group.finish();
}

fn decompress(c: &mut Criterion) {
    let input = input();
    let mut group = c.benchmark_group("decompress");
    group.throughput(Throughput::Bytes(input.round0.len() as u64));
    group.sample_size(10);
    let mut copy = vec![0u8; input.round0.len()];
    group.bench_function("memcpy", |b| b.iter(|| copy.copy_from_slice(black_box(&input.round0))));
    let mut set = CodecSet::new();
    for (spec, with_ref) in specs() {
        let segs = segments(&input, with_ref);
        let streams: Vec<Vec<u8>> = segs.iter().map(|&(d, r)| set.for_spec(spec).compress(d, r).unwrap()).collect();
        let mut out = vec![0u8; input.round0.len()];
        group.bench_function(BenchmarkId::from_parameter(name(spec, with_ref)), |b| {
            b.iter(|| {
                for ((stream, &(_, reference)), dst) in streams.iter().zip(&segs).zip(out.chunks_mut(SEGMENT)) {
                    set.for_id(spec.id()).decompress_exact(stream, reference, dst).unwrap();
                }
                black_box(out[0])
            })
        });
    }
    group.finish();
}

criterion_group!(benches, compress, decompress);
criterion_main!(benches);
