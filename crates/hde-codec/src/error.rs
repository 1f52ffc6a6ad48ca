//! The error type of the codec layer.

use crate::CodecId;

/// Everything that can go wrong in `hde-codec`.
///
/// Every variant carries the facts a caller needs to act (which codec, which limit), so an
/// upper layer can wrap it without formatting strings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A codec id read from the wire (or a spec's) is not one this version assigns, or is a
    /// custom id the codec set has no codec for.
    #[error("unknown codec id {id}")]
    UnknownCodec {
        /// The id that was read.
        id: u8,
    },
    /// A codec cannot be added to a set: its id is a built-in one, or taken.
    #[error("cannot add codec {id}: {reason}")]
    InvalidCodec {
        /// The id the codec reports.
        id: CodecId,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A compression level outside the codec's range was requested.
    #[error("{codec} level {level} is outside {min}..={max}")]
    InvalidLevel {
        /// The codec the level was meant for.
        codec: CodecId,
        /// The level requested.
        level: i32,
        /// Lowest accepted level.
        min: i32,
        /// Highest accepted level.
        max: i32,
    },
    /// The decompressed data does not fit in the output buffer the caller sized.
    ///
    /// This is how a hostile "I decompress to 1 TiB" stream is stopped: the caller's limit wins.
    #[error("{codec} output does not fit in the {capacity}-byte limit")]
    OutputTooLarge {
        /// The codec that was decoding.
        codec: CodecId,
        /// The caller's limit.
        capacity: usize,
    },
    /// The decompressed length differs from the exact length the caller expected.
    #[error("{codec} produced {actual} bytes, expected exactly {expected}")]
    LengthMismatch {
        /// The codec that was decoding.
        codec: CodecId,
        /// The length the caller expected.
        expected: usize,
        /// The length produced.
        actual: usize,
    },
    /// The stream is malformed or truncated.
    #[error("{codec} stream is corrupt: {reason}")]
    Corrupt {
        /// The codec that was decoding.
        codec: CodecId,
        /// What the decoder reported.
        reason: &'static str,
    },
    /// The stream decoded, but its embedded checksum disagrees with the output: the stream is
    /// damaged or the reference given differs from the one used to compress it.
    #[error("{codec} checksum mismatch (damaged stream or wrong reference)")]
    ChecksumMismatch {
        /// The codec that was decoding.
        codec: CodecId,
    },
    /// Bytes decompressed differ from the bytes compressed (a check of [`measure`](crate::measure);
    /// a codec that does this is broken).
    #[error("{codec} did not round-trip the bytes at offset {offset}")]
    RoundTrip {
        /// The codec measured.
        codec: CodecId,
        /// Where the segment that differs starts in the input.
        offset: usize,
    },
    /// The codec library could not allocate its context.
    #[error("{codec} could not allocate a context")]
    OutOfMemory {
        /// The codec whose context failed.
        codec: CodecId,
    },
    /// The codec library refused a parameter or failed while compressing.
    #[error("{codec} failed: {reason}")]
    Backend {
        /// The codec that failed.
        codec: CodecId,
        /// What the library reported.
        reason: &'static str,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
