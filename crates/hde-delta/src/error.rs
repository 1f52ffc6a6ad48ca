//! The error type of the delta layer.

use crate::BaselineId;

/// Everything that can go wrong in `hde-delta`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A delta names a baseline this side does not hold for the key (never received, evicted,
    /// or pruned): the sender must send a keyframe.
    #[error("no baseline for key {key:?} (the delta needs {want}); a keyframe is required")]
    MissingBaseline {
        /// The key.
        key: String,
        /// The baseline the delta applies to.
        want: BaselineId,
    },
    /// A delta names another baseline than the one held for the key.
    #[error("key {key:?} holds baseline {have}, the delta applies to {want}; a keyframe is required")]
    BaselineMismatch {
        /// The key.
        key: String,
        /// What this side holds.
        have: BaselineId,
        /// What the delta applies to.
        want: BaselineId,
    },
    /// A frame older than (or equal to) what was already applied: a replay or reordering.
    #[error("key {key:?} is at sequence {have}; frame sequence {got} is stale")]
    StaleSequence {
        /// The key.
        key: String,
        /// The sequence held.
        have: u64,
        /// The frame's sequence.
        got: u64,
    },
    /// The key's baseline changed between `encode` and `commit` (two rounds of one key raced).
    #[error("key {key:?} moved on while this round was encoded; encode it again")]
    ConcurrentRound {
        /// The key.
        key: String,
    },
    /// A round was committed to another encoder than the one that made it, or twice.
    #[error("round does not belong to this encoder's key {key:?}")]
    ForeignRound {
        /// The key.
        key: String,
    },
    /// The reconstructed image does not match the checksum the sender computed.
    #[error("key {key:?}: reconstructed image checksum {actual:#018x} != expected {expected:#018x}")]
    ChecksumMismatch {
        /// The key.
        key: String,
        /// The sender's checksum.
        expected: u64,
        /// The checksum of what was reconstructed.
        actual: u64,
    },
    /// A payload stream is malformed.
    #[error("corrupt delta payload: {reason}")]
    Corrupt {
        /// What is wrong.
        reason: &'static str,
    },
    /// A header claims more than this side accepts (before anything is allocated).
    #[error("{what} of {claimed} exceeds the limit of {limit}")]
    TooLarge {
        /// What was claimed.
        what: &'static str,
        /// The claim.
        claimed: u64,
        /// The limit.
        limit: u64,
    },
    /// The memory for an image of this size could not be had (a header may claim up to
    /// `max_image_size`; the allocation is tried, not assumed).
    #[error("cannot allocate {bytes} bytes for an image")]
    OutOfMemory {
        /// The size asked for.
        bytes: u64,
    },
    /// A configuration value is out of range.
    #[error("invalid delta configuration: {what}")]
    InvalidConfig {
        /// Which value and why.
        what: &'static str,
    },
    /// A round given as dirty pages cannot be encoded (no baseline to apply them to, its
    /// bytes not held, a page outside the image or of the wrong length).
    #[error("cannot encode dirty pages of key {key:?}: {reason}")]
    DirtyRound {
        /// The key.
        key: String,
        /// Why.
        reason: &'static str,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
