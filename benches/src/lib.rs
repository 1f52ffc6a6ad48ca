//! Criterion benchmarks of HDE; the benches live in `benches/benches/*.rs`, and this library
//! holds what they share.
//!
//! Run them with `cargo bench -p hde-benches` (or `cargo xtask bench`). Inputs come from the
//! deterministic corpus generator, sized by `HDE_BENCH_SIZE` (default `64M`).

#![allow(clippy::panic)] // reason: bench setup has no caller to return an error to; it aborts.

use hde_corpus::{Corpus, CorpusConfig};

/// Image size for the benches: `HDE_BENCH_SIZE` (e.g. `16M`), default 64 MiB.
///
/// # Panics
///
/// If `HDE_BENCH_SIZE` is set but not a size (a bench aborts on bad setup).
pub fn bench_size() -> usize {
    match std::env::var("HDE_BENCH_SIZE") {
        Ok(text) => match hde_core::units::parse_size(&text).map(usize::try_from) {
            Ok(Ok(size)) => size,
            Ok(Err(e)) => panic!("HDE_BENCH_SIZE: {e}"),
            Err(e) => panic!("HDE_BENCH_SIZE: {e}"),
        },
        Err(_) => 64 << 20,
    }
}

/// Rounds 0 and 1 of the default generated corpus at [`bench_size`].
///
/// # Panics
///
/// If the corpus cannot be generated at that size.
pub fn two_rounds() -> (Vec<u8>, Vec<u8>) {
    let mut corpus = match Corpus::new(CorpusConfig::with_size(bench_size())) {
        Ok(corpus) => corpus,
        Err(e) => panic!("corpus: {e}"),
    };
    let round0 = corpus.image().to_vec();
    corpus.advance();
    (round0, corpus.image().to_vec())
}
