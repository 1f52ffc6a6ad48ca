//! What the selector chooses among and what it learns from.

use std::fmt;
use std::time::Duration;

use hde_codec::{CodecSpec, ZstdParams};

/// The codecs the selectors consider by default: raw bytes to zstd 9, and zstd 17 and 19 for a
/// slow link that leaves the encoder time (hybrid mode weighs them against the link's rate and
/// backlog; the other modes' budgets rule them out). Levels 10-15 are left out: on guest RAM
/// they store 0.98-0.99x level 9's bytes at 1.4-5x its time.
pub const DEFAULT_CODECS: [CodecSpec; 8] = [
    CodecSpec::Raw,
    CodecSpec::Lz4,
    CodecSpec::Zstd(ZstdParams::clamped(1)),
    CodecSpec::Zstd(ZstdParams::clamped(3)),
    CodecSpec::Zstd(ZstdParams::clamped(6)),
    CodecSpec::Zstd(ZstdParams::clamped(9)),
    CodecSpec::Zstd(ZstdParams::clamped(17)),
    CodecSpec::Zstd(ZstdParams::clamped(19)),
];

/// Whether `codec` is worth running against a reference.
///
/// Only zstd: its window spans the whole reference, while LZ4's 64 KiB window reaches only the
/// reference's tail, and a literal's old version sits as far back as the literals before it
/// plus the reference after its own old version (measured on a real delta round: lz4+ref
/// stored 5.3 MB where zstd-1+ref stored 2.2 MB, at the same speed). A codec the user added is
/// tried without one.
pub fn uses_reference(codec: CodecSpec) -> bool {
    matches!(codec, CodecSpec::Zstd(_))
}

/// The profile bucket a choice was made for (opaque; it ties an outcome to its statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Bucket(pub(crate) u16);

/// What a choice was made from: its bucket and the model's prior for that block (opaque; an
/// outcome is learned as a correction to this prior).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Ticket {
    pub(crate) bucket: Bucket,
    /// f32 bits of the prior ratio, encode and decode ns per byte.
    pub(crate) prior: [u32; 3],
}

impl Ticket {
    /// The bucket.
    pub fn bucket(&self) -> Bucket {
        self.bucket
    }
}

/// What to run on a block: a codec, and whether to compress against the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Choice {
    /// The codec and its parameters.
    pub codec: CodecSpec,
    /// Compress against the reference (the old content of the changed pages).
    pub reference: bool,
    /// What it was chosen from (bucket and prior), for `observe`.
    pub ticket: Ticket,
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.codec, if self.reference { "+ref" } else { "" })
    }
}

/// The situation of a choice, beside the data's profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// Bytes of reference available (0: none).
    pub reference_len: u64,
    /// Threads encoding in parallel (encode time divides among them).
    pub threads: u32,
    /// What the reference is worth for this block, measured on a sample of it: bytes
    /// compressed against the reference per 1000 bytes compressed without (`None`: not
    /// measured, and assumed to help as much as old versions of changed pages usually do).
    pub reference_gain_permille: Option<u16>,
    /// Bytes of the frame this block belongs to that were written (handed to the link) before
    /// the choice.
    pub frame_written: u64,
    /// Time since the frame's first byte was written. With `frame_written` and the link's
    /// rate, hybrid mode knows the link's backlog: the time it still needs for what was
    /// written. Encoding that takes less than the backlog delays nothing, so a link that is
    /// behind lets a block spend that time on fewer bytes (a higher level).
    pub frame_elapsed: Duration,
}

impl Default for Context {
    fn default() -> Self {
        Context {
            reference_len: 0,
            threads: 1,
            reference_gain_permille: None,
            frame_written: 0,
            frame_elapsed: Duration::ZERO,
        }
    }
}

/// What running a choice cost and gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Bytes in.
    pub input_bytes: u64,
    /// Bytes out.
    pub output_bytes: u64,
    /// Time to compress (including loading the reference).
    pub encode: Duration,
    /// Time to decompress, if measured.
    pub decode: Option<Duration>,
}
