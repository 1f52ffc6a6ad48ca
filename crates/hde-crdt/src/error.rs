//! The error type of the CRDT crate: only decoding and validating a peer's bytes can fail.

/// What can be wrong with a peer's state or delta.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The encoded state is larger than the limit, checked before decoding.
    #[error("encoded state of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Bytes received.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The bytes are not a valid encoding.
    #[error("cannot decode peer state: {reason}")]
    Decode {
        /// What the decoder reported.
        reason: String,
    },
    /// The decoded state breaks an invariant (a write whose dot the context does not cover,
    /// a zero counter, an empty key in a full state, more entries than allowed).
    #[error("invalid peer state: {reason}")]
    Invalid {
        /// Which invariant.
        reason: &'static str,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
