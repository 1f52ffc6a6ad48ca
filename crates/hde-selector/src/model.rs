//! The cost model: what a choice is expected to cost under each mode, from priors or learning.

use hde_codec::CodecSpec;

use crate::{Context, NetworkMode, Outcome, Profile, SelectorConfig};

/// Expected behaviour of a choice on a block, per input byte.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Estimate {
    /// Output bytes per input byte.
    pub(crate) ratio: f64,
    /// Encode nanoseconds per input byte.
    pub(crate) encode_ns: f64,
    /// Decode nanoseconds per input byte.
    pub(crate) decode_ns: f64,
}

/// The cost of sending `input` bytes with behaviour `e` under `mode`: estimated seconds to
/// deliver over the mode's link (datacenter, hybrid), or bytes within a CPU budget (internet).
///
/// `backlog`: seconds the link still needs for what was written before (hybrid mode only).
/// Encoding overlaps with it, so only encode time beyond it can delay delivery: a link that
/// is behind makes a slower, smaller choice free up to that point.
pub(crate) fn cost(
    mode: NetworkMode,
    config: &SelectorConfig,
    bandwidth: f64,
    input: f64,
    e: &Estimate,
    threads: f64,
    backlog: f64,
) -> f64 {
    let bytes = input * e.ratio;
    // A block is encoded on one thread; the others work on other blocks meanwhile.
    let encode_wall = input * e.encode_ns * 1e-9;
    let encode = encode_wall / threads.max(1.0);
    let decode = input * e.decode_ns * 1e-9;
    match mode {
        NetworkMode::Datacenter => encode.max(bytes / config.datacenter_target_speed) + decode,
        // The link waits for this block unless its backlog lasts longer than the block's
        // encoding (on its one thread: a round with one large block of literals among small
        // ones has no other work to hide it behind).
        NetworkMode::Hybrid => (encode_wall - backlog.max(0.0)).max(encode).max(bytes / bandwidth) + decode,
        NetworkMode::Internet => {
            // Bytes first, within the CPU budget: an encode slower than `internet_min_speed`
            // scales the cost by its shortfall; once the target ratio is reached only the
            // (lightly weighted) time separates choices.
            let speed = if encode > 0.0 { input / encode } else { f64::INFINITY };
            let over = (config.internet_min_speed / speed).max(1.0);
            (bytes.max(input * config.internet_target_ratio) + encode * 1e4) * over
        }
    }
}

/// The cost of a recorded outcome under `mode` (the replay's oracle and regret use it).
pub fn outcome_cost(
    mode: NetworkMode,
    config: &SelectorConfig,
    bandwidth: f64,
    outcome: &Outcome,
    threads: u32,
) -> f64 {
    let input = outcome.input_bytes.max(1) as f64;
    let e = Estimate {
        ratio: outcome.output_bytes as f64 / input,
        encode_ns: outcome.encode.as_nanos() as f64 / input,
        decode_ns: outcome.decode.map_or(0.0, |d| d.as_nanos() as f64 / input),
    };
    cost(mode, config, bandwidth, input, &e, f64::from(threads), 0.0)
}

/// A priori behaviour of `codec` on a block with this profile, calibrated on generated VM memory
/// (`cargo xtask selector-replay` prints the measured table) on a 2-core x86-64 machine: good
/// enough to rank codecs before anything has been observed; learning corrects the rest.
pub(crate) fn prior(codec: CodecSpec, reference: bool, profile: &Profile, context: &Context) -> Estimate {
    let live = 1.0 - f64::from(profile.zero_page_fraction);
    let rep = f64::from(profile.repetition);
    let entropy = f64::from(profile.entropy) / 8.0;
    // Ratio of the non-zero part: LZ matching removes repeats, entropy coding shrinks the rest.
    let lz = (1.0 - 0.8 * rep).clamp(0.05, 1.0);
    let (ratio, encode_ns, decode_ns) = match codec {
        CodecSpec::Raw => (1.0, 0.2, 0.2),
        CodecSpec::Lz4 => ((lz * 1.05).min(1.004), 2.2, 0.6),
        CodecSpec::Zstd(params) => {
            // Above level 9 the gain flattens: on real guest RAM (256 MiB, 16 MiB segments)
            // level 12 stored 0.99x level 9's bytes, 15 0.98x, 17 0.94x, 19 0.89x, at 1.4x,
            // 5x, 9x and 12x its time; the optimal parsers of 16-19 are what gains.
            let level = zstd_level(params);
            let gain = match level {
                0..=9 => 1.0 - 0.02 * f64::from(level),
                10..=15 => 0.82 * (1.0 - 0.003 * f64::from(level - 9)),
                _ => 0.82 * (0.98 - 0.03 * f64::from(level - 16)),
            };
            let speed = match level {
                1 => 3.2,
                2..=3 => 4.5,
                4..=6 => 10.0,
                7..=9 => 22.0,
                10..=12 => 50.0,
                13..=15 => 200.0,
                _ => 300.0 + 60.0 * f64::from(level - 16),
            };
            ((lz * entropy.max(0.3) * gain).clamp(0.02, 1.0), speed, 1.0)
        }
        // A codec the user added: nothing is known before it runs; assumed to match LZ4's
        // ratio at zstd-3's speed, and corrected by what it does.
        _ => (lz.min(1.0), 4.5, 1.0),
    };
    let ratio = live * ratio + (1.0 - live) * 0.002;
    let len = profile.len.max(1) as f64;
    let with_reference = reference && crate::uses_reference(codec) && context.reference_len > 0;
    let reference_len = context.reference_len as f64;
    // Costs per call, in ns, which weigh on small blocks: context reset and table setup; with a
    // reference, loading it (zstd hashes all of it; LZ4 builds a fresh table and hashes its
    // last 64 KiB every call).
    let fixed = match (codec, with_reference) {
        (CodecSpec::Raw, _) => 0.0,
        (CodecSpec::Lz4, false) => 1_000.0,
        (CodecSpec::Lz4, true) => 5_000.0 + reference_len.min(65_536.0) / 3.0 * 3.0,
        (CodecSpec::Zstd(_), false) => 3_000.0,
        // The optimal parsers of levels 16-19 insert the whole reference into their binary
        // trees: measured 110-120 ns a reference byte (a 16 MiB reference, 2 s), which no
        // per-byte speed of the input shows.
        (CodecSpec::Zstd(params), true) => {
            5_000.0
                + reference_len
                    * match zstd_level(params) {
                        0..=9 => 1.5,
                        10..=15 => 40.0,
                        _ => 120.0,
                    }
        }
        _ => 3_000.0,
    };
    Estimate {
        // Unknown until tried: assume changed pages resemble their old versions. A sample of
        // the block that says the reference helps less lowers the hope; one that says it helps
        // more does not raise it (the sample sees each page's own reference only, and the
        // level ranking learnt from outcomes is what tells how much more).
        ratio: if with_reference {
            ratio * context.reference_gain_permille.map_or(0.7, |g| (f64::from(g.min(1500)) / 1000.0).max(0.7))
        } else {
            ratio
        },
        encode_ns: encode_ns + fixed / len,
        decode_ns: decode_ns + if with_reference { 0.1 } else { 0.0 } + fixed / len / 4.0,
    }
}

/// The level of `params`, as the prior's tables index it (at most 19: 20-22 behave like it).
fn zstd_level(params: hde_codec::ZstdParams) -> u8 {
    u8::try_from(params.level().clamp(1, 19)).unwrap_or(19)
}
