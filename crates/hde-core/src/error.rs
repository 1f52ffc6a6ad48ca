//! The error type of the engine: its own failures, and the layers' wrapped.

/// Everything that can go wrong in `hde-core`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a frame or a file failed.
    #[error("I/O error")]
    Io(#[from] std::io::Error),
    /// The bytes are not an HDE frame (wrong magic) or of a version this build cannot read.
    #[error("not an HDE frame: {reason}")]
    NotAFrame {
        /// What was found.
        reason: &'static str,
    },
    /// The input holds no bytes at all (an empty file or stdin).
    #[error("empty input: not an HDE frame")]
    EmptyInput,
    /// A frame's header or segment is damaged or inconsistent.
    #[error("corrupt frame: {reason}")]
    CorruptFrame {
        /// What is wrong.
        reason: &'static str,
    },
    /// A frame's segments have another number of streams than the delta layer decoding it
    /// describes (a frame of another delta layer).
    #[error("frame has {frame} streams per segment, the delta layer {layer}")]
    LayoutMismatch {
        /// Streams per segment in the frame.
        frame: usize,
        /// Streams in the delta layer's layout.
        layer: usize,
    },
    /// A checksum over frame bytes does not match.
    #[error("{what} checksum mismatch: stored {stored:#018x}, computed {computed:#018x}")]
    ChecksumMismatch {
        /// Which part ("header", "segment 3").
        what: String,
        /// The checksum in the frame.
        stored: u64,
        /// The checksum of the bytes read.
        computed: u64,
    },
    /// A frame claims more than the decoder's limits allow; nothing was allocated for it.
    #[error("{what} of {claimed} exceeds the limit of {limit}")]
    LimitExceeded {
        /// What was claimed.
        what: &'static str,
        /// The claim.
        claimed: u64,
        /// The limit.
        limit: u64,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {what}")]
    InvalidConfig {
        /// Which value and why.
        what: String,
    },
    /// A peer's reply does not answer the frame it should (another key, another baseline).
    #[error("unexpected reply: expected {expected}, got {got}")]
    UnexpectedReply {
        /// What the frame called for.
        expected: String,
        /// What came.
        got: String,
    },
    /// A rate or size given as text could not be read.
    #[error("invalid {text:?}: expected {expected}")]
    InvalidUnit {
        /// The text given.
        text: String,
        /// What would have been accepted.
        expected: &'static str,
    },
    /// A peer's CRDT state could not be decoded or validated.
    #[error(transparent)]
    Crdt(#[from] hde_crdt::Error),
    /// A codec failed.
    #[error(transparent)]
    Codec(#[from] hde_codec::Error),
    /// The delta layer failed (missing baseline, stale frame, checksum of the image...).
    #[error(transparent)]
    Delta(#[from] hde_delta::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
