//! Cost of the selector: one `choose()` of a warmed-up learning selector (goal: under 1 us;
//! the seed system took 18.5 us), and profiling a 4 MiB block against LZ4-compressing it
//! (goal: profiling under 2 % of it), on generated VM memory.

#![allow(missing_docs)] // reason: criterion's macros generate undocumented items.
#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: a bench aborts on setup failure.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hde_codec::{CodecSet, CodecSpec};
use hde_corpus::{Corpus, CorpusConfig};
use hde_selector::{Context, LearningSelector, NetworkMode, Outcome, Profile, Selector, SelectorConfig};

fn selector(c: &mut Criterion) {
    let s = LearningSelector::new(SelectorConfig { mode: NetworkMode::Hybrid, ..SelectorConfig::default() }).unwrap();
    // Warm it up over a spread of profiles so every bucket it will see has statistics.
    for i in 0..2000u32 {
        let p = Profile::from_parts(u64::from(4096 + i * 997), 0.1, (i % 8) as f32, (i % 10) as f32 / 10.0);
        let ctx = Context {
            reference_len: u64::from(i % 2) * 65536,
            threads: 2,
            reference_gain_permille: None,
            ..Context::default()
        };
        let choice = s.choose(&p, &ctx);
        let outcome = Outcome {
            input_bytes: p.len,
            output_bytes: p.len / 3,
            encode: Duration::from_micros(u64::from(10 + i % 50)),
            decode: Some(Duration::from_micros(5)),
        };
        s.observe(&choice, &outcome);
    }
    let profile = Profile::from_parts(1 << 20, 0.2, 5.0, 0.4);
    let ctx = Context { reference_len: 1 << 20, threads: 2, reference_gain_permille: None, ..Context::default() };
    c.bench_function("selector/choose", |b| b.iter(|| black_box(s.choose(black_box(&profile), &ctx))));

    let corpus = Corpus::new(CorpusConfig::with_size(4 << 20)).unwrap();
    let block = corpus.image();
    let mut group = c.benchmark_group("selector/profile_vs_lz4_4MiB");
    group.throughput(Throughput::Bytes(block.len() as u64));
    group.bench_function("profile", |b| b.iter(|| black_box(Profile::of(black_box(block), 4096))));
    let mut set = CodecSet::new();
    let mut out = Vec::with_capacity(block.len() * 2);
    group.bench_function("lz4", |b| {
        b.iter(|| {
            out.clear();
            set.compress(CodecSpec::Lz4, block, &[], &mut out).unwrap();
            black_box(out.len())
        })
    });
    group.finish();
}

criterion_group!(benches, selector);
criterion_main!(benches);
