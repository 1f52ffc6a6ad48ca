//! Criterion benchmarks of HDE; the benches live in `benches/benches/*.rs`.
//!
//! Run them with `cargo bench -p hde-benches` (or `cargo xtask bench`). Inputs come from the
//! deterministic corpus generator, sized by `HDE_BENCH_SIZE` (default `64M`).
