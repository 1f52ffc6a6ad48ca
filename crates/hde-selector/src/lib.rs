//! The selector of HDE: data profiles and outcomes, not bytes on the wire.
//!
//! This crate will profile a block cheaply (byte entropy of a sample, zero-page fraction, a
//! repetition estimate), choose a codec, level and reference use for the network mode
//! (datacenter, internet, hybrid), and learn from observed outcomes per profile bucket with
//! bounded exploration, proven by a replay against the oracle choice (design brief §6).
//! Filled by issue 4.
