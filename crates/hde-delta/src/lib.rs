//! The delta layer of HDE: pages and baselines, not codecs.
//!
//! This crate will turn one round of a VM image into the smallest description of what the
//! receiver lacks, by the page hierarchy of the design brief §3 (unchanged, zero, duplicate,
//! small change as XOR + zero runs, literal), against per-key baselines kept exactly as the
//! receiver holds them (brief §4). It exposes the byte streams to be compressed and, for
//! literal pages, the baseline region that is their natural reference; it never runs a codec.
//! Filled by issue 3.
