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
    /// A file of a state directory (a saved baseline) is damaged, truncated or of another
    /// format: the key's next round needs a keyframe, which replaces it.
    #[error("damaged state file: {reason}")]
    DamagedState {
        /// What is wrong.
        reason: &'static str,
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

impl Error {
    /// Whether a frame refused with this error is mended by a keyframe of its key: the
    /// receiver lacks the baseline the delta names, holds another or a newer one, or the frame
    /// was damaged. What a sender does about a receiver's error, without matching on the
    /// delta layer's variants ([`Refusal`](crate::session::Refusal) is the same answer as a
    /// reply on the wire).
    ///
    /// ```
    /// use hde_core::{delta::DeltaConfig, Decoder, Encoder};
    ///
    /// let encoder = Encoder::new(DeltaConfig::default(), Default::default())?;
    /// let round_0 = encoder.compress("vm", &vec![7u8; 1 << 16])?;
    /// let round_1 = encoder.compress("vm", &vec![8u8; 1 << 16])?;
    /// // A receiver that never saw round 0 cannot apply round 1.
    /// let fresh = Decoder::new(DeltaConfig::default())?;
    /// let err = fresh.decompress(&round_1).unwrap_err();
    /// assert!(err.needs_keyframe());
    /// # let _ = round_0;
    /// # Ok::<(), hde_core::Error>(())
    /// ```
    pub fn needs_keyframe(&self) -> bool {
        crate::session::Refusal::of(self).needs_keyframe()
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
