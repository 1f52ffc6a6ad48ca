//! The error type of the selector.

/// Everything that can go wrong in `hde-selector`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range.
    #[error("invalid selector configuration: {what}")]
    InvalidConfig {
        /// Which value and why.
        what: &'static str,
    },
    /// A mode name did not parse.
    #[error("unknown network mode {name:?}: expected datacenter, internet or hybrid")]
    UnknownMode {
        /// The text given.
        name: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
